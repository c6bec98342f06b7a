"""Tier kernels: move whole rows between the hot tier (memory) and the cold tier (rows in
a file mapped read-only, see ``cold``), keeping their values, optimizer state, metadata and
version.

Both tiers keep a cuckoo index, keys, metadata lines and ``scalars`` in memory; a key lives
in at most one tier. A promotion copies the row from the file's mapping straight into the
hot arena and leaves a hole in its cold segment; a demotion copies the row into a hole of
the cold head segment's buffer, which the caller writes out in one piece.

Moving a row is not a change to the table: its version, push count, update time and usage
stay as they were. Both kernels are resumable: they stop with a status when the
destination must grow (or the head segment is full) and continue from the returned
position.
"""

from __future__ import annotations

import numpy as np

from ps_server.table.cuckoo import insert, prefetch_buckets, probe, remove
from ps_server.table.jit import hot_kernel
from ps_server.table.prefetch import LOOKAHEAD, prefetch_at, prefetch_row
from ps_server.table.rows import (
    DONE,
    FREE_HEAD,
    HIGH,
    LIVE,
    META_COLUMNS,
    NEED_INDEX,
    NEED_ROWS,
    USAGE_COL,
    VERSION_COL,
    give_back_row,
    has_free_row,
    take_row,
)

NEED_SEGMENT = 5  # the cold head segment is full: write it out, pick the next, call again


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
    segment_live,
    segment_rows,
    cold_arena,
    keys,
    cold_rows,
    horizon,
    lent_keys,
    lent,
    lent_count,
    start,
):
    """Move the cold rows of ``keys`` into the hot tier, their arena rows copied from
    ``cold_arena`` (the cold file's mapped rows). ``cold_rows`` are the keys' cold rows as
    ``cuckoo.locate`` found them (each is fetched ahead; the kernel probes again, so a key
    repeated in the batch moves once). A row last used before ``horizon`` is only lent:
    its key and ``(cold row, hot row, version)`` go to ``lent_keys``/``lent``
    (``lent_count[0]`` of them) and its cold row stays reserved for :func:`return_rows`.
    Returns ``(status, position, promoted)``; ``NEED_INDEX``/``NEED_ROWS`` are about the
    hot tier."""
    hot_capacity = hot_arena.shape[0]
    hot_mask = np.uint64(hot_index.shape[0] - 1)
    cold_mask = np.uint64(cold_index.shape[0] - 1)
    n = keys.shape[0]
    promoted = 0
    for i in range(start, n):
        ahead = i + LOOKAHEAD
        if ahead < n:
            prefetch_row(cold_arena, cold_rows[ahead])
            prefetch_row(cold_meta, cold_rows[ahead])
            prefetch_buckets(cold_index, keys[ahead], cold_mask)
            prefetch_buckets(hot_index, keys[ahead], hot_mask)
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
        for k in range(hot_arena.shape[1]):
            hot_arena[h, k] = cold_arena[c, k]
        for k in range(META_COLUMNS):
            hot_meta[h, k] = cold_meta[c, k]
        hot_keys[h] = key
        hot_scalars[LIVE] += 1
        if cold_meta[c, USAGE_COL] < horizon:
            m = lent_count[0]
            lent_keys[m] = key
            lent[m, 0] = c
            lent[m, 1] = h
            lent[m, 2] = cold_meta[c, VERSION_COL]
            lent_count[0] = m + 1
        remove(cold_index, key)
        cold_meta[c, VERSION_COL] = 0
        segment_live[c // segment_rows] -= 1
        cold_scalars[LIVE] -= 1
        promoted += 1
    return DONE, n, promoted


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
    segment_live,
    cursor,
    buffer,
    victims,
    start,
):
    """Move the live hot rows ``victims`` into the holes of the cold head segment, whose
    rows ``buffer`` holds (``cursor``: its number, the next row to look at, the changed
    stretch of the buffer), freeing their hot rows. Returns ``(status, position,
    demoted)``; ``NEED_INDEX`` is about the cold index."""
    segment_rows = buffer.shape[0]
    first = cursor[0] * segment_rows
    demoted = 0
    for i in range(start, victims.shape[0]):
        h = victims[i]
        if hot_meta[h, VERSION_COL] == 0:
            continue
        if cold_scalars[LIVE] + 1 > cold_max_live:
            return NEED_INDEX, i, demoted
        at = cursor[1]
        while at < segment_rows and cold_meta[first + at, VERSION_COL] != 0:
            at += 1
        cursor[1] = at
        if at == segment_rows:
            return NEED_SEGMENT, i, demoted
        c = first + at
        key = hot_keys[h]
        if not insert(cold_index, key, c, walk):
            return NEED_INDEX, i, demoted
        for k in range(buffer.shape[1]):
            buffer[at, k] = hot_arena[h, k]
        for k in range(META_COLUMNS):
            cold_meta[c, k] = hot_meta[h, k]
        cold_keys[c] = key
        cursor[1] = at + 1
        cursor[2] = min(cursor[2], at)
        cursor[3] = max(cursor[3], at + 1)
        segment_live[cursor[0]] += 1
        cold_scalars[LIVE] += 1
        remove(hot_index, key)
        give_back_row(hot_scalars, hot_keys, hot_meta, h)
        hot_scalars[LIVE] -= 1
        demoted += 1
    return DONE, victims.shape[0], demoted


@hot_kernel
def pack_rows(index, walk, scalars, row_keys, meta, arena, capacity):
    """Move the live hot rows at or above ``capacity`` into free rows below it (the caller
    checked that the live rows fit), keeping their keys, values, state and metadata, and
    rebuild the free list below the new high-water mark. Returns the rows moved, or -1 when
    the index refused a key it had just given up (it cannot)."""
    high = scalars[HIGH]
    free = 0
    moved = 0
    for r in range(capacity, high):
        if meta[r, VERSION_COL] == 0:
            continue
        while meta[free, VERSION_COL] != 0:
            free += 1
        key = row_keys[r]
        for k in range(arena.shape[1]):
            arena[free, k] = arena[r, k]
        for k in range(META_COLUMNS):
            meta[free, k] = meta[r, k]
        row_keys[free] = key
        meta[r, VERSION_COL] = 0
        remove(index, key)
        if not insert(index, key, free, walk):
            return -1
        moved += 1
    high = min(high, capacity)
    while high > 0 and meta[high - 1, VERSION_COL] == 0:
        high -= 1
    scalars[HIGH] = high
    scalars[FREE_HEAD] = -1
    for r in range(high - 1, -1, -1):
        if meta[r, VERSION_COL] == 0:
            give_back_row(scalars, row_keys, meta, r)
    return moved


@hot_kernel
def return_rows(
    hot_index,
    hot_scalars,
    hot_keys,
    hot_meta,
    cold_index,
    cold_max_live,
    walk,
    cold_scalars,
    cold_keys,
    cold_meta,
    segment_live,
    segment_rows,
    lent_keys,
    lent,
    count,
    start,
):
    """Move the rows :func:`promote_rows` lent back to their cold rows, which still hold
    their values and state: only the metadata moves, nothing is written to the file. A
    row whose version changed since (pushed, replaced by a delta), that left the hot tier,
    or whose cold row was taken, stays where it is. Returns ``(status, position,
    returned)``; ``NEED_INDEX`` is about the cold index."""
    hot_mask = np.uint64(hot_index.shape[0] - 1)
    cold_mask = np.uint64(cold_index.shape[0] - 1)
    returned = 0
    for i in range(start, count):
        ahead = i + LOOKAHEAD
        if ahead < count:
            prefetch_row(hot_meta, lent[ahead, 1])
            prefetch_row(cold_meta, lent[ahead, 0])
            prefetch_at(hot_keys, lent[ahead, 1], 0)
            prefetch_at(cold_keys, lent[ahead, 0], 0)
            prefetch_buckets(cold_index, lent_keys[ahead], cold_mask)
            prefetch_buckets(hot_index, lent_keys[ahead], hot_mask)
        key = lent_keys[i]
        c = lent[i, 0]
        h = lent[i, 1]
        version = lent[i, 2]
        if hot_keys[h] != key or hot_meta[h, VERSION_COL] != version or version == 0:
            continue
        if cold_meta[c, VERSION_COL] != 0 or cold_keys[c] != key:
            continue
        if cold_scalars[LIVE] + 1 > cold_max_live:
            return NEED_INDEX, i, returned
        if not insert(cold_index, key, c, walk):
            return NEED_INDEX, i, returned
        for k in range(META_COLUMNS):
            cold_meta[c, k] = hot_meta[h, k]
        segment_live[c // segment_rows] += 1
        cold_scalars[LIVE] += 1
        remove(hot_index, key)
        give_back_row(hot_scalars, hot_keys, hot_meta, h)
        hot_scalars[LIVE] -= 1
        returned += 1
    return DONE, count, returned
