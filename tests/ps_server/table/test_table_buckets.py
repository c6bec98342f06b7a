"""The cuckoo index: bucket hashes independent of routing, walks that fail change nothing."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_ps.routing import mix64, shard_of
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


def split_reference(index: np.ndarray) -> np.ndarray:
    """The doubled index built entry by entry in Python: each bucket's entries, in slot
    order, go to the bucket of the new size given by the hash that placed them."""
    half = index.shape[0]
    grown = np.zeros((2 * half, 2 * cuckoo.SLOTS), dtype=np.uint64)
    filled = [0] * (2 * half)
    for b in range(half):
        for s in range(cuckoo.SLOTS):
            key, value = index[b, s], index[b, cuckoo.SLOTS + s]
            if value == 0:
                continue
            h = int(mix64(key ^ cuckoo.SEED_A))
            if h % half != b:
                h = int(mix64(key ^ cuckoo.SEED_B))
            dest = h % (2 * half)
            grown[dest, filled[dest]] = key
            grown[dest, cuckoo.SLOTS + filled[dest]] = value
            filled[dest] += 1
    return grown


@pytest.mark.parametrize("num_buckets", [1, 2, 64, 1 << 14])
def test_doubling_matches_the_reference_and_finds_every_key(num_buckets, rng):
    """Both ways an index doubles (a new array below a huge page, in place in its arena from
    there on) give the reference's buckets, slot for slot, holes of removed keys included."""
    index = cuckoo.new_index(num_buckets)
    arena = cuckoo.new_index_arena()
    walk = cuckoo.new_walk(7)
    keys = np.unique(rng.integers(0, 2**64, int(3.4 * num_buckets) + 1, dtype=np.uint64))
    for row, key in enumerate(keys):
        assert cuckoo.insert(index, key, row, walk)
    for key in keys[::5]:
        cuckoo.remove(index, key)
    want = split_reference(index)
    grown = cuckoo.doubled(index, arena)
    np.testing.assert_array_equal(grown, want)
    twice = cuckoo.doubled(grown, arena)
    np.testing.assert_array_equal(twice, split_reference(want))
    rows = np.empty(len(keys), np.int64)
    cuckoo.locate(twice, keys, rows)
    expected = np.arange(len(keys))
    expected[::5] = -1
    np.testing.assert_array_equal(rows, expected)
