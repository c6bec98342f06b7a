"""The evals' command line: the flags every eval takes (the data first), the ``main`` that
runs an eval and writes its results, and the work folders of its clusters."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from evals.results import write_results
from examples.movielens.releases import DATA_ENV_VAR, DEFAULT_DATASET, DatasetNotFoundError

__all__ = [
    "REPO_ROOT",
    "add_common_arguments",
    "add_data_argument",
    "add_seed_arguments",
    "comma_list",
    "eval_parser",
    "run_eval",
    "say",
    "workdir",
]

REPO_ROOT = Path(__file__).resolve().parents[1]

_T = TypeVar("_T")


def comma_list(kind: Callable[[str], _T]) -> Callable[[str], list[_T]]:
    """An argparse type: a comma-separated list of ``kind`` values, e.g. ``1,2,4``."""

    def parse(text: str) -> list[_T]:
        return [kind(x) for x in text.split(",")]

    parse.__name__ = f"{getattr(kind, '__name__', 'value')} list"  # argparse's error names it
    return parse


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """``--data PATH``, the MovieLens release to run on."""
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="PATH",
        help="folder of a MovieLens release in any layout GroupLens ships (ratings.csv + "
        "movies.csv, ratings.dat + movies.dat, or ml-100k's u.data + u.item); default: "
        f"${DATA_ENV_VAR} if set, else {DEFAULT_DATASET} in data/ of the repository or in "
        "../shared/data beside it",
    )


def add_common_arguments(parser: argparse.ArgumentParser, limit: int | None) -> None:
    """Flags every eval takes: the data, the stream size, batch size, output and work
    folders."""
    add_data_argument(parser)
    parser.add_argument(
        "--limit",
        type=int,
        default=limit,
        help=f"use the first N ratings of the stream (default {limit or 'all'})",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="training batch (256)")
    parser.add_argument(
        "--training-shards", type=int, default=2, help="training PS shards (default 2)"
    )
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "results")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="cluster configs and logs (default: temp)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def add_seed_arguments(parser: argparse.ArgumentParser, seeds: int, per: str) -> None:
    """``--seeds`` (runs per ``per``) and ``--test-fraction``, for the evals that train on
    the first part of the stream and test on the rest."""
    parser.add_argument(
        "--seeds", type=int, default=seeds, help=f"seeds per {per} (default {seeds})"
    )
    parser.add_argument("--test-fraction", type=float, default=0.2)


def eval_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The parser of eval ``name`` (described by the first line of ``doc``), with the flags
    every eval takes."""
    parser = argparse.ArgumentParser(prog=f"python -m evals.{name}", description=doc.split("\n")[0])
    add_common_arguments(parser, limit=None)
    return parser


def run_eval(
    name: str,
    argv: Sequence[str] | None,
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
    plot: Callable[[dict[str, Any], Path], None],
    check: Callable[[argparse.Namespace], None] | None = None,
) -> int:
    """An eval's ``main``: parse ``argv``, ``check`` the flags (it raises ``SystemExit``),
    run, write ``<name>.json``, ``.md`` and ``.png`` under ``--results``, print the table.
    Exits with 2, saying what was looked for, when ``--data`` is no MovieLens release."""
    args = parser.parse_args(argv)
    if check is not None:
        check(args)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        doc = run(args)
    except DatasetNotFoundError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    text = markdown(doc)
    write_results(args.results, name, doc, text, lambda path: plot(doc, path))
    print(text)
    return 0


@contextlib.contextmanager
def workdir(args: argparse.Namespace, name: str, in_memory: bool = False) -> Iterator[Path]:
    """Where an eval's clusters keep their configs, logs and snapshots: ``--workdir/<name>``,
    or a temporary folder, removed when the eval succeeds and kept (with a message saying
    where) when it fails. ``in_memory`` puts a temporary folder on ``/dev/shm`` when there is
    one, so that snapshots' fsyncs cost nothing."""
    if args.workdir is not None:
        path = Path(args.workdir) / name
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    base = "/dev/shm" if in_memory and os.path.isdir("/dev/shm") else None
    path = Path(tempfile.mkdtemp(prefix=f"mps-eval-{name}-", dir=base))
    try:
        yield path
    except BaseException:
        print(f"{name}: failed; cluster logs kept in {path}", file=sys.stderr, flush=True)
        raise
    shutil.rmtree(path, ignore_errors=True)


def say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)
