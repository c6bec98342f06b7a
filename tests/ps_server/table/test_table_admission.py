"""Admission: a key gets a row only once seen ``admit_after`` times; the learned default."""

from __future__ import annotations

import numpy as np
import pytest


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


def test_pushes_to_unadmitted_keys_only_count(make_table):
    table = make_table(admit_after=3, initializer="zeros")
    keys = np.array([1, 2], np.uint64)
    grads = np.ones((2, 4), np.float32)
    assert table.apply_gradients(keys, grads) == (0, 2)
    assert len(table) == 0 and table.version == 0
    assert table.apply_gradients(keys, grads) == (0, 2)
    # third sighting admits: the row starts from the initializer and takes this step only
    assert table.apply_gradients(keys, grads) == (2, 0)
    np.testing.assert_allclose(table.find(keys)[0], -0.5 * np.ones((2, 4)))


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
    # key 2 has been seen twice, this makes three: its new row starts from the learned default
    table.find_or_insert(np.array([2], np.uint64))
    row, found = table.find(np.array([2], np.uint64))
    assert found.all()
    np.testing.assert_allclose(row[0], learned)
    d = table.export_since(0)
    np.testing.assert_allclose(d.default_value, learned)
    assert 0 < d.default_version <= table.version
    assert table.export_since(table.version).default_value is None
