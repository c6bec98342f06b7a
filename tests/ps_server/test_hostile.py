"""Hostile clients against real ``mps server`` subprocesses: unread exports, trickling and
endless resyncs beside valid traffic, and SIGTERM with such streams open.

Deadlines are configured short (``stream_idle_timeout`` 1 s) and tables small, so each
attack takes a second or two; every loop is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from monolith_ps import wire
from monolith_ps.processes import rss_bytes
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from sync_agent.agent import SyncAgent
from sync_agent.discovery.static import StaticDiscovery
from sync_agent.settings import AgentSettings

_DIM = 32
_ROWS = 40_000  # ~5 MB of rows: more than loopback buffers, so an unread export blocks
_CONFIG = {
    "tables": [{"name": "emb", "dim": _DIM, "optimizer": "sgd", "initializer": "normal"}],
    "server": {
        "max_workers": 8,
        "max_streams": 3,
        "stream_idle_timeout": "1s",
        "stream_max_duration": "30s",
        "stream_memory_bytes": 24 << 20,
    },
}
_VALID_DEADLINE = 2.0  # what a valid call must be answered within, attacks or not


def _fill(address: str) -> None:
    """Give the training server ``_ROWS`` rows (lookups insert on training)."""
    with grpc.insecure_channel(address) as channel:
        stub = ps_pb2_grpc.ParameterServerStub(channel)
        for start in range(1, _ROWS + 1, 10_000):
            keys = wire.encode_keys(np.arange(start, start + 10_000, dtype=np.uint64))
            table = ps_pb2.TableKeys(table="emb", keys=keys)
            stub.Lookup(ps_pb2.LookupRequest(tables=[table]), timeout=60)


@pytest.fixture(scope="module")
def training(process_factory):
    server = process_factory("training", config=_CONFIG)
    _fill(server.address)
    return server


@pytest.fixture(scope="module")
def serving(process_factory):
    """A serving server made ready by one valid full resync (rows 1..8 of training shard 0
    of 1); ``serving.cursors`` is what it holds then."""
    server = process_factory("serving", config=_CONFIG, wait=False)
    with _stub(server.address) as stub:
        first = _chunk(1, 8, last=True)
        first.source_num_shards = 1
        for _ in range(1800):  # UNAVAILABLE while it starts (kernels load)
            try:
                stub.ApplyDelta(iter([first]), timeout=120, wait_for_ready=True)
                break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                time.sleep(0.1)
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.address))
        for _ in range(600):
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.1)
        server.cursors = _cursors(stub)
    assert server.cursors == [("emb", 0, 9)]
    return server


def _cursors(stub: ps_pb2_grpc.ParameterServerStub) -> list[tuple[str, int, int]]:
    answer = stub.GetSyncState(ps_pb2.GetSyncStateRequest(), timeout=5)
    return [(c.table, c.source_shard, c.version) for c in answer.cursors]


@contextlib.contextmanager
def _stub(address: str) -> Iterator[ps_pb2_grpc.ParameterServerStub]:
    """A stub whose channel keeps HTTP/2's initial flow-control window (no BDP probing),
    so an unread export of ``_ROWS`` rows blocks even in the floor-sized chunks
    (``server.min_chunk_bytes``) the server cuts instead of growing the window to take it.
    """
    with grpc.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        yield ps_pb2_grpc.ParameterServerStub(channel)


def _valid_calls(address: str, role: str, seconds: float) -> list[str]:
    """Health, DescribeTables and Lookup (and Push on training) for ``seconds``; the
    failures, as text (none expected)."""
    failures = []
    keys = wire.encode_keys(np.arange(1, 65, dtype=np.uint64))
    lookup = ps_pb2.LookupRequest(tables=[ps_pb2.TableKeys(table="emb", keys=keys)])
    grads = wire.encode_values(np.zeros((64, _DIM), np.float32))[0]
    push = ps_pb2.PushRequest(tables=[ps_pb2.TableGradients(table="emb", keys=keys, grads=grads)])
    with grpc.insecure_channel(address) as channel:
        stub = ps_pb2_grpc.ParameterServerStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        calls = [
            ("health", health.Check, health_pb2.HealthCheckRequest()),
            ("describe", stub.DescribeTables, ps_pb2.DescribeTablesRequest()),
            ("lookup", stub.Lookup, lookup),
        ]
        if role == "training":
            calls.append(("push", stub.Push, push))
        else:
            calls.append(("sync_state", stub.GetSyncState, ps_pb2.GetSyncStateRequest()))
        end = time.monotonic() + seconds
        for _ in range(10_000):
            if time.monotonic() >= end:
                break
            for name, rpc, request in calls:
                try:
                    rpc(request, timeout=_VALID_DEADLINE)
                except grpc.RpcError as exc:
                    failures.append(f"{name}: {exc.code().name} {exc.details()}")
    return failures


def _metric(server, name: str) -> float:
    page = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5)
    total = 0.0
    for line in page.read().decode().splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _valid_calls_until_cut(server, role: str, method: str) -> list[str]:
    """Valid calls (:func:`_valid_calls`) until the server has cut 3 idle ``method``
    streams (~1 s; at most 20 rounds of 0.5 s); the failures, as text (none expected)."""
    cut_metric = f'monolith_ps_streams_cut_total{{method="{method}",reason="idle"}}'
    failures = []
    for _ in range(20):
        failures += _valid_calls(server.address, role, seconds=0.5)
        if _metric(server, cut_metric) >= 3:
            break
    return failures


def _chunk(start: int, rows: int, source: int = 0, last: bool = False) -> ps_pb2.DeltaChunk:
    """A full-resync chunk of rows ``start..`` from training shard ``source`` of 64."""
    keys = np.arange(start, start + rows, dtype=np.uint64)
    return ps_pb2.DeltaChunk(
        table="emb", source_shard=source, source_num_shards=64, epoch=7, full_resync=True,
        dim=_DIM, keys=wire.encode_keys(keys), versions=wire.encode_versions(keys),
        values=wire.encode_values(np.ones((rows, _DIM), np.float32))[0],
        last=last, complete_version=start + rows if last else 0,
    )  # fmt: skip


class _Trickle:
    """An ApplyDelta stream that sends ``first`` chunks, then nothing until released."""

    def __init__(self, stub: ps_pb2_grpc.ParameterServerStub, first: list[ps_pb2.DeltaChunk]):
        self.release = threading.Event()
        self.sent = 0

        def requests() -> Iterator[ps_pb2.DeltaChunk]:
            for chunk in first:
                self.sent += 1
                yield chunk
            self.release.wait(60)

        self.future = stub.ApplyDelta.future(requests(), timeout=60)

    def code(self, timeout: float = 20) -> tuple[grpc.StatusCode, str]:
        try:
            self.future.result(timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
        finally:
            self.release.set()
        return grpc.StatusCode.OK, ""


def test_unread_exports_are_capped_and_cut_while_valid_calls_go_on(training):
    exports = []
    with _stub(training.address) as stub:
        for _ in range(6):  # more than max_streams (3)
            request = ps_pb2.ExportDeltaRequest(table="emb", max_chunk_rows=64)
            exports.append(stub.ExportDelta(request, timeout=60))
        failures = _valid_calls_until_cut(training, "training", "ExportDelta")
        outcomes = []
        for call in exports:  # read them now: refused at once, or cut while unread
            try:
                for _ in call:
                    pass
                outcomes.append(("OK", ""))
            except grpc.RpcError as exc:
                outcomes.append((exc.code().name, exc.details()))
    assert failures == []
    codes = sorted(code for code, _ in outcomes)
    assert codes == ["DEADLINE_EXCEEDED"] * 3 + ["RESOURCE_EXHAUSTED"] * 3, outcomes
    cut = next(details for code, details in outcomes if code == "DEADLINE_EXCEEDED")
    assert "the reader took no chunk" in cut and "server.stream_idle_timeout" in cut
    refused = next(details for code, details in outcomes if code == "RESOURCE_EXHAUSTED")
    assert "server.max_streams" in refused
    assert (
        _metric(training, 'monolith_ps_streams_cut_total{method="ExportDelta",reason="idle"}') >= 3
    )
    # Slots are free again: a reader that reads gets the whole table.
    with _stub(training.address) as stub:
        request = ps_pb2.ExportDeltaRequest(table="emb", max_chunk_rows=8192)
        chunks = list(stub.ExportDelta(request, timeout=30))
    assert sum(len(c.keys) // 8 for c in chunks) == _ROWS


def test_a_paused_export_holds_its_selection_not_its_rows(training):
    """An export reads each chunk's values when it is taken: a reader that stops holds
    the keys and versions of its rows (16 bytes a row), not a copy of the rows."""
    gauge = "monolith_ps_stream_memory_bytes"
    before = _metric(training, gauge)
    with _stub(training.address) as stub:
        request = ps_pb2.ExportDeltaRequest(table="emb", max_chunk_rows=1024)
        call = stub.ExportDelta(request, timeout=60)
        next(call)
        held = _metric(training, gauge) - before
        call.cancel()
    assert held == _ROWS * (8 + 8)


def test_trickling_resyncs_are_cut_while_valid_calls_go_on(serving):
    with _stub(serving.address) as stub:
        trickles = [_Trickle(stub, [_chunk(1 + 1000 * i, 10, source=i)]) for i in range(5)]
        failures = _valid_calls_until_cut(serving, "serving", "ApplyDelta")
        outcomes = [t.code() for t in trickles]
    assert failures == []
    codes = sorted(code.name for code, _ in outcomes)
    assert codes == ["DEADLINE_EXCEEDED"] * 3 + ["RESOURCE_EXHAUSTED"] * 2, outcomes
    cut = next(details for code, details in outcomes if code.name == "DEADLINE_EXCEEDED")
    assert "the writer sent no chunk" in cut
    with _stub(serving.address) as stub:  # nothing was applied, no cursor moved
        assert _cursors(stub) == serving.cursors
    assert "rpc_failed" not in serving.events  # a cut stream is no server error


def test_endless_resync_stays_within_the_memory_budget(serving):
    before = rss_bytes(serving.proc.pid)
    sent = 0
    rows = 2048  # 256 KiB of values a chunk

    def endless() -> Iterator[ps_pb2.DeltaChunk]:
        nonlocal sent
        for i in range(2_000):  # 500 MB if nothing stopped it
            sent += 1
            yield _chunk(1 + i * rows, rows)

    with _stub(serving.address) as stub:
        with pytest.raises(grpc.RpcError) as refused:
            stub.ApplyDelta(endless(), timeout=60)
        peak = rss_bytes(serving.proc.pid)
        assert _cursors(stub) == serving.cursors
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "server.stream_memory_bytes" in refused.value.details()
    assert sent < 200
    # the budget (24 MiB) plus the transient of a chunk, far from the 500 MB offered
    assert peak - before < 96 << 20, (before, peak)


def test_sigterm_with_hostile_streams_open_exits_within_the_grace(process_factory):
    """The unread exports are not idle long enough to be cut before the grace period ends
    (``stream_idle_timeout`` 20 s): the stop itself cuts them at its deadline."""
    config = {**_CONFIG, "server": {**_CONFIG["server"], "stream_idle_timeout": "20s"}}
    server = process_factory("training", config=config)  # --grace-seconds 2
    _fill(server.address)
    with _stub(server.address) as stub:
        exports = [
            stub.ExportDelta(ps_pb2.ExportDeltaRequest(table="emb", max_chunk_rows=64), timeout=60)
            for _ in range(3)
        ]
        for call in exports:  # each stream is open, then blocked on its unread chunks
            next(call)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.wait(timeout=30)
        took = time.monotonic() - started
        ends = []
        for call in exports:  # the chunks buffered before the cut, then its status
            with pytest.raises(grpc.RpcError) as cut:
                for _ in call:
                    pass
            ends.append(cut.value.code())
    assert code == 0
    assert took < 2 + 1.5, took  # the grace, plus the final steps
    # The server cut all three at the deadline (its status may not reach a client whose
    # window is full before the process leaves: the client then sees the connection go).
    cuts = [line.get("reason") for line in server.lines if line.get("event") == "stream_cut"]
    assert cuts == ["stopping"] * 3
    assert ends == [grpc.StatusCode.UNAVAILABLE] * 3


def test_poisoned_cursors_are_refused_and_an_admin_resets_cursors(serving):
    """A stream whose versions run ahead of what it says its source has, or past what a
    version counter can reach, changes nothing; an admin drops cursors on demand."""

    def resync(last: ps_pb2.DeltaChunk) -> grpc.RpcError | ps_pb2.ApplyDeltaResponse:
        try:
            return stub.ApplyDelta(iter([_chunk(1, 8), last]), timeout=20)
        except grpc.RpcError as exc:
            return exc

    with _stub(serving.address) as stub:
        ahead = _chunk(100, 8, last=True)
        ahead.complete_version = 50  # the rows carry versions up to 107
        beyond = _chunk(100, 8, last=True)
        beyond.complete_version = (1 << 64) - 1
        for poisoned, why in ((ahead, "runs ahead of its source"), (beyond, "past the largest")):
            refused = resync(poisoned)
            assert isinstance(refused, grpc.RpcError)
            assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert why in refused.details()
            assert _cursors(stub) == serving.cursors
        assert isinstance(resync(_chunk(100, 8, last=True)), ps_pb2.ApplyDeltaResponse)
        assert _cursors(stub) == [("emb", 0, 108)]
        reset = stub.ResetSyncCursors(ps_pb2.ResetSyncCursorsRequest(table="emb"), timeout=5)
        assert reset.cursors_reset == 1
        assert not stub.GetSyncState(ps_pb2.GetSyncStateRequest(), timeout=5).cursors


def test_the_agent_gets_through_when_every_export_slot_is_taken(training, serving):
    """Unread exports hold all of training's slots; the agent's export is refused
    (RESOURCE_EXHAUSTED), retried with backoff, and the round succeeds once the idle
    streams are cut."""
    refused = 'monolith_ps_streams_refused_total{method="ExportDelta"}'
    refused_before = _metric(training, refused)
    with _stub(training.address) as stub:
        request = ps_pb2.ExportDeltaRequest(table="emb", max_chunk_rows=64)
        hogs = [stub.ExportDelta(request, timeout=60) for _ in range(3)]
        next(hogs[0])  # the streams hold their slots
        settings = AgentSettings(training=(training.address,), serving=(serving.address,),
                                 rpc_timeout=10, stall_timeout=20)  # fmt: skip
        with SyncAgent(settings, StaticDiscovery(settings.training, settings.serving)) as agent:
            report = agent.sync_sparse()
        for call in hogs:
            call.cancel()
    assert report.outcome == "ok", report.errors
    assert _metric(training, refused) > refused_before
    with _stub(serving.address) as stub:
        cursors = stub.GetSyncState(ps_pb2.GetSyncStateRequest(), timeout=5).cursors
    assert [c.table for c in cursors] == ["emb"]
