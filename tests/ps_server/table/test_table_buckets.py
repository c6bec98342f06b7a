"""The cuckoo index: bucket hashes independent of routing, walks that fail change nothing."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_ps.routing import shard_of
from ps_server.table import cuckoo

NUM_BUCKETS = 1024


@pytest.mark.parametrize("num_shards", [2, 4, 8])
def test_keys_of_one_shard_spread_evenly_over_buckets(num_shards, rng):
    keys = rng.integers(0, 2**64, 400_000, dtype=np.uint64)
    mine = keys[shard_of(keys, num_shards) == 1]
    buckets = np.empty(len(mine), np.int64)
    cuckoo.bucket_of_keys(mine, NUM_BUCKETS, buckets)
    counts = np.bincount(buckets, minlength=NUM_BUCKETS)
    expected = len(mine) / NUM_BUCKETS
    # every bucket is used, none is crowded, and the counts are Poisson-like (chi-square)
    assert counts.min() > 0.5 * expected and counts.max() < 1.6 * expected
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < NUM_BUCKETS + 5 * np.sqrt(2 * NUM_BUCKETS)


def test_routing_hash_as_bucket_hash_would_crowd_buckets(rng):
    """The counter-example the seeded hashes avoid: mix64(key) % 8 == 1 fixes the low bits."""
    keys = rng.integers(0, 2**64, 100_000, dtype=np.uint64)
    mine = keys[shard_of(keys, 8) == 1]
    # shard_of(key, n) is mix64(key) % n, so for n a power of two its low bits are fixed
    used = np.unique(shard_of(mine, NUM_BUCKETS))
    assert len(used) == NUM_BUCKETS // 8


def test_failed_cuckoo_walk_leaves_the_index_unchanged():
    index = cuckoo.new_index(2)
    walk = cuckoo.new_walk(12345)
    inserted = 0
    key = 0
    while inserted < 8:  # fill both buckets completely
        if cuckoo.insert(index, np.uint64(key), key, walk):
            inserted += 1
        key += 1
    before = index.copy()
    assert not cuckoo.insert(index, np.uint64(10**9), 99, walk)
    np.testing.assert_array_equal(index, before)
