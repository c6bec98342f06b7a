"""The sync agent's Prometheus metrics, all built on one injected registry.

>>> from prometheus_client import CollectorRegistry
>>> metrics = SyncMetrics(CollectorRegistry())
>>> metrics.rounds.labels(kind="sparse", outcome="ok").inc()
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from monolith_ps.metrics import MetricSet, counter, gauge, histogram

__all__ = ["SyncMetrics"]

_ROUND_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class SyncMetrics(MetricSet):
    """Rounds, rows and bytes applied, lag per replica and table, full resyncs and errors.

    The process's own metrics (``process_*``, ``python_info``) come along. Label
    ``replica`` is the discovery name of a serving server (pod name, or its address
    for static lists); ``source_shard`` is the training shard index.
    """

    rounds = counter(
        "monolith_ps_sync_rounds_total",
        "Sync rounds run, by kind (sparse, dense, new_replicas: replicas synced as soon as "
        "they appeared without state) and outcome (ok, partial, failed).",
        "kind",
        "outcome",
    )
    round_seconds = histogram(
        "monolith_ps_sync_round_duration_seconds",
        "Wall time of a sync round, from discovery to the last stream's end.",
        "kind",
        buckets=_ROUND_BUCKETS,
    )
    rows_applied = counter(
        "monolith_ps_sync_rows_applied_total",
        "Rows a serving replica applied (its version was newer than the one it held).",
        "replica",
        "table",
    )
    rows_skipped = counter(
        "monolith_ps_sync_rows_skipped_total",
        "Rows a serving replica already held at the same or a newer version.",
        "replica",
        "table",
    )
    tombstones_applied = counter(
        "monolith_ps_sync_tombstones_applied_total",
        "Deletions (from deletes, expiry and eviction on training) applied on serving.",
        "replica",
        "table",
    )
    bytes_sent = counter(
        "monolith_ps_sync_bytes_sent_total",
        "Bytes of delta chunks streamed to a serving replica (streams that completed).",
        "replica",
        "table",
    )
    bytes_exported = counter(
        "monolith_ps_sync_bytes_exported_total",
        "Bytes of delta chunks received from training shards.",
        "source_shard",
        "table",
    )
    lag_versions = gauge(
        "monolith_ps_sync_lag_versions",
        "Versions a replica is behind training after the last round, summed over training shards.",
        "replica",
        "table",
    )
    lag_seconds = gauge(
        "monolith_ps_sync_lag_seconds",
        "Seconds since a replica that is behind training last moved its oldest cursor "
        "(0 when it is up to date).",
        "replica",
        "table",
    )
    full_resyncs = counter(
        "monolith_ps_sync_full_resyncs_total",
        "Full resync streams completed, by replica, table and training shard.",
        "replica",
        "table",
        "source_shard",
    )
    errors = counter(
        "monolith_ps_sync_errors_total",
        "Failures by stage (discover, describe, sync_state, export, apply, stalled, "
        "topology) and server.",
        "stage",
        "server",
    )
    dense_version = gauge(
        "monolith_ps_sync_dense_version",
        "Dense version a replica holds after the last dense round.",
        "replica",
    )
    replicas = gauge(
        "monolith_ps_sync_replicas",
        "Serving replicas that answered at the start of the last round.",
    )
    training_shards = gauge(
        "monolith_ps_sync_training_shards",
        "Training shards that answered at the start of the last round.",
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        super().__init__(registry)

    def forget_replica(self, replica: str, tables: list[str]) -> None:
        """Drop the gauges of a replica that discovery no longer lists."""
        for table in tables:
            for lag in (self.lag_versions, self.lag_seconds):
                with contextlib.suppress(KeyError):
                    lag.remove(replica, table)
        with contextlib.suppress(KeyError):
            self.dense_version.remove(replica)
