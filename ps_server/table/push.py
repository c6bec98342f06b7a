"""The push kernel: find each distinct key's row and apply its optimizer step, in one pass.

A key already admitted whose row was removed (evicted, expired, deleted) gets it back
(initialized, next version) before its step; a key not admitted yet (the sketch's estimate
below ``admit_after``) gets no row, and its gradient trains the learned default row, if the
table has one. The pass fetches each key's index buckets ``_BUCKETS_AHEAD`` keys ahead of
its step, probes them ``_PROBE_AHEAD`` keys ahead and fetches the row and metadata the step
will touch, so each stage finds what it reads in cache.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ps_server.optim.initializers import init_row
from ps_server.optim.optimizers import frequency_lr_scale, init_state, optimizer_step
from ps_server.table.admission import estimate
from ps_server.table.cuckoo import bucket_a, bucket_b, prefetch_buckets, probe
from ps_server.table.jit import hot_kernel
from ps_server.table.prefetch import prefetch_row
from ps_server.table.rows import (
    DEFAULT_PUSHES,
    DEFAULT_VERSION,
    DONE,
    LIVE,
    NEED_INDEX,
    NEED_INDEX_ADMITTED,
    NEED_ROWS,
    PUSHES_COL,
    TICK_BITS,
    UPDATED_COL,
    VERSION_COL,
    add_row,
    has_free_row,
    next_version,
    touch,
)

_BUCKETS_AHEAD = 16  # keys ahead whose index buckets are fetched
_PROBE_AHEAD = 8  # keys ahead that are probed, their rows fetched
_MAX_PUSHES = 0xFFFFFFFF  # exported as uint32
# positions in ``totals``, which carries the counts across resumed calls
UPDATED = 0
PENDING = 1
INSERTED = 2


@hot_kernel
def push_rows(
    index,
    max_live,
    walk,
    scalars,
    row_keys,
    meta,
    arena,
    keys,
    grads,
    first,
    next_same,
    counts,
    start,
    first_admitted,
    rows,
    sketch,
    admit_after,
    lfu,
    init_kind,
    init_params,
    seed,
    default_row,
    default_state,
    opt_kind,
    hp,
    frequency_power,
    now,
    learn_default,
    scratch,
    totals,
):
    """One optimizer step per distinct key ``keys[u]`` from position ``start`` on, its
    gradient the sum of its occurrences in ``grads`` (``first``/``next_same``/``counts``
    from ``update.merge_push``); each updated row takes the next version and records the access
    (LRU/LFU); a row's first push writes its initial optimizer state first. ``rows`` is
    ``len(keys)`` int64 scratch. Pushes never count sightings: admission only reads the
    sketch. ``now`` is in unix microseconds; ``arena`` holds each row's values then its
    optimizer state. ``scratch`` is float32 ``(2, dim)``: a summed gradient, and the
    gradients of keys not admitted, which train the learned default row in one step at the
    end (``learn_default``); zero its second row before the first call. Stops early with a
    status when the index or the arenas are full; the caller grows them and calls again
    from the returned position (after ``NEED_INDEX_ADMITTED`` with ``first_admitted``). The
    counts add up in ``totals`` (``UPDATED``, ``PENDING``, ``INSERTED``). Returns
    ``(status, position)``."""
    capacity = arena.shape[0]
    dim = grads.shape[1]
    n = keys.shape[0]
    summed = 0
    pending_grad = 1
    mask = np.uint64(index.shape[0] - 1)
    for i in range(start - _BUCKETS_AHEAD, n):
        fetch = i + _BUCKETS_AHEAD
        if start <= fetch < n:
            prefetch_buckets(index, keys[fetch], mask)
        ahead = i + _PROBE_AHEAD
        if start <= ahead < n:
            r = probe(index, keys[ahead])
            rows[ahead] = r
            if r >= 0:
                prefetch_row(arena, r)
                prefetch_row(meta, r)
        if i < start:
            continue
        key = keys[i]
        r = rows[i]
        if r < 0:
            seen = estimate(sketch, key) if admit_after > 1 or lfu else 1
            if admit_after <= 1 or seen >= admit_after or (first_admitted and i == start):
                if scalars[LIVE] + 1 > max_live:
                    return NEED_INDEX, i
                if not has_free_row(scalars, capacity):
                    return NEED_ROWS, i
                usage = (max(seen, 1) - 1) << TICK_BITS if lfu else 0
                b1 = bucket_a(key, mask)
                b2 = bucket_b(key, mask)
                r = add_row(index, walk, scalars, row_keys, meta, key, b1, b2, now, usage)
                if r < 0:
                    return NEED_INDEX_ADMITTED, i
                meta[r, VERSION_COL] = next_version(scalars)
                init_row(init_kind, init_params, seed, key, default_row, arena, r)
                rows[i] = r
                totals[INSERTED] += 1
        if counts[i] == 1:
            g = grads
            gr = first[i]
        else:
            _add_occurrences(grads, first[i], next_same, scratch, summed)
            g = scratch
            gr = summed
        if r < 0:
            totals[PENDING] += 1
            if learn_default:
                for j in range(dim):
                    scratch[pending_grad, j] += g[gr, j]
            continue
        if meta[r, PUSHES_COL] == 0:  # first push: the row gets its optimizer state now
            init_state(opt_kind, hp, arena[r, dim:])
        scale = frequency_lr_scale(float(meta[r, PUSHES_COL]), frequency_power)
        optimizer_step(opt_kind, hp, arena[r, :dim], arena[r, dim:], g[gr], scale)
        meta[r, PUSHES_COL] = min(meta[r, PUSHES_COL] + counts[i], _MAX_PUSHES)
        touch(scalars, meta, r, counts[i], lfu)
        meta[r, UPDATED_COL] = now
        meta[r, VERSION_COL] = next_version(scalars)
        totals[UPDATED] += 1
    if learn_default and totals[PENDING] > 0:
        scale = frequency_lr_scale(float(scalars[DEFAULT_PUSHES]), frequency_power)
        optimizer_step(opt_kind, hp, default_row[0], default_state[0], scratch[pending_grad], scale)
        scalars[DEFAULT_PUSHES] += 1
        scalars[DEFAULT_VERSION] = next_version(scalars)
    return DONE, n


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
