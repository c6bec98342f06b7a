"""``LocalStore``: a cluster's tables and dense arrays in this process, with ``PSClient``'s
lookup/push interface, for unit tests, notebooks and reference runs of a model (an
unknown table is a ``KeyError`` naming it).

It runs the same table engine and optimizers as a training server (``EmbeddingTable``,
``DenseStore``), without gRPC, shards or a sync path::

    store = LocalStore.from_config("tables.yaml")
    rows = store.lookup_many({"user": keys})["user"]
    store.push_many({"user": (keys, grads)})
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monolith_ps.config import ClusterConfig, load_config
from ps_server.errors import UnknownNameError
from ps_server.state import ShardState
from ps_server.table import EmbeddingTable

__all__ = ["LocalStore"]


class LocalStore:
    """Training tables (find-or-insert, server-side optimizers) and dense arrays in-process."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self._state = ShardState.from_config(config, "training", 0, 1)

    @classmethod
    def from_config(cls, path: str | os.PathLike[str]) -> LocalStore:
        """A store with the tables and dense arrays of a cluster config file."""
        return cls(load_config(path))

    def _table(self, name: str) -> EmbeddingTable:
        return self._state.table(name)

    def lookup_many(
        self, keys_by_table: Mapping[str, Any], *, with_found: bool = False
    ) -> dict[str, Any]:
        """Rows of each table's keys (``keys.shape + (dim,)``), inserting new keys as a
        training server does; with ``with_found``, find only and also return the found
        mask, as a serving server answers (misses get the table's default row)."""
        out: dict[str, Any] = {}
        for name, keys in keys_by_table.items():
            keys = np.asarray(keys, dtype=np.uint64)
            flat = np.ascontiguousarray(keys.reshape(-1))
            if with_found:
                rows, found = self._table(name).find(flat)
                out[name] = (
                    rows.reshape(keys.shape + (rows.shape[-1],)),
                    found.reshape(keys.shape),
                )
            else:
                rows = self._table(name).find_or_insert(flat)
                out[name] = rows.reshape(keys.shape + (rows.shape[-1],))
        return out

    def push_many(self, grads_by_table: Mapping[str, tuple[Any, Any]]) -> tuple[int, int]:
        """Apply each table's gradients (duplicates summed); returns rows updated and pending."""
        updated = pending = 0
        for name, (keys, grads) in grads_by_table.items():
            table = self._table(name)
            keys = np.ascontiguousarray(np.asarray(keys, dtype=np.uint64).reshape(-1))
            grads = np.ascontiguousarray(np.asarray(grads, dtype=np.float32))
            u, p = table.apply_gradients(keys, grads.reshape(keys.shape[0], table.dim))
            updated += u
            pending += p
        return updated, pending

    def lookup(self, table: str, keys: Any) -> np.ndarray:
        return self.lookup_many({table: keys})[table]

    def push(self, table: str, keys: Any, grads: Any) -> tuple[int, int]:
        return self.push_many({table: (keys, grads)})

    def pull_dense(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Copies of the dense arrays (all when ``names`` is None)."""
        if self._state.dense is None:
            return {}
        arrays, _ = self._state.dense.pull(tuple(names or ()))
        return arrays

    def push_dense(self, grads: Mapping[str, Any]) -> int:
        """One optimizer step on each named dense array; returns the new version."""
        if self._state.dense is None:
            raise UnknownNameError(f"no dense arrays in this store (asked: {', '.join(grads)})")
        return self._state.dense.push(grads)

    def num_rows(self) -> dict[str, int]:
        """Live rows per table."""
        return {name: len(table) for name, table in self._state.tables.items()}
