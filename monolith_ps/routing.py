"""The one hash of the cluster: ``mix64`` and the shard of a key.

Every component that needs to know which shard owns a feature ID imports
``shard_of`` from here: the client routes with it, the sync agent re-routes
delta rows with it, and the servers check ownership with it. Tables hash keys
into buckets with ``mix64`` too, but always over a seeded key, so bucket
positions are independent of the shard a key was routed to.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

MAX_SHARDS = 1 << 16
"""The most shards a cluster may have; bounds every per-shard array a request can size."""


@njit(inline="always", cache=True)
def mix64(x):
    """SplitMix64's finalizer: a bijective 64-bit mixer with full avalanche."""
    x = np.uint64(x)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(nogil=True, cache=True)
def _shard_of(keys, num_shards, out):
    n = np.uint64(num_shards)
    for i in range(keys.shape[0]):
        out[i] = mix64(keys[i]) % n


def shard_of(keys: np.ndarray, num_shards: int) -> np.ndarray:
    """Shard index (``int64``) owning each ``uint64`` key: ``mix64(key) % num_shards``."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    out = np.empty(keys.shape[0], dtype=np.int64)
    _shard_of(keys, num_shards, out)
    return out


@njit(nogil=True, cache=True)
def place_by_shard(keys, num_shards, rank, bounds):
    """Where each key goes when keys are grouped by shard, in input order within a shard.

    Fills ``rank`` (``int64``, one per key) with the key's position in the grouped order
    and ``bounds`` (``num_shards + 1`` zeros) so shard ``s`` owns positions
    ``bounds[s]:bounds[s + 1]``: one pass to count and one to place, no sort.
    """
    n = np.uint64(num_shards)
    shards = np.empty(keys.shape[0], dtype=np.int64)
    for i in range(keys.shape[0]):
        s = np.int64(mix64(keys[i]) % n)
        shards[i] = s
        bounds[s + 1] += 1
    for s in range(num_shards):
        bounds[s + 1] += bounds[s]
    fill = bounds[:num_shards].copy()
    for i in range(keys.shape[0]):
        s = shards[i]
        rank[i] = fill[s]
        fill[s] += 1


@njit(nogil=True, cache=True)
def _split_order(keys, num_shards, order, bounds):
    rank = np.empty(keys.shape[0], dtype=np.int64)
    place_by_shard(keys, num_shards, rank, bounds)
    for i in range(keys.shape[0]):
        order[rank[i]] = i


def split_by_shard(keys: np.ndarray, num_shards: int) -> list[np.ndarray]:
    """Indices of ``keys`` (``int64``) owned by each shard, in input order within a shard.

    ``keys[split_by_shard(keys, n)[s]]`` are the keys with ``shard_of(key, n) == s``.
    """
    _check_num_shards(num_shards)
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    order = np.empty(keys.shape[0], dtype=np.int64)
    bounds = np.zeros(num_shards + 1, dtype=np.int64)
    _split_order(keys, num_shards, order, bounds)
    return np.split(order, bounds[1:-1])


def _check_num_shards(num_shards: int) -> None:
    if not 1 <= num_shards <= MAX_SHARDS:
        raise ValueError(f"num_shards must be in 1..{MAX_SHARDS}, got {num_shards}")


def can_share_keys(
    source_shard: int, source_num_shards: int, shard_index: int, num_shards: int
) -> bool:
    """Whether any key owned by shard ``source_shard`` of ``source_num_shards`` can be owned
    by shard ``shard_index`` of ``num_shards`` (both reduce ``mix64(key)``, so only shards
    that agree modulo ``gcd`` of the counts share keys)."""
    common = math.gcd(source_num_shards, num_shards)
    return source_shard % common == shard_index % common
