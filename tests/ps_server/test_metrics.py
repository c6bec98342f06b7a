"""A live server's /metrics parses as Prometheus text and its values move as RPCs run."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from ps_client import PSClient
from ps_server.metrics import MetricsHTTPServer


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory("training")


def scrape(server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("monolith_ps_") or not family.name.startswith("monolith")
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_as_rpcs_run(server):
    before = scrape(server)
    keys = np.arange(100, 150, dtype=np.uint64)
    with PSClient([server.address]) as client:
        client.lookup("user_id", keys)
        client.lookup_many({"user_id": keys[:10], "item_id": keys})
        client.push("user_id", keys, np.ones((50, 8), np.float32))
    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("monolith_ps_rows_looked_up_total", table="user_id") == 60
    assert moved("monolith_ps_rows_looked_up_total", table="item_id") == 50
    assert moved("monolith_ps_rows_inserted_total", table="user_id") == 50
    assert moved("monolith_ps_rows_updated_total", table="user_id") == 50
    assert moved("monolith_ps_table_rows", table="user_id") == 50
    assert value(after, "monolith_ps_table_memory_bytes", table="user_id") > 50 * 8 * 4
    assert 0 < value(after, "monolith_ps_table_load_factor", table="user_id") <= 1
    assert moved("monolith_ps_table_version", table="user_id") >= 100
    assert moved("monolith_ps_rpc_duration_seconds_count", method="Lookup", table="user_id") == 2
    assert moved("monolith_ps_rpc_duration_seconds_count", method="Lookup", table="item_id") == 1
    assert moved("monolith_ps_rpc_duration_seconds_count", method="Push", table="user_id") == 1
    assert moved("monolith_ps_rpc_duration_seconds_sum", method="Push", table="user_id") > 0
    assert moved("monolith_ps_rpc_requests_total", method="Lookup", code="OK") == 2
    assert value(after, "monolith_ps_server_info", role="training", shard_index="0",
                 num_shards="1", epoch=f"{server.state.epoch:016x}") == 1  # fmt: skip


def test_refusals_are_counted_by_code_with_bounded_table_labels(server):
    stub = ps_pb2_grpc.ParameterServerStub(grpc.insecure_channel(server.address))
    before = scrape(server)
    for name in ("random_name_1", "random_name_2"):
        with pytest.raises(grpc.RpcError):
            stub.Lookup(ps_pb2.LookupRequest(tables=[ps_pb2.TableKeys(table=name, keys=b"\0" * 8)]))
    after = scrape(server)
    requests = "monolith_ps_rpc_requests_total"
    assert (
        value(after, requests, method="Lookup", code="NOT_FOUND")
        - value(before, requests, method="Lookup", code="NOT_FOUND")
        == 2
    )
    # Unknown names share one label value, so clients cannot blow up the series count.
    assert value(after, "monolith_ps_rpc_duration_seconds_count", method="Lookup",
                 table="_unknown") == 2  # fmt: skip
    assert not any("random_name" in str(labels) for _, labels in after)


def test_push_duplicates_and_dense_version_are_exported(server):
    stub = ps_pb2_grpc.ParameterServerStub(grpc.insecure_channel(server.address))
    request = ps_pb2.PushDenseRequest(
        grads=[ps_pb2.DenseArray(name="mlp", values=np.ones(16, np.float32).tobytes())],
        request_id="dense-1",
    )
    stub.PushDense(request)
    stub.PushDense(request)
    samples = scrape(server)
    assert value(samples, "monolith_ps_push_duplicates_total", method="PushDense") == 1
    assert value(samples, "monolith_ps_dense_version") == server.state.dense.version == 1


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_healthz_follows_readiness_beside_metrics():
    ready = threading.Event()
    http = MetricsHTTPServer(CollectorRegistry(), 0, "127.0.0.1", ready=ready.is_set)
    try:
        assert healthz(http.port) == (503, "NOT_SERVING\n")
        ready.set()
        assert healthz(http.port) == (200, "SERVING\n")
        url = f"http://127.0.0.1:{http.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert reply.status == 200
    finally:
        http.stop()


def test_a_ready_server_answers_healthz(server):
    assert healthz(server.metrics_port) == (200, "SERVING\n")


def test_a_second_metric_of_a_table_counter_name_is_refused_at_registration(server):
    """The table collector names its families, so the registry sees a clash at once."""
    from prometheus_client import Counter

    with pytest.raises(ValueError, match="monolith_ps_delta_rows_applied"):
        Counter(
            "monolith_ps_delta_rows_applied_total",
            "A second source of the same name.",
            registry=server.registry,
        )


def test_a_request_line_without_http_version_is_closed_at_once():
    http = MetricsHTTPServer(CollectorRegistry(), 0, "127.0.0.1")
    try:
        with socket.create_connection(("127.0.0.1", http.port), timeout=5) as sock:
            sock.sendall(b"GET /metrics\r\n")
            answer = b""
            while chunk := sock.recv(4096):  # the server closes: recv returns b""
                answer += chunk
        assert answer.startswith(b"HTTP/1.0 400")
        assert b"Bad request line" in answer
    finally:
        http.stop()


def test_many_idle_connections_do_not_make_threads_or_block_scrapes():
    http = MetricsHTTPServer(CollectorRegistry(), 0, "127.0.0.1")
    threads_before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", http.port), timeout=5) for _ in range(40)]
    try:
        # four pooled threads are held by idle sockets; the scrape waits for none of them
        # longer than their read timeout, and no thread is made per connection
        assert threading.active_count() - threads_before <= 4
        for sock in idle:
            sock.close()
        url = f"http://127.0.0.1:{http.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert reply.status == 200
    finally:
        http.stop()


def test_a_metrics_port_in_use_fails_with_the_bind_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="in use"):
            MetricsHTTPServer(CollectorRegistry(), taken.getsockname()[1], "127.0.0.1")
