"""How a failed RPC is read and rendered, the same way in the client and the agent."""

from __future__ import annotations

import dataclasses
import re

import grpc

__all__ = ["ConnectFailure", "connect_failure", "error_text", "rpc_status"]

# gRPC's words when a channel could not be set up; retrying does not change either.
_TLS_HANDSHAKE = re.compile(r"(?:tls|ssl) handshake failed", re.IGNORECASE)
_OPENSSL_REASON = re.compile(r"OPENSSL_internal:(.+?)(?::\s*OK)?\s*$")
_RESOLVING = re.compile(r"(?:errors resolving|DNS resolution failed for) (\S+?):?\s")
_RESOLVER_REASON = re.compile(r"lookup failed for \S+: ([^\]]+)")


def rpc_status(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status code and details of a failed call (UNKNOWN and the text when it has none)."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or str(err)
    return code, details


def error_text(exc: BaseException) -> str:
    """A one-line description of a failure, with the gRPC status name when there is one."""
    if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
        code, details = rpc_status(exc)
        return f"{code.name}: {details}"
    return str(exc) or type(exc).__name__


@dataclasses.dataclass(frozen=True)
class ConnectFailure:
    """A call that never reached the server, for a reason retries do not fix."""

    kind: str  # "tls" (the handshake failed) or "resolve" (the name does not resolve)
    reason: str  # OpenSSL's or the resolver's words


def connect_failure(err: grpc.RpcError) -> ConnectFailure | None:
    """Why ``err`` (UNAVAILABLE) could not even connect, when that is a failed TLS
    handshake or a name that does not resolve; None for anything a retry may fix (a
    server restarting, a refused connection)."""
    code, details = rpc_status(err)
    if code is not grpc.StatusCode.UNAVAILABLE:
        return None
    if _TLS_HANDSHAKE.search(details):
        reason = _OPENSSL_REASON.search(details)
        return ConnectFailure("tls", reason.group(1).strip() if reason else details)
    if resolving := _RESOLVING.search(details):
        reason = _RESOLVER_REASON.search(details)
        name = resolving.group(1)
        return ConnectFailure("resolve", f"{name}: {reason.group(1) if reason else details}")
    return None
