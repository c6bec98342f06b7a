"""``max_rows``: past it, a table evicts the rows of the lowest usage rank (the least
recently used under LRU, the least used under LFU), hot and cold tiers alike."""

from __future__ import annotations

import numpy as np

from ps_server.table import removal
from ps_server.table.arrays import TableArrays, usage_ranks
from ps_server.table.tiering import Tiering

__all__ = ["evict_over_limit"]


def evict_over_limit(t: TableArrays, tiering: Tiering | None) -> None:
    """Evict down to ``max_rows`` (each eviction leaves a tombstone)."""
    max_rows = t.config.max_rows
    total_rows = t.live + (0 if tiering is None else len(tiering))
    if max_rows is None or total_rows <= max_rows:
        return
    excess = total_rows - max_rows
    high = t.high
    usage = usage_ranks(t.meta, high)
    cold = None if tiering is None else tiering.cold
    if cold is not None and len(cold):
        usage = np.concatenate([usage, usage_ranks(cold.meta, cold.high)])
    total = usage.shape[0]
    victims = np.argpartition(usage, excess - 1)[:excess] if excess < total else np.arange(total)
    victims = victims[np.argsort(usage[victims], kind="stable")]
    if tiering is not None and total > high:  # rows past the hot ones are cold
        cold_victims = victims[victims >= high] - high
        victims = victims[victims < high]
        t.stats["evicted"] += tiering.run_removal(removal.evict_rows, cold_victims)
    evicted = t.run_removal(removal.evict_rows, victims)
    t.stats["evicted"] += evicted
