"""Initial values of embedding rows, reproducible per (key, seed).

Each row draws from a counter-based splitmix64 stream seeded by its key and the table seed,
so the same key always starts from the same vector, on any server, in any order, without
storing anything. ``normal`` sums the four 16-bit lanes of one 64-bit draw (Irwin-Hall with
four terms, centred and scaled to unit variance, bounded at about 3.46 sigma): an order of
magnitude cheaper than Box-Muller, so initializing a row costs about as much as copying one.
``learned`` copies a per-table default row that the table trains from the gradients of keys
not yet admitted.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from monolith_ps.optimizer_specs import CONSTANT, LEARNED, UNIFORM, ZEROS
from monolith_ps.routing import mix64

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_INIT_SEED = np.uint64(0x5851F42D4C957F2D)
# sum of four uniform 16-bit lanes: mean 4 * 65535 / 2, variance 4 * (65536**2 - 1) / 12
_LANES_MEAN = 131070
_LANES_INV_STD = 1.0 / np.sqrt(4.0 * (65536.0**2 - 1.0) / 12.0)
_TWO_POW_MINUS_53 = 1.0 / 9007199254740992.0
_ALTERNATE_LANES = np.uint64(0x0000FFFF0000FFFF)
_LOW_HALF = np.uint64(0xFFFFFFFF)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def key_stream_seed(key, seed):
    """The stream position of ``key`` under table seed ``seed``."""
    return mix64(np.uint64(key) ^ mix64(np.uint64(seed) ^ _INIT_SEED))


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def init_row(kind, params, seed, key, default_row, out, row):
    """Write the initial value of ``key``'s row into the first ``dim`` columns of row ``row``
    of ``out`` (float32); ``default_row`` is ``(1, dim)`` (learned tables) or ``(0, dim)``."""
    dim = default_row.shape[1]
    if kind == ZEROS:
        for j in range(dim):
            out[row, j] = np.float32(0.0)
    elif kind == CONSTANT:
        c = np.float32(params[0])
        for j in range(dim):
            out[row, j] = c
    elif kind == LEARNED:
        for j in range(dim):
            out[row, j] = default_row[0, j]
    else:
        base = key_stream_seed(key, seed)
        if kind == UNIFORM:
            low = params[0]
            width = (params[1] - params[0]) * _TWO_POW_MINUS_53
            counter = base
            for j in range(dim):
                counter += _GOLDEN  # the stream's j-th position, base + (j + 1) * golden
                z = mix64(counter)
                out[row, j] = np.float32(low + float(z >> np.uint64(11)) * width)
        else:
            mean = np.float32(params[0])
            scale = np.float32(params[1] * _LANES_INV_STD)
            counter = base
            for j in range(dim):
                counter += _GOLDEN
                z = mix64(counter)
                # the four 16-bit lanes summed in two steps: lanes 0+1 and 2+3 side by side
                # in the two 32-bit halves, then the halves (fewer operations per value)
                pairs = (z & _ALTERNATE_LANES) + ((z >> np.uint64(16)) & _ALTERNATE_LANES)
                total = (pairs + (pairs >> np.uint64(32))) & _LOW_HALF
                out[row, j] = mean + scale * np.float32(np.int64(total) - _LANES_MEAN)


@njit(nogil=True, cache=True, error_model="numpy")
def init_rows(kind, params, seed, keys, default_row, out):
    """Initial values of a batch of keys (used by tests and tools); ``default_row`` is
    ``(1, dim)``."""
    for i in range(keys.shape[0]):
        init_row(kind, params, seed, keys[i], default_row, out, i)
