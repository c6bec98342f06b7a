"""One export fanned out to many replicas: ``ExportDelta`` in, one ``ApplyDelta`` per replica out.

Each replica's stream is fed through its own bounded queue, consumed by gRPC's own
sending thread, so memory stays at a few chunks per replica and a replica that stops
taking chunks is cut off after ``stall_timeout`` instead of holding the rest back.
A cut or failed stream never sends its last chunk, so that replica's cursor does not
move and the next round resends from where it stands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Protocol

import grpc

from monolith_ps.logs import fields
from monolith_ps.transport.rpc_errors import error_text
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from sync_agent.cursors import ExportPlan, ReplicaState, TrainingShard
from sync_agent.router import ChunkRouter, is_empty

__all__ = [
    "ReplicaOutcome",
    "StopSignal",
    "StreamLimits",
    "SyncStoppedError",
    "run_dense_export",
    "run_export",
]

_LOGGER = logging.getLogger(__name__)
_END = object()
_POLL_SECONDS = 0.25  # how often a blocked send looks at the stop signal
# A training server at its stream limit (server.max_streams) is asked again this many
# times, the wait doubling from this many seconds: a slot frees when a stream ends.
_BUSY_ATTEMPTS = 4
_BUSY_BACKOFF_SECONDS = 0.5


class SyncStoppedError(Exception):
    """The agent was asked to stop while a stream was running."""


class Cancellable(Protocol):
    """An RPC in flight: a unary call's future or a stream's call."""

    def cancel(self) -> bool: ...


class StopSignal:
    """The agent's stop request: ``set`` also cancels every gRPC call registered with it, so
    a stream blocked on a slow server ends at once instead of at its deadline.

    >>> stop = StopSignal()
    >>> with stop.cancelling(call):  # call.cancel() if stop.set() runs meanwhile
    ...     consume(call)
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.RLock()  # set() may run in a signal handler on this thread
        self._calls: set[Cancellable] = set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def set(self) -> None:
        self._event.set()
        with self._lock:
            calls = list(self._calls)
        for call in calls:
            call.cancel()

    def register(self, call: Cancellable) -> None:
        """Cancel ``call`` when stop is requested (at once if it already was)."""
        with self._lock:
            self._calls.add(call)
        if self._event.is_set():
            call.cancel()

    def unregister(self, call: Cancellable) -> None:
        with self._lock:
            self._calls.discard(call)

    @contextlib.contextmanager
    def cancelling(self, call: Cancellable) -> Iterator[None]:
        self.register(call)
        try:
            yield
        finally:
            self.unregister(call)


class ExportStreamError(RuntimeError):
    """A training shard's stream broke, ended early, or does not match what was asked."""


@dataclasses.dataclass(frozen=True)
class StreamLimits:
    """How long a stream may take, and how far a replica may fall behind before it is cut."""

    chunk_rows: int = 65536
    stream_timeout: float = 600.0
    stall_timeout: float = 30.0
    queue_chunks: int = 2  # per replica: memory ~ parallel exports x replicas x 2 chunks
    partition: tuple[int, int] = (0, 1)  # the serving shards this agent syncs


@dataclasses.dataclass
class ReplicaOutcome:
    """What happened to one replica's stream of one export."""

    replica: ReplicaState
    ok: bool = False
    stage: str = ""  # on failure: export, apply, stalled, stopped
    error: str = ""
    rows_applied: int = 0
    rows_skipped: int = 0
    tombstones_applied: int = 0
    bytes_sent: int = 0
    full_resync: bool = False
    complete_version: int = 0


class _ReplicaStream:
    """An ``ApplyDelta`` call whose requests come from a bounded queue."""

    def __init__(
        self,
        stub: ps_pb2_grpc.ParameterServerStub,
        outcome: ReplicaOutcome,
        limits: StreamLimits,
        stop: StopSignal,
    ) -> None:
        self.outcome = outcome
        self._limits = limits
        self._stop = stop
        self._queue: queue.Queue[object] = queue.Queue(maxsize=limits.queue_chunks)
        self._ended = False  # the end marker is queued: no more chunks
        self._settled = False  # the outcome is final
        self._future = stub.ApplyDelta.future(self._requests(), timeout=limits.stream_timeout)
        stop.register(self._future)

    def _end_now(self) -> None:
        """Drop queued chunks and queue the end marker, unblocking gRPC's sending thread."""
        self._ended = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put_nowait(_END)

    def _requests(self) -> Iterator[ps_pb2.DeltaChunk]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            yield item  # type: ignore[misc]

    @property
    def alive(self) -> bool:
        return not self._settled and not self._ended and not self._future.done()

    def _put(self, item: object) -> bool:
        """Queue ``item`` within ``stall_timeout``; False (stream cut) if the replica stalls."""
        deadline = time.monotonic() + self._limits.stall_timeout
        while True:
            try:
                self._queue.put(item, timeout=min(_POLL_SECONDS, self._limits.stall_timeout))
                return True
            except queue.Full:
                if self._stop.is_set() or self._future.done():
                    return False
                if time.monotonic() >= deadline:
                    self.abandon(
                        "stalled",
                        f"took no chunk for {self._limits.stall_timeout:g}s; stream cut, "
                        "cursor kept",
                    )
                    return False

    def send(self, chunk: ps_pb2.DeltaChunk) -> None:
        """Queue a chunk; cut the stream if the replica takes none for ``stall_timeout``."""
        if self.alive and self._put(chunk):
            self.outcome.bytes_sent += chunk.ByteSize()

    def end(self) -> None:
        """Queue the end of the request stream after the last chunk."""
        if self._settled or self._ended:
            return
        if self._future.done():  # answered (or failed) already: just release the sender
            self._end_now()
        elif self._put(_END):
            self._ended = True
        elif not self._future.done():
            self.abandon("stalled", "did not take the last chunk; stream cut, cursor kept")
        else:
            self._end_now()

    def wait_answer(self, deadline: float) -> None:
        """Wait for the replica's answer to an ended stream, until ``deadline``."""
        if self._settled:
            return
        try:
            response = self._future.result(timeout=max(0.0, deadline - time.monotonic()))
        except grpc.FutureTimeoutError:
            self.abandon("stalled", "no answer in time after the last chunk; cursor not read")
            return
        except grpc.FutureCancelledError:
            self._settle("apply", "cancelled")
            return
        except grpc.RpcError as exc:
            self._settle("apply", error_text(exc))
            return
        self._settled = True
        self._stop.unregister(self._future)
        self.outcome.ok = True
        self.outcome.rows_applied = response.rows_applied
        self.outcome.rows_skipped = response.rows_skipped
        self.outcome.tombstones_applied = response.tombstones_applied

    def abandon(self, stage: str, error: str) -> None:
        """Cancel the call (the replica keeps its cursor) and release the sending thread."""
        if self._settled:
            return
        if self._future.done() and not self._future.cancelled():
            exc = self._future.exception()
            if exc is not None:
                self._settle("apply", error_text(exc))
                return
        self._future.cancel()
        self._settle(stage, error)

    def _settle(self, stage: str, error: str) -> None:
        self._settled = True
        self._stop.unregister(self._future)
        if not self._ended:
            self._end_now()
        if not self.outcome.stage:
            self.outcome.stage, self.outcome.error = stage, error


def _finish(streams: Sequence[_ReplicaStream], limits: StreamLimits, deadline: float) -> None:
    """End every stream first, then collect the answers: a slow replica delays no other's end.

    A replica has ``stall_timeout`` after its last chunk to answer (never past ``deadline``).
    """
    for stream in streams:
        stream.end()
    answer_by = min(deadline, time.monotonic() + limits.stall_timeout)
    for stream in streams:
        stream.wait_answer(answer_by)


def run_export(
    plan: ExportPlan,
    training_stub: ps_pb2_grpc.ParameterServerStub,
    serving_stub: Callable[[ReplicaState], ps_pb2_grpc.ParameterServerStub],
    limits: StreamLimits,
    stop: StopSignal,
) -> tuple[list[ReplicaOutcome], int]:
    """Run one export plan; returns each replica's outcome and the bytes received from training.

    Never raises for a failed server: a broken export or apply is an outcome.
    ``SyncStoppedError`` is raised when ``stop`` is set mid-stream (all streams cancelled).
    """
    deadline = time.monotonic() + limits.stream_timeout
    router = ChunkRouter(dest for _, dest in plan.replicas)
    outcomes = [ReplicaOutcome(replica) for replica, _ in plan.replicas]
    streams: list[_ReplicaStream] = []
    received = 0
    shard_counts = Counter(dest.num_shards for _, dest in plan.replicas)
    request = ps_pb2.ExportDeltaRequest(
        table=plan.table.name,
        since_version=plan.since_version,
        epoch=plan.epoch,
        max_chunk_rows=limits.chunk_rows,
        # chunks of one serving shard each travel whole, without re-encoding
        route_num_shards=shard_counts.most_common(1)[0][0] if shard_counts else 0,
    )
    if len(shard_counts) == 1 and limits.partition[1] > 1:
        # every replica counts serving shards alike: only this agent's shards are sent
        request.route_partition_index, request.route_partition_count = limits.partition
    try:
        with contextlib.closing(_chunks_to_last(training_stub, request, limits, stop)) as chunks:
            for chunk in chunks:
                _check_chunk(chunk, plan)
                received += chunk.ByteSize()
                if not streams:
                    streams = [
                        _ReplicaStream(serving_stub(replica), outcome, limits, stop)
                        for (replica, _), outcome in zip(plan.replicas, outcomes, strict=True)
                    ]
                routed = router.route(chunk)
                for (_, dest), stream in zip(plan.replicas, streams, strict=True):
                    out = routed[dest]
                    if chunk.last or not is_empty(out):
                        stream.send(out)
                        stream.outcome.full_resync = chunk.full_resync
        for stream in streams:
            stream.outcome.complete_version = chunk.complete_version
        _finish(streams, limits, deadline)
    except (grpc.RpcError, ExportStreamError, ValueError) as exc:
        if stop.is_set():
            raise SyncStoppedError from exc
        _export_failed(exc, plan.source, plan.table.name, outcomes)
    finally:
        for stream in streams:
            stream.abandon("stopped" if stop.is_set() else "export", "stream ended early")
    if stop.is_set():
        raise SyncStoppedError
    return outcomes, received


def run_dense_export(
    source: TrainingShard,
    replicas: Sequence[ReplicaState],
    training_stub: ps_pb2_grpc.ParameterServerStub,
    serving_stub: Callable[[ReplicaState], ps_pb2_grpc.ParameterServerStub],
    limits: StreamLimits,
    stop: StopSignal,
) -> tuple[list[ReplicaOutcome], int]:
    """Copy training shard 0's dense arrays to every replica not already at its version.

    Asks from the lowest dense version when every replica holds the shard's epoch, else
    for everything (epoch 0). Chunks travel unchanged: every serving shard keeps all
    dense arrays. Returns the outcomes of the replicas that were sent a stream.
    """
    deadline = time.monotonic() + limits.stream_timeout
    incremental = bool(replicas) and all(r.dense_epoch == source.epoch for r in replicas)
    request = ps_pb2.ExportDeltaRequest(
        table="",
        since_version=min(r.dense_version for r in replicas) if incremental else 0,
        epoch=source.epoch if incremental else 0,
    )
    streams: list[_ReplicaStream] | None = None
    outcomes: list[ReplicaOutcome] = []
    received = 0
    try:
        with contextlib.closing(_chunks_to_last(training_stub, request, limits, stop)) as chunks:
            for chunk in chunks:
                if chunk.table or chunk.source_shard != source.shard_index:
                    raise ExportStreamError(
                        f"asked {source.endpoint.address} for dense arrays, got a chunk of "
                        f"table {chunk.table!r} from shard {chunk.source_shard}"
                    )
                if chunk.epoch != source.epoch:
                    raise ExportStreamError(
                        f"{source.endpoint.address} restarted during the round; synced next round"
                    )
                received += chunk.ByteSize()
                if streams is None:
                    nothing_new = incremental and chunk.last and not chunk.dense
                    targets = [
                        r
                        for r in replicas
                        if not nothing_new
                        and (r.dense_epoch, r.dense_version) != (chunk.epoch, chunk.dense_version)
                    ]
                    outcomes = [ReplicaOutcome(r, full_resync=True) for r in targets]
                    streams = [
                        _ReplicaStream(serving_stub(r), o, limits, stop)
                        for r, o in zip(targets, outcomes, strict=True)
                    ]
                for stream in streams:
                    stream.send(chunk)
        for stream in streams or ():
            stream.outcome.complete_version = chunk.dense_version
        _finish(streams or [], limits, deadline)
    except (grpc.RpcError, ExportStreamError, ValueError) as exc:
        if stop.is_set():
            raise SyncStoppedError from exc
        _export_failed(exc, source, "", outcomes)
    finally:
        for stream in streams or ():
            stream.abandon("stopped" if stop.is_set() else "export", "stream ended early")
    if stop.is_set():
        raise SyncStoppedError
    return outcomes, received


def _chunks_to_last(
    stub: ps_pb2_grpc.ParameterServerStub,
    request: ps_pb2.ExportDeltaRequest,
    limits: StreamLimits,
    stop: StopSignal,
) -> Generator[ps_pb2.DeltaChunk, None, None]:
    """The chunks of an ExportDelta call, through the one marked last; the call is cancelled
    when closed before. ``SyncStoppedError`` once ``stop`` is set, ``ExportStreamError`` when
    the stream ends without its last chunk."""
    export, chunks = _open_export(stub, request, limits, stop)
    complete = False
    try:
        for chunk in chunks:
            if stop.is_set():
                raise SyncStoppedError
            yield chunk
            if chunk.last:
                complete = True
                return
        kind = "export" if request.table else "dense export"
        raise ExportStreamError(f"{kind} stream ended without its last chunk")
    finally:
        stop.unregister(export)
        if not complete:
            export.cancel()


def _open_export(
    stub: ps_pb2_grpc.ParameterServerStub,
    request: ps_pb2.ExportDeltaRequest,
    limits: StreamLimits,
    stop: StopSignal,
) -> tuple[grpc.Call, Iterator[ps_pb2.DeltaChunk]]:
    """An ExportDelta call and its chunks, retried with backoff while the training server
    refuses it at its stream limit (RESOURCE_EXHAUSTED before any chunk: nothing was sent,
    so retrying is safe). Other failures, and the last refusal, propagate."""
    delay = _BUSY_BACKOFF_SECONDS
    for attempt in range(_BUSY_ATTEMPTS):
        call = stub.ExportDelta(request, timeout=limits.stream_timeout)
        stop.register(call)
        try:
            first = next(call)
        except StopIteration:
            return call, iter(())
        except grpc.RpcError as exc:
            stop.unregister(call)
            busy = exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            if not busy or attempt == _BUSY_ATTEMPTS - 1 or stop.wait(delay):
                raise
            _LOGGER.info("export_busy_retry", extra=fields(delay=delay, error=error_text(exc)))
            delay *= 2
            continue
        return call, itertools.chain([first], call)
    raise AssertionError("unreachable")  # pragma: no cover


def _export_failed(
    exc: BaseException, source: TrainingShard, table: str, outcomes: list[ReplicaOutcome]
) -> None:
    error = error_text(exc)
    _LOGGER.warning(
        "export_failed",
        extra=fields(training=source.endpoint.address, table=table or "(dense)", error=error),
    )
    for outcome in outcomes:
        if not outcome.ok and not outcome.stage:
            outcome.stage, outcome.error = "export", error


def _check_chunk(chunk: ps_pb2.DeltaChunk, plan: ExportPlan) -> None:
    if chunk.table != plan.table.name or chunk.source_shard != plan.source.shard_index:
        raise ExportStreamError(
            f"asked {plan.source.endpoint.address} for table {plan.table.name!r} of shard "
            f"{plan.source.shard_index}, got table {chunk.table!r} of shard {chunk.source_shard}"
        )
    if chunk.epoch != plan.source.epoch:
        raise ExportStreamError(
            f"{plan.source.endpoint.address} restarted during the round (epoch "
            f"{plan.source.epoch:016x} -> {chunk.epoch:016x}); it is synced next round"
        )
    if chunk.source_num_shards != plan.source.num_shards:
        raise ExportStreamError(
            f"{plan.source.endpoint.address} now reports {chunk.source_num_shards} training "
            f"shards, {plan.source.num_shards} when the round began"
        )
