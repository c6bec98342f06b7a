"""Update kernels: merge duplicate keys, apply optimizer steps, upsert delta rows."""

from __future__ import annotations

import numpy as np
from numba import njit

from ps_client.routing import mix64
from ps_server.optim.optimizers import frequency_lr_scale, init_state, optimizer_step
from ps_server.table.cuckoo import insert, probe
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
_MAX_PUSHES = 0xFFFFFFFF  # exported as uint32


@njit(nogil=True, cache=True, error_model="numpy")
def dedup_sum(keys, grads):
    """Unique keys in first-seen order, their counts and summed gradients.

    Returns ``(bad, unique, counts, summed, n_unique)``: ``bad`` is the first row holding a
    NaN or Inf (then nothing else is meaningful), else -1; the arrays are sized ``len(keys)``,
    valid up to ``n_unique``.
    """
    n = keys.shape[0]
    dim = grads.shape[1]
    unique = np.empty(n, dtype=np.uint64)
    counts = np.zeros(n, dtype=np.int64)
    summed = np.empty((n, dim), dtype=np.float32)
    size = 1
    while size < 2 * n:
        size *= 2
    mask = np.uint64(size - 1)
    slots = np.full(size, -1, dtype=np.int64)
    u = 0
    for i in range(n):
        for j in range(dim):
            if not np.isfinite(grads[i, j]):
                return i, unique, counts, summed, 0
        key = keys[i]
        h = mix64(key ^ SEED_BATCH) & mask
        while True:
            k = slots[h]
            if k < 0:
                slots[h] = u
                unique[u] = key
                counts[u] = 1
                for j in range(dim):
                    summed[u, j] = grads[i, j]
                u += 1
                break
            if unique[k] == key:
                counts[k] += 1
                for j in range(dim):
                    summed[k, j] += grads[i, j]
                break
            h = (h + np.uint64(1)) & mask
    return -1, unique, counts, summed, u


@njit(nogil=True, cache=True, error_model="numpy")
def apply_steps(
    values,
    state,
    meta,
    scalars,
    rows,
    grads,
    counts,
    opt_kind,
    hp,
    frequency_power,
    now,
    learn_default,
    default_row,
    default_state,
):
    """One optimizer step per row ``rows[u] >= 0`` with gradient ``grads[u]``; each updated row
    takes the next version. With ``learn_default``, the summed gradients of rows not admitted
    (``rows[u] < 0``) train the default row in one step. ``now`` is in unix microseconds.
    Returns ``(updated, pending)``."""
    updated = 0
    pending = 0
    dim = values.shape[1]
    pending_grad = np.zeros(dim, dtype=np.float32)
    for u in range(rows.shape[0]):
        r = rows[u]
        if r < 0:
            pending += 1
            if learn_default:
                for j in range(dim):
                    pending_grad[j] += grads[u, j]
            continue
        scale = frequency_lr_scale(float(meta[r, PUSHES_COL]), frequency_power)
        optimizer_step(opt_kind, hp, values[r], state[r], grads[u], scale)
        meta[r, PUSHES_COL] = min(meta[r, PUSHES_COL] + counts[u], _MAX_PUSHES)
        meta[r, UPDATED_COL] = now
        v = scalars[VERSION] + 1
        scalars[VERSION] = v
        meta[r, VERSION_COL] = v
        updated += 1
    if learn_default and pending > 0:
        scale = frequency_lr_scale(float(scalars[DEFAULT_PUSHES]), frequency_power)
        optimizer_step(opt_kind, hp, default_row, default_state, pending_grad, scale)
        scalars[DEFAULT_PUSHES] += 1
        v = scalars[VERSION] + 1
        scalars[VERSION] = v
        scalars[DEFAULT_VERSION] = v
    return updated, pending


@njit(nogil=True, cache=True, error_model="numpy")
def upsert_rows(
    index,
    max_live,
    rng,
    scalars,
    row_keys,
    meta,
    values,
    state,
    keys,
    new_values,
    new_versions,
    has_state,
    new_state,
    new_push_count,
    new_last_update,
    new_usage,
    start,
    opt_kind,
    hp,
    now,
    lfu,
):
    """Write delta rows whose version is newer than the held one, keeping their versions.

    ``new_values`` has the arena's dtype. With ``has_state``, optimizer state, push counts and
    update times come from the delta (when the arena has state columns); otherwise new rows
    get fresh optimizer state and existing rows keep theirs. A non-empty ``new_usage`` sets
    eviction ranks. Times are unix microseconds. Resumable like ``resolve_rows``.
    Returns ``(status, position, applied, skipped)``.
    """
    capacity = values.shape[0]
    dim = values.shape[1]
    width = state.shape[1]
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
            if not insert(index, key, r, rng):
                give_back_row(scalars, row_keys, meta, r)
                return NEED_INDEX, i, applied, skipped
            scalars[LIVE] += 1
            row_keys[r] = key
            meta[r, USAGE_COL] = 0
            if new_usage.shape[0] == 0:
                touch(scalars, meta, r, 1, lfu)
            meta[r, PUSHES_COL] = 0
            meta[r, UPDATED_COL] = now
            if not has_state:
                init_state(opt_kind, hp, state[r])
        for j in range(dim):
            values[r, j] = new_values[i, j]
        if has_state:
            for j in range(width):
                state[r, j] = new_state[i, j]
            meta[r, PUSHES_COL] = new_push_count[i]
            meta[r, UPDATED_COL] = new_last_update[i]
        if new_usage.shape[0] != 0:
            meta[r, USAGE_COL] = new_usage[i]
        meta[r, VERSION_COL] = v
        if v > scalars[VERSION]:
            scalars[VERSION] = v
        applied += 1
    return DONE, keys.shape[0], applied, skipped
