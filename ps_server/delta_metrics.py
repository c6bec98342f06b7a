"""The delta counters and cursor gauges of one server (export on training, apply on
serving), on the server's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["DeltaMetrics"]


class DeltaMetrics:
    """Delta counters of one server, on its registry.

    Rows and tombstones applied or skipped are the tables' own counters
    (``monolith_ps_delta_rows_applied_total`` and its siblings, ``ps_server.metrics``).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows_exported = Counter(
            "monolith_ps_delta_rows_exported_total",
            "Rows streamed by ExportDelta (training).",
            ["table"],
            registry=registry,
        )
        self.bytes_exported = Counter(
            "monolith_ps_delta_bytes_exported_total",
            "Bytes of delta chunks streamed by ExportDelta (training).",
            ["table"],
            registry=registry,
        )
        self.bytes_received = Counter(
            "monolith_ps_delta_bytes_received_total",
            "Bytes of delta chunks received by ApplyDelta (serving).",
            ["table"],
            registry=registry,
        )
        self.full_resyncs = Counter(
            "monolith_ps_delta_full_resyncs_total",
            "Full resyncs swapped in (serving), by table.",
            ["table"],
            registry=registry,
        )
        self.cursor_version = Gauge(
            "monolith_ps_sync_cursor_version",
            "Version of a training shard's table this serving server has fully applied.",
            ["table", "source_shard"],
            registry=registry,
        )
        self.cursor_timestamp = Gauge(
            "monolith_ps_sync_cursor_timestamp_seconds",
            "Unix time a cursor last moved.",
            ["table", "source_shard"],
            registry=registry,
        )
