"""Numba kernels of the client: gradient segment-sum and feature-ID hashing."""

from __future__ import annotations

import numpy as np
from numba import njit

from monolith_ps.half_rows import HALF_TO_F32 as HALF_TO_F32
from monolith_ps.half_rows import read_f32
from monolith_ps.routing import mix64, place_by_shard

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
# Keeps value hashes independent of the routing hash of the resulting fid.
_VALUE_SEED = np.uint64(0x2545F4914F6CDD1D)
# Dedup probes must not follow the routing hash, or each shard's keys would cluster.
_DEDUP_SEED = np.uint64(0x9E3779B97F4A7C15)


@njit(nogil=True, cache=True)
def route_keys(keys, num_shards):
    """Deduplicate ``keys`` and group the unique ones by shard (``mix64(key) % num_shards``).

    Returns ``(grouped, bounds, position)``: the unique keys with shard 0's first (in
    order of first appearance within a shard), ``bounds`` (``num_shards + 1``) so shard
    ``s`` owns ``grouped[bounds[s]:bounds[s + 1]]``, and ``position`` so that
    ``grouped[position[i]] == keys[i]``. One pass of open addressing, no sort.
    """
    n = keys.shape[0]
    capacity = 16
    while capacity < 2 * n:
        capacity *= 2
    mask = np.uint64(capacity - 1)
    slots = np.full(capacity, -1, dtype=np.int64)
    unique = np.empty(n, dtype=np.uint64)
    inverse = np.empty(n, dtype=np.int64)
    count = 0
    for i in range(n):
        key = keys[i]
        h = mix64(key ^ _DEDUP_SEED) & mask
        while True:
            slot = slots[h]
            if slot == -1:
                slots[h] = count
                unique[count] = key
                inverse[i] = count
                count += 1
                break
            if unique[slot] == key:
                inverse[i] = slot
                break
            h = (h + np.uint64(1)) & mask
    bounds = np.zeros(num_shards + 1, dtype=np.int64)
    unique = unique[:count]
    if num_shards == 1:  # one shard: the unique keys are already in their order
        bounds[1] = count
        return unique, bounds, inverse
    rank = np.empty(count, dtype=np.int64)
    place_by_shard(unique, num_shards, rank, bounds)
    grouped = np.empty(count, dtype=np.uint64)
    for j in range(count):
        grouped[rank[j]] = unique[j]
    position = np.empty(n, dtype=np.int64)
    for i in range(n):
        position[i] = rank[inverse[i]]
    return grouped, bounds, position


@njit(nogil=True, cache=True)
def scatter_answer(source, half_to_f32, start, position, out):
    """``out[i] = source[position[i] - start]`` for every ``i`` whose ``position[i]`` falls
    in ``[start, start + len(source))``: one shard's answer, read where it arrived, copied
    straight into the caller's float32 rows. A float32 answer is copied; a float16 answer,
    seen as ``uint16`` bits, is widened through the 65,536-entry table ``half_to_f32``
    (:data:`HALF_TO_F32`)."""
    dim = source.shape[1]
    stop = start + source.shape[0]
    for i in range(position.shape[0]):
        p = position[i]
        if start <= p < stop:
            r = p - start
            for j in range(dim):
                out[i, j] = read_f32(source, half_to_f32, r, j)


@njit(nogil=True, cache=True)
def segment_sum(rows, grads, out):
    """``out[rows[i]] += grads[i]`` for every i; ``out`` starts zeroed."""
    dim = grads.shape[1]
    for i in range(rows.shape[0]):
        r = rows[i]
        for j in range(dim):
            out[r, j] += grads[i, j]


@njit(nogil=True, cache=True)
def fids_of_ints(slots, values, value_bits, out):
    """``slot << value_bits | hash(value) & mask`` for uint64 ``slots`` and ``values``."""
    mask = (np.uint64(1) << np.uint64(value_bits)) - np.uint64(1)
    shift = np.uint64(value_bits)
    for i in range(values.shape[0]):
        out[i] = (slots[i] << shift) | (mix64(values[i] ^ _VALUE_SEED) & mask)


@njit(nogil=True, cache=True)
def fids_of_bytes(slots, buffer, offsets, value_bits, out):
    """Like ``fids_of_ints`` for byte strings ``buffer[offsets[i]:offsets[i + 1]]`` (FNV-1a)."""
    mask = (np.uint64(1) << np.uint64(value_bits)) - np.uint64(1)
    shift = np.uint64(value_bits)
    for i in range(offsets.shape[0] - 1):
        h = _FNV_OFFSET
        for b in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(buffer[b])) * _FNV_PRIME
        out[i] = (slots[i] << shift) | (mix64(h ^ _VALUE_SEED) & mask)
