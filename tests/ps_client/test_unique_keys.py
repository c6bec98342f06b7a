"""One client-side deduplication per step: ``UniqueKeys`` grouped by shard, sent by the
client as they are, with the rows and gradients of the two-dedup path it replaced."""

from __future__ import annotations

import types

import numpy as np
import pytest

import ps_client.planning
import ps_client.unique_keys
from monolith_ps.routing import shard_of
from ps_client import PSClient
from ps_client.trainer import StepResult, Trainer
from ps_client.unique_keys import UniqueKeys, keys_for, num_shards_of

_CONFIG = {
    "tables": [
        {"name": "a", "dim": 4, "optimizer": "adagrad", "initializer": "normal"},
        {"name": "m", "dim": 4, "optimizer": "adagrad", "initializer": "uniform"},
    ]
}
_PAD = 0


def test_unique_keys_dedups_skips_pads_and_sums_per_key():
    keys = np.array([[5, 3, 0], [3, 3, 7]], dtype=np.uint64)
    u = UniqueKeys.from_keys(keys, pad_key=0)
    np.testing.assert_array_equal(u.unique, [5, 3, 7])  # order of first appearance
    assert u.inverse[0, 2] == -1
    np.testing.assert_array_equal(u.unique[u.inverse[keys != 0]], keys[keys != 0])
    rows = np.arange(9, dtype=np.float32).reshape(3, 3)
    gathered = u.gather(rows)
    np.testing.assert_array_equal(gathered[0, 2], 0.0)
    np.testing.assert_array_equal(gathered[1, 0], rows[1])
    grads = np.ones((2, 3, 3), np.float32)
    np.testing.assert_array_equal(u.sum_per_key(grads)[:, 0], [1, 3, 1])
    with pytest.raises(TypeError, match="uint64"):
        UniqueKeys.from_keys(np.array([1, 2]))
    with pytest.raises(ValueError, match="do not match"):
        u.sum_per_key(np.ones((3, 3, 3), np.float32))


@pytest.mark.parametrize("num_shards", [1, 3])
@pytest.mark.parametrize("pad_key", [None, _PAD])
def test_from_keys_groups_unique_keys_by_shard_in_first_appearance_order(num_shards, pad_key):
    keys = np.random.default_rng(3).integers(0, 40, (16, 5)).astype(np.uint64)
    u = UniqueKeys.from_keys(keys, pad_key, num_shards)
    live = keys.ravel() if pad_key is None else keys.ravel()[keys.ravel() != pad_key]
    assert sorted(u.unique.tolist()) == sorted(set(live.tolist()))
    assert u.inverse.shape == keys.shape and u.grouped_for(num_shards)
    assert not u.grouped_for(num_shards + 1)
    present = u.inverse >= 0
    np.testing.assert_array_equal(u.unique[u.inverse[present]], keys[present])
    assert (pad_key is None) == bool(present.all())
    np.testing.assert_array_equal(keys[~present], _PAD)
    assert u.bounds is not None and u.bounds[-1] == u.unique.size
    for s in range(num_shards):
        part = u.unique[u.bounds[s] : u.bounds[s + 1]]
        assert (shard_of(part, num_shards) == s).all()
        firsts = [int(np.flatnonzero(live == k)[0]) for k in part]
        assert firsts == sorted(firsts)  # first appearance within a shard
    np.testing.assert_array_equal(np.asarray(u), u.unique)
    assert np.shape(u) == u.unique.shape


def test_from_keys_of_no_keys_and_only_pads():
    for keys in (np.zeros(0, np.uint64), np.zeros((3, 2), np.uint64)):
        u = UniqueKeys.from_keys(keys, _PAD, 4)
        assert u.unique.size == 0 and u.inverse.shape == keys.shape and (u.inverse < 0).all()
        assert u.gather(np.zeros((0, 2), np.float32)).shape == keys.shape + (2,)
    with pytest.raises(ValueError, match="num_shards"):
        UniqueKeys.from_keys(np.ones(2, np.uint64), num_shards=0)


def _made(unique=(5, 9, 7), bounds=(0, 2, 3)):
    """A hand-made ``UniqueKeys`` from lists (uint64 keys, int64 bounds) or arrays as given."""
    unique = np.asarray(unique, np.uint64) if isinstance(unique, tuple) else unique
    bounds = np.asarray(bounds, np.int64) if isinstance(bounds, tuple) else bounds
    return UniqueKeys(unique, np.arange(len(unique), dtype=np.int64), bounds)


def test_hand_made_unique_keys_with_consistent_bounds_are_accepted():
    grouped = _made()
    assert grouped.grouped_for(2)
    empty = UniqueKeys(np.zeros(0, np.uint64), np.full(3, -1, np.int64), np.zeros(4, np.int64))
    assert empty.grouped_for(3)
    assert not UniqueKeys(np.ones(2, np.uint64), np.zeros(2, np.int64)).grouped_for(1)


@pytest.mark.parametrize(
    ("unique", "bounds", "error", "message"),
    [
        (np.array([5, 9, 7], np.int64), (0, 2, 3), TypeError, "unique must be uint64, got int64"),
        ([5, 9, 7], (0, 2, 3), TypeError, "unique must be a numpy array, got list"),
        (np.ones((3, 1), np.uint64), (0, 2, 3), ValueError, r"unique must have 1 dimension"),
        ((5, 9, 7), np.array([0, 2, 3], np.int32), TypeError, "bounds must be int64, got int32"),
        ((5, 9, 7), np.array([[0, 2, 3]], np.int64), ValueError, "bounds must have 1 dim"),
        ((5, 9, 7), (3,), ValueError, r"num_shards \+ 1 >= 2 entries, got 1"),
        ((5, 9, 7), (1, 2, 3), ValueError, r"from 0 to len\(unique\) = 3, got 1 to 3"),
        ((5, 9, 7), (0, 2, 4), ValueError, r"from 0 to len\(unique\) = 3, got 0 to 4"),
        ((5, 9, 7), (0, 2), ValueError, "got 0 to 2"),
        ((5, 9, 7), (0, 3, 1, 3), ValueError, "shard 1 ends at 1, before it starts at 3"),
    ],
)
def test_hand_made_unique_keys_with_bad_arrays_or_bounds_are_refused(
    unique, bounds, error, message
):
    with pytest.raises(error, match=message):
        _made(unique, bounds)


def test_hand_made_unique_keys_with_a_bad_inverse_are_refused():
    unique = np.array([5, 9], np.uint64)
    with pytest.raises(TypeError, match="inverse must be int64, got int32"):
        UniqueKeys(unique, np.array([0, 1], np.int32))
    with pytest.raises(TypeError, match="inverse must be a numpy array, got list"):
        UniqueKeys(unique, [0, 1])


@pytest.mark.parametrize("inverse", [(0, 2), (1, -2), ((0, 1), (2, 0))])
def test_hand_made_unique_keys_with_an_inverse_out_of_range_are_refused(inverse):
    """An entry past ``unique`` would make ``sum_per_key``'s kernel write out of bounds."""
    with pytest.raises(ValueError, match="positions below len\\(unique\\) = 2, got values"):
        UniqueKeys(np.array([5, 9], np.uint64), np.array(inverse, np.int64))


def _batches(num_batches=4, n=64, seed=7):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_batches):
        multi = rng.integers(0, 300, (n, 3)).astype(np.uint64)  # 0 is the pad key
        keys = {"a": rng.integers(1, 200, n).astype(np.uint64), "m": multi}
        out.append(types.SimpleNamespace(keys=keys))
    return out


class _Recorder:
    """The step (a loss whose gradients depend on the rows) and what it saw and pushed."""

    def __init__(self):
        self.rows: list[dict[str, np.ndarray]] = []
        self.pushed: list[dict[str, dict[int, bytes]]] = []

    def step(self, batch, rows, dense):
        self.rows.append({t: r.copy() for t, r in rows.items()})
        grads = {
            t: (r * np.float32(0.3) + np.float32(0.1)).astype(np.float32) for t, r in rows.items()
        }
        return StepResult(loss=1.0, row_grads=grads)

    def record_push(self, grads_by_table):
        self.pushed.append(
            {
                t: {int(k): g.tobytes() for k, g in zip(np.asarray(keys), grads, strict=True)}
                for t, (keys, grads) in grads_by_table.items()
            }
        )


def _old_path(client, batches, recorder):
    """The path before: np.unique per table, then the client deduplicates again."""
    for batch in batches:
        unique = {}
        for table, keys in batch.keys.items():
            flat = keys.ravel()
            present = flat != _PAD
            found, inverse_present = np.unique(flat[present], return_inverse=True)
            inverse = np.full(flat.shape, -1, np.int64)
            inverse[present] = inverse_present
            unique[table] = UniqueKeys(found, inverse.reshape(keys.shape))
        rows = client.lookup_many({t: u.unique for t, u in unique.items()})
        result = recorder.step(batch, {t: u.gather(rows[t]) for t, u in unique.items()}, {})
        grads = {
            t: (unique[t].unique, unique[t].sum_per_key(g)) for t, g in result.row_grads.items()
        }
        recorder.record_push(grads)
        client.push_many(grads)


def _counting(monkeypatch, module):
    calls = []
    kernel = module.route_keys

    def counted(keys, num_shards):
        calls.append(keys.size)
        return kernel(keys, num_shards)

    monkeypatch.setattr(module, "route_keys", counted)
    return calls


def test_a_step_dedups_once_and_gives_the_rows_and_gradients_of_the_old_path(
    server_factory, monkeypatch
):
    clusters = [
        [server_factory("training", i, 2, config=_CONFIG) for i in range(2)] for _ in range(2)
    ]
    batches = _batches()
    old, new = _Recorder(), _Recorder()
    with (
        PSClient([s.address for s in clusters[0]]) as before,
        PSClient([s.address for s in clusters[1]]) as after,
    ):
        in_client = _counting(monkeypatch, ps_client.planning)
        in_unique_keys = _counting(monkeypatch, ps_client.unique_keys)
        _old_path(before, batches, old)
        assert len(in_client) == 2 * 2 * len(batches)  # lookup and push, per table
        in_client.clear()

        push_many = after.push_many

        def recording_push(grads_by_table, **kwargs):
            assert all(isinstance(k, UniqueKeys) for k, _ in grads_by_table.values())
            new.record_push(grads_by_table)
            return push_many(grads_by_table, **kwargs)

        monkeypatch.setattr(after, "push_many", recording_push)
        stats = Trainer(after, new.step, pad_key=_PAD, progress=False).run(batches)
        assert stats.batches == len(batches)
        assert in_client == []  # the client deduplicated nothing again
        assert len(in_unique_keys) == 2 * len(batches)  # one dedup per table per step

        for rows_before, rows_after in zip(old.rows, new.rows, strict=True):
            for table in rows_before:
                assert rows_before[table].tobytes() == rows_after[table].tobytes()
        assert old.pushed == new.pushed
        everything = np.arange(0, 300, dtype=np.uint64)
        final = [c.lookup_many({"a": everything, "m": everything}) for c in (before, after)]
        for table in ("a", "m"):
            assert final[0][table].tobytes() == final[1][table].tobytes()


def test_a_client_routes_unique_keys_made_for_another_shard_count_again(server_factory):
    servers = [server_factory("training", i, 2, config=_CONFIG) for i in range(2)]
    keys = np.array([[5, 9, 0], [9, 11, 5]], np.uint64)
    with PSClient([s.address for s in servers]) as client:
        assert num_shards_of(client) == 2 and num_shards_of(object()) is None
        one_shard = UniqueKeys.from_keys(keys, _PAD, num_shards=1)
        two_shards = UniqueKeys.from_keys(keys, _PAD, num_shards=2)
        assert keys_for(client, two_shards) is two_shards
        rows = client.lookup_many({"a": one_shard, "m": two_shards})
        for table, u in (("a", one_shard), ("m", two_shards)):
            np.testing.assert_array_equal(rows[table], client.lookup(table, u.unique))
        grads = np.ones((one_shard.unique.size, 4), np.float32)
        assert client.push_many({"a": (one_shard, grads)}).rows_updated == 3
        with pytest.raises(ValueError, match="must have shape"):
            client.push_many({"a": (two_shards, np.ones((2, 4), np.float32))})


def test_from_keys_gives_the_same_groups_with_the_numpy_kernels(monkeypatch):
    """A client installed without Numba deduplicates with the numpy kernel: same result."""
    from ps_client import kernels_numpy

    keys = np.random.default_rng(5).integers(0, 60, (32, 4)).astype(np.uint64)
    for num_shards in (1, 4):
        with_numba = UniqueKeys.from_keys(keys, _PAD, num_shards)
        monkeypatch.setattr(ps_client.unique_keys, "route_keys", kernels_numpy.route_keys)
        with_numpy = UniqueKeys.from_keys(keys, _PAD, num_shards)
        monkeypatch.undo()
        for field in ("unique", "inverse", "bounds"):
            np.testing.assert_array_equal(getattr(with_numpy, field), getattr(with_numba, field))
