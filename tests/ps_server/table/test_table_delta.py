"""export_since / apply_delta / export_meta / import_meta round trips."""

from __future__ import annotations

import numpy as np
from table_helpers import fingerprint

from ps_server.table import Delta, EmbeddingTable


def trained(make_table, rng, **fields):
    table = make_table(dim=8, optimizer="adagrad", optimizer_args={"lr": 0.1}, **fields)
    for _ in range(5):
        keys = rng.integers(0, 300, 200).astype(np.uint64)
        table.find_or_insert(keys)
        table.apply_gradients(keys, rng.normal(size=(200, 8)).astype(np.float32))
    table.delete(rng.integers(0, 300, 30).astype(np.uint64))
    return table


def test_training_to_float16_serving_round_trip(make_table, rng):
    table = trained(make_table, rng)
    serving = EmbeddingTable(table.config, trainable=False, dtype=np.float16)
    assert serving.dtype == np.float16 and serving.state_width == 0
    cursor = 0
    for _ in range(3):
        delta = table.export_since(cursor)
        serving.apply_delta(delta)
        cursor = delta.complete_version
        keys = rng.integers(0, 300, 100).astype(np.uint64)
        table.apply_gradients(keys, rng.normal(size=(100, 8)).astype(np.float32))
        table.delete(keys[:5])
    serving.apply_delta(table.export_since(cursor))
    live = table.keys()
    assert sorted(serving.keys().tolist()) == sorted(live.tolist())
    want = table.find(live)[0]
    got, found = serving.find(live)
    assert found.all()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)  # float16 precision
    # misses on serving read the same default vectors as on training
    np.testing.assert_array_equal(
        serving.find(np.array([10**6], np.uint64))[0], table.find(np.array([10**6], np.uint64))[0]
    )


def test_reapplying_a_delta_changes_nothing_and_older_rows_are_skipped(make_table, rng):
    table = trained(make_table, rng)
    replica = EmbeddingTable(table.config, trainable=False)
    old = table.export_since(0)
    keys = table.keys()[:20]
    table.apply_gradients(keys, np.ones((20, 8), np.float32))
    new = table.export_since(0)
    assert replica.apply_delta(new)[0] == len(new)
    before = replica.export_since(0)
    assert replica.apply_delta(new) == (0, len(new), 0)
    applied, skipped, _ = replica.apply_delta(old)  # older versions of the same rows
    assert applied == 0 and skipped == len(old)
    after = replica.export_since(0)
    np.testing.assert_array_equal(after.values, before.values)
    np.testing.assert_array_equal(after.versions, before.versions)
    np.testing.assert_array_equal(replica.find(keys)[0], table.find(keys)[0])


def test_tombstones_delete_only_rows_not_newer(make_table):
    replica = make_table(trainable=False)
    keys = np.array([1, 2, 3], np.uint64)
    replica.apply_delta(delta(keys, np.array([5, 5, 9], np.uint64), dim=4))
    tomb = Delta(
        keys=np.zeros(0, np.uint64), values=np.zeros((0, 4), np.float32),
        versions=np.zeros(0, np.uint64), tombstone_keys=np.array([1, 3, 4], np.uint64),
        tombstone_versions=np.array([6, 6, 6], np.uint64), complete_version=6, full=False,
    )  # fmt: skip
    assert replica.apply_delta(tomb) == (0, 0, 1)
    assert sorted(replica.keys().tolist()) == [2, 3]
    assert replica.apply_delta(tomb) == (0, 0, 0)
    # a replica can re-export what it holds (its log has the tombstone it applied)
    assert replica.export_since(5).tombstone_keys.tolist() == [1]


def delta(keys, versions, dim, value=1.0):
    return Delta(
        keys=keys, values=np.full((len(keys), dim), value, np.float32), versions=versions,
        tombstone_keys=np.zeros(0, np.uint64), tombstone_versions=np.zeros(0, np.uint64),
        complete_version=int(versions.max()), full=False,
    )  # fmt: skip


def test_state_and_meta_round_trip_restores_a_training_table(make_table, rng):
    table = trained(make_table, rng, admit_after=2, initializer="learned", ttl_seconds=50.0)
    restored = EmbeddingTable(table.config)
    restored.apply_delta(table.export_since(0, with_state=True))
    restored.import_meta(table.export_meta())
    a, b = fingerprint(table), fingerprint(restored)
    assert a[:8] == b[:8]  # all but the operation counters
    # and both evolve identically from here
    keys = rng.integers(0, 400, 300).astype(np.uint64)
    grads = rng.normal(size=(300, 8)).astype(np.float32)
    for t in (table, restored):
        t.find_or_insert(keys, now=1.0)
        t.apply_gradients(keys, grads, now=2.0)
        t.expire(now=60.0)
    assert fingerprint(table)[:8] == fingerprint(restored)[:8]


def test_incremental_exports_chain_to_the_same_state(make_table, rng):
    table = trained(make_table, rng)
    copy = EmbeddingTable(table.config)
    copy.apply_delta(table.export_since(0, with_state=True))
    copy.import_meta(table.export_meta())
    since = table.version
    keys = rng.integers(0, 300, 100).astype(np.uint64)
    table.apply_gradients(keys, rng.normal(size=(100, 8)).astype(np.float32))
    table.delete(keys[:10])
    inc = table.export_since(since, with_state=True)
    assert not inc.full
    copy.apply_delta(inc)
    copy.import_meta(table.export_meta())
    assert fingerprint(copy)[:8] == fingerprint(table)[:8]


def test_meta_import_trims_a_long_tombstone_log(make_table):
    big = make_table(tombstone_log_size=100)
    big.find_or_insert(np.arange(50, dtype=np.uint64))
    big.delete(np.arange(50, dtype=np.uint64))
    small = make_table(tombstone_log_size=10)
    small.import_meta(big.export_meta())
    assert small.version == big.version
    assert small.export_since(90).tombstone_keys.tolist() == list(range(40, 50))
    assert small.export_since(80).full


def test_rows_never_pushed_export_their_initial_optimizer_state(make_table):
    table = make_table(optimizer="adagrad", optimizer_args={"initial_accumulator": 0.3})
    keys = np.array([1, 2], np.uint64)
    table.find_or_insert(keys)
    table.apply_gradients(keys[:1], np.full((1, 4), 2.0, np.float32))
    d = table.export_since(0, with_state=True)
    state = dict(zip(d.keys.tolist(), d.opt_state.tolist(), strict=True))
    np.testing.assert_allclose(state[2], [0.3] * 4)
    np.testing.assert_allclose(state[1], [0.3 + 4.0] * 4)
    # a copy restored from the delta trains row 2 exactly like the original
    copy = EmbeddingTable(table.config)
    copy.apply_delta(d)
    for t in (table, copy):
        t.apply_gradients(keys[1:], np.ones((1, 4), np.float32))
    np.testing.assert_array_equal(copy.find(keys)[0], table.find(keys)[0])
