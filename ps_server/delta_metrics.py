"""The delta counters and cursor gauges of one server (export on training, apply on
serving), on the server's registry."""

from __future__ import annotations

from monolith_ps.metrics import MetricSet, counter, gauge

__all__ = ["DeltaMetrics"]


class DeltaMetrics(MetricSet):
    """Delta counters of one server, on its registry.

    Rows and tombstones applied or skipped are the tables' own counters
    (``monolith_ps_delta_rows_applied_total`` and its siblings, ``ps_server.metrics``).
    """

    rows_exported = counter(
        "monolith_ps_delta_rows_exported_total", "Rows streamed by ExportDelta (training).", "table"
    )
    bytes_exported = counter(
        "monolith_ps_delta_bytes_exported_total",
        "Bytes of delta chunks streamed by ExportDelta (training).",
        "table",
    )
    bytes_received = counter(
        "monolith_ps_delta_bytes_received_total",
        "Bytes of delta chunks received by ApplyDelta (serving).",
        "table",
    )
    full_resyncs = counter(
        "monolith_ps_delta_full_resyncs_total",
        "Full resyncs swapped in (serving), by table.",
        "table",
    )
    cursor_version = gauge(
        "monolith_ps_sync_cursor_version",
        "Version of a training shard's table this serving server has fully applied.",
        "table",
        "source_shard",
    )
    cursor_timestamp = gauge(
        "monolith_ps_sync_cursor_timestamp_seconds",
        "Unix time a cursor last moved.",
        "table",
        "source_shard",
    )
