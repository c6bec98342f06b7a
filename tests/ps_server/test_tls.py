"""TLS and mutual TLS: PSClient, every RPC of both roles, the server flags and the sync
agent, with certificates made in the test (openssl)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from monolith_ps import wire
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from ps_client import ClientTLS, PSClient, RetryPolicy, ServerUnavailableError
from ps_server.settings import ServerTLS
from sync_agent.agent import SyncAgent
from sync_agent.discovery.static import StaticDiscovery
from sync_agent.settings import AgentSettings


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", "1", "-subj", "/CN=test-ca", cwd=d)  # fmt: skip
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", None)):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        extra = []
        if extension:
            (d / f"{name}.ext").write_text(extension + "\n")
            extra = ["-extfile", f"{name}.ext"]
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", *extra, cwd=d)  # fmt: skip
    return d


def test_mutual_tls_lookup_and_push(server_factory, certificates):
    d = certificates
    tls = ServerTLS(str(d / "server.pem"), str(d / "server.key"), str(d / "ca.pem"))
    server = server_factory("training", tls=tls)
    client_tls = ClientTLS(str(d / "ca.pem"), str(d / "client.pem"), str(d / "client.key"))
    keys = np.arange(1, 9, dtype=np.uint64)
    with PSClient([server.address], tls=client_tls) as client:
        before = client.lookup("item_id", keys)
        client.push("item_id", keys, np.ones((8, 4), np.float32))
        np.testing.assert_allclose(client.lookup("item_id", keys), before - 0.1, rtol=1e-6)
    # Without a client certificate the handshake fails and the call never reaches a table.
    no_cert = ClientTLS(str(d / "ca.pem"))
    quick = RetryPolicy(max_attempts=2, initial_backoff=0.05, max_backoff=0.05)
    with (
        PSClient([server.address], tls=no_cert, retry=quick, timeout=3, attempt_timeout=1) as c,
        pytest.raises(ServerUnavailableError),
    ):
        c.describe()


def _stub(address: str, d: Path, client_cert: bool) -> tuple[grpc.Channel, object]:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(d / "ca.pem").read_bytes(),
        private_key=(d / "client.key").read_bytes() if client_cert else None,
        certificate_chain=(d / "client.pem").read_bytes() if client_cert else None,
    )
    channel = grpc.secure_channel(address, credentials)
    return channel, ps_pb2_grpc.ParameterServerStub(channel)


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_every_rpc_over_tls(server_factory, certificates, mutual):
    """Every RPC of both roles, and health, answer over TLS; a delta moves from training
    to serving through ExportDelta and ApplyDelta on secure channels."""
    d = certificates
    client_ca = str(d / "ca.pem") if mutual else None
    tls = ServerTLS(str(d / "server.pem"), str(d / "server.key"), client_ca)
    training = server_factory("training", tls=tls)
    serving = server_factory("serving", tls=tls)
    t_channel, train = _stub(training.address, d, client_cert=mutual)
    s_channel, serve = _stub(serving.address, d, client_cert=mutual)
    with t_channel, s_channel:
        for channel in (t_channel, s_channel):
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        keys = wire.encode_keys(np.arange(1, 9, dtype=np.uint64))
        assert train.DescribeTables(ps_pb2.DescribeTablesRequest(), timeout=10).role == (
            ps_pb2.ROLE_TRAINING
        )
        train.Lookup(ps_pb2.LookupRequest(tables=[ps_pb2.TableKeys(table="item_id", keys=keys)]))
        pushed = train.Push(
            ps_pb2.PushRequest(
                tables=[ps_pb2.TableGradients(table="item_id", keys=keys,
                                              grads=np.ones((8, 4), np.float32).tobytes())],
                request_id="tls-1",
            ),
            timeout=10,
        )  # fmt: skip
        assert pushed.rows_updated == 8
        dense = train.PushDense(
            ps_pb2.PushDenseRequest(
                grads=[ps_pb2.DenseArray(name="mlp", values=np.ones(16, np.float32).tobytes())]
            ),
            timeout=10,
        )
        assert train.PullDense(ps_pb2.PullDenseRequest(), timeout=10).version == dense.version
        assert train.Expire(ps_pb2.ExpireRequest(), timeout=10).rows_expired == 0
        with pytest.raises(grpc.RpcError) as refused:  # reached the servicer: no snapshot dir
            train.Snapshot(ps_pb2.SnapshotRequest(full=True), timeout=10)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        chunks = list(train.ExportDelta(ps_pb2.ExportDeltaRequest(table="item_id"), timeout=10))
        assert chunks[-1].last
        applied = serve.ApplyDelta(iter(chunks), timeout=10)
        assert applied.rows_applied == 8
        cursors = serve.GetSyncState(ps_pb2.GetSyncStateRequest(), timeout=10).cursors
        assert [(c.table, c.version) for c in cursors] == [("item_id", chunks[-1].complete_version)]
        on_serving = wire.decode_lookup_response(
            serve.Lookup(
                ps_pb2.LookupRequest(tables=[ps_pb2.TableKeys(table="item_id", keys=keys)]),
                timeout=10,
            ).SerializeToString()
        )[0]
        assert wire.decode_found(on_serving.found, 8).all()


def test_sync_agent_and_server_flags_over_mutual_tls(process_factory, server_factory, certificates):
    """A training server started with --tls-cert/--tls-key/--tls-client-ca, a serving
    server with mutual TLS, and the sync agent with its certificate: a round moves every
    row; an agent without a certificate moves nothing."""
    d = certificates
    training = process_factory(
        "training",
        extra_args=("--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server.key"),
                    "--tls-client-ca", str(d / "ca.pem")),
        wait=False,
    )  # fmt: skip
    tls = ServerTLS(str(d / "server.pem"), str(d / "server.key"), str(d / "ca.pem"))
    serving = server_factory("serving", tls=tls)
    client_tls = ClientTLS(str(d / "ca.pem"), str(d / "client.pem"), str(d / "client.key"))
    keys = np.arange(100, 164, dtype=np.uint64)
    with PSClient([training.address], tls=client_tls, timeout=120) as client:
        client.push("item_id", keys, np.ones((keys.size, 4), np.float32))
        trained = client.lookup("item_id", keys)

    def agent(files: ClientTLS) -> SyncAgent:
        settings = AgentSettings(
            training=(training.address,), serving=(serving.address,), tls=files, rpc_timeout=10
        )
        return SyncAgent(settings, StaticDiscovery(settings.training, settings.serving))

    with agent(ClientTLS(str(d / "ca.pem"))) as no_cert:
        assert no_cert.sync_sparse().outcome == "failed"
    assert len(serving.state.tables["item_id"]) == 0

    with agent(ClientTLS(str(d / "ca.pem"), str(d / "client.pem"), str(d / "client.key"))) as a:
        report = a.sync_sparse()
    assert report.outcome == "ok", report.errors
    with PSClient([serving.address], tls=client_tls) as client:
        values, found = client.lookup("item_id", keys, with_found=True)
    assert found.all()
    np.testing.assert_array_equal(values, trained)
