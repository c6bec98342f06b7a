"""Readiness means "can answer correctly": a serving server reports SERVING only once it
holds a state from every training shard, and the agent fills a restarted replica at once,
whatever its sparse interval. Real processes on loopback; kill means SIGKILL."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from monolith_ps.health import STARTUP_SERVICE
from monolith_ps.v1 import ps_pb2
from ps_client import PSClient
from ps_server.readiness import missing_state

CONFIG = {"tables": [{"name": "emb", "dim": 4}, {"name": "other", "dim": 2}]}
KEYS = np.arange(1, 301, dtype=np.uint64)


def _cursor(table: str, shard: int, shards: int) -> ps_pb2.SyncCursor:
    return ps_pb2.SyncCursor(table=table, source_shard=shard, source_num_shards=shards)


def test_missing_state_names_each_table_and_training_shard():
    tables = ["emb", "other"]
    assert missing_state(tables, [], 0, 1) == [
        "table 'emb': no state from any training shard yet",
        "table 'other': no state from any training shard yet",
    ]
    held = [_cursor("emb", 0, 2), _cursor("emb", 1, 2), _cursor("other", 1, 2)]
    assert missing_state(tables, held, 0, 1) == [
        "table 'other': no state yet from training shard(s) 0 of 2"
    ]
    # Serving shard 0 of 2 can own keys of training shard 0 of 2 only.
    assert missing_state(tables, [_cursor("emb", 0, 2), _cursor("other", 0, 2)], 0, 2) == []
    # A cursor of another shard count (a reshard in progress) does not count.
    assert missing_state(["emb"], [_cursor("emb", 0, 4), _cursor("emb", 1, 2)], 0, 1) == [
        "table 'emb': no state yet from training shard(s) 1, 2, 3 of 4"
    ]


def _health(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1
            )
        except grpc.RpcError:
            return -1
    return reply.status


def _healthz(metrics_port: int) -> tuple[int, str]:
    url = f"http://127.0.0.1:{metrics_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return -1, ""


@pytest.fixture(scope="module")
def cluster(local_cluster):
    local = local_cluster(
        CONFIG,
        training_shards=2,
        serving_shards=1,
        serving_replicas=2,
        sparse_interval="5m",  # no round will come: only the new-replica check syncs
        dense_interval="1h",
    )
    with local:
        yield local


def test_a_restarted_replica_is_not_serving_until_it_holds_every_synced_row(cluster):
    with PSClient(cluster.training_addresses) as training:
        training.lookup("emb", KEYS)  # rows exist on training ...
        training.lookup("other", KEYS)
    cluster.restart("agent")  # ... and its first round syncs them
    survivor, target = (cluster.process("serving", 0, r) for r in (0, 1))
    with PSClient([survivor.address], role="serving") as serving:
        deadline = time.monotonic() + 30
        while not serving.lookup("emb", KEYS, with_found=True)[1].all():
            assert time.monotonic() < deadline, "the first round did not sync the rows"
            time.sleep(0.05)

    cluster.kill("serving", 0, replica=1)
    restarted = time.monotonic()
    cluster.restart("serving", 0, replica=1, wait=False)
    serving_at = None
    lookups_while_waiting: list[grpc.StatusCode] = []
    with PSClient([target.address], role="serving", timeout=5) as client:
        while serving_at is None:
            assert time.monotonic() - restarted < 30, "not SERVING within 30 s of its start"
            status = _health(target.address)
            if status == health_pb2.HealthCheckResponse.SERVING:
                # Never SERVING while a synced key is missing: rows only arrive, so a key
                # missing now was missing when health said SERVING.
                for table in ("emb", "other"):
                    found = client.lookup(table, KEYS, with_found=True)[1]
                    missing = int((~found).sum())
                    assert not missing, f"SERVING with {missing} rows of {table} missing"
                serving_at = time.monotonic() - restarted
                continue
            if _health(target.address, STARTUP_SERVICE) == health_pb2.HealthCheckResponse.SERVING:
                with grpc.insecure_channel(target.address) as channel:
                    stub = channel.unary_unary(
                        "/monolith_ps.v1.ParameterServer/Lookup",
                        request_serializer=ps_pb2.LookupRequest.SerializeToString,
                        response_deserializer=ps_pb2.LookupResponse.FromString,
                    )
                    request = ps_pb2.LookupRequest(
                        tables=[ps_pb2.TableKeys(table="emb", keys=KEYS[:4].tobytes())]
                    )
                    try:
                        stub(request, timeout=2)
                    except grpc.RpcError as err:
                        lookups_while_waiting.append(err.code())
            time.sleep(0.02)
    assert serving_at <= 30
    assert all(code == grpc.StatusCode.UNAVAILABLE for code in lookups_while_waiting)
    waiting = target.wait_event("server_waiting_for_sync", 5)
    assert "no state from any training shard yet" in waiting["missing"]
    ready = target.wait_event("server_ready", 5)
    assert ready["seconds"] <= 30


def test_a_replica_with_nothing_to_start_from_stays_not_ready_and_says_why(cluster):
    """Training unreachable (the agent stopped) and no bundle: not ready, and why."""
    cluster.kill("agent")
    try:
        cluster.kill("serving", 0, replica=0)
        cluster.restart("serving", 0, replica=0)  # waits until started: no agent runs
        target = cluster.process("serving", 0, 0)
        stop = threading.Event()
        threading.Timer(1.5, stop.set).start()
        while not stop.wait(0.1):
            assert _health(target.address) != health_pb2.HealthCheckResponse.SERVING
        code, body = _healthz(target.metrics_port)
        assert code == 503
        assert body.startswith("NOT_SERVING\n") and "table 'emb': no state" in body
    finally:
        cluster.restart("agent")
