"""Hot and cold tiers: with a memory budget, the least recently used rows move to a
disk-backed cold tier (``cold``) and come back when a lookup, push or delta touches them.

Reads of cold rows (``find``) leave them cold; everything that changes a row promotes it
first, so the kernels that change rows only ever see the hot tier. Rows move in batches:
a promotion is a copy from the cold file's mapping, a demotion pass one ``pwrite`` a
segment.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ps_server.table import cuckoo, rows, tiers
from ps_server.table.arrays import ARENA_GROWTH, TableArrays, usage_ranks
from ps_server.table.cold import SHARED_SCALARS, ColdTier
from ps_server.table.cold_io import ColdTierFullError

__all__ = ["HALF_TO_F32", "Tiering"]

HALF_TO_F32 = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
# hot bytes a row costs beyond its arena row: key, metadata line, and its share of the
# index (64-byte buckets of 4 slots, filled between 45% and 90%)
_ROW_OVERHEAD = 8 + 8 * rows.META_COLUMNS + 36


def hot_row_bytes(dim: int, state_width: int, storage: np.dtype | type) -> int:
    """Memory one hot row costs, as a memory budget counts it: its arena row, key,
    metadata line and share of the index."""
    return (dim + state_width) * np.dtype(storage).itemsize + _ROW_OVERHEAD


class Tiering:
    """The cold tier of one table and the hot row limit its memory budget allows."""

    def __init__(self, t: TableArrays, cold_dir: str, budget: int) -> None:
        self._t = t
        self.cold = ColdTier(cold_dir, t.dim + t.state_width, t.storage)
        self.hot_limit = max(1, budget // hot_row_bytes(t.dim, t.state_width, t.storage))
        # the highest usage rank among the rows the last demotion moved out (LRU: their
        # last use; LFU: their count, then last use); a lookup only lends the hot tier a
        # cold row ranked below it (see ``promote``)
        self.horizon = 0
        self._lent: tuple[np.ndarray, np.ndarray, int] | None = None

    def __len__(self) -> int:
        return len(self.cold)

    def find(self, keys: np.ndarray, out: np.ndarray, found: np.ndarray, count: bool = True) -> int:
        """Fill the hot misses of a find from the cold tier, in place (read-only: the rows
        stay cold); returns the cold hits (counted in the stats with ``count``)."""
        t, cold = self._t, self.cold
        missed = np.flatnonzero(~found)
        cold_rows = np.empty(missed.shape[0], dtype=np.int64)
        cuckoo.locate(cold.index, keys[missed], cold_rows)
        hit = cold_rows >= 0
        at = missed[hit]
        values = cold.rows[cold_rows[hit], : t.dim]
        out[at] = values if t.storage is np.float32 else HALF_TO_F32[values]
        found[at] = True
        if count:
            t.stats["cold_hits"] += at.shape[0]
        return at.shape[0]

    def promote(self, keys: np.ndarray, *, for_lookup: bool = False) -> None:
        """Bring the cold rows among ``keys`` into the hot tier.

        A lookup only lends the hot tier the rows ranked below the horizon, the rank of the
        last rows demoted: the next :meth:`demote_over_budget` of the same call moves them
        back to their cold rows without writing, so a key seen once in a long while does
        not push a hot row out. On an LRU table a row last used before the horizon is lent,
        and stays once seen again before the horizon passes its last use; on an LFU table
        a row counted less often than the rows last demoted is lent, and stays once its
        count beats theirs."""
        t, cold = self._t, self.cold
        self._lent = None
        if len(cold) == 0 or keys.shape[0] == 0:
            return
        cold_rows = np.empty(keys.shape[0], dtype=np.int64)
        cuckoo.locate(cold.index, keys, cold_rows)
        hit = cold_rows >= 0
        keys, cold_rows = keys[hit], cold_rows[hit]
        lent_keys = np.empty(keys.shape[0] if for_lookup else 0, dtype=np.uint64)
        lent = np.empty((lent_keys.shape[0], 3), dtype=np.int64)
        lent_count = np.zeros(1, dtype=np.int64)
        horizon = self.horizon if for_lookup else -1
        promoted = 0
        start = 0
        while True:
            status, start, n = tiers.promote_rows(
                t.index, t.max_live, t.walk, t.scalars, t.row_keys, t.meta, t.rows,
                cold.index, cold.scalars, cold.keys, cold.meta, cold.segment_live,
                cold.segment_rows, cold.rows, keys, cold_rows, horizon,
                lent_keys, lent, lent_count, start,
            )  # fmt: skip
            promoted += n
            if status == rows.DONE:
                break
            t.grow(status)
        t.stats["promoted"] += promoted
        if for_lookup:
            t.stats["cold_hits"] += promoted
        if lent_count[0]:
            self._lent = (lent_keys, lent, int(lent_count[0]))

    def demote_over_budget(self) -> None:
        """Past the hot row limit, move the least recently used hot rows (lowest usage rank)
        to the cold tier, down to 7/8 of the limit so demotion runs once per many batches."""
        t, cold = self._t, self.cold
        self._return_lent()
        live = t.live
        if live <= self.hot_limit:
            return
        excess = live - (self.hot_limit - self.hot_limit // 8)
        high = t.high
        usage = usage_ranks(t.meta, high)
        victims = np.argpartition(usage, excess - 1)[:excess] if excess < high else np.arange(high)
        demoted_rank = int(t.meta[victims, rows.USAGE_COL].max())
        # LFU counts halve with age: the horizon is the last demotion's, not the highest
        self.horizon = demoted_rank if t.lfu else max(self.horizon, demoted_rank)
        demoted = 0
        start = 0
        try:
            while True:
                status, start, n = tiers.demote_rows(
                    t.index, t.scalars, t.row_keys, t.meta, t.rows,
                    cold.index, cold.max_live, t.walk, cold.scalars, cold.keys, cold.meta,
                    cold.segment_live, cold.cursor, cold.buffer, victims, start,
                )  # fmt: skip
                demoted += n
                if status == rows.DONE:
                    break
                if status == tiers.NEED_SEGMENT:
                    cold.next_head()
                else:
                    cold.grow_index()
        except ColdTierFullError:
            # The rows not demoted yet stay hot, over the budget, and the call that got
            # here succeeds: the next demotion tries again.
            t.stats["cold_tier_full"] += 1
        finally:
            cold.flush()
        t.stats["demoted"] += demoted
        self._shrink_hot()

    def halve_horizon(self) -> None:
        """LFU aging halved every count: halve the horizon's count the same way."""
        count = ((self.horizon >> rows.TICK_BITS) + 1) >> 1
        self.horizon = (count << rows.TICK_BITS) | (self.horizon & ((1 << rows.TICK_BITS) - 1))

    def _return_lent(self) -> None:
        """Move the rows the last lookup lent the hot tier back to their cold rows."""
        if self._lent is None:
            return
        t, cold = self._t, self.cold
        lent_keys, lent, count = self._lent
        self._lent = None
        returned = 0
        start = 0
        while True:
            status, start, n = tiers.return_rows(
                t.index, t.scalars, t.row_keys, t.meta, cold.index, cold.max_live, t.walk,
                cold.scalars, cold.keys, cold.meta, cold.segment_live, cold.segment_rows,
                lent_keys, lent, count, start,
            )  # fmt: skip
            returned += n
            if status == rows.DONE:
                break
            cold.grow_index()
        t.stats["demoted"] += returned

    def _shrink_hot(self) -> None:
        """Give back the hot arena rows a batch over the limit made the arenas grow to, once
        they are more than a growth step past the limit plus an eighth."""
        t = self._t
        target = self.hot_limit + self.hot_limit // 8
        if t.rows.shape[0] <= target * ARENA_GROWTH or t.live > target:
            return
        if tiers.pack_rows(t.index, t.walk, t.scalars, t.row_keys, t.meta, t.rows, target) < 0:
            raise AssertionError("the hot index refused a key while packing rows")
        t.shrink_rows(target)

    def run_removal(self, kernel: Any, *args: Any) -> int:
        """:meth:`TableArrays.run_removal` over the cold tier: the cold scalars take the
        table's version, clock and tombstone-log fields for each call; the removed rows
        become holes in their segments."""
        t, cold = self._t, self.cold
        removed = 0
        start = 0
        while True:
            cold.scalars[SHARED_SCALARS] = t.scalars[SHARED_SCALARS]
            status, start, n = kernel(
                cold.index,
                cold.scalars,
                cold.keys,
                cold.meta,
                t.log_keys,
                t.log_versions,
                t.log_limit,
                *args,
                start,
            )
            t.scalars[SHARED_SCALARS] = cold.scalars[SHARED_SCALARS]
            removed += int(n)
            if status == rows.DONE:
                cold.recount()
                return removed
            t.grow(status)
