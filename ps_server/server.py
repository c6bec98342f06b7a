"""A PS server: the gRPC service of one shard, its health, metrics and background work.

``create_server(settings)`` builds and binds (port 0 picks a free port) and returns the
server with its bound port; ``PSServer.start()`` restores, then turns health SERVING;
``serve(settings)`` does both and blocks until SIGTERM or SIGINT, which drain in-flight
RPCs, write the final snapshot and stop.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from monolith_ps.health import LIVENESS_SERVICE, SERVICE_NAME, STARTUP_SERVICE
from monolith_ps.logs import fields
from monolith_ps.v1 import ps_pb2_grpc
from ps_server.authz import Authorizer
from ps_server.delta_metrics import DeltaMetrics
from ps_server.delta_receiver import DeltaReceiver
from ps_server.errors import UndecodableRequests
from ps_server.handler_cache import HandlerRewrite, replaced
from ps_server.hooks import Snapshotter, SnapshotterFactory
from ps_server.metrics import MetricsHTTPServer, RpcMetricsInterceptor, ServerMetrics
from ps_server.readiness import StalenessGauge, missing_state
from ps_server.servicers import BaseServicer, ServingServicer, TrainingServicer
from ps_server.settings import ServerSettings
from ps_server.state import ShardState
from ps_server.stream_guard import StreamBudget, StreamGuard, handler_threads
from ps_server.threads import DaemonThreadPool
from ps_server.warmup import warm_up

__all__ = [
    "LIVENESS_SERVICE",
    "SERVICE_NAME",
    "STARTUP_SERVICE",
    "PSServer",
    "PreEncodedResponses",
    "StartupGate",
    "create_server",
    "serve",
]

_LOGGER = logging.getLogger(__name__)
# After the grace period cut every stream, the gRPC server gets this long to wind down.
_STOP_MARGIN_SECONDS = 1.0
_SIGNAL_CHECK_SECONDS = 0.2  # how often the waiting main thread lets signal handlers run

_WAITING_LOG_SECONDS = 10.0


class StartupGate(grpc.ServerInterceptor):
    """Refuses ParameterServer RPCs with UNAVAILABLE (which clients retry) until the server
    is ready: while a snapshot is restored, a push must not land in a half-loaded table,
    and until a serving server holds a state from every training shard, a lookup must not
    report a row it was never sent as missing. Once ``started`` (restore done), the sync
    RPCs pass, so the agent can fill it. Health checks and reflection answer throughout."""

    _STARTING = "server is starting (restoring state, loading kernels); retry shortly"
    _SYNCING = (
        "serving server is not ready: it holds no state yet from every training shard "
        "(waiting for its first sync); retry shortly or ask another replica"
    )
    SYNC_METHODS = frozenset({"ApplyDelta", "GetSyncState", "DescribeTables"})

    def __init__(self, ready: threading.Event, started: threading.Event | None = None) -> None:
        self._ready = ready
        self._started = started if started is not None else ready

    def intercept_service(self, continuation, handler_call_details):  # noqa: ANN001, ANN201
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or self._ready.is_set() or not method.startswith(f"/{SERVICE_NAME}/"):
            return handler
        started = self._started.is_set()
        if started and method.rsplit("/", 1)[-1] in self.SYNC_METHODS:
            return handler
        message = self._SYNCING if started else self._STARTING

        def refuse(request: object, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAVAILABLE, message)

        def refuse_stream(request: object, context: grpc.ServicerContext) -> Iterator[None]:
            context.abort(grpc.StatusCode.UNAVAILABLE, message)
            yield  # a generator, as streaming handlers are

        kind = {
            "unary_unary": (refuse, grpc.unary_unary_rpc_method_handler),
            "unary_stream": (refuse_stream, grpc.unary_stream_rpc_method_handler),
            "stream_unary": (refuse, grpc.stream_unary_rpc_method_handler),
            "stream_stream": (refuse_stream, grpc.stream_stream_rpc_method_handler),
        }
        for name, (behavior, make) in kind.items():
            if getattr(handler, name) is not None:
                return make(
                    behavior,
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler


class PreEncodedResponses(HandlerRewrite):
    """Lets an RPC return its response already serialized (``bytes``), as Lookup does to
    copy its rows once; any other response goes through the generated serializer."""

    def __init__(self) -> None:
        super().__init__("response_serializer", _pass_bytes_through)


def _pass_bytes_through(
    method: str, handler: grpc.RpcMethodHandler, serialize: Callable[[object], bytes]
) -> grpc.RpcMethodHandler:
    """``handler`` whose response serializer sends ``bytes`` as they are."""

    def serialize_unless_bytes(response: object) -> bytes:
        return response if isinstance(response, bytes) else serialize(response)

    return replaced(handler, response_serializer=serialize_unless_bytes)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class PSServer:
    """One shard's server: state, gRPC server, health, metrics, expiry sweep, snapshots."""

    def __init__(
        self,
        settings: ServerSettings,
        registry: CollectorRegistry | None = None,
        snapshotter_factory: SnapshotterFactory | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ServerMetrics(self.registry)
        self.state = ShardState.from_config(
            settings.config, settings.role, settings.shard_index, settings.num_shards
        )
        self.metrics.watch_shard(self.state)
        self.stream_budget = StreamBudget(settings.config.server.stream_memory_bytes, self.registry)
        delta_metrics = DeltaMetrics(self.registry)
        # Serving applies deltas, and a serving bootstrap loads its rows through the same
        # receiver, so the sync cursors start at the versions it loaded.
        receiver = (
            DeltaReceiver(self.state, delta_metrics, self.stream_budget)
            if settings.role == "serving"
            else None
        )
        self.snapshotter: Snapshotter | None = None
        if settings.snapshot_dir or settings.bootstrap_from:
            if snapshotter_factory is None:
                raise ValueError(
                    "--snapshot-dir/--bootstrap-from given, but no snapshotter is available"
                )
            self.snapshotter = snapshotter_factory(self.state, settings, self.metrics, receiver)
        self.servicer: BaseServicer
        if receiver is not None:
            self.servicer = ServingServicer(self.state, self.metrics, receiver, self.snapshotter)
        else:
            self.servicer = TrainingServicer(
                self.state, self.metrics, delta_metrics, self.stream_budget, self.snapshotter
            )

        self._ready = threading.Event()
        self._started = threading.Event()
        self._ready_lock = threading.Lock()
        self._start_time = time.monotonic()
        self._receiver = receiver
        if receiver is not None:
            StalenessGauge(self.registry, lambda: receiver.sync_state().cursors)
        server_config = settings.config.server
        max_bytes = server_config.max_message_bytes
        self.streams = StreamGuard(server_config, self.registry)
        access: list[grpc.ServerInterceptor] = []
        if settings.authorization:
            access.append(Authorizer(settings.role, settings.config.auth, self.registry))
        # gRPC only submits to the pool; types-grpcio asks for a ThreadPoolExecutor
        pool = DaemonThreadPool(handler_threads(server_config), thread_name_prefix="ps-rpc")
        self._grpc = grpc.server(
            pool,  # type: ignore[arg-type]
            interceptors=[
                RpcMetricsInterceptor(self.metrics, self.state.tables),
                *access,
                StartupGate(self._ready, self._started),
                self.streams,
                PreEncodedResponses(),
                UndecodableRequests(),
            ],
            options=[
                ("grpc.max_send_message_length", max_bytes),
                ("grpc.max_receive_message_length", max_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        ps_pb2_grpc.add_ParameterServerServicer_to_server(self.servicer, self._grpc)
        self.health = health.HealthServicer()
        for service in ("", SERVICE_NAME, STARTUP_SERVICE, LIVENESS_SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc
        )
        address = _address(settings.host, settings.port)
        if settings.tls is not None:
            self.port = self._grpc.add_secure_port(address, settings.tls.credentials())
        else:
            self.port = self._grpc.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind the gRPC port at {address}")
        self.metrics_port: int | None = None
        self._metrics_http: MetricsHTTPServer | None = None
        self._stop_sweep = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopping = False
        self.exit_code = 0  # 1 once a step of stop() failed

    @property
    def address(self) -> str:
        """``host:port`` that clients on this machine can dial."""
        host = self.settings.host
        return _address("127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host, self.port)

    def start(self) -> None:
        """Serve; restore first (health stays NOT_SERVING until the tables are ready)."""
        self._start_time = time.monotonic()
        self._grpc.start()
        self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self._metrics_http = MetricsHTTPServer(
            self.registry,
            self.settings.metrics_port,
            self.settings.host,
            ready=lambda: self._ready.is_set() and not self._stopping,
            reason=self.not_ready_reason,
            started=lambda: self._started.is_set() and not self._stopping,
        )
        self.metrics_port = self._metrics_http.port
        _LOGGER.info(
            "server_started",
            extra=fields(
                role=self.state.role,
                shard_index=self.state.shard_index,
                num_shards=self.state.num_shards,
                host=self.settings.host,
                port=self.port,
                metrics_port=self.metrics_port,
                tables=",".join(self.state.tables),
                tls=self.settings.tls is not None,
                authorization=self.settings.authorization,
            ),
        )
        if self.snapshotter is not None:
            started = time.monotonic()
            self.snapshotter.restore()
            _LOGGER.info("restore_done", extra=fields(seconds=round(time.monotonic() - started, 3)))
        started = time.monotonic()
        warm_up(self.state)
        _LOGGER.info("warm_up_done", extra=fields(seconds=round(time.monotonic() - started, 3)))
        if self.state.role == "training":
            self._start_expiry_sweep()
        if self.snapshotter is not None:
            self.snapshotter.start()
        self._started.set()
        self.health.set(STARTUP_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        if self._receiver is None or not self.settings.await_first_sync:
            self._mark_ready()
            return
        missing = self.not_ready_reason()
        _LOGGER.info("server_waiting_for_sync", extra=fields(port=self.port, missing=missing))
        self._receiver.on_cursor_moved(self._check_synced)
        self._check_synced()
        threading.Thread(target=self._report_waiting, name="ps-readiness", daemon=True).start()

    def not_ready_reason(self) -> str:
        """Why the server does not answer yet ('' when ready)."""
        if self._ready.is_set():
            return ""
        if not self._started.is_set():
            return "starting: restoring state and loading kernels"
        assert self._receiver is not None
        state = self._receiver.sync_state()
        missing = missing_state(
            self.state.tables, state.cursors, self.state.shard_index, self.state.num_shards
        )
        return "; ".join(missing)

    def _check_synced(self) -> None:
        if self._ready.is_set() or self._receiver is None:
            return
        state = self._receiver.sync_state()
        if not missing_state(
            self.state.tables, state.cursors, self.state.shard_index, self.state.num_shards
        ):
            self._mark_ready()

    def _report_waiting(self) -> None:
        """Log why the server is not ready yet, every ``_WAITING_LOG_SECONDS``, until it is."""
        while not self._ready.wait(_WAITING_LOG_SECONDS) and not self._stopping:
            _LOGGER.warning(
                "server_not_ready",
                extra=fields(
                    seconds=round(time.monotonic() - self._start_time, 1),
                    missing=self.not_ready_reason(),
                ),
            )

    def _mark_ready(self) -> None:
        with self._ready_lock:
            if self._ready.is_set() or self._stopping:
                return
            self._ready.set()
            for service in ("", SERVICE_NAME):
                self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        _LOGGER.info(
            "server_ready",
            extra=fields(
                port=self.port,
                epoch=f"{self.state.epoch:016x}",
                seconds=round(time.monotonic() - self._start_time, 3),
            ),
        )

    def stop(self, grace: float | None = None, final_snapshot: bool = True) -> None:
        """NOT_SERVING, drain in-flight RPCs for ``grace`` s, write the last snapshot, stop.

        The final snapshot runs after the drain, so it holds every acknowledged push.
        Every step runs even when an earlier one failed; a failed step is logged with its
        cause, counted in ``monolith_ps_shutdown_errors_total{step}`` and makes
        ``exit_code`` 1. Safe to call more than once and from any thread.
        """
        with self._stop_lock:
            if self._stopping:
                self._stopped.wait()
                return
            self._stopping = True
        grace = self.settings.grace_seconds if grace is None else grace
        _LOGGER.info("server_stopping", extra=fields(port=self.port, grace_seconds=grace))
        try:
            self._stop_step("health", self.health.enter_graceful_shutdown)
            self._stop_sweep.set()
            self._stop_step("drain", lambda: self._drain(grace))
            if self._sweeper is not None:
                self._stop_step("expiry_sweep", self._sweeper.join)
            if self.snapshotter is not None:
                snapshotter = self.snapshotter
                self._stop_step(
                    "final_snapshot" if final_snapshot else "snapshotter",
                    lambda: snapshotter.close(final=final_snapshot),
                )
            if self._metrics_http is not None:
                self._stop_step("metrics_http", self._metrics_http.stop)
        finally:
            _LOGGER.log(
                logging.ERROR if self.exit_code else logging.INFO,
                "server_stopped",
                extra=fields(port=self.port, exit_code=self.exit_code),
            )
            self._stopped.set()

    def _drain(self, grace: float) -> None:
        """Let in-flight RPCs finish for ``grace`` s, then cut every stream still open.

        gRPC itself cancels every call left only ``_STOP_MARGIN_SECONDS`` later: at the
        deadline the streams are cut here first, with a status that says why, not racing
        gRPC's bare CANCELLED."""
        stopped = self._grpc.stop(grace + _STOP_MARGIN_SECONDS)
        if not stopped.wait(grace):
            cut = self.streams.cut_all("server stopping: the grace period ended; retry elsewhere")
            if not stopped.wait(_STOP_MARGIN_SECONDS):
                _LOGGER.warning("handlers_still_busy", extra=fields(streams_cut=cut))
        self.streams.close()

    def _stop_step(self, step: str, action: Callable[[], object]) -> None:
        """Run one step of ``stop``; a failure is logged, counted and remembered, not raised."""
        try:
            action()
        except Exception as exc:
            self.exit_code = 1
            self.metrics.shutdown_errors.labels(step).inc()
            _LOGGER.error(
                "stop_step_failed",
                exc_info=True,
                extra=fields(step=step, error=f"{type(exc).__name__}: {exc}"),
            )

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stopped; False when ``timeout`` passed first.

        Waits in short steps: the kernel may hand SIGTERM to any thread (gRPC's among
        them), and Python runs the handler only when the main thread wakes; a wait
        without a timeout would sleep through a second SIGTERM."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stopped.wait(_SIGNAL_CHECK_SECONDS):
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    def handle_signal(self, signum: int, frame: object) -> None:
        """SIGTERM/SIGINT: stop in a thread (signal handlers must return quickly).

        A second signal while stopping exits at once with status 1: whoever sends it has
        decided not to wait (the drain and the final snapshot are abandoned; a snapshot
        being written stays a ``.partial`` directory that restore ignores)."""
        name = signal.Signals(signum).name
        if self._stopping:
            _LOGGER.error("forced_exit", extra=fields(signal=name))
            logging.shutdown()
            os._exit(1)
        _LOGGER.info("signal_received", extra=fields(signal=name))
        threading.Thread(target=self.stop, name="ps-stop", daemon=False).start()

    def _start_expiry_sweep(self) -> None:
        ttl_tables = [name for name, t in self.state.tables.items() if t.config.ttl_seconds]
        if not ttl_tables:
            return
        interval = self.settings.config.server.expiry_sweep_interval
        self._sweeper = threading.Thread(
            target=self._expiry_sweep, args=(interval,), name="ps-expiry", daemon=True
        )
        self._sweeper.start()

    def _expiry_sweep(self, interval: float) -> None:
        while not self._stop_sweep.wait(interval):
            now = time.time()
            for name, table in list(self.state.tables.items()):
                if not table.config.ttl_seconds:
                    continue
                try:
                    expired = table.expire(now)
                except Exception:
                    _LOGGER.exception("expiry_sweep_failed", extra=fields(table=name))
                    continue
                if expired:
                    _LOGGER.info("rows_expired", extra=fields(table=name, rows=int(expired)))
            self.metrics.expiry_sweeps.inc()


def create_server(
    settings: ServerSettings,
    registry: CollectorRegistry | None = None,
    snapshotter_factory: SnapshotterFactory | None = None,
) -> tuple[PSServer, int]:
    """A bound, not yet started server and its gRPC port."""
    server = PSServer(settings, registry=registry, snapshotter_factory=snapshotter_factory)
    return server, server.port


def serve(settings: ServerSettings, snapshotter_factory: SnapshotterFactory | None = None) -> int:
    """Run a server until SIGTERM or SIGINT, then stop it gracefully; returns the exit
    status (1 when a step of the stop failed, e.g. the final snapshot)."""
    server, _ = create_server(settings, snapshotter_factory=snapshotter_factory)
    previous = {
        sig: signal.signal(sig, server.handle_signal) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        try:
            server.start()
        except BaseException:
            server.stop(grace=0, final_snapshot=False)
            raise
        server.wait_for_termination()
        return server.exit_code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
