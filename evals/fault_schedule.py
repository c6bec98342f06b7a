"""When a fault-tolerance run snapshots and when it kills a shard: a plan computed from
the stream alone (so variants that would snapshot alike are known before any run), and
the batch wrapper that carries it out on a live cluster, restart included."""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from evals import results
from evals.cluster import EvalCluster
from monolith_ps.local import LocalClusterError

__all__ = ["FaultSchedule", "Plan", "batch_ends", "plan", "restart"]

_FULL_EVERY = 16  # snapshots per chain: one full, then incrementals


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where, in events trained, one run writes its snapshots and is killed."""

    snapshots: tuple[int, ...]  # events trained when each snapshot before the kill is written
    kill: int | None  # events trained at the kill (a batch boundary), None: no kill


def batch_ends(windows: Sequence[Any], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Events trained and stream time (the batch's last event) at the end of every batch,
    as the eval trains: window by window, each cut into batches."""
    counts, times, done = [], [], 0
    for window in windows:
        for start in range(0, len(window), batch_size):
            stop = min(start + batch_size, len(window))
            done += stop - start
            counts.append(done)
            times.append(int(window.timestamps[stop - 1]))
    return np.array(counts, np.int64), np.array(times, np.int64)


def plan(windows: Sequence[Any], batch_size: int, interval: float, crash_event: int | None) -> Plan:
    """The snapshots (every ``interval`` seconds of stream time from the first event, at
    the first batch boundary after each multiple; none for 0) written before the kill at
    the first batch boundary at or after ``crash_event``. The kill comes first: a snapshot
    due at the same boundary is never written."""
    counts, times = batch_ends(windows, batch_size)
    kill = None
    if crash_event is not None:
        at = int(np.searchsorted(counts, crash_event, side="left"))
        if at == len(counts) or counts[at] == counts[-1]:
            raise ValueError(f"the stream ends before the kill point (event {crash_event})")
        kill = int(counts[at]) if crash_event > 0 else 0
    snapshots: list[int] = []
    if interval > 0:
        start = int(windows[0].timestamps[0])
        period = 0
        for count, time_ in zip(counts[:-1].tolist(), times[:-1].tolist(), strict=True):
            if kill is not None and count >= kill:
                break
            now = int((time_ - start) // interval)
            if now > period:
                snapshots.append(count)
                period = now
    return Plan(tuple(snapshots), kill)


class FaultSchedule:
    """Wraps the trainer's batches: snapshots and the kill and restart of one training
    shard where the ``Plan`` says."""

    def __init__(self, cluster: EvalCluster, planned: Plan, shard: int) -> None:
        self.cluster = cluster
        self.plan = planned
        self.shard = shard
        self.trained = 0  # events trained so far
        self.snapshots: list[int] = []  # events trained when each snapshot was written
        self.snapshot_seconds = 0.0
        self.crash: dict[str, Any] | None = None
        self._last_time: int | None = None
        self._due = set(planned.snapshots)

    def batches(self, events: Any, batch_size: int) -> Iterator[Any]:
        for batch in events.batches(batch_size):
            if self.crash is None and self.trained == self.plan.kill:
                self._kill_and_restore()
            if self.trained in self._due and self.crash is None:
                full = len(self.snapshots) % _FULL_EVERY == 0
                self.snapshot_seconds += self.cluster.snapshot(full=full)
                self.snapshots.append(self.trained)
            yield batch
            self.trained += len(batch)
            self._last_time = int(batch.timestamps[-1])

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
            "stream_time": self._last_time,
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
