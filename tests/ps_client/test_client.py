"""The client library: routing and dedup, segment-sum, chunking, errors, retry policy,
feature IDs, and its behaviour against real in-process servers."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from monolith_ps.routing import mix64, shard_of
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from ps_client import (
    InvalidRequestError,
    PreconditionError,
    PSClient,
    RetryPolicy,
    SnapshotInfo,
    SyncCursor,
    SyncState,
    TopologyError,
    UnknownTableError,
    make_fid,
)
from ps_client.errors import error_from_rpc
from ps_client.kernels import segment_sum
from ps_client.planning import plan_chunks, route

MASK64 = (1 << 64) - 1


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory("training")


@pytest.fixture(scope="module")
def small_limits_server(server_factory):
    config = {
        "tables": [{"name": "t", "dim": 8, "optimizer": "sgd"}],
        "server": {"max_message_bytes": 1 << 16, "max_batch_keys": 300},
    }
    return server_factory("training", config=config)


# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize("num_shards", [1, 2, 5])
def test_route_groups_unique_keys_by_shard_and_maps_back(rng, num_shards):
    keys = rng.integers(0, 500, size=2000).astype(np.uint64)
    routed = route(keys, num_shards)
    assert np.unique(routed.keys).size == routed.keys.size == np.unique(keys).size
    np.testing.assert_array_equal(routed.keys[routed.position], keys)
    owners = shard_of(routed.keys, num_shards)
    for s in range(num_shards):
        assert np.all(owners[routed.bounds[s] : routed.bounds[s + 1]] == s)
    assert routed.bounds[-1] == routed.keys.size


def test_segment_sum_equals_add_at(rng):
    rows = rng.integers(0, 50, size=1000)
    grads = rng.standard_normal((1000, 6)).astype(np.float32)
    out = np.zeros((50, 6), np.float32)
    segment_sum(rows, grads, out)
    expected = np.zeros((50, 6), np.float64)
    np.add.at(expected, rows, grads)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_plan_chunks_covers_every_row_within_limits(rng):
    for _ in range(50):
        sizes = rng.integers(0, 400, size=rng.integers(1, 5)).tolist()
        costs = rng.integers(8, 200, size=len(sizes)).tolist()
        budget, max_keys = int(rng.integers(200, 5000)), int(rng.integers(1, 300))
        messages = plan_chunks(sizes, costs, budget, max_keys)
        covered = [[] for _ in sizes]
        for message in messages:
            assert sum((b - a) * costs[e] for e, a, b in message) <= budget
            assert sum(b - a for _, a, b in message) <= max_keys
            for e, a, b in message:
                assert a < b
                covered[e].append((a, b))
        for e, spans in enumerate(covered):
            position = 0
            for a, b in sorted(spans):
                assert a == position
                position = b
            assert position == sizes[e]
    assert plan_chunks([10], [8], 1000, 100) == [[(0, 0, 10)]]


def test_retry_policy_backs_off_exponentially_within_bounds():
    policy = RetryPolicy(max_attempts=4, initial_backoff=0.1, max_backoff=0.5, jitter=0.2)
    assert [policy.should_retry(grpc.StatusCode.UNAVAILABLE, a) for a in (1, 3, 4)] == [
        True, True, False
    ]  # fmt: skip
    assert not policy.should_retry(grpc.StatusCode.INVALID_ARGUMENT, 1)
    # a call that raced a server's graceful stop gets CANCELLED from gRPC: try again
    assert policy.should_retry(grpc.StatusCode.CANCELLED, 1)
    for attempt, nominal in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        pause = policy.backoff(attempt)
        assert nominal * 0.8 <= pause <= nominal * 1.2
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


@pytest.mark.parametrize(
    ("code", "details", "cls", "builtin"),
    [
        (grpc.StatusCode.NOT_FOUND, "unknown table 'x'", UnknownTableError, KeyError),
        (grpc.StatusCode.INVALID_ARGUMENT, "NaN", InvalidRequestError, ValueError),
        (grpc.StatusCode.FAILED_PRECONDITION, "serving", PreconditionError, RuntimeError),
        (grpc.StatusCode.FAILED_PRECONDITION, "shard view mismatch: ...", TopologyError,
         RuntimeError),
        (grpc.StatusCode.UNAVAILABLE, "down", ConnectionError, ConnectionError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "slow", TimeoutError, TimeoutError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "too big", ValueError, ValueError),
    ],
)  # fmt: skip
def test_errors_map_status_codes_to_builtin_subclasses(code, details, cls, builtin):
    error = error_from_rpc(_FakeRpcError(code, details), "127.0.0.1:1", "Lookup")
    assert isinstance(error, cls) and isinstance(error, builtin)
    assert "Lookup on 127.0.0.1:1 failed with" in str(error) and details in str(error)


# ---------------------------------------------------------------- feature IDs


def _reference_fid(slot: int, value: int) -> int:
    """make_fid for one int, in plain Python."""

    def py_mix64(x: int) -> int:
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
        return x ^ (x >> 31)

    return (slot << 48) | (py_mix64((value & MASK64) ^ 0x2545F4914F6CDD1D) & ((1 << 48) - 1))


def test_make_fid_puts_the_slot_in_the_high_bits(rng):
    values = rng.integers(-(2**62), 2**62, size=1000)
    fids = make_fid(7, values)
    assert fids.dtype == np.uint64 and fids.shape == (1000,)
    assert np.all(fids >> np.uint64(48) == 7)
    assert [int(f) for f in fids[:20]] == [_reference_fid(7, int(v)) for v in values[:20]]
    assert make_fid(7, int(values[3])) == fids[3]
    assert np.unique(fids).size == 1000
    assert make_fid(1, -1) == make_fid(1, np.uint64(MASK64))
    assert int(mix64(np.uint64(1))) != 0  # routing hash stays importable next to it


def test_make_fid_vectorizes_over_shapes_strings_and_slot_arrays():
    grid = make_fid(3, np.arange(12).reshape(3, 4))
    assert grid.shape == (3, 4) and grid[1, 2] == make_fid(3, 6)
    assert make_fid(2, "user-17") == make_fid(2, b"user-17") == make_fid(2, ["user-17"])[0]
    assert make_fid(2, "a") != make_fid(2, "b") and make_fid(2, "a") != make_fid(3, "a")
    per_slot = make_fid(np.array([1, 2]), np.array([5, 5]))
    assert per_slot.tolist() == [make_fid(1, 5), make_fid(2, 5)]
    assert make_fid(1, np.zeros(4, dtype=np.int64)).min() > 0  # slot >= 1 never gives 0


@pytest.mark.parametrize(
    ("slot", "value", "error"),
    [(1 << 16, 1, ValueError), (-1, 1, ValueError), (1.5, 1, TypeError), (1, 1.5, TypeError),
     (1, np.array([b"a", 3], dtype=object), TypeError)],
)  # fmt: skip
def test_make_fid_refuses(slot, value, error):
    with pytest.raises(error):
        make_fid(slot, value)


# ---------------------------------------------------------------- against a server


def test_lookup_keeps_the_shape_and_order_of_the_keys(server):
    keys = np.array([[5, 3, 5], [9, 3, 1]], dtype=np.int64)
    with PSClient([server.address]) as client:
        rows = client.lookup("user_id", keys)
        flat = client.lookup("user_id", keys.reshape(-1).astype(np.uint64))
        empty = client.lookup("user_id", np.array([], dtype=np.uint64))
        future = client.lookup_async("user_id", keys)
        assert rows.shape == (2, 3, 8) and rows.dtype == np.float32
        assert rows.flags.writeable and rows.flags.c_contiguous
        np.testing.assert_array_equal(rows.reshape(6, 8), flat)
        np.testing.assert_array_equal(rows[0, 0], rows[0, 2])
        np.testing.assert_array_equal(future.result(timeout=30), rows)
        assert empty.shape == (0, 8)


def test_push_sums_duplicates_before_the_wire(server):
    keys = np.array([41, 42, 41, 41], dtype=np.uint64)
    grads = np.ones((4, 4), np.float32)
    with PSClient([server.address]) as client:
        before = client.lookup("item_id", keys)
        result = client.push("item_id", keys, grads)
        after = client.lookup("item_id", keys)
    assert result.rows_updated == 2
    np.testing.assert_allclose(after[0], before[0] - 0.1 * 3, rtol=1e-6)
    np.testing.assert_allclose(after[1], before[1] - 0.1 * 1, rtol=1e-6)


def test_large_batches_are_split_under_the_server_limits(small_limits_server):
    server = small_limits_server
    keys = np.arange(1, 5001, dtype=np.uint64)  # 5000 x 32 B rows: > 64 KiB and > 300 keys

    def lookups_ok() -> float:
        sample = server.registry.get_sample_value(
            "monolith_ps_rpc_requests_total", {"method": "Lookup", "code": "OK"}
        )
        return sample or 0.0

    before = lookups_ok()
    with PSClient([server.address]) as client:
        rows = client.lookup("t", keys)
        client.push("t", keys, np.ones((5000, 8), np.float32))
        after_push = client.lookup("t", keys)
    assert lookups_ok() - before >= 2 * np.ceil(5000 / 300)
    np.testing.assert_allclose(after_push, rows - 0.01, rtol=1e-5, atol=1e-6)
    assert len(server.state.tables["t"]) == 5000


def test_lookup_decodes_into_the_callers_array(small_limits_server):
    keys = np.concatenate([np.arange(1, 2001), np.arange(1, 2001, 7)]).astype(np.uint64)
    out = np.full((keys.size, 8), np.nan, np.float32)  # answered in several messages
    with PSClient([small_limits_server.address]) as client:
        expected = client.lookup("t", keys)
        got = client.lookup("t", keys, out=out)
        assert got is out
        np.testing.assert_array_equal(out, expected)
        flat = np.empty(keys.size * 8, np.float32)
        assert client.lookup_many({"t": keys}, out={"t": flat})["t"] is flat
        np.testing.assert_array_equal(flat.reshape(-1, 8), expected)
        for bad in (np.empty((keys.size, 8), np.float64), np.empty((3, 8), np.float32),
                    np.empty((8, keys.size), np.float32).T):  # fmt: skip
            with pytest.raises(ValueError, match="out for table 't'"):
                client.lookup("t", keys, out=bad)
        with pytest.raises(ValueError, match="not looked up"):
            client.lookup_many({"t": keys}, out={"u": out})


def test_bad_arguments_fail_before_the_wire(server):
    with PSClient([server.address]) as client:
        with pytest.raises(UnknownTableError, match="unknown table 'nope'"):
            client.lookup("nope", np.array([1], dtype=np.uint64))
        with pytest.raises(TypeError, match="must be integers"):
            client.lookup("user_id", np.array([1.5]))
        with pytest.raises(ValueError, match=r"keys.shape \+ \(8,\)"):
            client.push("user_id", np.array([1, 2], dtype=np.uint64), np.zeros((2, 7)))
        with pytest.raises(PreconditionError, match="with_found needs serving"):
            client.lookup("user_id", np.array([1], dtype=np.uint64), with_found=True)
        with pytest.raises(InvalidRequestError, match="NaN or Inf") as info:
            client.push("user_id", np.array([1], dtype=np.uint64), np.full((1, 8), np.nan))
        assert info.value.__cause__.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(RuntimeError, match="closed"):
        client.describe()
    with PSClient(server.address) as named:  # one string is a name to resolve
        assert named.addresses == (server.address,) and named.describe()[0].shard_index == 0


def test_unreachable_server_fails_after_the_deadline():
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.1)
    with (
        PSClient(["127.0.0.1:1"], retry=retry, timeout=2, attempt_timeout=0.5) as client,
        pytest.raises(ConnectionError, match="unreachable through 3 attempts") as info,
    ):
        client.describe()
    assert isinstance(info.value.__cause__, grpc.RpcError)


def test_from_config_takes_the_message_limit_from_the_cluster_file(server, tmp_path):
    (tmp_path / "c.yaml").write_text(
        "tables:\n  - {name: user_id, dim: 8}\nserver: {max_message_bytes: 100000}\n"
    )
    with PSClient.from_config(tmp_path / "c.yaml", f"{server.address},") as client:
        assert client.addresses == (server.address,)
        assert client._max_message_bytes == 100000
        assert client.lookup("user_id", np.array([1], np.uint64)).shape == (1, 8)


def test_pull_dense_with_version_returns_the_version_of_the_arrays(server):
    with PSClient([server.address]) as client:
        _, before = client.pull_dense(["mlp"], with_version=True)
        pushed = client.push_dense({"mlp": np.ones(16, np.float32)})
        arrays, version = client.pull_dense(["mlp"], with_version=True)
        plain = client.pull_dense(["mlp"])
    assert version == pushed == before + 1
    assert isinstance(plain, dict) and list(plain) == ["mlp"]
    np.testing.assert_array_equal(plain["mlp"], arrays["mlp"])


def test_sync_state_reports_what_a_serving_server_applied(server, server_factory):
    serving = server_factory("serving")
    keys = np.array([7, 8, 9], dtype=np.uint64)
    with PSClient([server.address]) as training:
        training.push("item_id", keys, np.ones((3, 4), np.float32))
        dense_version = training.push_dense({"mlp": np.ones(16, np.float32)})
        (shard,) = training.describe()
        with PSClient([serving.address], role="serving") as client:
            (empty,) = client.sync_state()
            source = ps_pb2_grpc.ParameterServerStub(grpc.insecure_channel(server.address))
            target = ps_pb2_grpc.ParameterServerStub(grpc.insecure_channel(serving.address))
            for table in ("item_id", ""):  # a full export of a table, then of the dense arrays
                request = ps_pb2.ExportDeltaRequest(table=table)
                target.ApplyDelta(source.ExportDelta(request, timeout=30), timeout=30)
            (state,) = client.sync_state()
            with pytest.raises(PreconditionError, match="serving server"):
                client.expire()
        with pytest.raises(PreconditionError, match="GetSyncState"):
            training.sync_state()
    assert empty == SyncState(serving.address, 0, 1, (), 0, 0)
    assert isinstance(state, SyncState)
    (cursor,) = state.cursors
    assert isinstance(cursor, SyncCursor)
    assert (cursor.table, cursor.source_shard, cursor.source_num_shards) == ("item_id", 0, 1)
    assert (cursor.epoch, cursor.version) == (shard.epoch, shard.tables["item_id"].version)
    assert cursor.applied_at_unix > 0
    assert state.dense_version == dense_version
    assert state.dense_epoch != 0


def test_expire_drops_rows_past_their_ttl_on_every_shard(server_factory):
    config = {"tables": [{"name": "t", "dim": 4, "optimizer": "sgd", "ttl_seconds": 60}]}
    servers = [server_factory("training", i, 2, config=config) for i in range(2)]
    keys = np.arange(1, 201, dtype=np.uint64)
    with PSClient([s.address for s in servers]) as client:
        client.push("t", keys, np.ones((200, 4), np.float32))
        assert client.expire() == 0  # nothing is 60 s old yet
        with pytest.raises(ValueError, match="now must be unix seconds"):
            client.expire(-1.0)
        assert client.expire(time.time() + 3600) == 200
        assert sum(s.tables["t"].num_rows for s in client.describe()) == 0


def test_snapshot_writes_one_on_every_shard(server_factory, tmp_path):
    from ps_server.snapshot.snapshotter import make_snapshotter

    servers = [
        server_factory(
            "training",
            i,
            2,
            snapshotter_factory=make_snapshotter,
            snapshot_dir=str(tmp_path / f"shard{i}"),
        )
        for i in range(2)
    ]
    keys = np.arange(1, 101, dtype=np.uint64)
    with PSClient([s.address for s in servers]) as client:
        client.push("item_id", keys, np.ones((100, 4), np.float32))
        written = client.snapshot(full=True)
        assert [w.address for w in written] == list(client.addresses)
        for shard, info in enumerate(written):
            assert isinstance(info, SnapshotInfo)
            assert Path(info.path).is_dir()
            assert Path(info.path).is_relative_to(tmp_path / f"shard{shard}")
            assert info.bytes > 0 and info.seconds >= 0
        (incremental, _) = client.snapshot()
        assert incremental.path != written[0].path


def test_snapshot_without_a_snapshot_dir_is_refused(server):
    with PSClient([server.address]) as client, pytest.raises(PreconditionError, match="snapshot"):
        client.snapshot()


@pytest.mark.parametrize("tune", [True, False])
def test_a_client_fixes_the_malloc_thresholds_unless_told_not_to(monkeypatch, tune):
    from ps_client import client as client_module

    calls = []
    monkeypatch.setattr(client_module, "reuse_large_buffers_by_default", lambda: calls.append(1))
    PSClient(["127.0.0.1:1"], tune_allocator=tune).close()
    assert len(calls) == int(tune)
