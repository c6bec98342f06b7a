"""What a snapshot holds, in memory: per-table rows, tombstones, arrays and metadata.

The store is generic: a table section is a set of named row arrays (``keys`` and
``versions`` plus any per-row fields, e.g. values, optimizer state, push counts, last
update), the tombstones, named extra arrays (admission sketch, learned default row...)
and JSON metadata. The server maps its tables' exports onto these; tests use synthetic
arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ps_server.snapshot.format import Manifest, TableEntry, check_field_name

ROW_KEYS = "keys"
ROW_VERSIONS = "versions"

_EMPTY_KEYS = np.empty(0, dtype=np.uint64)


@dataclass(frozen=True)
class TableSnapshot:
    """One table's part of a snapshot.

    ``rows`` maps field name to an array whose first axis is the row: ``keys`` and
    ``versions`` (both ``uint64``) are required, any other fields are carried as they are.
    ``since_version``/``complete_version``: the section holds every change with
    ``since_version < version <= complete_version`` (a full snapshot has ``since = 0``).
    """

    rows: Mapping[str, np.ndarray]
    since_version: int
    complete_version: int
    tombstone_keys: np.ndarray = field(default_factory=lambda: _EMPTY_KEYS)
    tombstone_versions: np.ndarray = field(default_factory=lambda: _EMPTY_KEYS)
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_entry(
        cls,
        entry: TableEntry,
        read_rows: Callable[[str], np.ndarray],
        read_arrays: Callable[[str], np.ndarray],
    ) -> TableSnapshot:
        """A manifest entry's section: ``read_rows`` opens its row and tombstone files (by
        relative path), ``read_arrays`` its extra arrays."""
        return cls(
            rows={f: read_rows(rel) for f, rel in entry.row_files.items()},
            since_version=entry.since_version,
            complete_version=entry.complete_version,
            tombstone_keys=read_rows(entry.tombstone_files["keys"]),
            tombstone_versions=read_rows(entry.tombstone_files["versions"]),
            arrays={f: read_arrays(rel) for f, rel in entry.array_files.items()},
            meta=entry.meta,
        )

    @property
    def num_rows(self) -> int:
        return int(self.rows[ROW_KEYS].shape[0])

    @property
    def keys(self) -> np.ndarray:
        return self.rows[ROW_KEYS]

    @property
    def versions(self) -> np.ndarray:
        return self.rows[ROW_VERSIONS]

    def validate(self, table: str) -> None:
        """Raise ``ValueError``/``TypeError`` naming the problem if the section is malformed."""
        if not isinstance(table, str) or not table:
            raise ValueError(f"table name must be a non-empty string, got {table!r}")
        if ROW_KEYS not in self.rows or ROW_VERSIONS not in self.rows:
            raise ValueError(f"table {table!r}: rows need {ROW_KEYS!r} and {ROW_VERSIONS!r}")
        for name, keys in (("rows", self.keys), ("tombstones", self.tombstone_keys)):
            _check_u64_vector(keys, f"table {table!r} {name} keys")
        _check_u64_vector(self.versions, f"table {table!r} rows versions")
        _check_u64_vector(self.tombstone_versions, f"table {table!r} tombstone versions")
        n = self.num_rows
        for name, array in self.rows.items():
            check_field_name(name, f"table {table!r} row field")
            if np.ndim(array) < 1 or np.shape(array)[0] != n:
                raise ValueError(
                    f"table {table!r} row field {name!r}: {np.shape(array)[:1]} rows, keys have {n}"
                )
        if self.tombstone_keys.shape != self.tombstone_versions.shape:
            raise ValueError(f"table {table!r}: tombstone keys and versions differ in length")
        for name in self.arrays:
            check_field_name(name, f"table {table!r} array")
        if not 0 <= self.since_version <= self.complete_version:
            raise ValueError(
                f"table {table!r}: need 0 <= since_version ({self.since_version}) "
                f"<= complete_version ({self.complete_version})"
            )


@dataclass(frozen=True)
class DenseSnapshot:
    """The dense parameters (name -> array), their optimizer states and their version."""

    arrays: Mapping[str, np.ndarray]
    version: int
    states: Mapping[str, np.ndarray] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedSnapshot:
    """A verified snapshot read back from disk."""

    path: Path
    manifest: Manifest
    tables: dict[str, TableSnapshot]
    dense: DenseSnapshot | None

    @property
    def seq(self) -> int:
        return self.manifest.seq


def _check_u64_vector(array: Any, what: str) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint64 or array.ndim != 1:
        raise TypeError(f"{what} must be a 1-D uint64 array")
