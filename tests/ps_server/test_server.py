"""In-process PS servers on loopback: lookups and pushes, roles, health, reflection,
topology checks, push dedup, dense arrays, expiry and the snapshot seam."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from monolith_ps.config import parse_config
from monolith_ps.routing import shard_of
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from ps_client import PreconditionError, PSClient, TopologyError
from ps_server.hooks import SnapshotResult
from ps_server.server import SERVICE_NAME
from ps_server.table import EmbeddingTable


@pytest.fixture(scope="module")
def training(server_factory):
    return server_factory("training")


@pytest.fixture(scope="module")
def serving(server_factory):
    return server_factory("serving")


@pytest.fixture(scope="module")
def training_cluster(server_factory):
    return [server_factory("training", i, 3) for i in range(3)]


def stub_of(server) -> ps_pb2_grpc.ParameterServerStub:
    channel = grpc.insecure_channel(server.address)
    return ps_pb2_grpc.ParameterServerStub(channel)


def local_tables(config) -> dict[str, EmbeddingTable]:
    return {cfg.name: EmbeddingTable(cfg) for cfg in parse_config(config).tables}


@pytest.mark.parametrize("cluster", ["one_shard", "three_shards"])
def test_lookups_and_pushes_equal_a_local_table(cluster, request, rng, service_config):
    servers = (
        [request.getfixturevalue("training")]
        if cluster == "one_shard"
        else request.getfixturevalue("training_cluster")
    )
    local = local_tables(service_config)
    base = 1_000_000 * (1 + len(servers))  # keys no other test of this module touches
    with PSClient([s.address for s in servers]) as client:
        for _ in range(4):
            keys = {
                name: (base + rng.integers(0, 300, size=200)).astype(np.uint64)
                for name in ("user_id", "item_id")
            }
            rows = client.lookup_many(keys)
            for name, k in keys.items():
                expected = local[name].find_or_insert(k)
                np.testing.assert_allclose(rows[name], expected, rtol=1e-5, atol=1e-6)
            grads = {
                name: (k, rng.standard_normal((k.size, local[name].dim)).astype(np.float32))
                for name, k in keys.items()
            }
            result = client.push_many(grads)
            for name, (k, g) in grads.items():
                local[name].apply_gradients(k, g)
            assert result.rows_updated == sum(np.unique(k).size for k in keys.values())
            assert result.duplicate_requests == 0
        every_key = (base + np.arange(300)).astype(np.uint64)
        for name in ("user_id", "item_id"):
            np.testing.assert_allclose(
                client.lookup(name, every_key), local[name].find_or_insert(every_key), rtol=1e-5,
                atol=1e-6,
            )  # fmt: skip
    if cluster == "three_shards":
        rows_per_shard = [len(s.state.tables["user_id"]) for s in servers]
        assert sum(rows_per_shard) == 300 and min(rows_per_shard) > 50


def test_admission_counts_lookups_before_giving_a_row(training):
    with PSClient([training.address]) as client:
        keys = np.array([7001, 7002], dtype=np.uint64)
        grads = np.ones((2, 4), dtype=np.float32)
        for _ in range(2):  # pushes never count a sighting
            pushed = client.push("gated", keys, grads)
            assert (pushed.rows_updated, pushed.rows_pending_admission) == (0, 2)
        client.lookup("gated", keys)
        first = client.push("gated", keys, grads)
        assert (first.rows_updated, first.rows_pending_admission) == (0, 2)
        client.lookup("gated", keys)  # the second sighting (admit_after: 2) gives the rows
        second = client.push("gated", keys, grads)
        assert (second.rows_updated, second.rows_pending_admission) == (2, 0)
    assert len(training.state.tables["gated"]) == 2


def test_serving_finds_only_and_refuses_writes(serving):
    stub = stub_of(serving)
    keys = np.array([1, 2, 3], dtype=np.uint64)
    with PSClient([serving.address], role="serving") as client:
        values, found = client.lookup("user_id", keys, with_found=True)
        assert values.shape == (3, 8) and not found.any()
        with pytest.raises(PreconditionError, match="serving server") as info:
            client.push("user_id", keys, np.zeros((3, 8), np.float32))
        assert isinstance(info.value.__cause__, grpc.RpcError)
        with pytest.raises(PreconditionError, match="PushDense refused"):
            client.push_dense({"mlp": np.zeros(16)})
    with pytest.raises(grpc.RpcError) as info:
        stub.Push(
            ps_pb2.PushRequest(
                tables=[ps_pb2.TableGradients(table="user_id", keys=keys.tobytes(),
                                              grads=np.zeros((3, 8), np.float32).tobytes())]
            )
        )  # fmt: skip
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(serving.state.tables["user_id"]) == 0


def test_serving_lookup_returns_rows_after_a_delta(serving, service_config):
    """Rows a sync put on serving come back with found = 1 (float16 storage)."""
    table = serving.state.tables["user_id"]
    source = EmbeddingTable(parse_config(service_config).table("user_id"))
    source.find_or_insert(np.array([11, 12], dtype=np.uint64))
    table.apply_delta(source.export_since(0))
    with PSClient([serving.address], role="serving") as client:
        values, found = client.lookup(
            "user_id", np.array([12, 13, 11], dtype=np.uint64), with_found=True
        )
    assert found.tolist() == [True, False, True]
    expected = source.find(np.array([12, 11], dtype=np.uint64))[0]
    np.testing.assert_allclose(values[[0, 2]], expected, rtol=1e-3, atol=1e-3)
    info = {
        t.name: t for t in stub_of(serving).DescribeTables(ps_pb2.DescribeTablesRequest()).tables
    }
    assert info["user_id"].dtype == ps_pb2.DTYPE_FLOAT16 and info["user_id"].num_rows == 2


def test_describe_reports_identity_and_tables(training_cluster):
    reply = stub_of(training_cluster[1]).DescribeTables(ps_pb2.DescribeTablesRequest())
    assert (reply.role, reply.shard_index, reply.num_shards) == (ps_pb2.ROLE_TRAINING, 1, 3)
    assert reply.epoch != 0 and reply.epoch == training_cluster[1].state.epoch
    assert [t.name for t in reply.tables] == ["user_id", "item_id", "gated"]
    assert reply.tables[0].optimizer_args_json == '{"lr": 0.05}'
    assert not reply.dense  # dense arrays live on shard 0 only
    epochs = {s.state.epoch for s in training_cluster}
    assert len(epochs) == 3


def test_push_with_a_seen_request_id_is_applied_once(training):
    stub = stub_of(training)
    keys = np.array([555], dtype=np.uint64)
    request = ps_pb2.PushRequest(
        tables=[ps_pb2.TableGradients(table="item_id", keys=keys.tobytes(),
                                      grads=np.ones((1, 4), np.float32).tobytes())],
        request_id="push-once",
    )  # fmt: skip
    table = training.state.tables["item_id"]
    first = stub.Push(request)
    after_first = table.find(keys)[0].copy()
    second = stub.Push(request)
    assert not first.duplicate and second.duplicate
    assert second.rows_updated == first.rows_updated == 1
    np.testing.assert_array_equal(table.find(keys)[0], after_first)


def test_dense_arrays_pull_and_push(training, training_cluster):
    with PSClient([training.address]) as client:
        before = client.pull_dense()
        grad = np.arange(16, dtype=np.float32)
        version = client.push_dense({"mlp": grad})
        after = client.pull_dense(["mlp"])
    np.testing.assert_allclose(after["mlp"], before["mlp"] - 0.1 * grad, rtol=1e-6)
    assert version == training.state.dense.version
    with pytest.raises(grpc.RpcError) as info:
        stub_of(training_cluster[1]).PullDense(ps_pb2.PullDenseRequest())
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "shard 0" in info.value.details()


def test_shard_view_mismatch_names_both_views(training_cluster):
    stub = stub_of(training_cluster[2])
    request = ps_pb2.LookupRequest(
        tables=[ps_pb2.TableKeys(table="user_id", keys=np.uint64([1]).tobytes())],
        view=ps_pb2.ShardView(shard_index=1, num_shards=3),
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Lookup(request)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "shard 1 of 3" in info.value.details() and "shard 2 of 3" in info.value.details()


def test_client_orders_shuffled_addresses_and_refuses_what_is_not_one_cluster(
    training, training_cluster
):
    shuffled = [training_cluster[i].address for i in (2, 0, 1)]
    with PSClient(shuffled) as client, PSClient([s.address for s in training_cluster]) as ordered:
        keys = np.arange(1, 300, dtype=np.uint64)
        np.testing.assert_array_equal(
            client.lookup("user_id", keys), ordered.lookup("user_id", keys)
        )
        assert client.addresses == ordered.addresses
        assert [s.shard_index for s in client.describe()] == [0, 1, 2]
    for addresses, problem in [
        ([s.address for s in training_cluster[:2]], r"has 3 shards but shard\(s\) \[2\] are not"),
        ([training.address, training_cluster[1].address], r"different shard counts \[1, 3\]"),
        ([training_cluster[0].address] * 2, "shard 0 is claimed by both"),
    ]:
        with PSClient(addresses) as client, pytest.raises(TopologyError, match=problem):
            client.lookup("user_id", np.array([1], dtype=np.uint64))
    with (
        PSClient([training.address], role="serving") as client,
        pytest.raises(TopologyError, match="this client wants serving"),
    ):
        client.lookup("user_id", np.array([1], dtype=np.uint64))


def test_health_and_reflection(training):
    channel = grpc.insecure_channel(training.address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert SERVICE_NAME in services and "grpc.health.v1.Health" in services


class RecordingSnapshotter:
    """Stands in for the snapshot store: records when the server calls each hook."""

    def __init__(self, state, settings, metrics):
        self.state = state
        self.settings = settings
        self.calls: list[tuple[str, object]] = []
        self.health_during_restore = None
        self.push_during_restore = None
        self.address: str | None = None

    def restore(self):
        with grpc.insecure_channel(self.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
            try:
                ps_pb2_grpc.ParameterServerStub(channel).Push(ps_pb2.PushRequest(), timeout=5)
            except grpc.RpcError as err:
                self.push_during_restore = (err.code(), err.details())
        self.health_during_restore = reply.status
        self.state.epoch = 42
        self.calls.append(("restore", None))

    def start(self):
        self.calls.append(("start", None))

    def snapshot(self, full):
        self.calls.append(("snapshot", full))
        return SnapshotResult(path=f"{self.settings.snapshot_dir}/full-1", bytes=123, seconds=0.5)

    def close(self, final):
        self.calls.append(("close", final))


def test_snapshot_seam_restores_before_serving_and_snapshots_last(server_factory, tmp_path):
    made = []

    def factory(state, settings, metrics, receiver):
        made.append(RecordingSnapshotter(state, settings, metrics))
        return made[-1]

    server = server_factory(
        "training", start=False, snapshotter_factory=factory, snapshot_dir=str(tmp_path)
    )
    snapshotter = made[0]
    snapshotter.address = server.address
    server.start()
    assert snapshotter.health_during_restore == health_pb2.HealthCheckResponse.NOT_SERVING
    # Data RPCs wait for the restore: UNAVAILABLE, which clients retry.
    code, details = snapshotter.push_during_restore
    assert code == grpc.StatusCode.UNAVAILABLE and "server is starting" in details
    assert stub_of(server).DescribeTables(ps_pb2.DescribeTablesRequest()).epoch == 42
    reply = stub_of(server).Snapshot(ps_pb2.SnapshotRequest(full=True))
    assert (reply.path, reply.bytes, reply.seconds) == (f"{tmp_path}/full-1", 123, 0.5)
    server.stop(grace=1)
    assert snapshotter.calls == [("restore", None), ("start", None), ("snapshot", True),
                                 ("close", True)]  # fmt: skip


def test_snapshot_without_a_snapshot_dir_is_a_failed_precondition(training):
    with pytest.raises(grpc.RpcError) as info:
        stub_of(training).Snapshot(ps_pb2.SnapshotRequest(full=True))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no --snapshot-dir configured" in info.value.details()


def test_snapshot_dir_without_a_snapshotter_fails_at_start(server_factory, tmp_path):
    with pytest.raises(ValueError, match="no snapshotter"):
        server_factory("training", snapshot_dir=str(tmp_path))


def test_expiry_sweep_drops_rows_past_their_ttl(server_factory, service_config):
    config = service_config
    config["tables"][1]["ttl_seconds"] = 0.2
    config["server"] = {"expiry_sweep_interval": "50ms"}
    server = server_factory("training", config=config)
    with PSClient([server.address]) as client:
        client.lookup("item_id", np.arange(1, 11, dtype=np.uint64))
        assert client.describe()[0].tables["item_id"].num_rows == 10
        deadline = time.monotonic() + 10
        while client.describe()[0].tables["item_id"].num_rows and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.describe()[0].tables["item_id"].num_rows == 0
    assert server.state.tables["item_id"].stats()["expired"] == 10


def test_concurrent_clients_see_consistent_rows(training):
    keys = np.arange(9000, 9400, dtype=np.uint64)
    errors: list[BaseException] = []

    def worker(seed):
        try:
            with PSClient([training.address]) as client:
                for _ in range(10):
                    client.push("item_id", keys, np.full((keys.size, 4), 1.0, np.float32))
                    client.lookup("item_id", keys)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    with PSClient([training.address]) as client:
        start = client.lookup("item_id", keys)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with PSClient([training.address]) as client:
        end = client.lookup("item_id", keys)
    np.testing.assert_allclose(end, start - 0.1 * 40, rtol=1e-5)


def test_keys_of_another_shard_are_refused(training_cluster):
    keys = np.arange(1, 50, dtype=np.uint64)
    stranger = keys[shard_of(keys, 3) == 1][:1]
    before = len(training_cluster[0].state.tables["user_id"])
    request = ps_pb2.LookupRequest(
        tables=[ps_pb2.TableKeys(table="user_id", keys=stranger.tobytes())],
        view=ps_pb2.ShardView(shard_index=0, num_shards=3),
    )
    with pytest.raises(grpc.RpcError) as info:
        stub_of(training_cluster[0]).Lookup(request)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"key {stranger[0]} is shard 1 of 3, this server is shard 0" in info.value.details()
    assert len(training_cluster[0].state.tables["user_id"]) == before
