"""Snapshots of real ``mps server`` subprocesses: kill -9, SIGTERM, damage, serving bootstrap.

Servers run as ``python -m monolith_ps.cli server`` on loopback with real snapshot
directories; kill means SIGKILL. Tables are small so the whole module stays quick.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from monolith_ps.routing import shard_of
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from ps_server.snapshot.format import MANIFEST_NAME
from ps_server.snapshot.merge import MergedSnapshot, merge_chain
from ps_server.snapshot.store import SnapshotStore

_REPO = Path(__file__).parents[3]

# user: adagrad rows with optimizer state; item: sgd lr=1 from zeros, so a row's value
# is minus the sum of the gradients pushed to it.
CONFIG = {
    "tables": [
        {"name": "user", "dim": 8, "optimizer": "adagrad", "optimizer_args": {"lr": 0.05},
         "initializer": "normal", "serving_dtype": "float16"},
        {"name": "item", "dim": 4, "optimizer": "sgd", "optimizer_args": {"lr": 1.0},
         "initializer": "zeros"},
    ],
    "dense": [{"name": "mlp", "size": 16, "optimizer": "momentum"}],
    "snapshot": {"full_interval": "1h", "incremental_interval": "1h", "keep": 2},
}  # fmt: skip
DIMS = {"user": 8, "item": 4}


class Client:
    """Raw stubs: the wire format is all these tests need."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = ps_pb2_grpc.ParameterServerStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lookup(self, table: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        request = ps_pb2.LookupRequest(
            tables=[ps_pb2.TableKeys(table=table, keys=keys.astype("<u8").tobytes())]
        )
        reply = self.stub.Lookup(request, timeout=30).tables[0]
        dtype = "<f2" if reply.dtype == ps_pb2.DTYPE_FLOAT16 else "<f4"
        values = np.frombuffer(reply.values, dtype=dtype).reshape(len(keys), reply.dim)
        found = np.frombuffer(reply.found, dtype=np.uint8).astype(bool) if reply.found else None
        return values, found

    def push(self, table: str, keys: np.ndarray, grads: np.ndarray, request_id: str = "") -> None:
        entry = ps_pb2.TableGradients(
            table=table, keys=keys.astype("<u8").tobytes(), grads=grads.astype("<f4").tobytes()
        )
        self.stub.Push(ps_pb2.PushRequest(tables=[entry], request_id=request_id), timeout=30)

    def push_dense(self, grad: np.ndarray) -> None:
        array = ps_pb2.DenseArray(name="mlp", values=grad.astype("<f4").tobytes())
        self.stub.PushDense(ps_pb2.PushDenseRequest(grads=[array]), timeout=30)

    def snapshot(self, full: bool) -> ps_pb2.SnapshotResponse:
        return self.stub.Snapshot(ps_pb2.SnapshotRequest(full=full), timeout=60)

    def epoch(self) -> int:
        return self.stub.DescribeTables(ps_pb2.DescribeTablesRequest(), timeout=30).epoch


def _train_step(client: Client, rng: np.random.Generator) -> None:
    for table, dim in DIMS.items():
        keys = rng.integers(1, 300, 64, dtype=np.uint64)
        client.lookup(table, keys)
        client.push(table, keys, rng.standard_normal((keys.size, dim)).astype(np.float32))
    client.push_dense(rng.standard_normal(16).astype(np.float32))


def _restored(snapshot_dir: Path) -> tuple[MergedSnapshot, list[int], list[str]]:
    result = SnapshotStore(snapshot_dir).restore()
    return (
        merge_chain(result.chain),
        [s.seq for s in result.chain],
        [s.path.name for s in result.skipped],
    )


def _assert_same_training_state(a: MergedSnapshot, b: MergedSnapshot) -> None:
    """Rows, optimizer state, counters and metadata equal (update times are wall-clock)."""
    assert a.tables.keys() == b.tables.keys()
    for name, left in a.tables.items():
        right = b.tables[name]
        oa, ob = np.argsort(left.keys), np.argsort(right.keys)
        for field in ("keys", "versions", "values", "opt_state", "push_counts", "usage"):
            np.testing.assert_array_equal(left.rows[field][oa], right.rows[field][ob], field)
        assert left.complete_version == right.complete_version
        for key in left.arrays:
            np.testing.assert_array_equal(left.arrays[key], right.arrays[key], key)
    assert a.dense.version == b.dense.version
    np.testing.assert_array_equal(a.dense.arrays["mlp"], b.dense.arrays["mlp"])
    np.testing.assert_array_equal(a.dense.states["mlp"], b.dense.states["mlp"])


def test_kill9_restart_is_exact_and_training_continues_as_if_never_stopped(
    process_factory, tmp_path
):
    dirs = {name: tmp_path / name for name in ("crashed", "reference")}
    servers = {
        name: process_factory("training", config=CONFIG, extra_args=("--snapshot-dir", str(d)))
        for name, d in dirs.items()
    }
    clients = {name: Client(s.address) for name, s in servers.items()}
    seed = 11
    for step in range(4):
        for client in clients.values():
            _train_step(client, np.random.default_rng(seed + step))
        if step == 1:
            clients["crashed"].snapshot(full=True)
    clients["crashed"].snapshot(full=False)
    epoch = clients["crashed"].epoch()
    clients["crashed"].close()

    servers["crashed"].kill()
    servers["crashed"].start()
    clients["crashed"] = Client(servers["crashed"].address)
    assert clients["crashed"].epoch() != epoch  # an unclean stop takes a new epoch

    for client in clients.values():
        client.snapshot(full=True)
    _assert_same_training_state(_restored(dirs["crashed"])[0], _restored(dirs["reference"])[0])

    for step in range(4, 7):
        for client in clients.values():
            _train_step(client, np.random.default_rng(seed + step))
    keys = np.arange(1, 300, dtype=np.uint64)
    for table in DIMS:
        left, _ = clients["crashed"].lookup(table, keys)
        right, _ = clients["reference"].lookup(table, keys)
        np.testing.assert_array_equal(left, right)
    for client in clients.values():
        client.snapshot(full=False)
        client.close()
    _assert_same_training_state(_restored(dirs["crashed"])[0], _restored(dirs["reference"])[0])


def test_kill9_at_random_moments_during_snapshots(process_factory, tmp_path):
    """Snapshots every 50 ms under pushes; SIGKILL at random (6 times, or up to 16 until one
    kill lands inside a write); every restart must find the newest complete snapshot intact
    and serve exactly what it holds."""
    config = {**CONFIG, "snapshot": {"full_interval": 0.3, "incremental_interval": 0.05, "keep": 2}}
    snaps = tmp_path / "snaps"
    server = process_factory("training", config=config, extra_args=("--snapshot-dir", str(snaps)))
    chooser = random.Random(20240611)
    rng = np.random.default_rng(5)
    kills_mid_write = 0
    expected: MergedSnapshot | None = None
    for kills in range(1, 17):  # at least 6 kills, more until one lands inside a write
        with Client(server.address) as client:
            if expected is not None:
                for name, section in expected.tables.items():
                    if not section.num_rows:
                        continue
                    values, _ = client.lookup(name, section.keys)
                    np.testing.assert_array_equal(values, section.rows["values"])
            deadline = time.monotonic() + chooser.uniform(0.15, 0.5)
            for _ in range(200):
                if time.monotonic() >= deadline:
                    break
                _train_step(client, rng)
        server.kill()
        store = SnapshotStore(snaps)
        kills_mid_write += bool(store.work_dirs())
        finished = [s.seq for s in store.snapshots()]
        result = store.restore()
        assert result.skipped == [] and [s.seq for s in result.chain][-1:] == finished[-1:]
        expected = merge_chain(result.chain) if result.chain else None
        server.start()
        if kills >= 6 and kills_mid_write:
            break
    assert kills_mid_write >= 1, "no kill landed inside a snapshot write"


def test_sigterm_snapshot_holds_every_acknowledged_push_then_damage_falls_back(
    process_factory, tmp_path
):
    snaps = tmp_path / "snaps"
    server = process_factory("training", config=CONFIG, extra_args=("--snapshot-dir", str(snaps)))
    with Client(server.address) as client:
        first_keys = np.arange(1, 101, dtype=np.uint64)
        client.push("item", first_keys, np.ones((100, 4), np.float32))
        client.snapshot(full=True)
        epoch = client.epoch()

    acked: list[np.ndarray] = []
    stop = threading.Event()

    def pusher(worker: int) -> None:
        with Client(server.address) as own:
            for block in range(10_000):
                if stop.is_set():
                    return
                keys = np.arange(64, dtype=np.uint64) + np.uint64(
                    10_000 + (worker * 10_000 + block) * 64
                )
                try:
                    own.push("item", keys, np.full((64, 4), 2.0, np.float32))
                except grpc.RpcError:
                    return
                acked.append(keys)

    threads = [threading.Thread(target=pusher, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acked) <= 10:  # the stop comes while pushes are being acknowledged
        assert time.monotonic() < deadline, f"{len(acked)} pushes acknowledged in 60 s"
        time.sleep(0.01)
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0
    stop.set()
    for thread in threads:
        thread.join(30)

    merged, chain, skipped = _restored(snaps)
    assert len(chain) == 2 and skipped == []
    final = SnapshotStore(snaps).read_manifest(max(snaps.glob("snap-*")))
    assert final.extra["clean_shutdown"] is True
    item = merged.tables["item"]
    value_of = dict(zip(item.keys.tolist(), item.rows["values"][:, 0].tolist(), strict=True))
    assert len(acked) > 10
    for keys in acked:
        assert all(value_of.get(k) == -2.0 for k in keys.tolist())
    assert all(value_of[k] == -1.0 for k in first_keys.tolist())

    server.start()  # after a clean stop: same epoch, same rows
    with Client(server.address) as client:
        assert client.epoch() == epoch
        values, _ = client.lookup("item", acked[-1])
        np.testing.assert_array_equal(values, -2.0)
    server.kill()

    final_path = max(snaps.glob("snap-*"))
    victim = max(final_path.glob("*.npy"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40
    victim.write_bytes(bytes(data))
    inspect = _mps("snapshot", "inspect", str(snaps))
    assert inspect.returncode == 1 and "NOT VERIFIED" in inspect.stdout
    server.start()
    with Client(server.address) as client:
        values, _ = client.lookup("item", first_keys)
        np.testing.assert_array_equal(values, -1.0)  # the full snapshot's state
        values, _ = client.lookup("item", acked[-1])
        np.testing.assert_array_equal(values, 0.0)  # newer pushes were in the damaged one
    restored = server.wait_event("snapshot_restored", 10)  # logged by this start
    assert restored["level"] == "warning" and final_path.name in restored["skipped"]
    assert not restored["epoch_kept"]


def _mps(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monolith_ps.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=_REPO,
    )


def test_serving_server_starts_from_a_bundle(process_factory, tmp_path):
    snaps = tmp_path / "snaps"
    training = process_factory("training", config=CONFIG, extra_args=("--snapshot-dir", str(snaps)))
    keys = np.arange(1, 200, dtype=np.uint64)
    with Client(training.address) as client:
        _train_step(client, np.random.default_rng(3))
        client.lookup("user", keys)
        trained, _ = client.lookup("user", keys)
        epoch = client.epoch()
    training.signal(signal.SIGTERM)
    assert training.wait(timeout=60) == 0

    exported = _mps(
        "bundle", "--from", str(snaps), "--to", str(tmp_path / "bundle"), "--dtype", "float16"
    )
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "bundle" / MANIFEST_NAME).is_file()
    serving = process_factory(
        "serving",
        shard_index=1,
        num_shards=2,
        config=CONFIG,
        extra_args=("--bootstrap-from", str(tmp_path / "bundle")),
    )
    mine = shard_of(keys, 2) == 1
    untrained = np.arange(10_000, 10_200, dtype=np.uint64)
    untrained = untrained[shard_of(untrained, 2) == 1]
    with Client(serving.address) as client:
        values, found = client.lookup("user", keys[mine])
        _, found_untrained = client.lookup("user", untrained)
        sync = client.stub.GetSyncState(ps_pb2.GetSyncStateRequest(), timeout=30)
    assert found.all() and not found_untrained.any()
    np.testing.assert_array_equal(values, trained[mine].astype(np.float16))
    # The sync agent continues from the bundle's versions instead of resyncing in full.
    cursors = {(c.table, c.source_shard): c for c in sync.cursors}
    assert set(cursors) == {("user", 0), ("item", 0)}
    assert all(c.epoch == epoch and c.version > 0 for c in cursors.values())
