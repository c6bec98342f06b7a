"""When a serving server may answer lookups: it holds a state from every training shard.

A serving server that has just started holds no rows (or the rows of a bootstrap). It is
*started* once its restore is done: the sync agent may then read its cursors and stream
deltas to it. It is *ready* (gRPC health SERVING, ``/healthz`` 200, the readiness probe)
only once every table has a cursor from every training shard whose keys it can own: a
completed full sync, or a bootstrap whose cursors the agent continues. Until then lookups
are refused with UNAVAILABLE, so a client never takes a missing row for a real miss.

How many training shards to expect comes from the cursors themselves: every delta chunk
names ``source_num_shards``, the count the training servers report. No flag has to
agree with it, and a reshard of training is followed without a restart. Before the first
cursor arrives the count is unknown, and the server is not ready either way. Readiness
is latched: once ready, a server stays ready while a later full resync (a training
restart, a reshard) swaps its tables, since the old rows serve until then.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Gauge

from monolith_ps.routing import can_share_keys
from monolith_ps.v1 import ps_pb2

__all__ = ["StalenessGauge", "missing_state"]


def missing_state(
    tables: Iterable[str],
    cursors: Iterable[ps_pb2.SyncCursor],
    shard_index: int,
    num_shards: int,
) -> list[str]:
    """What keeps a serving shard from answering correctly: one line per table that lacks
    a state from some training shard (empty when it holds a state from every one)."""
    by_table: dict[str, dict[int, int]] = {}
    for cursor in cursors:
        by_table.setdefault(cursor.table, {})[cursor.source_shard] = cursor.source_num_shards
    problems = []
    for table in sorted(tables):
        held = by_table.get(table)
        if not held:
            problems.append(f"table {table!r}: no state from any training shard yet")
            continue
        count = max(held.values())
        needed = [s for s in range(count) if can_share_keys(s, count, shard_index, num_shards)]
        absent = [s for s in needed if held.get(s) != count]
        if absent:
            problems.append(
                f"table {table!r}: no state yet from training shard(s) "
                f"{', '.join(map(str, absent))} of {count}"
            )
    return problems


class StalenessGauge:
    """``monolith_ps_sync_staleness_seconds``: how old the oldest state this serving server
    answers from is (now minus the oldest cursor's time), read at each scrape.

    A cursor's time is when its rows were current: the end of the agent's delta stream,
    or, for a bootstrap, when the bundle's or snapshot's training state was written.
    """

    def __init__(
        self, registry: CollectorRegistry, cursors: Callable[[], Iterable[ps_pb2.SyncCursor]]
    ) -> None:
        self._cursors = cursors
        gauge = Gauge(
            "monolith_ps_sync_staleness_seconds",
            "Seconds since the oldest state this serving server holds was current (0 "
            "before it holds any): the lag a client sees when training is unreachable.",
            registry=registry,
        )
        gauge.set_function(self.seconds)

    def seconds(self) -> float:
        times = [c.applied_at_unix for c in self._cursors()]
        return max(0.0, time.time() - min(times)) if times else 0.0
