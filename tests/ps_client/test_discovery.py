"""Clients find their shards: a name that resolves to several loopback addresses (servers
on 127.0.0.2 and 127.0.0.3, one port, a resolver the test controls), re-resolution when
the cluster changes, and clear errors while the shards seen are not one whole cluster."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monolith_ps import wire
from monolith_ps.config import parse_config
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from ps_client import PSClient, TopologyError
from ps_client.discovery import resolve_service
from ps_server.server import PSServer, create_server
from ps_server.settings import ServerSettings

NAME = "training.test"
KEYS = np.arange(1, 200, dtype=np.uint64)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.2", 0))
        return probe.getsockname()[1]


@pytest.fixture
def cluster(service_config) -> Iterator[Callable[..., PSServer]]:
    """``start(host, shard, shards)``: a training server on ``host:port`` (one port for all)."""
    port = _free_port()
    running: list[PSServer] = []

    def start(host: str, shard: int, shards: int, role: str = "training") -> PSServer:
        settings = ServerSettings(
            role=role,
            shard_index=shard,
            num_shards=shards,
            config=parse_config(service_config),
            host=host,
            port=port,
            metrics_port=0,
            authorization=False,
        )
        server, _ = create_server(settings, registry=CollectorRegistry())
        server.start()
        running.append(server)
        return server

    start.port = port  # type: ignore[attr-defined]
    yield start
    for server in running:
        server.stop(grace=0, final_snapshot=False)


class Names:
    """A resolver whose answer the test sets; counts how often it was asked."""

    def __init__(self, *hosts: str) -> None:
        self.hosts = list(hosts)
        self.asked = 0

    def __call__(self, host: str, port: int) -> list[str]:
        assert host == NAME
        self.asked += 1
        return list(self.hosts)


def _client(cluster: Any, names: Names) -> PSClient:
    return PSClient(f"{NAME}:{cluster.port}", resolver=names, timeout=5, attempt_timeout=2)


def test_a_name_resolving_to_every_shard_finds_them_in_shard_order(cluster):
    cluster("127.0.0.2", 0, 2)
    cluster("127.0.0.3", 1, 2)
    names = Names("127.0.0.3", "127.0.0.2")  # the resolver's order is not the shard order
    with (
        _client(cluster, names) as client,
        PSClient([f"127.0.0.2:{cluster.port}", f"127.0.0.3:{cluster.port}"]) as listed,
    ):
        np.testing.assert_array_equal(
            client.lookup("user_id", KEYS), listed.lookup("user_id", KEYS)
        )
        assert client.addresses == (f"127.0.0.2:{cluster.port}", f"127.0.0.3:{cluster.port}")
        assert [s.shard_index for s in client.describe()] == [0, 1]


def test_incomplete_then_whole_cluster(cluster):
    cluster("127.0.0.2", 0, 2)
    names = Names("127.0.0.2")
    with _client(cluster, names) as client:
        with pytest.raises(TopologyError, match=r"shard\(s\) \[1\] are not among the 1 server"):
            client.lookup("user_id", KEYS)
        cluster("127.0.0.3", 1, 2)
        names.hosts = ["127.0.0.2", "127.0.0.3"]
        assert client.lookup("user_id", KEYS).shape == (KEYS.size, 8)
        assert client.num_shards == 2


def test_mixed_shard_counts_are_a_clear_error(cluster):
    cluster("127.0.0.2", 0, 2)
    cluster("127.0.0.3", 1, 2)
    cluster("127.0.0.4", 0, 3)
    with (
        _client(cluster, Names("127.0.0.2", "127.0.0.3", "127.0.0.4")) as client,
        pytest.raises(
            TopologyError, match=r"different shard counts \[2, 3\].*127.0.0.4:\d+ is shard 0 of 3"
        ),
    ):
        client.lookup("user_id", KEYS)


def test_resharded_cluster_behind_the_same_name_is_found_again(cluster):
    old = cluster("127.0.0.2", 0, 1)
    names = Names("127.0.0.2")
    with _client(cluster, names) as client:
        before = client.lookup("user_id", KEYS)
        old.stop(grace=0, final_snapshot=False)
        cluster("127.0.0.2", 0, 2)  # the same address is now shard 0 of 2
        cluster("127.0.0.3", 1, 2)
        names.hosts = ["127.0.0.2", "127.0.0.3"]
        asked = names.asked
        after = client.lookup("user_id", KEYS)  # refused as 0 of 1, resolved again, repeated
        assert names.asked > asked and client.num_shards == 2
        np.testing.assert_array_equal(before, after)  # normal init is seeded by key


def _ready(server: PSServer, tables: dict[str, int]) -> None:
    """A serving server holds a (here empty) state from its one training shard."""
    with grpc.insecure_channel(server.address) as channel:
        stub = ps_pb2_grpc.ParameterServerStub(channel)
        for name, dim in tables.items():
            chunk = ps_pb2.DeltaChunk(
                table=name, source_shard=0, source_num_shards=1, epoch=1, full_resync=True,
                dim=dim, dtype=wire.dtype_to_wire(np.dtype(np.float32)), last=True,
            )  # fmt: skip
            stub.ApplyDelta(iter([chunk]), timeout=30)


def test_a_serving_name_uses_one_replica_of_each_shard(cluster, service_config):
    tables = {t["name"]: t["dim"] for t in service_config["tables"]}
    for host in ("127.0.0.2", "127.0.0.3"):
        _ready(cluster(host, 0, 1, role="serving"), tables)
    with PSClient(
        f"{NAME}:{cluster.port}", role="serving", resolver=Names("127.0.0.3", "127.0.0.2")
    ) as client:
        values, found = client.lookup("user_id", KEYS, with_found=True)
        assert values.shape == (KEYS.size, 8) and not found.any()
        assert client.addresses == (f"127.0.0.3:{cluster.port}",) and client.num_shards == 1


def test_addresses_format():
    assert resolve_service("svc:7", lambda host, port: ["10.0.0.1", "::1", "10.0.0.1"]) == [
        "10.0.0.1:7",
        "[::1]:7",
    ]
    with pytest.raises(ValueError, match="host:port"):
        resolve_service("svc", lambda host, port: [])
