"""What each serving replica has applied, and which exports bring every replica up to date.

The agent keeps no state of its own: every round it reads each replica's cursors
(``GetSyncState``) and each training shard's epoch and table versions
(``DescribeTables``), and plans the exports from those alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from monolith_ps.transport.cluster import ShardInfo, SyncCursor, SyncState, TableInfo
from sync_agent.discovery.base import Endpoint
from sync_agent.router import Destination, can_share_keys

__all__ = [
    "ExportPlan",
    "ReplicaState",
    "TrainingShard",
    "dense_source",
    "needs_full",
    "plan_exports",
]


@dataclass(frozen=True)
class ReplicaState:
    """One serving replica as it reported itself (``GetSyncState``) at the start of a round."""

    endpoint: Endpoint
    sync: SyncState

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def shard_index(self) -> int:
        return self.sync.shard_index

    @property
    def num_shards(self) -> int:
        return self.sync.num_shards

    @property
    def dense_version(self) -> int:
        return self.sync.dense_version

    @property
    def dense_epoch(self) -> int:
        return self.sync.dense_epoch

    def cursor(self, table: str, source_shard: int) -> SyncCursor | None:
        return self.sync.cursor(table, source_shard)


@dataclass(frozen=True)
class TrainingShard:
    """A training server as it described itself (``DescribeTables``) at the start of a round."""

    endpoint: Endpoint
    info: ShardInfo

    @property
    def shard_index(self) -> int:
        return self.info.shard_index

    @property
    def num_shards(self) -> int:
        return self.info.num_shards

    @property
    def epoch(self) -> int:
        return self.info.epoch

    @property
    def tables(self) -> tuple[TableInfo, ...]:
        return tuple(self.info.tables.values())

    @property
    def dense_names(self) -> tuple[str, ...]:
        return tuple(self.info.dense)


@dataclass(frozen=True)
class ExportPlan:
    """One ``ExportDelta`` call of one table, fanned out to ``replicas``.

    ``full`` plans ask with epoch 0, which no server has, so the answer is always a
    full resync; incremental plans ask from the lowest cursor among their replicas
    and each replica is sent only what lies above its own (its ``Destination.floor``).
    """

    source: TrainingShard
    table: TableInfo
    full: bool
    since_version: int
    replicas: tuple[tuple[ReplicaState, Destination], ...] = field(default=())
    isolated: bool = False  # one replica that failed recently, synced apart from the rest

    @property
    def epoch(self) -> int:
        return 0 if self.full else self.source.epoch


def dense_source(training: Sequence[TrainingShard]) -> TrainingShard | None:
    """Training shard 0, which holds the dense arrays, if it answered."""
    return next((s for s in training if s.shard_index == 0), None)


def needs_full(cursor: SyncCursor | None, source: TrainingShard, table: TableInfo) -> bool:
    """Whether a replica's cursor cannot be continued and the replica needs a full resync.

    No cursor (new or restarted replica), another epoch (the training shard restarted
    and may have lost updates), another training shard count (rows moved between
    shards), or a cursor ahead of the shard's version (its history was rewound).
    """
    return (
        cursor is None
        or cursor.epoch != source.epoch
        or cursor.source_num_shards != source.num_shards
        or cursor.version > table.version
    )


def plan_exports(
    source: TrainingShard,
    table: TableInfo,
    replicas: Iterable[ReplicaState],
    isolated: Sequence[str] = (),
) -> list[ExportPlan]:
    """The exports of one training shard's table that bring ``replicas`` up to date.

    Replicas that need a full resync share one full export, those behind share one
    incremental export, and up-to-date replicas (or ones that cannot own any of the
    shard's keys) get nothing. A replica named in ``isolated`` (it failed or stalled
    recently) gets exports of its own (``ExportPlan.isolated``), so it cannot hold the
    others back again.
    """
    shared: dict[bool, list[tuple[ReplicaState, Destination, int]]] = {True: [], False: []}
    plans: list[ExportPlan] = []
    for replica in replicas:
        if not can_share_keys(
            source.shard_index, source.num_shards, replica.shard_index, replica.num_shards
        ):
            continue
        cursor = replica.cursor(table.name, source.shard_index)
        full = needs_full(cursor, source, table)
        if not full and cursor is not None and cursor.version == table.version:
            continue
        floor = 0 if full or cursor is None else cursor.version
        dest = Destination(replica.num_shards, replica.shard_index, floor)
        if replica.name in isolated:
            plans.append(ExportPlan(source, table, full, floor, ((replica, dest),), True))
        else:
            shared[full].append((replica, dest, floor))
    for full, members in shared.items():
        if members:
            since = min(floor for _, _, floor in members)
            pairs = tuple((replica, dest) for replica, dest, _ in members)
            plans.append(ExportPlan(source, table, full, since, pairs))
    return plans
