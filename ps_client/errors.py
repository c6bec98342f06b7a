"""What a client call can fail with. Each class subclasses a builtin; the ``grpc.RpcError``
that caused it, if any, is its ``__cause__``."""

from __future__ import annotations

import grpc

from monolith_ps.transport.rpc_errors import rpc_status

__all__ = [
    "DeadlineExceededError",
    "InvalidRequestError",
    "PSError",
    "PreconditionError",
    "RequestTooLargeError",
    "ServerError",
    "ServerUnavailableError",
    "TopologyError",
    "UnknownTableError",
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
