"""How far each serving replica is behind its training shards, in versions and seconds,
reported as gauges per replica and table."""

from __future__ import annotations

import math
import time

from monolith_ps.routing import can_share_keys
from sync_agent.cursors import ReplicaState, TrainingShard, needs_full
from sync_agent.metrics import SyncMetrics

__all__ = ["LagTracker"]


class LagTracker:
    """The lag gauges, and since when each replica's table has been behind."""

    def __init__(self, metrics: SyncMetrics) -> None:
        self._metrics = metrics
        self._behind_since: dict[tuple[str, str], float] = {}
        self._known_replicas: dict[str, list[str]] = {}

    def update(
        self,
        training: list[TrainingShard],
        replicas: list[ReplicaState],
        applied: dict[tuple[str, str, int], int],
    ) -> None:
        """Set the lag gauges of every replica and table; ``applied`` maps ``(replica,
        table, source shard)`` to the version a stream of this round completed."""
        now = time.time()
        for replica in replicas:
            tables: list[str] = []
            for name in sorted({t.name for shard in training for t in shard.tables}):
                tables.append(name)
                behind_versions = 0
                oldest = math.inf
                for shard in training:
                    if not can_share_keys(
                        shard.shard_index,
                        shard.num_shards,
                        replica.shard_index,
                        replica.num_shards,
                    ):
                        continue
                    table = shard.info.tables.get(name)
                    if table is None:
                        continue
                    done = applied.get((replica.name, name, shard.shard_index))
                    cursor = replica.cursor(name, shard.shard_index)
                    if done is not None:
                        behind = max(0, table.version - done)
                    elif needs_full(cursor, shard, table) or cursor is None:
                        behind = table.version
                    else:
                        behind = table.version - cursor.version
                    if behind:
                        behind_versions += behind
                        if (
                            done is None
                            and cursor is not None
                            and not needs_full(cursor, shard, table)
                        ):
                            oldest = min(oldest, cursor.applied_at_unix)
                key = (replica.name, name)
                if behind_versions:
                    since = self._behind_since.setdefault(key, now)
                    lag_seconds = now - min(oldest, since)
                else:
                    self._behind_since.pop(key, None)
                    lag_seconds = 0.0
                self._metrics.lag_versions.labels(replica.name, name).set(behind_versions)
                self._metrics.lag_seconds.labels(replica.name, name).set(lag_seconds)
            self._known_replicas[replica.name] = tables

    def forget_gone(self, present: set[str]) -> list[str]:
        """Drop the series of replicas no longer discovered; returns their names."""
        gone = [n for n in self._known_replicas if n not in present]
        for name in gone:
            self._metrics.forget_replica(name, self._known_replicas.pop(name))
        return gone
