"""The sync agent's run loop: sparse rounds and dense rounds on their own intervals.

A round reads the state of the cluster from the servers themselves (training shards:
epoch and table versions; serving replicas: their cursors), plans the exports that
bring each replica up to date, and runs them in parallel. The agent keeps no state
that matters for correctness, so it can be killed at any moment and restarted, or run
twice at once: a stream that does not finish moves no cursor.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry

from monolith_ps.logs import configure_logging, fields
from monolith_ps.transport.cluster import (
    consistent_shards,
    shard_info_from_proto,
    sync_state_from_proto,
)
from monolith_ps.transport.rpc_errors import error_text
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from sync_agent.channels import ChannelPool
from sync_agent.cursors import (
    ExportPlan,
    ReplicaState,
    TrainingShard,
    needs_full,
    plan_exports,
)
from sync_agent.discovery.base import Discovery, Endpoint, Role
from sync_agent.metrics import SyncMetrics
from sync_agent.router import can_share_keys
from sync_agent.settings import AgentSettings, SettingsError
from sync_agent.streams import (
    ReplicaOutcome,
    StopSignal,
    StreamLimits,
    SyncStoppedError,
    run_dense_export,
    run_export,
)

__all__ = ["RoundReport", "SyncAgent", "build_discovery", "main"]

_LOGGER = logging.getLogger(__name__)
# Each export holds one stream (a server thread) on every replica it feeds; staying
# well under a server's handler threads leaves room for lookups.
_MAX_PARALLEL_EXPORTS = 4
_DISCOVERY_SYNC_SECONDS = 30.0
_SERVICE_NAME = ps_pb2.DESCRIPTOR.services_by_name["ParameterServer"].full_name


@dataclasses.dataclass
class RoundReport:
    """What one round did.

    ``outcome``: ok; partial (something failed, the rest was synced); failed (every
    stream failed, or no training shard or no replica answered); stopped.
    """

    kind: str
    outcome: str = "ok"
    training_shards: int = 0  # that answered
    replicas: int = 0  # that answered
    streams_ok: int = 0
    streams_failed: int = 0
    rows_applied: int = 0
    full_resyncs: int = 0
    seconds: float = 0.0
    errors: list[str] = dataclasses.field(default_factory=list)

    def merge(self, other: RoundReport) -> None:
        """Add the streams, rows and errors of ``other`` (a replica synced apart)."""
        self.streams_ok += other.streams_ok
        self.streams_failed += other.streams_failed
        self.rows_applied += other.rows_applied
        self.full_resyncs += other.full_resyncs
        self.errors.extend(other.errors)
        if other.outcome == "stopped":
            self.outcome = "stopped"


class SyncAgent:
    """Moves deltas from training shards to serving replicas, round after round.

    >>> agent = SyncAgent(settings, StaticDiscovery(training=[...], serving=[...]))
    >>> agent.sync_sparse().outcome   # one round now
    'ok'
    >>> agent.run()                   # rounds on the intervals until SIGTERM/SIGINT or stop()

    Any ``Discovery`` works: it is asked for endpoints at the start of every round.
    """

    def __init__(
        self,
        settings: AgentSettings,
        discovery: Discovery,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.discovery = discovery
        self.metrics = SyncMetrics(registry if registry is not None else CollectorRegistry())
        self._channels = ChannelPool(settings.max_message_bytes, settings.tls)
        self._limits = StreamLimits(
            chunk_rows=settings.chunk_rows,
            stream_timeout=settings.stream_timeout,
            stall_timeout=settings.stall_timeout,
            partition=settings.partition,
        )
        self._stop = StopSignal()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=_MAX_PARALLEL_EXPORTS, thread_name_prefix="sync-export"
        )
        # Replicas that failed recently sync on their own, in the background: a round
        # waits for none of them, and each has at most one such sync in flight.
        self._background_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=_MAX_PARALLEL_EXPORTS, thread_name_prefix="sync-isolated"
        )
        self._lock = threading.Lock()  # _isolated and _background, shared with those syncs
        self._isolated: set[str] = set()
        self._background: dict[str, concurrent.futures.Future[RoundReport]] = {}
        self._behind_since: dict[tuple[str, str], float] = {}
        self._known_replicas: dict[str, list[str]] = {}
        self._partition = settings.partition

    # ------------------------------------------------------------------ run loop

    def run(self) -> int:
        """Rounds until stopped; with ``settings.once``, one of each. Returns the exit status."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {
                sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
            }
        try:
            return self._loop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _loop(self) -> int:
        next_sparse = next_dense = time.monotonic()
        failed = False
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_sparse:
                next_sparse = now + self.settings.sparse_interval
                report = self.sync_sparse(wait_background=self.settings.once)
                failed |= report.outcome not in ("ok", "stopped")
            if self._stop.is_set():
                break
            now = time.monotonic()
            if now >= next_dense:
                next_dense = now + self.settings.dense_interval
                failed |= self.sync_dense().outcome not in ("ok", "stopped")
            if self.settings.once:
                return 1 if failed else 0
            self._stop.wait(max(0.0, min(next_sparse, next_dense) - time.monotonic()))
        _LOGGER.info("agent_stopped")
        return 0

    def stop(self) -> None:
        """Ask ``run`` to return; streams in flight are cancelled, moving no cursor."""
        self._stop.set()

    def close(self) -> None:
        """Stop, and release channels, threads and discovery."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._background_pool.shutdown(wait=True, cancel_futures=True)
        self._channels.close()
        self.discovery.close()

    def __enter__(self) -> SyncAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_signal(self, signum: int, _frame: object) -> None:
        _LOGGER.info("agent_stopping", extra=fields(signal=signal.Signals(signum).name))
        self._stop.set()

    # ------------------------------------------------------------------ rounds

    def sync_sparse(self, wait_background: bool = False) -> RoundReport:
        """One sparse round: every table of every training shard to every replica.

        Replicas that failed recently are synced in the background and the round does not
        wait for them, unless ``wait_background`` (then their results join the report).
        """
        report = RoundReport("sparse")
        started = time.monotonic()
        training, replicas = self._read_cluster(report)
        with self._lock:
            isolated = tuple(self._isolated)
        plans = [
            plan
            for shard in training
            for table in shard.tables
            for plan in plan_exports(shard, table, replicas, isolated)
        ]
        apart: dict[str, list[ExportPlan]] = {}
        for plan in plans:
            if plan.isolated:
                apart.setdefault(plan.replicas[0][0].name, []).append(plan)
        background = [self._start_background(name, group) for name, group in apart.items()]
        outcomes: list[tuple[ExportPlan, ReplicaOutcome]] = []
        try:
            for plan, (plan_outcomes, received) in self._run_parallel(
                [p for p in plans if not p.isolated], self._export
            ):
                self.metrics.bytes_exported.labels(
                    str(plan.source.shard_index), plan.table.name
                ).inc(received)
                outcomes.extend((plan, o) for o in plan_outcomes)
        except SyncStoppedError:
            report.outcome = "stopped"
        planned = {replica.name for plan in plans for replica, _ in plan.replicas}
        self._record_sparse(report, training, replicas, outcomes, planned)
        if wait_background:
            for future in background:
                if future is not None:
                    report.merge(future.result())
        return self._finish(report, started)

    def _export(self, plan: ExportPlan) -> tuple[list[ReplicaOutcome], int]:
        return run_export(
            plan,
            self._channels.stub(plan.source.endpoint.address),
            self._serving_stub,
            self._limits,
            self._stop,
        )

    def _start_background(
        self, name: str, plans: list[ExportPlan]
    ) -> concurrent.futures.Future[RoundReport] | None:
        """Sync one isolated replica apart; None while its previous such sync still runs."""
        with self._lock:
            if name in self._background:
                return None
            future = self._background_pool.submit(self._sync_apart, name, plans)
            self._background[name] = future
        return future

    def _sync_apart(self, name: str, plans: list[ExportPlan]) -> RoundReport:
        report = RoundReport("sparse")
        outcomes: list[tuple[ExportPlan, ReplicaOutcome]] = []
        try:
            for plan in plans:
                plan_outcomes, received = self._export(plan)
                self.metrics.bytes_exported.labels(
                    str(plan.source.shard_index), plan.table.name
                ).inc(received)
                outcomes.extend((plan, o) for o in plan_outcomes)
        except SyncStoppedError:
            report.outcome = "stopped"
        for plan, outcome in outcomes:
            self._count_outcome(report, outcome, plan.table.name, plan.source.shard_index)
        recovered = report.outcome == "ok" and all(o.ok for _, o in outcomes)
        with self._lock:
            if recovered:
                self._isolated.discard(name)
            self._background.pop(name, None)
        _LOGGER.info(
            "replica_synced_apart",
            extra=fields(
                replica=name,
                recovered=recovered,
                streams_ok=report.streams_ok,
                streams_failed=report.streams_failed,
                rows_applied=report.rows_applied,
            ),
        )
        return report

    def sync_dense(self) -> RoundReport:
        """One dense round: training shard 0's dense arrays to every replica behind it."""
        report = RoundReport("dense")
        started = time.monotonic()
        training, replicas = self._read_cluster(report)
        source = next((s for s in training if s.shard_index == 0), None)
        if source is not None and source.dense_names and replicas:
            try:
                outcomes, _ = run_dense_export(
                    source,
                    replicas,
                    self._channels.stub(source.endpoint.address),
                    self._serving_stub,
                    self._limits,
                    self._stop,
                )
            except SyncStoppedError:
                report.outcome = "stopped"
                outcomes = []
            for outcome in outcomes:
                self._count_outcome(report, outcome, "")
                if outcome.ok:
                    self.metrics.dense_version.labels(outcome.replica.name).set(
                        outcome.complete_version
                    )
            for replica in replicas:
                if replica.dense_epoch == source.epoch and not any(
                    o.replica is replica for o in outcomes
                ):
                    self.metrics.dense_version.labels(replica.name).set(replica.dense_version)
        return self._finish(report, started)

    # ------------------------------------------------------------------ cluster state

    def _read_cluster(self, report: RoundReport) -> tuple[list[TrainingShard], list[ReplicaState]]:
        """Training shards and serving replicas that answered, validated as a topology."""
        try:
            training_eps = self.discovery.endpoints(Role.TRAINING)
            serving_eps = self.discovery.endpoints(Role.SERVING)
        except Exception as exc:  # a discovery source may fail in ways we cannot list
            self._error(report, "discover", "discovery", error_text(exc))
            return [], []
        self._channels.retain(e.address for e in (*training_eps, *serving_eps))
        described = self._run_parallel(training_eps, self._describe)
        states = self._run_parallel(serving_eps, self._sync_state)
        training: list[TrainingShard] = []
        for endpoint, result in described:
            if isinstance(result, str):
                self._error(report, "describe", endpoint.name, result)
            else:
                training.append(result)
        replicas: list[ReplicaState] = []
        for endpoint, result in states:
            if isinstance(result, str):
                self._error(report, "sync_state", endpoint.name, result)
                with self._lock:
                    self._isolated.add(endpoint.name)
            elif result.shard_index % self._partition[1] == self._partition[0]:
                replicas.append(result)
        training = self._check_training_topology(training, report)
        self.metrics.training_shards.set(len(training))
        self.metrics.replicas.set(len(replicas))
        report.training_shards, report.replicas = len(training), len(replicas)
        self._forget_gone_replicas({e.name for e in serving_eps})
        return training, replicas

    def _not_ready(self, endpoint: Endpoint) -> str:
        """Why a server cannot take part in a round now ('' when it reports SERVING).

        A server restoring a snapshot already answers RPCs, from tables not yet loaded;
        syncing from (or to) it then would wipe rows on serving until the next round.
        """
        try:
            reply = self._channels.health(endpoint.address).Check(
                health_pb2.HealthCheckRequest(service=_SERVICE_NAME),
                timeout=self.settings.rpc_timeout,
            )
        except grpc.RpcError as exc:
            return error_text(exc)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            return f"not ready: health {status}"
        return ""

    def _ask_ready(self, endpoint: Endpoint, method: str, request: Message) -> Message | str:
        """The reply of RPC ``method`` from a server that reports SERVING, or why there is
        none (a str)."""
        if problem := self._not_ready(endpoint):
            return problem
        try:
            call = getattr(self._channels.stub(endpoint.address), method)
            return call(request, timeout=self.settings.rpc_timeout)
        except grpc.RpcError as exc:
            return error_text(exc)

    def _describe(self, endpoint: Endpoint) -> TrainingShard | str:
        response = self._ask_ready(endpoint, "DescribeTables", ps_pb2.DescribeTablesRequest())
        if isinstance(response, str):
            return response
        if response.role != ps_pb2.ROLE_TRAINING:
            return f"discovered as training but reports role {ps_pb2.Role.Name(response.role)}"
        return TrainingShard(endpoint, shard_info_from_proto(endpoint.name, response))

    def _sync_state(self, endpoint: Endpoint) -> ReplicaState | str:
        response = self._ask_ready(endpoint, "GetSyncState", ps_pb2.GetSyncStateRequest())
        if isinstance(response, str):
            return response
        if response.num_shards < 1 or response.shard_index >= response.num_shards:
            return f"reports shard {response.shard_index} of {response.num_shards}"
        return ReplicaState(endpoint, sync_state_from_proto(endpoint.name, response))

    def _check_training_topology(
        self, training: list[TrainingShard], report: RoundReport
    ) -> list[TrainingShard]:
        """Keep the shards of the most common shard count, each index claimed once."""
        kept, refused = consistent_shards(training, lambda shard: shard.info)
        for shard, problem in refused:
            self._error(report, "topology", shard.endpoint.name, problem)
        return kept

    def _serving_stub(self, replica: ReplicaState) -> ps_pb2_grpc.ParameterServerStub:
        return self._channels.stub(replica.endpoint.address)

    # ------------------------------------------------------------------ bookkeeping

    def _run_parallel(self, items: Sequence, work: Callable) -> list[tuple]:
        """``[(item, work(item))]`` run on the agent's pool, in the order of ``items``."""
        futures = [self._pool.submit(work, item) for item in items]
        results = []
        for item, future in zip(items, futures, strict=True):
            results.append((item, future.result()))
        return results

    def _record_sparse(
        self,
        report: RoundReport,
        training: list[TrainingShard],
        replicas: list[ReplicaState],
        outcomes: list[tuple[ExportPlan, ReplicaOutcome]],
        planned: set[str],
    ) -> None:
        applied: dict[tuple[str, str, int], int] = {}
        failed: set[str] = set()
        for plan, outcome in outcomes:
            self._count_outcome(report, outcome, plan.table.name, plan.source.shard_index)
            if outcome.ok:
                applied[(outcome.replica.name, plan.table.name, plan.source.shard_index)] = (
                    outcome.complete_version
                )
            elif outcome.stage != "stopped":
                failed.add(outcome.replica.name)
        succeeded = {o.replica.name for _, o in outcomes if o.ok} - failed
        with self._lock:
            self._isolated |= failed
            self._isolated -= succeeded
            # up to date, nothing planned, nothing in flight: no longer needs keeping apart
            self._isolated -= {
                r.name for r in replicas if r.name not in planned and r.name not in self._background
            }
        self._update_lag(training, replicas, applied)

    def _count_outcome(
        self, report: RoundReport, outcome: ReplicaOutcome, table: str, source_shard: int = 0
    ) -> None:
        name = outcome.replica.name
        label = table or "(dense)"
        if outcome.ok:
            report.streams_ok += 1
            report.rows_applied += outcome.rows_applied
            self.metrics.rows_applied.labels(name, label).inc(outcome.rows_applied)
            self.metrics.rows_skipped.labels(name, label).inc(outcome.rows_skipped)
            self.metrics.tombstones_applied.labels(name, label).inc(outcome.tombstones_applied)
            self.metrics.bytes_sent.labels(name, label).inc(outcome.bytes_sent)
            if outcome.full_resync and table:
                report.full_resyncs += 1
                self.metrics.full_resyncs.labels(name, label, str(source_shard)).inc()
        elif outcome.stage != "stopped":
            report.streams_failed += 1
            self._error(report, outcome.stage, name, f"{label}: {outcome.error}")

    def _update_lag(
        self,
        training: list[TrainingShard],
        replicas: list[ReplicaState],
        applied: dict[tuple[str, str, int], int],
    ) -> None:
        now = time.time()
        for replica in replicas:
            tables: list[str] = []
            for name in sorted({t.name for shard in training for t in shard.tables}):
                tables.append(name)
                behind_versions = 0
                oldest = math.inf
                for shard in training:
                    if not can_share_keys(
                        shard.shard_index,
                        shard.num_shards,
                        replica.shard_index,
                        replica.num_shards,
                    ):
                        continue
                    table = shard.info.tables.get(name)
                    if table is None:
                        continue
                    done = applied.get((replica.name, name, shard.shard_index))
                    cursor = replica.cursor(name, shard.shard_index)
                    if done is not None:
                        behind = max(0, table.version - done)
                    elif needs_full(cursor, shard, table) or cursor is None:
                        behind = table.version
                    else:
                        behind = table.version - cursor.version
                    if behind:
                        behind_versions += behind
                        if (
                            done is None
                            and cursor is not None
                            and not needs_full(cursor, shard, table)
                        ):
                            oldest = min(oldest, cursor.applied_at_unix)
                key = (replica.name, name)
                if behind_versions:
                    since = self._behind_since.setdefault(key, now)
                    lag_seconds = now - min(oldest, since)
                else:
                    self._behind_since.pop(key, None)
                    lag_seconds = 0.0
                self.metrics.lag_versions.labels(replica.name, name).set(behind_versions)
                self.metrics.lag_seconds.labels(replica.name, name).set(lag_seconds)
            self._known_replicas[replica.name] = tables

    def _forget_gone_replicas(self, present: set[str]) -> None:
        for name in [n for n in self._known_replicas if n not in present]:
            self.metrics.forget_replica(name, self._known_replicas.pop(name))
            with self._lock:
                self._isolated.discard(name)

    def _error(self, report: RoundReport, stage: str, server: str, message: str) -> None:
        report.errors.append(f"{stage} {server}: {message}")
        self.metrics.errors.labels(stage, server).inc()
        _LOGGER.warning("sync_error", extra=fields(stage=stage, server=server, error=message))

    def _finish(self, report: RoundReport, started: float) -> RoundReport:
        report.seconds = time.monotonic() - started
        if report.outcome != "stopped" and report.errors:
            nothing_done = report.streams_ok == 0 and report.streams_failed > 0
            unreachable = not (report.training_shards and report.replicas)
            report.outcome = "failed" if nothing_done or unreachable else "partial"
        self.metrics.rounds.labels(report.kind, report.outcome).inc()
        self.metrics.round_seconds.labels(report.kind).observe(report.seconds)
        _LOGGER.info(
            "sync_round",
            extra=fields(
                kind=report.kind,
                outcome=report.outcome,
                streams_ok=report.streams_ok,
                streams_failed=report.streams_failed,
                rows_applied=report.rows_applied,
                full_resyncs=report.full_resyncs,
                seconds=round(report.seconds, 3),
            ),
        )
        return report


def build_discovery(settings: AgentSettings) -> Discovery:
    """The discovery source the settings name."""
    if settings.discovery == "static":
        from sync_agent.discovery.static import StaticDiscovery

        return StaticDiscovery(training=settings.training, serving=settings.serving)
    from sync_agent.discovery.kubernetes import KubernetesDiscovery

    discovery = KubernetesDiscovery(
        namespace=settings.namespace,
        training_selector=settings.training_selector,
        serving_selector=settings.serving_selector,
        grpc_port_name=settings.grpc_port_name,
    )
    if not discovery.wait_synced(timeout=_DISCOVERY_SYNC_SECONDS):
        _LOGGER.warning("discovery_not_synced", extra=fields(seconds=_DISCOVERY_SYNC_SECONDS))
    return discovery


def main(args: argparse.Namespace) -> int:
    """``mps sync-agent``: build the settings, the discovery and the agent, and run."""
    configure_logging(args.log_format, getattr(args, "log_level", "info").upper())
    try:
        settings = AgentSettings.from_args(args)
    except SettingsError as exc:
        print(f"mps sync-agent: {exc}", file=sys.stderr)
        return 2
    registry = CollectorRegistry()
    metrics_server = None
    metrics_port = None
    if settings.metrics_port is not None:
        from prometheus_client import disable_created_metrics, start_http_server

        disable_created_metrics()  # one more series per counter, used by no alert or panel
        metrics_server, _ = start_http_server(settings.metrics_port, registry=registry)
        metrics_port = metrics_server.server_port
    discovery = build_discovery(settings)
    with SyncAgent(settings, discovery, registry) as agent:
        _LOGGER.info(
            "agent_started",
            extra=fields(
                discovery=settings.discovery,
                sparse_interval=settings.sparse_interval,
                dense_interval=settings.dense_interval,
                metrics_port=metrics_port,
                partition="{}/{}".format(*settings.partition),
            ),
        )
        status = agent.run()
    if metrics_server is not None:
        metrics_server.shutdown()
        metrics_server.server_close()
    return status
