"""The reference loops ``table_bench`` measures the table against, and its timing helper.

Each is a plain Numba loop over precomputed row indices, doing part of what a table
kernel does with none of its logic: the lookup's copy (``gather``), the optimizer step
(``adagrad_rows``) and the step with the rest of the memory a push touches
(``adagrad_table_pattern``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from numba import njit

from ps_server.table.prefetch import prefetch_at, prefetch_row

PREFETCH_AHEAD = 8  # rows ahead whose lines are fetched, as the table's kernels do
BUCKETS_AHEAD = 16  # as the push kernel: buckets fetched 16 keys ahead, read 8 ahead


@njit(nogil=True, cache=True)
def gather(arena: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
    """The reference: copy rows at precomputed indices."""
    for i in range(idx.shape[0]):
        r = idx[i]
        for j in range(arena.shape[1]):
            out[i, j] = arena[r, j]


@njit(nogil=True, cache=True, error_model="numpy")
def adagrad_rows(
    arena: np.ndarray,
    idx: np.ndarray,
    grads: np.ndarray,
    lr: np.float32,
    eps: np.float32,
    ahead: int,
) -> None:
    """The apply reference: one Adagrad step on each row at precomputed indices; ``arena``
    rows hold the values, then the accumulator. With ``ahead`` > 0 each row's lines are
    fetched that many rows before its step."""
    dim = grads.shape[1]
    n = idx.shape[0]
    for i in range(n):
        if ahead > 0 and i + ahead < n:
            prefetch_row(arena, idx[i + ahead])
        w = arena[idx[i], :dim]
        s = arena[idx[i], dim:]
        g = grads[i]
        for j in range(dim):
            acc = s[j] + g[j] * g[j]
            s[j] = acc
            w[j] -= lr * g[j] / (np.sqrt(acc) + eps)


@njit(nogil=True, cache=True, error_model="numpy")
def adagrad_table_pattern(
    arena: np.ndarray,
    meta: np.ndarray,
    index: np.ndarray,
    idx: np.ndarray,
    buckets: np.ndarray,
    grads: np.ndarray,
    lr: np.float32,
    eps: np.float32,
    with_index: bool,
) -> None:
    """The prefetched apply reference plus the other memory a push touches per key, without
    any of its logic: the row's 32-byte metadata line (``meta``, fetched with the row, four
    columns written after the step) and, with ``with_index``, the key's two index buckets
    (``buckets[i]`` of ``index``, all zero: fetched ``BUCKETS_AHEAD`` keys ahead and read
    ``PREFETCH_AHEAD`` ahead, where the row's address waits for them)."""
    dim = grads.shape[1]
    n = idx.shape[0]
    for i in range(-BUCKETS_AHEAD, n):
        fetch = i + BUCKETS_AHEAD
        if with_index and 0 <= fetch < n:
            prefetch_at(index, buckets[fetch, 0], 0)
            prefetch_at(index, buckets[fetch, 1], 0)
        ahead = i + PREFETCH_AHEAD
        if 0 <= ahead < n:
            r = idx[ahead]
            if with_index:
                r += np.int64(index[buckets[ahead, 0], 4] | index[buckets[ahead, 1], 4])
            prefetch_row(arena, r)
            prefetch_row(meta, r)
        if i < 0:
            continue
        r = idx[i]
        w = arena[r, :dim]
        s = arena[r, dim:]
        g = grads[i]
        for j in range(dim):
            acc = s[j] + g[j] * g[j]
            s[j] = acc
            w[j] -= lr * g[j] / (np.sqrt(acc) + eps)
        meta[r, 0] = i
        meta[r, 1] = i
        meta[r, 2] += 1
        meta[r, 3] = i


def best_rates(
    runs: dict[str, Callable[[int], None]], batches: int, batch: int, repeats: int
) -> dict[str, float]:
    """Rows per second of each ``run(b)`` over ``batches`` batches, best of ``repeats``; the
    repeats of all runs are interleaved."""
    best = dict.fromkeys(runs, float("inf"))
    for run in runs.values():
        run(0)  # warm caches and compiled code
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.thread_time()
            for b in range(batches):
                run(b)
            best[name] = min(best[name], time.thread_time() - start)
    return {name: batches * batch / seconds for name, seconds in best.items()}
