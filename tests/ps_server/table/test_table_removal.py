"""Expiry by TTL, LRU and LFU eviction, and the bounded tombstone log."""

from __future__ import annotations

import numpy as np


def test_expire_drops_rows_not_updated_within_ttl(make_table):
    table = make_table(ttl_seconds=100.0)
    old = np.array([1, 2, 3], np.uint64)
    fresh = np.array([4, 5], np.uint64)
    table.find_or_insert(old, now=1000.0)
    table.find_or_insert(fresh, now=1050.0)
    table.apply_gradients(old[:1], np.ones((1, 4), np.float32), now=1090.0)
    # lookups do not refresh the update time
    table.find_or_insert(old[1:], now=1099.0)
    assert table.expire(now=1100.5) == 2
    assert sorted(table.keys().tolist()) == [1, 4, 5]
    d = table.export_since(0)
    assert sorted(d.tombstone_keys.tolist()) == [2, 3]
    assert table.stats()["expired"] == 2
    assert table.expire(now=1100.5) == 0
    assert table.expire(now=1200.0) == 3 and len(table) == 0


def test_expire_without_ttl_does_nothing(make_table):
    table = make_table()
    table.find_or_insert(np.arange(10, dtype=np.uint64), now=0.0)
    assert table.expire(now=1e12) == 0 and len(table) == 10


def test_lru_evicts_least_recently_used_rows(make_table, rng):
    table = make_table(max_rows=50, eviction="lru")
    ref: dict[int, int] = {}  # key -> last access clock
    clock = 0
    for _ in range(40):
        keys = rng.integers(0, 120, rng.integers(1, 20)).astype(np.uint64)
        table.find_or_insert(keys)
        for k in keys.tolist():
            clock += 1
            ref[k] = clock
        while len(ref) > 50:
            del ref[min(ref, key=ref.get)]
        assert sorted(table.keys().tolist()) == sorted(ref)
    assert table.stats()["evicted"] == table.stats()["inserts"] - 50


def test_lfu_evicts_least_frequently_used_rows(make_table):
    table = make_table(max_rows=3, eviction="lfu")
    table.find_or_insert(np.array([1, 1, 1, 2, 2, 3], np.uint64))
    table.find_or_insert(np.array([4], np.uint64))  # 3 and 4 used once: the older goes
    assert sorted(table.keys().tolist()) == [1, 2, 4]
    table.find_or_insert(np.array([5, 5, 5, 5], np.uint64))  # 4 is now the least used
    assert sorted(table.keys().tolist()) == [1, 2, 5]
    table.find_or_insert(np.array([6, 6, 6, 6, 6], np.uint64))
    assert sorted(table.keys().tolist()) == [1, 5, 6]
    d = table.export_since(0)
    assert sorted(d.tombstone_keys.tolist()) == [2, 3, 4]


def test_pushes_count_for_lfu_and_evictions_reach_deltas(make_table):
    table = make_table(max_rows=2, eviction="lfu")
    table.find_or_insert(np.array([1, 2], np.uint64))
    table.apply_gradients(np.array([1, 1, 1], np.uint64), np.ones((3, 4), np.float32))
    before = table.version
    table.find_or_insert(np.array([3, 3], np.uint64))
    assert sorted(table.keys().tolist()) == [1, 3]
    d = table.export_since(before)
    assert d.tombstone_keys.tolist() == [2] and d.keys.tolist() == [3]


def test_tombstone_log_trimming_makes_old_exports_full(make_table):
    table = make_table(tombstone_log_size=5)
    keys = np.arange(20, dtype=np.uint64)
    table.find_or_insert(keys)  # versions 1..20
    table.delete(keys[:3])  # 21..23
    d = table.export_since(20)
    assert not d.full and d.tombstone_keys.tolist() == [0, 1, 2]
    table.delete(keys[3:10])  # 24..30: the log keeps 26..30
    assert table.export_since(25).full is False
    assert table.export_since(25).tombstone_keys.tolist() == [5, 6, 7, 8, 9]
    for since in (0, 20, 24):
        full = table.export_since(since)
        assert full.full and len(full.tombstone_keys) == 0
        assert sorted(full.keys.tolist()) == list(range(10, 20))
    assert table.export_since(table.version + 1).full  # a cursor from the future


def test_deleting_absent_keys_changes_nothing(make_table):
    table = make_table()
    table.find_or_insert(np.array([1], np.uint64))
    assert table.delete(np.array([2, 3], np.uint64)) == 0
    assert table.version == 1 and len(table.export_since(0).tombstone_keys) == 0


def _used(table, keys, times):
    for _ in range(times):
        table.find_or_insert(np.asarray(keys, np.uint64))


def test_lfu_a_key_that_becomes_hot_keeps_a_row(make_table):
    table = make_table(max_rows=100, eviction="lfu")
    _used(table, np.arange(100), 2)  # full, every row used twice
    newcomer = np.array([1000], np.uint64)
    for _ in range(10):
        table.find_or_insert(newcomer)
    assert table.find(newcomer)[1].all(), "the newcomer never kept a row"
    # it entered with the sightings the sketch counted: evicted once, then kept
    assert table.stats()["evicted"] <= 2
    assert table.export_since(0).tombstone_keys.tolist().count(1000) <= 1


def test_lfu_one_off_keys_do_not_evict_hot_rows(make_table):
    table = make_table(max_rows=50, eviction="lfu")
    hot = np.arange(50)
    _used(table, hot, 3)
    for step in range(40):  # 10 one-offs a step, hot rows used meanwhile, over several agings
        table.find_or_insert(np.arange(10_000 + 10 * step, 10_010 + 10 * step, dtype=np.uint64))
        table.find_or_insert(hot.astype(np.uint64))
    assert sorted(table.keys().tolist()) == hot.tolist()


def test_lfu_ages_so_new_hot_keys_take_over_from_old_ones(make_table):
    table = make_table(max_rows=20, eviction="lfu")
    _used(table, np.arange(20), 60)  # hot long ago
    new = np.arange(100, 120, dtype=np.uint64)
    for _ in range(30):  # without aging, a newcomer needs more than 60 sightings
        table.find_or_insert(new)
    assert sorted(table.keys().tolist()) == new.tolist()
