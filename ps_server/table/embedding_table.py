"""``EmbeddingTable``: one named table of embedding rows over the Numba kernels.

The class validates input, owns the arenas and the index, grows them when a kernel asks,
and raises; the kernels (``cuckoo``, ``lookup``, ``update``, ``export``, ``admission``,
``ps_server.optim``) do all per-key work over whole batches.

Memory layout: a cuckoo index of 64-byte buckets maps keys to rows; rows live in three
contiguous arenas: values followed by optimizer state (written at a row's first push), the
key, and a 32-byte metadata line (version, last-update time, push count, usage). The index
doubles when its load passes 0.9; the arenas grow by an eighth, in place (see ``arena``), so
memory stays within a few tens of percent of the raw payload at any size. Freed rows go on
a free list and are reused before the arenas grow.

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

import math
import threading
import time
from typing import Any

import numpy as np

from monolith_ps.errors import ConfigError
from monolith_ps.optimizer_specs import INITIALIZERS, LEARNED, OPTIMIZERS
from monolith_ps.table_config import TableConfig
from ps_server.optim.optimizers import init_state_rows
from ps_server.table import admission, cuckoo, export, lookup, rows, tiers, update
from ps_server.table.arena import RowArena
from ps_server.table.cold import SHARED_SCALARS, ColdTier
from ps_server.table.delta import Delta
from ps_server.table.errors import (
    DeltaError,
    KeysError,
    NonFiniteGradientError,
    NotTrainableError,
    ShapeError,
)

MAX_LOAD_FACTOR = 0.9
ARENA_GROWTH = 1.125
_MIN_LOG = 64
_NO_COUNTS = np.empty(0, dtype=np.int64)
_I64_MAX = np.iinfo(np.int64).max
_MAX_VERSION = 2**63 - 1
_HALF_TO_F32 = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)

_STAT_NAMES = (
    "lookups",
    "lookup_misses",
    "inserts",
    "updates",
    "admission_rejected",
    "expired",
    "evicted",
    "deleted",
    "delta_rows_applied",
    "delta_rows_skipped",
    "delta_tombstones_applied",
    "cold_hits",
    "promoted",
    "demoted",
)
# hot bytes a row costs beyond its arena row: key, metadata line, and its share of the
# index (64-byte buckets of 4 slots, filled between 45% and 90%)
_ROW_OVERHEAD = 8 + 8 * rows.META_COLUMNS + 36
_MIN_RELEASE = 4 << 20
_MAX_RELEASE = 64 << 20
_META_INTS = ("version", "tick", "log_floor", "default_version", "default_pushes", "rng")
_META_ARRAYS = ("sketch", "default_row", "default_state", "tombstone_keys", "tombstone_versions")


def _describe(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def _check_keys(keys: Any, what: str = "keys") -> np.ndarray:
    if not isinstance(keys, np.ndarray) or keys.dtype != np.uint64 or keys.ndim != 1:
        raise KeysError(f"{what} must be a one-dimensional uint64 array, got {_describe(keys)}")
    return np.ascontiguousarray(keys)


def _micros(seconds: float) -> int:
    return int(round(seconds * 1e6))


def _check_now(now: float | None) -> float:
    if now is None:
        return time.time()
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise ValueError(f"now must be a finite number of unix seconds, got {now!r}")
    return float(now)


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
        self._trainable = trainable
        self._dtype = dtype
        self._lock = threading.Lock()
        opt = OPTIMIZERS[config.optimizer]
        self._opt_kind = opt.kind
        self._hp = opt.hyper_parameters(config.optimizer_args)
        init = INITIALIZERS[config.initializer]
        self._init_kind = init.kind
        self._init_params = init.parameters(config.initializer_args)
        self._seed = np.uint64(config.seed)
        self._lfu = config.eviction == "lfu"
        dim = config.dim
        self._state_width = opt.state_width(dim) if trainable else 0
        self._storage = np.float32 if dtype == np.float32 else np.uint16
        # one arena row = the values (dim) then the optimizer state (state_width): a step
        # touches one contiguous stretch of memory
        self._arenas = (
            RowArena((dim + self._state_width,), self._storage),
            RowArena((), np.uint64),
            RowArena((rows.META_COLUMNS,), np.int64),
        )
        self._rows, self._row_keys, self._meta = (a.array for a in self._arenas)
        self._index = cuckoo.new_index(1)
        self._max_live = self._max_live_for(1)
        self._scalars = rows.new_scalars()
        self._walk = cuckoo.new_walk(0x9E3779B97F4A7C15 ^ config.seed)
        width = config.sketch_width if config.admit_after > 1 else 1
        self._sketch = admission.new_sketch(width)
        self._log_keys = np.zeros(0, dtype=np.uint64)
        self._log_versions = np.zeros(0, dtype=np.int64)
        # the learned default row and its optimizer state: one row, only for "learned"
        learned = int(self._init_kind == LEARNED)
        self._default_row = np.zeros((learned, dim), dtype=np.float32)
        self._default_state = np.zeros((learned, opt.state_width(dim)), dtype=np.float32)
        init_state_rows(self._opt_kind, self._hp, self._default_state)
        self._stats = dict.fromkeys(_STAT_NAMES, 0)
        # the cold tier, with a memory budget: rows past ``_hot_limit`` go there
        self._cold: ColdTier | None = None
        self._hot_limit = 0
        self._release_bytes = 0
        budget = config.memory_budget_bytes
        if budget is not None:
            self._cold = ColdTier(config.cold_dir, dim + self._state_width, self._storage)
            self._hot_limit = max(1, budget // self._hot_row_bytes())
            self._release_bytes = min(_MAX_RELEASE, max(_MIN_RELEASE, budget // 4))

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
        return self._dtype

    @property
    def trainable(self) -> bool:
        return self._trainable

    @property
    def state_width(self) -> int:
        """Float32 optimizer-state values per row (0 on serving tables)."""
        return self._state_width

    @property
    def version(self) -> int:
        """The last version handed out: every change to the table takes the next one."""
        return int(self._scalars[rows.VERSION])

    @property
    def capacity(self) -> int:
        """Rows the arenas hold without growing."""
        return int(self._rows.shape[0])

    @property
    def num_buckets(self) -> int:
        return int(self._index.shape[0])

    def __len__(self) -> int:
        cold = 0 if self._cold is None else len(self._cold)
        return int(self._scalars[rows.LIVE]) + cold

    def load_factor(self) -> float:
        """Live rows over index slots (of the hot tier's index)."""
        with self._lock:
            return int(self._scalars[rows.LIVE]) / (self._index.shape[0] * cuckoo.SLOTS)

    def memory_bytes(self) -> int:
        """Bytes of every array the table holds in memory, allocated capacity included (the
        cold tier's files are not memory: see :meth:`tier_stats`)."""
        with self._lock:
            cold = 0 if self._cold is None else self._cold.memory_bytes()
            return sum(a.nbytes for a in self._arrays()) + cold

    def tier_stats(self) -> dict[str, int]:
        """Rows and bytes per tier. ``hot_bytes`` counts the hot tier's arrays (capacity
        included), ``cold_bytes`` the cold tier's files, ``cold_memory_bytes`` its index;
        ``hot_row_limit`` is the rows the budget allows (0: no tiers). The movement counters
        (``promoted``, ``demoted``, ``cold_hits``) are in :meth:`stats`."""
        with self._lock:
            cold = self._cold
            return {
                "hot_rows": int(self._scalars[rows.LIVE]),
                "cold_rows": 0 if cold is None else len(cold),
                "hot_bytes": sum(a.nbytes for a in self._arrays()),
                "cold_bytes": 0 if cold is None else cold.file_bytes(),
                "cold_memory_bytes": 0 if cold is None else cold.memory_bytes(),
                "hot_row_limit": self._hot_limit,
            }

    def stats(self) -> dict[str, int]:
        """Counters since creation: lookups, inserts, updates, rejections, removals."""
        with self._lock:
            return dict(self._stats)

    def keys(self) -> np.ndarray:
        """Live keys (``uint64``), in row order."""
        with self._lock:
            high = int(self._scalars[rows.HIGH])
            hot = self._row_keys[:high][self._meta[:high, rows.VERSION_COL] != 0]
            cold = self._cold
            if cold is None or len(cold) == 0:
                return hot
            cold.settle()
            high = cold.high
            keys = np.concatenate([hot, cold.keys[:high][cold.meta[:high, rows.VERSION_COL] != 0]])
            cold.release()
            return keys

    # ------------------------------------------------------------------ lookups

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``keys`` as float32 ``(n, dim)`` and a found mask; inserts nothing. Misses
        get the default vector (the initializer's vector for the key, or the learned row)."""
        keys = _check_keys(keys)
        n = keys.shape[0]
        out = np.empty((n, self.dim), dtype=np.float32)
        found = np.empty(n, dtype=np.bool_)
        rows_found = np.empty(n, dtype=np.int64)
        with self._lock:
            if self._storage is np.float32:
                hits = lookup.find_f32(
                    self._index, self._rows, keys, rows_found, out, found, *self._init_args()
                )
            else:
                hits = lookup.find_f16(
                    self._index, self._rows, _HALF_TO_F32, keys, rows_found, out, found,
                    *self._init_args(),
                )  # fmt: skip
            if hits < n and self._cold is not None and len(self._cold):
                hits += self._find_cold(keys, out, found)
            self._stats["lookups"] += n
            self._stats["lookup_misses"] += n - hits
        return out, found

    def find_or_insert(self, keys: np.ndarray, *, now: float | None = None) -> np.ndarray:
        """Rows of ``keys`` as float32 ``(n, dim)``, inserting new keys once admitted.

        Each occurrence of a key without a row counts one sighting (duplicates in ``keys``
        each count); a key gets its row at its ``admit_after``-th sighting, before that it
        gets the default vector. With ``max_rows``, the table then evicts down to it (LRU or
        LFU)."""
        self._require_trainable("find_or_insert")
        keys = _check_keys(keys)
        now = _micros(_check_now(now))
        out = np.empty((keys.shape[0], self.dim), dtype=np.float32)
        with self._lock:
            self._promote(keys, for_lookup=True)
            self._resolve(keys, now, count_sightings=True, out=out)
            self._stats["lookups"] += keys.shape[0]
            self._evict_over_limit()
            self._demote_over_budget()
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
        self._require_trainable("apply_gradients")
        keys = _check_keys(keys)
        now = _micros(_check_now(now))
        if not isinstance(grads, np.ndarray) or grads.dtype != np.float32:
            raise ShapeError(f"grads must be a float32 array, got {_describe(grads)}")
        if grads.shape != (keys.shape[0], self.dim):
            raise ShapeError(
                f"grads must have shape ({keys.shape[0]}, {self.dim}) for {keys.shape[0]} keys "
                f"of table {self.name!r} (dim {self.dim}), got {grads.shape}"
            )
        grads = np.ascontiguousarray(grads)
        bad = update.first_non_finite_row(grads.view(np.uint32))
        if bad >= 0:
            raise NonFiniteGradientError(
                f"grads of table {self.name!r}: row {bad} (key {int(keys[bad])}) is not finite"
            )
        unique, counts, first, next_same, n_unique = update.dedup(keys)
        unique = unique[:n_unique]
        counts = counts[:n_unique]
        first = first[:n_unique]
        with self._lock:
            self._promote(unique)
            found_rows = self._resolve(unique, now, count_sightings=False, touch_rows=False)
            updated, pending = update.apply_steps(
                self._rows,
                self._meta,
                self._scalars,
                found_rows,
                grads,
                first,
                next_same,
                counts,
                self._opt_kind,
                self._hp,
                float(self._config.lr_frequency_power),
                now,
                self._init_kind == LEARNED,
                self._default_row,
                self._default_state,
                self._lfu,
                np.empty((2, self.dim), dtype=np.float32),
            )
            self._stats["updates"] += updated
            self._evict_over_limit()
            self._demote_over_budget()
        return int(updated), int(pending)

    # ------------------------------------------------------------------ removal

    def delete(self, keys: np.ndarray) -> int:
        """Delete the present keys (each leaves a tombstone); returns how many were deleted."""
        keys = _check_keys(keys)
        with self._lock:
            self._promote(keys)
            deleted = self._run_removal(export.delete_keys, keys)
            self._stats["deleted"] += deleted
        return deleted

    def expire(self, now: float | None = None) -> int:
        """Drop rows not updated for ``ttl_seconds`` before ``now`` (default: the current
        time); returns how many. A table without a TTL expires nothing."""
        now = _check_now(now)
        ttl = self._config.ttl_seconds
        if ttl is None:
            return 0
        cutoff = _micros(now - ttl)
        with self._lock:
            expired = self._run_removal(export.expire_rows, cutoff)
            if self._cold is not None and len(self._cold):
                cold = self._cold
                cold.settle()
                expired += self._run_cold_removal(export.expire_rows, cutoff)
                cold.release()
            self._stats["expired"] += expired
        return expired

    # ------------------------------------------------------------------ deltas

    def export_since(self, version: int, *, with_state: bool = False) -> Delta:
        """Rows with ``version > since`` and the tombstones after it (see :class:`Delta`).

        When ``version`` is older than the tombstone log reaches, or newer than the table,
        the delta is ``full``: every live row, no tombstones."""
        if isinstance(version, bool) or not isinstance(version, int | np.integer) or version < 0:
            raise ValueError(f"version must be a non-negative integer, got {version!r}")
        version = int(version)
        with self._lock:
            current = self.version
            full = version < int(self._scalars[rows.LOG_FLOOR]) or version > current
            since = 0 if full else version
            high = int(self._scalars[rows.HIGH])
            picked = export.rows_since(self._meta, high, since)
            row_keys = self._row_keys[picked]
            meta = self._meta[picked]
            values = self._rows[picked, : self.dim]
            state = self._rows[picked, self.dim :] if with_state and self._trainable else None
            cold = self._cold
            if cold is not None and len(cold):
                cold.settle()
                cold_picked = export.rows_since(cold.meta, cold.high, since)
                row_keys = np.concatenate([row_keys, cold.keys[cold_picked]])
                meta = np.concatenate([meta, cold.meta[cold_picked]])
                values = np.concatenate([values, cold.arena[cold_picked, : self.dim]])
                if state is not None:
                    state = np.concatenate([state, cold.arena[cold_picked, self.dim :]])
                cold.release()
            if self._storage is np.uint16:
                values = values.view(np.float16)
            if full:
                t_keys = np.zeros(0, dtype=np.uint64)
                t_versions = np.zeros(0, dtype=np.int64)
            else:
                t_keys, t_versions = export.tombstones_since(
                    self._scalars, self._log_keys, self._log_versions, since
                )
            delta = Delta(
                keys=row_keys,
                values=values,
                versions=meta[:, rows.VERSION_COL].astype(np.uint64),
                tombstone_keys=t_keys,
                tombstone_versions=t_versions.astype(np.uint64),
                complete_version=current,
                full=full,
                since_version=since,
            )
            if with_state:
                if state is not None:
                    # a row gets its optimizer state at its first push: before, report the
                    # state it will start from
                    fresh = meta[:, rows.PUSHES_COL] == 0
                    initial = np.empty((int(fresh.sum()), self._state_width), dtype=np.float32)
                    init_state_rows(self._opt_kind, self._hp, initial)
                    state[fresh] = initial
                else:
                    state = np.zeros((len(row_keys), 0), dtype=np.float32)
                delta.opt_state = state
                delta.push_counts = meta[:, rows.PUSHES_COL].astype(np.uint32)
                delta.last_update = meta[:, rows.UPDATED_COL] / 1e6
                delta.usage = meta[:, rows.USAGE_COL].copy()
            default_version = int(self._scalars[rows.DEFAULT_VERSION])
            if self._init_kind == LEARNED and default_version > since:
                delta.default_value = self._default_row[0].copy()
                delta.default_version = default_version
        return delta

    def check_delta(self, delta: Delta) -> None:
        """Raise :class:`DeltaError` where :meth:`apply_delta` would refuse ``delta``, so a
        caller applying several deltas can check them all before changing anything."""
        self._check_delta(delta)

    def apply_delta(self, delta: Delta) -> tuple[int, int, int]:
        """Upsert the delta's rows whose version is newer than the held one, keeping their
        versions, then apply its tombstones to rows held at an older or equal version.

        Idempotent and order-safe per key; values are cast to this table's dtype; state
        fields, when present, restore optimizer state, push counts and update times on a
        training table. Never evicts or expires. Returns ``(rows_applied, rows_skipped,
        tombstones_applied)``."""
        checked = self._check_delta(delta)
        keys, values, versions, t_keys, t_versions, state, pushes, last_update, usage = checked
        has_state = state is not None
        if not has_state:
            state = np.zeros((0, self._state_width), dtype=np.float32)
            pushes = np.zeros(0, dtype=np.int64)
            last_update = np.zeros(0, dtype=np.int64)
        now = _micros(time.time())
        n = keys.shape[0]
        with self._lock:
            applied = skipped = 0
            # with tiers, in chunks: the hot tier never holds more than a chunk over budget
            step = n if self._cold is None else max(256, self._hot_limit // 8)
            for lo in range(0, n, max(step, 1)):
                part = slice(lo, lo + step)
                chunk = keys[part]
                self._promote(chunk)
                start = 0
                while True:
                    status, start, a, s = update.upsert_rows(
                        self._index, self._max_live, self._walk, self._scalars, self._row_keys,
                        self._meta, self._rows, chunk, values[part], versions[part], has_state,
                        state[part] if has_state else state,
                        pushes[part] if has_state else pushes,
                        last_update[part] if has_state else last_update,
                        usage[part] if usage.shape[0] else usage, start, now, self._lfu,
                    )  # fmt: skip
                    applied += a
                    skipped += s
                    if status == rows.DONE:
                        break
                    self._grow(status)
                self._demote_over_budget()
            self._promote(t_keys)
            deleted = self._run_removal(export.apply_tombstones, t_keys, t_versions)
            if delta.default_value is not None and delta.default_version > int(
                self._scalars[rows.DEFAULT_VERSION]
            ):
                self._default_row[0] = delta.default_value
                self._scalars[rows.DEFAULT_VERSION] = delta.default_version
                self._scalars[rows.VERSION] = max(self.version, delta.default_version)
            self._stats["delta_rows_applied"] += applied
            self._stats["delta_rows_skipped"] += skipped
            self._stats["delta_tombstones_applied"] += deleted
            self._demote_over_budget()
        return int(applied), int(skipped), int(deleted)

    # ------------------------------------------------------------------ metadata

    def export_meta(self) -> dict[str, np.ndarray | int]:
        """Everything that is not a row: version and access clocks, admission sketch,
        learned default row and its state, tombstone log. Inverse of :meth:`import_meta`."""
        with self._lock:
            t_keys, t_versions = export.tombstones_since(
                self._scalars, self._log_keys, self._log_versions, -1
            )
            s = self._scalars
            return {
                "version": int(s[rows.VERSION]),
                "tick": int(s[rows.TICK]),
                "log_floor": int(s[rows.LOG_FLOOR]),
                "default_version": int(s[rows.DEFAULT_VERSION]),
                "default_pushes": int(s[rows.DEFAULT_PUSHES]),
                "rng": int(self._walk[0]),
                "sketch": self._sketch.copy(),
                # one-dimensional: (dim,) and (state_width,) when learned, else empty
                "default_row": self._default_row.reshape(-1).copy(),
                "default_state": self._default_state.reshape(-1).copy(),
                "tombstone_keys": t_keys,
                "tombstone_versions": t_versions.astype(np.uint64),
            }

    def import_meta(self, meta: dict[str, Any]) -> None:
        """Restore what :meth:`export_meta` returned (rows come back through
        :meth:`apply_delta`). The version counter never moves backwards."""
        if not isinstance(meta, dict):
            raise DeltaError(f"meta must be a dict, got {type(meta).__name__}")
        missing = [k for k in _META_INTS + _META_ARRAYS if k not in meta]
        if missing:
            raise DeltaError(f"meta of table {self.name!r} lacks {', '.join(missing)}")
        ints = {}
        for k in _META_INTS:
            v = meta[k]
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
                raise DeltaError(f"meta[{k!r}] must be a non-negative integer, got {v!r}")
            limit = 2**64 - 1 if k == "rng" else _MAX_VERSION
            if v > limit:
                raise DeltaError(f"meta[{k!r}] is out of range: {v}")
            ints[k] = int(v)
        expect = {
            "sketch": (self._sketch.shape, np.uint16),
            "default_row": ((self._default_row.size,), np.float32),
            "default_state": ((self._default_state.size,), np.float32),
        }
        for k, (shape, dt) in expect.items():
            a = meta[k]
            if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != dt:
                raise DeltaError(
                    f"meta[{k!r}] must be a {np.dtype(dt)} array of shape {shape}, got "
                    f"{_describe(a)}"
                )
        t_keys = _check_keys(meta["tombstone_keys"], "meta['tombstone_keys']")
        t_versions = _check_versions(meta["tombstone_versions"], t_keys.shape[0], "tombstone")
        with self._lock:
            s = self._scalars
            s[rows.VERSION] = max(int(s[rows.VERSION]), ints["version"])
            s[rows.TICK] = max(int(s[rows.TICK]), ints["tick"])
            s[rows.DEFAULT_VERSION] = ints["default_version"]
            s[rows.DEFAULT_PUSHES] = ints["default_pushes"]
            self._walk[0] = np.uint64(ints["rng"] or 1)
            self._sketch[...] = meta["sketch"]
            self._default_row.reshape(-1)[:] = meta["default_row"]
            self._default_state.reshape(-1)[:] = meta["default_state"]
            limit = self._log_limit()
            floor = ints["log_floor"]
            if t_keys.shape[0] > limit:
                floor = max(floor, int(t_versions[-limit - 1]))
                t_keys, t_versions = t_keys[-limit:], t_versions[-limit:]
            n = t_keys.shape[0]
            cap = min(limit, max(_MIN_LOG, n))
            self._log_keys = np.zeros(cap, dtype=np.uint64)
            self._log_versions = np.zeros(cap, dtype=np.int64)
            self._log_keys[:n] = t_keys
            self._log_versions[:n] = t_versions
            s[rows.LOG_START] = 0
            s[rows.LOG_COUNT] = n
            s[rows.LOG_FLOOR] = floor

    # ------------------------------------------------------------------ internals

    def _arrays(self) -> list[np.ndarray]:
        return [
            self._rows, self._row_keys, self._meta, self._index,
            self._sketch, self._log_keys,
            self._log_versions, self._default_row, self._default_state, self._scalars,
        ]  # fmt: skip

    def _init_args(self) -> tuple[Any, ...]:
        return self._init_kind, self._init_params, self._seed, self._default_row

    def _require_trainable(self, what: str) -> None:
        if not self._trainable:
            raise NotTrainableError(
                f"table {self.name!r} is a serving table: {what} needs a training table"
            )

    def _log_limit(self) -> int:
        return self._config.tombstone_log_size

    @staticmethod
    def _max_live_for(num_buckets: int) -> int:
        return max(1, int(MAX_LOAD_FACTOR * num_buckets * cuckoo.SLOTS))

    def _resolve(
        self,
        keys: np.ndarray,
        now: int,
        *,
        count_sightings: bool,
        touch_rows: bool = True,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Row of each key (-1: not admitted), inserting admitted new keys; with
        ``count_sightings``, each occurrence of a key without a row counts toward admission.
        With ``out``, also each key's vector."""
        if out is None:
            out = np.empty((0, self.dim), dtype=np.float32)
        found_rows = np.empty(keys.shape[0], dtype=np.int64)
        start = 0
        first_admitted = False
        inserted = rejected = 0
        while True:
            status, start, ins, rej = lookup.resolve_rows(
                self._index, self._max_live, self._walk, self._scalars, self._row_keys,
                self._meta, self._rows, keys, count_sightings, start, first_admitted,
                found_rows,
                self._sketch, self._config.admit_after, self._lfu, touch_rows, self._init_kind,
                self._init_params, self._seed, self._default_row, now, out,
            )  # fmt: skip
            inserted += ins
            rejected += rej
            if status == rows.DONE:
                break
            first_admitted = status == rows.NEED_INDEX_ADMITTED
            self._grow(status)
        self._stats["inserts"] += inserted
        self._stats["admission_rejected"] += rejected
        return found_rows

    def _grow(self, status: int) -> None:
        if status in (rows.NEED_INDEX, rows.NEED_INDEX_ADMITTED):
            self._grow_index()
        elif status == rows.NEED_ROWS:
            self._grow_rows()
        elif status == rows.NEED_LOG:
            self._grow_log()
        else:  # pragma: no cover - kernels return only the codes above
            raise AssertionError(f"unknown kernel status {status}")

    def _grow_index(self) -> None:
        index = cuckoo.new_index(self._index.shape[0] * 2)
        cuckoo.rehash_doubled(self._index, index)
        self._index = index
        self._max_live = self._max_live_for(index.shape[0])

    def _grow_rows(self) -> None:
        cap = self._rows.shape[0]
        new = max(cap + 1, int(cap * ARENA_GROWTH))
        self._rows, self._row_keys, self._meta = (a.grow(new) for a in self._arenas)

    def _grow_log(self) -> None:
        cap = self._log_keys.shape[0]
        new = min(self._log_limit(), max(_MIN_LOG, 2 * cap))
        start = int(self._scalars[rows.LOG_START])
        count = int(self._scalars[rows.LOG_COUNT])
        order = (start + np.arange(count)) % max(cap, 1)
        keys = np.zeros(new, dtype=np.uint64)
        versions = np.zeros(new, dtype=np.int64)
        keys[:count] = self._log_keys[order]
        versions[:count] = self._log_versions[order]
        self._log_keys, self._log_versions = keys, versions
        self._scalars[rows.LOG_START] = 0

    def _run_removal(self, kernel: Any, *args: Any) -> int:
        """Run a resumable removal kernel over the hot tier, ``kernel(index, scalars,
        row_keys, meta, log_keys, log_versions, log_limit, *args, start)``, growing the
        tombstone log on demand; returns the rows it removed."""
        removed = 0
        start = 0
        while True:
            status, start, n = kernel(
                self._index,
                self._scalars,
                self._row_keys,
                self._meta,
                self._log_keys,
                self._log_versions,
                self._log_limit(),
                *args,
                start,
            )
            removed += int(n)
            if status == rows.DONE:
                return removed
            self._grow(status)

    def _evict_over_limit(self) -> None:
        max_rows = self._config.max_rows
        if max_rows is None or len(self) <= max_rows:
            return
        excess = len(self) - max_rows
        high = int(self._scalars[rows.HIGH])
        usage = _usage_ranks(self._meta, high)
        cold = self._cold
        if cold is not None and len(cold):
            cold.settle()
            usage = np.concatenate([usage, _usage_ranks(cold.meta, cold.high)])
        total = usage.shape[0]
        victims = (
            np.argpartition(usage, excess - 1)[:excess] if excess < total else np.arange(total)
        )
        victims = victims[np.argsort(usage[victims], kind="stable")]
        if total > high:
            cold_victims = victims[victims >= high] - high
            victims = victims[victims < high]
            self._stats["evicted"] += self._run_cold_removal(export.evict_rows, cold_victims)
            cold.release()
        evicted = self._run_removal(export.evict_rows, victims)
        self._stats["evicted"] += evicted

    # ------------------------------------------------------------------ tiers

    def _hot_row_bytes(self) -> int:
        return (self.dim + self._state_width) * np.dtype(self._storage).itemsize + _ROW_OVERHEAD

    def _find_cold(self, keys: np.ndarray, out: np.ndarray, found: np.ndarray) -> int:
        """Fill the hot misses of :meth:`find` from the cold tier, in place (read-only: the
        rows stay cold); returns the cold hits."""
        cold = self._cold
        missed = np.flatnonzero(~found)
        cold_rows = np.empty(missed.shape[0], dtype=np.int64)
        cuckoo.locate(cold.index, keys[missed], cold_rows)
        hit = cold_rows >= 0
        at = missed[hit]
        cold_rows = cold_rows[hit]
        k = at.shape[0]
        step = cold.chunk_rows(self._release_bytes)
        for lo in range(0, k, step):
            part = slice(lo, lo + step)
            sub = np.empty((cold_rows[part].shape[0], self.dim), dtype=np.float32)
            if self._storage is np.float32:
                lookup.gather_rows(
                    cold.arena, cold_rows[part], keys[at[part]], sub, *self._init_args()
                )
            else:
                lookup.gather_rows_f16(
                    cold.arena, _HALF_TO_F32, cold_rows[part], keys[at[part]], sub,
                    *self._init_args(),
                )  # fmt: skip
            out[at[part]] = sub
            cold.note_touched(sub.shape[0], self._release_bytes)
        found[at] = True
        self._stats["cold_hits"] += k
        return k

    def _promote(self, keys: np.ndarray, *, for_lookup: bool = False) -> None:
        """Bring the cold rows among ``keys`` into the hot tier."""
        cold = self._cold
        if cold is None or len(cold) == 0 or keys.shape[0] == 0:
            return
        cold_rows = np.empty(keys.shape[0], dtype=np.int64)
        cuckoo.locate(cold.index, keys, cold_rows)
        hits = np.flatnonzero(cold_rows >= 0)
        promoted = 0
        step = cold.chunk_rows(self._release_bytes)
        for lo in range(0, hits.shape[0], step):
            part = hits[lo : lo + step]
            chunk_keys = keys[part]
            chunk_rows = cold_rows[part]
            start = 0
            while True:
                status, start, n = tiers.promote_rows(
                    self._index, self._max_live, self._walk, self._scalars, self._row_keys,
                    self._meta, self._rows, cold.index, cold.scalars, cold.keys, cold.meta,
                    cold.arena, cold.freed, cold.freed_count, chunk_keys, chunk_rows, start,
                )  # fmt: skip
                promoted += n
                if status == rows.DONE:
                    break
                self._grow(status)
            cold.note_touched(part.shape[0], self._release_bytes)
        self._stats["promoted"] += promoted
        if for_lookup:
            self._stats["cold_hits"] += promoted

    def _demote_over_budget(self) -> None:
        """Past the hot row limit, move the least recently used hot rows (lowest usage rank)
        to the cold tier, down to 7/8 of the limit so demotion runs once per many batches."""
        cold = self._cold
        live = int(self._scalars[rows.LIVE])
        if cold is None or live <= self._hot_limit:
            return
        excess = live - (self._hot_limit - self._hot_limit // 8)
        high = int(self._scalars[rows.HIGH])
        usage = _usage_ranks(self._meta, high)
        victims = np.argpartition(usage, excess - 1)[:excess] if excess < high else np.arange(high)
        demoted = 0
        step = cold.chunk_rows(self._release_bytes)
        for lo in range(0, victims.shape[0], step):
            part = victims[lo : lo + step]
            start = 0
            while True:
                status, start, n = tiers.demote_rows(
                    self._index, self._scalars, self._row_keys, self._meta, self._rows,
                    cold.index, cold.max_live, self._walk, cold.scalars, cold.keys, cold.meta,
                    cold.arena, cold.freed, cold.freed_count, part, start,
                )  # fmt: skip
                demoted += n
                if status == rows.DONE:
                    break
                cold.grow(status)
            cold.note_touched(part.shape[0], self._release_bytes)
        self._stats["demoted"] += demoted

    def _run_cold_removal(self, kernel: Any, *args: Any) -> int:
        """:meth:`_run_removal` over the cold tier: the cold scalars take the table's
        version, clock and tombstone-log fields for each call."""
        cold = self._cold
        removed = 0
        start = 0
        while True:
            cold.scalars[SHARED_SCALARS] = self._scalars[SHARED_SCALARS]
            status, start, n = kernel(
                cold.index,
                cold.scalars,
                cold.keys,
                cold.meta,
                self._log_keys,
                self._log_versions,
                self._log_limit(),
                *args,
                start,
            )
            self._scalars[SHARED_SCALARS] = cold.scalars[SHARED_SCALARS]
            removed += int(n)
            if status == rows.DONE:
                return removed
            self._grow(status)

    def _check_delta(self, delta: Any) -> tuple[Any, ...]:
        if not isinstance(delta, Delta):
            raise DeltaError(f"expected a Delta, got {type(delta).__name__}")
        keys = _check_keys(delta.keys, "delta.keys")
        n = keys.shape[0]
        values = _check_delta_array(
            delta, "values", (n, self.dim), "f", "a float array", f" for table {self.name!r}"
        )
        if not np.isfinite(values).all():
            raise DeltaError("delta.values contains NaN or Inf")
        values = np.ascontiguousarray(values, dtype=self._dtype)
        if self._storage is np.uint16:
            values = values.view(np.uint16)
        versions = _check_versions(delta.versions, n, "row")
        t_keys = _check_keys(delta.tombstone_keys, "delta.tombstone_keys")
        t_versions = _check_versions(delta.tombstone_versions, t_keys.shape[0], "tombstone")
        state = pushes = last_update = None
        if delta.opt_state is not None and self._trainable:
            state = _check_delta_array(
                delta,
                "opt_state",
                (n, self._state_width),
                np.float32,
                "a float32 array",
                f" for optimizer {self._config.optimizer!r}",
            )
            pushes = _check_delta_array(delta, "push_counts", (n,), "u", "an unsigned array")
            last_update = _check_delta_array(delta, "last_update", (n,), "f", "a float array")
            if not np.isfinite(last_update).all():
                raise DeltaError("delta.last_update contains NaN or Inf")
            state = np.ascontiguousarray(state)
            pushes = np.minimum(pushes, 0xFFFFFFFF).astype(np.int64)
            last_update = np.round(last_update * 1e6).astype(np.int64)
        if delta.default_value is not None:
            if self._init_kind != LEARNED:
                raise DeltaError(
                    f"delta carries a learned default row, but table {self.name!r} uses the "
                    f"{self._config.initializer!r} initializer"
                )
            _check_delta_array(delta, "default_value", (self.dim,), "f", "a float array")
            dver = delta.default_version
            if (
                isinstance(dver, bool)
                or not isinstance(dver, int | np.integer)
                or not (0 < dver <= _MAX_VERSION)
            ):
                raise DeltaError(f"delta.default_version must be a positive integer, got {dver!r}")
        usage = _NO_COUNTS
        if delta.usage is not None:
            usage = _check_delta_array(delta, "usage", (n,), np.int64, "an int64 array")
            if n and usage.min() < 0:
                raise DeltaError("delta.usage must not be negative")
            usage = np.ascontiguousarray(usage)
        return keys, values, versions, t_keys, t_versions, state, pushes, last_update, usage


def _usage_ranks(meta: np.ndarray, high: int) -> np.ndarray:
    """Usage rank of rows below ``high``; free rows rank last."""
    return np.where(meta[:high, rows.VERSION_COL] != 0, meta[:high, rows.USAGE_COL], _I64_MAX)


def _check_delta_array(
    delta: Delta,
    field: str,
    shape: tuple[int, ...],
    dtype: str | type,
    description: str,
    context: str = "",
) -> np.ndarray:
    """``delta.<field>`` if it is an array of ``shape`` and of ``dtype`` (a dtype, or a
    dtype kind such as ``"f"``), else a DeltaError naming the field and what it got."""
    a = getattr(delta, field)
    if isinstance(a, np.ndarray) and a.shape == shape and _dtype_matches(a.dtype, dtype):
        return a
    raise DeltaError(
        f"delta.{field} must be {description} of shape {shape}{context}, got {_describe(a)}"
    )


def _dtype_matches(actual: np.dtype, wanted: str | type) -> bool:
    return actual.kind == wanted if isinstance(wanted, str) else actual == wanted


def _check_versions(versions: Any, n: int, what: str) -> np.ndarray:
    if (
        not isinstance(versions, np.ndarray)
        or versions.dtype != np.uint64
        or versions.shape != (n,)
    ):
        raise DeltaError(
            f"{what} versions must be a uint64 array of shape ({n},), got {_describe(versions)}"
        )
    if n and (versions.min() == 0 or versions.max() > _MAX_VERSION):
        raise DeltaError(f"{what} versions must be in [1, 2**63 - 1]")
    return versions.astype(np.int64)
