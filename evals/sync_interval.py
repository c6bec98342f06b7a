"""Sync interval vs serving quality (Monolith: real-time training, parameter sync).

One online training run over the stream, cut into windows. Beside it, one serving
replica per sync interval k (in windows): after each window's training, the sync agent
runs one round toward the replicas due (window index divisible by k), then every
replica scores the NEXT window. All replicas are synced once after window 0 (the start);
"never" is not synced again, like a model trained once and served unchanged (the batch
baseline). Because every replica serves the same training run, the differences between
them come from the sync schedule alone.

    python -m evals.sync_interval [--data PATH] [--windows 20] [--intervals 1,2,4,8]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from evals import cli, dataset, plots, results, training
from evals.cluster import EvalCluster, base_config
from examples.movielens import metrics

NAME = "sync_interval"
TITLE = "Sync interval vs serving AUC"
NEVER = 0  # the interval of the replica synced at the start only


def interval_name(k: int) -> str:
    return "never after start" if k == NEVER else f"every {k} window" + ("s" if k > 1 else "")


def is_due(k: int, window: int) -> bool:
    """Whether the replica of interval ``k`` syncs after training ``window``."""
    return window == 0 or (k != NEVER and window % k == 0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    events, release = dataset.load_stream(args.data, args.limit)
    windows = events.windows(args.windows)
    intervals = [*sorted(set(args.intervals)), NEVER]
    last_sync = {k: 0 for k in intervals}
    per_window: list[dict[str, Any]] = []
    scored: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {k: [] for k in intervals}
    with (
        cli.workdir(args, NAME) as work,
        EvalCluster(
            base_config(), work, args.training_shards, serving_replicas=len(intervals)
        ) as cluster,
    ):
        for i, (window, following) in enumerate(pairwise(windows)):
            trained = training.train(cluster, window, args.batch_size)
            due = [r for r, k in enumerate(intervals) if is_due(k, i)]
            sync_seconds = cluster.sync(due)
            for r in due:
                last_sync[intervals[r]] = i
            row: dict[str, Any] = {
                "window": i,
                "train_events": len(window),
                "train_auc": trained.auc(window.labels),
                "scored_window": i + 1,
                "scored_events": len(following),
                "synced": [intervals[r] for r in due],
                "sync_seconds": sync_seconds,
                "serving": {},
            }
            for r, k in enumerate(intervals):
                result = cluster.score(following, replica=r)
                if i >= 1:
                    scored[k].append((following.labels, result.predictions))
                row["serving"][str(k)] = {
                    "auc": metrics.roc_auc(following.labels, result.predictions),
                    "found": training.found_fraction(result),
                    "windows_behind": i - last_sync[k],
                }
            per_window.append(row)
            cli.say(
                args,
                f"window {i:2d}: "
                + ", ".join(
                    f"{interval_name(k)} {row['serving'][str(k)]['auc']:.4f}" for k in intervals
                ),
            )
        syncs, sync_seconds = cluster.syncs, cluster.sync_seconds
    summary = []
    for k in intervals:
        rows = [w["serving"][str(k)] for w in per_window if w["window"] >= 1]
        labels = np.concatenate([a for a, _ in scored[k]])
        predictions = np.concatenate([b for _, b in scored[k]])
        summary.append(
            {
                "interval": k,
                "name": interval_name(k),
                "syncs": sum(1 for w in per_window if k in w["synced"]),
                "auc_all_events": metrics.roc_auc(labels, predictions),
                "auc_window_mean": float(np.nanmean([r["auc"] for r in rows])),
                "found_mean": float(np.mean([r["found"] for r in rows])),
                "windows_behind_mean": float(np.mean([r["windows_behind"] for r in rows])),
            }
        )
    best = summary[0]["auc_all_events"]
    for s in summary:
        s["delta_auc_vs_shortest"] = s["auc_all_events"] - best
    return {
        **results.run_info(NAME, args, started, release),
        "events": len(events),
        "windows": args.windows,
        "window_events": len(windows[0]),
        "agent_rounds": syncs,
        "agent_seconds": sync_seconds,
        "summary": summary,
        "per_window": per_window,
    }


def markdown(doc: dict[str, Any]) -> str:
    header = [
        "serving synced",
        "agent rounds",
        "windows behind (mean)",
        "keys found",
        "serving AUC, all scored events",
        "Δ vs shortest interval",
        "serving AUC, mean of windows",
    ]
    rows = [
        [
            s["name"],
            s["syncs"],
            f"{s['windows_behind_mean']:.2f}",
            f"{s['found_mean']:.1%}",
            f"{s['auc_all_events']:.4f}",
            f"{s['delta_auc_vs_shortest']:+.4f}",
            f"{s['auc_window_mean']:.4f}",
        ]
        for s in doc["summary"]
    ]
    description = (
        f"{doc['events']} ratings in {doc['windows']} windows of ~{doc['window_events']}; "
        f"one training run, one serving replica per schedule, each scoring the next window "
        f"(windows 2 to {doc['windows'] - 1}) after the agent's round. {doc['agent_rounds']} "
        f"agent rounds took {doc['agent_seconds']:.0f} s in all."
    )
    return results.document(TITLE, doc, description, header, rows)


def plot(doc: dict[str, Any], path: Path) -> None:
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    windows = [w["scored_window"] for w in doc["per_window"]]
    for s in doc["summary"]:
        k = str(s["interval"])
        aucs = [w["serving"][k]["auc"] for w in doc["per_window"]]
        style = "k--" if s["interval"] == NEVER else "o-"
        ax.plot(windows, aucs, style, ms=3, label=f"{s['name']} ({s['auc_all_events']:.4f})")
    plots.finish_axes(
        ax,
        TITLE,
        "lower right",
        "scored window (served by the model synced before it)",
        "serving AUC of the window",
    )
    plots.save_figure(fig, path)


def parser() -> argparse.ArgumentParser:
    p = cli.eval_parser(NAME, __doc__)
    p.add_argument("--windows", type=int, default=20, help="stream windows (default 20)")
    p.add_argument(
        "--intervals",
        type=cli.comma_list(int),
        default=[1, 2, 4, 8],
        help="sync intervals in windows (default 1,2,4,8); 'never after start' is always added",
    )
    return p


def check(args: argparse.Namespace) -> None:
    if any(k < 1 for k in args.intervals):
        raise SystemExit("--intervals: every interval must be >= 1 window")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_eval(NAME, argv, parser(), run, markdown, plot, check)


if __name__ == "__main__":
    sys.exit(main())
