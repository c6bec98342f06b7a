"""Re-routing delta chunks from a training shard to the serving shards that own their rows.

Training shard ``i`` of ``N`` owns keys with ``shard_of(key, N) == i``; serving shard
``j`` of ``M`` owns keys with ``shard_of(key, M) == j``. A key of training shard ``i``
can only land on serving shard ``j`` when ``i`` and ``j`` agree modulo ``gcd(N, M)``
(both are ``mix64(key)`` reduced), so such pairs are skipped without looking at rows.
A chunk whose keys all belong to one serving shard (always when ``M`` divides ``N``, and
for every chunk of an export asked with ``route_num_shards``) travels untouched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from monolith_ps import wire
from monolith_ps.routing import can_share_keys, split_by_shard
from monolith_ps.v1 import ps_pb2

__all__ = ["ChunkRouter", "Destination", "can_share_keys", "chunk_rows", "is_empty"]

# Header fields every routed chunk copies from the chunk it came from.
_HEADER_FIELDS = (
    "table",
    "source_shard",
    "source_num_shards",
    "epoch",
    "full_resync",
    "since_version",
    "dim",
    "dtype",
    "last",
    "complete_version",
    "dense_version",
    "default_value",
    "default_version",
)


@dataclass(frozen=True)
class Destination:
    """Serving shard ``shard_index`` of ``num_shards``, wanting rows newer than ``floor``.

    ``floor`` is the replica's own cursor: rows and tombstones at or below it were
    applied already and are left out of incremental chunks (full resyncs send all).
    """

    num_shards: int
    shard_index: int
    floor: int = 0


def chunk_rows(chunk: ps_pb2.DeltaChunk) -> int:
    """Rows (not tombstones) a chunk carries, from the byte length of its keys."""
    return len(chunk.keys) // wire.KEY_DTYPE.itemsize


def is_empty(chunk: ps_pb2.DeltaChunk) -> bool:
    """True when a chunk carries no rows, tombstones or dense arrays."""
    return not (chunk.keys or chunk.tombstone_keys or chunk.dense)


class ChunkRouter:
    """Splits each chunk of one training shard's stream among a fixed set of destinations.

    >>> router = ChunkRouter([Destination(num_shards=2, shard_index=0)])
    >>> routed = router.route(chunk)  # {Destination: DeltaChunk}, every destination present

    Destinations with equal shard and floor share one routed chunk object, so the
    bytes of a chunk are built once however many replicas a shard has.
    """

    def __init__(self, destinations: Iterable[Destination]) -> None:
        self._destinations = tuple(dict.fromkeys(destinations))

    @property
    def destinations(self) -> tuple[Destination, ...]:
        return self._destinations

    def route(self, chunk: ps_pb2.DeltaChunk) -> dict[Destination, ps_pb2.DeltaChunk]:
        """The chunk each destination should receive (possibly empty of rows)."""
        keys = wire.decode_keys(chunk.keys)
        tomb_keys = wire.decode_keys(chunk.tombstone_keys, "tombstone_keys")
        n, n_tomb = len(keys), len(tomb_keys)
        filter_floor = not chunk.full_resync
        passthrough = _Passthrough(chunk)
        parts = _RowParts(chunk, keys, tomb_keys)
        built: dict[tuple[int, int, int], ps_pb2.DeltaChunk] = {}
        routed: dict[Destination, ps_pb2.DeltaChunk] = {}
        for dest in self._destinations:
            floor = dest.floor if filter_floor and dest.floor > chunk.since_version else 0
            cache_key = (dest.num_shards, dest.shard_index, floor)
            if cache_key not in built:
                whole = passthrough.target(dest.num_shards)
                if whole is None and floor == 0:
                    whole = parts.single_shard(dest.num_shards)
                if n + n_tomb == 0:
                    built[cache_key] = chunk
                elif whole is not None and floor == 0:
                    built[cache_key] = chunk if whole == dest.shard_index else _header_only(chunk)
                else:
                    built[cache_key] = parts.build(dest.num_shards, dest.shard_index, floor)
            routed[dest] = built[cache_key]
        return routed


class _Passthrough:
    """When ``M`` divides ``N``, all rows of training shard ``i`` belong to serving ``i % M``."""

    def __init__(self, chunk: ps_pb2.DeltaChunk) -> None:
        self._source = chunk.source_shard
        self._num_sources = chunk.source_num_shards

    def target(self, num_shards: int) -> int | None:
        if self._num_sources >= 1 and self._num_sources % num_shards == 0:
            return self._source % num_shards
        return None


class _RowParts:
    """Decoded arrays of one chunk, and its rows split by serving shard, computed once per M."""

    def __init__(self, chunk: ps_pb2.DeltaChunk, keys: np.ndarray, tomb_keys: np.ndarray) -> None:
        self._chunk = chunk
        self._keys = keys
        self._tomb_keys = tomb_keys
        n = len(keys)
        self._values = wire.decode_values(chunk.values, n, chunk.dim, chunk.dtype)
        self._versions = wire.decode_versions(chunk.versions, n)
        self._tomb_versions = wire.decode_versions(
            chunk.tombstone_versions, len(tomb_keys), "tombstone_versions"
        )
        self._splits: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}

    def _split(self, num_shards: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if num_shards not in self._splits:
            self._splits[num_shards] = (
                split_by_shard(self._keys, num_shards),
                split_by_shard(self._tomb_keys, num_shards),
            )
        return self._splits[num_shards]

    def single_shard(self, num_shards: int) -> int | None:
        """The one serving shard owning every row and tombstone, if there is one (chunks
        exported with ``route_num_shards`` are like that and travel whole)."""
        row_parts, tomb_parts = self._split(num_shards)
        total = len(self._keys) + len(self._tomb_keys)
        for shard, (rows, tombs) in enumerate(zip(row_parts, tomb_parts, strict=True)):
            if len(rows) + len(tombs) == total:
                return shard
        return None

    def build(self, num_shards: int, shard_index: int, floor: int) -> ps_pb2.DeltaChunk:
        row_parts, tomb_parts = self._split(num_shards)
        rows, tombs = row_parts[shard_index], tomb_parts[shard_index]
        if floor:
            rows = rows[self._versions[rows] > floor]
            tombs = tombs[self._tomb_versions[tombs] > floor]
        out = _header_only(self._chunk)
        if len(rows):
            out.keys = wire.encode_keys(self._keys[rows])
            out.values, _ = wire.encode_values(self._values[rows])
            out.versions = wire.encode_versions(self._versions[rows])
        if len(tombs):
            out.tombstone_keys = wire.encode_keys(self._tomb_keys[tombs])
            out.tombstone_versions = wire.encode_versions(self._tomb_versions[tombs])
        return out


def _header_only(chunk: ps_pb2.DeltaChunk) -> ps_pb2.DeltaChunk:
    """A chunk with the same header and no rows, tombstones or dense arrays."""
    out = ps_pb2.DeltaChunk()
    for name in _HEADER_FIELDS:
        setattr(out, name, getattr(chunk, name))
    return out
