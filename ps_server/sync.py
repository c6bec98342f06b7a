"""Delta sync on the servers: ``ExportDelta`` chunks on training, ``ApplyDelta`` on serving.

Training (``export_table_chunks``, ``export_dense_chunks``): one ``export_since`` under the
table lock, then the arrays are cut into chunks while the table serves on. Table ``""``
means the dense arrays.

Serving (``DeltaReceiver``): an incremental stream applies its rows as they arrive
(only versions newer than the held one win) and moves the ``(table, source shard)``
cursor at its last chunk; a stream that breaks leaves the cursor where it was, so the
sender resends from there. A full-resync stream fills a new generation of the table
off to the side; at its last chunk the rows other training shards own are copied over
from the live table and the new generation replaces it in one step. Lookups see the
old generation until then, and a broken full resync changes nothing.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable, Iterator

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from monolith_ps import wire
from monolith_ps.routing import MAX_SHARDS, shard_of, split_by_shard
from monolith_ps.transport.cluster import SyncCursor
from monolith_ps.v1 import ps_pb2
from ps_server.errors import (
    BadRequestError,
    StreamConflictError,
    SyncCursorError,
    TopologyMismatchError,
    UnknownNameError,
)
from ps_server.state import ShardState
from ps_server.stream_guard import StreamBudget
from ps_server.table import Delta, EmbeddingTable

__all__ = ["DeltaReceiver", "SyncMetrics", "export_dense_chunks", "export_table_chunks"]

# A chunk's bytes stay this far under the message limit (room for the header fields).
_HEADER_ROOM = 4096
_EMPTY_KEYS = np.zeros(0, dtype=np.uint64)


class SyncMetrics:
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


# ---------------------------------------------------------------- training


def chunk_rows_for(dim: int, itemsize: int, requested: int, max_message_bytes: int) -> int:
    """Rows a chunk may carry: as asked, but small enough to fit one gRPC message.

    A chunk carries up to that many rows (key, version, values) and as many tombstones.
    """
    per_row = 8 + 8 + dim * itemsize + 16
    return max(1, min(requested, (max_message_bytes - _HEADER_ROOM) // per_row))


def export_table_chunks(
    state: ShardState,
    request: ps_pb2.ExportDeltaRequest,
    default_chunk_rows: int,
    metrics: SyncMetrics | None = None,
    budget: StreamBudget | None = None,
) -> Iterator[ps_pb2.DeltaChunk]:
    """The chunks of one table's delta since ``request.since_version``.

    A request whose epoch is not this server's (0 = the caller has none) gets every live
    row, as does one older than the tombstone log reaches: every chunk then says
    ``full_resync``. With ``route_num_shards``, each chunk holds the keys of one serving
    shard. The table is read once; chunking runs without its lock, each chunk encoded
    when the reader takes the one before. The rows read are held against ``budget``
    until the stream ends.
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
    delta = table.export_since(request.since_version if same_epoch else 0)
    full = delta.full or not same_epoch
    tomb_keys, tomb_versions = delta.tombstone_keys, delta.tombstone_versions
    if full:
        tomb_keys, tomb_versions = _EMPTY_KEYS, _EMPTY_KEYS
    held = sum(a.nbytes for a in (delta.keys, delta.values, delta.versions, tomb_keys))
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
    metrics: SyncMetrics | None,
) -> Iterator[ps_pb2.DeltaChunk]:
    tomb_keys, tomb_versions = tombstones
    per_chunk = chunk_rows_for(
        table.dim,
        delta.values.dtype.itemsize,
        request.max_chunk_rows or default_chunk_rows,
        state.config.server.max_message_bytes,
    )
    header = {
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
        chunk = ps_pb2.DeltaChunk(
            **header,
            keys=wire.encode_keys(delta.keys[rows]),
            values=wire.encode_values(delta.values[rows])[0],
            versions=wire.encode_versions(delta.versions[rows]),
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
            metrics.rows_exported.labels(request.table).inc(len(chunk.keys) // 8)
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
    header = {
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


# ---------------------------------------------------------------- serving


@dataclasses.dataclass
class _Counts:
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


class DeltaReceiver:
    """A serving server's side of sync: applies delta streams and keeps their cursors.

    One stream at a time per ``(table, source shard)``: a second one is refused
    (``StreamConflictError``, ABORTED) rather than interleaved.
    """

    def __init__(
        self,
        state: ShardState,
        metrics: SyncMetrics | None = None,
        budget: StreamBudget | None = None,
    ) -> None:
        self._state = state
        self._metrics = metrics
        self._budget = budget or StreamBudget(state.config.server.stream_memory_bytes)
        self._lock = threading.Lock()  # cursors, active streams, dense epoch
        self._cursors: dict[tuple[str, int], SyncCursor] = {}
        self._active: set[tuple[str, int]] = set()
        # Held while rows go into a live table and while a new generation is swapped in,
        # so no applied row is lost in the swap. Lookups never take it.
        self._table_locks = {name: threading.Lock() for name in state.tables}
        self._dense_epoch = 0

    # ------------------------------------------------------------------ state

    def sync_state(self) -> ps_pb2.GetSyncStateResponse:
        """Every cursor, and the dense version and epoch held."""
        with self._lock:
            cursors = sorted(self._cursors.items())
            dense_epoch = self._dense_epoch
        dense = self._state.dense
        return ps_pb2.GetSyncStateResponse(
            shard_index=self._state.shard_index,
            num_shards=self._state.num_shards,
            cursors=[c.to_proto() for _, c in cursors],
            dense_version=dense.version if dense is not None else 0,
            dense_epoch=dense_epoch,
        )

    # ------------------------------------------------------------------ streams

    def active_streams(self) -> frozenset[tuple[str, int]]:
        """``(table, source shard)`` of the delta streams being applied now."""
        with self._lock:
            return frozenset(self._active)

    def apply_stream(self, chunks: Iterable[ps_pb2.DeltaChunk]) -> ps_pb2.ApplyDeltaResponse:
        """Apply one ``ApplyDelta`` stream; raises (changing no cursor) when it is refused
        or ends before its last chunk."""
        stream = iter(chunks)
        first = next(stream, None)
        if first is None:
            raise BadRequestError("empty ApplyDelta stream: it carries no chunk")
        if not first.table:
            return self._apply_dense(first, stream)
        table = self._state.table(first.table)
        self._check_header(first, first, table)
        key = (first.table, first.source_shard)
        with self._lock:
            if key in self._active:
                raise StreamConflictError(
                    f"another delta stream for table {first.table!r} from training shard "
                    f"{first.source_shard} is in progress; retry after it ends"
                )
            self._active.add(key)
        try:
            if first.full_resync:
                return self._apply_full(first, stream, table)
            return self._apply_incremental(first, stream)
        finally:
            with self._lock:
                self._active.discard(key)

    def _apply_incremental(
        self, first: ps_pb2.DeltaChunk, stream: Iterator[ps_pb2.DeltaChunk]
    ) -> ps_pb2.ApplyDeltaResponse:
        name, source = first.table, first.source_shard
        with self._lock:
            cursor = self._cursors.get((name, source))
        if (
            cursor is None
            or cursor.epoch != first.epoch
            or cursor.source_num_shards != first.source_num_shards
            or first.since_version > cursor.version
        ):
            holding = (
                "no cursor"
                if cursor is None
                else f"cursor epoch {cursor.epoch:016x} of {cursor.source_num_shards} shards "
                f"at version {cursor.version}"
            )
            raise SyncCursorError(
                f"incremental delta for table {name!r} from training shard {source} of "
                f"{first.source_num_shards} (epoch {first.epoch:016x}, since version "
                f"{first.since_version}) does not continue this server's {holding}; it needs "
                "a full resync"
            )
        # The whole stream is decoded and checked before any row is applied, so a stream
        # refused at any chunk, or cut short, changes nothing.
        counts = _Counts()
        deltas = []
        held = _Held(self._budget, f"incremental ApplyDelta of table {name!r}")
        with held:
            for chunk in _with_first(first, stream):
                result = self._stage_incremental(first, chunk, cursor, counts, deltas, held)
                if result is not None:
                    return result
        raise BadRequestError(_ENDED_EARLY.format(table=name, source=source))

    def _stage_incremental(
        self,
        first: ps_pb2.DeltaChunk,
        chunk: ps_pb2.DeltaChunk,
        cursor: SyncCursor,
        counts: _Counts,
        deltas: list[Delta],
        held: _Held,
    ) -> ps_pb2.ApplyDeltaResponse | None:
        """Check and hold one chunk; at the last one apply them all and move the cursor."""
        name = first.table
        table = self._state.table(name)
        self._check_header(first, chunk, table)
        # Everything at or below the cursor is applied already, deletions included: a
        # row from an older export must not bring back a key deleted since.
        delta = self._decode(chunk, table, floor=cursor.version)
        table.check_delta(delta)
        held.grow_to(held.nbytes + _delta_bytes(delta))
        counts.skipped += len(chunk.keys) // wire.KEY_DTYPE.itemsize - len(delta)
        self._count_chunk(chunk, counts)
        deltas.append(delta)
        if chunk.last:
            with self._table_locks[name]:
                target = self._state.table(name)
                for delta in deltas:
                    counts.add(target.apply_delta(delta))
            self._move_cursor(chunk)
            return counts.response()
        return None

    def _apply_full(
        self,
        first: ps_pb2.DeltaChunk,
        stream: Iterator[ps_pb2.DeltaChunk],
        live: EmbeddingTable,
    ) -> ps_pb2.ApplyDeltaResponse:
        name, source = first.table, first.source_shard
        staging = EmbeddingTable(live.config, trainable=False, dtype=live.dtype)
        counts = _Counts()
        held = _Held(self._budget, f"full resync of table {name!r} from training shard {source}")
        with held:
            for chunk in _with_first(first, stream):
                self._check_header(first, chunk, staging)
                delta = self._decode(chunk, staging)
                # the decoded chunk and the new generation's growth, before it happens
                held.grow_to(staging.memory_bytes() + 2 * _delta_bytes(delta))
                counts.add(staging.apply_delta(delta))
                held.grow_to(staging.memory_bytes())
                self._count_chunk(chunk, counts)
                if chunk.last:
                    return self._swap_in(chunk, staging, counts)
        raise BadRequestError(_ENDED_EARLY.format(table=name, source=source))

    def _swap_in(
        self, chunk: ps_pb2.DeltaChunk, staging: EmbeddingTable, counts: _Counts
    ) -> ps_pb2.ApplyDeltaResponse:
        """Make a completed full resync's new generation the live table."""
        name, source, num_sources = chunk.table, chunk.source_shard, chunk.source_num_shards
        with self._table_locks[name]:
            with self._lock:
                cursor = self._cursors.get((name, source))
            if (
                cursor is not None
                and cursor.epoch == chunk.epoch
                and cursor.source_num_shards == num_sources
                and cursor.version > chunk.complete_version
            ):
                raise SyncCursorError(
                    f"stale full resync of table {name!r} from training shard {source}: "
                    f"complete to version {chunk.complete_version}, this server already "
                    f"holds version {cursor.version} of the same epoch; nothing changed"
                )
            current = self._state.table(name)
            kept = current.export_since(0)
            others = shard_of(kept.keys, num_sources) != source
            staging.apply_delta(
                Delta.of_rows(
                    kept.keys[others],
                    kept.values[others],
                    kept.versions[others],
                    complete_version=kept.complete_version,
                    default_value=kept.default_value,
                    default_version=kept.default_version,
                )
            )
            self._state.tables[name] = staging
            self._move_cursor(chunk, drop_other_shard_counts=True)
        if self._metrics is not None:
            self._metrics.full_resyncs.labels(name).inc()
        return counts.response()

    def _apply_dense(
        self, first: ps_pb2.DeltaChunk, stream: Iterator[ps_pb2.DeltaChunk]
    ) -> ps_pb2.ApplyDeltaResponse:
        dense = self._state.dense
        arrays: dict[str, np.ndarray] = {}
        for chunk in _with_first(first, stream):
            if chunk.table or chunk.epoch != first.epoch:
                raise BadRequestError(
                    "a dense stream (table '') must keep table '' and one epoch on every chunk"
                )
            for i, array in enumerate(chunk.dense):
                if dense is None:
                    raise UnknownNameError(
                        f"dense array {array.name!r}: this cluster's config declares no "
                        "dense arrays"
                    )
                size = dense.size_of(array.name)
                arrays[array.name] = wire.decode_values(
                    array.values, 1, size, field=f"dense[{i}] ({array.name!r})"
                )[0]
            if not chunk.last:
                continue
            with self._lock:
                held_epoch = self._dense_epoch
                held_version = dense.version if dense is not None else 0
                if held_epoch == chunk.epoch and held_version > chunk.dense_version:
                    raise SyncCursorError(
                        f"stale dense sync: version {chunk.dense_version}, this server "
                        f"already holds version {held_version} of the same epoch"
                    )
                if dense is not None:
                    dense.load(arrays, chunk.dense_version)
                self._dense_epoch = chunk.epoch
            return ps_pb2.ApplyDeltaResponse(rows_applied=len(arrays))
        raise BadRequestError("dense stream ended before its last chunk; nothing changed")

    # ------------------------------------------------------------------ helpers

    def _check_header(
        self, first: ps_pb2.DeltaChunk, chunk: ps_pb2.DeltaChunk, table: EmbeddingTable
    ) -> None:
        if chunk.source_num_shards < 1 or chunk.source_shard >= chunk.source_num_shards:
            raise BadRequestError(
                f"chunk names training shard {chunk.source_shard} of {chunk.source_num_shards}"
            )
        if chunk.dim != table.dim:
            raise BadRequestError(
                f"chunk of table {chunk.table!r} has dim {chunk.dim}, the table has {table.dim}"
            )
        for field in ("table", "source_shard", "source_num_shards", "epoch", "full_resync"):
            if getattr(chunk, field) != getattr(first, field):
                raise BadRequestError(
                    f"chunk changes {field} mid-stream ({getattr(first, field)!r} -> "
                    f"{getattr(chunk, field)!r}); one stream carries one table of one shard"
                )

    def _decode(self, chunk: ps_pb2.DeltaChunk, table: EmbeddingTable, floor: int = 0) -> Delta:
        """The chunk as a Delta, checked; rows and tombstones at or below ``floor`` left out."""
        keys = wire.decode_keys(chunk.keys)
        tomb_keys = wire.decode_keys(chunk.tombstone_keys, "tombstone_keys")
        values = wire.decode_values(chunk.values, len(keys), table.dim, chunk.dtype)
        versions = wire.decode_versions(chunk.versions, len(keys))
        tomb_versions = wire.decode_versions(
            chunk.tombstone_versions, len(tomb_keys), "tombstone_versions"
        )
        self._check_owned(keys, "rows")
        self._check_owned(tomb_keys, "tombstones")
        if floor and len(versions) and versions.min() <= floor:
            newer = versions > floor
            keys, values, versions = keys[newer], values[newer], versions[newer]
        if floor and len(tomb_versions) and tomb_versions.min() <= floor:
            newer = tomb_versions > floor
            tomb_keys, tomb_versions = tomb_keys[newer], tomb_versions[newer]
        default_value = None
        if chunk.default_version:
            default_value = wire.decode_values(
                chunk.default_value, 1, table.dim, field="default_value"
            )[0]
        return Delta(
            keys=keys,
            values=values,
            versions=versions,
            tombstone_keys=tomb_keys,
            tombstone_versions=tomb_versions,
            complete_version=chunk.complete_version,
            full=chunk.full_resync,
            since_version=chunk.since_version,
            default_value=default_value,
            default_version=chunk.default_version,
        )

    def _check_owned(self, keys: np.ndarray, what: str) -> None:
        if not len(keys):
            return
        owner = shard_of(keys, self._state.num_shards)
        wrong = np.flatnonzero(owner != self._state.shard_index)
        if len(wrong):
            raise TopologyMismatchError(
                f"{len(wrong)} delta {what} belong to other serving shards (key {keys[wrong[0]]} "
                f"is shard {owner[wrong[0]]} of {self._state.num_shards}); this server is shard "
                f"{self._state.shard_index} of {self._state.num_shards}"
            )

    def _count_chunk(self, chunk: ps_pb2.DeltaChunk, counts: _Counts) -> None:
        if self._metrics is not None:
            self._metrics.bytes_received.labels(chunk.table).inc(chunk.ByteSize())

    def _move_cursor(self, last: ps_pb2.DeltaChunk, drop_other_shard_counts: bool = False) -> None:
        now = time.time()
        key = (last.table, last.source_shard)
        with self._lock:
            held = self._cursors.get(key)
            version = last.complete_version
            if held is not None and held.epoch == last.epoch and not last.full_resync:
                version = max(version, held.version)
            self._cursors[key] = SyncCursor(
                last.table, last.source_shard, last.source_num_shards, last.epoch, version, now
            )
            if drop_other_shard_counts:
                for other in [
                    k
                    for k, c in self._cursors.items()
                    if k[0] == last.table and c.source_num_shards != last.source_num_shards
                ]:
                    del self._cursors[other]
        if self._metrics is not None:
            labels = (last.table, str(last.source_shard))
            self._metrics.cursor_version.labels(*labels).set(version)
            self._metrics.cursor_timestamp.labels(*labels).set(now)


class _Held:
    """Bytes one stream holds against the stream budget, given back when it ends."""

    def __init__(self, budget: StreamBudget, what: str) -> None:
        self._budget = budget
        self._what = what
        self.nbytes = 0

    def grow_to(self, nbytes: int) -> None:
        if nbytes > self.nbytes:
            self._budget.take(nbytes - self.nbytes, self._what)
            self.nbytes = nbytes

    def __enter__(self) -> _Held:
        return self

    def __exit__(self, *exc: object) -> None:
        self._budget.give_back(self.nbytes)
        self.nbytes = 0


def _delta_bytes(delta: Delta) -> int:
    return sum(
        a.nbytes
        for a in (delta.keys, delta.values, delta.versions, delta.tombstone_keys)
        if a is not None
    )


_ENDED_EARLY = (
    "delta stream for table {table!r} from training shard {source} ended before its last "
    "chunk; nothing changed and the cursor did not move"
)


def _with_first(
    first: ps_pb2.DeltaChunk, rest: Iterator[ps_pb2.DeltaChunk]
) -> Iterator[ps_pb2.DeltaChunk]:
    yield first
    yield from rest
