"""Lookup kernels: find (read-only), resolve-or-insert through admission, gather rows.

Each walks its batch with software prefetch (see ``prefetch``): ``find`` in two passes
(``cuckoo.locate`` finds the rows of all keys, then a second pass copies rows fetched a few
keys ahead, from a float32 or a float16 arena), ``resolve_rows`` in one pass of three
staggered stages. Misses and keys not yet admitted read the table's default vector: the
initializer's vector for the key, or the learned default row.
"""

from __future__ import annotations

import numpy as np

from monolith_ps.half_rows import read_f32
from ps_server.optim.initializers import init_row
from ps_server.table.admission import count_and_estimate, estimate
from ps_server.table.cuckoo import (
    bucket_a,
    bucket_b,
    locate,
    prefetch_buckets,
    prefetch_displacement,
    probe,
    probe_buckets,
)
from ps_server.table.jit import hot_kernel
from ps_server.table.prefetch import LOOKAHEAD, prefetch_head, prefetch_row
from ps_server.table.rows import (
    DONE,
    HIGH,
    LIVE,
    NEED_INDEX,
    NEED_INDEX_ADMITTED,
    NEED_ROWS,
    SKETCH_KEYS,
    TICK_BITS,
    VERSION_COL,
    add_row,
    has_free_row,
    next_version,
    touch,
)

_EMPTY = np.int64(-1)
_BUCKETS_AHEAD = 16  # keys ahead whose buckets resolve_rows fetches
_PROBE_AHEAD = 8  # keys ahead it probes, fetching their rows
_NEW_ROWS_AHEAD = 8  # rows past the arena's high-water mark it fetches for inserts


@hot_kernel
def find(
    index, values, half_to_f32, keys, rows, out, found, init_kind, init_params, seed, default_row
):
    """Copy each key's row into ``out``; misses get the default vector. ``values`` is the
    float32 arena (values, then optimizer state in later columns) or a float16 arena stored
    as ``uint16`` bits, widened through the 65,536-entry table ``half_to_f32``. ``rows``
    (``len(keys)`` int64) is scratch for the located rows. Returns the number of hits."""
    locate(index, keys, rows)
    n = rows.shape[0]
    dim = out.shape[1]
    nbytes = dim * values.itemsize
    hits = 0
    for i in range(n + LOOKAHEAD):
        if i < n:
            found[i] = rows[i] >= 0
            if rows[i] >= 0:
                prefetch_head(values, rows[i], nbytes)
        j = i - LOOKAHEAD
        if j < 0:
            continue
        r = rows[j]
        if r >= 0:
            for c in range(dim):
                out[j, c] = read_f32(values, half_to_f32, r, c)
            hits += 1
        else:
            init_row(init_kind, init_params, seed, keys[j], default_row, out, j)
    return hits


@hot_kernel
def resolve_rows(
    index,
    max_live,
    walk,
    scalars,
    row_keys,
    meta,
    arena,
    keys,
    count_sightings,
    start,
    first_admitted,
    rows,
    sketch,
    admit_after,
    lfu,
    touch_rows,
    init_kind,
    init_params,
    seed,
    default_row,
    now,
    out,
):
    """Fill ``rows`` from ``start`` on with each key's row: record the access to each found
    row, insert admitted new keys (initialized value, next version), and leave -1 for keys
    not admitted yet. A new row's optimizer state is written at its first push (a row with
    push count 0 has none yet): inserting writes only the value.

    One pass in three stages per key, each ahead of the next: fetch the key's two buckets
    (``_BUCKETS_AHEAD`` keys ahead), probe them and fetch what the key will need, its row or,
    when both buckets are full, the buckets its neighbours could move to
    (``_PROBE_AHEAD`` keys ahead), then resolve it. A key missing at the probe is probed
    again when resolved: an earlier duplicate in the batch may have inserted it since.

    ``now`` is in unix microseconds. With ``count_sightings`` (a training lookup), each
    occurrence of a key without a row counts one sighting in ``sketch``, duplicates
    included; without it (a push), the sketch is only read, so a key is admitted only by
    lookups. With ``admit_after`` 1 every key is admitted at once. With ``lfu`` the sketch
    counts sightings whatever ``admit_after`` is, and a new row starts at the frequency the
    sketch estimates. Stops early with a status when the index or the arenas are full; the
    caller grows them and calls again from the returned position (after
    ``NEED_INDEX_ADMITTED``, with ``first_admitted`` set: that key already passed
    admission). Rows already found stay valid across growth: rows never move. Without
    ``touch_rows`` the caller records the accesses itself (``push.push_rows`` does, in
    its own pass).
    ``arena`` holds each row's values (``dim`` columns) followed by its optimizer state.
    With ``out`` of ``len(keys)`` rows (find-or-insert), each key's vector is written there
    too: its row, or the default vector while it is not admitted; pass zero rows to skip.
    Returns ``(status, position, inserted, rejected)``.
    """
    capacity = arena.shape[0]
    dim = default_row.shape[1]
    value_bytes = dim * arena.itemsize
    copy_out = out.shape[0] > 0
    n = keys.shape[0]
    inserted = 0
    rejected = 0
    mask = np.uint64(index.shape[0] - 1)
    b1 = np.uint64(0)  # the buckets of a key not found at its probe
    b2 = np.uint64(0)
    for i in range(start - _BUCKETS_AHEAD, n):
        fetch = i + _BUCKETS_AHEAD
        if fetch < n:
            prefetch_buckets(index, keys[fetch], mask)
        ahead = i + _PROBE_AHEAD
        if start <= ahead < n:
            r = probe(index, keys[ahead])
            rows[ahead] = r
            if r >= 0:
                if touch_rows:
                    prefetch_row(meta, r)
                if copy_out:
                    prefetch_head(arena, r, value_bytes)
            else:
                prefetch_displacement(index, keys[ahead], mask)
        if i < start:
            continue
        key = keys[i]
        r = rows[i]
        if r < 0:
            b1 = bucket_a(key, mask)
            b2 = bucket_b(key, mask)
            r = probe_buckets(index, key, b1, b2)
        if r >= 0:
            if touch_rows:
                touch(scalars, meta, r, 1, lfu)
            if copy_out:
                for c in range(dim):
                    out[i, c] = arena[r, c]
            rows[i] = r
            continue
        if scalars[LIVE] + 1 > max_live:
            return NEED_INDEX, i, inserted, rejected
        if not has_free_row(scalars, capacity):
            return NEED_ROWS, i, inserted, rejected
        seen = 1
        if admit_after > 1 or lfu:
            if count_sightings and not (first_admitted and i == start):
                seen = count_and_estimate(sketch, key, 1)
                if seen == 1:
                    scalars[SKETCH_KEYS] += 1
            else:
                seen = max(estimate(sketch, key), 1)
            if admit_after > 1 and seen < admit_after and not (first_admitted and i == start):
                rows[i] = _EMPTY
                rejected += 1
                if copy_out:
                    init_row(init_kind, init_params, seed, key, default_row, out, i)
                continue
        upcoming = scalars[HIGH] + 1 + _NEW_ROWS_AHEAD  # new rows are mostly taken in order
        if upcoming < capacity:
            prefetch_head(arena, upcoming, value_bytes)
        # LFU: a key enters with the sightings the sketch counted for it (this one included)
        usage = (seen - 1) << TICK_BITS if lfu else 0
        r = add_row(index, walk, scalars, row_keys, meta, key, b1, b2, now, usage)
        if r < 0:
            return NEED_INDEX_ADMITTED, i, inserted, rejected
        meta[r, VERSION_COL] = next_version(scalars)
        if touch_rows:
            touch(scalars, meta, r, 1, lfu)
        init_row(init_kind, init_params, seed, key, default_row, arena, r)
        if copy_out:
            for c in range(dim):
                out[i, c] = arena[r, c]
        rows[i] = r
        inserted += 1
    return DONE, n, inserted, rejected
