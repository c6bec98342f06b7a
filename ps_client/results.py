"""What client calls return beyond arrays: the outcome of a push and of a snapshot."""

from __future__ import annotations

import dataclasses

__all__ = ["PushResult", "SnapshotInfo"]


@dataclasses.dataclass(frozen=True)
class PushResult:
    """What a push did, summed over shards."""

    rows_updated: int
    rows_pending_admission: int
    duplicate_requests: int  # shard requests the servers had already applied


@dataclasses.dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot one server wrote on request (``Snapshot``)."""

    address: str
    path: str  # on the server's disk
    bytes: int
    seconds: float
