"""Admission, deadlines and a memory budget for the delta streams: no client holds a server
hostage.

A gRPC handler thread serves a stream for its whole life: an ``ExportDelta`` whose reader
does not read blocks its thread in the send, an ``ApplyDelta`` whose writer does not write
blocks it in the receive. ``StreamGuard`` (a server interceptor) admits at most
``server.max_streams`` streams of each kind and refuses the rest at once with
RESOURCE_EXHAUSTED, so handler threads always remain for health and the unary RPCs. A
watchdog cuts, with DEADLINE_EXCEEDED and a message naming the setting, a stream that moves
nothing for ``server.stream_idle_timeout`` or runs past ``server.stream_max_duration``;
``cut_all`` ends every stream when the server stops. ``StreamBudget`` is the byte budget
(``server.stream_memory_bytes``) that exports and full resyncs hold their rows against.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from monolith_ps import wire
from monolith_ps.config import ServerConfig
from monolith_ps.logs import fields
from ps_server.errors import BudgetExceededError, StreamCancelledError
from ps_server.handler_cache import replaced

__all__ = ["StreamBudget", "StreamGuard", "handler_threads", "stream_cap"]

_LOGGER = logging.getLogger(__name__)
# kind of stream -> what a stalled peer fails to do
_STALLS = {"ExportDelta": "the reader took no chunk", "ApplyDelta": "the writer sent no chunk"}
_RESERVED_THREADS = 2  # never given to streams: health and the unary RPCs


def handler_threads(config: ServerConfig) -> int:
    """gRPC handler threads: ``server.max_workers``, or 4 a core and at least 16."""
    return config.max_workers or max(16, 4 * (os.cpu_count() or 1))


def stream_cap(config: ServerConfig) -> int:
    """Streams of one kind admitted at once: ``server.max_streams`` (0 = half the handler
    threads), always leaving a few threads for everything else."""
    threads = handler_threads(config)
    cap = config.max_streams or threads // 2
    return max(1, min(cap, threads - _RESERVED_THREADS))


class StreamBudget:
    """Bytes that exports and full resyncs may hold at once; a stream that would take the
    total past the budget is refused (``BudgetExceededError``, RESOURCE_EXHAUSTED)."""

    def __init__(self, limit: int, registry: CollectorRegistry | None = None) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()
        self._gauge = Gauge(
            "monolith_ps_stream_memory_bytes",
            "Bytes held by delta exports and full resyncs in flight "
            "(bounded by server.stream_memory_bytes).",
            registry=registry,
        )

    @property
    def used(self) -> int:
        return self._used

    def take(self, nbytes: int, what: str) -> None:
        """Hold ``nbytes`` more, or raise naming ``what`` and the setting."""
        with self._lock:
            if self._used + nbytes > self.limit:
                raise BudgetExceededError(
                    f"{what} needs {nbytes} more bytes; delta streams in flight hold "
                    f"{self._used} of server.stream_memory_bytes={self.limit}; retry later "
                    "or raise the setting"
                )
            self._used += nbytes
            self._gauge.set(self._used)

    def give_back(self, nbytes: int) -> None:
        with self._lock:
            self._used = max(0, self._used - nbytes)
            self._gauge.set(self._used)


@dataclasses.dataclass(eq=False)
class _Stream:
    kind: str
    context: grpc.ServicerContext
    started: float
    waiting_since: float | None = None  # the peer's turn since then; None while we work
    cut: str = ""


class StreamGuard(grpc.ServerInterceptor):
    """Caps concurrent ``ExportDelta`` and ``ApplyDelta`` streams and cuts stalled ones.

    >>> guard = StreamGuard(config.server, registry)
    >>> server = grpc.server(pool, interceptors=[..., guard, ...])
    >>> guard.cut_all("server stopping")  # at the end of the stop grace
    """

    def __init__(self, config: ServerConfig, registry: CollectorRegistry | None = None) -> None:
        self.cap = stream_cap(config)
        self.idle_timeout = config.stream_idle_timeout
        self.max_duration = config.stream_max_duration
        self._lock = threading.Lock()
        self._streams: set[_Stream] = set()
        self._closed = threading.Event()
        self.refused = Counter(
            "monolith_ps_streams_refused_total",
            "Delta streams refused because server.max_streams were already open.",
            ["method"],
            registry=registry,
        )
        self.cut = Counter(
            "monolith_ps_streams_cut_total",
            "Delta streams cut by the server: idle (server.stream_idle_timeout), "
            "too_long (server.stream_max_duration) or stopping.",
            ["method", "reason"],
            registry=registry,
        )
        self.active = Gauge(
            "monolith_ps_streams_active", "Delta streams open now.", ["method"], registry=registry
        )
        tick = min(self.idle_timeout, self.max_duration) / 4
        self._tick = min(1.0, max(0.02, tick))
        self._watchdog = threading.Thread(target=self._watch, name="ps-streams", daemon=True)
        self._watchdog.start()

    def intercept_service(self, continuation, handler_call_details):  # noqa: ANN001, ANN201
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(wire.METHOD_PREFIX):
            return handler
        kind = method[len(wire.METHOD_PREFIX) :]
        if kind == "ExportDelta" and handler.unary_stream is not None:
            return replaced(handler, unary_stream=self._guard_export(handler.unary_stream))
        if kind == "ApplyDelta" and handler.stream_unary is not None:
            return replaced(handler, stream_unary=self._guard_apply(handler.stream_unary))
        return handler

    def open_streams(self) -> int:
        with self._lock:
            return len(self._streams)

    def cut_all(self, reason: str) -> int:
        """Cut every open stream with UNAVAILABLE (the agent resends next round)."""
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            self._cut(stream, grpc.StatusCode.UNAVAILABLE, "stopping", reason)
        return len(streams)

    def close(self) -> None:
        self._closed.set()

    # ------------------------------------------------------------------ wrappers

    def _admit(self, kind: str, context: grpc.ServicerContext) -> _Stream:
        with self._lock:
            open_now = sum(1 for s in self._streams if s.kind == kind)
            if open_now < self.cap:
                stream = _Stream(kind, context, time.monotonic())
                self._streams.add(stream)
                self.active.labels(kind).set(open_now + 1)
                return stream
        self.refused.labels(kind).inc()
        message = (
            f"{kind} refused: {self.cap} {kind} streams are open, the limit "
            "(server.max_streams); retry later"
        )
        _LOGGER.info("stream_refused", extra=fields(method=kind, open=open_now))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        raise AssertionError("context.abort returned")  # pragma: no cover

    def _release(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.discard(stream)
            self.active.labels(stream.kind).set(
                sum(1 for s in self._streams if s.kind == stream.kind)
            )

    def _guard_export(self, behavior: Callable) -> Callable:
        def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            stream = self._admit("ExportDelta", context)
            try:
                for chunk in behavior(request, context):
                    stream.waiting_since = time.monotonic()
                    yield chunk
                    stream.waiting_since = None
            finally:
                self._release(stream)

        return guarded

    def _guard_apply(self, behavior: Callable) -> Callable:
        def guarded(requests: Iterable[Any], context: grpc.ServicerContext) -> Any:
            stream = self._admit("ApplyDelta", context)
            try:
                return behavior(_watched(requests, stream), context)
            finally:
                self._release(stream)

        return guarded

    # ------------------------------------------------------------------ watchdog

    def _watch(self) -> None:
        while not self._closed.wait(self._tick):
            now = time.monotonic()
            with self._lock:
                streams = list(self._streams)
            for stream in streams:
                waiting = stream.waiting_since
                if waiting is not None and now - waiting > self.idle_timeout:
                    self._cut(
                        stream,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        "idle",
                        f"{stream.kind} stream cut: {_STALLS[stream.kind]} for "
                        f"{self.idle_timeout:g}s (server.stream_idle_timeout)",
                    )
                elif now - stream.started > self.max_duration:
                    self._cut(
                        stream,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        "too_long",
                        f"{stream.kind} stream cut: open for more than "
                        f"{self.max_duration:g}s (server.stream_max_duration)",
                    )

    def _cut(self, stream: _Stream, code: grpc.StatusCode, reason: str, message: str) -> None:
        if stream.cut:
            return
        stream.cut = message
        self.cut.labels(stream.kind, reason).inc()
        _LOGGER.info("stream_cut", extra=fields(method=stream.kind, reason=reason))
        _cancel(stream.context, code, message)


def _watched(requests: Iterable[Any], stream: _Stream) -> Iterator[Any]:
    """The request stream, timing the peer's turns; a cut or cancelled stream raises
    ``StreamCancelledError`` (logged as a refusal, not as a server error)."""
    it = iter(requests)
    while True:
        stream.waiting_since = time.monotonic()
        try:
            item = next(it)
        except StopIteration:
            return
        except grpc.RpcError:
            raise StreamCancelledError(
                stream.cut
                or f"{stream.kind} stream cancelled (the client went away or the "
                "server is stopping); nothing changed"
            ) from None
        finally:
            stream.waiting_since = None
        yield item


def _cancel(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    """End a call from outside its handler thread, with a status the client can read.

    The public ``context.cancel()`` sends a bare CANCELLED; the call object can send ours.
    """
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    if call is not None and hasattr(call, "cancel"):
        call.cancel(code.value[0], message)
    else:  # pragma: no cover - another gRPC implementation
        context.cancel()
