"""Result files of the evals: what every result records (command, date, machine, data),
statistics over seeds, and the Markdown and JSON written under ``--results``."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from examples.movielens.data import Dataset, describe_dataset

__all__ = [
    "QUALITY_HEADER",
    "document",
    "machine",
    "markdown_table",
    "mean_and_spread",
    "no_effect_note",
    "now_iso",
    "pm",
    "quality_cells",
    "run_info",
    "split_description",
    "utc_date",
    "write_results",
]


def pm(entry: Mapping[str, Any], metric: str, digits: int = 4) -> str:
    """``mean ± sd`` of a summarized metric."""
    return f"{entry[metric + '_mean']:.{digits}f} ± {entry[metric + '_sd']:.{digits}f}"


QUALITY_HEADER = (
    "test AUC (mean ± sd)",
    "Δ test AUC",
    "test AUC, users seen in training",
    "progressive AUC (training part)",
    "test keys with a row",
)


def quality_cells(entry: Mapping[str, Any]) -> list[str]:
    """A summary entry's cells under :data:`QUALITY_HEADER`: its AUCs and test coverage."""
    return [
        pm(entry, "test_auc"),
        f"{entry['delta_auc_vs_first']:+.4f}",
        pm(entry, "test_auc_seen_users"),
        pm(entry, "train_auc"),
        f"{entry['found_mean']:.1%}",
    ]


def split_description(doc: Mapping[str, Any]) -> str:
    """How a train-then-test eval used the stream: the first part trains, the rest is
    scored through the serving PS, over ``seeds`` seeds (no closing full stop)."""
    split = round(100 * (1 - doc["test_fraction"]))
    return (
        f"{doc['events']} ratings in time order: train on the first {split}%, test on the "
        f"rest through the serving PS; {doc['seeds']} seeds"
    )


def no_effect_note(doc: Mapping[str, Any], lead: str, label: Callable[[Any], str]) -> str:
    """The note after a result's table naming the variants left out as changing nothing."""
    if not doc["no_effect"]:
        return ""
    skipped = "; ".join(f"{label(v)}: {v['why']}" for v in doc["no_effect"])
    return f"\n\n{lead} (they would change nothing): {skipped}."


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """OS, CPUs available to this process, Python, and the load when it ran."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.1f}"
    return (
        f"{platform.system()} {platform.machine()}, {cpus} CPUs, "
        f"Python {platform.python_version()}{load}"
    )


def utc_date(timestamp: float) -> str:
    """``YYYY-MM-DD`` of a unix time, in UTC."""
    return datetime.datetime.fromtimestamp(float(timestamp), datetime.UTC).strftime("%Y-%m-%d")


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def command_line(module: str, argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m", module, *args])


def write_results(
    out: Path, name: str, doc: Mapping[str, Any], markdown: str, plot: Callable[[Path], None]
) -> list[Path]:
    """``<out>/<name>.json``, ``.md`` and ``.png``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.json", out / f"{name}.md", out / f"{name}.png"]
    paths[0].write_text(json.dumps(_jsonable(doc), indent=2) + "\n")
    paths[1].write_text(markdown.rstrip() + "\n")
    plot(paths[2])
    return paths


def run_info(
    name: str, args: argparse.Namespace, started: float, dataset: Dataset
) -> dict[str, Any]:
    """The fields every result starts with: the eval, its command line, date, machine, the
    data it ran on, and the seconds since ``started`` (a ``time.monotonic()``)."""
    return {
        "experiment": name,
        "command": command_line(f"evals.{name}", args.argv),
        "date": now_iso(),
        "machine": machine(),
        "dataset": dataset.as_dict(),
        "seconds": time.monotonic() - started,
    }


def document(
    title: str,
    doc: Mapping[str, Any],
    description: str,
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
) -> str:
    """A result's Markdown: its header, what was run, and its table."""
    return "\n".join(
        [document_header(title, doc), "", description, "", markdown_table(header, rows)]
    )


def document_header(title: str, doc: Mapping[str, Any]) -> str:
    """The title line and how a result was made (command, date, machine, seconds, data)."""
    return (
        f"## {title}\n\n`{doc['command']}` on {doc['date']} ({doc['machine']}), "
        f"{doc['seconds']:.0f} s. {describe_dataset(doc['dataset'])}"
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
