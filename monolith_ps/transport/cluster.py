"""What servers say about themselves, as typed values: ``DescribeTables`` and
``GetSyncState`` answers, and the checks that a set of shards forms one cluster.

The client and the sync agent parse these answers here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from monolith_ps import wire
from monolith_ps.v1 import ps_pb2

__all__ = [
    "DEFAULT_MAX_BATCH_KEYS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ShardInfo",
    "SyncCursor",
    "SyncState",
    "TableInfo",
    "client_view_problems",
    "consistent_shards",
    "shard_info_from_proto",
    "sync_state_from_proto",
]

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_BATCH_KEYS = 1 << 20
T = TypeVar("T")
ROLE_NAMES = {ps_pb2.ROLE_TRAINING: "training", ps_pb2.ROLE_SERVING: "serving"}


@dataclasses.dataclass(frozen=True)
class TableInfo:
    """A table as one server describes it."""

    name: str
    dim: int
    dtype: str = "float32"
    optimizer: str = ""
    optimizer_args: Mapping[str, float] = dataclasses.field(default_factory=dict)
    initializer: str = ""
    admit_after: int = 1
    ttl_seconds: float | None = None
    max_rows: int | None = None
    eviction: str = ""
    num_rows: int = 0
    version: int = 0
    load_factor: float = 0.0
    memory_bytes: int = 0


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """What one server says about itself (``DescribeTables``)."""

    address: str
    role: str
    shard_index: int
    num_shards: int
    epoch: int
    tables: dict[str, TableInfo]
    dense: dict[str, int]  # name -> size
    server_version: str = ""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_batch_keys: int = DEFAULT_MAX_BATCH_KEYS


@dataclasses.dataclass(frozen=True)
class SyncCursor:
    """How far a serving server has applied one table of one training shard."""

    table: str
    source_shard: int
    source_num_shards: int
    epoch: int
    version: int  # fully applied up to this version
    applied_at_unix: float  # when the cursor last moved

    def to_proto(self) -> ps_pb2.SyncCursor:
        return ps_pb2.SyncCursor(**dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class SyncState:
    """What one serving server has applied (``GetSyncState``)."""

    address: str
    shard_index: int
    num_shards: int
    cursors: tuple[SyncCursor, ...]
    dense_version: int = 0
    dense_epoch: int = 0

    def cursor(self, table: str, source_shard: int) -> SyncCursor | None:
        """The cursor of ``table`` from training shard ``source_shard``, if there is one."""
        for c in self.cursors:
            if c.table == table and c.source_shard == source_shard:
                return c
        return None


def _from_message(cls: type[T], message: Any, **derived: Any) -> T:
    """A ``cls`` whose fields are ``derived`` where given, else the proto ``message``'s
    fields of the same name (the reverse of ``SyncCursor.to_proto``)."""
    copied = {
        f.name: getattr(message, f.name)
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name not in derived
    }
    return cls(**copied, **derived)


def shard_info_from_proto(address: str, r: ps_pb2.DescribeTablesResponse) -> ShardInfo:
    """A ``ShardInfo`` from the ``DescribeTables`` answer of ``address``."""
    return _from_message(
        ShardInfo,
        r,
        address=address,
        role=ROLE_NAMES.get(r.role, "unspecified"),
        tables={
            t.name: _from_message(
                TableInfo,
                t,
                dtype=wire.dtype_from_wire(t.dtype).name,
                optimizer_args=json.loads(t.optimizer_args_json or "{}"),
                ttl_seconds=t.ttl_seconds or None,
                max_rows=t.max_rows or None,
            )
            for t in r.tables
        },
        dense={d.name: d.size for d in r.dense},
        max_message_bytes=r.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES,
        max_batch_keys=r.max_batch_keys or DEFAULT_MAX_BATCH_KEYS,
    )


def sync_state_from_proto(address: str, r: ps_pb2.GetSyncStateResponse) -> SyncState:
    """A ``SyncState`` from the ``GetSyncState`` answer of ``address``."""
    return _from_message(
        SyncState,
        r,
        address=address,
        cursors=tuple(_from_message(SyncCursor, c) for c in r.cursors),
    )


def client_view_problems(shards: Sequence[ShardInfo], role: str | None) -> list[str]:
    """Why ``shards`` (in the order of a client's address list) are not that client's
    cluster: each must be the shard of its position, all of one role (``role`` if given),
    all with the same tables and dims. Empty when they are."""
    num_shards = len(shards)
    problems = []
    for i, shard in enumerate(shards):
        if shard.shard_index != i or shard.num_shards != num_shards:
            problems.append(
                f"{shard.address} says it is shard {shard.shard_index} of {shard.num_shards}, "
                f"but it is address {i} of {num_shards} in this client's list"
            )
    roles = sorted({s.role for s in shards})
    if len(roles) > 1:
        problems.append(f"the servers mix roles: {', '.join(roles)}")
    elif role is not None and roles[0] != role:
        problems.append(f"the servers are {roles[0]} servers, this client wants {role}")
    layout = {name: t.dim for name, t in shards[0].tables.items()}
    for shard in shards[1:]:
        if {name: t.dim for name, t in shard.tables.items()} != layout:
            problems.append(f"{shard.address} holds other tables or dims than {shards[0].address}")
    return problems


def consistent_shards(
    items: Sequence[T], info: Callable[[T], ShardInfo]
) -> tuple[list[T], list[tuple[T, str]]]:
    """Split discovered shards (in any order; ``info(item)`` is what each said) into
    those that form one cluster, by shard index, and the rest with why: the shard count
    most of them report wins (the larger on a tie), and an index claimed by more than
    one server is given to none of them."""
    counts: dict[int, int] = {}
    for item in items:
        n = info(item).num_shards
        counts[n] = counts.get(n, 0) + 1
    num_shards = max(counts, key=lambda n: (counts[n], n)) if counts else 0
    refused: list[tuple[T, str]] = []
    by_index: dict[int, list[T]] = {}
    for item in items:
        shard = info(item)
        if shard.num_shards != num_shards:
            refused.append(
                (item, f"reports {shard.num_shards} training shards, the others {num_shards}")
            )
        else:
            by_index.setdefault(shard.shard_index, []).append(item)
    kept = []
    for index, claimants in sorted(by_index.items()):
        if len(claimants) > 1:
            names = ", ".join(info(c).address for c in claimants)
            refused.extend((c, f"shard {index}: {names}") for c in claimants)
        else:
            kept.append(claimants[0])
    return kept, refused
