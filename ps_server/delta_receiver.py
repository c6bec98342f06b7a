"""``ApplyDelta`` on a serving server (``DeltaReceiver``).

An incremental stream applies its rows as they arrive (only versions newer than the held
one win) and moves the ``(table, source shard)`` cursor at its last chunk; a stream that
breaks leaves the cursor where it was, so the sender resends from there. A full-resync
stream fills a new generation of the table off to the side; at its last chunk the rows
other training shards own are copied over from the live table and the new generation
replaces it in one step. Lookups see the old generation until then, and a broken full
resync changes nothing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from monolith_ps import wire
from monolith_ps.routing import shard_of
from monolith_ps.transport.cluster import SyncCursor
from monolith_ps.v1 import ps_pb2
from ps_server.delta_metrics import DeltaMetrics
from ps_server.delta_stream import (
    ENDED_EARLY,
    ApplyCounts,
    HeldBytes,
    check_not_ahead,
    delta_bytes,
    top_version,
    with_first,
)
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
from ps_server.table.validation import MAX_VERSION

__all__ = ["DeltaReceiver"]

_EMPTY_KEYS = np.zeros(0, dtype=np.uint64)


class DeltaReceiver:
    """A serving server's side of sync: applies delta streams and keeps their cursors.

    One stream at a time per ``(table, source shard)``: a second one is refused
    (``StreamConflictError``, ABORTED) rather than interleaved.
    """

    def __init__(
        self,
        state: ShardState,
        metrics: DeltaMetrics | None = None,
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
        self._listeners: list[Callable[[], None]] = []

    def on_cursor_moved(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (outside the receiver's locks) after every cursor move."""
        self._listeners.append(listener)

    # ------------------------------------------------------------------ state

    def reset_cursors(self, table: str = "", sources: Iterable[int] = ()) -> int:
        """Drop the cursors of ``table`` (all when empty) from ``sources`` (all when empty),
        so the agent's next round sends those tables whole; returns how many were dropped.
        The rows held keep serving until the full resync replaces them."""
        if table:
            self._state.table(table)
        wanted = set(sources)
        with self._lock:
            gone = [
                key
                for key in self._cursors
                if (not table or key[0] == table) and (not wanted or key[1] in wanted)
            ]
            for key in gone:
                del self._cursors[key]
        if self._metrics is not None:
            for name, source in gone:
                for gauge in (self._metrics.cursor_version, self._metrics.cursor_timestamp):
                    with contextlib.suppress(KeyError):
                        gauge.remove(name, str(source))
        return len(gone)

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

    def apply_stream(
        self, chunks: Iterable[ps_pb2.DeltaChunk], as_of: float | None = None
    ) -> ps_pb2.ApplyDeltaResponse:
        """Apply one ``ApplyDelta`` stream; raises (changing no cursor) when it is refused
        or ends before its last chunk. ``as_of`` (unix seconds) is when the rows were
        current, if not now (a bootstrap from an older bundle); the cursor keeps it."""
        try:
            return self._apply_stream(chunks, as_of)
        finally:
            for listener in self._listeners:
                listener()

    def _apply_stream(
        self, chunks: Iterable[ps_pb2.DeltaChunk], as_of: float | None
    ) -> ps_pb2.ApplyDeltaResponse:
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
                return self._apply_full(first, stream, table, as_of)
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
        counts = ApplyCounts()
        deltas: list[Delta] = []
        held = HeldBytes(self._budget, f"incremental ApplyDelta of table {name!r}")
        with held:
            for chunk in with_first(first, stream):
                result = self._stage_incremental(first, chunk, cursor, counts, deltas, held)
                if result is not None:
                    return result
        raise BadRequestError(ENDED_EARLY.format(table=name, source=source))

    def _stage_incremental(
        self,
        first: ps_pb2.DeltaChunk,
        chunk: ps_pb2.DeltaChunk,
        cursor: SyncCursor,
        counts: ApplyCounts,
        deltas: list[Delta],
        held: HeldBytes,
    ) -> ps_pb2.ApplyDeltaResponse | None:
        """Check and hold one chunk; at the last one apply them all and move the cursor."""
        name = first.table
        table = self._state.table(name)
        self._check_header(first, chunk, table)
        # Everything at or below the cursor is applied already, deletions included: a
        # row from an older export must not bring back a key deleted since.
        delta = self._decode(chunk, table, floor=cursor.version)
        table.check_delta(delta)
        held.grow_to(held.nbytes + delta_bytes(delta))
        counts.skipped += len(chunk.keys) // wire.KEY_DTYPE.itemsize - len(delta)
        self._count_chunk(chunk, counts)
        deltas.append(delta)
        if chunk.last:
            check_not_ahead(chunk, max(top_version(d) for d in deltas))
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
        as_of: float | None = None,
    ) -> ps_pb2.ApplyDeltaResponse:
        name, source = first.table, first.source_shard
        staging = EmbeddingTable(live.config, trainable=False, dtype=live.dtype)
        counts = ApplyCounts()
        held = HeldBytes(
            self._budget, f"full resync of table {name!r} from training shard {source}"
        )
        top = 0
        with held:
            for chunk in with_first(first, stream):
                self._check_header(first, chunk, staging)
                delta = self._decode(chunk, staging)
                # the decoded chunk and the new generation's growth, before it happens
                held.grow_to(staging.memory_bytes() + 2 * delta_bytes(delta))
                counts.add(staging.apply_delta(delta))
                held.grow_to(staging.memory_bytes())
                top = max(top, top_version(delta))
                self._count_chunk(chunk, counts)
                if chunk.last:
                    check_not_ahead(chunk, top)
                    return self._swap_in(chunk, staging, counts, as_of)
        raise BadRequestError(ENDED_EARLY.format(table=name, source=source))

    def _swap_in(
        self,
        chunk: ps_pb2.DeltaChunk,
        staging: EmbeddingTable,
        counts: ApplyCounts,
        as_of: float | None = None,
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
            staging.apply_delta(kept.rows_where(shard_of(kept.keys, num_sources) != source))
            self._state.tables[name] = staging
            self._move_cursor(chunk, drop_other_shard_counts=True, as_of=as_of)
        if self._metrics is not None:
            self._metrics.full_resyncs.labels(name).inc()
        return counts.response()

    def _apply_dense(
        self, first: ps_pb2.DeltaChunk, stream: Iterator[ps_pb2.DeltaChunk]
    ) -> ps_pb2.ApplyDeltaResponse:
        dense = self._state.dense
        arrays: dict[str, np.ndarray] = {}
        for chunk in with_first(first, stream):
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
            if chunk.dense_version > MAX_VERSION:
                raise SyncCursorError(
                    f"dense stream claims version {chunk.dense_version}, past the largest "
                    f"version the dense arrays can have ({MAX_VERSION}); nothing changed"
                )
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

    def _count_chunk(self, chunk: ps_pb2.DeltaChunk, counts: ApplyCounts) -> None:
        if self._metrics is not None:
            self._metrics.bytes_received.labels(chunk.table).inc(chunk.ByteSize())

    def _move_cursor(
        self,
        last: ps_pb2.DeltaChunk,
        drop_other_shard_counts: bool = False,
        as_of: float | None = None,
    ) -> None:
        now = time.time() if as_of is None else as_of
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
