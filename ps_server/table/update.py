"""Update kernels: check and merge a push's keys, upsert delta rows (optimizer steps:
``push``)."""

from __future__ import annotations

import numpy as np
from numba import njit

from monolith_ps.routing import mix64
from ps_server.table.cuckoo import bucket_a, bucket_b, probe
from ps_server.table.jit import hot_kernel
from ps_server.table.prefetch import prefetch_at
from ps_server.table.rows import (
    DONE,
    LIVE,
    NEED_INDEX,
    NEED_ROWS,
    PUSHES_COL,
    UPDATED_COL,
    USAGE_COL,
    VERSION,
    VERSION_COL,
    add_row,
    has_free_row,
    touch,
)

SEED_BATCH = np.uint64(0x452821E638D01377)
_SLOTS_AHEAD = 8  # keys ahead whose hash slot merge_push fetches (a big push's slots miss L2)
_EXPONENT = np.uint32(0x7F800000)
_EXPONENT_LSB = np.uint32(0x00800000)
_SIGN = np.uint32(0x80000000)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _finite_row(bits, i):
    """Whether row ``i`` of float32 values viewed as ``uint32`` ``bits`` is all finite. A
    value is not finite when its exponent bits are all set, which is exactly when adding
    one to the exponent field carries into the sign bit; OR-ing those sums over the row is
    a reduction the compiler turns into vector instructions (a ``max`` is not)."""
    carry = np.uint32(0)
    for j in range(bits.shape[1]):
        carry |= (bits[i, j] & _EXPONENT) + _EXPONENT_LSB
    return (carry & _SIGN) == 0


@njit(nogil=True, cache=True, error_model="numpy")
def merge_push(keys, grad_bits):
    """A push's distinct keys in first-seen order, checked and merged in one pass over its
    keys and gradients, without copying gradients; each key's hash slot is fetched a few
    keys ahead.

    ``grad_bits`` is the float32 ``(len(keys), dim)`` gradient array viewed as ``uint32``
    (a value is not finite when its exponent bits are all set). Returns ``(unique, counts,
    first, next_same, n_unique, bad_row)``: ``first[u]`` is the position of the first
    occurrence of ``unique[u]`` in ``keys``; ``next_same[i]`` the position of the next
    occurrence of ``keys[i]`` (-1 at the last); arrays are sized ``len(keys)``, valid up to
    ``n_unique``. ``bad_row`` is the first row holding a NaN or Inf (the rest is then not
    filled), or -1.
    """
    n = keys.shape[0]
    unique = np.empty(n, dtype=np.uint64)
    counts = np.empty(n, dtype=np.int64)
    first = np.empty(n, dtype=np.int64)
    last = np.empty(n, dtype=np.int64)
    next_same = np.empty(n, dtype=np.int64)
    size = 1
    while size < 2 * n:
        size *= 2
    mask = np.uint64(size - 1)
    slots = np.full(size, -1, dtype=np.int32)
    u = 0
    for i in range(n):
        if i + _SLOTS_AHEAD < n:
            prefetch_at(slots, mix64(keys[i + _SLOTS_AHEAD] ^ SEED_BATCH) & mask, 0)
        if not _finite_row(grad_bits, i):
            return unique, counts, first, next_same, u, i
        key = keys[i]
        next_same[i] = -1
        h = mix64(key ^ SEED_BATCH) & mask
        while True:
            k = slots[h]
            if k < 0:
                slots[h] = u
                unique[u] = key
                counts[u] = 1
                first[u] = i
                last[u] = i
                u += 1
                break
            if unique[k] == key:
                counts[k] += 1
                next_same[last[k]] = i
                last[k] = i
                break
            h = (h + np.uint64(1)) & mask
    return unique, counts, first, next_same, u, -1


@hot_kernel
def upsert_rows(
    index,
    max_live,
    walk,
    scalars,
    row_keys,
    meta,
    arena,
    keys,
    new_values,
    new_versions,
    has_state,
    new_state,
    new_push_count,
    new_last_update,
    new_usage,
    start,
    now,
    lfu,
):
    """Write delta rows whose version is newer than the held one, keeping their versions.

    ``arena`` holds values then optimizer state per row; ``new_values`` has its dtype. With
    ``has_state``, optimizer state, push counts and update times come from the delta (when
    the arena has state columns); otherwise existing rows keep theirs and new rows get theirs
    at their first push. A non-empty ``new_usage`` sets
    eviction ranks. Times are unix microseconds. Resumable like ``resolve_rows``.
    Returns ``(status, position, applied, skipped)``.
    """
    capacity = arena.shape[0]
    dim = new_values.shape[1]
    width = arena.shape[1] - dim
    applied = 0
    skipped = 0
    mask = np.uint64(index.shape[0] - 1)
    for i in range(start, keys.shape[0]):
        key = keys[i]
        v = new_versions[i]
        r = probe(index, key)
        if r >= 0:
            if meta[r, VERSION_COL] >= v:
                skipped += 1
                continue
        else:
            if scalars[LIVE] + 1 > max_live:
                return NEED_INDEX, i, applied, skipped
            if not has_free_row(scalars, capacity):
                return NEED_ROWS, i, applied, skipped
            b1 = bucket_a(key, mask)
            b2 = bucket_b(key, mask)
            r = add_row(index, walk, scalars, row_keys, meta, key, b1, b2, now, 0)
            if r < 0:
                return NEED_INDEX, i, applied, skipped
            if new_usage.shape[0] == 0:
                touch(scalars, meta, r, 1, lfu)
        for j in range(dim):
            arena[r, j] = new_values[i, j]
        if has_state:
            for j in range(width):
                arena[r, dim + j] = new_state[i, j]
            meta[r, PUSHES_COL] = new_push_count[i]
            meta[r, UPDATED_COL] = new_last_update[i]
        if new_usage.shape[0] != 0:
            meta[r, USAGE_COL] = new_usage[i]
        meta[r, VERSION_COL] = v
        if v > scalars[VERSION]:
            scalars[VERSION] = v
        applied += 1
    return DONE, keys.shape[0], applied, skipped
