"""What a client call can fail with. Each class subclasses a builtin; the ``grpc.RpcError``
that caused it, if any, is its ``__cause__``."""

from __future__ import annotations

import grpc

from monolith_ps.transport.rpc_errors import connect_failure, rpc_status

__all__ = [
    "DeadlineExceededError",
    "InvalidRequestError",
    "NameResolutionError",
    "PSError",
    "PreconditionError",
    "RequestTooLargeError",
    "ServerError",
    "ServerUnavailableError",
    "TLSHandshakeError",
    "TopologyError",
    "UnknownTableError",
    "connect_error",
    "error_from_rpc",
]


class PSError(Exception):
    """Base of every error ``PSClient`` raises."""


class UnknownTableError(PSError, KeyError):
    """The table (or dense array) is not held by the cluster."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown table"


class TopologyError(PSError, RuntimeError):
    """The servers' roles, shard indices or counts differ from the client's addresses."""


class PreconditionError(PSError, RuntimeError):
    """The server refused the call in its current role or state (e.g. a push to serving)."""


class RequestTooLargeError(PSError, ValueError):
    """A request past a server limit that the client could not split under."""


class ServerUnavailableError(PSError, ConnectionError):
    """A server stayed unreachable through every retry."""


class TLSHandshakeError(ServerUnavailableError):
    """The TLS handshake with a server failed (its certificate is not trusted or does not
    name the address, or the server wants a client certificate): not retried."""


class NameResolutionError(ServerUnavailableError):
    """A server's address does not resolve: not retried."""


class DeadlineExceededError(PSError, TimeoutError):
    """A call did not finish within its deadline, retries included."""


class ServerError(PSError, RuntimeError):
    """Any other failure reported by a server (INTERNAL, UNKNOWN, ...)."""


class InvalidRequestError(PSError, ValueError):
    """The server found the request malformed (INVALID_ARGUMENT)."""


_ERROR_OF_CODE: dict[grpc.StatusCode, type[PSError]] = {
    grpc.StatusCode.NOT_FOUND: UnknownTableError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: PreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RequestTooLargeError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


def error_from_rpc(err: grpc.RpcError, address: str, method: str) -> PSError:
    """Our exception for a failed call (raise it ``from err``)."""
    code, details = rpc_status(err)
    message = f"{method} on {address} failed with {code.name}: {details}"
    if code is grpc.StatusCode.FAILED_PRECONDITION and "shard view mismatch" in details:
        return TopologyError(message)
    return _ERROR_OF_CODE.get(code, ServerError)(message)


def connect_error(err: grpc.RpcError, address: str, method: str) -> PSError | None:
    """The error for a call that could not connect for good (a failed TLS handshake, a
    name that does not resolve), naming the certificate problem or the name; None when
    a retry may still succeed."""
    failure = connect_failure(err)
    if failure is None:
        return None
    if failure.kind == "tls":
        return TLSHandshakeError(
            f"{method} on {address}: TLS handshake failed: {failure.reason}. Check that "
            "ClientTLS.ca_path is the CA that signed the server certificate, that the "
            "certificate names this address (or set ClientTLS.server_name), and for "
            "mutual TLS the client certificate and key"
        )
    return NameResolutionError(f"{method} on {address}: cannot resolve {failure.reason}")
