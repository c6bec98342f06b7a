"""Removal kernels (delete, expiry, eviction, applied tombstones) and the since-version scans.

Every row that leaves the table (delete, expiry, eviction, a delta's tombstone) leaves a
tombstone, so deltas carry removals to serving replicas. The removing kernels are resumable:
they stop with ``NEED_LOG`` when the tombstone log must grow and continue from the returned
position.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ps_server.table.cuckoo import probe
from ps_server.table.jit import hot_kernel
from ps_server.table.rows import (
    DONE,
    HIGH,
    LOG_COUNT,
    LOG_START,
    NEED_LOG,
    UPDATED_COL,
    VERSION,
    VERSION_COL,
    drop_row,
    log_has_room,
    next_version,
)


@njit(nogil=True, cache=True, error_model="numpy")
def rows_since(meta, high, since):
    """Rows below ``high`` with ``version > since`` (live rows have version >= 1)."""
    count = 0
    for r in range(high):
        if meta[r, VERSION_COL] > since:
            count += 1
    out = np.empty(count, dtype=np.int64)
    k = 0
    for r in range(high):
        if meta[r, VERSION_COL] > since:
            out[k] = r
            k += 1
    return out


@njit(nogil=True, cache=True, error_model="numpy")
def tombstones_since(scalars, log_keys, log_versions, since):
    """Keys and versions of logged tombstones with ``version > since``, oldest first."""
    cap = log_keys.shape[0]
    start = scalars[LOG_START]
    count = scalars[LOG_COUNT]
    n = 0
    for k in range(count):
        if log_versions[(start + k) % cap] > since:
            n += 1
    keys = np.empty(n, dtype=np.uint64)
    vers = np.empty(n, dtype=np.int64)
    n = 0
    for k in range(count):
        p = (start + k) % cap
        if log_versions[p] > since:
            keys[n] = log_keys[p]
            vers[n] = log_versions[p]
            n += 1
    return keys, vers


@njit(nogil=True, cache=True, error_model="numpy")
def _drop_at_next_version(index, scalars, row_keys, meta, log_keys, log_versions, log_limit, r):
    """Drop live row ``r`` with a tombstone at the table's next version; False, changing
    nothing, when the tombstone log is full and may still grow (the caller returns
    ``NEED_LOG``)."""
    if not log_has_room(scalars, log_keys, log_limit):
        return False
    drop_row(index, scalars, row_keys, meta, log_keys, log_versions, r, next_version(scalars))
    return True


@hot_kernel
def delete_keys(index, scalars, row_keys, meta, log_keys, log_versions, log_limit, keys, start):
    """Delete each present key (next version, tombstone). Returns ``(status, position, n)``."""
    deleted = 0
    for i in range(start, keys.shape[0]):
        r = probe(index, keys[i])
        if r < 0:
            continue
        if not _drop_at_next_version(
            index, scalars, row_keys, meta, log_keys, log_versions, log_limit, r
        ):
            return NEED_LOG, i, deleted
        deleted += 1
    return DONE, keys.shape[0], deleted


@hot_kernel
def apply_tombstones(
    index, scalars, row_keys, meta, log_keys, log_versions, log_limit, keys, tomb_versions, start
):
    """Delete each key whose held version is <= its tombstone's version, logging the tombstone
    with that version. Returns ``(status, position, n)``."""
    deleted = 0
    for i in range(start, keys.shape[0]):
        r = probe(index, keys[i])
        v = tomb_versions[i]
        if r < 0 or meta[r, VERSION_COL] > v:
            continue
        if not log_has_room(scalars, log_keys, log_limit):
            return NEED_LOG, i, deleted
        drop_row(index, scalars, row_keys, meta, log_keys, log_versions, r, v)
        if v > scalars[VERSION]:
            scalars[VERSION] = v
        deleted += 1
    return DONE, keys.shape[0], deleted


@hot_kernel
def expire_rows(index, scalars, row_keys, meta, log_keys, log_versions, log_limit, cutoff, start):
    """Drop live rows last updated before ``cutoff`` (unix microseconds), scanning rows from
    ``start``. Returns ``(status, next_row, n)``."""
    expired = 0
    for r in range(start, scalars[HIGH]):
        if meta[r, VERSION_COL] == 0 or meta[r, UPDATED_COL] >= cutoff:
            continue
        if not _drop_at_next_version(
            index, scalars, row_keys, meta, log_keys, log_versions, log_limit, r
        ):
            return NEED_LOG, r, expired
        expired += 1
    return DONE, scalars[HIGH], expired


@hot_kernel
def evict_rows(index, scalars, row_keys, meta, log_keys, log_versions, log_limit, rows, start):
    """Drop the given live rows (chosen by the caller's policy). Returns
    ``(status, position, n)``."""
    evicted = 0
    for i in range(start, rows.shape[0]):
        r = rows[i]
        if meta[r, VERSION_COL] == 0:
            continue
        if not _drop_at_next_version(
            index, scalars, row_keys, meta, log_keys, log_versions, log_limit, r
        ):
            return NEED_LOG, i, evicted
        evicted += 1
    return DONE, rows.shape[0], evicted
