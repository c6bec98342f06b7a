"""Lookup kernels: find (read-only), resolve-or-insert through admission, gather rows.

Misses and keys not yet admitted read the table's default vector: the initializer's vector
for the key, or the learned default row.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ps_server.optim.initializers import init_row
from ps_server.optim.optimizers import init_state
from ps_server.table.admission import count_and_estimate
from ps_server.table.cuckoo import insert, probe
from ps_server.table.rows import (
    DONE,
    LIVE,
    NEED_INDEX,
    NEED_INDEX_ADMITTED,
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

_EMPTY = np.int64(-1)


@njit(nogil=True, cache=True, error_model="numpy")
def find_f32(index, values, keys, out, found, init_kind, init_params, seed, default_row):
    """Copy each key's row (float32 arena) into ``out``; misses get the default vector.
    Returns the number of hits."""
    hits = 0
    dim = values.shape[1]
    for i in range(keys.shape[0]):
        r = probe(index, keys[i])
        if r >= 0:
            for j in range(dim):
                out[i, j] = values[r, j]
            found[i] = True
            hits += 1
        else:
            found[i] = False
            init_row(init_kind, init_params, seed, keys[i], default_row, out[i])
    return hits


@njit(nogil=True, cache=True, error_model="numpy")
def find_f16(
    index, values, half_to_f32, keys, out, found, init_kind, init_params, seed, default_row
):
    """:func:`find_f32` over a float16 arena stored as ``uint16`` bits, widened through the
    65,536-entry table ``half_to_f32``."""
    hits = 0
    dim = values.shape[1]
    for i in range(keys.shape[0]):
        r = probe(index, keys[i])
        if r >= 0:
            for j in range(dim):
                out[i, j] = half_to_f32[values[r, j]]
            found[i] = True
            hits += 1
        else:
            found[i] = False
            init_row(init_kind, init_params, seed, keys[i], default_row, out[i])
    return hits


@njit(nogil=True, cache=True, error_model="numpy")
def gather_rows(values, rows, keys, out, init_kind, init_params, seed, default_row):
    """``out[i] = values[rows[i]]``, or the default vector of ``keys[i]`` where ``rows[i] < 0``."""
    dim = values.shape[1]
    for i in range(rows.shape[0]):
        r = rows[i]
        if r >= 0:
            for j in range(dim):
                out[i, j] = values[r, j]
        else:
            init_row(init_kind, init_params, seed, keys[i], default_row, out[i])


@njit(nogil=True, cache=True, error_model="numpy")
def resolve_rows(
    index,
    max_live,
    rng,
    scalars,
    row_keys,
    meta,
    values,
    state,
    keys,
    counts,
    start,
    first_admitted,
    rows_out,
    sketch,
    admit_after,
    lfu,
    init_kind,
    init_params,
    seed,
    default_row,
    opt_kind,
    hp,
    now,
):
    """Row of each key from ``start`` on, inserting admitted new keys (initialized value and
    optimizer state, next version); ``rows_out[i] = -1`` for keys not admitted yet.

    ``now`` is in unix microseconds. Each key counts ``counts[i]`` sightings (1 each when
    ``counts`` is empty). Stops early with a status when the index or the arenas are full; the
    caller grows them and calls again from the returned position (after
    ``NEED_INDEX_ADMITTED``, with ``first_admitted`` set: that key already passed admission).
    Returns ``(status, position, inserted, rejected)``.
    """
    capacity = values.shape[0]
    inserted = 0
    rejected = 0
    for i in range(start, keys.shape[0]):
        key = keys[i]
        increment = 1 if counts.shape[0] == 0 else counts[i]
        r = probe(index, key)
        if r >= 0:
            touch(scalars, meta, r, increment, lfu)
            rows_out[i] = r
            continue
        if scalars[LIVE] + 1 > max_live:
            return NEED_INDEX, i, inserted, rejected
        if not has_free_row(scalars, capacity):
            return NEED_ROWS, i, inserted, rejected
        counted = admit_after > 1 and not (first_admitted and i == start)
        if counted and count_and_estimate(sketch, key, increment) < admit_after:
            rows_out[i] = _EMPTY
            rejected += 1
            continue
        r = take_row(scalars, row_keys)
        if not insert(index, key, r, rng):
            give_back_row(scalars, row_keys, meta, r)
            return NEED_INDEX_ADMITTED, i, inserted, rejected
        scalars[LIVE] += 1
        v = scalars[VERSION] + 1
        scalars[VERSION] = v
        row_keys[r] = key
        meta[r, VERSION_COL] = v
        meta[r, UPDATED_COL] = now
        meta[r, PUSHES_COL] = 0
        meta[r, USAGE_COL] = 0
        touch(scalars, meta, r, increment, lfu)
        init_row(init_kind, init_params, seed, key, default_row, values[r])
        init_state(opt_kind, hp, state[r])
        rows_out[i] = r
        inserted += 1
    return DONE, keys.shape[0], inserted, rejected
