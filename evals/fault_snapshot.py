"""A training shard killed mid-stream and restored from its last snapshot, for snapshot
intervals from a few batches to a large part of the stream (Monolith: fault tolerance,
snapshot frequency).

Online training over the stream in windows; from the kill on, after each window the sync
agent runs a round and serving scores the next window (before the kill every run is the
same, batch for batch). Training shards write snapshots (Snapshot RPC) at the first
batch boundary after each multiple of the interval, counted in stream time from the
stream's first event; intervals default to fractions of the stream's span (``--intervals``;
``--intervals-days`` sets days instead). Snapshots can only be written between batches,
so an interval shorter than a batch's stretch of stream time means a snapshot after
nearly every batch. At a fixed point of the stream (the first batch boundary at or after
``--crash-at``), training shard 1 (embedding rows only; the dense part lives on shard 0)
is killed with SIGKILL and restarted: it restores its newest snapshot and training goes
on from the next batch, so the updates since that snapshot are lost for its rows. The
serving AUC afterwards is compared with the same run uninterrupted, and with a restart
that had no snapshot at all (the shard comes back empty). An interval whose snapshots
before the kill are those of a shorter one, or that has none before the kill, would
change nothing: it is reported as such and not run.

    python -m evals.fault_snapshot [--data PATH] [--intervals 1/1000,1/100,1/20,1/5,0]
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
from evals.fault_schedule import FaultSchedule, Plan, batch_ends, plan
from examples.movielens import metrics

NAME = "fault_snapshot"
TITLE = "Kill -9 of a training shard: snapshot interval vs serving AUC"
UNINTERRUPTED = -1.0
NO_SNAPSHOT = 0.0


def variant_name(interval: dataset.StreamTime | None) -> str:
    if interval is None:
        return "uninterrupted"
    if not interval.seconds:
        return "killed, no snapshot"
    return f"killed, snapshot every {interval.label()}"


def run_one(
    args: argparse.Namespace,
    windows: list,
    interval: dataset.StreamTime | None,
    planned: Plan,
    crash_window: int,
    work: Path,
) -> dict[str, Any]:
    days = UNINTERRUPTED if interval is None else interval.days
    with EvalCluster(
        base_config(), work / f"interval{days:g}", args.training_shards, snapshots=days > 0
    ) as cluster:
        schedule = FaultSchedule(cluster, planned, args.shard)
        per_window = []
        scored = []
        for i, (window, following) in enumerate(pairwise(windows)):
            trained = training.train(cluster, window, args.batch_size, schedule.batches)
            if i < crash_window:
                # Up to the kill every run is the same, batch for batch: nothing to compare.
                scored.append(None)
                continue
            cluster.sync()
            result = cluster.score(following)
            scored.append(result.predictions)
            per_window.append(
                {
                    "window": i,
                    "train_auc": trained.auc(window.labels),
                    "serving_auc": metrics.roc_auc(following.labels, result.predictions),
                    "found": training.found_fraction(result),
                }
            )
    if planned.kill is not None and schedule.crash is None:
        raise RuntimeError(f"the stream ended before the kill (event {planned.kill})")
    return {
        "interval_days": days,
        "interval": None if interval is None else interval.as_dict(),
        "variant": variant_name(interval),
        "snapshots": len(schedule.snapshots),
        "snapshot_seconds": schedule.snapshot_seconds,
        "crash": schedule.crash,
        "per_window": per_window,
        "predictions": scored,
    }


def by_window(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """A run's per-window numbers by the index of the trained window."""
    return {w["window"]: w for w in result["per_window"]}


def variants(
    windows: list, args: argparse.Namespace, span: float, crash_event: int
) -> tuple[list[tuple[dataset.StreamTime | None, Plan]], list[dict[str, Any]]]:
    """The runs to make (uninterrupted, each interval that snapshots differently, no
    snapshot), each with its plan, and the intervals that would change nothing, with why."""
    times = dataset.stream_times(args.intervals, args.intervals_days, span)
    intervals = sorted({t for t in times if t.seconds > 0}, key=lambda t: t.seconds)
    to_run: list[tuple[dataset.StreamTime | None, Plan]] = [
        (None, plan(windows, args.batch_size, 0, None))
    ]
    no_effect = []
    for interval in intervals:
        planned = plan(windows, args.batch_size, interval.seconds, crash_event)
        same = next((t for t, p in to_run[1:] if p.snapshots == planned.snapshots), None)
        if not planned.snapshots:
            why = "no snapshot falls before the kill: the same as a kill without snapshots"
        elif same is not None:
            why = f"the same snapshots before the kill as every {same.label()}"
        else:
            to_run.append((interval, planned))
            continue
        no_effect.append({"variant": variant_name(interval), "why": why})
    if any(t.seconds == 0 for t in times):
        to_run.append((dataset.StreamTime(0.0), plan(windows, args.batch_size, 0, crash_event)))
    return to_run, no_effect


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    events, release = dataset.load_stream(args.data, args.limit)
    windows = events.windows(args.windows)
    crash_event = int(len(events) * args.crash_at)
    to_run, no_effect = variants(windows, args, dataset.span_seconds(events), crash_event)
    kill = plan(windows, args.batch_size, 0, crash_event).kill
    counts, times = batch_ends(windows, args.batch_size)
    bounds = np.cumsum([0] + [len(w) for w in windows])
    crash_window = int(np.searchsorted(bounds, kill, side="right") - 1)
    after = list(range(crash_window, len(windows) - 1))  # trained windows scored after it
    runs = []
    with cli.workdir(args, NAME, in_memory=True) as work:
        for interval, planned in to_run:
            result = run_one(args, windows, interval, planned, crash_window, work)
            runs.append(result)
            crash = result["crash"] or {}
            cli.say(
                args,
                f"{result['variant']}: {result['snapshots']} snapshots, "
                f"{crash.get('events_lost', 0)} events lost, serving AUC after the kill "
                + " ".join(f"{by_window(result)[i]['serving_auc']:.4f}" for i in after),
            )
    base = runs[0]
    summary = []
    for result in runs:
        labels = np.concatenate([windows[i + 1].labels for i in after])
        predictions = np.concatenate([result["predictions"][i] for i in after])
        base_predictions = np.concatenate([base["predictions"][i] for i in after])
        auc = metrics.roc_auc(labels, predictions)
        first = after[0]
        crash = result["crash"] or {}
        summary.append(
            {
                "variant": result["variant"],
                "interval_days": result["interval_days"],
                "snapshots": result["snapshots"],
                "snapshot_seconds": result["snapshot_seconds"],
                "events_lost": crash.get("events_lost"),
                "rows_lost": crash.get("rows_lost"),
                "restart_seconds": crash.get("restart_seconds"),
                "serving_auc_after": auc,
                "delta_auc_after": auc - metrics.roc_auc(labels, base_predictions),
                "serving_auc_next_window": by_window(result)[first]["serving_auc"],
                "delta_auc_next_window": by_window(result)[first]["serving_auc"]
                - by_window(base)[first]["serving_auc"],
            }
        )
    for result in runs:
        del result["predictions"]
    kill_time = int(times[np.searchsorted(counts, kill)])
    return {
        **results.run_info(NAME, args, started, release),
        "events": len(events),
        "windows": args.windows,
        "window_events": len(windows[0]),
        "batch_size": args.batch_size,
        "batch_days_mean": float(np.mean(np.diff(times)) / dataset.DAY) if len(times) > 1 else 0,
        "killed_shard": args.shard,
        "training_shards": args.training_shards,
        "crash_at": args.crash_at,
        "crash_event_requested": crash_event,
        "crash_event": kill,
        "crash_window": crash_window,
        "crash_date": results.utc_date(kill_time),
        "no_effect": no_effect,
        "summary": summary,
        "runs": runs,
    }


def markdown(doc: dict[str, Any]) -> str:
    header = [
        "run",
        "snapshots before the kill",
        "events lost",
        "rows lost (shard)",
        "restart s",
        "serving AUC, next window",
        "Δ",
        "serving AUC, all windows after the kill",
        "Δ vs uninterrupted",
    ]

    def maybe(value: Any, fmt: str) -> str:
        return "—" if value is None else fmt.format(value)

    rows = [
        [
            s["variant"],
            s["snapshots"] if s["interval_days"] > 0 else "—",
            maybe(s["events_lost"], "{}"),
            maybe(s["rows_lost"], "{}"),
            maybe(s["restart_seconds"], "{:.1f}"),
            f"{s['serving_auc_next_window']:.4f}",
            f"{s['delta_auc_next_window']:+.4f}",
            f"{s['serving_auc_after']:.4f}",
            f"{s['delta_auc_after']:+.4f}",
        ]
        for s in doc["summary"]
    ]
    scored = doc["windows"] - 1 - doc["crash_window"]
    description = (
        f"{doc['events']} ratings in {doc['windows']} windows of ~{doc['window_events']}. "
        f"Training shard {doc['killed_shard']} of {doc['training_shards']} is killed "
        f"(SIGKILL) after event {doc['crash_event']} (stream date {doc['crash_date']}, "
        f"window {doc['crash_window']}: the first batch boundary at or after "
        f"{doc['crash_at']:.0%} of the stream, event {doc['crash_event_requested']}) and "
        "restarted from its newest snapshot; from then on, serving is synced after every "
        f"window and scores the next one. AUC over the {scored} windows scored after the "
        "kill. Events lost: trained after the shard's last snapshot; rows lost: the shard's "
        f"rows then minus after the restore. Snapshots fall between batches of "
        f"{doc['batch_size']} ratings, {doc['batch_days_mean']:.3g} days of this stream on "
        "average."
    )
    text = results.document(TITLE, doc, description, header, rows)
    return text + results.no_effect_note(doc, "Not run", lambda v: v["variant"])


def plot(doc: dict[str, Any], path: Path) -> None:
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for result in doc["runs"]:
        windows = [w["window"] + 1 for w in result["per_window"]]
        aucs = [w["serving_auc"] for w in result["per_window"]]
        style = "k-" if result["interval_days"] == UNINTERRUPTED else "o--"
        ax.plot(windows, aucs, style, ms=3, lw=2 if style == "k-" else 1, label=result["variant"])
    ax.axvline(doc["crash_window"] + 0.5, color="tab:red", ls=":", label="kill -9 of a shard")
    plots.finish_axes(
        ax,
        TITLE,
        "lower right",
        "scored window, from the kill on (served by the model of the window before)",
        "serving AUC of the window",
    )
    plots.save_figure(fig, path)


def parser() -> argparse.ArgumentParser:
    p = cli.eval_parser(NAME, __doc__)
    p.add_argument("--windows", type=int, default=10, help="stream windows (default 10)")
    intervals = p.add_mutually_exclusive_group()
    intervals.add_argument(
        "--intervals",
        type=dataset.parse_fractions,
        default=[1 / 1000, 1 / 100, 1 / 20, 1 / 5, 0.0],
        help="snapshot intervals as fractions of the stream's span, 0 = killed without any "
        "snapshot (default 1/1000,1/100,1/20,1/5,0); the uninterrupted run is always made",
    )
    intervals.add_argument(
        "--intervals-days",
        type=cli.comma_list(float),
        default=None,
        help="snapshot intervals in days of stream time instead, e.g. 1,7,28,0",
    )
    p.add_argument(
        "--crash-at", type=float, default=0.55, help="kill point, a fraction of the stream"
    )
    p.add_argument("--shard", type=int, default=1, help="training shard to kill (default 1)")
    return p


def check(args: argparse.Namespace) -> None:
    if any(d < 0 for d in args.intervals_days or ()) or any(f < 0 for f in args.intervals):
        raise SystemExit("--intervals, --intervals-days: intervals must be >= 0")
    if not 0 <= args.shard < args.training_shards:
        raise SystemExit(f"--shard: must be a training shard, 0 to {args.training_shards - 1}")
    if not 0.0 < args.crash_at < 1.0:
        raise SystemExit("--crash-at: must be a fraction in (0, 1)")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_eval(NAME, argv, parser(), run, markdown, plot, check)


if __name__ == "__main__":
    sys.exit(main())
