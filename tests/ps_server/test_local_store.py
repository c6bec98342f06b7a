"""``LocalStore``: the table engine in-process behind PSClient's lookup/push interface."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_ps.config import parse_config
from ps_server.local_store import LocalStore

_CONFIG = {
    "tables": [{"name": "t", "dim": 3, "optimizer": "sgd", "optimizer_args": {"lr": 0.5}}],
    "dense": [{"name": "w", "size": 2, "optimizer": "sgd", "optimizer_args": {"lr": 0.1}}],
}


def test_lookup_inserts_and_push_applies_the_optimizer_with_duplicates_summed():
    store = LocalStore(parse_config(_CONFIG))
    keys = np.array([[5, 9], [5, 5]], dtype=np.uint64)
    rows = store.lookup_many({"t": keys})["t"]
    assert rows.shape == (2, 2, 3)
    np.testing.assert_array_equal(rows[0, 0], rows[1, 1])  # same key, same row
    assert store.num_rows() == {"t": 2}
    grads = np.ones((2, 2, 3), np.float32)
    assert store.push_many({"t": (keys, grads)}) == (2, 0)
    after = store.lookup("t", np.array([5, 9], dtype=np.uint64))
    np.testing.assert_allclose(after[0], rows[0, 0] - 0.5 * 3)  # three occurrences of 5
    np.testing.assert_allclose(after[1], rows[0, 1] - 0.5)


def test_with_found_only_finds_like_a_serving_server():
    store = LocalStore(parse_config(_CONFIG))
    known = store.lookup("t", np.array([4], dtype=np.uint64))
    rows, found = store.lookup_many({"t": np.array([4, 8], dtype=np.uint64)}, with_found=True)["t"]
    np.testing.assert_array_equal(found, [True, False])
    np.testing.assert_array_equal(rows[0], known[0])
    assert store.num_rows() == {"t": 1}  # 8 was not inserted


def test_dense_arrays_pull_and_push():
    store = LocalStore(parse_config(_CONFIG))
    np.testing.assert_array_equal(store.pull_dense()["w"], [0.0, 0.0])
    assert store.push_dense({"w": np.array([1.0, -2.0], np.float32)}) == 1
    np.testing.assert_allclose(store.pull_dense()["w"], [-0.1, 0.2])


def test_unknown_table_names_the_tables_it_has():
    store = LocalStore(parse_config(_CONFIG))
    with pytest.raises(KeyError, match="'nope'.*has: t"):
        store.lookup_many({"nope": np.array([1], dtype=np.uint64)})
