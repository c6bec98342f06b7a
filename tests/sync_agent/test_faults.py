"""Faults on a real local cluster (subprocesses): 2 training shards -> 2 serving shards x 2
replicas, the agent syncing every 0.5 s while a workload pushes.

Table ``emb`` uses SGD with lr 1 from zeros and every push adds 1 to a row, so a row's value
counts the pushes it has seen: a monitor thread reads every serving replica all along and
fails the test if a row's value ever goes down or a row disappears (a replica restarted
empty is forgiven once). Table ``ephemeral`` expires rows after 2 s, so tombstones travel
too. After each fault: every replica converges to training, exactly.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid

import grpc
import numpy as np
import pytest

from monolith_ps import wire
from monolith_ps.routing import shard_of
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from sync_agent.router import can_share_keys

N_TRAIN, N_SERVE, REPLICAS = 2, 2, 2
DIM = 4
KEYS = np.arange(1, 3001, dtype=np.uint64) * np.uint64(7919)
EPHEMERAL_KEYS = np.arange(1, 201, dtype=np.uint64) * np.uint64(104729)
BULK_KEYS = np.arange(1, 60_001, dtype=np.uint64)  # makes a full bootstrap take a while
NUM_TABLES = 3
CONFIG = {
    "tables": [
        {"name": "emb", "dim": DIM, "optimizer": "sgd", "optimizer_args": {"lr": 1.0},
         "initializer": "zeros"},
        {"name": "ephemeral", "dim": 2, "optimizer": "sgd", "initializer": "zeros",
         "ttl_seconds": 2.0},
        {"name": "bulk", "dim": 4, "optimizer": "sgd", "initializer": "uniform"},
    ],
    "server": {"expiry_sweep_interval": "0.5s"},
    "sync": {"chunk_rows": 64},
}  # fmt: skip
TIMEOUT = 60.0  # generous: a shared 2-core machine can be very busy


# Servers restart on the same port: reconnect fast, and never share a subchannel (and
# its reconnect backoff) with another channel to the same address.
_CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def _stub(address: str) -> ps_pb2_grpc.ParameterServerStub:
    return ps_pb2_grpc.ParameterServerStub(grpc.insecure_channel(address, options=_CHANNEL_OPTIONS))


def _lookup(stub, table, keys, timeout=30.0):
    response = stub.Lookup(
        ps_pb2.LookupRequest(tables=[ps_pb2.TableKeys(table=table, keys=wire.encode_keys(keys))]),
        timeout=timeout,
    )
    tv = response.tables[0]
    values = wire.decode_values(tv.values, len(keys), tv.dim, tv.dtype)
    found = wire.decode_found(tv.found, len(keys)) if tv.found else np.ones(len(keys), bool)
    return values, found


class Workload:
    """Pushes +1 to random rows of ``emb`` on the training shards until paused."""

    def __init__(self, training: list[str]) -> None:
        self._stubs = [_stub(a) for a in training]
        self._running = threading.Event()
        self._stop = threading.Event()
        self._batch = threading.Lock()  # held while a batch is pushed
        self._pushed = threading.Condition()
        self._rng = np.random.default_rng(7)
        self.pushes = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        owner = shard_of(KEYS, N_TRAIN)
        for _ in range(1_000_000):
            if self._stop.is_set():
                return
            if not self._running.wait(0.1):
                continue
            with self._batch:
                if self._running.is_set():
                    self._push_batch(owner)
            self._stop.wait(0.02)  # the workload's pace

    def _push_batch(self, owner: np.ndarray) -> None:
        batch = self._rng.choice(len(KEYS), size=300, replace=False)
        for i, stub in enumerate(self._stubs):
            keys = KEYS[batch][owner[batch] == i]
            request = ps_pb2.PushRequest(
                tables=[
                    ps_pb2.TableGradients(
                        table="emb",
                        keys=wire.encode_keys(keys),
                        grads=(-np.ones((len(keys), DIM), np.float32)).tobytes(),
                    )
                ],
                request_id=uuid.uuid4().hex,
            )
            try:
                stub.Push(request, timeout=2.0)
            except grpc.RpcError:
                continue  # a shard being restarted
            with self._pushed:
                self.pushes += 1
                self._pushed.notify_all()

    def resume(self) -> None:
        self._running.set()

    def pause(self) -> None:
        """Stop pushing; returns once no push is in flight."""
        self._running.clear()
        with self._batch:
            pass

    def wait_pushes(self, count: int, timeout: float = TIMEOUT) -> None:
        """Until ``count`` more pushes have been taken by training."""
        with self._pushed:
            target = self.pushes + count
            moved = self._pushed.wait_for(lambda: self.pushes >= target, timeout)
        assert moved, f"training took {self.pushes - target + count} of {count} pushes"

    def close(self) -> None:
        self._stop.set()
        self._running.set()
        self._thread.join(10.0)


class Monitor:
    """Reads every serving replica all along; records any row that went backwards."""

    def __init__(self, serving: list[list[str]]) -> None:
        self._replicas = [(s, a, _stub(a)) for s, replicas in enumerate(serving) for a in replicas]
        self._owner = shard_of(KEYS, N_SERVE)
        self._last: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._generation: dict[str, int] = {}
        self._lock = threading.Lock()
        self.violations: list[str] = []
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def forget(self, address: str) -> None:
        """A replica restarted empty: its history starts over."""
        with self._lock:
            self._last.pop(address, None)
            self._generation[address] = self._generation.get(address, 0) + 1

    def _run(self) -> None:
        for _ in range(10_000_000):
            if self._stop.wait(0.01):
                return
            for shard, address, stub in self._replicas:
                keys = KEYS[self._owner == shard]
                with self._lock:
                    generation = self._generation.get(address, 0)
                try:
                    values, found = _lookup(stub, "emb", keys, timeout=0.5)
                except grpc.RpcError:
                    continue
                with self._lock:
                    if generation != self._generation.get(address, 0):
                        continue  # read before a restart: says nothing about the new process
                    self.reads += 1
                    last = self._last.get(address)
                    if last is not None:
                        last_values, last_found = last
                        lost = last_found & ~found
                        back = found & last_found & (values[:, 0] < last_values[:, 0])
                        if lost.any() or back.any():
                            i = int(np.flatnonzero(lost | back)[0])
                            self.violations.append(
                                f"{address} key {keys[i]}: {last_values[i, 0]} "
                                f"(found {last_found[i]}) -> {values[i, 0]} (found {found[i]})"
                            )
                    self._last[address] = (values.copy(), found.copy())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10.0)


@pytest.fixture(scope="module")
def cluster(local_cluster):
    local = local_cluster(
        CONFIG,
        N_TRAIN,
        N_SERVE,
        REPLICAS,
        snapshots=True,
        sparse_interval="0.5s",
        dense_interval="1h",
        agent_args=["--rpc-timeout", "1s", "--stall-timeout", "2s"],
    )
    with local:
        workload = Workload(local.training_addresses)
        monitor = Monitor(local.serving_addresses)
        # Rows of every table exist before the first fault.
        for table, keys in (("ephemeral", EPHEMERAL_KEYS), ("bulk", BULK_KEYS)):
            for stub, owned in _per_training_shard(local, keys):
                _lookup(stub, table, owned)
        workload.resume()
        try:
            yield local, workload, monitor
        finally:
            workload.close()
            monitor.close()
    for proc in local.processes():
        assert not proc.running(), f"{proc.name} outlived the cluster"


def _per_training_shard(local, keys):
    owner = shard_of(keys, N_TRAIN)
    return [(_stub(a), keys[owner == i]) for i, a in enumerate(local.training_addresses)]


def _training_rows(local):
    values = np.empty((len(KEYS), DIM), np.float32)
    owner = shard_of(KEYS, N_TRAIN)
    for i, address in enumerate(local.training_addresses):
        values[owner == i] = _lookup(_stub(address), "emb", KEYS[owner == i])[0]
    return values


def _converged(local, replicas=None) -> str:
    """'' when every chosen replica equals training; else what differs."""
    try:
        want = _training_rows(local)
    except grpc.RpcError as exc:
        return f"training: {exc.code().name}"
    owner = shard_of(KEYS, N_SERVE)
    for shard, addresses in enumerate(local.serving_addresses):
        for r, address in enumerate(addresses):
            if replicas is not None and (shard, r) not in replicas:
                continue
            stub = _stub(address)
            try:
                values, found = _lookup(stub, "emb", KEYS[owner == shard])
                described = stub.DescribeTables(
                    ps_pb2.DescribeTablesRequest(), timeout=15, wait_for_ready=True
                )
            except grpc.RpcError as exc:
                return f"{address}: {exc.code().name}"
            if not found.all() or not np.array_equal(values, want[owner == shard]):
                return f"{address}: {int((~found).sum())} rows missing or values differ"
            rows = {t.name: t.num_rows for t in described.tables}
            if rows["emb"] != int((owner == shard).sum()):
                return f"{address}: {rows['emb']} rows of emb, expected {(owner == shard).sum()}"
    return ""


def _wait_converged(local, replicas=None, timeout=TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while (problem := _converged(local, replicas)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not problem, problem


def _wait_until(condition, failure: str, timeout: float = TIMEOUT) -> None:
    """Until ``condition()`` holds, asking every 20 ms; fails with ``failure`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.02)


@pytest.fixture
def faults(cluster):
    """The cluster with the workload running; after the test: converged, nothing went back."""
    local, workload, monitor = cluster
    workload.resume()
    yield local, workload, monitor
    workload.pause()
    _wait_converged(local)
    assert monitor.reads > 0
    assert monitor.violations == []


def test_ephemeral_rows_expire_on_serving_too(faults):
    local, _, _ = faults
    deadline = time.monotonic() + TIMEOUT
    owner = shard_of(EPHEMERAL_KEYS, N_SERVE)
    while time.monotonic() < deadline:
        left = 0
        for addresses in local.serving_addresses:
            for address in addresses:
                described = _stub(address).DescribeTables(
                    ps_pb2.DescribeTablesRequest(), timeout=10, wait_for_ready=True
                )
                left += {t.name: t.num_rows for t in described.tables}["ephemeral"]
        if left == 0:
            break
        time.sleep(0.2)
    assert left == 0, f"{left} expired rows still on serving"
    assert owner.size == EPHEMERAL_KEYS.size


def test_agent_killed_mid_round_then_restarted(faults, metric_value):
    local, workload, monitor = faults
    workload.pause()
    _wait_converged(local)
    # A replica restarted empty needs a long full bootstrap (table bulk): the agent is
    # frozen once that stream has begun reaching the replica, then killed.
    target = local.process("serving", 1, replica=1)
    local.kill("agent")
    local.kill("serving", 1, replica=1)
    monitor.forget(target.address)
    local.restart("serving", 1, replica=1)
    local.restart("agent")
    _wait_until(
        lambda: (
            metric_value(target.metrics_url, "monolith_ps_delta_bytes_received_total", table="bulk")
            > 0
        ),
        "the agent never began the full bootstrap of the restarted replica",
    )
    local.kill("agent", sig=signal.SIGSTOP)  # mid-round: some streams started, not all done
    stub = _stub(target.address)
    before = {(c.table, c.source_shard) for c in stub.GetSyncState(
        ps_pb2.GetSyncStateRequest(), timeout=15, wait_for_ready=True).cursors}  # fmt: skip
    assert len(before) < N_TRAIN * NUM_TABLES, "the bootstrap ended before the agent froze"
    local.kill("agent")  # SIGKILL, while frozen
    workload.resume()
    workload.wait_pushes(10)  # training moves on while no agent runs
    local.restart("agent")


def test_serving_replica_killed_and_restarted_empty(faults, metric_value):
    local, workload, monitor = faults
    target = local.process("serving", 0, replica=0)

    def agent_counts(name: str, **labels: str) -> float:
        return metric_value(local.agent_metrics_url, name, **labels)

    resyncs = agent_counts("monolith_ps_sync_full_resyncs_total", replica=target.address)
    errors = agent_counts("monolith_ps_sync_errors_total", server=target.address)
    local.kill("serving", 0, replica=0)
    monitor.forget(target.address)
    # While it is down the agent goes on without it, training moves on and the other
    # replicas keep up.
    _wait_until(
        lambda: agent_counts("monolith_ps_sync_errors_total", server=target.address) > errors,
        "the agent never noticed the killed replica",
    )
    workload.wait_pushes(10)
    workload.pause()
    others = {(s, r) for s in range(N_SERVE) for r in range(REPLICAS)} - {(0, 0)}
    _wait_converged(local, others)
    workload.resume()
    local.restart("serving", 0, replica=0)
    # It is refilled by a full resync while training keeps changing; once that resync is
    # counted, the training side is held still so "equal to training" has one answer.
    _wait_until(
        lambda: (
            agent_counts("monolith_ps_sync_full_resyncs_total", replica=target.address) > resyncs
        ),
        "no full resync of the restarted replica",
    )
    workload.pause()
    _wait_converged(local, {(0, 0)}, timeout=TIMEOUT)


def test_training_shard_restarted_with_a_new_epoch(faults):
    local, workload, _ = faults
    workload.pause()
    stub = _stub(local.training_addresses[1])
    before = stub.DescribeTables(ps_pb2.DescribeTablesRequest(), timeout=15, wait_for_ready=True)
    stub.Snapshot(ps_pb2.SnapshotRequest(full=True), timeout=30, wait_for_ready=True)
    local.kill("training", 1)  # kill -9: the restore may have lost updates, so a new epoch
    local.restart("training", 1)
    after = _stub(local.training_addresses[1]).DescribeTables(
        ps_pb2.DescribeTablesRequest(), timeout=15, wait_for_ready=True
    )
    assert after.epoch != before.epoch
    rows = {t.name: t.num_rows for t in before.tables if t.name != "ephemeral"}
    assert {t.name: t.num_rows for t in after.tables if t.name != "ephemeral"} == rows
    # Every replica that owns keys of shard 1 is resynced in full under the new epoch.
    relevant = [
        address
        for shard, addresses in enumerate(local.serving_addresses)
        if can_share_keys(1, N_TRAIN, shard, N_SERVE)
        for address in addresses
    ]
    deadline = time.monotonic() + TIMEOUT
    for address in relevant:
        while True:
            state = _stub(address).GetSyncState(
                ps_pb2.GetSyncStateRequest(), timeout=15, wait_for_ready=True
            )
            epochs = {c.epoch for c in state.cursors if c.source_shard == 1}
            if epochs == {after.epoch}:
                break
            assert time.monotonic() < deadline, f"{address} still at epochs {epochs}"
            time.sleep(0.1)
    _wait_converged(local)
    workload.resume()


def test_replica_unreachable_for_a_while(faults, metric_value):
    local, workload, _ = faults
    frozen = local.process("serving", 0, replica=1)

    def errors(**labels: str) -> float:
        return metric_value(local.agent_metrics_url, "monolith_ps_sync_errors_total", **labels)

    errors_before = errors(server=frozen.address)
    local.kill("serving", 0, replica=1, sig=signal.SIGSTOP)
    try:
        # until the agent has given up on the frozen replica (its rpc or stall timeout)
        _wait_until(
            lambda: errors(server=frozen.address) > errors_before,
            "the agent never noticed the frozen replica",
        )
        workload.pause()
        others = {(s, r) for s in range(N_SERVE) for r in range(REPLICAS)} - {(0, 1)}
        _wait_converged(local, others)  # the frozen replica holds nobody back
        workload.resume()
        workload.wait_pushes(10)  # the frozen replica falls behind
    finally:
        local.kill("serving", 0, replica=1, sig=signal.SIGCONT)
    assert errors() > 0
