"""Admission filter: a count-min sketch that says how often a key has been seen.

A sighting is one occurrence of a key in a training lookup (``find_or_insert``), duplicates
in a batch included, as a frequency filter counts occurrences in the examples; a push only
reads the count, so the usual lookup-then-push step counts each occurrence once.

The sketch is a ``uint16`` array of shape ``(DEPTH, width)`` (``width`` a power of two).
Counting uses the conservative update (only the smallest counters grow), which keeps the
overestimate of a count-min sketch low; counters saturate at 65535. A key may be admitted
early when it collides with frequent keys in every row, never late.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from monolith_ps.routing import mix64

DEPTH = 4
SEED_SKETCH = np.uint64(0xA4093822299F31D0)
_SATURATED = 65535


def new_sketch(width: int) -> np.ndarray:
    """An empty sketch of ``width`` counters per row."""
    return np.zeros((DEPTH, width), dtype=np.uint16)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _cells(key, mask):
    """Where ``key`` counts: cell ``(lo + d * step) & mask`` of row ``d``, for each depth."""
    h = mix64(key ^ SEED_SKETCH)
    return h & np.uint64(0xFFFFFFFF), (h >> np.uint64(32)) | np.uint64(1)


@njit(nogil=True, cache=True, error_model="numpy")
def count_and_estimate(sketch, key, increment):
    """Add ``increment`` sightings of ``key`` and return its estimated count."""
    mask = np.uint64(sketch.shape[1] - 1)
    lo, step = _cells(key, mask)
    target = min(estimate(sketch, key) + increment, _SATURATED)
    for d in range(DEPTH):
        i = (lo + np.uint64(d) * step) & mask
        if np.int64(sketch[d, i]) < target:
            sketch[d, i] = np.uint16(target)
    return target


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def estimate(sketch, key):
    """Estimated count of ``key``, without counting it."""
    mask = np.uint64(sketch.shape[1] - 1)
    lo, step = _cells(key, mask)
    low = np.int64(_SATURATED)
    for d in range(DEPTH):
        c = np.int64(sketch[d, (lo + np.uint64(d) * step) & mask])
        if c < low:
            low = c
    return low


@njit(nogil=True, cache=True, error_model="numpy")
def estimate_counts(sketch, keys, out):
    """Estimated count of each key, without counting (for tests and tools)."""
    for i in range(keys.shape[0]):
        out[i] = estimate(sketch, keys[i])
