"""Random operations on a table against a plain dict + numpy reference."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from monolith_ps.table_config import TableConfig
from ps_server.table import EmbeddingTable

DIM = 3


class Reference:
    """A dict of rows trained by SGD; initial rows come from ``initial`` (key -> vector).

    Admission: each occurrence of a key without a row in a lookup is a sighting, and the
    ``admit_after``-th sighting gives it a row; pushes never count, they give a row only to a
    key already admitted (every key with ``admit_after`` 1) and drop other gradients."""

    def __init__(self, lr: float, initial, admit_after: int = 1):
        self.rows: dict[int, np.ndarray] = {}
        self.sightings: dict[int, int] = {}
        self.lr = lr
        self.initial = initial
        self.admit_after = admit_after

    def admitted(self, k: int) -> bool:
        return self.admit_after == 1 or self.sightings.get(k, 0) >= self.admit_after

    def find_or_insert(self, keys):
        out = []
        for k in keys.tolist():
            if k not in self.rows:
                self.sightings[k] = self.sightings.get(k, 0) + 1
                if self.admitted(k):
                    self.rows[k] = self.initial(k)
            out.append(self.rows[k] if k in self.rows else self.initial(k))
        return np.array(out, dtype=np.float32).reshape(len(keys), DIM)

    def apply(self, keys, grads):
        """Returns ``(rows_updated, rows_pending_admission)``."""
        summed: dict[int, np.ndarray] = {}
        for k, g in zip(keys.tolist(), grads, strict=True):
            summed[k] = summed.get(k, 0) + g.astype(np.float64)
        pending = 0
        for k, g in summed.items():
            if k not in self.rows:
                if not self.admitted(k):
                    pending += 1
                    continue
                self.rows[k] = self.initial(k)
            self.rows[k] = (self.rows[k] - self.lr * g).astype(np.float32)
        return len(summed) - pending, pending

    def delete(self, keys):
        n = 0
        for k in keys.tolist():
            n += self.rows.pop(k, None) is not None
        return n


def unique_keys(rng, n: int) -> np.ndarray:
    keys = np.unique(rng.integers(0, 2**64, n + n // 10 + 10, dtype=np.uint64))[:n]
    return rng.permutation(keys)


def check_same(table: EmbeddingTable, ref: Reference) -> None:
    assert len(table) == len(ref.rows)
    live = table.keys()
    assert sorted(live.tolist()) == sorted(ref.rows)
    if len(live):
        values, found = table.find(live)
        assert found.all()
        expect = np.array([ref.rows[k] for k in live.tolist()])
        np.testing.assert_allclose(values, expect, rtol=1e-5, atol=1e-6)


def initial_of(table: EmbeddingTable):
    probe = EmbeddingTable(table.config)  # an empty twin: its misses are the initial vectors
    return lambda k: probe.find(np.array([k], np.uint64))[0][0].copy()


ops = st.lists(
    st.tuples(
        st.sampled_from(["lookup", "push", "delete", "find"]),
        st.lists(st.integers(0, 60), min_size=0, max_size=40),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(ops=ops, seed=st.integers(0, 2**64 - 1), admit_after=st.sampled_from([1, 2, 3]))
def test_random_operations_match_reference(ops, seed, admit_after):
    # each of the 61 keys has a counter of its own in 4 x 4096: the sketch counts exactly
    config = TableConfig(
        name="t", dim=DIM, optimizer="sgd", optimizer_args={"lr": 0.5}, seed=seed,
        admit_after=admit_after, sketch_width=4096,
    )  # fmt: skip
    table = EmbeddingTable(config)
    ref = Reference(0.5, initial_of(table), admit_after)
    rng = np.random.default_rng(seed % 2**32)
    for op, raw in ops:
        keys = np.array(raw, dtype=np.uint64)
        if op == "lookup":
            np.testing.assert_allclose(
                table.find_or_insert(keys), ref.find_or_insert(keys), rtol=1e-5, atol=1e-6
            )
        elif op == "push":
            grads = rng.normal(size=(len(keys), DIM)).astype(np.float32)
            assert table.apply_gradients(keys, grads) == ref.apply(keys, grads)
        elif op == "delete":
            assert table.delete(keys) == ref.delete(keys)
        else:
            values, found = table.find(keys)
            assert found.tolist() == [k in ref.rows for k in raw]
            for i, k in enumerate(raw):
                expect = ref.rows[k] if k in ref.rows else ref.initial(k)
                np.testing.assert_allclose(values[i], expect, rtol=1e-5, atol=1e-6)
        check_same(table, ref)


def test_growth_across_many_rehashes_keeps_every_row(rng):
    table = EmbeddingTable(TableConfig(name="t", dim=2, optimizer="sgd", initializer="uniform"))
    keys = unique_keys(rng, 60_000)
    expected = {}
    buckets_seen = set()
    bounds = np.unique(np.geomspace(1, len(keys), 50).astype(int))
    for chunk in np.split(keys, bounds[:-1]):
        values = table.find_or_insert(chunk)
        expected.update(zip(chunk.tolist(), map(tuple, values.tolist()), strict=True))
        buckets_seen.add(table.num_buckets)
        assert table.load_factor() <= 0.9 + 1e-9
    assert len(buckets_seen) >= 12  # grew through many doublings
    assert table.load_factor() > 0.4
    assert len(table) == len(keys)
    values, found = table.find(keys)
    assert found.all()
    assert [tuple(v) for v in values.tolist()] == [expected[k] for k in keys.tolist()]
    assert not table.find(~keys)[1].any()


def test_load_factor_reaches_ninety_percent_before_growth(rng):
    table = EmbeddingTable(TableConfig(name="t", dim=1, optimizer="sgd"))
    keys = unique_keys(rng, 30_000)
    peak = 0.0
    for chunk in np.array_split(keys, 300):
        before = table.num_buckets
        table.find_or_insert(chunk)
        if table.num_buckets == before:
            peak = max(peak, table.load_factor())
    assert peak >= 0.88


def test_duplicates_share_one_row_and_sum_gradients(make_table):
    table = make_table(dim=2, optimizer_args={"lr": 1.0}, initializer="zeros")
    keys = np.array([5, 9, 5, 5, 9, 1], np.uint64)
    grads = np.arange(12, dtype=np.float32).reshape(6, 2)
    values = table.find_or_insert(keys)
    assert len(table) == 3 and not values.any()
    assert table.apply_gradients(keys, grads) == (3, 0)
    got, _ = table.find(np.array([5, 9, 1], np.uint64))
    np.testing.assert_array_equal(
        got, -np.array([[0 + 4 + 6, 1 + 5 + 7], [2 + 8, 3 + 9], [10, 11]])
    )
    assert table.export_since(0, with_state=True).push_counts.tolist() == [3, 2, 1]


def test_free_rows_are_reused(make_table, rng):
    table = make_table()
    keys = np.arange(1000, dtype=np.uint64)
    table.find_or_insert(keys)
    capacity = table.capacity
    for _ in range(5):
        assert table.delete(keys[:500]) == 500
        table.find_or_insert(keys[:500])
        assert table.capacity == capacity
    assert len(table) == 1000


def test_versions_increase_with_every_change(make_table):
    table = make_table()
    keys = np.array([1, 2, 3], np.uint64)
    table.find_or_insert(keys)
    assert table.version == 3
    table.find_or_insert(keys)  # lookups of present rows change nothing
    assert table.version == 3
    table.apply_gradients(keys[:2], np.ones((2, 4), np.float32))
    assert table.version == 5
    table.delete(keys[2:])
    assert table.version == 6
    d = table.export_since(3)
    assert sorted(d.keys.tolist()) == [1, 2] and sorted(d.versions.tolist()) == [4, 5]
    assert d.tombstone_keys.tolist() == [3] and d.tombstone_versions.tolist() == [6]
    assert d.complete_version == 6 and not d.full


def test_memory_per_row_stays_near_payload_at_every_size(rng):
    """memory_bytes() counts everything the table allocated; from two rows up it stays within
    1.3x the raw payload (one row also pays the table's fixed ~150 bytes of bookkeeping)."""
    table = EmbeddingTable(TableConfig(name="t", dim=64, optimizer="adagrad"))
    payload = 8 + 64 * 4 + table.state_width * 4
    keys = unique_keys(rng, 40_000)
    worst = 0.0
    done = 0
    for n in np.unique(np.geomspace(2, len(keys), 60).astype(int)):
        table.find_or_insert(keys[done:n])
        done = n
        worst = max(worst, table.memory_bytes() / (len(table) * payload))
    assert worst <= 1.3, worst


def test_stats_count_operations(make_table):
    table = make_table(admit_after=2)
    keys = np.array([1, 2, 2], np.uint64)
    table.find_or_insert(keys)
    table.find(np.array([2, 3], np.uint64))
    table.apply_gradients(np.array([2], np.uint64), np.ones((1, 4), np.float32))
    table.delete(np.array([2, 7], np.uint64))
    s = table.stats()
    assert s["lookups"] == 5 and s["lookup_misses"] == 1
    assert s["inserts"] == 1 and s["admission_rejected"] == 2
    assert s["updates"] == 1 and s["deleted"] == 1


@given(st.integers(0, 2**32), st.integers(1, 12))
@settings(max_examples=25, deadline=None)
def test_one_batch_of_near_duplicates_across_many_growths_gets_one_row_per_key(seed, spread):
    """Duplicates a few keys apart are probed before their first occurrence is inserted
    (lookups run ahead of inserts), and the table grows many times inside the batch."""
    rng = np.random.default_rng(seed)
    table = EmbeddingTable(TableConfig(name="t", dim=2, optimizer="sgd", initializer="uniform"))
    distinct = unique_keys(rng, 3000)
    keys = np.repeat(distinct, 3)
    for lo in range(0, len(keys), spread * 3):  # shuffle within windows of a few keys
        keys[lo : lo + spread * 3] = rng.permutation(keys[lo : lo + spread * 3])
    values = table.find_or_insert(keys)
    assert len(table) == len(distinct) and table.version == len(distinct)
    first = {}
    for k, v in zip(keys.tolist(), map(tuple, values.tolist()), strict=True):
        assert first.setdefault(k, v) == v
    got, found = table.find(distinct)
    assert found.all()
    assert [tuple(v) for v in got.tolist()] == [first[k] for k in distinct.tolist()]
