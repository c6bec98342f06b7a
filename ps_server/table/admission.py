"""Admission filter: a count-min sketch that says how often a key has been seen.

A sighting is one occurrence of a key in a training lookup (``find_or_insert``), duplicates
in a batch included, as a frequency filter counts occurrences in the examples; a push only
reads the count, so the usual lookup-then-push step counts each occurrence once.

The sketch is a ``uint16`` array of shape ``(DEPTH, total)`` holding one or more *stages*
side by side: stage ``k`` is ``base << k`` counters wide (``base`` a power of two, the lowest
set bit of ``total``), so ``total = base * (2**stages - 1)``; a sketch of one power-of-two
width is one stage. A key's estimate is the sum over stages of its count-min estimate in
each; sightings are counted in the last stage only. A table that sizes its sketch to its
keys appends a stage twice as wide when the last one has counted new keys for a quarter of
its width (:func:`with_stage`): the counts already made stay where they are, each stage
shares its counters among few keys, and memory follows the keys seen (under twice the last
stage). Counting uses the conservative update (only the smallest counters grow), which
keeps the overestimate low; counts saturate at 65535. A key may be admitted early when it
collides with other keys in every row of a stage, never late.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from monolith_ps.routing import mix64

DEPTH = 4
AUTO_MIN_WIDTH = 1 << 10
AUTO_MAX_WIDTH = 1 << 20
SEED_SKETCH = np.uint64(0xA4093822299F31D0)
_SATURATED = 65535


def new_sketch(width: int) -> np.ndarray:
    """An empty one-stage sketch of ``width`` counters per row."""
    return np.zeros((DEPTH, width), dtype=np.uint16)


def stages(total: int) -> list[tuple[int, int]]:
    """``(offset, width)`` of each stage of a sketch ``total`` counters wide; ValueError
    when ``total`` is no sum of doubling powers of two."""
    base = total & -total
    if total < 1 or (total // base + 1) & (total // base):
        raise ValueError(f"a sketch of {total} counters a row is not a sum of doubling stages")
    out, offset, width = [], 0, base
    while offset < total:
        out.append((offset, width))
        offset, width = offset + width, 2 * width
    return out


def with_stage(sketch: np.ndarray, width: int) -> np.ndarray:
    """``sketch`` with empty stages appended, doubling, until the last is ``width`` wide."""
    last = stages(sketch.shape[1])[-1][1]
    extra = []
    while last < width:
        last *= 2
        extra.append(new_sketch(last))
    return np.ascontiguousarray(np.concatenate([sketch, *extra], axis=1)) if extra else sketch


def as_width(sketch: np.ndarray, width: int) -> np.ndarray:
    """A one-stage sketch of ``width`` whose estimates are never below ``sketch``'s: each
    stage is folded (cells that map to one cell are added) or repeated to ``width``, and the
    stages are added, saturating."""
    total = np.zeros((sketch.shape[0], width), dtype=np.uint64)
    for offset, w in stages(sketch.shape[1]):
        stage = sketch[:, offset : offset + w].astype(np.uint64)
        if w >= width:
            total += stage.reshape(sketch.shape[0], w // width, width).sum(axis=1)
        else:
            total += np.tile(stage, (1, width // w))
    return np.minimum(total, _SATURATED).astype(np.uint16)


def last_stage(sketch: np.ndarray) -> np.ndarray:
    """The stage that counts sightings (a view)."""
    offset, width = stages(sketch.shape[1])[-1]
    return sketch[:, offset : offset + width]


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _cells(key):
    """Where ``key`` counts: cell ``(lo + d * step) & (width - 1)`` of row ``d`` of a stage."""
    h = mix64(key ^ SEED_SKETCH)
    return h & np.uint64(0xFFFFFFFF), (h >> np.uint64(32)) | np.uint64(1)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _stage_min(sketch, offset, width, lo, step):
    mask = np.uint64(width - 1)
    low = np.int64(_SATURATED)
    for d in range(DEPTH):
        c = np.int64(sketch[d, offset + np.int64((lo + np.uint64(d) * step) & mask)])
        if c < low:
            low = c
    return low


@njit(nogil=True, cache=True, error_model="numpy")
def count_and_estimate(sketch, key, increment):
    """Add ``increment`` sightings of ``key`` (in the last stage) and return its estimated
    count."""
    total = sketch.shape[1]
    width = total & -total
    lo, step = _cells(key)
    offset = 0
    past = np.int64(0)
    while offset + width < total:
        past += _stage_min(sketch, offset, width, lo, step)
        offset += width
        width *= 2
    target = min(past + _stage_min(sketch, offset, width, lo, step) + increment, _SATURATED)
    want = target - past
    mask = np.uint64(width - 1)
    for d in range(DEPTH):
        i = offset + np.int64((lo + np.uint64(d) * step) & mask)
        if np.int64(sketch[d, i]) < want:
            sketch[d, i] = np.uint16(want)
    return target


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def estimate(sketch, key):
    """Estimated count of ``key``, without counting it."""
    total = sketch.shape[1]
    width = total & -total
    lo, step = _cells(key)
    offset = 0
    count = np.int64(0)
    while offset < total:
        count += _stage_min(sketch, offset, width, lo, step)
        offset += width
        width *= 2
    return min(count, np.int64(_SATURATED))


@njit(nogil=True, cache=True, error_model="numpy")
def estimate_counts(sketch, keys, out):
    """Estimated count of each key, without counting (for tests and tools)."""
    for i in range(keys.shape[0]):
        out[i] = estimate(sketch, keys[i])
