"""LRU eviction from a pool of the lowest-ranked rows against ranking every row at each call:
the same rows evicted, in the same order, on random workloads."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_ps.table_config import TableConfig
from ps_server.table import EmbeddingTable, eviction
from ps_server.table.delta import Delta

_MAX_ROWS = 1_280  # a pool of at least 20 rows


def _pair(**fields) -> tuple[EmbeddingTable, EmbeddingTable]:
    """Two identical LRU tables: the second ranks every row at each call."""
    config = TableConfig(name="t", dim=4, optimizer="sgd", optimizer_args={"lr": 0.5}, **fields)
    pooled, reference = EmbeddingTable(config), EmbeddingTable(config)
    reference._eviction.run = lambda: eviction.evict_over_limit(reference._t, None)
    return pooled, reference


def _assert_same(a: EmbeddingTable, b: EmbeddingTable) -> None:
    """Identical arrays (index, rows, keys, metadata, scalars, tombstone log) and stats."""
    ta, tb = a._t, b._t
    high = ta.high
    assert high == tb.high
    for name in ("index", "scalars", "log_keys", "log_versions"):
        np.testing.assert_array_equal(getattr(ta, name), getattr(tb, name), err_msg=name)
    for name in ("rows", "row_keys", "meta"):
        np.testing.assert_array_equal(
            getattr(ta, name)[:high], getattr(tb, name)[:high], err_msg=name
        )
    assert a.stats() == b.stats()


def _run_workload(tables, rng: np.random.Generator, steps: int, universe: int) -> None:
    """Lookups of old and new keys, pushes, deletes, expiry and re-inserted deleted keys, at
    varied batch sizes, applied alike to every table and compared after each step."""
    next_new = int(max(t._t.row_keys[: t._t.high].max(initial=0) for t in tables)) + 1
    deleted: list[int] = []
    now = 1_000.0
    for _ in range(steps):
        now += 1.0
        op = rng.random()
        size = int(rng.choice([1, 3, 17, 64, 200]))
        if op < 0.55:  # a lookup: old keys, new ones, some deleted ones back
            fresh = rng.integers(0, size + 1)
            keys = np.concatenate(
                [
                    rng.integers(0, universe, size - fresh),
                    np.arange(next_new, next_new + fresh),
                    rng.choice(deleted, min(len(deleted), 3)) if deleted else [],
                ]
            ).astype(np.uint64)
            next_new += int(fresh)
            rng.shuffle(keys)
            for t in tables:
                t.find_or_insert(keys, now=now)
        elif op < 0.8:
            keys = rng.integers(0, next_new, size).astype(np.uint64)
            grads = rng.standard_normal((size, 4)).astype(np.float32)
            for t in tables:
                t.apply_gradients(keys, grads, now=now)
        elif op < 0.93:
            keys = rng.integers(0, next_new, size).astype(np.uint64)
            deleted.extend(keys.tolist())
            assert len({t.delete(keys) for t in tables}) == 1
        else:
            assert len({t.expire(now=now + 0.5) for t in tables}) == 1
        _assert_same(*tables)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pool_evicts_what_a_full_ranking_evicts(seed, monkeypatch):
    pooled, reference = _pair(max_rows=_MAX_ROWS, ttl_seconds=300.0)
    rankings = {"count": 0}
    real = eviction.usage_ranks

    def counted(meta, high):
        rankings["count"] += meta is pooled._t.meta
        return real(meta, high)

    monkeypatch.setattr(eviction, "usage_ranks", counted)
    rng = np.random.default_rng(seed)
    for t in (pooled, reference):  # full, with the clock in key order
        t.find_or_insert(np.arange(_MAX_ROWS, dtype=np.uint64), now=1_000.0)
    _run_workload((pooled, reference), rng, steps=300, universe=3 * _MAX_ROWS)
    evicted = pooled.stats()["evicted"]
    assert evicted > 1_000
    assert rankings["count"] * 10 < evicted  # the pool, not a ranking, chose most evictions


@pytest.mark.parametrize("unique", [False, True])
def test_pool_follows_a_delta_whose_ranks_tie_or_pass_the_clock(unique):
    """A delta's ranks may repeat (shards with their own clocks) and pass the table's clock:
    the pool must not then claim an order the full ranking would break otherwise, nor keep
    rows that rows touched later (at the table's lower clock) rank below."""
    rng = np.random.default_rng(7)
    pooled, reference = _pair(max_rows=_MAX_ROWS)
    n = _MAX_ROWS - 5  # the rows the table ranks by its own clock fill less than a pool
    keys = rng.permutation(10 * n)[:n].astype(np.uint64)
    values = rng.standard_normal((n, 4)).astype(np.float32)
    delta = Delta.of_rows(keys, values, np.arange(1, n + 1, dtype=np.uint64), complete_version=n)
    delta.opt_state = np.zeros((n, 0), np.float32)
    delta.push_counts = np.zeros(n, np.uint32)
    delta.last_update = np.full(n, 1_000.0)
    ranks = rng.permutation(n) if unique else rng.integers(0, n, n)
    delta.usage = (ranks + 10**6).astype(np.int64)
    for t in (pooled, reference):
        t.find_or_insert(np.arange(10 * n, 10 * n + 50, dtype=np.uint64), now=1_000.0)
        t.apply_delta(delta)
    _assert_same(pooled, reference)
    _run_workload((pooled, reference), rng, steps=120, universe=10 * n)


def test_a_touched_or_reinserted_pool_row_is_not_evicted(make_table):
    table = make_table(max_rows=_MAX_ROWS, eviction="lru")
    for k in range(_MAX_ROWS):  # key k is the k-th least recently used
        table.find_or_insert(np.array([k], np.uint64))

    def evicted_by(key: int) -> list[int]:
        before = table.version
        table.find_or_insert(np.array([key], np.uint64))
        return table.export_since(before).tombstone_keys.tolist()

    assert evicted_by(10_000) == [0]  # ranks every row, keeps 1, 2, ... for later calls
    table.find_or_insert(np.array([1], np.uint64))  # touched: now the most recent
    assert evicted_by(10_001) == [2]
    table.delete(np.array([3], np.uint64))
    table.find_or_insert(np.array([3], np.uint64))  # back in its old row: same key, new rank
    assert evicted_by(10_002) == [4]
    assert evicted_by(10_003) == [5]
    assert sorted(set(range(_MAX_ROWS)) - set(table.keys().tolist())) == [0, 2, 4, 5]


def test_a_delta_drops_the_pool(make_table):
    table = make_table(max_rows=_MAX_ROWS, eviction="lru")
    table.find_or_insert(np.arange(_MAX_ROWS + 1, dtype=np.uint64))  # evicts 0, pools 1...
    key = np.array([500], np.uint64)
    values, _ = table.find(key)
    d = Delta.of_rows(key, values, np.array([table.version + 1], np.uint64), complete_version=0)
    d.opt_state = np.zeros((1, 0), np.float32)
    d.push_counts = np.zeros(1, np.uint32)
    d.last_update = np.zeros(1)
    d.usage = np.zeros(1, np.int64)  # key 500 now ranks below the pool's rows, left alone
    assert table.apply_delta(d) == (1, 0, 0)
    before = table.version
    table.find_or_insert(np.array([10_000], np.uint64))
    assert table.export_since(before).tombstone_keys.tolist() == [500]


def test_rows_ranked_by_the_clock_go_before_a_delta_ranked_past_it(make_table):
    table = make_table(max_rows=_MAX_ROWS, eviction="lru")
    keys = np.arange(_MAX_ROWS, dtype=np.uint64)
    d = Delta.of_rows(keys, np.zeros((_MAX_ROWS, 4), np.float32), keys + 1, complete_version=0)
    d.opt_state = np.zeros((_MAX_ROWS, 0), np.float32)
    d.push_counts = np.zeros(_MAX_ROWS, np.uint32)
    d.last_update = np.zeros(_MAX_ROWS)
    d.usage = (keys + 10**6).astype(np.int64)  # unique, and far past the table's clock
    table.apply_delta(d)
    evicted = []
    for key in (10_000, 10_001, 10_002):
        before = table.version
        table.find_or_insert(np.array([key], np.uint64))
        evicted += table.export_since(before).tombstone_keys.tolist()
    assert evicted == [10_000, 10_001, 10_002]  # a new row ranks below every restored one
