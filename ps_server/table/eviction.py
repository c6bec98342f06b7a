"""``max_rows``: past it, a table evicts the rows of the lowest usage rank (the least
recently used under LRU, the least used under LFU), hot and cold tiers alike.

:func:`evict_over_limit` ranks every row at each call (O(rows)). :class:`Eviction` gives an
LRU table without tiers the same evictions, in the same order, at an amortized cost: one
ranking keeps a pool of the lowest-ranked rows that later calls take from while it lasts.
"""

from __future__ import annotations

import numpy as np

from ps_server.table import removal, rows
from ps_server.table.arrays import TableArrays, usage_ranks
from ps_server.table.tiering import Tiering

__all__ = ["Eviction", "evict_over_limit"]

POOL_SHARE = 64  # a ranking keeps at least max_rows // POOL_SHARE rows
POOL_CALLS = 8  # and at least the rows of this many calls like the one that ranked


def evict_over_limit(t: TableArrays, tiering: Tiering | None) -> None:
    """Evict down to ``max_rows`` (each eviction leaves a tombstone), ranking every row."""
    excess = _excess(t, tiering)
    if not excess:
        return
    high = t.high
    usage = usage_ranks(t.meta, high)
    cold = None if tiering is None else tiering.cold
    if cold is not None and len(cold):
        usage = np.concatenate([usage, usage_ranks(cold.meta, cold.high)])
    victims = _lowest(usage, excess)
    if tiering is not None and usage.shape[0] > high:  # rows past the hot ones are cold
        cold_victims = victims[victims >= high] - high
        victims = victims[victims < high]
        t.stats["evicted"] += tiering.run_removal(removal.evict_rows, cold_victims)
    t.stats["evicted"] += t.run_removal(removal.evict_rows, victims)


class Eviction:
    """A table's eviction past ``max_rows``.

    An LRU table without tiers keeps a pool: when a call must evict ``excess`` rows and
    the pool cannot give them, it ranks every row once, evicts the lowest ``excess`` and
    keeps the next ``max(POOL_CALLS * excess, max_rows // POOL_SHARE)`` (row, key, rank),
    in rank order; later calls take members in order, skipping those no longer valid (the
    row was freed, holds another key, or was touched: its rank changed), and rank again
    when the pool runs out. This evicts exactly what :func:`evict_over_limit`
    would: under LRU a rank is the access clock, so every rank written after the ranking
    (a touch, a new row) is above every pool member's, and a row outside the pool was
    ranked above them already; the valid members are therefore the lowest-ranked rows of
    the table, in order. The pool keeps only the prefix whose ranks are strictly
    increasing, strictly below every other row's and not above the clock, so ties (ranks
    a delta brought) fall back to the full ranking. Whatever writes ranks or rows in bulk
    (``apply_delta``, ``import_meta``) calls :meth:`forget`.

    LFU and tiered tables rank every row at each call: an LFU row can start (from the
    sketch's count) below earlier ranks and aging halves every count, and tiers move rows
    between the hot and cold arrays.
    """

    def __init__(self, t: TableArrays, tiering: Tiering | None) -> None:
        self._t = t
        self._tiering = tiering
        self._pooled = tiering is None and not t.lfu
        self.forget()

    def forget(self) -> None:
        """Drop the pool (ranks or rows were rewritten in bulk)."""
        self._rows = np.zeros(0, dtype=np.int64)
        self._keys = np.zeros(0, dtype=np.uint64)
        self._ranks = np.zeros(0, dtype=np.int64)
        self._next = 0

    def run(self) -> None:
        """Evict down to ``max_rows`` (each eviction leaves a tombstone)."""
        t = self._t
        if not self._pooled:
            evict_over_limit(t, self._tiering)
            return
        excess = _excess(t, None)
        if not excess:
            return
        victims = self._take(excess)
        if victims is None:
            victims = self._rank(excess)
        t.stats["evicted"] += t.run_removal(removal.evict_rows, victims)

    def _take(self, excess: int) -> np.ndarray | None:
        """The next ``excess`` valid pool members' rows, or None when the pool runs out."""
        t = self._t
        taken = []
        need = excess
        pos = self._next
        end = self._rows.shape[0]
        while need and pos < end:
            stop = min(end, pos + need + need // 4 + 16)
            r = self._rows[pos:stop]
            valid = (
                (t.meta[r, rows.VERSION_COL] != 0)
                & (t.row_keys[r] == self._keys[pos:stop])
                & (t.meta[r, rows.USAGE_COL] == self._ranks[pos:stop])
            )
            at = np.flatnonzero(valid)[:need]
            taken.append(r[at])
            need -= at.shape[0]
            pos = pos + int(at[-1]) + 1 if not need else stop
        if need:
            self.forget()
            return None
        self._next = pos
        return np.concatenate(taken)

    def _rank(self, excess: int) -> np.ndarray:
        """Rank every row: the ``excess`` lowest, and a new pool after them."""
        t = self._t
        max_rows = t.config.max_rows or 0  # set: there is an excess
        usage = usage_ranks(t.meta, t.high)
        n = usage.shape[0]
        k = min(excess + max(POOL_CALLS * excess, max_rows // POOL_SHARE), n)
        if k < n:
            part = np.argpartition(usage, k)[: k + 1]
            after = usage[part[k]]
            pool = part[:k]
        else:
            after = np.iinfo(np.int64).max
            pool = np.arange(n)
        pool = pool[np.argsort(usage[pool])]
        ranks = usage[pool]
        strict = (ranks < np.append(ranks[1:], after)) & (ranks <= t.scalars[rows.TICK])
        keep = k if strict.all() else int(np.argmin(strict))
        if keep < excess:  # ties among the lowest ranks: as the full ranking breaks them
            self.forget()
            return _lowest(usage, excess)
        self._rows = pool[excess:keep]
        self._keys = t.row_keys[self._rows]
        self._ranks = ranks[excess:keep]
        self._next = 0
        return pool[:excess]


def _excess(t: TableArrays, tiering: Tiering | None) -> int:
    """Rows over ``max_rows`` (0: none, or no limit)."""
    max_rows = t.config.max_rows
    total_rows = t.live + (0 if tiering is None else len(tiering))
    return 0 if max_rows is None else max(0, total_rows - max_rows)


def _lowest(usage: np.ndarray, excess: int) -> np.ndarray:
    """Positions of the ``excess`` lowest of ``usage``, lowest first."""
    total = usage.shape[0]
    victims = np.argpartition(usage, excess - 1)[:excess] if excess < total else np.arange(total)
    return victims[np.argsort(usage[victims], kind="stable")]
