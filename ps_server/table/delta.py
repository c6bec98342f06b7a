"""The rows a table changed since a version: what sync streams and snapshots store."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Delta:
    """Rows with ``version > since`` and the tombstones after it, complete up to
    ``complete_version``.

    ``full`` says ``since`` is older than the tombstone log reaches (or newer than the
    table): ``keys`` then hold every live row and the receiver must replace its copy rather
    than merge. The ``opt_state``/``push_counts``/``last_update``/``usage`` fields are set
    only by ``export_since(..., with_state=True)``. ``default_value`` carries the learned
    default row when it changed after ``since`` (``default_version`` is its version), else is
    None.
    """

    keys: np.ndarray  # uint64 (n,)
    values: np.ndarray  # (n, dim), the table's storage dtype
    versions: np.ndarray  # uint64 (n,)
    tombstone_keys: np.ndarray  # uint64 (m,)
    tombstone_versions: np.ndarray  # uint64 (m,)
    complete_version: int
    full: bool
    since_version: int = 0
    opt_state: np.ndarray | None = None  # float32 (n, state_width)
    push_counts: np.ndarray | None = None  # uint32 (n,)
    last_update: np.ndarray | None = None  # float64 unix seconds (n,)
    usage: np.ndarray | None = None  # int64 (n,): eviction rank (LRU clock or LFU count/clock)
    default_value: np.ndarray | None = None  # float32 (dim,)
    default_version: int = 0

    @classmethod
    def of_rows(
        cls,
        keys: np.ndarray,
        values: np.ndarray,
        versions: np.ndarray,
        *,
        complete_version: int,
        default_value: np.ndarray | None = None,
        default_version: int = 0,
    ) -> Delta:
        """An incremental delta of just these rows (no tombstones), for loading a chosen
        part of another table's rows into a table with ``apply_delta``."""
        no_keys = np.zeros(0, dtype=np.uint64)
        return cls(
            keys=keys,
            values=values,
            versions=versions,
            tombstone_keys=no_keys,
            tombstone_versions=no_keys,
            complete_version=complete_version,
            full=False,
            default_value=default_value,
            default_version=default_version,
        )

    def rows_where(self, chosen: np.ndarray) -> Delta:
        """The rows the bool mask ``chosen`` picks, as an incremental delta with this one's
        complete version and default row (no tombstones, no optimizer state)."""
        return Delta.of_rows(
            self.keys[chosen],
            self.values[chosen],
            self.versions[chosen],
            complete_version=self.complete_version,
            default_value=self.default_value,
            default_version=self.default_version,
        )

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    @property
    def has_state(self) -> bool:
        return self.opt_state is not None
