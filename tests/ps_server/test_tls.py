"""TLS and mutual TLS between PSClient and a server, with certificates made in the test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from ps_client import ClientTLS, PSClient, RetryPolicy, ServerUnavailableError
from ps_server.server import ServerTLS


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
