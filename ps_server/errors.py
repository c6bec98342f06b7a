"""Why a request was refused, and the one mapping from those reasons to gRPC status codes.

Servicers raise the exceptions below (or let table and wire errors propagate);
``rpc_errors`` wraps every RPC method and turns the exception into
``context.abort(code, message)``. Nothing else in the server picks a status code.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from monolith_ps.logs import fields
from ps_server.handler_cache import HandlerRewrite, replaced

__all__ = [
    "BadRequestError",
    "BatchTooLargeError",
    "BudgetExceededError",
    "NotConfiguredError",
    "StreamCancelledError",
    "StreamConflictError",
    "SyncCursorError",
    "TopologyMismatchError",
    "UndecodableRequests",
    "UnknownNameError",
    "WrongRoleError",
    "abort_with",
    "rpc_errors",
    "status_of",
]

_LOGGER = logging.getLogger(__name__)

_Method = TypeVar("_Method", bound=Callable[..., Any])


class BadRequestError(ValueError):
    """A request whose content is malformed: shapes, lengths, NaN or Inf, empty batches."""


class BatchTooLargeError(ValueError):
    """A request or its answer past a configured limit; the message names the limit."""


class BudgetExceededError(RuntimeError):
    """A stream that would take the server past a configured memory or stream budget."""


class StreamCancelledError(RuntimeError):
    """A client stream ended by a cancel: the client went away, or the server cut it (idle,
    too long, stopping). The status was sent already; nothing changed."""


class UnknownNameError(KeyError):
    """A table or dense array this server does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown name"


class WrongRoleError(RuntimeError):
    """An RPC this server's role (or shard) does not serve, such as a push to serving."""


class TopologyMismatchError(RuntimeError):
    """The caller's ShardView differs from this server's shard index or count."""


class NotConfiguredError(RuntimeError):
    """An RPC that needs something the server was started without (e.g. --snapshot-dir)."""


class SyncCursorError(RuntimeError):
    """A delta stream that does not continue this server's sync cursor (needs a full resync)."""


class StreamConflictError(RuntimeError):
    """Another delta stream for the same table and source shard is in progress."""


# Most specific first: the first code with a matching class decides.
_STATUS_OF: dict[grpc.StatusCode, tuple[type[BaseException], ...]] = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: (BatchTooLargeError, MemoryError, BudgetExceededError),
    grpc.StatusCode.CANCELLED: (StreamCancelledError,),
    grpc.StatusCode.NOT_FOUND: (UnknownNameError,),
    grpc.StatusCode.FAILED_PRECONDITION: (
        WrongRoleError,
        TopologyMismatchError,
        NotConfiguredError,
        SyncCursorError,
    ),
    grpc.StatusCode.ABORTED: (StreamConflictError,),
    grpc.StatusCode.INVALID_ARGUMENT: (ValueError, TypeError),
}


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status for an exception (``INTERNAL`` when it is not a refusal we know)."""
    for code, classes in _STATUS_OF.items():
        if isinstance(exc, classes):
            return code
    return grpc.StatusCode.INTERNAL


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def abort_with(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    """End the RPC with the status and message of ``exc`` (raises, as ``context.abort`` does)."""
    code = status_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        _LOGGER.error("rpc_failed", exc_info=exc, extra=fields(method=method))
        context.abort(code, f"internal error in {method}: {_message(exc)}")
    _LOGGER.info("rpc_refused", extra=fields(method=method, code=code.name, reason=_message(exc)))
    context.abort(code, _message(exc))


def rpc_errors(method: _Method) -> _Method:
    """Wrap a servicer method (unary or streaming) so our exceptions leave as an abort."""
    name = method.__name__
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from method(self, request, context)
            except Exception as exc:
                abort_with(context, exc, name)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            abort_with(context, exc, name)

    return wrapper  # type: ignore[return-value]


class _Undecodable:
    """Stands in for a request body that did not parse as its message."""

    def __init__(self, error: DecodeError) -> None:
        self.error = error


class UndecodableRequests(HandlerRewrite):
    """A request body that does not parse as its message gets INVALID_ARGUMENT naming the
    message type; gRPC itself would answer INTERNAL. In a client stream, reading the bad
    message raises ``BadRequestError``, which the RPC's ``rpc_errors`` turns into the same."""

    def __init__(self) -> None:
        super().__init__("request_deserializer", _lenient)


def _lenient(
    method: str, handler: grpc.RpcMethodHandler, deserialize: Callable[[bytes], Any]
) -> grpc.RpcMethodHandler:
    """``handler`` whose request deserializer hands a bad body on as ``_Undecodable``."""

    def lenient(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:
            return _Undecodable(exc)

    if handler.unary_unary or handler.unary_stream:
        kind = "unary_unary" if handler.unary_unary else "unary_stream"
        behavior = getattr(handler, kind)

        def checked(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                _refuse_undecodable(context, method, request)
            return behavior(request, context)

        return replaced(handler, request_deserializer=lenient, **{kind: checked})
    if handler.stream_unary:
        behavior = handler.stream_unary

        def checked_stream(requests: Any, context: grpc.ServicerContext) -> Any:
            return behavior(_decoded_or_refused(requests, method), context)

        return replaced(handler, request_deserializer=lenient, stream_unary=checked_stream)
    return handler


def _refuse_undecodable(context: grpc.ServicerContext, method: str, request: _Undecodable) -> None:
    message = f"{method}: the request is not a valid protobuf message: {request.error}"
    _LOGGER.info("rpc_refused", extra=fields(method=method, code="INVALID_ARGUMENT"))
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)


def _decoded_or_refused(requests: Any, method: str) -> Any:
    for i, request in enumerate(requests):
        if isinstance(request, _Undecodable):
            raise BadRequestError(
                f"{method}: message {i} of the stream is not a valid protobuf message: "
                f"{request.error}"
            )
        yield request
