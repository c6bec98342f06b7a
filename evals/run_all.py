"""``make evals``: every eval in turn on one MovieLens release.

Each eval writes ``results/<name>.json``, ``.md`` and ``.png``; this runner times them and
goes on past a failing one (exiting non-zero at the end). With ``--update-readme`` (what
``make evals`` does) it also replaces the part of ``evals/README.md`` between its result
markers with this run's tables; only a complete run on the default data may do that, since
the README's analysis is about that data.

    python -m evals.run_all [--data PATH] [--results results] [--only collisionless,expiry]
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from evals import (
    admission,
    cli,
    collisionless,
    dataset,
    expiry,
    fault_snapshot,
    results,
    sync_interval,
)
from examples.movielens.releases import (
    DEFAULT_DATASET,
    DatasetNotFoundError,
    default_locations,
    find_dataset,
)

EVALS = {
    module.NAME: module
    for module in (collisionless, sync_interval, admission, expiry, fault_snapshot)
}
README = Path(__file__).resolve().parent / "README.md"
START = "<!-- latest results: written by python -m evals.run_all -->"
END = "<!-- end of latest results -->"


def update_readme(readme: Path, tables: Sequence[str], footer: str) -> None:
    """Replace the text between the result markers of ``readme`` with ``tables``."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} lacks the result markers {START!r} ... {END!r}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    # Each table's "## title" goes one level down, under the README's "Latest results".
    body = "\n\n".join(
        [footer, *("#" + t.strip() if t.startswith("## ") else t.strip() for t in tables)]
    )
    readme.write_text(f"{head}{START}\n\n{body}\n\n{END}{tail}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evals.run_all", description=__doc__.split("\n")[0])
    cli.add_data_argument(p)
    p.add_argument(
        "--results", type=Path, default=None, help="output folder (default: results/ of the repo)"
    )
    p.add_argument("--only", default="", help="comma-separated evals to run (default: all)")
    p.add_argument(
        "--update-readme",
        action="store_true",
        help=f"write the tables into the README (a complete run on {DEFAULT_DATASET} only)",
    )
    p.add_argument("--readme", type=Path, default=README, help="README to update")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(EVALS)
    unknown = sorted(set(names) - set(EVALS))
    if unknown:
        p.error(f"unknown eval {unknown[0]!r} (known: {', '.join(EVALS)})")
    try:
        folder = find_dataset(args.data).resolve()
    except DatasetNotFoundError as exc:
        print(f"run_all: {exc}", file=sys.stderr)
        return 2
    if args.update_readme:
        if args.only:
            p.error("--update-readme needs every eval (no --only)")
        if folder not in [d.resolve() for d in default_locations()]:
            p.error(
                f"--update-readme: the README is about {DEFAULT_DATASET} "
                f"({', '.join(map(str, default_locations()))}); this run reads {folder}"
            )
    results_dir = args.results if args.results is not None else cli.REPO_ROOT / "results"
    started = time.monotonic()
    seconds: dict[str, float] = {}
    failed: list[str] = []
    for name in names:
        t0 = time.monotonic()
        print(f"== {name}", file=sys.stderr, flush=True)
        extra = ["--quiet"] if args.quiet else []
        try:
            data = ["--data", str(args.data)] if args.data is not None else []
            out = ["--results", str(args.results)] if args.results is not None else []
            code = EVALS[name].main([*data, *out, *extra])
            if code != 0:
                failed.append(name)
        except Exception:
            traceback.print_exc()
            failed.append(name)
        seconds[name] = time.monotonic() - t0
        print(f"== {name}: {seconds[name]:.0f} s", file=sys.stderr, flush=True)
    total = time.monotonic() - started
    tables = [
        (results_dir / f"{name}.md").read_text()
        for name in EVALS
        if (results_dir / f"{name}.md").is_file() and name not in failed
    ]
    timing = ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
    footer = (
        f"`{results.command_line('evals.run_all', argv)}` on {results.now_iso()} "
        f"({results.machine()}): {total:.0f} s in all ({timing}). "
        f"{dataset.load_stream(folder)[1].describe()}"
        + (f" Failed, so not shown: {', '.join(failed)}." if failed else "")
    )
    if args.update_readme:
        update_readme(args.readme, tables, footer)
    print(footer)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
