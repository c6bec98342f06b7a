"""The sync agent's run loop: sparse rounds and dense rounds on their own intervals.

A round reads the state of the cluster from the servers themselves (training shards:
epoch and table versions; serving replicas: their cursors), plans the exports that
bring each replica up to date, and runs them in parallel. The agent keeps no state
that matters for correctness, so it can be killed at any moment and restarted, or run
twice at once: a stream that does not finish moves no cursor.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from monolith_ps.logs import fields
from monolith_ps.routing import can_share_keys
from monolith_ps.v1 import ps_pb2_grpc
from sync_agent.channels import ChannelPool
from sync_agent.cluster_reader import ClusterReader
from sync_agent.cursors import (
    ExportPlan,
    ReplicaState,
    TrainingShard,
    dense_source,
    plan_exports,
)
from sync_agent.discovery.base import Discovery
from sync_agent.lag import LagTracker
from sync_agent.metrics import SyncMetrics
from sync_agent.settings import AgentSettings
from sync_agent.streams import (
    ReplicaOutcome,
    StopSignal,
    StreamLimits,
    SyncStoppedError,
    run_dense_export,
    run_export,
)

__all__ = ["RoundReport", "SyncAgent"]

_LOGGER = logging.getLogger(__name__)
# Each export holds one stream (a server thread) on every replica it feeds; staying
# well under a server's handler threads leaves room for lookups.
_MAX_PARALLEL_EXPORTS = 4
# After a failed sync of a new replica, wait this long (doubling, up to the sparse
# interval) before the next try, so a replica that keeps failing is not hammered.
_NEW_REPLICA_RETRY_SECONDS = 2.0


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

    def summary(self) -> dict[str, Any]:
        """The round as its ``sync_round`` log event gives it: every number but the shard
        and replica counts, and no errors (each has its own ``sync_error`` event)."""
        values = dataclasses.asdict(self)
        for name in ("training_shards", "replicas", "errors"):
            del values[name]
        values["seconds"] = round(self.seconds, 3)
        return values


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
        self._channels = ChannelPool(settings.max_message_bytes, settings.tls, settings.token)
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
        self._lag = LagTracker(self.metrics)
        self._training_tables: set[tuple[str, int, int]] = set()  # (table, shard, shards)
        self._new_replica_retry: dict[str, tuple[float, float]] = {}  # name -> (at, pause)
        self._reader = ClusterReader(
            discovery, self._channels, self._run_parallel, settings.rpc_timeout, settings.partition
        )

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
        next_check = next_sparse + self.settings.new_replica_interval
        failed = False
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_sparse:
                next_sparse = now + self.settings.sparse_interval
                report = self.sync_sparse(wait_background=self.settings.once)
                failed |= report.outcome not in ("ok", "stopped")
            elif now >= next_check:
                try:
                    self.sync_new_replicas()
                except Exception:  # the check must never end the agent; rounds go on
                    _LOGGER.exception("new_replica_check_failed")
            next_check = time.monotonic() + self.settings.new_replica_interval
            if self._stop.is_set():
                break
            now = time.monotonic()
            if now >= next_dense:
                next_dense = now + self.settings.dense_interval
                failed |= self.sync_dense().outcome not in ("ok", "stopped")
            if self.settings.once:
                return 1 if failed else 0
            wake = min(next_sparse, next_dense, next_check)
            self._stop.wait(max(0.0, wake - time.monotonic()))
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
            for plan, plan_outcomes in self._run_parallel(
                [p for p in plans if not p.isolated], self._export
            ):
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

    def _export(self, plan: ExportPlan) -> list[ReplicaOutcome]:
        """Run one export plan, counting the bytes received from its training shard."""
        outcomes, received = run_export(
            plan,
            self._channels.stub(plan.source.endpoint.address),
            self._serving_stub,
            self._limits,
            self._stop,
        )
        self.metrics.bytes_exported.labels(str(plan.source.shard_index), plan.table.name).inc(
            received
        )
        return outcomes

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
                outcomes.extend((plan, o) for o in self._export(plan))
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

    def sync_new_replicas(self) -> RoundReport | None:
        """Sync at once the serving replicas that lack a state of some table from some
        training shard (new or restarted: no cursors); the others keep their interval.

        The run loop calls it every ``new_replica_interval``: one ``GetSyncState`` per
        replica when nothing is new; None then.
        """
        now = time.monotonic()
        fresh = {
            r.name
            for r in self._reader.read_replicas()
            if self._lacks_state(r) and self._new_replica_retry.get(r.name, (0.0, 0.0))[0] <= now
        }
        if not fresh:
            return None
        report = RoundReport("new_replicas")
        started = time.monotonic()
        training, replicas = self._read_cluster(report)
        targets = [r for r in replicas if r.name in fresh]
        plans = [
            plan
            for shard in training
            for table in shard.tables
            for plan in plan_exports(shard, table, targets, ())
        ]
        outcomes: list[tuple[ExportPlan, ReplicaOutcome]] = []
        try:
            for plan, plan_outcomes in self._run_parallel(plans, self._export):
                outcomes.extend((plan, o) for o in plan_outcomes)
            source = dense_source(training)
            behind = [r for r in targets if source is not None and r.dense_epoch != source.epoch]
            for outcome in self._export_dense(source, behind):
                self._count_outcome(report, outcome, "")
        except SyncStoppedError:
            report.outcome = "stopped"
        for plan, outcome in outcomes:
            self._count_outcome(report, outcome, plan.table.name, plan.source.shard_index)
        failed = {o.replica.name for _, o in outcomes if not o.ok}
        for name in fresh:
            if name in failed or not training:
                pause = 2 * self._new_replica_retry.get(name, (0.0, 0.0))[1]
                pause = min(self.settings.sparse_interval, max(_NEW_REPLICA_RETRY_SECONDS, pause))
                self._new_replica_retry[name] = (time.monotonic() + pause, pause)
            else:
                self._new_replica_retry.pop(name, None)
        return self._finish(report, started)

    def _lacks_state(self, replica: ReplicaState) -> bool:
        """Whether the replica has no cursor for a table of a training shard whose keys it
        can own (as far as the last round saw training), or no cursor at all."""
        if not replica.sync.cursors:
            return True
        return any(
            replica.cursor(table, shard) is None
            for table, shard, shards in self._training_tables
            if can_share_keys(shard, shards, replica.shard_index, replica.num_shards)
        )

    def sync_dense(self) -> RoundReport:
        """One dense round: training shard 0's dense arrays to every replica behind it."""
        report = RoundReport("dense")
        started = time.monotonic()
        training, replicas = self._read_cluster(report)
        source = dense_source(training)
        if source is None or not source.dense_names or not replicas:
            return self._finish(report, started)
        try:
            outcomes = self._export_dense(source, replicas)
        except SyncStoppedError:
            report.outcome = "stopped"
            outcomes = []
        for outcome in outcomes:
            self._count_outcome(report, outcome, "")
            if outcome.ok:
                self.metrics.dense_version.labels(outcome.replica.name).set(
                    outcome.complete_version
                )
        sent = {id(o.replica) for o in outcomes}
        for replica in replicas:
            if replica.dense_epoch == source.epoch and id(replica) not in sent:
                self.metrics.dense_version.labels(replica.name).set(replica.dense_version)
        return self._finish(report, started)

    def _export_dense(
        self, source: TrainingShard | None, replicas: list[ReplicaState]
    ) -> list[ReplicaOutcome]:
        """Copy ``source``'s dense arrays to ``replicas``; the outcomes (none without any)."""
        if source is None or not source.dense_names or not replicas:
            return []
        outcomes, _ = run_dense_export(
            source,
            replicas,
            self._channels.stub(source.endpoint.address),
            self._serving_stub,
            self._limits,
            self._stop,
        )
        return outcomes

    # ------------------------------------------------------------------ cluster state

    def _read_cluster(self, report: RoundReport) -> tuple[list[TrainingShard], list[ReplicaState]]:
        """Training shards and serving replicas that answered, validated as a topology."""
        view = self._reader.read()
        for stage, server, message in view.problems:
            self._error(report, stage, server, message)
        if view.problems and view.problems[0][0] == "discover":
            return [], []
        with self._lock:
            self._isolated.update(view.silent_replicas)
        if view.training:
            self._training_tables = {
                (t.name, s.shard_index, s.num_shards) for s in view.training for t in s.tables
            }
        self.metrics.training_shards.set(len(view.training))
        self.metrics.replicas.set(len(view.replicas))
        report.training_shards, report.replicas = len(view.training), len(view.replicas)
        gone = self._lag.forget_gone(view.serving_names)
        with self._lock:
            self._isolated.difference_update(gone)
        return view.training, view.replicas

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
        self._lag.update(training, replicas, applied)

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
        _LOGGER.info("sync_round", extra=fields(**report.summary()))
        return report
