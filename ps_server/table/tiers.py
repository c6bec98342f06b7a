"""Tier kernels: move whole rows between the hot tier (memory) and the cold tier (a
memory-mapped file), keeping their values, optimizer state, metadata and version.

Both tiers have the same layout (a cuckoo index, an arena row of values then state, the
key, a metadata line) and their own ``scalars`` (live rows, high-water mark, free list); a
key lives in at most one tier. Cold rows freed by a promotion go on an in-memory stack
(``freed``, its length in ``freed_count[0]``) instead of the cold free list, so a promotion
only reads the cold files (a write to a file mapping costs a page fault that dirties the
page); demotions take their rows from that stack first, and :func:`release_freed` hands
what is left to the free list before anything scans the cold rows.

Moving a row is not a change to the table: its version, push count, update time and usage
stay as they were. Both kernels are resumable: they stop
with a status when the destination's index or arenas must grow and continue from the
returned position.
"""

from __future__ import annotations

from numba import njit

from ps_server.table.cuckoo import insert, probe, remove
from ps_server.table.jit import hot_kernel
from ps_server.table.rows import (
    DONE,
    LIVE,
    META_COLUMNS,
    NEED_INDEX,
    NEED_ROWS,
    VERSION_COL,
    give_back_row,
    has_free_row,
    take_row,
)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _copy_row(src_arena, src_meta, s, dst_arena, dst_meta, d):
    for c in range(src_arena.shape[1]):
        dst_arena[d, c] = src_arena[s, c]
    for c in range(META_COLUMNS):
        dst_meta[d, c] = src_meta[s, c]


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _free_cold_row(cold_scalars, cold_keys, cold_meta, freed, freed_count, c):
    """Free cold row ``c`` onto the in-memory stack, or the free list when it is full."""
    n = freed_count[0]
    if n < freed.shape[0]:
        freed[n] = c
        freed_count[0] = n + 1
    else:
        give_back_row(cold_scalars, cold_keys, cold_meta, c)


@hot_kernel
def release_freed(cold_scalars, cold_keys, cold_meta, freed, freed_count):
    """Put the cold rows on the in-memory stack on the cold free list (marking them free in
    the metadata, as scans expect); returns how many."""
    n = freed_count[0]
    for i in range(n):
        give_back_row(cold_scalars, cold_keys, cold_meta, freed[i])
    freed_count[0] = 0
    return n


@hot_kernel
def promote_rows(
    hot_index,
    hot_max_live,
    walk,
    hot_scalars,
    hot_keys,
    hot_meta,
    hot_arena,
    cold_index,
    cold_scalars,
    cold_keys,
    cold_meta,
    cold_arena,
    freed,
    freed_count,
    keys,
    cold_rows,
    start,
):
    """Move the cold rows of ``keys`` into the hot tier. ``cold_rows`` comes from
    ``cuckoo.locate`` on the cold index (-1: not cold); a key repeated in the batch moves
    once. Returns ``(status, position, promoted)``; ``NEED_INDEX``/``NEED_ROWS`` are about
    the hot tier."""
    hot_capacity = hot_arena.shape[0]
    promoted = 0
    for i in range(start, keys.shape[0]):
        if cold_rows[i] < 0:
            continue
        key = keys[i]
        c = probe(cold_index, key)  # an earlier duplicate may have moved it already
        if c < 0:
            continue
        if hot_scalars[LIVE] + 1 > hot_max_live:
            return NEED_INDEX, i, promoted
        if not has_free_row(hot_scalars, hot_capacity):
            return NEED_ROWS, i, promoted
        h = take_row(hot_scalars, hot_keys)
        if not insert(hot_index, key, h, walk):
            give_back_row(hot_scalars, hot_keys, hot_meta, h)
            return NEED_INDEX, i, promoted
        _copy_row(cold_arena, cold_meta, c, hot_arena, hot_meta, h)
        hot_keys[h] = key
        hot_scalars[LIVE] += 1
        remove(cold_index, key)
        _free_cold_row(cold_scalars, cold_keys, cold_meta, freed, freed_count, c)
        cold_scalars[LIVE] -= 1
        promoted += 1
    return DONE, keys.shape[0], promoted


@hot_kernel
def demote_rows(
    hot_index,
    hot_scalars,
    hot_keys,
    hot_meta,
    hot_arena,
    cold_index,
    cold_max_live,
    walk,
    cold_scalars,
    cold_keys,
    cold_meta,
    cold_arena,
    freed,
    freed_count,
    victims,
    start,
):
    """Move the live hot rows ``victims`` into the cold tier, freeing their hot rows.
    Returns ``(status, position, demoted)``; ``NEED_INDEX``/``NEED_ROWS`` are about the
    cold tier."""
    cold_capacity = cold_arena.shape[0]
    demoted = 0
    for i in range(start, victims.shape[0]):
        h = victims[i]
        if hot_meta[h, VERSION_COL] == 0:
            continue
        if cold_scalars[LIVE] + 1 > cold_max_live:
            return NEED_INDEX, i, demoted
        n = freed_count[0]
        if n > 0:
            c = freed[n - 1]
            freed_count[0] = n - 1
        elif has_free_row(cold_scalars, cold_capacity):
            c = take_row(cold_scalars, cold_keys)
        else:
            return NEED_ROWS, i, demoted
        key = hot_keys[h]
        if not insert(cold_index, key, c, walk):
            _free_cold_row(cold_scalars, cold_keys, cold_meta, freed, freed_count, c)
            return NEED_INDEX, i, demoted
        _copy_row(hot_arena, hot_meta, h, cold_arena, cold_meta, c)
        cold_keys[c] = key
        cold_scalars[LIVE] += 1
        remove(hot_index, key)
        give_back_row(hot_scalars, hot_keys, hot_meta, h)
        hot_scalars[LIVE] -= 1
        demoted += 1
    return DONE, victims.shape[0], demoted
