"""Kernels that move cold rows between the cold tier's file and memory (see ``cold``):
``pread``/``pwrite`` called from compiled code, so a batch of rows costs one system call a
row (or a run of adjacent rows), never a Python step a row.
"""

from __future__ import annotations

from numba import types

from ps_server.table.jit import hot_kernel

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
