"""Fold a chain (a full snapshot and its incrementals) into one state per table.

For every key the newest change wins: the row with the highest version, unless a
tombstone with a higher version deleted it afterwards. All of it is whole-array numpy
(sorts and searches), never a loop over keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ps_server.snapshot.content import (
    ROW_KEYS,
    ROW_VERSIONS,
    DenseSnapshot,
    LoadedSnapshot,
    TableSnapshot,
)
from ps_server.snapshot.files import CorruptSnapshotError
from ps_server.snapshot.format import ServerInfo


class ChainMismatchError(CorruptSnapshotError):
    """Snapshots of one chain disagree on a table's row fields, dtypes or shapes."""


@dataclass(frozen=True)
class MergedSnapshot:
    """The state a chain describes: live rows per table and the dense arrays."""

    tables: dict[str, TableSnapshot]
    dense: DenseSnapshot | None
    server: ServerInfo
    seqs: tuple[int, ...]


def merge_sections(sections: Sequence[TableSnapshot], table: str = "") -> TableSnapshot:
    """The live rows after applying ``sections`` in order (oldest first).

    The result covers ``(sections[0].since_version, sections[-1].complete_version]``;
    its tombstones are the keys whose newest change is a delete; its extra arrays and
    metadata are the newest section's. Rows of two or more sections come out sorted by
    key; a single section is returned as it is.
    """
    if not sections:
        raise ValueError("nothing to merge")
    fields = _common_fields(sections, table)
    if len(sections) == 1:
        return sections[0]
    keys = np.concatenate([s.keys for s in sections])
    versions = np.concatenate([s.versions for s in sections])
    order = np.concatenate([np.full(s.num_rows, i, dtype=np.int64) for i, s in enumerate(sections)])
    newest = _newest_per_key(keys, versions, order)
    row_keys, row_versions = keys[newest], versions[newest]

    dead_keys = np.concatenate([s.tombstone_keys for s in sections])
    dead_versions = np.concatenate([s.tombstone_versions for s in sections])
    dead_order = np.concatenate(
        [np.full(s.tombstone_keys.size, i, dtype=np.int64) for i, s in enumerate(sections)]
    )
    newest_dead = _newest_per_key(dead_keys, dead_versions, dead_order)
    dead_keys, dead_versions = dead_keys[newest_dead], dead_versions[newest_dead]

    deleted_after = _later_in(row_keys, row_versions, dead_keys, dead_versions)
    live = ~deleted_after
    revived = _later_in(dead_keys, dead_versions, row_keys, row_versions, strictly=False)
    rows = {ROW_KEYS: row_keys[live], ROW_VERSIONS: row_versions[live]}
    picked = newest[live]
    for name in fields:
        if name not in rows:
            rows[name] = np.concatenate([s.rows[name] for s in sections])[picked]
    last = sections[-1]
    return TableSnapshot(
        rows=rows,
        since_version=sections[0].since_version,
        complete_version=last.complete_version,
        tombstone_keys=dead_keys[~revived],
        tombstone_versions=dead_versions[~revived],
        arrays=dict(last.arrays),
        meta=dict(last.meta),
    )


def merge_chain(chain: Sequence[LoadedSnapshot]) -> MergedSnapshot:
    """Merge a restored chain into one state (tables absent from later links carry over)."""
    if not chain:
        raise ValueError("empty chain")
    names: dict[str, list[TableSnapshot]] = {}
    for snap in chain:
        for name, section in snap.tables.items():
            names.setdefault(name, []).append(section)
    tables = {name: merge_sections(sections, name) for name, sections in names.items()}
    dense = next((s.dense for s in reversed(chain) if s.dense is not None), None)
    return MergedSnapshot(tables, dense, chain[-1].manifest.server, tuple(s.seq for s in chain))


def _common_fields(sections: Sequence[TableSnapshot], table: str) -> list[str]:
    first = sections[0]
    layout = {n: (a.dtype, a.shape[1:]) for n, a in first.rows.items()}
    for section in sections[1:]:
        other = {n: (a.dtype, a.shape[1:]) for n, a in section.rows.items()}
        if other != layout:
            raise ChainMismatchError(
                f"table {table!r}: row fields differ along the chain ({layout} vs {other})"
            )
    return list(layout)


def _newest_per_key(keys: np.ndarray, versions: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Indices of the newest entry of each key, by ascending key."""
    if keys.size == 0:
        return np.empty(0, dtype=np.int64)
    idx = np.lexsort((order, versions, keys))
    sorted_keys = keys[idx]
    last = np.empty(idx.size, dtype=bool)
    last[:-1] = sorted_keys[1:] != sorted_keys[:-1]
    last[-1] = True
    return idx[last]


def _later_in(
    keys: np.ndarray,
    versions: np.ndarray,
    other_keys: np.ndarray,
    other_versions: np.ndarray,
    strictly: bool = True,
) -> np.ndarray:
    """For each key: does sorted, unique ``other_keys`` hold it with a later version?"""
    if other_keys.size == 0 or keys.size == 0:
        return np.zeros(keys.size, dtype=bool)
    pos = np.searchsorted(other_keys, keys)
    pos = np.minimum(pos, other_keys.size - 1)
    found = other_keys[pos] == keys
    later = other_versions[pos] > versions if strictly else other_versions[pos] >= versions
    return found & later
