"""Admission: a key gets a row once looked up ``admit_after`` times (pushes never count); the
learned default."""

from __future__ import annotations

import numpy as np
import pytest

from ps_server.table.errors import DeltaError


@pytest.mark.parametrize("admit_after", [2, 3, 5])
def test_row_appears_at_the_threshold(make_table, admit_after):
    table = make_table(admit_after=admit_after, initializer="normal")
    key = np.array([42], np.uint64)
    default = table.find(key)[0]
    for seen in range(1, admit_after):
        np.testing.assert_array_equal(table.find_or_insert(key), default)
        assert len(table) == 0, f"admitted after {seen} sightings"
    np.testing.assert_array_equal(table.find_or_insert(key), default)
    assert len(table) == 1 and table.find(key)[1].all()
    assert table.stats()["admission_rejected"] == admit_after - 1


def test_duplicates_in_a_batch_count_each_sighting(make_table):
    table = make_table(admit_after=3)
    values = table.find_or_insert(np.array([7, 7, 7, 8], np.uint64))
    assert table.keys().tolist() == [7]
    np.testing.assert_array_equal(values[0], values[2])


def test_pushes_never_count_or_admit(make_table):
    table = make_table(admit_after=3, initializer="zeros")
    keys = np.array([1, 2], np.uint64)
    grads = np.ones((2, 4), np.float32)
    for _ in range(5):
        assert table.apply_gradients(keys, grads) == (0, 2)
    assert len(table) == 0 and table.version == 0
    table.find_or_insert(keys)
    table.find_or_insert(keys)
    assert len(table) == 0, "pushes counted as sightings"
    table.find_or_insert(keys)  # the third lookup admits: rows start from the initializer
    assert table.apply_gradients(keys, grads) == (2, 0)
    np.testing.assert_allclose(table.find(keys)[0], -0.5 * np.ones((2, 4)))


@pytest.mark.parametrize("admit_after", [1, 2, 3, 5])
def test_lookup_then_push_admits_at_the_threshold_batch(make_table, admit_after):
    """The training step looks a batch up, then pushes its gradients: each batch is one
    sighting per occurrence, so a key gets its row at exactly its ``admit_after``-th batch."""
    table = make_table(admit_after=admit_after, sketch_width=1 << 12)
    batch = np.array([10, 11, 12, 11], np.uint64)  # 11 occurs twice: two sightings a batch
    twice = np.array([11], np.uint64)
    grads = np.ones((4, 4), np.float32)
    for step in range(1, admit_after + 1):
        table.find_or_insert(batch)
        admitted = [10, 11, 12] if step >= admit_after else [11] if 2 * step >= admit_after else []
        assert sorted(table.keys().tolist()) == admitted, f"batch {step}"
        assert table.apply_gradients(batch, grads) == (len(admitted), 3 - len(admitted))
    assert table.find(twice)[1].all()


def test_a_push_gives_back_the_row_of_an_admitted_key(make_table):
    table = make_table(admit_after=2, initializer="zeros")
    key = np.array([4], np.uint64)
    table.find_or_insert(key)
    table.find_or_insert(key)
    assert table.delete(key) == 1
    assert table.apply_gradients(key, np.ones((1, 4), np.float32)) == (1, 0)
    np.testing.assert_allclose(table.find(key)[0], -0.5 * np.ones((1, 4)))


def test_many_keys_are_rejected_exactly_below_threshold(make_table, rng):
    table = make_table(admit_after=2, sketch_width=1 << 16)
    keys = np.unique(rng.integers(0, 2**64, 3000, dtype=np.uint64))
    table.find_or_insert(keys)
    assert len(table) == 0
    table.find_or_insert(keys[:1000])
    assert sorted(table.keys().tolist()) == sorted(keys[:1000].tolist())


def test_learned_default_row_trains_on_unadmitted_gradients(make_table):
    table = make_table(
        admit_after=3, initializer="learned", optimizer="sgd", optimizer_args={"lr": 0.1}
    )
    zero = np.zeros((1, 4), np.float32)
    np.testing.assert_array_equal(table.find(np.array([99], np.uint64))[0], zero)
    keys = np.array([1, 2, 2], np.uint64)
    grads = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0]], np.float32)
    assert table.apply_gradients(keys, grads) == (0, 2)
    learned = -0.1 * np.array([1, 2, 0, 0], np.float32)
    np.testing.assert_allclose(table.find(np.array([99], np.uint64))[0][0], learned)
    np.testing.assert_allclose(table.find_or_insert(np.array([5], np.uint64))[0], learned)
    # pushes do not count: key 2 needs three sightings in lookups (each duplicate counts),
    # and its new row starts from the learned default
    table.find_or_insert(np.array([2, 2], np.uint64))
    assert not table.find(np.array([2], np.uint64))[1].any()
    table.find_or_insert(np.array([2], np.uint64))
    row, found = table.find(np.array([2], np.uint64))
    assert found.all()
    np.testing.assert_allclose(row[0], learned)
    d = table.export_since(0)
    np.testing.assert_allclose(d.default_value, learned)
    assert 0 < d.default_version <= table.version
    assert table.export_since(table.version).default_value is None


def test_a_self_sized_sketch_stays_small_on_a_small_table(make_table, rng):
    keys = np.unique(rng.integers(0, 2**64, 2000, dtype=np.uint64))
    sizes = {}
    for admit_after in (1, 2):
        table = make_table(admit_after=admit_after, dim=8)
        for _ in range(3):
            table.find_or_insert(keys)
        assert len(table) == keys.size
        sizes[admit_after] = table.memory_bytes()
    assert sizes[2] <= 1.5 * sizes[1], sizes
    fixed = make_table(admit_after=2, dim=8, sketch_width=1 << 18)
    assert fixed.export_meta()["sketch"].shape == (4, 1 << 18)  # a set width is kept


def test_a_growing_sketch_never_counts_a_key_less(make_table, rng):
    from ps_server.table import admission

    table = make_table(admit_after=50)  # nothing admitted: every sighting is counted
    assert table.export_meta()["sketch"].shape == (admission.DEPTH, admission.AUTO_MIN_WIDTH)
    keys = rng.integers(0, 2**64, 20_000, dtype=np.uint64)
    seen = rng.integers(1, 4, keys.size)
    widths = set()
    for lo in range(0, keys.size, 500):  # the sketch doubles as new keys arrive
        table.find_or_insert(np.repeat(keys[lo : lo + 500], seen[lo : lo + 500]))
        widths.add(table.export_meta()["sketch"].shape[1])
    sketch = table.export_meta()["sketch"]
    assert len(widths) > 2 and sketch.shape[1] >= keys.size
    estimates = np.empty(keys.size, np.int64)
    admission.estimate_counts(sketch, keys, estimates)
    assert (estimates >= seen).all()
    assert (estimates == seen).mean() > 0.9


def test_restore_keeps_every_count_of_the_snapshot_sketch(make_table):
    small = make_table(admit_after=3)
    keys = np.arange(100, dtype=np.uint64)
    small.find_or_insert(keys)
    small.find_or_insert(keys)  # two sightings each, none admitted
    meta = small.export_meta()
    for width in (None, 1 << 14, 64):  # adopted, widened, folded: no key counted less
        restored = make_table(admit_after=3, sketch_width=width)
        restored.import_meta(meta)
        restored.find_or_insert(keys)  # the third sighting admits
        assert len(restored) == keys.size
    with pytest.raises(DeltaError, match="doubling stages"):
        restored.import_meta(meta | {"sketch": np.zeros((4, 20), np.uint16)})
