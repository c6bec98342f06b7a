"""Kernels that move cold rows between the cold tier's file and memory (see ``cold``):
``pread``/``pwrite`` called from compiled code, so a batch of rows costs one system call a
row (or a run of adjacent rows), never a Python step a row.
"""

from __future__ import annotations

import numpy as np
from numba import types

from ps_server.table.cuckoo import SLOTS, bucket_a, bucket_b
from ps_server.table.jit import hot_kernel
from ps_server.table.rows import META_COLUMNS, VERSION_COL

PREAD = types.ExternalFunction(
    "pread", types.int64(types.int32, types.voidptr, types.uint64, types.int64)
)


@hot_kernel
def read_rows(fd, row_bytes, slots, out):
    """Read the rows at ascending ``slots`` into ``out`` (contiguous), one ``pread`` per run
    of adjacent slots; the rows read, or -1 on a short read."""
    n = slots.shape[0]
    i = 0
    while i < n:
        j = i + 1
        while j < n and slots[j] == slots[j - 1] + 1:
            j += 1
        size = (j - i) * row_bytes
        if PREAD(fd, out[i].ctypes.data, size, slots[i] * row_bytes) != size:
            return -1
        i = j
    return n


@hot_kernel
def read_row(fd, row_bytes, slot, dst):
    """Read the row at ``slot`` into the row ``dst``; False on a short read."""
    return PREAD(fd, dst.ctypes.data, row_bytes, slot * row_bytes) == row_bytes


@hot_kernel
def repoint(index, key, row):
    """Point ``key``'s index entry (it must be present) at ``row``."""
    mask = np.uint64(index.shape[0] - 1)
    b = bucket_a(key, mask)
    for _ in range(2):
        for s in range(SLOTS):
            if index[b, s] == key and index[b, SLOTS + s] != 0:
                index[b, SLOTS + s] = np.uint64(row + 1)
                return True
        b = bucket_b(key, mask)
    return False


@hot_kernel
def compact_segment(index, keys, meta, buffer, first):
    """Move the live rows of the segment starting at slot ``first``, whose rows ``buffer``
    holds, to its start (in ``buffer``, ``keys``, ``meta`` and the index); returns them."""
    used = 0
    for r in range(buffer.shape[0]):
        c = first + r
        if meta[c, VERSION_COL] == 0:
            continue
        if r != used:
            d = first + used
            for k in range(buffer.shape[1]):
                buffer[used, k] = buffer[r, k]
            for k in range(META_COLUMNS):
                meta[d, k] = meta[c, k]
            keys[d] = keys[c]
            meta[c, VERSION_COL] = 0
            if not repoint(index, keys[d], d):
                return -1
        used += 1
    return used
