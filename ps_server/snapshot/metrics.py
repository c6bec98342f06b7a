"""Prometheus metrics of snapshots and restore, registered on the server's registry."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from monolith_ps.metrics import MetricSet, counter, gauge, histogram

__all__ = ["SnapshotMetrics"]

_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class SnapshotMetrics(MetricSet):
    """Snapshot duration, size, rows and age; restore duration, rows and skipped snapshots.

    ``monolith_ps_snapshot_age_seconds`` counts from the newest snapshot this server wrote
    or restored, or from process start when there is none, so an alert on it also fires
    when snapshots never succeed.
    """

    duration = histogram(
        "monolith_ps_snapshot_duration_seconds",
        "Time to write one snapshot, by kind (full or incr).",
        "kind",
        buckets=_DURATION_BUCKETS,
    )
    bytes = gauge(
        "monolith_ps_snapshot_bytes", "Bytes of the last snapshot written, by kind.", "kind"
    )
    rows = gauge("monolith_ps_snapshot_rows", "Rows in the last snapshot written, by kind.", "kind")
    snapshots = counter(
        "monolith_ps_snapshots_total",
        "Snapshots attempted, by kind and result (ok or error).",
        "kind",
        "result",
    )
    last_success = gauge(
        "monolith_ps_snapshot_last_success_timestamp_seconds",
        "Unix time of the newest snapshot written or restored (0 = none).",
    )
    age = gauge(
        "monolith_ps_snapshot_age_seconds",
        "Seconds since the newest snapshot written or restored (since process start "
        "when there is none).",
    )
    restore_duration = gauge(
        "monolith_ps_restore_duration_seconds",
        "Time the start-up restore took (read, verify, load).",
    )
    restore_rows = gauge("monolith_ps_restore_rows", "Rows loaded by the start-up restore.")
    restore_skipped = gauge(
        "monolith_ps_restore_skipped_snapshots",
        "Snapshots newer than the restored state that restore could not use.",
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        self._started = time.time()
        self._last_success: float | None = None
        super().__init__(registry)
        self.age.set_function(self._age)

    def _age(self) -> float:
        return time.time() - (self._last_success or self._started)

    def wrote(self, kind: str, seconds: float, nbytes: int, rows: int, created: float) -> None:
        self.duration.labels(kind).observe(seconds)
        self.bytes.labels(kind).set(nbytes)
        self.rows.labels(kind).set(rows)
        self.snapshots.labels(kind, "ok").inc()
        self.mark_success(created)

    def failed(self, kind: str) -> None:
        self.snapshots.labels(kind, "error").inc()

    def mark_success(self, created: float) -> None:
        self._last_success = created
        self.last_success.set(created)

    def restored(self, seconds: float, rows: int, skipped: int) -> None:
        self.restore_duration.set(seconds)
        self.restore_rows.set(rows)
        self.restore_skipped.set(skipped)
