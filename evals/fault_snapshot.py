"""A training shard killed mid-stream and restored from its last snapshot, for snapshot
intervals from a day to a year of stream time (Monolith: fault tolerance, snapshot frequency).

Online training over the stream in windows; from the kill on, after each window the sync
agent runs a round and serving scores the next window (before the kill every run is the
same, batch for batch). Training shards write snapshots (Snapshot RPC)
at the first batch boundary after each multiple of the interval in stream time (a
batch holds 256 ratings, about three weeks of this stream on average, so any interval
under a few days means a snapshot after nearly every batch). At a fixed point of the
stream, training shard 1 (embedding rows only; the dense part lives on shard 0) is
killed with SIGKILL and restarted: it restores its newest snapshot and training goes
on from the next batch, so the updates since that snapshot are lost for its rows. The
serving AUC afterwards is compared with the same run uninterrupted, and with a restart
that had no snapshot at all (the shard comes back empty).

    python -m evals.fault_snapshot [--intervals-days 1,7,28,364,0] [--crash-at 0.55]
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from evals import cli, dataset, plots, results, training
from evals.cluster import EvalCluster, base_config
from examples.movielens import metrics
from monolith_ps.local import LocalClusterError

NAME = "fault_snapshot"
TITLE = "Kill -9 of a training shard: snapshot interval vs serving AUC"
_DAY = 86400
_FULL_EVERY = 16  # snapshots per chain: one full, then incrementals
UNINTERRUPTED = -1.0
NO_SNAPSHOT = 0.0


def variant_name(days: float) -> str:
    if days == UNINTERRUPTED:
        return "uninterrupted"
    if days == NO_SNAPSHOT:
        return "killed, no snapshot"
    return f"killed, snapshot every {days:g} day" + ("s" if days != 1 else "")


class FaultSchedule:
    """Wraps the trainer's batches: snapshots on the schedule, and the kill and restart
    of one training shard before the first batch at or after ``crash_event``."""

    def __init__(
        self, cluster: EvalCluster, interval_days: float, crash_event: int | None, shard: int
    ) -> None:
        self.cluster = cluster
        self.interval = interval_days * _DAY if interval_days > 0 else 0.0
        self.crash_event = crash_event or 0
        self.crashes = crash_event is not None
        self.shard = shard
        self.trained = 0  # events trained so far
        self._period: int | None = None  # period of the last snapshot
        self.snapshots: list[int] = []  # events trained when each snapshot was written
        self.snapshot_seconds = 0.0
        self.crash: dict[str, Any] | None = None
        self._last_time: int | None = None

    def batches(self, events: Any, batch_size: int) -> Iterator[Any]:
        for batch in events.batches(batch_size):
            # The kill comes first: a snapshot due at the same boundary is never written.
            if self.crashes and self.crash is None and self.trained >= self.crash_event:
                self._kill_and_restore()
            self._maybe_snapshot()
            yield batch
            self.trained += len(batch)
            self._last_time = int(batch.timestamps[-1])

    def _maybe_snapshot(self) -> None:
        if not self.interval or self._last_time is None or self.crash is not None:
            return
        period = int(self._last_time // self.interval)
        if period == self._period:
            return
        full = len(self.snapshots) % _FULL_EVERY == 0
        self.snapshot_seconds += self.cluster.snapshot(full=full)
        self.snapshots.append(self.trained)
        self._period = period

    def _kill_and_restore(self) -> None:
        rows_before = self.cluster.rows_of_shard(self.shard)
        self.cluster.local.kill("training", self.shard, sig=signal.SIGKILL)
        started = time.monotonic()
        attempts = restart(self.cluster, self.shard)
        restart_seconds = time.monotonic() - started
        rows_after = self.cluster.rows_of_shard(self.shard)
        last = self.snapshots[-1] if self.snapshots else 0
        self.crash = {
            "event": self.trained,
            "stream_date": results.utc_date(self._last_time or 0),
            "last_snapshot_event": last if self.snapshots else None,
            "events_lost": self.trained - last,
            "rows_before": rows_before,
            "rows_after_restore": rows_after,
            "rows_lost": rows_before - rows_after,
            "restart_seconds": restart_seconds,
            "restart_attempts": attempts,
        }


def restart(cluster: EvalCluster, shard: int, attempts: int = 2) -> int:
    """Start the killed shard again and wait until it has restored and serves; returns the
    attempts it took. A second attempt is made only when the new process died before it
    started serving at all (it never reached the restore), as a process forked from one
    with live gRPC channels can (grpc/grpc#43055); a restore that fails is not retried."""
    for attempt in range(1, attempts + 1):
        try:
            cluster.local.restart("training", shard)
            return attempt
        except LocalClusterError as exc:
            if attempt == attempts or "before logging server_started" not in str(exc):
                raise
            print(f"restart of training-{shard} failed ({exc}); trying again", file=sys.stderr)
    raise AssertionError("unreachable")


def run_one(
    args: argparse.Namespace, windows: list, days: float, crash_event: int, work: Path
) -> dict[str, Any]:
    crashes = days != UNINTERRUPTED
    with EvalCluster(
        base_config(), work / f"interval{days:g}", args.training_shards, snapshots=days > 0
    ) as cluster:
        schedule = FaultSchedule(cluster, days, crash_event if crashes else None, args.shard)
        per_window = []
        scored = []
        for i, (window, following) in enumerate(pairwise(windows)):
            trained = training.train(cluster, window, args.batch_size, schedule.batches)
            if schedule.trained < crash_event:
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
    if crashes and schedule.crash is None:
        raise RuntimeError(f"the stream ended before the crash point (event {crash_event})")
    return {
        "interval_days": days,
        "variant": variant_name(days),
        "snapshots": len(schedule.snapshots),
        "snapshot_seconds": schedule.snapshot_seconds,
        "crash": schedule.crash,
        "per_window": per_window,
        "predictions": scored,
    }


def by_window(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """A run's per-window numbers by the index of the trained window."""
    return {w["window"]: w for w in result["per_window"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    events, release = dataset.load_stream(args.data, args.limit)
    windows = events.windows(args.windows)
    crash_event = int(len(events) * args.crash_at)
    bounds = np.cumsum([0] + [len(w) for w in windows])
    crash_window = int(np.searchsorted(bounds, crash_event, side="right") - 1)
    after = list(range(crash_window, len(windows) - 1))  # trained windows scored after it
    intervals = sorted({d for d in args.intervals_days if d > 0})
    variants = [UNINTERRUPTED, *intervals, *([NO_SNAPSHOT] if 0 in args.intervals_days else [])]
    runs = []
    with cli.workdir(args, NAME, in_memory=True) as work:
        for days in variants:
            result = run_one(args, windows, days, crash_event, work)
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
    return {
        **results.run_info(NAME, args, started, release),
        "events": len(events),
        "windows": args.windows,
        "window_events": len(windows[0]),
        "killed_shard": args.shard,
        "training_shards": args.training_shards,
        "crash_event": crash_event,
        "crash_window": crash_window,
        "crash_date": (runs[1]["crash"] or {}).get("stream_date") if len(runs) > 1 else None,
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
        f"(SIGKILL) before event {doc['crash_event']} (stream date {doc['crash_date']}, "
        f"window {doc['crash_window']}) and restarted from its newest snapshot; from then "
        "on, serving is synced after every window and scores the next one. AUC over the "
        f"{scored} windows scored after the kill. Events lost: "
        "trained after the shard's last snapshot; rows lost: the shard's rows then minus "
        "after the restore."
    )
    return results.document(TITLE, doc, description, header, rows)


def plot(doc: dict[str, Any], path: Path) -> None:
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for result in doc["runs"]:
        windows = [w["window"] + 1 for w in result["per_window"]]
        aucs = [w["serving_auc"] for w in result["per_window"]]
        style = "k-" if result["interval_days"] == UNINTERRUPTED else "o--"
        ax.plot(windows, aucs, style, ms=3, lw=2 if style == "k-" else 1, label=result["variant"])
    ax.axvline(doc["crash_window"] + 0.5, color="tab:red", ls=":", label="kill -9 of a shard")
    ax.set_xlabel("scored window, from the kill on (served by the model of the window before)")
    ax.set_ylabel("serving AUC of the window")
    plots.finish_axes(ax, TITLE, legend="lower right")
    plots.save_figure(fig, path)


def parser() -> argparse.ArgumentParser:
    p = cli.eval_parser(NAME, __doc__)
    p.add_argument("--windows", type=int, default=10, help="stream windows (default 10)")
    p.add_argument(
        "--intervals-days",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[1.0, 7.0, 28.0, 364.0, 0.0],
        help="snapshot intervals in days of stream time, 0 = killed without any snapshot "
        "(default 1,7,28,364,0); the uninterrupted run is always made",
    )
    p.add_argument(
        "--crash-at", type=float, default=0.55, help="kill point, a fraction of the stream"
    )
    p.add_argument("--shard", type=int, default=1, help="training shard to kill (default 1)")
    return p


def check(args: argparse.Namespace) -> None:
    if any(d < 0 for d in args.intervals_days):
        raise SystemExit("--intervals-days: intervals must be >= 0 days")
    if not 0 <= args.shard < args.training_shards:
        raise SystemExit(f"--shard: must be a training shard, 0 to {args.training_shards - 1}")
    if not 0.0 < args.crash_at < 1.0:
        raise SystemExit("--crash-at: must be a fraction in (0, 1)")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_eval(NAME, argv, parser(), run, markdown, plot, check)


if __name__ == "__main__":
    sys.exit(main())
