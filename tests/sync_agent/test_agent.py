"""The agent against in-process servers: 2 training shards -> 3 serving shards x 2 replicas.

After each round every serving replica must hold exactly the rows training holds for its
shard (keys and values; float16 tables within their precision), deletes, expiries and
evictions included.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from monolith_ps.cli import build_parser
from monolith_ps.routing import shard_of
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from sync_agent.agent import SyncAgent
from sync_agent.discovery.base import Endpoint, Role
from sync_agent.discovery.static import StaticDiscovery
from sync_agent.main import main as agent_main
from sync_agent.settings import AgentSettings

N_TRAIN, N_SERVE, REPLICAS = 2, 3, 2
TTL = 1000.0
CONFIG = {
    "tables": [
        {"name": "emb", "dim": 8, "optimizer": "adagrad", "optimizer_args": {"lr": 0.1},
         "initializer": "normal", "ttl_seconds": TTL},
        {"name": "half", "dim": 4, "optimizer": "sgd", "optimizer_args": {"lr": 0.5},
         "initializer": "uniform", "serving_dtype": "float16"},
        {"name": "capped", "dim": 2, "optimizer": "sgd", "initializer": "zeros",
         "max_rows": 300, "eviction": "lru"},
    ],
    "dense": [{"name": "mlp", "size": 32, "optimizer": "sgd", "optimizer_args": {"lr": 0.1}}],
    "sync": {"chunk_rows": 97},
}  # fmt: skip
TABLES = [t["name"] for t in CONFIG["tables"]]


@pytest.fixture(scope="module")
def cluster(server_factory):
    training = [server_factory("training", i, N_TRAIN, config=CONFIG) for i in range(N_TRAIN)]
    serving = [
        [server_factory("serving", s, N_SERVE, config=CONFIG) for _ in range(REPLICAS)]
        for s in range(N_SERVE)
    ]
    return training, serving


def make_agent(cluster, registry=None, discovery=None, **overrides) -> SyncAgent:
    training, serving = cluster
    options = {"chunk_rows": 97, "rpc_timeout": 5.0, "stall_timeout": 5.0, "stream_timeout": 60.0}
    settings = AgentSettings(
        training=tuple(t.address for t in training),
        serving=tuple(r.address for replicas in serving for r in replicas),
        **{**options, **overrides},
    )
    return SyncAgent(
        settings,
        discovery or StaticDiscovery(settings.training, settings.serving),
        registry or CollectorRegistry(),
    )


def mutate(training, rng, round_index):
    """Random pushes on every table, deletes, an expiry sweep and LRU evictions."""
    for name in TABLES:
        keys = np.unique(rng.integers(1, 5_000, size=400).astype(np.uint64))
        owner = shard_of(keys, N_TRAIN)
        for i, server in enumerate(training):
            table = server.state.table(name)
            mine = keys[owner == i]
            table.find_or_insert(mine)
            table.apply_gradients(
                mine, rng.standard_normal((len(mine), table.dim)).astype(np.float32)
            )
            held = table.keys()
            if len(held):
                table.delete(rng.choice(held, size=min(len(held), 15), replace=False))
    if round_index == 1:
        # Rows of "emb" untouched since before this moment expire; fresh rows arrive a
        # second after it.
        cutoff = time.time()
        for i, server in enumerate(training):
            table = server.state.table("emb")
            fresh = np.arange(50_000, 50_100, dtype=np.uint64)
            fresh = fresh[shard_of(fresh, N_TRAIN) == i]
            table.find_or_insert(fresh, now=cutoff + 1.0)
            grads = np.ones((len(fresh), table.dim), dtype=np.float32)
            table.apply_gradients(fresh, grads, now=cutoff + 1.0)
            assert table.expire(now=cutoff + TTL) > 0


def assert_converged(cluster):
    training, serving = cluster
    for name in TABLES:
        keys = np.concatenate([t.state.table(name).keys() for t in training])
        values = np.concatenate(
            [t.state.table(name).find(t.state.table(name).keys())[0] for t in training]
        )
        owner = shard_of(keys, N_SERVE)
        for s, replicas in enumerate(serving):
            want_keys = keys[owner == s]
            order = np.argsort(want_keys)
            want_keys, want_values = want_keys[order], values[owner == s][order]
            for replica in replicas:
                table = replica.state.table(name)
                got_keys = np.sort(table.keys())
                np.testing.assert_array_equal(got_keys, want_keys, err_msg=f"{name} shard {s}")
                got_values, found = table.find(want_keys)
                assert found.all()
                if table.dtype == np.float16:
                    np.testing.assert_allclose(got_values, want_values, rtol=1e-3, atol=1e-3)
                else:
                    np.testing.assert_array_equal(got_values, want_values)


def test_rounds_converge_every_replica_with_training(cluster, rng):
    training, _ = cluster
    registry = CollectorRegistry()
    with make_agent(cluster, registry) as agent:
        for round_index in range(3):
            mutate(training, rng, round_index)
            report = agent.sync_sparse()
            assert report.outcome == "ok", report.errors
            assert_converged(cluster)
            if round_index == 0:
                # every replica bootstraps from both training shards, for every table
                assert report.full_resyncs == len(TABLES) * N_TRAIN * N_SERVE * REPLICAS
            else:
                assert report.full_resyncs == 0
        idle = agent.sync_sparse()
        assert idle.outcome == "ok" and idle.streams_ok == 0 and idle.rows_applied == 0
    replica = f"{cluster[1][0][0].address}"
    for name in TABLES:
        assert (
            registry.get_sample_value(
                "monolith_ps_sync_lag_versions", {"replica": replica, "table": name}
            )
            == 0
        )
        assert (
            registry.get_sample_value(
                "monolith_ps_sync_rows_applied_total", {"replica": replica, "table": name}
            )
            > 0
        )
    assert (
        registry.get_sample_value(
            "monolith_ps_sync_rounds_total", {"kind": "sparse", "outcome": "ok"}
        )
        == 4
    )
    evicted = sum(t.state.table("capped").stats()["evicted"] for t in training)
    assert evicted > 0  # evictions happened on training and were synced as tombstones


def test_dense_arrays_reach_every_replica(cluster):
    training, serving = cluster
    dense = training[0].state.dense
    dense.push({"mlp": np.full(32, 0.5, dtype=np.float32)})
    with make_agent(cluster) as agent:
        report = agent.sync_dense()
        assert report.outcome == "ok" and report.streams_ok == N_SERVE * REPLICAS
        assert agent.sync_dense().streams_ok == 0  # nothing new: nothing sent
    for replicas in serving:
        for replica in replicas:
            values, version = replica.state.dense.pull()
            assert version == dense.version
            np.testing.assert_array_equal(values["mlp"], dense.pull()[0]["mlp"])


def test_two_agents_at_once_lose_and_duplicate_nothing(cluster, rng):
    training, _ = cluster
    mutate(training, rng, 2)
    with make_agent(cluster) as first, make_agent(cluster) as second:
        reports = []
        threads = [
            threading.Thread(target=lambda a=a: reports.append(a.sync_sparse()))
            for a in (first, second)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        # A stream that met the other agent's stream was refused (ABORTED) and moved no
        # cursor; one more round finishes whatever was left.
        assert all(r.outcome in ("ok", "partial") for r in reports)
        assert first.sync_sparse(wait_background=True).outcome == "ok"
    assert_converged(cluster)


def test_an_unreachable_replica_does_not_hold_back_the_others(cluster, rng, server_factory):
    training, serving = cluster
    mutate(training, rng, 2)
    gone = server_factory("serving", 0, N_SERVE, config=CONFIG, start=False)  # never started
    settings_serving = [r.address for replicas in serving for r in replicas] + [gone.address]
    discovery = StaticDiscovery([t.address for t in training], settings_serving)
    with make_agent(cluster, discovery=discovery, rpc_timeout=1.0) as agent:
        report = agent.sync_sparse()
        assert report.outcome == "partial"
        assert any(gone.address in e for e in report.errors)
        assert_converged(cluster)


def test_once_runs_one_round_of_each_kind_and_reports_by_exit_status(cluster, rng, tmp_path):
    training, serving = cluster
    mutate(training, rng, 2)
    training[0].state.dense.push({"mlp": np.full(32, 0.25, dtype=np.float32)})
    config = tmp_path / "tables.json"
    config.write_text(json.dumps(CONFIG))
    addresses = [
        "--training", ",".join(t.address for t in training),
        "--serving", ",".join(r.address for replicas in serving for r in replicas),
    ]  # fmt: skip
    handler = signal.getsignal(signal.SIGTERM)
    args = build_parser().parse_args(["sync-agent", "--config", str(config), *addresses, "--once"])
    assert agent_main(args) == 0
    assert signal.getsignal(signal.SIGTERM) is handler  # the run loop put it back
    assert_converged(cluster)
    for replicas in serving:
        for replica in replicas:
            assert replica.state.dense.version == training[0].state.dense.version
    unreachable = addresses[:3] + [addresses[3] + ",127.0.0.1:9"]
    args = build_parser().parse_args(["sync-agent", *unreachable, "--once", "--rpc-timeout", "1s"])
    assert agent_main(args) == 1


class ChangingDiscovery:
    """A Discovery whose endpoints the test changes between rounds (as pods come and go)."""

    def __init__(self, training, serving):
        self.training, self.serving = list(training), list(serving)

    def endpoints(self, role):
        addresses = self.training if role is Role.TRAINING else self.serving
        return [Endpoint(role, a, name=a) for a in sorted(addresses)]

    def close(self):
        pass


def test_agent_follows_replicas_as_discovery_adds_and_drops_them(cluster, server_factory):
    training, serving = cluster
    registry = CollectorRegistry()
    first = serving[1][0]
    discovery = ChangingDiscovery([t.address for t in training], [first.address])
    with make_agent(cluster, registry, discovery) as agent:
        assert agent.sync_sparse().outcome == "ok"
        newcomer = server_factory("serving", 1, N_SERVE, config=CONFIG)
        discovery.serving = [first.address, newcomer.address]
        report = agent.sync_sparse()
        assert report.outcome == "ok"
        assert report.full_resyncs == len(TABLES) * N_TRAIN  # only the new replica
        for name in TABLES:
            np.testing.assert_array_equal(
                np.sort(newcomer.state.table(name).keys()), np.sort(first.state.table(name).keys())
            )
        discovery.serving = [newcomer.address]
        assert agent.sync_sparse().outcome == "ok"
    labels = {"replica": first.address, "table": TABLES[0]}
    assert registry.get_sample_value("monolith_ps_sync_lag_versions", labels) is None
    labels["replica"] = newcomer.address
    assert registry.get_sample_value("monolith_ps_sync_lag_versions", labels) == 0


class _StuckReplica(ps_pb2_grpc.ParameterServerServicer):
    """A serving replica that takes one chunk of a stream and then never reads again.

    ``unreachable_rounds``: its first GetSyncState calls fail, as an unreachable server's.
    """

    def __init__(self, shard_index: int = 0, num_shards: int = 1, unreachable_rounds: int = 0):
        self.release = threading.Event()
        self.in_stream = threading.Event()
        self.ended = threading.Event()  # its stream ended (the agent finished or cancelled it)
        self._shard = (shard_index, num_shards)
        self._unreachable = unreachable_rounds

    def GetSyncState(self, request, context):  # noqa: ANN001, ANN201
        if self._unreachable > 0:
            self._unreachable -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "unreachable for now")
        return ps_pb2.GetSyncStateResponse(shard_index=self._shard[0], num_shards=self._shard[1])

    def ApplyDelta(self, request_iterator, context):  # noqa: ANN001, ANN201
        context.add_callback(self.ended.set)
        next(request_iterator)
        self.in_stream.set()
        self.release.wait(120)
        return ps_pb2.ApplyDeltaResponse()


def _serve_stuck(stuck: _StuckReplica) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    ps_pb2_grpc.add_ParameterServerServicer_to_server(stuck, server)
    health_servicer = health.HealthServicer()
    health_servicer.set("monolith_ps.v1.ParameterServer", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def _agent_for(training, serving_addresses, **overrides) -> SyncAgent:
    options = {"chunk_rows": 8, "stall_timeout": 600.0, "stream_timeout": 600.0, **overrides}
    settings = AgentSettings(
        training=tuple(t.address for t in training), serving=tuple(serving_addresses), **options
    )
    return SyncAgent(settings, StaticDiscovery(settings.training, settings.serving))


def test_a_stalled_replica_is_cut_and_the_replicas_sharing_its_export_finish(
    cluster, server_factory
):
    training, _ = cluster
    stuck = _StuckReplica(0, N_SERVE)
    server, port = _serve_stuck(stuck)
    fresh = server_factory("serving", 0, N_SERVE, config=CONFIG)
    try:
        with _agent_for(training, [f"127.0.0.1:{port}", fresh.address], stall_timeout=1.0) as agent:
            report = agent.sync_sparse()
        assert report.outcome == "partial"
        assert report.streams_ok == len(TABLES) * N_TRAIN  # every stream of the fresh replica
        assert any("stalled" in e and str(port) in e for e in report.errors), report.errors
        for name in TABLES:
            want = np.concatenate([t.state.table(name).keys() for t in training])
            want = want[shard_of(want, N_SERVE) == 0]
            np.testing.assert_array_equal(np.sort(fresh.state.table(name).keys()), np.sort(want))
    finally:
        stuck.release.set()
        server.stop(0)


def test_rounds_do_not_wait_for_a_replica_that_failed_before(cluster, rng):
    training, serving = cluster
    stuck = _StuckReplica(0, N_SERVE, unreachable_rounds=1)
    server, port = _serve_stuck(stuck)
    healthy = [r.address for replicas in serving for r in replicas]
    try:
        with _agent_for(training, [f"127.0.0.1:{port}", *healthy]) as agent:
            first = agent.sync_sparse()
            assert first.outcome == "partial"  # the stuck replica did not answer: kept apart
            mutate(training, rng, 2)
            second = agent.sync_sparse()
            # The round is over while the kept-apart replica's own sync still hangs.
            assert second.outcome == "ok", second.errors
            assert stuck.in_stream.wait(30) and not stuck.ended.is_set()
            assert_converged(cluster)
        assert stuck.ended.wait(30)  # closing the agent cancelled the hanging stream
    finally:
        stuck.release.set()
        server.stop(0)


def test_stop_cancels_a_round_stuck_on_a_replica(cluster):
    training, _ = cluster
    stuck = _StuckReplica()
    server, port = _serve_stuck(stuck)
    try:
        with _agent_for(training, [f"127.0.0.1:{port}"]) as agent:
            threading.Thread(
                target=lambda: stuck.in_stream.wait(30) and agent.stop(), daemon=True
            ).start()
            report = agent.sync_sparse()  # would wait out the 600 s timeouts if not cancelled
            assert report.outcome == "stopped", report.errors
            assert stuck.ended.wait(30)
    finally:
        stuck.release.set()
        server.stop(0)
