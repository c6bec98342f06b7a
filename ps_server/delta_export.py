"""``ExportDelta`` on a training server: the selection (keys, versions, tombstones) is taken
once under the table lock; each chunk then reads its rows' values when the reader takes the
one before, so a paused export holds its selection, not a copy of the rows. Table ``""``
means the dense arrays.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from monolith_ps import wire
from monolith_ps.routing import MAX_SHARDS, split_by_shard
from monolith_ps.v1 import ps_pb2
from ps_server.delta_metrics import DeltaMetrics
from ps_server.errors import (
    BadRequestError,
)
from ps_server.state import ShardState
from ps_server.stream_guard import StreamBudget
from ps_server.table import Delta, EmbeddingTable

__all__ = ["chunk_rows_for", "export_dense_chunks", "export_table_chunks"]


# A chunk's bytes stay this far under the message limit (room for the header fields).
_HEADER_ROOM = 4096
_EMPTY_KEYS = np.zeros(0, dtype=np.uint64)


def chunk_rows_for(
    dim: int, itemsize: int, requested: int, max_message_bytes: int, min_chunk_bytes: int = 0
) -> int:
    """Rows a chunk may carry: as asked, but at least ``min_chunk_bytes`` worth of rows (a
    client asking for one-row chunks would otherwise cost the server one message per row)
    and small enough to fit one gRPC message.

    A chunk carries up to that many rows (key, version, values) and as many tombstones.
    """
    per_row = 8 + 8 + dim * itemsize + 16
    floor = -(-min_chunk_bytes // per_row)
    return max(1, min(max(requested, floor), (max_message_bytes - _HEADER_ROOM) // per_row))


def export_table_chunks(
    state: ShardState,
    request: ps_pb2.ExportDeltaRequest,
    default_chunk_rows: int,
    metrics: DeltaMetrics | None = None,
    budget: StreamBudget | None = None,
) -> Iterator[ps_pb2.DeltaChunk]:
    """The chunks of one table's delta since ``request.since_version``.

    A request whose epoch is not this server's (0 = the caller has none) gets every live
    row, as does one older than the tombstone log reaches: every chunk then says
    ``full_resync``. With ``route_num_shards``, each chunk holds the keys of one serving
    shard. The table is read once; chunking runs without its lock, each chunk encoded
    when the reader takes the one before. The selection is held against ``budget``
    until the stream ends.

    A chunk reads its rows' current values: a row pushed since the selection goes out
    with its newer values under the version it was selected at (never past
    ``complete_version``, so the stream stays complete to it), and the next delta sends it
    again under its new version; a row deleted since is left out, and its tombstone,
    newer than ``complete_version``, comes with the next delta.
    """
    if request.route_num_shards > MAX_SHARDS:
        raise BadRequestError(
            f"route_num_shards: {request.route_num_shards} is more than the {MAX_SHARDS} "
            "shards a cluster may have"
        )
    if request.route_partition_count > 1 and (
        request.route_partition_index >= request.route_partition_count
        or request.route_partition_count > MAX_SHARDS
    ):
        raise BadRequestError(
            f"route_partition_index {request.route_partition_index} must be below "
            f"route_partition_count {request.route_partition_count} (at most {MAX_SHARDS})"
        )
    table = state.table(request.table)
    same_epoch = request.epoch == state.epoch
    delta = table.export_since(request.since_version if same_epoch else 0, with_values=False)
    full = delta.full or not same_epoch
    tomb_keys, tomb_versions = delta.tombstone_keys, delta.tombstone_versions
    if full:
        tomb_keys, tomb_versions = _EMPTY_KEYS, _EMPTY_KEYS
    held = sum(a.nbytes for a in (delta.keys, delta.versions, tomb_keys, tomb_versions))
    if budget is not None:
        budget.take(held, f"ExportDelta of table {request.table!r} ({len(delta.keys)} rows)")
    try:
        tombstones = (tomb_keys, tomb_versions)
        yield from _table_chunks(
            state, request, table, delta, full, tombstones, default_chunk_rows, metrics
        )
    finally:
        if budget is not None:
            budget.give_back(held)


def _table_chunks(
    state: ShardState,
    request: ps_pb2.ExportDeltaRequest,
    table: EmbeddingTable,
    delta: Delta,
    full: bool,
    tombstones: tuple[np.ndarray, np.ndarray],
    default_chunk_rows: int,
    metrics: DeltaMetrics | None,
) -> Iterator[ps_pb2.DeltaChunk]:
    tomb_keys, tomb_versions = tombstones
    per_chunk = chunk_rows_for(
        table.dim,
        delta.values.dtype.itemsize,
        request.max_chunk_rows or default_chunk_rows,
        state.config.server.max_message_bytes,
        state.config.server.min_chunk_bytes,
    )
    header: dict[str, Any] = {
        "table": request.table,
        "source_shard": state.shard_index,
        "source_num_shards": state.num_shards,
        "epoch": state.epoch,
        "full_resync": full,
        "since_version": 0 if full else delta.since_version,
        "dim": table.dim,
        "dtype": wire.dtype_to_wire(delta.values.dtype),
    }
    partition = (request.route_partition_index, max(1, request.route_partition_count))
    pieces = _chunk_pieces(delta.keys, tomb_keys, request.route_num_shards, per_chunk, partition)
    for i, (rows, tombs) in enumerate(pieces):
        keys, versions = delta.keys[rows], delta.versions[rows]
        values, found = table.find(keys, count=False)
        if not found.all():
            keys, versions, values = keys[found], versions[found], values[found]
        chunk = ps_pb2.DeltaChunk(
            **header,
            keys=wire.encode_keys(keys),
            values=wire.encode_values(values.astype(delta.values.dtype, copy=False))[0],
            versions=wire.encode_versions(versions),
            tombstone_keys=wire.encode_keys(tomb_keys[tombs]),
            tombstone_versions=wire.encode_versions(tomb_versions[tombs]),
        )
        if i == len(pieces) - 1:
            chunk.last = True
            chunk.complete_version = delta.complete_version
            if delta.default_value is not None:
                chunk.default_value = wire.encode_values(
                    np.ascontiguousarray(delta.default_value, dtype=np.float32)
                )[0]
                chunk.default_version = delta.default_version
        if metrics is not None:
            metrics.rows_exported.labels(request.table).inc(len(keys))
            metrics.bytes_exported.labels(request.table).inc(chunk.ByteSize())
        yield chunk


_Piece = tuple[slice | np.ndarray, slice | np.ndarray]


def _chunk_pieces(
    keys: np.ndarray,
    tomb_keys: np.ndarray,
    route_num_shards: int,
    per_chunk: int,
    partition: tuple[int, int] = (0, 1),
) -> list[_Piece]:
    """Row and tombstone selections of each chunk: consecutive slices, or, when grouping
    by serving shard, index arrays of one shard each (only the shards of ``partition``,
    ``(index, count)``). Never empty: the last chunk exists."""
    if route_num_shards <= 1:
        count = max(1, -(-max(len(keys), len(tomb_keys)) // per_chunk))
        return [(slice(i * per_chunk, (i + 1) * per_chunk),) * 2 for i in range(count)]
    row_groups = split_by_shard(keys, route_num_shards)
    tomb_groups = split_by_shard(tomb_keys, route_num_shards)
    pieces: list[_Piece] = []
    index, every = partition
    for shard, (rows, tombs) in enumerate(zip(row_groups, tomb_groups, strict=True)):
        if shard % every != index:
            continue
        count = -(-max(len(rows), len(tombs)) // per_chunk)
        pieces.extend(
            (rows[i * per_chunk : (i + 1) * per_chunk], tombs[i * per_chunk : (i + 1) * per_chunk])
            for i in range(count)
        )
    return pieces or [(slice(0, 0), slice(0, 0))]


def export_dense_chunks(
    state: ShardState, request: ps_pb2.ExportDeltaRequest
) -> Iterator[ps_pb2.DeltaChunk]:
    """The dense arrays, one a chunk, unless the caller already holds this version.

    Every chunk carries ``dense_version``; the caller is up to date when it holds this
    server's epoch and a version at least ``dense_version``, and is then sent one empty
    last chunk.
    """
    header: dict[str, Any] = {
        "source_shard": state.shard_index,
        "source_num_shards": state.num_shards,
        "epoch": state.epoch,
        "full_resync": True,
    }
    if state.dense is None:
        yield ps_pb2.DeltaChunk(**header, last=True)
        return
    values, _, version = state.dense.export()
    if request.epoch == state.epoch and request.since_version >= version:
        yield ps_pb2.DeltaChunk(**header, last=True, dense_version=version)
        return
    names = list(values)
    for i, name in enumerate(names):
        yield ps_pb2.DeltaChunk(
            **header,
            dense=[ps_pb2.DenseArray(name=name, values=values[name].tobytes())],
            dense_version=version,
            last=i == len(names) - 1,
        )
    if not names:
        yield ps_pb2.DeltaChunk(**header, last=True, dense_version=version)
