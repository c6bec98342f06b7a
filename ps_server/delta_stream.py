"""Pieces of one ``ApplyDelta`` stream: the bytes it holds against the stream budget, what
it applied, and the checks of its last chunk."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from monolith_ps.v1 import ps_pb2
from ps_server.errors import SyncCursorError
from ps_server.stream_guard import StreamBudget
from ps_server.table import Delta
from ps_server.table.validation import MAX_VERSION

__all__ = [
    "ENDED_EARLY",
    "ApplyCounts",
    "HeldBytes",
    "check_not_ahead",
    "delta_bytes",
    "top_version",
    "with_first",
]


@dataclasses.dataclass
class ApplyCounts:
    applied: int = 0
    skipped: int = 0
    tombstones: int = 0

    def add(self, result: tuple[int, int, int]) -> None:
        self.applied += result[0]
        self.skipped += result[1]
        self.tombstones += result[2]

    def response(self) -> ps_pb2.ApplyDeltaResponse:
        return ps_pb2.ApplyDeltaResponse(
            rows_applied=self.applied,
            rows_skipped=self.skipped,
            tombstones_applied=self.tombstones,
        )


class HeldBytes:
    """Bytes one stream holds against the stream budget, given back when it ends."""

    def __init__(self, budget: StreamBudget, what: str) -> None:
        self._budget = budget
        self._what = what
        self.nbytes = 0

    def grow_to(self, nbytes: int) -> None:
        if nbytes > self.nbytes:
            self._budget.take(nbytes - self.nbytes, self._what)
            self.nbytes = nbytes

    def __enter__(self) -> HeldBytes:
        return self

    def __exit__(self, *exc: object) -> None:
        self._budget.give_back(self.nbytes)
        self.nbytes = 0


def delta_bytes(delta: Delta) -> int:
    return sum(
        a.nbytes
        for a in (delta.keys, delta.values, delta.versions, delta.tombstone_keys)
        if a is not None
    )


def top_version(delta: Delta) -> int:
    """The newest version a delta carries: rows, tombstones, the learned default row."""
    top = delta.default_version
    for versions in (delta.versions, delta.tombstone_versions):
        if len(versions):
            top = max(top, int(versions.max()))
    return top


def check_not_ahead(last: ps_pb2.DeltaChunk, top: int) -> None:
    """Refuse a stream that claims versions its source cannot have had: newer than the
    version its export is complete to, or past what a table's version counter can reach.
    Such a stream would pin the cursor ahead of training, and the real deltas after it
    would be skipped."""
    if last.complete_version > MAX_VERSION:
        raise SyncCursorError(
            f"delta stream for table {last.table!r} from training shard {last.source_shard} "
            f"claims complete_version {last.complete_version}, past the largest version a "
            f"table can have ({MAX_VERSION}); nothing changed"
        )
    if top > last.complete_version:
        raise SyncCursorError(
            f"delta stream for table {last.table!r} from training shard {last.source_shard} "
            f"runs ahead of its source: it carries version {top}, but says it is complete "
            f"to version {last.complete_version}; nothing changed"
        )


ENDED_EARLY = (
    "delta stream for table {table!r} from training shard {source} ended before its last "
    "chunk; nothing changed and the cursor did not move"
)


def with_first(
    first: ps_pb2.DeltaChunk, rest: Iterator[ps_pb2.DeltaChunk]
) -> Iterator[ps_pb2.DeltaChunk]:
    yield first
    yield from rest
