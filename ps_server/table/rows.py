"""Row bookkeeping shared by the table kernels: the scalar state, the free list, row usage
and the tombstone log.

A table's mutable scalars travel as one ``int64`` array (indices below), so kernels can
update them in place. Rows live in arenas indexed by row number: values, optimizer state,
``row_keys`` and ``meta``, an ``int64`` array of shape ``(capacity, 4)`` holding each row's
version, last-update time (unix microseconds), push count and usage in one 32-byte line.
A free row has version 0 and its ``row_keys`` entry holds the next free row (an intrusive
free list: no extra memory). The tombstone log is a ring of ``(key, version)`` that grows
up to its limit and then drops its oldest entry, remembering the highest version it dropped
(the floor below which deltas must be full).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ps_server.table.cuckoo import insert_at, remove

VERSION = 0  # last version handed out
TICK = 1  # access clock for LRU/LFU
LIVE = 2  # rows in the index
HIGH = 3  # rows ever used (arena high-water mark)
FREE_HEAD = 4  # first free row below HIGH, -1 when none
LOG_START = 5  # ring position of the oldest tombstone
LOG_COUNT = 6  # tombstones held
LOG_FLOOR = 7  # highest version of a dropped tombstone
DEFAULT_VERSION = 8  # version of the learned default row
DEFAULT_PUSHES = 9  # pushes that trained the learned default row
SKETCH_KEYS = 10  # sightings the sketch counted from zero (about the distinct keys counted)
NUM_SCALARS = 11

# columns of the meta arena
VERSION_COL = 0
UPDATED_COL = 1  # unix microseconds
PUSHES_COL = 2
USAGE_COL = 3
META_COLUMNS = 4

# kernel status codes
DONE = 0
NEED_INDEX = 1  # index too full (or a cuckoo walk failed): grow it, call again
NEED_ROWS = 2  # arenas full: grow them, call again
NEED_LOG = 3  # tombstone log full but below its limit: grow it, call again
NEED_INDEX_ADMITTED = 4  # a cuckoo walk failed after the key passed admission

_NO_ROW = np.uint64(0xFFFFFFFFFFFFFFFF)
TICK_BITS = 40
_TICK_MASK = (1 << 40) - 1
_MAX_FREQUENCY = (1 << 22) - 1


def new_scalars() -> np.ndarray:
    s = np.zeros(NUM_SCALARS, dtype=np.int64)
    s[FREE_HEAD] = -1
    return s


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def has_free_row(scalars, capacity):
    return scalars[FREE_HEAD] >= 0 or scalars[HIGH] < capacity


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def take_row(scalars, row_keys):
    """A free row (call only after :func:`has_free_row`)."""
    r = scalars[FREE_HEAD]
    if r >= 0:
        nxt = row_keys[r]
        scalars[FREE_HEAD] = -1 if nxt == _NO_ROW else np.int64(nxt)
        return r
    r = scalars[HIGH]
    scalars[HIGH] = r + 1
    return r


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def add_row(index, walk, scalars, row_keys, meta, key, b1, b2, now, usage):
    """Take a free row for ``key`` (call only after :func:`has_free_row`, with room in the
    index), enter it in the index at its buckets ``b1``, ``b2`` and start its metadata: no
    push yet (optimizer state comes at the first), updated at ``now``, ``usage``; the caller
    sets its version. Returns the row, or -1 with nothing changed when the cuckoo walk found
    no free slot (the index must grow)."""
    r = take_row(scalars, row_keys)
    if not insert_at(index, key, r, walk, b1, b2):
        give_back_row(scalars, row_keys, meta, r)
        return np.int64(-1)
    scalars[LIVE] += 1
    row_keys[r] = key
    meta[r, UPDATED_COL] = now
    meta[r, PUSHES_COL] = 0
    meta[r, USAGE_COL] = usage
    return r


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def next_version(scalars):
    """Take the table's next version."""
    v = scalars[VERSION] + 1
    scalars[VERSION] = v
    return v


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def give_back_row(scalars, row_keys, meta, r):
    """Put row ``r`` on the free list."""
    meta[r, VERSION_COL] = 0
    head = scalars[FREE_HEAD]
    row_keys[r] = _NO_ROW if head < 0 else np.uint64(head)
    scalars[FREE_HEAD] = r


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def touch(scalars, meta, r, increment, lfu):
    """Record an access to row ``r``: LRU keeps the access clock; LFU keeps
    ``frequency << 40 | clock``, so ties in frequency fall back to recency."""
    t = scalars[TICK] + 1
    scalars[TICK] = t
    if lfu:
        freq = (meta[r, USAGE_COL] >> TICK_BITS) + increment
        if freq > _MAX_FREQUENCY:
            freq = _MAX_FREQUENCY
        meta[r, USAGE_COL] = (freq << TICK_BITS) | (t & _TICK_MASK)
    else:
        meta[r, USAGE_COL] = t


@njit(nogil=True, cache=True, error_model="numpy")
def halve_frequencies(meta, high):
    """LFU aging: halve the frequency of every row below ``high`` (rounding up, so a row
    once used stays above one never used), keeping its clock: a count earned long ago
    weighs half as much as one earned now."""
    for r in range(high):
        usage = meta[r, USAGE_COL]
        freq = ((usage >> TICK_BITS) + 1) >> 1
        meta[r, USAGE_COL] = (freq << TICK_BITS) | (usage & _TICK_MASK)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def log_has_room(scalars, log_keys, limit):
    return scalars[LOG_COUNT] < log_keys.shape[0] or log_keys.shape[0] >= limit


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def log_tombstone(scalars, log_keys, log_versions, key, version):
    """Append a tombstone (call only after :func:`log_has_room`)."""
    cap = log_keys.shape[0]
    start = scalars[LOG_START]
    count = scalars[LOG_COUNT]
    if count == cap:
        dropped = log_versions[start]
        if dropped > scalars[LOG_FLOOR]:
            scalars[LOG_FLOOR] = dropped
        start = (start + 1) % cap
        count -= 1
        scalars[LOG_START] = start
    pos = (start + count) % cap
    log_keys[pos] = key
    log_versions[pos] = version
    scalars[LOG_COUNT] = count + 1


@njit(nogil=True, cache=True, error_model="numpy")
def drop_row(index, scalars, row_keys, meta, log_keys, log_versions, r, version):
    """Remove live row ``r`` from the index, free it and log its tombstone at ``version``."""
    key = row_keys[r]
    remove(index, key)
    give_back_row(scalars, row_keys, meta, r)
    scalars[LIVE] -= 1
    log_tombstone(scalars, log_keys, log_versions, key, version)
