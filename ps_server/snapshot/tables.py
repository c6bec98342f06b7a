"""Between live tables and snapshot sections: what a table exports, and loading it back.

A table section holds the rows of ``EmbeddingTable.export_since(since, with_state=True)``
(keys, versions, values, optimizer state, push counts, last-update times, eviction
usage), its tombstones, and ``export_meta()`` split into arrays (admission sketch,
learned default row and its state, tombstone log) and JSON integers (version and access
clocks, RNG state).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from monolith_ps import wire
from monolith_ps.routing import shard_of
from monolith_ps.v1 import ps_pb2
from ps_server.snapshot.content import ROW_KEYS, ROW_VERSIONS, DenseSnapshot, TableSnapshot
from ps_server.table import Delta, DeltaError, EmbeddingTable

if TYPE_CHECKING:
    from ps_server.dense import DenseStore
    from ps_server.snapshot.bundle import ServingTable
    from ps_server.snapshot.format import ServerInfo

ROW_FIELDS = ("values", "opt_state", "push_counts", "last_update")
OPTIONAL_ROW_FIELDS = ("usage",)  # eviction rank; older tables did not export it

_EMPTY_KEYS = np.zeros(0, dtype=np.uint64)


class SnapshotMismatchError(ValueError):
    """A snapshot does not fit this server (other shard, dim or optimizer than the config)."""


def table_section(table: EmbeddingTable, since: int) -> tuple[TableSnapshot, bool]:
    """``(section, full)``: the table's changes after ``since`` with their state.

    The metadata is read before the rows, so its version counter never runs ahead of
    the rows; ``full`` is True when the table could only answer with every live row
    (its tombstone log no longer reaches ``since``).
    """
    meta = table.export_meta()
    delta = table.export_since(since, with_state=True)
    arrays = {k: np.asarray(v) for k, v in meta.items() if isinstance(v, np.ndarray)}
    scalars = {k: int(v) for k, v in meta.items() if not isinstance(v, np.ndarray)}
    rows = {ROW_KEYS: delta.keys, ROW_VERSIONS: delta.versions}
    for name in (*ROW_FIELDS, *OPTIONAL_ROW_FIELDS):  # with_state: all but the optional
        if (value := getattr(delta, name)) is not None:
            rows[name] = value
    section = TableSnapshot(
        rows=rows,
        since_version=delta.since_version,
        complete_version=delta.complete_version,
        tombstone_keys=delta.tombstone_keys,
        tombstone_versions=delta.tombstone_versions,
        arrays=arrays,
        meta=scalars,
    )
    return section, bool(delta.full and since > 0)


def load_table(table: EmbeddingTable, name: str, section: TableSnapshot) -> int:
    """Load a merged section (live rows with their state, and the metadata) into an
    empty training table; returns the rows loaded."""
    missing = [f for f in ROW_FIELDS if f not in section.rows]
    if missing:
        raise SnapshotMismatchError(f"table {name!r}: snapshot lacks row fields {missing}")
    rows = section.rows
    optional: dict[str, Any] = {name: rows[name] for name in OPTIONAL_ROW_FIELDS if name in rows}
    delta = Delta(
        keys=rows[ROW_KEYS],
        values=rows["values"],
        versions=rows[ROW_VERSIONS],
        tombstone_keys=_EMPTY_KEYS,
        tombstone_versions=_EMPTY_KEYS,
        complete_version=section.complete_version,
        full=False,
        opt_state=rows["opt_state"],
        push_counts=rows["push_counts"],
        last_update=rows["last_update"],
        **optional,
    )
    meta: dict[str, Any] = {**section.meta, **section.arrays}
    try:
        table.apply_delta(delta)
        table.import_meta(meta)
    except DeltaError as exc:
        raise SnapshotMismatchError(
            f"table {name!r}: the snapshot does not fit the configured table ({exc}); "
            "was its dim or optimizer changed?"
        ) from None
    return section.num_rows


def load_serving_table(
    target: EmbeddingTable, name: str, table: ServingTable, shard_index: int, num_shards: int
) -> int:
    """Load the rows of ``table`` that serving shard ``shard_index`` owns; returns how many."""
    mine = shard_of(table.keys, num_shards) == shard_index
    try:
        target.apply_delta(table.as_delta().rows_where(mine))
    except DeltaError as exc:
        raise SnapshotMismatchError(
            f"table {name!r}: the bootstrap rows do not fit the configured table ({exc})"
        ) from None
    return int(np.count_nonzero(mine))


def serving_chunk(
    name: str, table: ServingTable, source: ServerInfo, shard_index: int, num_shards: int
) -> ps_pb2.DeltaChunk:
    """The rows of ``table`` that serving shard ``shard_index`` owns, as the one chunk of a
    full-resync stream from training shard ``source``: applied through the server's sync
    receiver, it also sets the sync cursor to the source's epoch and complete version."""
    mine = shard_of(table.keys, num_shards) == shard_index
    values = table.values[mine]
    chunk = ps_pb2.DeltaChunk(
        table=name,
        source_shard=source.shard_index,
        source_num_shards=source.num_shards,
        epoch=source.epoch,
        full_resync=True,
        since_version=0,
        dim=table.values.shape[1],
        dtype=wire.dtype_to_wire(values.dtype),
        keys=wire.encode_keys(table.keys[mine]),
        values=wire.encode_values(values)[0],
        versions=wire.encode_versions(table.versions[mine]),
        last=True,
        complete_version=table.complete_version,
    )
    if table.default_row is not None:
        default = np.ascontiguousarray(table.default_row, dtype=np.float32)
        chunk.default_value = wire.encode_values(default)[0]
        chunk.default_version = table.default_version
    return chunk


def dense_chunk(snapshot: DenseSnapshot, source: ServerInfo, known: set[str]) -> ps_pb2.DeltaChunk:
    """The dense values the config declares, as a one-chunk dense sync stream."""
    return ps_pb2.DeltaChunk(
        source_shard=source.shard_index,
        source_num_shards=source.num_shards,
        epoch=source.epoch,
        full_resync=True,
        dense=[
            ps_pb2.DenseArray(name=n, values=np.ascontiguousarray(a, dtype="<f4").tobytes())
            for n, a in snapshot.arrays.items()
            if n in known
        ],
        dense_version=snapshot.version,
        last=True,
    )


def dense_section(dense: DenseStore) -> DenseSnapshot:
    """The dense arrays with their optimizer states and version."""
    values, states, version = dense.export()
    return DenseSnapshot(values, version, states)


def load_dense(dense: DenseStore, snapshot: DenseSnapshot, trainable: bool) -> list[str]:
    """Load the arrays the config still declares; returns the names it left out."""
    known = {info.name for info in dense.describe()}
    values = {n: a for n, a in snapshot.arrays.items() if n in known}
    states = {n: a for n, a in snapshot.states.items() if n in known} if trainable else None
    try:
        dense.load(values, snapshot.version, states)
    except ValueError as exc:
        raise SnapshotMismatchError(f"dense arrays do not fit the config: {exc}") from None
    return sorted(set(snapshot.arrays) - known)
