"""Agents that share the work (subprocesses): 2 training shards -> 3 serving shards x 2
replicas, agent 0/2 syncing serving shards 0 and 2, agent 1/2 serving shard 1. Killing one
leaves exactly its partition behind; restarted, it catches up."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from monolith_ps import wire
from monolith_ps.local import LocalCluster, ManagedProcess
from monolith_ps.routing import shard_of
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from ps_client import PSClient
from sync_agent.settings import SettingsError, parse_partition

N_TRAIN, N_SERVE, REPLICAS = 2, 3, 2
DIM = 4
KEYS = np.arange(1, 1501, dtype=np.uint64) * np.uint64(7919)
CONFIG = {
    "tables": [
        {"name": "emb", "dim": DIM, "optimizer": "sgd", "optimizer_args": {"lr": 1.0},
         "initializer": "zeros"},
    ],
}  # fmt: skip
TIMEOUT = 60.0


def _lookup(address: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with grpc.insecure_channel(address) as channel:
        response = ps_pb2_grpc.ParameterServerStub(channel).Lookup(
            ps_pb2.LookupRequest(
                tables=[ps_pb2.TableKeys(table="emb", keys=wire.encode_keys(keys))]
            ),
            timeout=30,
        )
    tv = response.tables[0]
    values = wire.decode_values(tv.values, len(keys), tv.dim, tv.dtype)
    found = wire.decode_found(tv.found, len(keys)) if tv.found else np.ones(len(keys), bool)
    return values, found


def _stale_shards(local: LocalCluster, want: np.ndarray) -> set[int]:
    """Serving shards with a replica that does not hold exactly ``want`` for its keys."""
    owner = shard_of(KEYS, N_SERVE)
    stale = set()
    for shard, addresses in enumerate(local.serving_addresses):
        for address in addresses:
            values, found = _lookup(address, KEYS[owner == shard])
            if not found.all() or not np.array_equal(values, want[owner == shard]):
                stale.add(shard)
    return stale


def _wait_until(local: LocalCluster, want: np.ndarray, stale: set[int]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while (now := _stale_shards(local, want)) != stale and time.monotonic() < deadline:
        time.sleep(0.2)
    assert now == stale


def _push_one(local: LocalCluster) -> np.ndarray:
    """Add 1 to every row; returns the rows training then holds."""
    with PSClient(local.training_addresses, role="training", timeout=30) as client:
        client.lookup("emb", KEYS)
        client.push("emb", KEYS, -np.ones((KEYS.size, DIM), np.float32))
        return client.lookup("emb", KEYS)


@pytest.fixture
def cluster(local_cluster):
    local = local_cluster(CONFIG, N_TRAIN, N_SERVE, REPLICAS, agent=False)
    agents: list[ManagedProcess] = []
    with local:

        def start(partition: str) -> ManagedProcess:
            name = f"agent-{partition.replace('/', '-of-')}"
            agent = next((a for a in agents if a.name == name), None)
            if agent is None:
                agent = ManagedProcess(name, [], local.log_dir / f"{name}.log")
                agents.append(agent)
            serving = [a for replicas in local.serving_addresses for a in replicas]
            agent.args = [
                "sync-agent", "--config", str(local.config_path),
                "--training", ",".join(local.training_addresses),
                "--serving", ",".join(serving),
                "--sparse-interval", "0.3s", "--metrics-port", "0",
                "--log-format", "json", "--partition", partition,
            ]  # fmt: skip
            agent.start()
            agent.metrics_port = int(agent.wait_event("agent_started", TIMEOUT)["metrics_port"])
            return agent

        try:
            yield local, start
        finally:
            for agent in agents:
                agent.kill()


def test_partitioned_agents_converge_and_a_killed_one_leaves_only_its_shards_behind(
    cluster, metric_value
):
    local, start = cluster

    def replicas_synced(agent: ManagedProcess) -> float:
        return metric_value(agent.metrics_url, "monolith_ps_sync_replicas")

    first = _push_one(local)
    agents = {p: start(p) for p in ("0/2", "1/2")}
    _wait_until(local, first, stale=set())
    assert replicas_synced(agents["0/2"]) == 2 * REPLICAS  # serving shards 0 and 2
    assert replicas_synced(agents["1/2"]) == REPLICAS  # serving shard 1

    agents["1/2"].kill()  # SIGKILL
    second = _push_one(local)
    _wait_until(local, second, stale={1})
    owner = shard_of(KEYS, N_SERVE)
    for address in local.serving_addresses[1]:  # untouched since the kill
        np.testing.assert_array_equal(_lookup(address, KEYS[owner == 1])[0], first[owner == 1])

    start("1/2")
    _wait_until(local, second, stale=set())


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [(None, {}, (0, 1)), ("1/3", {}, (1, 3)), ("auto/2", {"POD_NAME": "rel-sync-agent-3"}, (1, 2))],
)
def test_parse_partition(text, env, expected):
    assert parse_partition(text, env) == expected


@pytest.mark.parametrize("text", ["2/2", "1", "a/2", "0/0", "auto/2"])
def test_parse_partition_refuses(text):
    with pytest.raises(SettingsError, match="--partition"):
        parse_partition(text, {"POD_NAME": "agent"})
