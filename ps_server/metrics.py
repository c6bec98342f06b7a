"""Prometheus metrics of a PS server, all built on one injected registry.

``ServerMetrics(registry)`` owns the RPC metrics (filled by ``RpcMetricsInterceptor``)
and a collector that reads table counters and sizes at scrape time, so the hot path
pays nothing for them. Other parts declare their own ``MetricSet``
(``monolith_ps.metrics``) and build it on ``metrics.registry``.

Names follow Prometheus conventions: ``monolith_ps_`` prefix, base units, ``_total``
on counters.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monolith_ps import wire
from monolith_ps.metrics import MetricSet, counter, histogram
from ps_server.cgroup import MemoryLimitCollector
from ps_server.handler_cache import HandlerCache
from ps_server.threads import DaemonThreadPool

if TYPE_CHECKING:
    from ps_server.state import ShardState

__all__ = ["MetricsHTTPServer", "RpcMetricsInterceptor", "ServerMetrics", "TableCollector"]

# 100 us .. 10 s: a 4k-key lookup takes about a millisecond on loopback.
_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
# table.stats() key -> counter name (without _total) and help.
_TABLE_COUNTERS = {
    "lookups": ("monolith_ps_rows_looked_up", "Keys looked up."),
    "inserts": ("monolith_ps_rows_inserted", "Rows inserted."),
    "updates": ("monolith_ps_rows_updated", "Rows updated by gradients or deltas."),
    "admission_rejected": (
        "monolith_ps_rows_admission_rejected",
        "Keys not given a row because the admission filter had not seen them often enough.",
    ),
    "expired": ("monolith_ps_rows_expired", "Rows dropped by the TTL sweep."),
    "evicted": ("monolith_ps_rows_evicted", "Rows evicted to stay under max_rows."),
    "deleted": ("monolith_ps_rows_deleted", "Rows deleted."),
    "lookup_misses": (
        "monolith_ps_rows_not_found",
        "Keys looked up without inserting (serving) that had no row.",
    ),
    "delta_rows_applied": ("monolith_ps_delta_rows_applied", "Delta rows applied by sync."),
    "delta_rows_skipped": (
        "monolith_ps_delta_rows_skipped",
        "Delta rows skipped because the row held was as new or newer.",
    ),
    "delta_tombstones_applied": (
        "monolith_ps_delta_tombstones_applied",
        "Delta tombstones (deletes, expiries, evictions on training) applied by sync.",
    ),
    "cold_hits": (
        "monolith_ps_rows_cold_hits",
        "Keys looked up whose row was in the cold tier (over rows_looked_up: cold-hit rate).",
    ),
    "promoted": ("monolith_ps_rows_promoted", "Rows moved from the cold tier to the hot tier."),
    "demoted": ("monolith_ps_rows_demoted", "Rows moved from the hot tier to the cold tier."),
    "cold_tier_full": (
        "monolith_ps_cold_tier_full",
        "Demotions stopped because cold_dir had no space for another segment of cold rows "
        "(the rows stay in memory, over the budget, until a later demotion finds space).",
    ),
}
UNKNOWN_TABLE_LABEL = "_unknown"
_HTTP_THREADS = 4  # scrapes and probes are small; more connections wait their turn
_HTTP_PENDING = 64  # connections accepted but not yet served; more are closed at once
_HTTP_TIMEOUT_SECONDS = 10.0  # a client that sends nothing this long is dropped


class ServerMetrics(MetricSet):
    """Every metric the server core exports, registered on ``registry``: the process's own
    (``process_*``: resident memory, CPU, open fds, start time; ``python_info``), the
    container's memory limit, and the server's."""

    rpc_duration = histogram(
        "monolith_ps_rpc_duration_seconds",
        "RPC latency by method and table (a multi-table RPC counts once for each table; "
        'table="" when the RPC names no table).',
        "method",
        "table",
        buckets=_LATENCY_BUCKETS,
    )
    rpc_requests = counter(
        "monolith_ps_rpc_requests_total",
        "RPCs handled, by method and status code.",
        "method",
        "code",
    )
    push_duplicates = counter(
        "monolith_ps_push_duplicates_total",
        "Pushes acknowledged without applying them again, because their request_id "
        "was already applied.",
        "method",
    )
    shutdown_errors = counter(
        "monolith_ps_shutdown_errors_total",
        "Steps of a graceful stop that failed (final_snapshot, drain, ...); the process "
        "then exits with status 1.",
        "step",
    )
    expiry_sweeps = counter(
        "monolith_ps_expiry_sweeps_total", "Expiry sweeps run over tables with a TTL."
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        registry.register(MemoryLimitCollector())
        super().__init__(registry)

    def watch_shard(self, state: ShardState) -> None:
        """Export the tables and dense arrays of ``state``, read at each scrape."""
        self.registry.register(TableCollector(state))


class TableCollector(Collector):
    """Reads table counters, sizes and versions when Prometheus scrapes.

    ``describe()`` names every family without reading the tables, so the registry refuses
    a second metric of the same name when it is registered, not at the scrape.
    """

    def __init__(self, state: ShardState) -> None:
        self._state = state

    def describe(self) -> Iterator[Metric]:
        families = _TableFamilies(with_dense=self._state.dense is not None)
        return iter(families.all())

    def collect(self) -> Iterator[Metric]:
        state = self._state
        families = _TableFamilies(with_dense=state.dense is not None)
        for name, table in dict(state.tables).items():
            tiers = table.tier_stats()
            for tier in ("hot", "cold"):
                families.tier_rows.add_metric([name, tier], float(tiers[f"{tier}_rows"]))
                families.tier_bytes.add_metric([name, tier], float(tiers[f"{tier}_bytes"]))
            stats = table.stats()
            for key, family in families.counters.items():
                family.add_metric([name], float(stats.get(key, 0)))
            families.rows.add_metric([name], float(len(table)))
            families.load.add_metric([name], float(table.load_factor()))
            families.memory.add_metric([name], float(table.memory_bytes()))
            families.version.add_metric([name], float(table.version))
        families.info.add_metric(
            [state.role, str(state.shard_index), str(state.num_shards), f"{state.epoch:016x}"],
            1.0,
        )
        if families.dense_version is not None and state.dense is not None:
            families.dense_version.add_metric([], float(state.dense.version))
        return iter(families.all())


class _TableFamilies:
    """The metric families ``TableCollector`` exports, empty until filled."""

    def __init__(self, with_dense: bool) -> None:
        self.counters = {
            key: CounterMetricFamily(name, help_text, labels=["table"])
            for key, (name, help_text) in _TABLE_COUNTERS.items()
        }
        self.rows = GaugeMetricFamily("monolith_ps_table_rows", "Live rows.", labels=["table"])
        self.load = GaugeMetricFamily(
            "monolith_ps_table_load_factor",
            "Occupied slots over hash-table slots (0..1).",
            labels=["table"],
        )
        self.memory = GaugeMetricFamily(
            "monolith_ps_table_memory_bytes",
            "Bytes allocated by the table, capacity included.",
            labels=["table"],
        )
        self.version = GaugeMetricFamily(
            "monolith_ps_table_version", "The table's change counter.", labels=["table"]
        )
        self.tier_rows = GaugeMetricFamily(
            "monolith_ps_table_tier_rows",
            "Live rows per tier (hot, cold).",
            labels=["table", "tier"],
        )
        self.tier_bytes = GaugeMetricFamily(
            "monolith_ps_table_tier_bytes",
            "Bytes per tier: hot arrays in memory, cold files on disk, capacity included.",
            labels=["table", "tier"],
        )
        self.info = GaugeMetricFamily(
            "monolith_ps_server_info",
            "Constant 1, labelled with what this server is.",
            labels=["role", "shard_index", "num_shards", "epoch"],
        )
        self.dense_version = (
            GaugeMetricFamily(
                "monolith_ps_dense_version", "Version of the dense arrays (one step a push)."
            )
            if with_dense
            else None
        )

    def all(self) -> list[Metric]:
        families: list[Metric] = [*self.counters.values()]
        families += [self.rows, self.load, self.memory, self.version, self.tier_rows]
        families += [self.tier_bytes, self.info]
        if self.dense_version is not None:
            families.append(self.dense_version)
        return families


def _table_labels(request: Any, known: Mapping[str, Any]) -> list[str]:
    """Table label values for a request: its tables' names, bounded to the known ones."""
    entries = getattr(request, "tables", None)
    if entries is not None and not isinstance(entries, str):
        names = {entry.table for entry in entries}
    elif isinstance(getattr(request, "table", None), str) and request.table:
        names = {request.table}
    else:
        return [""]
    return [name if name in known else UNKNOWN_TABLE_LABEL for name in sorted(names)] or [""]


class RpcMetricsInterceptor(grpc.ServerInterceptor):
    """Times every ParameterServer RPC and counts it by status code."""

    def __init__(self, metrics: ServerMetrics, known_tables: Mapping[str, Any]):
        self._metrics = metrics
        self._known_tables = known_tables
        self._handlers = HandlerCache()
        # children bound once per label set: ``labels()`` takes a lock and checks every call
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def intercept_service(self, continuation, handler_call_details):  # noqa: ANN001
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(wire.METHOD_PREFIX):
            return handler
        return self._handlers.get(handler_call_details.method, handler, self._wrap)

    def _wrap(self, method_path: str, handler: Any) -> Any:
        method = method_path[len(wire.METHOD_PREFIX) :]
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._timed(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._timed_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._timed(method, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _record(self, method: str, request: Any, context: grpc.ServicerContext, start: float):
        elapsed = time.perf_counter() - start
        code = _status_code(context) or grpc.StatusCode.OK
        self._child(self._metrics.rpc_requests, method, code.name).inc()
        tables = _table_labels(request, self._known_tables) if request is not None else [""]
        for table in tables:
            self._child(self._metrics.rpc_duration, method, table).observe(elapsed)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, bound once."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _timed(self, method: str, behavior: Callable) -> Callable:
        def timed(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            try:
                return behavior(request, context)
            except Exception:
                if _status_code(context) is None:
                    context.set_code(grpc.StatusCode.UNKNOWN)
                raise
            finally:
                self._record(method, None if _is_iterator(request) else request, context, start)

        return timed

    def _timed_stream(self, method: str, behavior: Callable) -> Callable:
        def timed(request: Any, context: grpc.ServicerContext) -> Iterable[Any]:
            start = time.perf_counter()
            try:
                yield from behavior(request, context)
            except Exception:
                if _status_code(context) is None:
                    context.set_code(grpc.StatusCode.UNKNOWN)
                raise
            finally:
                self._record(method, request, context, start)

        return timed


def _is_iterator(request: Any) -> bool:
    return hasattr(request, "__next__")


def _status_code(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    """The status the RPC has set so far (None: none yet)."""
    # ServicerContext.code() exists since grpc 1.38; types-grpcio leaves it out
    return context.code()  # type: ignore[attr-defined]


class _QuietHandler(WSGIRequestHandler):
    timeout = _HTTP_TIMEOUT_SECONDS
    raw_requestline: bytes  # read by the base's handle_one_request; typeshed leaves it out

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Scrapes and probes are not worth a log line each."""

    def parse_request(self) -> bool:
        """Refuse a request line without an HTTP version at once: the base class would
        wait for headers an HTTP/0.9 client never sends."""
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        if len(self.requestline.split()) != 3:
            self.command, self.request_version, self.close_connection = "", "HTTP/1.0", True
            self.send_error(400, "Bad request line: expected 'METHOD PATH HTTP/1.x'")
            return False
        return super().parse_request()


class _PooledWSGIServer(WSGIServer):
    """Serves connections on a few pooled threads, not one new thread each."""

    def server_activate(self) -> None:
        super().server_activate()
        self._pool = DaemonThreadPool(_HTTP_THREADS, thread_name_prefix="metrics-http")
        self._pending = threading.BoundedSemaphore(_HTTP_PENDING)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._pending.acquire(blocking=False):
            self.shutdown_request(request)
            return
        self._pool.submit(self._serve_one, request, client_address)

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - one broken connection, as socketserver does
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._pending.release()

    def server_close(self) -> None:
        super().server_close()
        pool = getattr(self, "_pool", None)  # None when binding the port failed
        if pool is not None:
            pool.shutdown(wait=False)


class MetricsHTTPServer:
    """``/metrics`` and the health checks over HTTP on their own port; ``port`` is the bound
    one (0 picks a free port).

    ``/healthz`` answers 200 while ``ready()`` holds and 503 otherwise, the same answer as
    the gRPC health service, for probes that cannot speak gRPC over TLS (the kubelet's);
    the body says SERVING or NOT_SERVING and, when not serving, why (``reason()``).
    ``/healthz/startup`` answers 200 once ``started()`` (restore done) and ``/healthz/live``
    while the process serves HTTP at all: the startup and liveness probes.

    Serving ``/metrics`` turns off the ``_created`` samples of this process's counters and
    histograms: one more series each, which dashboards and alerts do not use.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        port: int,
        host: str = "0.0.0.0",
        ready: Callable[[], bool] = lambda: True,
        reason: Callable[[], str] = lambda: "",
        started: Callable[[], bool] | None = None,
    ) -> None:
        disable_created_metrics()
        metrics_app = make_wsgi_app(registry)
        checks: dict[str, Callable[[], tuple[bool, str]]] = {
            "/healthz": lambda: (ready(), reason()),
            "/healthz/startup": lambda: ((started or ready)(), ""),
            "/healthz/live": lambda: (True, ""),
        }

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            check = checks.get(environ.get("PATH_INFO", ""))
            if check is None:
                return metrics_app(environ, start_response)
            serving, why = check()
            text = "SERVING\n" if serving else "NOT_SERVING\n" + (f"{why}\n" if why else "")
            body = text.encode()
            status = "200 OK" if serving else "503 Service Unavailable"
            headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
            start_response(status, headers)
            return [body]

        server_class = type(
            "MetricsWSGIServer",
            (_PooledWSGIServer,),
            {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET},
        )
        self._server: WSGIServer = make_server(
            host.strip("[]"), port, app, server_class, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()
        self.port: int = self._server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
