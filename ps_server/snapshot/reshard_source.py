"""The old shards of a reshard: each one's newest verified chain, read through memory maps.

Every file of a chain is checked against its manifest (size and CRC-32, streamed) before
it is mapped, so a reshard reads only data a server would restore. Row arrays stay on
disk as ``numpy`` memory maps; :class:`LiveRows` walks one table's live rows in chunks.
A chain's first section is the base; every key that an incremental touches (a newer row
or a tombstone) supersedes the base's row, so only the incrementals' keys and versions
are held in memory, never the base's rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ps_server.snapshot.content import ROW_KEYS, ROW_VERSIONS, DenseSnapshot, TableSnapshot
from ps_server.snapshot.files import CorruptSnapshotError, FileEntry, read_npy
from ps_server.snapshot.format import DenseEntry, Manifest, ServerInfo
from ps_server.snapshot.merge import merge_sections
from ps_server.snapshot.store import SnapshotStore

_POSITION = "position"


class ReshardError(ValueError):
    """The old shards cannot be resharded as given; the message names the problem."""


def map_npy(path: Path, entry: FileEntry) -> np.ndarray:
    """A read-only memory map of a verified ``.npy`` file whose header matches ``entry``."""
    if entry.shape and 0 in entry.shape:
        return np.empty(entry.shape, dtype=np.dtype(entry.dtype))
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.dtype.str != entry.dtype or tuple(array.shape) != entry.shape:
        raise CorruptSnapshotError(
            f"{path}: header says {array.dtype.str}{list(array.shape)}, "
            f"manifest says {entry.dtype}{list(entry.shape)}"
        )
    return array


@dataclass(frozen=True)
class SourceShard:
    """One old training shard: its identity, the chain used, and per table its sections
    (oldest first, row arrays memory-mapped)."""

    path: Path
    server: ServerInfo
    seqs: tuple[int, ...]
    tables: dict[str, list[TableSnapshot]]
    dense: DenseSnapshot | None


def open_source(root: Path | str) -> SourceShard:
    """The newest chain of ``root``; refuses when it is missing or a newer snapshot does
    not verify (resharding from an older chain would silently drop updates)."""
    root = Path(root)
    if not root.is_dir():
        raise ReshardError(f"{root}: no such snapshot directory")
    store = SnapshotStore(root)

    def verified(path: Path, manifest: Manifest) -> Path:
        store.verify(path, manifest)
        return path

    selection = store.select_chain(verified)
    if selection.skipped:
        bad = selection.skipped[-1]
        raise ReshardError(
            f"{root}: snapshot {bad.path.name} does not verify ({bad.reason}); the chain "
            "to reshard must be the newest one: repair it or move it aside"
        )
    if not selection.chain:
        raise ReshardError(f"{root}: no snapshot that verifies")
    tables: dict[str, list[TableSnapshot]] = {}
    dense = None
    for manifest, path in selection.chain:
        for name, section in _mapped_tables(path, manifest).items():
            tables.setdefault(name, []).append(section)
        if manifest.dense is not None:
            dense = _loaded_dense(path, manifest, manifest.dense)
    last = selection.chain[-1][0]
    return SourceShard(root, last.server, tuple(m.seq for m, _ in selection.chain), tables, dense)


def open_sources(roots: Sequence[Path | str]) -> list[SourceShard]:
    """Every old shard, once each, all of one cluster; ordered by shard index."""
    if not roots:
        raise ReshardError("no --from directory given")
    sources = [open_source(root) for root in roots]
    roles = {s.server.role for s in sources}
    if roles != {"training"}:
        raise ReshardError(f"only training snapshots can be resharded, got roles {sorted(roles)}")
    counts = sorted({s.server.num_shards for s in sources})
    if len(counts) > 1:
        described = ", ".join(
            f"{s.path} is shard {s.server.shard_index} of {s.server.num_shards}" for s in sources
        )
        raise ReshardError(f"the snapshots come from clusters of different sizes: {described}")
    by_index: dict[int, SourceShard] = {}
    for source in sources:
        other = by_index.get(source.server.shard_index)
        if other is not None:
            raise ReshardError(
                f"training shard {source.server.shard_index} given twice: {other.path} "
                f"and {source.path}"
            )
        by_index[source.server.shard_index] = source
    missing = sorted(set(range(counts[0])) - set(by_index))
    if missing:
        raise ReshardError(
            f"the old cluster had {counts[0]} shards; missing shard(s) {missing}: every "
            "old shard's snapshot directory is needed, or rows would be lost"
        )
    return [by_index[i] for i in sorted(by_index)]


def row_layout(sources: Sequence[SourceShard], table: str) -> dict[str, tuple[np.dtype, tuple]]:
    """``field -> (dtype, per-row shape)`` of ``table``, equal in every section of every
    old shard (else the shards were not one cluster's)."""
    layout: dict[str, tuple[np.dtype, tuple]] | None = None
    for source in sources:
        for section in source.tables.get(table, []):
            found = {f: (a.dtype, a.shape[1:]) for f, a in section.rows.items()}
            if layout is None:
                layout = found
            elif found != layout:
                raise ReshardError(
                    f"table {table!r}: row fields of {source.path} ({_describe(found)}) "
                    f"differ from the other shards' ({_describe(layout)})"
                )
    return layout or {}


class LiveRows:
    """The live rows of one table of one old shard: the merge of its chain, in chunks."""

    def __init__(self, sections: Sequence[TableSnapshot]) -> None:
        self._base = sections[0]
        self._tail = list(sections[1:])
        self._touched = np.empty(0, dtype=np.uint64)
        self._tail_positions = np.empty(0, dtype=np.int64)
        if self._tail:
            self._merge_tail()

    def _merge_tail(self) -> None:
        offsets = np.cumsum([0] + [s.num_rows for s in self._tail])
        light = [
            TableSnapshot(
                rows={
                    ROW_KEYS: np.asarray(s.keys),
                    ROW_VERSIONS: np.asarray(s.versions),
                    _POSITION: np.arange(offsets[i], offsets[i + 1], dtype=np.int64),
                },
                since_version=s.since_version,
                complete_version=s.complete_version,
                tombstone_keys=np.asarray(s.tombstone_keys),
                tombstone_versions=np.asarray(s.tombstone_versions),
            )
            for i, s in enumerate(self._tail)
        ]
        merged = merge_sections(light)
        self._tail_positions = np.sort(merged.rows[_POSITION])
        self._tail_offsets = offsets
        self._touched = np.unique(
            np.concatenate([x for s in light for x in (s.keys, s.tombstone_keys)])
        )

    def chunks(self, fields: Sequence[str], chunk_rows: int) -> Iterator[dict[str, np.ndarray]]:
        """``field -> array`` for up to ``chunk_rows`` live rows at a time."""
        base = self._base
        for start in range(0, base.num_rows, chunk_rows):
            stop = min(start + chunk_rows, base.num_rows)
            keys = np.asarray(base.keys[start:stop])
            keep = None
            if self._touched.size:
                keep = ~_in_sorted(keys, self._touched)
            out = {}
            for f in fields:
                part = keys if f == ROW_KEYS else np.asarray(base.rows[f][start:stop])
                out[f] = part if keep is None else part[keep]
            yield out
        for start in range(0, self._tail_positions.size, chunk_rows):
            positions = self._tail_positions[start : start + chunk_rows]
            yield {f: self._gather_tail(f, positions) for f in fields}

    def _gather_tail(self, field: str, positions: np.ndarray) -> np.ndarray:
        which = np.searchsorted(self._tail_offsets, positions, side="right") - 1
        parts = []
        for i, section in enumerate(self._tail):
            local = positions[which == i] - self._tail_offsets[i]
            if local.size:
                parts.append(np.asarray(section.rows[field][local]))
        return np.concatenate(parts)


def _in_sorted(keys: np.ndarray, sorted_unique: np.ndarray) -> np.ndarray:
    pos = np.minimum(np.searchsorted(sorted_unique, keys), sorted_unique.size - 1)
    return sorted_unique[pos] == keys


def _loaded_dense(path: Path, manifest: Manifest, entry: DenseEntry) -> DenseSnapshot:
    def get(rel: str) -> np.ndarray:
        return read_npy(path / rel, manifest.files[rel])

    return DenseSnapshot(
        arrays={n: get(rel) for n, rel in entry.files.items()},
        version=entry.version,
        states={n: get(rel) for n, rel in entry.state_files.items()},
        meta=entry.meta,
    )


def _mapped_tables(path: Path, manifest: Manifest) -> dict[str, TableSnapshot]:
    def mapped(rel: str) -> np.ndarray:
        return map_npy(path / rel, manifest.files[rel])

    def loaded(rel: str) -> np.ndarray:
        return read_npy(path / rel, manifest.files[rel])

    return {
        name: TableSnapshot.from_entry(entry, mapped, loaded)
        for name, entry in manifest.tables.items()
    }


def _describe(layout: dict[str, tuple[np.dtype, tuple]]) -> str:
    return ", ".join(f"{f} {d}{list(s)}" for f, (d, s) in sorted(layout.items()))
