"""Bad input raises a specific error and changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
from table_helpers import fingerprint

from ps_server.table import (
    Delta,
    DeltaError,
    EmbeddingTable,
    KeysError,
    NonFiniteGradientError,
    NotTrainableError,
    ShapeError,
    TableError,
)

KEYS = np.array([1, 2, 3], np.uint64)
GRADS = np.ones((3, 4), np.float32)
NAN_GRADS = np.where(np.eye(3, 4) > 0, np.nan, GRADS).astype(np.float32)
INF_LAST = np.vstack([GRADS[:2], [[0, 0, 0, np.inf]]]).astype(np.float32)
U64 = np.uint64


@pytest.fixture
def table(make_table):
    t = make_table(admit_after=2, tombstone_log_size=4)
    t.find_or_insert(np.arange(10, dtype=np.uint64))
    t.find_or_insert(np.arange(10, dtype=np.uint64))
    t.apply_gradients(np.arange(5, dtype=np.uint64), np.ones((5, 4), np.float32))
    return t


def good_delta(**changes):
    fields = dict(
        keys=np.array([100, 101], np.uint64), values=np.ones((2, 4), np.float32),
        versions=np.array([50, 51], np.uint64), tombstone_keys=np.array([1], np.uint64),
        tombstone_versions=np.array([52], np.uint64), complete_version=52, full=False,
    )  # fmt: skip
    fields.update(changes)
    return Delta(**fields)


BAD_CALLS = [
    ("find int64 keys", lambda t: t.find(KEYS.astype(np.int64)), KeysError),
    ("find 2-d keys", lambda t: t.find(KEYS.reshape(3, 1)), KeysError),
    ("find a list", lambda t: t.find([1, 2]), KeysError),
    ("lookup float keys", lambda t: t.find_or_insert(KEYS.astype(np.float64)), KeysError),
    ("lookup bad now", lambda t: t.find_or_insert(KEYS, now=float("nan")), ValueError),
    ("push float64 grads", lambda t: t.apply_gradients(KEYS, GRADS.astype(float)), ShapeError),
    ("push wrong dim", lambda t: t.apply_gradients(KEYS, np.ones((3, 5), np.float32)), ShapeError),
    (
        "push wrong count",
        lambda t: t.apply_gradients(KEYS, np.ones((2, 4), np.float32)),
        ShapeError,
    ),
    ("push 1-d grads", lambda t: t.apply_gradients(KEYS, np.ones(12, np.float32)), ShapeError),
    ("push nan", lambda t: t.apply_gradients(KEYS, NAN_GRADS), NonFiniteGradientError),
    ("push inf in last row", lambda t: t.apply_gradients(KEYS, INF_LAST), NonFiniteGradientError),
    ("delete int keys", lambda t: t.delete(np.array([1, 2])), KeysError),
    ("export negative", lambda t: t.export_since(-1), ValueError),
    ("export float", lambda t: t.export_since(1.5), ValueError),
    ("apply a dict", lambda t: t.apply_delta({"keys": KEYS}), DeltaError),
    (
        "delta wrong dim",
        lambda t: t.apply_delta(good_delta(values=np.ones((2, 3), np.float32))),
        DeltaError,
    ),
    (
        "delta nan values",
        lambda t: t.apply_delta(good_delta(values=np.full((2, 4), np.nan, np.float32))),
        DeltaError,
    ),
    (
        "delta version 0",
        lambda t: t.apply_delta(good_delta(versions=np.array([0, 5], np.uint64))),
        DeltaError,
    ),
    (
        "delta version too big",
        lambda t: t.apply_delta(good_delta(versions=np.array([2**63, 5], np.uint64))),
        DeltaError,
    ),
    (
        "delta versions int64",
        lambda t: t.apply_delta(good_delta(versions=np.array([4, 5], np.int64))),
        DeltaError,
    ),
    (
        "delta tombstone lengths",
        lambda t: t.apply_delta(good_delta(tombstone_versions=np.array([1, 2], np.uint64))),
        DeltaError,
    ),
    (
        "delta state width",
        lambda t: t.apply_delta(
            good_delta(
                opt_state=np.ones((2, 3), np.float32),
                push_counts=np.ones(2, np.uint32),
                last_update=np.ones(2),
            )
        ),
        DeltaError,
    ),
    (
        "delta state without counts",
        lambda t: t.apply_delta(good_delta(opt_state=np.ones((2, 0), np.float32))),
        DeltaError,
    ),
    (
        "delta default on non-learned",
        lambda t: t.apply_delta(
            good_delta(default_value=np.ones(4, np.float32), default_version=60)
        ),
        DeltaError,
    ),
    ("meta missing fields", lambda t: t.import_meta({"version": 3}), DeltaError),
    (
        "meta wrong sketch",
        lambda t: t.import_meta(t.export_meta() | {"sketch": np.zeros((4, 20), np.uint16)}),
        DeltaError,
    ),
    (
        "meta negative version",
        lambda t: t.import_meta(t.export_meta() | {"version": -1}),
        DeltaError,
    ),
]


@pytest.mark.parametrize(("label", "call", "error"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_and_changes_nothing(table, label, call, error):
    before = fingerprint(table)
    with pytest.raises(error) as caught:
        call(table)
    assert isinstance(caught.value, TableError | ValueError)
    assert str(caught.value)
    assert fingerprint(table) == before


def test_error_messages_name_the_problem(table):
    with pytest.raises(ShapeError, match=r"shape \(3, 4\).*dim 4.*got \(3, 5\)"):
        table.apply_gradients(KEYS, np.ones((3, 5), np.float32))
    with pytest.raises(KeysError, match="uint64.*got int64"):
        table.find(KEYS.astype(np.int64))
    with pytest.raises(NonFiniteGradientError, match=r"row 1 \(key 2\)"):
        table.apply_gradients(KEYS, np.array([[0] * 4, [np.nan] * 4, [0] * 4], np.float32))


def test_serving_table_refuses_training_calls(make_table):
    serving = make_table(trainable=False)
    with pytest.raises(NotTrainableError, match="serving table"):
        serving.find_or_insert(KEYS)
    with pytest.raises(NotTrainableError):
        serving.apply_gradients(KEYS, GRADS)
    assert len(serving) == 0 and serving.version == 0


def test_training_table_must_be_float32(make_table):
    with pytest.raises(ValueError, match="float32"):
        make_table(dtype=np.float16)
    with pytest.raises(ValueError, match="float32 or float16"):
        make_table(trainable=False, dtype=np.float64)


def test_empty_batches_are_fine(table):
    before = fingerprint(table)
    empty = np.zeros(0, np.uint64)
    assert table.find(empty)[0].shape == (0, 4)
    assert table.find_or_insert(empty).shape == (0, 4)
    assert table.apply_gradients(empty, np.zeros((0, 4), np.float32)) == (0, 0)
    assert table.delete(empty) == 0
    assert fingerprint(table)[:8] == before[:8]


def test_non_contiguous_input_is_accepted(make_table):
    table = make_table(optimizer_args={"lr": 1.0}, initializer="zeros")
    keys = np.arange(10, dtype=np.uint64)[::2]
    grads = np.ones((5, 8), np.float32)[:, ::2]
    table.apply_gradients(keys, grads)
    np.testing.assert_array_equal(table.find(keys)[0], -np.ones((5, 4)))


def test_state_of_a_serving_delta_is_ignored_by_a_serving_table(make_table):
    serving = make_table(trainable=False)
    d = good_delta(opt_state=np.ones((2, 7), np.float32))
    assert serving.apply_delta(d) == (2, 0, 0)
    assert isinstance(serving, EmbeddingTable)


def test_checked_push_applies_as_apply_gradients(make_table) -> None:
    """A push checked first (as a multi-table Push checks every table before applying any)
    changes nothing until applied, then gives what ``apply_gradients`` gives."""
    keys = np.array([5, 6, 5], np.uint64)
    grads = np.arange(12, dtype=np.float32).reshape(3, 4)
    checked, direct = make_table(), make_table()
    for t in (checked, direct):
        t.find_or_insert(keys)
    before = fingerprint(checked)
    push = checked.check_push(keys, grads)
    assert fingerprint(checked) == before
    assert checked.apply_push(push, now=1.0) == direct.apply_gradients(keys, grads, now=1.0)
    np.testing.assert_array_equal(checked.find(keys)[0], direct.find(keys)[0])
