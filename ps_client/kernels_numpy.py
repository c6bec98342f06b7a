"""The client's batch kernels in plain numpy: the same results as ``ps_client.kernels``
(Numba), for trainers that install the client without Numba.

Whole-array operations only; the one loop, in ``fids_of_bytes``, runs over byte
positions (the longest value's length), never over keys.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "HALF_TO_F32",
    "fids_of_bytes",
    "fids_of_ints",
    "mix64",
    "route_keys",
    "scatter_answer",
    "segment_sum",
]

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_VALUE_SEED = np.uint64(0x2545F4914F6CDD1D)
HALF_TO_F32 = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer over a ``uint64`` array (``monolith_ps.routing.mix64``)."""
    x = np.array(x, dtype=np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def route_keys(keys: np.ndarray, num_shards: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(grouped, bounds, position)`` as ``ps_client.kernels.route_keys``: the unique keys
    grouped by shard, in order of first appearance within a shard."""
    unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    appearance = np.argsort(first, kind="stable")
    in_order = unique[appearance]
    shard = (mix64(in_order) % np.uint64(num_shards)).astype(np.int64)
    by_shard = np.argsort(shard, kind="stable")
    bounds = np.zeros(num_shards + 1, dtype=np.int64)
    np.cumsum(np.bincount(shard, minlength=num_shards), out=bounds[1:])
    rank = np.empty(unique.size, dtype=np.int64)
    rank[appearance[by_shard]] = np.arange(unique.size, dtype=np.int64)
    return in_order[by_shard], bounds, rank[inverse.reshape(-1)]


def _rows_in(start: int, stop: int, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    picked = np.flatnonzero((position >= start) & (position < stop))
    return picked, position[picked] - start


def scatter_answer(
    source: np.ndarray, half_to_f32: np.ndarray, start: int, position: np.ndarray, out: np.ndarray
) -> None:
    """``out[i] = source[position[i] - start]`` where ``position[i]`` falls in the part; a
    float16 answer seen as ``uint16`` bits is widened through ``half_to_f32``."""
    picked, rows = _rows_in(start, start + source.shape[0], position)
    values = source[rows]
    out[picked] = half_to_f32[values] if source.dtype == np.uint16 else values


def segment_sum(rows: np.ndarray, grads: np.ndarray, out: np.ndarray) -> None:
    """``out[rows[i]] += grads[i]`` for every i, in order; ``out`` starts zeroed."""
    np.add.at(out, rows, grads)


def fids_of_ints(slots: np.ndarray, values: np.ndarray, value_bits: int, out: np.ndarray) -> None:
    """``slot << value_bits | hash(value) & mask`` for uint64 ``slots`` and ``values``."""
    mask = (np.uint64(1) << np.uint64(value_bits)) - np.uint64(1)
    out[:] = (slots << np.uint64(value_bits)) | (mix64(values ^ _VALUE_SEED) & mask)


def fids_of_bytes(
    slots: np.ndarray, buffer: np.ndarray, offsets: np.ndarray, value_bits: int, out: np.ndarray
) -> None:
    """Like ``fids_of_ints`` for byte strings ``buffer[offsets[i]:offsets[i + 1]]`` (FNV-1a)."""
    starts, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(lengths.size, _FNV_OFFSET, dtype=np.uint64)
    for b in range(int(lengths.max(initial=0))):
        live = np.flatnonzero(lengths > b)
        h[live] = (h[live] ^ buffer[starts[live] + b].astype(np.uint64)) * _FNV_PRIME
    mask = (np.uint64(1) << np.uint64(value_bits)) - np.uint64(1)
    out[:] = (slots << np.uint64(value_bits)) | (mix64(h ^ _VALUE_SEED) & mask)
