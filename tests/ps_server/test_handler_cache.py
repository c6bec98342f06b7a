"""Server interceptors wrap a method's handler once, and again only when it changes."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
from prometheus_client import CollectorRegistry

from ps_server.errors import UndecodableRequests
from ps_server.handler_cache import HandlerCache
from ps_server.metrics import RpcMetricsInterceptor, ServerMetrics
from ps_server.server import PreEncodedResponses

_LOOKUP = "/monolith_ps.v1.ParameterServer/Lookup"


def _handler() -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        lambda request, context: b"", request_deserializer=bytes, response_serializer=bytes
    )


def test_the_cache_wraps_once_per_method_and_handler():
    cache, made = HandlerCache(), []

    def wrap(method, handler):
        made.append((method, handler))
        return (method, handler)

    first, second = object(), object()
    assert cache.get("/a", first, wrap) is cache.get("/a", first, wrap)
    assert len(made) == 1
    cache.get("/b", first, wrap)
    assert cache.get("/a", second, wrap) == ("/a", second)
    assert made == [("/a", first), ("/b", first), ("/a", second)]


def test_interceptors_hand_out_the_same_wrapped_handler_for_every_call():
    metrics = RpcMetricsInterceptor(ServerMetrics(CollectorRegistry()), {"emb": None})
    details = SimpleNamespace(method=_LOOKUP)
    for interceptor in (metrics, PreEncodedResponses(), UndecodableRequests()):
        inner = _handler()
        first = interceptor.intercept_service(_returning(inner), details)
        assert first is not inner
        assert interceptor.intercept_service(_returning(inner), details) is first
        other = _handler()  # e.g. the start gate's refusal before the server is ready
        assert interceptor.intercept_service(_returning(other), details) is not first


def _returning(handler: grpc.RpcMethodHandler):
    return lambda details: handler
