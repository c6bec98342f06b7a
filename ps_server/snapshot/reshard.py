"""Reshard training snapshots: N old shards' newest chains become M new full snapshots.

Every live row goes, with all its per-row fields (values, optimizer state, push counts,
last-update time, usage, version), to ``shard_of(key, M)``. What is not per row:

- dense arrays (and their optimizer state) stay on shard 0;
- the version clock of every new shard is the highest of the old shards', so versions
  only grow; row versions are kept; the tombstone logs are dropped (``log_floor`` is the
  new clock) and each new shard takes a new epoch, so serving resyncs in full;
- admission sketches are added (saturating): the old shards counted disjoint key sets
  with the same hashes, so the sum is the sketch of all keys, which never under-counts
  any key; every new shard starts from it;
- a learned default row (and its optimizer state) is the mean of the old shards' learned
  rows; its push count is their sum and its version their highest;
- access clocks (``tick``) take the highest, the cuckoo walk state the first shard's.

An unknown metadata field is refused, so a format change must decide how it reshards.

Memory stays bounded: rows are read in chunks from memory maps of the old files and
appended, routed, to scratch ``.npy`` files, which the snapshot store then reads through
memory maps and writes as an ordinary full snapshot (16 MiB at a time); the scratch is
removed after.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from monolith_ps.routing import MAX_SHARDS, shard_of, split_by_shard
from ps_server.snapshot.content import ROW_KEYS, DenseSnapshot, TableSnapshot
from ps_server.snapshot.format import ServerInfo
from ps_server.snapshot.records import SnapshotDirBusyError
from ps_server.snapshot.reshard_source import (
    LiveRows,
    ReshardError,
    SourceShard,
    open_sources,
    row_layout,
)
from ps_server.snapshot.store import SnapshotStore
from ps_server.state import new_epoch
from ps_server.table.admission import DEPTH, as_width, stages

_LOGGER = logging.getLogger(__name__)

RESHARDED_FROM = "resharded_from"
"""Manifest ``extra`` key of a resharded snapshot: the old cluster and chains it came from."""

_SCRATCH = ".reshard-scratch"
_EMPTY_KEYS = np.empty(0, dtype=np.uint64)
_INT_MAX = ("version", "tick", "default_version")
_INT_SUM = ("default_pushes",)
_INT_FIRST = ("rng",)
_ARRAYS_EMPTY = ("tombstone_keys", "tombstone_versions")
_ARRAYS_MEAN = ("default_row", "default_state")


@dataclass(frozen=True)
class ReshardResult:
    """What :func:`reshard` wrote, for the CLI and logs."""

    dest: Path
    old_shards: int
    new_shards: int
    tables: int
    rows: list[int]
    bytes: int
    seconds: float


def reshard(
    sources: Sequence[Path | str],
    num_shards: int,
    dest: Path | str,
    chunk_bytes: int = 64 << 20,
) -> ReshardResult:
    """Write ``dest/shard-<i>/`` (i < ``num_shards``), each one full snapshot a server
    started with ``--shard-index i --num-shards num_shards`` restores.

    Refuses (``ReshardError``) when an old shard is missing or given twice, the shard
    counts disagree, a chain does not verify, or a new shard's directory already holds
    snapshots. On any failure nothing this call wrote is left behind.
    """
    started = time.monotonic()
    if not 1 <= num_shards <= MAX_SHARDS:
        raise ReshardError(f"--shards must be in 1..{MAX_SHARDS}, got {num_shards}")
    dest = Path(dest)
    stores = [SnapshotStore(dest / f"shard-{i}") for i in range(num_shards)]
    for store in stores:
        if store.snapshots() or store.work_dirs():
            raise ReshardError(f"{store.root} already holds snapshots; reshard into new ones")
    held = [SnapshotStore(p) for p in {Path(p).resolve() for p in sources} if p.is_dir()]
    created: list[Path] = []
    try:
        for store in held:
            _lock(store, "a server still writes snapshots there; stop training first")
        olds = open_sources(sources)
        tables = sorted({name for old in olds for name in old.tables})
        layouts = {name: row_layout(olds, name) for name in tables}
        for store in stores:
            _lock(store, "another process writes there")
        counts = {t: _count_rows(olds, t, num_shards, layouts[t], chunk_bytes) for t in tables}
        scratch = _Scratch(stores, tables, layouts, counts)
        try:
            for t in tables:
                _route_rows(olds, t, num_shards, layouts[t], chunk_bytes, scratch)
            written = _write_shards(olds, stores, tables, scratch, created)
        finally:
            scratch.close()
    except BaseException:
        for path in created:
            shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        for store in stores:
            shutil.rmtree(store.root / _SCRATCH, ignore_errors=True)
            store.unlock()
        for store in held:
            store.unlock()
    seconds = time.monotonic() - started
    rows = [sum(int(counts[t][i]) for t in tables) for i in range(num_shards)]
    _LOGGER.info(
        "resharded %d -> %d shards: %d rows in %.2f s", len(olds), num_shards, sum(rows), seconds
    )
    return ReshardResult(dest, len(olds), num_shards, len(tables), rows, written, seconds)


def _lock(store: SnapshotStore, why: str) -> None:
    try:
        store.lock()
    except SnapshotDirBusyError:
        raise ReshardError(f"{store.root} is locked: {why}") from None


def _chunk_rows(layout: dict[str, tuple[np.dtype, tuple]], chunk_bytes: int) -> int:
    row_bytes = sum(
        d.itemsize * int(np.prod(shape, dtype=np.int64)) for d, shape in layout.values()
    )
    return max(1024, chunk_bytes // max(row_bytes, 1))


def _count_rows(
    olds: Sequence[SourceShard], table: str, num_shards: int, layout: dict, chunk_bytes: int
) -> np.ndarray:
    counts = np.zeros(num_shards, dtype=np.int64)
    for old in olds:
        if table not in old.tables:
            continue
        for chunk in LiveRows(old.tables[table]).chunks(
            [ROW_KEYS], _chunk_rows(layout, chunk_bytes)
        ):
            counts += np.bincount(shard_of(chunk[ROW_KEYS], num_shards), minlength=num_shards)
    return counts


class _Scratch:
    """One ``.npy`` file per new shard, table and field, filled by appending rows in order
    (the header first: the counting pass gave the shape); read back as memory maps."""

    def __init__(
        self,
        stores: Sequence[SnapshotStore],
        tables: Sequence[str],
        layouts: dict[str, dict[str, tuple[np.dtype, tuple]]],
        counts: dict[str, np.ndarray],
    ) -> None:
        self._files: list[dict[str, dict[str, tuple[Path, np.dtype, tuple]]]] = []
        self._open: dict[Path, BinaryIO] = {}
        for i, store in enumerate(stores):
            root = store.root / _SCRATCH
            root.mkdir(parents=True, exist_ok=True)
            per_table: dict[str, dict[str, tuple[Path, np.dtype, tuple]]] = {}
            for ti, t in enumerate(tables):
                per_table[t] = {}
                for field, (dtype, shape) in layouts[t].items():
                    path = root / f"{ti:04d}.{field}.npy"
                    full_shape = (int(counts[t][i]), *shape)
                    per_table[t][field] = (path, dtype, full_shape)
                    handle = open(path, "wb")  # noqa: SIM115 - closed in arrays() or close()
                    self._open[path] = handle
                    header = {
                        "descr": np.lib.format.dtype_to_descr(dtype),
                        "fortran_order": False,
                        "shape": full_shape,
                    }
                    np.lib.format.write_array_header_1_0(handle, header)
            self._files.append(per_table)

    def append(self, shard: int, table: str, rows: dict[str, np.ndarray]) -> None:
        for field, (path, dtype, _) in self._files[shard][table].items():
            self._open[path].write(np.ascontiguousarray(rows[field], dtype=dtype).data)

    def arrays(self, shard: int, table: str) -> dict[str, np.ndarray]:
        """The finished rows of ``table`` on new shard ``shard`` (memory-mapped)."""
        out = {}
        for field, (path, dtype, shape) in self._files[shard][table].items():
            self._open.pop(path).close()
            out[field] = (
                np.empty(shape, dtype=dtype)
                if 0 in shape
                else np.load(path, mmap_mode="r", allow_pickle=False)
            )
            if out[field].shape != shape:
                raise RuntimeError(f"{path}: wrote {out[field].shape} rows, expected {shape}")
        return out

    def close(self) -> None:
        for handle in self._open.values():
            handle.close()
        self._open.clear()


def _route_rows(
    olds: Sequence[SourceShard],
    table: str,
    num_shards: int,
    layout: dict,
    chunk_bytes: int,
    scratch: _Scratch,
) -> None:
    fields = list(layout)
    for old in olds:
        if table not in old.tables:
            continue
        for chunk in LiveRows(old.tables[table]).chunks(fields, _chunk_rows(layout, chunk_bytes)):
            for shard, index in enumerate(split_by_shard(chunk[ROW_KEYS], num_shards)):
                if index.size:
                    scratch.append(shard, table, {f: a[index] for f, a in chunk.items()})


def _write_shards(
    olds: Sequence[SourceShard],
    stores: Sequence[SnapshotStore],
    tables: Sequence[str],
    scratch: _Scratch,
    created: list[Path],
) -> int:
    combined = {
        t: combine_table_meta(t, [o.tables[t][-1] for o in olds if t in o.tables]) for t in tables
    }
    old_count = olds[0].server.num_shards
    origin = {
        "num_shards": old_count,
        "chains": {str(o.server.shard_index): list(o.seqs) for o in olds},
        "epochs": {str(o.server.shard_index): f"{o.server.epoch:016x}" for o in olds},
    }
    dense = _dense_of(olds)
    written = 0
    for i, store in enumerate(stores):
        sections = {}
        for t in tables:
            rows = scratch.arrays(i, t)
            arrays, meta, version = combined[t]
            sections[t] = TableSnapshot(
                rows=rows,
                since_version=0,
                complete_version=version,
                tombstone_keys=_EMPTY_KEYS,
                tombstone_versions=_EMPTY_KEYS,
                arrays=arrays,
                meta=meta,
            )
        server = ServerInfo("training", i, len(stores), new_epoch())
        result = store.write(
            "full",
            sections,
            dense=dense if i == 0 else None,
            server=server,
            extra={RESHARDED_FROM: origin},
        )
        created.append(result.path)
        written += result.bytes
    return written


def _dense_of(olds: Sequence[SourceShard]) -> DenseSnapshot | None:
    holders = [o for o in olds if o.dense is not None and (o.dense.arrays or o.dense.states)]
    if len(holders) > 1:
        raise ReshardError(
            "dense arrays found on more than one old shard: "
            + ", ".join(f"shard {o.server.shard_index}" for o in holders)
        )
    return holders[0].dense if holders else None


def combine_table_meta(
    table: str, newest: Sequence[TableSnapshot]
) -> tuple[dict[str, np.ndarray], dict[str, Any], int]:
    """``(arrays, meta, complete_version)`` every new shard of ``table`` starts from,
    combined from each old shard's newest section (see the module doc for the rules)."""
    version = max(
        [s.complete_version for s in newest] + [int(s.meta.get("version", 0)) for s in newest]
    )
    known_ints = {*_INT_MAX, *_INT_SUM, *_INT_FIRST, "log_floor"}
    known_arrays = {"sketch", *_ARRAYS_EMPTY, *_ARRAYS_MEAN}
    for section in newest:
        unknown = sorted((set(section.meta) - known_ints) | (set(section.arrays) - known_arrays))
        if unknown:
            raise ReshardError(
                f"table {table!r}: no reshard rule for metadata {unknown}; this build "
                "cannot reshard these snapshots"
            )
    meta: dict[str, Any] = {}
    for key in _INT_MAX:
        if any(key in s.meta for s in newest):
            meta[key] = max(int(s.meta.get(key, 0)) for s in newest)
    for key in _INT_SUM:
        if any(key in s.meta for s in newest):
            meta[key] = sum(int(s.meta.get(key, 0)) for s in newest)
    for key in _INT_FIRST:
        if key in newest[0].meta:
            meta[key] = int(newest[0].meta[key])
    if "version" in meta:
        meta["version"] = version
    if any("log_floor" in s.meta for s in newest):
        meta["log_floor"] = version
    arrays: dict[str, np.ndarray] = {}
    for key in _ARRAYS_EMPTY:
        if any(key in s.arrays for s in newest):
            arrays[key] = np.empty(0, dtype=np.uint64)
    if any("sketch" in s.arrays for s in newest):
        arrays["sketch"] = _added_sketches(table, [s.arrays["sketch"] for s in newest])
    learned = [s for s in newest if int(s.meta.get("default_version", 0)) > 0] or newest[:1]
    for key in _ARRAYS_MEAN:
        if key in newest[0].arrays:
            arrays[key] = _mean(table, key, [s.arrays[key] for s in learned])
    return arrays, meta, version


def _added_sketches(table: str, sketches: Sequence[np.ndarray]) -> np.ndarray:
    """The saturating sum of the old shards' sketches, each first made one stage as wide as
    the widest stage among them (shards that size their sketches to their keys grow them
    apart); no key is counted less."""
    try:
        if {(s.ndim, s.shape[0], s.dtype.str) for s in sketches} != {(2, DEPTH, "<u2")}:
            raise ValueError("rows or type differ")
        width = max(stages(s.shape[1])[-1][1] for s in sketches)
    except ValueError as exc:
        shapes = sorted({(s.shape, s.dtype.str) for s in sketches})
        raise ReshardError(
            f"table {table!r}: admission sketches of the old shards cannot be added "
            f"({exc}: {shapes})"
        ) from None
    total = np.zeros((DEPTH, width), dtype=np.uint64)
    for sketch in sketches:
        total += as_width(sketch, width)
    return np.minimum(total, np.iinfo(np.uint16).max).astype(np.uint16)


def _mean(table: str, key: str, arrays: Sequence[np.ndarray]) -> np.ndarray:
    if len({(a.shape, a.dtype.str) for a in arrays}) > 1:
        raise ReshardError(f"table {table!r}: {key} differs in shape across the old shards")
    return np.mean(np.stack(arrays).astype(np.float64), axis=0).astype(arrays[0].dtype)


__all__ = ["RESHARDED_FROM", "ReshardError", "ReshardResult", "combine_table_meta", "reshard"]
