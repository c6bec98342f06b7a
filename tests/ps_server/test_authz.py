"""Per-RPC authorization on real ``mps server`` subprocesses: every RPC with every role's
mutual-TLS certificate (made here with openssl), on a training and a serving server, is
allowed or refused as the role table says; bearer tokens from a file and from the
environment; health stays open."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from monolith_ps.transport.bearer import read_token_file
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from ps_client import ClientTLS, PSClient
from sync_agent.agent import SyncAgent
from sync_agent.discovery.static import StaticDiscovery
from sync_agent.settings import AgentSettings

_IDENTITIES = ("trainer", "reader", "agent", "admin", "stranger")
_RPCS = (
    "Lookup", "Push", "PullDense", "PushDense", "DescribeTables", "ExportDelta",
    "ApplyDelta", "GetSyncState", "Snapshot", "Expire", "ResetSyncCursors",
)  # fmt: skip
# The table of the issue, written out (not derived from the code under test):
# which identities each RPC admits, per server role. The sync and admin RPCs admit the
# same identities on either role.
_SYNC_AND_ADMIN = {
    "ExportDelta": {"agent", "admin"},
    "ApplyDelta": {"agent", "admin"},
    "GetSyncState": {"agent", "admin"},
    "Snapshot": {"admin"},
    "Expire": {"admin"},
    "ResetSyncCursors": {"admin"},
}
_EXPECTED = {
    "training": {
        "Lookup": {"trainer", "admin"},
        "Push": {"trainer", "admin"},
        "PullDense": {"trainer", "admin"},
        "PushDense": {"trainer", "admin"},
        "DescribeTables": {"trainer", "agent", "admin"},
        **_SYNC_AND_ADMIN,
    },
    "serving": {
        "Lookup": {"reader", "admin"},
        "Push": {"admin"},
        "PullDense": {"reader", "admin"},
        "PushDense": {"admin"},
        "DescribeTables": {"reader", "agent", "admin"},
        **_SYNC_AND_ADMIN,
    },
}


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and one client certificate per identity.
    The agent's is named by a SAN URI (its CN is a pod name); the others by their CN."""
    d = tmp_path_factory.mktemp("authz-pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=authz-test-ca", cwd=d)  # fmt: skip
    sans = {"server": "subjectAltName=IP:127.0.0.1",
            "agent": "subjectAltName=URI:spiffe://test/ns/ml/sa/monolith-ps-agent"}  # fmt: skip
    cns = {"agent": "monolith-ps-agent-7d9f-x2"}
    for name in ("server", *_IDENTITIES):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={cns.get(name, name)}", cwd=d)  # fmt: skip
        extra = []
        if name in sans:
            (d / f"{name}.ext").write_text(sans[name] + "\n")
            extra = ["-extfile", f"{name}.ext"]
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", *extra, cwd=d)  # fmt: skip
    (d / "admin.token").write_text("s3cret-admin-token\n")
    return d


def _config(d: Path) -> dict:
    return {
        "tables": [{"name": "item_id", "dim": 4}],
        "dense": [{"name": "mlp", "size": 16}],
        "auth": {
            "identities": {
                "trainer": "trainer",
                "reader": "reader",
                "spiffe://test/ns/ml/sa/monolith-ps-agent": "agent",
                "admin": "admin",
            },
            "token_files": {"admin": str(d / "admin.token")},
            "token_env": {"agent": "MPS_TEST_AGENT_TOKEN"},
        },
    }


@pytest.fixture(scope="module")
def servers(process_factory, pki):
    tls = ("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
           "--tls-client-ca", str(pki / "ca.pem"), "--auth", "on")  # fmt: skip
    env = {"MPS_TEST_AGENT_TOKEN": "agent-token-1"}
    started = {}
    for role in ("training", "serving"):
        started[role] = process_factory(
            role, config=_config(pki), extra_args=tls, wait=False, env=env
        )
    return started


def _channel(address: str, d: Path, identity: str) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(d / "ca.pem").read_bytes(),
        private_key=(d / f"{identity}.key").read_bytes(),
        certificate_chain=(d / f"{identity}.pem").read_bytes(),
    )
    return grpc.secure_channel(address, credentials)


def _call(stub: ps_pb2_grpc.ParameterServerStub, rpc: str, metadata=()) -> grpc.StatusCode:
    """Call ``rpc`` with a harmless request; the status code it ends with."""
    requests = {
        "Lookup": ps_pb2.LookupRequest(),
        "Push": ps_pb2.PushRequest(),
        "PullDense": ps_pb2.PullDenseRequest(),
        "PushDense": ps_pb2.PushDenseRequest(),
        "DescribeTables": ps_pb2.DescribeTablesRequest(),
        "GetSyncState": ps_pb2.GetSyncStateRequest(),
        "Snapshot": ps_pb2.SnapshotRequest(),
        "Expire": ps_pb2.ExpireRequest(),
        "ResetSyncCursors": ps_pb2.ResetSyncCursorsRequest(),
    }
    try:
        if rpc == "ExportDelta":
            list(stub.ExportDelta(ps_pb2.ExportDeltaRequest(table="nope"), timeout=20,
                                  metadata=metadata))  # fmt: skip
        elif rpc == "ApplyDelta":
            stub.ApplyDelta(iter(()), timeout=20, metadata=metadata)
        else:
            getattr(stub, rpc)(requests[rpc], timeout=20, metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _wait_started(server) -> None:  # noqa: ANN001
    """Until the server has loaded its kernels and answers RPCs (a serving server becomes
    SERVING only after its first sync, which these tests do not all make)."""
    server.wait_event("warm_up_done", 300)


def test_every_rpc_with_every_role_is_allowed_or_refused_as_the_table_says(servers, pki):
    observed: dict[str, dict[str, set[str]]] = {}
    for server_role, server in servers.items():
        _wait_started(server)
        observed[server_role] = {rpc: set() for rpc in _RPCS}
        for identity in _IDENTITIES:
            with _channel(server.address, pki, identity) as channel:
                health = health_pb2_grpc.HealthStub(channel)  # open to every identity
                health.Check(health_pb2.HealthCheckRequest(), timeout=60)
                stub = ps_pb2_grpc.ParameterServerStub(channel)
                for rpc in _RPCS:
                    code = _call(stub, rpc)
                    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), rpc
                    if code != grpc.StatusCode.PERMISSION_DENIED:
                        observed[server_role][rpc].add(identity)
    print(_matrix(observed))
    assert observed == _EXPECTED
    page = urllib.request.urlopen(
        f"http://127.0.0.1:{servers['serving'].metrics_port}/metrics", timeout=5
    ).read()
    assert b'monolith_ps_rpc_denied_total{method="Push",roles="reader"} 1.0' in page


def test_refusal_names_the_caller_and_the_roles_that_may(servers, pki):
    _wait_started(servers["training"])
    with (
        _channel(servers["training"].address, pki, "reader") as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        ps_pb2_grpc.ParameterServerStub(channel).Push(ps_pb2.PushRequest(), timeout=20)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    details = refused.value.details()
    assert "CN" not in details or "reader" in details
    assert "'reader'" in details and "needs trainer or admin" in details


def test_bearer_tokens_from_a_file_and_the_environment(servers, pki):
    """Where TLS ends before the server, a token in metadata names the role (here over
    the same mutual-TLS channel with a certificate that maps to no role)."""
    _wait_started(servers["serving"])
    with _channel(servers["serving"].address, pki, "stranger") as channel:
        stub = ps_pb2_grpc.ParameterServerStub(channel)
        bearer = lambda token: (("authorization", f"Bearer {token}"),)  # noqa: E731
        assert _call(stub, "GetSyncState") == grpc.StatusCode.PERMISSION_DENIED
        assert _call(stub, "GetSyncState", bearer("agent-token-1")) == grpc.StatusCode.OK
        assert _call(stub, "Lookup", bearer("agent-token-1")) == grpc.StatusCode.PERMISSION_DENIED
        assert _call(stub, "Expire", bearer("s3cret-admin-token")) != (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert _call(stub, "GetSyncState", bearer("wrong")) == grpc.StatusCode.PERMISSION_DENIED


def _matrix(observed: dict[str, dict[str, set[str]]]) -> str:
    """The observed matrix as Markdown: one row per RPC, one column per server x identity."""
    head = [f"{s[:5]}/{i}" for s in observed for i in _IDENTITIES]
    lines = ["| RPC | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for rpc in _RPCS:
        cells = [
            "allow" if i in observed[s][rpc] else "deny" for s in observed for i in _IDENTITIES
        ]
        lines.append(f"| {rpc} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_the_agent_syncs_with_its_token_and_a_client_with_its_certificate(servers, pki):
    training, serving = servers["training"].address, servers["serving"].address
    for server in servers.values():
        _wait_started(server)
    trainer = ClientTLS(str(pki / "ca.pem"), str(pki / "trainer.pem"), str(pki / "trainer.key"))
    keys = np.arange(1, 33, dtype=np.uint64)
    with PSClient([training], tls=trainer, timeout=60) as client:
        client.push("item_id", keys, np.ones((keys.size, 4), np.float32))
    stranger = ClientTLS(str(pki / "ca.pem"), str(pki / "stranger.pem"), str(pki / "stranger.key"))

    def agent(token: str | None) -> SyncAgent:
        settings = AgentSettings(training=(training,), serving=(serving,), tls=stranger,
                                 token=token, rpc_timeout=10)  # fmt: skip
        return SyncAgent(settings, StaticDiscovery(settings.training, settings.serving))

    with agent(None) as refused:
        assert refused.sync_sparse().outcome == "failed"
    with agent("agent-token-1") as allowed:
        report = allowed.sync_sparse()
    assert report.outcome == "ok", report.errors
    admin = read_token_file(str(pki / "admin.token"))
    reader_tls = ClientTLS(
        str(pki / "ca.pem"), str(pki / "stranger.pem"), str(pki / "stranger.key")
    )
    with PSClient([serving], tls=reader_tls, token=admin, timeout=30) as client:
        _, found = client.lookup("item_id", keys, with_found=True)
    assert found.all()
