"""A TLS handshake that fails and an address that does not resolve end a call at once,
with an error naming the certificate problem or the name, not after the whole timeout."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from ps_client import (
    ClientTLS,
    NameResolutionError,
    PSClient,
    ServerUnavailableError,
    TLSHandshakeError,
)
from ps_server.settings import ServerTLS

_TIMEOUT = 60.0  # the calls below must end long before this


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def two_cas(tmp_path_factory) -> Path:
    """CA ``ca`` signed the server certificate (for 127.0.0.1); CA ``other`` did not."""
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key",
                 "-out", f"{ca}.pem", "-days", "1", "-subj", f"/CN={ca}", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
             "server.csr", "-subj", "/CN=server", cwd=d)  # fmt: skip
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "server.ext",
             cwd=d)  # fmt: skip
    return d


def _fails_fast(client: PSClient, error: type[Exception]) -> str:
    start = time.monotonic()
    with pytest.raises(error) as raised:
        client.describe()
    assert time.monotonic() - start < _TIMEOUT / 2, "the call waited for its deadline"
    assert isinstance(raised.value, ServerUnavailableError)  # what callers already catch
    return str(raised.value)


def test_untrusted_server_certificate_fails_fast_naming_it(server_factory, two_cas):
    d = two_cas
    server = server_factory("training", tls=ServerTLS(str(d / "server.pem"), str(d / "server.key")))
    untrusting = ClientTLS(str(d / "other.pem"))
    with PSClient([server.address], tls=untrusting, timeout=_TIMEOUT) as client:
        message = _fails_fast(client, TLSHandshakeError)
    assert "CERTIFICATE_VERIFY_FAILED" in message and server.address in message
    with PSClient([server.address], tls=ClientTLS(str(d / "ca.pem")), timeout=_TIMEOUT) as ok:
        assert ok.describe()[0].role == "training"  # the right CA connects


def test_unresolvable_address_fails_fast_naming_it():
    # The name is asked of a DNS server on loopback where none listens: no traffic leaves.
    address = "dns://127.0.0.1:1/nonexistent.invalid:50051"
    with PSClient([address], timeout=_TIMEOUT) as client:
        message = _fails_fast(client, NameResolutionError)
    assert "cannot resolve nonexistent.invalid:50051" in message
