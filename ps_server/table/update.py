"""Update kernels: merge duplicate keys, apply optimizer steps, upsert delta rows."""

from __future__ import annotations

import numpy as np
from numba import njit

from monolith_ps.routing import mix64
from ps_server.optim.optimizers import frequency_lr_scale, init_state, optimizer_step
from ps_server.table.cuckoo import insert, probe
from ps_server.table.jit import hot_kernel
from ps_server.table.prefetch import prefetch_row
from ps_server.table.rows import (
    DEFAULT_PUSHES,
    DEFAULT_VERSION,
    DONE,
    LIVE,
    NEED_INDEX,
    NEED_ROWS,
    PUSHES_COL,
    UPDATED_COL,
    USAGE_COL,
    VERSION,
    VERSION_COL,
    give_back_row,
    has_free_row,
    take_row,
    touch,
)

SEED_BATCH = np.uint64(0x452821E638D01377)


STEP_LOOKAHEAD = 8  # rows ahead: each prefetch is a whole row plus its metadata
_MAX_PUSHES = 0xFFFFFFFF  # exported as uint32


@njit(nogil=True, cache=True, error_model="numpy")
def first_non_finite_row(bits):
    """Index of the first row holding a NaN or Inf, or -1; ``bits`` is the float32 gradient
    array viewed as ``uint32`` (a value is not finite when its exponent bits are all set)."""
    exponent = np.uint32(0x7F800000)
    for i in range(bits.shape[0]):
        top = np.uint32(0)
        for j in range(bits.shape[1]):
            top = max(top, bits[i, j] & exponent)
        if top == exponent:
            return i
    return -1


@njit(nogil=True, cache=True, error_model="numpy")
def dedup(keys):
    """Distinct keys in first-seen order, without copying gradients.

    Returns ``(unique, counts, first, next_same, n_unique)``: ``first[u]`` is the position of
    the first occurrence of ``unique[u]`` in ``keys``; ``next_same[i]`` the position of the
    next occurrence of ``keys[i]`` (-1 at the last). Arrays are sized ``len(keys)``, valid up
    to ``n_unique``.
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
    return unique, counts, first, next_same, u


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _add_occurrences(grads, i, next_same, out, row):
    """``out[row] = sum of grads rows i, next_same[i], ...`` (all occurrences of one key)."""
    dim = grads.shape[1]
    for j in range(dim):
        out[row, j] = grads[i, j]
    i = next_same[i]
    while i >= 0:
        for j in range(dim):
            out[row, j] += grads[i, j]
        i = next_same[i]


@hot_kernel
def apply_steps(
    arena,
    meta,
    scalars,
    rows,
    grads,
    first,
    next_same,
    counts,
    opt_kind,
    hp,
    frequency_power,
    now,
    learn_default,
    default_row,
    default_state,
    lfu,
    scratch,
):
    """One optimizer step per distinct key ``u`` with ``rows[u] >= 0``, its gradient the sum
    of its occurrences in ``grads`` (``first``/``next_same`` from :func:`dedup`); each
    updated row takes the next version and records the access (LRU/LFU); a row's first push
    writes its initial optimizer state first. With ``learn_default``, the summed gradients of
    keys not admitted (``rows[u] < 0``) train the default row in one step. ``now`` is in unix
    microseconds. ``arena`` holds each row's values (``dim`` columns) and then its optimizer
    state, so one step touches one contiguous stretch of memory. ``scratch`` is a float32
    ``(2, dim)`` work space (a hot kernel allocates nothing). Returns ``(updated, pending)``."""
    updated = 0
    pending = 0
    dim = grads.shape[1]
    n = rows.shape[0]
    summed = 0  # rows of scratch
    pending_grad = 1
    for j in range(dim):
        scratch[pending_grad, j] = np.float32(0.0)
    for i in range(n + STEP_LOOKAHEAD):
        if i < n and rows[i] >= 0:
            r = rows[i]
            prefetch_row(arena, r)
            prefetch_row(meta, r)
        u = i - STEP_LOOKAHEAD
        if u < 0:
            continue
        r = rows[u]
        if counts[u] == 1:
            g = grads
            gr = first[u]
        else:
            _add_occurrences(grads, first[u], next_same, scratch, summed)
            g = scratch
            gr = summed
        if r < 0:
            pending += 1
            if learn_default:
                for j in range(dim):
                    scratch[pending_grad, j] += g[gr, j]
            continue
        if meta[r, PUSHES_COL] == 0:  # first push: the row gets its optimizer state now
            init_state(opt_kind, hp, arena[r, dim:])
        scale = frequency_lr_scale(float(meta[r, PUSHES_COL]), frequency_power)
        optimizer_step(opt_kind, hp, arena[r, :dim], arena[r, dim:], g[gr], scale)
        meta[r, PUSHES_COL] = min(meta[r, PUSHES_COL] + counts[u], _MAX_PUSHES)
        touch(scalars, meta, r, counts[u], lfu)
        meta[r, UPDATED_COL] = now
        v = scalars[VERSION] + 1
        scalars[VERSION] = v
        meta[r, VERSION_COL] = v
        updated += 1
    if learn_default and pending > 0:
        scale = frequency_lr_scale(float(scalars[DEFAULT_PUSHES]), frequency_power)
        optimizer_step(opt_kind, hp, default_row[0], default_state[0], scratch[pending_grad], scale)
        scalars[DEFAULT_PUSHES] += 1
        v = scalars[VERSION] + 1
        scalars[VERSION] = v
        scalars[DEFAULT_VERSION] = v
    return updated, pending


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
            r = take_row(scalars, row_keys)
            if not insert(index, key, r, walk):
                give_back_row(scalars, row_keys, meta, r)
                return NEED_INDEX, i, applied, skipped
            scalars[LIVE] += 1
            row_keys[r] = key
            meta[r, USAGE_COL] = 0
            if new_usage.shape[0] == 0:
                touch(scalars, meta, r, 1, lfu)
            meta[r, PUSHES_COL] = 0  # optimizer state comes at the first push
            meta[r, UPDATED_COL] = now
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
