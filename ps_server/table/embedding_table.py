"""``EmbeddingTable``: one named table of embedding rows over the Numba kernels.

The class checks input (``validation``), holds the table's lock and calls the kernels
(``cuckoo``, ``lookup``, ``update``, ``export``, ``admission``, ``ps_server.optim``), which
do all per-key work over whole batches. Its parts live beside it: the arrays and their
growth (``arrays``), the hot and cold tiers (``tiering``), eviction past ``max_rows``
(``eviction``), deltas in and out (``delta_io``) and the state that is not a row
(``metadata``).

Semantics worth knowing: admission counts the occurrences of a key in ``find_or_insert``
only, so a lookup-then-push step counts each once (``apply_gradients`` never admits a key);
LRU/LFU count the accesses of ``find_or_insert`` and ``apply_gradients`` (``find`` is
read-only); the TTL runs from a row's insert or last gradient update; ``apply_delta`` never
evicts or expires (replicas follow the tombstones of their source instead).

Thread safety: one lock per table. Every public method holds it while it touches the table;
the kernels release the GIL, so calls on different tables run in parallel, and gradient
merging (before the lock) overlaps with other callers' work on the same table.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from monolith_ps.errors import ConfigError
from monolith_ps.table_config import TableConfig
from ps_server.table import (
    cuckoo,
    delta_io,
    frequency,
    lookup,
    metadata,
    push,
    removal,
    rows,
)
from ps_server.table.arrays import TableArrays
from ps_server.table.delta import Delta
from ps_server.table.errors import NotTrainableError
from ps_server.table.eviction import Eviction
from ps_server.table.tiering import HALF_TO_F32, Tiering
from ps_server.table.validation import (
    CheckedPush,
    check_delta,
    check_keys,
    check_meta,
    check_now,
    check_push,
    micros,
)

__all__ = ["EmbeddingTable"]


class EmbeddingTable:
    """A table of ``uint64`` key -> ``dim`` float vector rows.

    ``trainable=True`` (training PS): float32 rows plus optimizer state; lookups insert
    through admission and gradients are applied in place. ``trainable=False`` (serving PS):
    rows only, float32 or float16 (default: ``config.serving_dtype``), filled by
    :meth:`apply_delta` and read by :meth:`find`.
    """

    def __init__(
        self,
        config: TableConfig,
        *,
        trainable: bool = True,
        dtype: Any = None,
    ) -> None:
        if not isinstance(config, TableConfig):
            raise TypeError(f"config must be a TableConfig, got {type(config).__name__}")
        if dtype is None:
            dtype = np.float32 if trainable else np.dtype(config.serving_dtype)
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float16):
            raise ConfigError(
                f"tables[{config.name}]: dtype must be float32 or float16, got {dtype}"
            )
        if trainable and dtype != np.float32:
            raise ConfigError(
                f"tables[{config.name}]: a training table stores float32, got {dtype}"
            )
        self._config = config
        self._lock = threading.Lock()
        self._t = TableArrays(config, trainable, dtype)
        # the cold tier, with a memory budget: rows past its hot row limit go there
        budget, cold_dir = config.memory_budget_bytes, config.cold_dir  # both or neither
        self._tiering = (
            None if budget is None or cold_dir is None else Tiering(self._t, cold_dir, budget)
        )
        self._eviction = Eviction(self._t, self._tiering)

    # ------------------------------------------------------------------ properties

    @property
    def config(self) -> TableConfig:
        return self._config

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def dim(self) -> int:
        return self._config.dim

    @property
    def dtype(self) -> np.dtype:
        """Storage dtype of the values."""
        return self._t.dtype

    @property
    def trainable(self) -> bool:
        return self._t.trainable

    @property
    def state_width(self) -> int:
        """Float32 optimizer-state values per row (0 on serving tables)."""
        return self._t.state_width

    @property
    def version(self) -> int:
        """The last version handed out: every change to the table takes the next one."""
        return self._t.version

    @property
    def capacity(self) -> int:
        """Rows the arenas hold without growing."""
        return int(self._t.rows.shape[0])

    @property
    def num_buckets(self) -> int:
        return int(self._t.index.shape[0])

    def __len__(self) -> int:
        cold = 0 if self._tiering is None else len(self._tiering)
        return self._t.live + cold

    def load_factor(self) -> float:
        """Live rows over index slots (of the hot tier's index)."""
        with self._lock:
            return self._t.live / (self._t.index.shape[0] * cuckoo.SLOTS)

    def memory_bytes(self) -> int:
        """Bytes of every array the table holds in memory, allocated capacity included (the
        cold tier's files are not memory: see :meth:`tier_stats`)."""
        with self._lock:
            cold = 0 if self._tiering is None else self._tiering.cold.memory_bytes()
            return sum(a.nbytes for a in self._t.all_arrays()) + cold

    def tier_stats(self) -> dict[str, int]:
        """Rows and bytes per tier. ``hot_bytes`` counts the hot tier's arrays (capacity
        included), ``cold_bytes`` the cold tier's files, ``cold_memory_bytes`` its index;
        ``hot_row_limit`` is the rows the budget allows (0: no tiers). The movement counters
        (``promoted``, ``demoted``, ``cold_hits``) are in :meth:`stats`."""
        with self._lock:
            cold = None if self._tiering is None else self._tiering.cold
            return {
                "hot_rows": self._t.live,
                "cold_rows": 0 if cold is None else len(cold),
                "hot_bytes": sum(a.nbytes for a in self._t.all_arrays()),
                "cold_bytes": 0 if cold is None else cold.file_bytes(),
                "cold_memory_bytes": 0 if cold is None else cold.memory_bytes(),
                "hot_row_limit": 0 if self._tiering is None else self._tiering.hot_limit,
            }

    def stats(self) -> dict[str, int]:
        """Counters since creation: lookups, inserts, updates, rejections, removals."""
        with self._lock:
            return dict(self._t.stats)

    def keys(self) -> np.ndarray:
        """Live keys (``uint64``), in row order."""
        with self._lock:
            t = self._t
            high = t.high
            hot = t.row_keys[:high][t.meta[:high, rows.VERSION_COL] != 0]
            cold = None if self._tiering is None else self._tiering.cold
            if cold is None or len(cold) == 0:
                return hot
            high = cold.high
            return np.concatenate([hot, cold.keys[:high][cold.meta[:high, rows.VERSION_COL] != 0]])

    # ------------------------------------------------------------------ lookups

    def find(self, keys: np.ndarray, *, count: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``keys`` as float32 ``(n, dim)`` and a found mask; inserts nothing. Misses
        get the default vector (the initializer's vector for the key, or the learned row).
        ``count=False`` leaves the lookup statistics alone (an export reading rows)."""
        keys = check_keys(keys)
        n = keys.shape[0]
        out = np.empty((n, self.dim), dtype=np.float32)
        found = np.empty(n, dtype=np.bool_)
        rows_found = np.empty(n, dtype=np.int64)
        with self._lock:
            t = self._t
            hits = lookup.find(
                t.index, t.rows, HALF_TO_F32, keys, rows_found, out, found, *t.init_args()
            )
            if hits < n and self._tiering is not None and len(self._tiering):
                hits += self._tiering.find(keys, out, found, count)
            if count:
                t.stats["lookups"] += n
                t.stats["lookup_misses"] += n - hits
        return out, found

    def find_or_insert(self, keys: np.ndarray, *, now: float | None = None) -> np.ndarray:
        """Rows of ``keys`` as float32 ``(n, dim)``, inserting new keys once admitted.

        Each occurrence of a key without a row counts one sighting (duplicates in ``keys``
        each count); a key gets its row at its ``admit_after``-th sighting, before that it
        gets the default vector. With ``max_rows``, the table then evicts down to it (LRU or
        LFU)."""
        self._require_trainable("find_or_insert")
        keys = check_keys(keys)
        now = micros(check_now(now))
        out = np.empty((keys.shape[0], self.dim), dtype=np.float32)
        with self._lock:
            self._promote(keys, for_lookup=True)
            frequency.fit_sketch(self._t, keys.shape[0])
            self._resolve(keys, now, count_sightings=True, out=out)
            self._t.stats["lookups"] += keys.shape[0]
            frequency.fit_sketch(self._t, 0)
            self._after_change()
        return out

    # ------------------------------------------------------------------ training

    def apply_gradients(
        self, keys: np.ndarray, grads: np.ndarray, *, now: float | None = None
    ) -> tuple[int, int]:
        """Apply one optimizer step per distinct key (gradients of duplicates summed).

        Pushes never count sightings (lookups do) and never admit a key: a key not admitted
        yet gets no row, and its gradient trains the learned default row with
        ``initializer="learned"`` and is dropped otherwise. A key already admitted whose row
        was removed (evicted, expired, deleted) gets it back. Returns ``(rows_updated,
        rows_pending_admission)``."""
        return self.apply_push(self.check_push(keys, grads), now=now)

    def check_push(self, keys: np.ndarray, grads: np.ndarray) -> CheckedPush:
        """``keys`` and ``grads`` checked (:class:`ShapeError`, :class:`KeysError`,
        :class:`NonFiniteGradientError`) and merged per distinct key, for
        :meth:`apply_push`: a caller pushing to several tables checks every push before
        applying any. Changes nothing."""
        self._require_trainable("apply_gradients")
        return check_push(keys, grads, self.name, self.dim)

    def apply_push(self, checked: CheckedPush, *, now: float | None = None) -> tuple[int, int]:
        """Apply a push :meth:`check_push` returned (see :meth:`apply_gradients`)."""
        self._require_trainable("apply_gradients")
        now = micros(check_now(now))
        with self._lock:
            t = self._t
            self._promote(checked.keys)
            updated, pending = self._push(checked, now)
            t.stats["updates"] += updated
            self._after_change()
        return int(updated), int(pending)

    # ------------------------------------------------------------------ removal

    def delete(self, keys: np.ndarray) -> int:
        """Delete the present keys (each leaves a tombstone); returns how many were deleted."""
        keys = check_keys(keys)
        with self._lock:
            self._promote(keys)
            deleted = self._t.run_removal(removal.delete_keys, keys)
            self._t.stats["deleted"] += deleted
        return deleted

    def expire(self, now: float | None = None) -> int:
        """Drop rows not updated for ``ttl_seconds`` before ``now`` (default: the current
        time); returns how many. A table without a TTL expires nothing."""
        now = check_now(now)
        ttl = self._config.ttl_seconds
        if ttl is None:
            return 0
        cutoff = micros(now - ttl)
        with self._lock:
            expired = self._t.run_removal(removal.expire_rows, cutoff)
            tiering = self._tiering
            if tiering is not None and len(tiering):
                expired += tiering.run_removal(removal.expire_rows, cutoff)
            self._t.stats["expired"] += expired
        return expired

    # ------------------------------------------------------------------ deltas

    def export_since(
        self, version: int, *, with_state: bool = False, with_values: bool = True
    ) -> Delta:
        """Rows with ``version > since`` and the tombstones after it (see :class:`Delta`).

        When ``version`` is older than the tombstone log reaches, or newer than the table,
        the delta is ``full``: every live row, no tombstones. Without ``with_values`` only
        the selection is copied (``values`` has no columns): a caller reads the values
        later, a part at a time, with :meth:`find`."""
        if isinstance(version, bool) or not isinstance(version, int | np.integer) or version < 0:
            raise ValueError(f"version must be a non-negative integer, got {version!r}")
        with self._lock:
            return delta_io.delta_since(
                self._t, self._tiering, int(version), with_state, with_values
            )

    def check_delta(self, delta: Delta) -> None:
        """Raise :class:`DeltaError` where :meth:`apply_delta` would refuse ``delta``, so a
        caller applying several deltas can check them all before changing anything."""
        check_delta(self._t, delta)

    def apply_delta(self, delta: Delta) -> tuple[int, int, int]:
        """Upsert the delta's rows whose version is newer than the held one, keeping their
        versions, then apply its tombstones to rows held at an older or equal version.

        Idempotent and order-safe per key; values are cast to this table's dtype; state
        fields, when present, restore optimizer state, push counts and update times on a
        training table. Never evicts or expires. Returns ``(rows_applied, rows_skipped,
        tombstones_applied)``."""
        checked = check_delta(self._t, delta)
        with self._lock:
            self._eviction.forget()
            return delta_io.apply_delta(self._t, self._tiering, checked, delta)

    # ------------------------------------------------------------------ metadata

    def export_meta(self) -> dict[str, np.ndarray | int]:
        """Everything that is not a row: version and access clocks, admission sketch,
        learned default row and its state, tombstone log. Inverse of :meth:`import_meta`."""
        with self._lock:
            return metadata.export_meta(self._t)

    def import_meta(self, meta: dict[str, Any]) -> None:
        """Restore what :meth:`export_meta` returned (rows come back through
        :meth:`apply_delta`). The version counter never moves backwards."""
        ints, t_keys, t_versions = check_meta(self._t, meta)
        sketch = frequency.sketch_from(self._t, meta["sketch"])
        with self._lock:
            self._eviction.forget()
            metadata.import_meta(self._t, meta, ints, sketch, t_keys, t_versions)

    # ------------------------------------------------------------------ internals

    def _require_trainable(self, what: str) -> None:
        if not self._t.trainable:
            raise NotTrainableError(
                f"table {self.name!r} is a serving table: {what} needs a training table"
            )

    def _promote(self, keys: np.ndarray, *, for_lookup: bool = False) -> None:
        if self._tiering is not None:
            self._tiering.promote(keys, for_lookup=for_lookup)

    def _after_change(self) -> None:
        """Age LFU counts when due, evict down to ``max_rows``, then demote down to the hot
        row limit."""
        frequency.age_frequencies(self._t, self._tiering)
        self._eviction.run()
        if self._tiering is not None:
            self._tiering.demote_over_budget()

    def _push(self, checked: CheckedPush, now: int) -> tuple[int, int]:
        """Run the fused push kernel over the push's distinct keys, growing what it asks
        for; returns ``(updated, pending)``."""
        t = self._t
        keys, grads, first, next_same, counts = checked
        scratch = np.zeros((2, self.dim), dtype=np.float32)
        totals = np.zeros(3, dtype=np.int64)
        rows_scratch = np.empty(keys.shape[0], dtype=np.int64)
        start = 0
        first_admitted = False
        while True:
            status, start = push.push_rows(
                t.index, t.max_live, t.walk, t.scalars, t.row_keys, t.meta, t.rows, keys,
                grads, first, next_same, counts, start, first_admitted, rows_scratch, t.sketch,
                self._config.admit_after, t.lfu, t.init_kind, t.init_params, t.seed,
                t.default_row, t.default_state, t.opt_kind, t.hp,
                float(self._config.lr_frequency_power), now, t.learned, scratch, totals,
            )  # fmt: skip
            if status == rows.DONE:
                break
            first_admitted = status == rows.NEED_INDEX_ADMITTED
            t.grow(status)
        t.stats["inserts"] += int(totals[push.INSERTED])
        return int(totals[push.UPDATED]), int(totals[push.PENDING])

    def _resolve(
        self,
        keys: np.ndarray,
        now: int,
        *,
        count_sightings: bool,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Row of each key (-1: not admitted), inserting admitted new keys; with
        ``count_sightings``, each occurrence of a key without a row counts toward admission.
        With ``out``, also each key's vector."""
        t = self._t
        if out is None:
            out = np.empty((0, self.dim), dtype=np.float32)
        found_rows = np.empty(keys.shape[0], dtype=np.int64)
        start = 0
        first_admitted = False
        inserted = rejected = 0
        while True:
            status, start, ins, rej = lookup.resolve_rows(
                t.index, t.max_live, t.walk, t.scalars, t.row_keys,
                t.meta, t.rows, keys, count_sightings, start, first_admitted,
                found_rows,
                t.sketch, self._config.admit_after, t.lfu, True, t.init_kind,
                t.init_params, t.seed, t.default_row, now, out,
            )  # fmt: skip
            inserted += ins
            rejected += rej
            if status == rows.DONE:
                break
            first_admitted = status == rows.NEED_INDEX_ADMITTED
            t.grow(status)
        t.stats["inserts"] += inserted
        t.stats["admission_rejected"] += rejected
        return found_rows
