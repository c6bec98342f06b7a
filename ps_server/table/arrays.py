"""Every array one table owns in memory, the kernel arguments derived from its config, and
how the arrays grow when a kernel asks.

Memory layout: a cuckoo index of 64-byte buckets maps keys to rows; rows live in three
contiguous arenas: values followed by optimizer state (written at a row's first push), the
key, and a 32-byte metadata line (version, last-update time, push count, usage). The index
doubles when its load passes 0.9; the arenas grow by an eighth, in place (see ``arena``), so
memory stays within a few tens of percent of the raw payload at any size. Freed rows go on
a free list and are reused before the arenas grow. The tombstone log is a ring that grows
up to the config's ``tombstone_log_size``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from monolith_ps.optimizer_specs import INITIALIZERS, LEARNED, OPTIMIZERS
from monolith_ps.table_config import TableConfig
from ps_server.optim.optimizers import init_state_rows
from ps_server.table import admission, cuckoo, rows
from ps_server.table.arena import RowArena

__all__ = ["ARENA_GROWTH", "MAX_LOAD_FACTOR", "STAT_NAMES", "TableArrays", "usage_ranks"]

MAX_LOAD_FACTOR = 0.9
ARENA_GROWTH = 1.125
MIN_LOG = 64
_I64_MAX = np.iinfo(np.int64).max

STAT_NAMES = (
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
    "cold_tier_full",
)


class TableArrays:
    """The hot tier's index and arenas, the table's scalars (version, clocks, tombstone-log
    ring), its tombstone log, admission sketch, learned default row and counters."""

    def __init__(self, config: TableConfig, trainable: bool, dtype: np.dtype) -> None:
        self.config = config
        self.dim = config.dim
        self.trainable = trainable
        self.dtype = dtype
        opt = OPTIMIZERS[config.optimizer]
        self.opt_kind = opt.kind
        self.hp = opt.hyper_parameters(config.optimizer_args)
        init = INITIALIZERS[config.initializer]
        self.init_kind = init.kind
        self.init_params = init.parameters(config.initializer_args)
        self.learned = self.init_kind == LEARNED
        self.seed = np.uint64(config.seed)
        self.lfu = config.eviction == "lfu"
        dim = config.dim
        self.state_width = opt.state_width(dim) if trainable else 0
        self.storage = np.float32 if dtype == np.float32 else np.uint16
        # one arena row = the values (dim) then the optimizer state (state_width): a step
        # touches one contiguous stretch of memory
        self.arenas = (
            RowArena((dim + self.state_width,), self.storage),
            RowArena((), np.uint64),
            RowArena((rows.META_COLUMNS,), np.int64),
        )
        self.rows, self.row_keys, self.meta = (a.array for a in self.arenas)
        self.index = cuckoo.new_index(1)
        self.index_arena = cuckoo.new_index_arena()
        self.max_live = max_live_for(1)
        self.scalars = rows.new_scalars()
        self.walk = cuckoo.new_walk(0x9E3779B97F4A7C15 ^ config.seed)
        # the sketch counts sightings for admission and for LFU's newcomers (``frequency``)
        self.auto_sketch = config.sketch_width is None
        uses_sketch = config.admit_after > 1 or self.lfu
        width = (config.sketch_width or admission.AUTO_MIN_WIDTH) if uses_sketch else 1
        self.sketch = admission.new_sketch(width)
        self.aging_period = 10 * config.max_rows if self.lfu and config.max_rows else 0
        self.next_aging = self.aging_period
        self.log_keys = np.zeros(0, dtype=np.uint64)
        self.log_versions = np.zeros(0, dtype=np.int64)
        # the learned default row and its optimizer state: one row, only for "learned"
        learned = int(self.learned)
        self.default_row = np.zeros((learned, dim), dtype=np.float32)
        self.default_state = np.zeros((learned, opt.state_width(dim)), dtype=np.float32)
        init_state_rows(self.opt_kind, self.hp, self.default_state)
        self.stats = dict.fromkeys(STAT_NAMES, 0)

    @property
    def version(self) -> int:
        return int(self.scalars[rows.VERSION])

    @property
    def live(self) -> int:
        return int(self.scalars[rows.LIVE])

    @property
    def high(self) -> int:
        return int(self.scalars[rows.HIGH])

    @property
    def log_limit(self) -> int:
        return self.config.tombstone_log_size

    def init_args(self) -> tuple[Any, ...]:
        """The initializer arguments of the lookup kernels."""
        return self.init_kind, self.init_params, self.seed, self.default_row

    def all_arrays(self) -> list[np.ndarray]:
        return [
            self.rows, self.row_keys, self.meta, self.index,
            self.sketch, self.log_keys,
            self.log_versions, self.default_row, self.default_state, self.scalars,
        ]  # fmt: skip

    def grow(self, status: int) -> None:
        """Make the room a kernel asked for with ``status``."""
        if status in (rows.NEED_INDEX, rows.NEED_INDEX_ADMITTED):
            self._grow_index()
        elif status == rows.NEED_ROWS:
            self._grow_rows()
        elif status == rows.NEED_LOG:
            self._grow_log()
        else:  # pragma: no cover - kernels return only the codes above
            raise AssertionError(f"unknown kernel status {status}")

    def run_removal(self, kernel: Any, *args: Any) -> int:
        """Run a resumable removal kernel over the hot tier, ``kernel(index, scalars,
        row_keys, meta, log_keys, log_versions, log_limit, *args, start)``, growing the
        tombstone log on demand; returns the rows it removed."""
        removed = 0
        start = 0
        while True:
            status, start, n = kernel(
                self.index,
                self.scalars,
                self.row_keys,
                self.meta,
                self.log_keys,
                self.log_versions,
                self.log_limit,
                *args,
                start,
            )
            removed += int(n)
            if status == rows.DONE:
                return removed
            self.grow(status)

    def shrink_rows(self, capacity: int) -> None:
        """Drop the arena rows from ``capacity`` on (none of them live)."""
        self.rows, self.row_keys, self.meta = (a.shrink(capacity) for a in self.arenas)

    def _grow_index(self) -> None:
        self.index = cuckoo.doubled(self.index, self.index_arena)
        self.max_live = max_live_for(self.index.shape[0])

    def _grow_rows(self) -> None:
        cap = self.rows.shape[0]
        new = max(cap + 1, int(cap * ARENA_GROWTH))
        self.rows, self.row_keys, self.meta = (a.grow(new) for a in self.arenas)

    def _grow_log(self) -> None:
        cap = self.log_keys.shape[0]
        new = min(self.log_limit, max(MIN_LOG, 2 * cap))
        start = int(self.scalars[rows.LOG_START])
        count = int(self.scalars[rows.LOG_COUNT])
        order = (start + np.arange(count)) % max(cap, 1)
        keys = np.zeros(new, dtype=np.uint64)
        versions = np.zeros(new, dtype=np.int64)
        keys[:count] = self.log_keys[order]
        versions[:count] = self.log_versions[order]
        self.log_keys, self.log_versions = keys, versions
        self.scalars[rows.LOG_START] = 0


def max_live_for(num_buckets: int) -> int:
    """Live rows an index of ``num_buckets`` takes before it doubles."""
    return max(1, int(MAX_LOAD_FACTOR * num_buckets * cuckoo.SLOTS))


def usage_ranks(meta: np.ndarray, high: int) -> np.ndarray:
    """Usage rank of rows below ``high``; free rows rank last."""
    return np.where(meta[:high, rows.VERSION_COL] != 0, meta[:high, rows.USAGE_COL], _I64_MAX)
