"""Hot and cold tiers: a table far over its memory budget behaves exactly like an unbounded
one (lookups, pushes, deletes, expiry, eviction, deltas, snapshots), checked step by step
against an unbounded table and a dict of live keys and update times."""

from __future__ import annotations

import errno
import mmap
import os
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from table_helpers import fingerprint

from monolith_ps.errors import ConfigError
from monolith_ps.optimizer_specs import OPTIMIZERS
from monolith_ps.table_config import TableConfig
from ps_server.table import EmbeddingTable, cold, cold_io, rows

TTL = 40.0
KEY_SPACE = 900


def _pair(tmp_path, budget: int = 6000, trainable: bool = True, **fields: Any):
    fields = {"name": "t", "dim": 4, **fields}
    tiered = EmbeddingTable(
        TableConfig(memory_budget_bytes=budget, cold_dir=str(tmp_path), **fields),
        trainable=trainable,
    )
    plain = EmbeddingTable(TableConfig(**fields), trainable=trainable)
    return tiered, plain


def _without_stats(table: EmbeddingTable) -> tuple:
    return fingerprint(table)[:-1]


def _run_random_operations(tiered: EmbeddingTable, plain: EmbeddingTable, seed: int) -> None:
    rng = np.random.default_rng(seed)
    updated: dict[int, float] = {}  # the reference: live key -> last insert or push time
    untiered = replace(tiered.config, memory_budget_bytes=None, cold_dir=None)
    replica = EmbeddingTable(untiered, trainable=False)
    synced = 0
    now = 1000.0
    # the dict follows every row only without admission and eviction
    exact_reference = tiered.config.admit_after == 1 and tiered.config.max_rows is None
    for _ in range(60):
        now += float(rng.integers(1, 4))
        keys = rng.integers(0, KEY_SPACE, int(rng.integers(1, 120))).astype(np.uint64)
        # a training step is a lookup then a push of the same keys
        op = rng.choice(["lookup", "push", "step", "find", "delete", "expire", "sync"])
        if op in ("lookup", "step"):
            out = tiered.find_or_insert(keys, now=now)
            np.testing.assert_array_equal(out, plain.find_or_insert(keys, now=now))
        if op in ("push", "step"):
            grads = rng.standard_normal((keys.size, tiered.dim)).astype(np.float32)
            got = tiered.apply_gradients(keys, grads, now=now)
            assert got == plain.apply_gradients(keys, grads, now=now)
        if op == "find":
            out, found = tiered.find(keys)
            want_out, want_found = plain.find(keys)
            np.testing.assert_array_equal(out, want_out)
            np.testing.assert_array_equal(found, want_found)
            if exact_reference:
                np.testing.assert_array_equal(found, [int(k) in updated for k in keys])
        elif op == "delete":
            assert tiered.delete(keys) == plain.delete(keys)
        elif op == "expire":
            assert tiered.expire(now) == plain.expire(now)
        elif op == "sync":
            delta = tiered.export_since(synced)
            selection = tiered.export_since(synced, with_values=False)  # what an export holds
            np.testing.assert_array_equal(selection.keys, delta.keys)
            np.testing.assert_array_equal(selection.versions, delta.versions)
            assert selection.values.shape == (len(delta.keys), 0)
            values, found = tiered.find(selection.keys, count=False)  # read per chunk
            assert found.all()
            np.testing.assert_array_equal(values, delta.values.astype(np.float32))
            replica.apply_delta(delta)
            synced = delta.complete_version
            np.testing.assert_array_equal(np.sort(replica.keys()), np.sort(tiered.keys()))
        if op == "lookup" and tiered.config.admit_after == 1:
            for k in keys.tolist():
                updated.setdefault(k, now)  # a lookup does not restart the TTL
        elif op in ("push", "step") and tiered.config.admit_after == 1:
            updated.update(dict.fromkeys(keys.tolist(), now))
        elif op == "delete":
            for k in keys.tolist():
                updated.pop(k, None)
        elif op == "expire":
            updated = {k: t for k, t in updated.items() if t >= now - TTL}
        if exact_reference:
            assert sorted(tiered.keys().tolist()) == sorted(updated)
        assert tiered.version == plain.version and len(tiered) == len(plain)
    assert _without_stats(tiered) == _without_stats(plain)
    tiers = tiered.tier_stats()
    stats = tiered.stats()
    assert tiers["cold_rows"] > 0 and tiers["hot_rows"] <= tiers["hot_row_limit"]
    assert stats["promoted"] > 0 and stats["demoted"] > 0


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_random_operations_match_an_unbounded_table(optimizer, tmp_path):
    tiered, plain = _pair(tmp_path, optimizer=optimizer, ttl_seconds=TTL)
    _run_random_operations(tiered, plain, seed=len(optimizer))


@pytest.mark.parametrize("eviction", ["lru", "lfu"])
def test_eviction_and_admission_see_both_tiers(eviction, tmp_path):
    tiered, plain = _pair(
        tmp_path,
        optimizer="adagrad",
        initializer="learned",
        max_rows=150,
        eviction=eviction,
        admit_after=2,
        sketch_width=1024,
        ttl_seconds=TTL,
    )
    _run_random_operations(tiered, plain, seed=7)
    assert tiered.stats()["evicted"] == plain.stats()["evicted"] > 0


SEGMENT_ROWS = 32


@pytest.fixture
def small_segments(monkeypatch):
    """Cold segments of 32 rows (dim 4 with Adagrad: 32 bytes a row), so demotions fill
    segments and promotions empty them all the time."""
    monkeypatch.setattr(cold, "SEGMENT_BYTES", SEGMENT_ROWS * 32)


def test_reused_segments_lose_no_row(small_segments, tmp_path):
    tiered, plain = _pair(tmp_path, optimizer="adagrad", ttl_seconds=TTL, max_rows=600)
    _run_random_operations(tiered, plain, seed=11)


def test_rows_match_after_the_cold_file_outgrew_its_mapping(small_segments, monkeypatch, tmp_path):
    monkeypatch.setattr(cold_io, "MAP_BYTES", mmap.PAGESIZE)
    tiered, plain = _pair(tmp_path, optimizer="adagrad", ttl_seconds=TTL)
    _run_random_operations(tiered, plain, seed=13)
    # mapped first over one page, then twice the length each time the rows outgrew it
    assert tiered.tier_stats()["cold_bytes"] > 4 * mmap.PAGESIZE


def test_a_full_cold_dir_keeps_rows_hot_and_loses_none(small_segments, monkeypatch, tmp_path):
    """With no space for another segment, demotion stops before moving a row: the rows stay
    hot, over the budget, every call succeeds with the values of an unbounded table, and
    demotion resumes once there is space again."""
    tiered, plain = _pair(tmp_path, budget=4000, optimizer="adagrad")
    disk = {"full": False}
    allocate = os.posix_fallocate

    def posix_fallocate(fd: int, offset: int, length: int) -> None:
        if disk["full"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        allocate(fd, offset, length)

    monkeypatch.setattr(cold_io.os, "posix_fallocate", posix_fallocate)
    rng = np.random.default_rng(5)
    for step in range(60):
        disk["full"] = 20 <= step < 40
        keys = rng.integers(0, 100 * (step + 1), 200).astype(np.uint64)  # the table grows
        np.testing.assert_array_equal(tiered.find_or_insert(keys), plain.find_or_insert(keys))
        grads = rng.standard_normal((keys.size, tiered.dim)).astype(np.float32)
        assert tiered.apply_gradients(keys, grads) == plain.apply_gradients(keys, grads)
        if step == 39:
            tiers = tiered.tier_stats()
            assert tiered.stats()["cold_tier_full"] > 0
            assert tiers["hot_rows"] > tiers["hot_row_limit"]
    assert _without_stats(tiered) == _without_stats(plain)
    tiers = tiered.tier_stats()
    assert tiers["hot_rows"] <= tiers["hot_row_limit"] and tiers["cold_rows"] > 1000


def test_cold_file_reuses_the_holes_promotions_leave(small_segments, tmp_path):
    tiered, plain = _pair(tmp_path, budget=4000, optimizer="adagrad")
    row_bytes = (tiered.dim + tiered.state_width) * 4
    rng = np.random.default_rng(4)
    most_cold = 0
    for _ in range(40):
        keys = rng.integers(0, 2000, 200).astype(np.uint64)
        np.testing.assert_array_equal(tiered.find_or_insert(keys), plain.find_or_insert(keys))
        most_cold = max(most_cold, tiered.tier_stats()["cold_rows"])
    tiers, stats = tiered.tier_stats(), tiered.stats()
    assert stats["promoted"] > 1000 and stats["demoted"] > 2000
    # a segment is reused once at most 3/4 of it is live: the file holds at most 4/3 of the
    # most cold rows, plus the head segment and the one being filled
    assert tiers["cold_bytes"] <= (most_cold * 4 // 3 + 2 * SEGMENT_ROWS) * row_bytes
    assert _without_stats(tiered) == _without_stats(plain)


def test_hot_arenas_shrink_back_after_a_batch_over_the_limit(tmp_path):
    tiered, plain = _pair(tmp_path, budget=20_000, optimizer="adagrad")
    limit = tiered.tier_stats()["hot_row_limit"]
    keys = np.arange(20 * limit, dtype=np.uint64)
    tiered.find_or_insert(keys, now=1.0)
    plain.find_or_insert(keys, now=1.0)
    # the batch grew the arenas to every key; demotion gave them back down to the limit
    # plus an eighth (a growth step of headroom)
    assert tiered.capacity <= limit + limit // 8 < plain.capacity
    grads = np.ones((keys.shape[0], tiered.dim), np.float32)
    assert tiered.apply_gradients(keys, grads, now=2.0) == plain.apply_gradients(
        keys, grads, now=2.0
    )
    assert tiered.capacity <= limit + limit // 8
    assert _without_stats(tiered) == _without_stats(plain)


def test_a_key_looked_up_once_in_a_long_while_does_not_push_hot_rows_out(tmp_path):
    tiered, plain = _pair(tmp_path, budget=12_000, optimizer="adagrad")
    limit = tiered.tier_stats()["hot_row_limit"]
    everything = np.arange(10 * limit, dtype=np.uint64)

    def cold_hits(keys: np.ndarray) -> int:
        before = tiered.stats()["cold_hits"]
        out = tiered.find_or_insert(keys, now=3.0)
        np.testing.assert_array_equal(out, plain.find_or_insert(keys, now=3.0))
        return tiered.stats()["cold_hits"] - before

    for lo in range(0, everything.shape[0], limit // 2):
        cold_hits(everything[lo : lo + limit // 2])
    hot = everything[: limit // 2]
    # first used long ago: read and lent to the lookup; used again soon after: kept
    assert cold_hits(hot) == hot.shape[0]
    assert cold_hits(hot) == hot.shape[0]
    assert cold_hits(hot) == 0
    # twice the hot limit of keys not used since they were inserted: each is read, lent
    # to the lookup and moved back to its cold row, so the hot keys stay hot
    once = everything[limit : 3 * limit]
    assert cold_hits(once) == once.shape[0]
    assert cold_hits(hot) == 0
    # keys used again before the horizon passes their last use are kept
    again = once[-5:]
    assert cold_hits(again) == again.shape[0]
    assert cold_hits(again) == 0
    assert tiered.tier_stats()["hot_rows"] <= limit
    assert _without_stats(tiered) == _without_stats(plain)


def test_lfu_lends_rows_counted_less_than_the_hot_ones_until_their_count_beats_them(tmp_path):
    tiered, plain = _pair(tmp_path, budget=12_000, optimizer="adagrad", eviction="lfu")
    limit = tiered.tier_stats()["hot_row_limit"]

    def cold_hits(keys: np.ndarray) -> int:
        before = tiered.stats()["cold_hits"]
        out = tiered.find_or_insert(keys, now=3.0)
        np.testing.assert_array_equal(out, plain.find_or_insert(keys, now=3.0))
        return tiered.stats()["cold_hits"] - before

    hot = np.arange(limit // 2, dtype=np.uint64)
    for _ in range(4):
        cold_hits(hot)
    # keys used once: the least counted go cold, the hot keys stay
    once = np.arange(limit, 5 * limit, dtype=np.uint64)
    for lo in range(0, once.shape[0], limit // 2):
        cold_hits(once[lo : lo + limit // 2])
    assert cold_hits(hot) == 0
    # cold keys counted no more than the last ones demoted are read and lent, not kept
    early = once[: 2 * limit]
    assert cold_hits(early) == early.shape[0]
    assert cold_hits(hot) == 0
    # counted again, their count beats the rows last demoted: kept
    again = early[-5:]
    assert cold_hits(again) == again.shape[0]
    assert cold_hits(again) == 0
    assert cold_hits(hot) == 0
    assert tiered.tier_stats()["hot_rows"] <= limit
    assert _without_stats(tiered) == _without_stats(plain)


def test_lfu_aging_halves_the_horizon_count_as_it_halves_rows(tmp_path):
    tiered, _ = _pair(tmp_path, optimizer="sgd", eviction="lfu", max_rows=40)
    tiering = tiered._tiering
    tiering.horizon = (5 << rows.TICK_BITS) | 7
    tiering.halve_horizon()
    assert tiering.horizon == (3 << rows.TICK_BITS) | 7


def test_serving_table_fed_by_deltas_matches(tmp_path):
    source = EmbeddingTable(TableConfig(name="t", dim=8, optimizer="adam"))
    tiered, plain = _pair(tmp_path, budget=3000, trainable=False, dim=8, serving_dtype="float16")
    rng = np.random.default_rng(3)
    synced = 0
    for step in range(12):
        keys = rng.integers(0, 2000, 300).astype(np.uint64)
        source.apply_gradients(keys, rng.standard_normal((300, 8)).astype(np.float32))
        if step % 3 == 2:
            source.delete(keys[:40])
        delta = source.export_since(synced)
        synced = delta.complete_version
        assert tiered.apply_delta(delta) == plain.apply_delta(delta)
        probe = rng.integers(0, 2200, 500).astype(np.uint64)
        out, found = tiered.find(probe)
        want_out, want_found = plain.find(probe)
        np.testing.assert_array_equal(out, want_out)
        np.testing.assert_array_equal(found, want_found)
    assert _without_stats(tiered) == _without_stats(plain)
    assert tiered.tier_stats()["cold_rows"] > 0 and tiered.stats()["cold_hits"] > 0


def test_snapshot_round_trip_restores_both_tiers(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    source, _ = _pair(tmp_path / "a", optimizer="ftrl")
    rng = np.random.default_rng(5)
    for _ in range(10):
        keys = rng.integers(0, 3000, 256).astype(np.uint64)
        source.apply_gradients(keys, rng.standard_normal((256, 4)).astype(np.float32))
    source.delete(np.arange(100, dtype=np.uint64))
    assert source.tier_stats()["cold_rows"] > source.tier_stats()["hot_rows"] > 0
    restored, _ = _pair(tmp_path / "b", optimizer="ftrl")
    restored.apply_delta(source.export_since(0, with_state=True))
    restored.import_meta(source.export_meta())
    assert _without_stats(restored) == _without_stats(source)
    tiers = restored.tier_stats()
    assert tiers["cold_rows"] > 0 and 0 < tiers["hot_rows"] <= tiers["hot_row_limit"]
    keys = rng.integers(0, 3000, 256).astype(np.uint64)
    grads = rng.standard_normal((256, 4)).astype(np.float32)
    assert restored.apply_gradients(keys, grads, now=5.0) == source.apply_gradients(
        keys, grads, now=5.0
    )
    np.testing.assert_array_equal(restored.find(keys)[0], source.find(keys)[0])


def test_an_unusable_cold_dir_is_a_config_error(tmp_path):
    config = TableConfig(
        name="t", dim=4, memory_budget_bytes=1 << 20, cold_dir=str(tmp_path / "missing")
    )
    with pytest.raises(ConfigError, match=r"cold_dir .*missing.*cannot create a file"):
        EmbeddingTable(config)


def test_tier_stats_and_memory_without_tiers(make_table):
    table = make_table()
    table.find_or_insert(np.arange(10, dtype=np.uint64))
    tiers = table.tier_stats()
    assert (tiers["hot_rows"], tiers["cold_rows"], tiers["hot_row_limit"]) == (10, 0, 0)
    assert tiers["hot_bytes"] == table.memory_bytes()
