"""Frequency admission: table rows (memory) vs AUC (Monolith: feature filtering).

A table with ``admit_after: N`` gives a feature ID a row only once the ID has been seen
N times (counted in a count-min sketch); until then lookups get the initializer's
vector and the ID's gradients are dropped. Each threshold trains once through the
stream's first 80% (time order) and is scored on the rest through the serving PS,
with several seeds. Rows and bytes are what the training shards hold at the end; the
bytes of the empty tables at the start show what admission itself costs (its sketch),
whatever size the engine gives it.

    python -m evals.admission [--data PATH] [--admit-after 1,2,3,5] [--seeds 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evals import cli, dataset, plots, results, training
from evals.cluster import base_config

NAME = "admission"
TITLE = "Frequency admission: rows vs AUC"
_METRICS = ("rows", "memory_bytes", "memory_bytes_at_start", "test_auc", "test_auc_seen_users",
            "train_auc", "found")  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    events, release = dataset.load_stream(args.data, args.limit)
    train_events, test_events = dataset.time_split(events, args.test_fraction)
    seen = dataset.seen_users(train_events, test_events)

    def run_one(seed: int, threshold: int, work: Path) -> dict[str, Any]:
        config = base_config(seed=seed, admit_after=threshold)
        folder = work / f"seed{seed}-admit{threshold}"
        result = training.train_and_score(args, config, folder, train_events, test_events, seen)
        return {"seed": seed, "admit_after": threshold, **result}

    runs = training.seeded_runs(
        args,
        NAME,
        args.admit_after,
        run_one,
        lambda r: f"admit_after {r['admit_after']}: rows {r['rows']}, test AUC {r['test_auc']:.4f}",
    )
    summary = training.summarize_runs(runs, "admit_after", _METRICS)
    training.compare_with_first(summary, runs, "admit_after")
    return {
        **results.run_info(NAME, args, started, release),
        "events": len(events),
        "test_fraction": args.test_fraction,
        "seeds": args.seeds,
        "summary": summary,
        "runs": runs,
    }


def markdown(doc: dict[str, Any]) -> str:
    tables = list(doc["summary"][0]["rows_per_table"])
    header = [
        "admit_after",
        "rows (all tables)",
        "rows vs admit_after 1",
        *(f"{t} rows" for t in tables),
        "table bytes",
        "of which empty tables",
        *results.QUALITY_HEADER,
    ]
    rows = [
        [
            s["admit_after"],
            f"{s['rows_mean']:.0f}",
            f"{s['rows_vs_first']:.0%}",
            *(f"{s['rows_per_table'][t]:.0f}" for t in tables),
            f"{s['memory_bytes_mean'] / 1e6:.2f} MB",
            f"{s['memory_bytes_at_start_mean'] / 1e6:.2f} MB",
            *results.quality_cells(s),
        ]
        for s in doc["summary"]
    ]
    description = results.split_description(doc) + (
        ". Rows and bytes: the training shards at the end of training. Bytes as the servers "
        "report them (rows, optimizer state, index and, with admit_after > 1, the admission "
        "sketch); the empty tables' bytes, before any row, are what the tables hold whatever "
        "they learn."
    )
    return results.document(TITLE, doc, description, header, rows)


def plot(doc: dict[str, Any], path: Path) -> None:
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    rows = [s["rows_mean"] for s in doc["summary"]]
    for metric, label, color in plots.AUC_SERIES:
        means = [s[f"{metric}_mean"] for s in doc["summary"]]
        sds = [s[f"{metric}_sd"] for s in doc["summary"]]
        ax.errorbar(rows, means, yerr=sds, fmt="o-", capsize=4, color=color, label=label)
    for i, s in enumerate(doc["summary"]):
        ax.annotate(
            f"admit_after={s['admit_after']}",
            (s["rows_mean"], s["train_auc_mean"]),
            textcoords="offset points",
            xytext=(6, 8 + 10 * (i % 2)),
            fontsize=8,
        )
    plots.finish_axes(
        ax, TITLE, "best", "rows held by the training shards", "AUC (mean ± sd over seeds)"
    )
    plots.save_figure(fig, path)


def parser() -> argparse.ArgumentParser:
    p = cli.eval_parser(NAME, __doc__)
    p.add_argument(
        "--admit-after",
        type=cli.comma_list(int),
        default=[1, 2, 3, 5],
        help="thresholds to compare (default 1,2,3,5)",
    )
    cli.add_seed_arguments(p, seeds=2, per="threshold")
    return p


def check(args: argparse.Namespace) -> None:
    if any(n < 1 for n in args.admit_after):
        raise SystemExit("--admit-after: thresholds must be >= 1")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_eval(NAME, argv, parser(), run, markdown, plot, check)


if __name__ == "__main__":
    sys.exit(main())
