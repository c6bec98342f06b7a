"""``UniqueKeys``: a batch's keys of one table deduplicated once per step, on the client.

The deduplication is the client's own routing kernel (``route_keys``: one hashing pass,
no sort), so the unique keys come out grouped by shard, in the order ``PSClient`` sends
them. A ``PSClient`` of that many shards sends a ``UniqueKeys`` given as a table's keys
as it is, without deduplicating it again; any other store sees it as the array of its
unique keys (``np.asarray(u)``). The servers still deduplicate what they receive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from ps_client.batch_ops import route_keys, segment_sum

__all__ = ["UniqueKeys", "keys_for", "num_shards_of", "unique_per_table"]


@dataclasses.dataclass(frozen=True)
class UniqueKeys:
    """One table's batch keys deduplicated: ``keys == unique[inverse]`` where ``inverse >= 0``.

    ``unique`` is grouped by shard: shard ``s`` of ``len(bounds) - 1`` owns
    ``unique[bounds[s]:bounds[s + 1]]``, in order of first appearance within a shard.
    ``bounds`` is None for unique keys in no known grouping (a client then routes them).

    ``from_keys`` is the way to make one. Construction checks the arrays' types, that
    every ``inverse`` entry is -1 or a position in ``unique`` (a min and a max over the
    batch, so ``gather`` and ``sum_per_key`` never index out of range), and that ``bounds``
    starts at 0, never decreases and ends at ``len(unique)`` (so a hand-made one cannot
    send a client out of range); which shard owns each key is left to the servers, which
    refuse misrouted keys.
    """

    unique: np.ndarray  # uint64 (u,)
    inverse: np.ndarray  # int64, the keys' shape; -1 marks a pad key
    bounds: np.ndarray | None = None  # int64 (num_shards + 1,)

    def __post_init__(self) -> None:
        _check_array("unique", self.unique, np.uint64, ndim=1)
        _check_array("inverse", self.inverse, np.int64)
        if self.inverse.size:
            low, high = int(self.inverse.min()), int(self.inverse.max())
            if low < -1 or high >= self.unique.shape[0]:
                raise ValueError(
                    f"inverse must hold -1 (a pad key) or positions below len(unique) = "
                    f"{self.unique.shape[0]}, got values from {low} to {high}"
                )
        if self.bounds is None:
            return
        bounds = self.bounds
        _check_array("bounds", bounds, np.int64, ndim=1)
        if bounds.shape[0] < 2:
            raise ValueError(f"bounds must have num_shards + 1 >= 2 entries, got {bounds.shape[0]}")
        if bounds[0] != 0 or bounds[-1] != self.unique.shape[0]:
            raise ValueError(
                f"bounds must run from 0 to len(unique) = {self.unique.shape[0]}, "
                f"got {int(bounds[0])} to {int(bounds[-1])}"
            )
        if (np.diff(bounds) < 0).any():
            shard = int(np.flatnonzero(np.diff(bounds) < 0)[0])
            raise ValueError(
                f"bounds must not decrease: shard {shard} ends at {int(bounds[shard + 1])}, "
                f"before it starts at {int(bounds[shard])}"
            )

    @classmethod
    def from_keys(
        cls, keys: np.ndarray, pad_key: int | None = None, num_shards: int = 1
    ) -> UniqueKeys:
        """Deduplicate ``keys`` (any shape) and group them for ``num_shards`` shards; keys
        equal to ``pad_key`` get no row."""
        keys = np.asarray(keys)
        if keys.dtype != np.uint64:
            raise TypeError(f"keys must be uint64, got {keys.dtype}")
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        flat = np.ascontiguousarray(keys.reshape(-1))
        if pad_key is None:
            unique, bounds, position = route_keys(flat, num_shards)
            return cls(unique, position.reshape(keys.shape), bounds)
        present = flat != np.uint64(pad_key)
        unique, bounds, position = route_keys(flat[present], num_shards)
        inverse = np.full(flat.shape, -1, dtype=np.int64)
        inverse[present] = position
        return cls(unique, inverse.reshape(keys.shape), bounds)

    def grouped_for(self, num_shards: int) -> bool:
        """Whether ``unique`` is grouped by shard for ``num_shards`` shards."""
        return self.bounds is not None and self.bounds.shape[0] == num_shards + 1

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return np.array(self.unique, dtype=dtype, copy=copy)

    def gather(self, unique_rows: np.ndarray) -> np.ndarray:
        """Rows laid out like the keys: ``keys.shape + (dim,)``, zeros at pad keys."""
        if unique_rows.shape[0] != self.unique.shape[0]:
            raise ValueError(f"expected {self.unique.shape[0]} rows, got {unique_rows.shape[0]}")
        if unique_rows.shape[0] == 0:  # only pad keys (or none): nothing to index
            return np.zeros(self.inverse.shape + unique_rows.shape[1:], unique_rows.dtype)
        out = unique_rows[np.maximum(self.inverse, 0)]
        out[self.inverse < 0] = 0.0
        return out

    def sum_per_key(self, grads: np.ndarray) -> np.ndarray:
        """Sum of ``grads`` (``keys.shape + (dim,)``) per unique key: ``(u, dim)``."""
        if grads.shape[: self.inverse.ndim] != self.inverse.shape:
            raise ValueError(
                f"gradients of shape {grads.shape} do not match keys of shape {self.inverse.shape}"
            )
        dim = grads.shape[-1]
        flat_inverse = self.inverse.ravel()
        flat_grads = np.ascontiguousarray(grads.reshape(-1, dim), dtype=np.float32)
        present = flat_inverse >= 0
        if not present.all():
            flat_inverse, flat_grads = flat_inverse[present], flat_grads[present]
        out = np.zeros((self.unique.shape[0], dim), dtype=np.float32)
        segment_sum(flat_inverse, flat_grads, out)
        return out


def _check_array(name: str, value: Any, dtype: type[np.generic], ndim: int | None = None) -> None:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(value).__name__}")
    if value.dtype != dtype:
        raise TypeError(f"{name} must be {np.dtype(dtype)}, got {value.dtype}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {value.shape}")


def num_shards_of(store: Any) -> int | None:
    """How many shards ``store`` routes keys to: its ``num_shards`` (a ``PSClient``), or
    None for a store without shards (a ``LocalStore``)."""
    num_shards = getattr(store, "num_shards", None)
    return None if num_shards is None else int(num_shards)


def unique_per_table(
    keys_by_table: Mapping[str, Any], pad_key: int | None, store: Any
) -> dict[str, UniqueKeys]:
    """Each table's keys deduplicated once and grouped for ``store``'s shards."""
    num_shards = num_shards_of(store) or 1
    return {
        table: UniqueKeys.from_keys(keys, pad_key, num_shards)
        for table, keys in keys_by_table.items()
    }


def keys_for(store: Any, unique: UniqueKeys) -> Any:
    """A table's keys as ``store`` is given them: ``unique`` itself for a store with shards
    (it sends them as they are), the array of unique keys for any other store."""
    return unique if num_shards_of(store) is not None else unique.unique
