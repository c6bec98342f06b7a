"""Interceptor handlers made once per method.

gRPC runs every server interceptor on every call; an interceptor that wraps the handler it
is given would otherwise build the same closures and handler tuple for each call. The
cache keeps one wrapped handler per method, made again only when the handler below it
changes (an interceptor under it that answers differently, e.g. before and after start).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

__all__ = ["HandlerCache", "HandlerRewrite", "replaced"]


def replaced(handler: grpc.RpcMethodHandler, **parts: Any) -> grpc.RpcMethodHandler:
    """``handler`` with ``parts`` (behaviours, serializers) swapped in: the handlers gRPC
    makes are named tuples."""
    # types-grpcio declares RpcMethodHandler as an abstract class, without the named tuple
    return handler._replace(**parts)  # type: ignore[attr-defined]


class HandlerCache:
    """``get(method, handler, wrap)`` is ``wrap(method, handler)``, computed once for each
    method while ``handler`` stays the same object. Safe across threads: a race wraps twice
    and keeps either."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    def get(self, method: str, handler: Any, wrap: Callable[[str, Any], Any]) -> Any:
        hit = self._wrapped.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class HandlerRewrite(grpc.ServerInterceptor):
    """An interceptor that hands out ``rewrite(method, handler, part)`` for the handler of
    every method that has ``part`` (``"request_deserializer"`` or ``"response_serializer"``,
    passed on as the handler's function of that name), made once per method; other
    handlers pass as they are."""

    def __init__(self, part: str, rewrite: Callable[[str, Any, Callable], Any]) -> None:
        self._part = part
        self._rewrite = rewrite
        self._handlers = HandlerCache()
        self._wrap = self._rewrite_part  # bound once, not at every call

    def intercept_service(self, continuation, handler_call_details):  # noqa: ANN001, ANN201
        handler = continuation(handler_call_details)
        if handler is None or getattr(handler, self._part) is None:
            return handler
        return self._handlers.get(handler_call_details.method, handler, self._wrap)

    def _rewrite_part(self, method: str, handler: Any) -> Any:
        return self._rewrite(method, handler, getattr(handler, self._part))
