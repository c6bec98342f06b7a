"""Fault campaign against real ``mps server`` processes and their snapshot directories.

1. kill -9 at random moments while pushes stream in and snapshots run every 50 ms: after
   each kill the directory must hold an intact newest snapshot (nothing skipped), and
   the restarted server must serve exactly its rows.
2. SIGTERM under concurrent pushes: every acknowledged push must be in the final snapshot.
3. Damage (flipped byte, truncated file, deleted file, deleted or edited manifest, a
   half-written directory) to the newest incremental, a middle one and the newest full:
   restore must detect it, fall back to the longest intact chain and report the skip.

Writes JSON (``--json``) and prints a Markdown summary. Loopback only, bounded in time.

    python -m evals.snapshot_chaos --iterations 50 --json results/snapshot_chaos.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from ps_server.snapshot.format import MANIFEST_NAME
from ps_server.snapshot.merge import merge_chain
from ps_server.snapshot.store import SnapshotStore

_REPO = Path(__file__).resolve().parents[1]
_CONFIG = {
    "tables": [
        {"name": "user", "dim": 16, "optimizer": "adagrad", "initializer": "normal"},
        {"name": "item", "dim": 8, "optimizer": "sgd", "optimizer_args": {"lr": 1.0},
         "initializer": "zeros"},
    ],
    "snapshot": {"full_interval": 0.3, "incremental_interval": 0.05, "keep": 2},
}  # fmt: skip


class Server:
    """One ``mps server`` subprocess; its JSON log is kept to read events from."""

    def __init__(self, config: Path, snapshot_dir: Path, log: Path) -> None:
        self.cmd = [
            sys.executable, "-m", "monolith_ps.cli", "server", "--role", "training",
            "--shard-index", "0", "--num-shards", "1", "--config", str(config),
            "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
            "--log-format", "json", "--snapshot-dir", str(snapshot_dir), "--auth", "off",
        ]  # fmt: skip
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.events: list[dict[str, Any]] = []

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait for ``server_ready``; returns seconds from spawn to ready."""
        started = time.monotonic()
        self.events = []
        ready = threading.Event()
        self.proc = subprocess.Popen(
            self.cmd, cwd=_REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        threading.Thread(target=self._read, args=(self.proc, ready), daemon=True).start()
        if not ready.wait(timeout) or not self.port:
            self.kill()
            raise RuntimeError(f"server not ready in {timeout}s; see {self.log}")
        return time.monotonic() - started

    def _read(self, proc: subprocess.Popen[bytes], ready: threading.Event) -> None:
        assert proc.stderr is not None
        with proc.stderr, open(self.log, "ab") as log:
            for raw in proc.stderr:
                log.write(raw)
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                self.events.append(event)
                if event.get("event") == "server_started":
                    self.port = int(event["port"])
                if event.get("event") == "server_ready":
                    ready.set()
        ready.set()

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e.get("event") == name), None)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stub(self) -> tuple[grpc.Channel, ps_pb2_grpc.ParameterServerStub]:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        return channel, ps_pb2_grpc.ParameterServerStub(channel)


def _push(stub: ps_pb2_grpc.ParameterServerStub, table: str, keys: np.ndarray, dim: int) -> None:
    grads = np.ones((keys.size, dim), np.float32)
    entry = ps_pb2.TableGradients(
        table=table, keys=keys.astype("<u8").tobytes(), grads=grads.tobytes()
    )
    stub.Push(ps_pb2.PushRequest(tables=[entry]), timeout=10)


def _lookup(stub: ps_pb2_grpc.ParameterServerStub, table: str, keys: np.ndarray) -> np.ndarray:
    request = ps_pb2.LookupRequest(
        tables=[ps_pb2.TableKeys(table=table, keys=keys.astype("<u8").tobytes())]
    )
    reply = stub.Lookup(request, timeout=30).tables[0]
    return np.frombuffer(reply.values, dtype="<f4").reshape(keys.size, reply.dim)


def _pushers(server: Server, workers: int, stop: threading.Event, acked: list) -> list:
    def run(worker: int) -> None:
        channel, stub = server.stub()
        rng = np.random.default_rng(worker + int(time.time() * 1e3) % 10_000)
        with channel:
            for _ in range(1_000_000):
                if stop.is_set():
                    return
                try:
                    _push(stub, "user", rng.integers(0, 5000, 128, dtype=np.uint64), 16)
                    keys = rng.integers(0, 1 << 40, 64, dtype=np.uint64)
                    _push(stub, "item", keys, 8)
                except grpc.RpcError:
                    return
                acked.append(keys)

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in range(workers)]
    for thread in threads:
        thread.start()
    return threads


def kill_campaign(base: Path, iterations: int, seed: int) -> dict[str, Any]:
    """SIGKILL at random moments under pushes and 50 ms snapshots."""
    config = base / "config.json"
    snaps = base / "kill"
    server = Server(config, snaps, base / "kill.log")
    chooser = random.Random(seed)
    rows: list[dict[str, Any]] = []
    ready_seconds = server.start()
    expected = None
    for iteration in range(iterations):
        served_ok = True
        if expected is not None:
            channel, stub = server.stub()
            with channel:
                for name, section in expected.tables.items():
                    if section.num_rows:
                        sample = np.random.default_rng(iteration).choice(
                            section.num_rows, min(section.num_rows, 4096), replace=False
                        )
                        values = _lookup(stub, name, section.keys[sample])
                        served_ok &= bool(np.array_equal(values, section.rows["values"][sample]))
        stop = threading.Event()
        threads = _pushers(server, 2, stop, [])
        time.sleep(chooser.uniform(0.05, 0.6))
        server.kill()
        stop.set()
        for thread in threads:
            thread.join(10)
        store = SnapshotStore(snaps)
        mid_write = bool(store.work_dirs())
        finished = [s.seq for s in store.snapshots()]
        result = store.restore()
        chain = [s.seq for s in result.chain]
        intact = not result.skipped and chain[-1:] == finished[-1:]
        expected = merge_chain(result.chain) if result.chain else None
        ready_seconds = server.start()
        restored = server.event("snapshot_restored") or {}
        rows.append(
            {
                "iteration": iteration,
                "killed_mid_write": mid_write,
                "newest_intact": intact,
                "previous_restart_served_snapshot_exactly": served_ok,
                "restored_rows": int(restored.get("rows", 0)),
                "restore_seconds": float(restored.get("seconds", 0.0)),
                "start_to_ready_seconds": round(ready_seconds, 3),
                "epoch_kept": bool(restored.get("epoch_kept", False)),
            }
        )
    server.kill()
    return {
        "iterations": iterations,
        "killed_mid_write": sum(r["killed_mid_write"] for r in rows),
        "newest_intact": sum(r["newest_intact"] for r in rows),
        "served_exactly": sum(r["previous_restart_served_snapshot_exactly"] for r in rows),
        "epochs_kept": sum(r["epoch_kept"] for r in rows),
        "restore_seconds_max": max((r["restore_seconds"] for r in rows), default=0.0),
        "start_to_ready_seconds_median": float(
            np.median([r["start_to_ready_seconds"] for r in rows]) if rows else 0.0
        ),
        "restored_rows_max": max((r["restored_rows"] for r in rows), default=0),
        "runs": rows,
    }


def sigterm_campaign(base: Path, rounds: int) -> dict[str, Any]:
    """SIGTERM under four pushing clients; the final snapshot must hold every ack."""
    out = []
    for round_index in range(rounds):
        snaps = base / f"term-{round_index}"
        server = Server(base / "config.json", snaps, base / f"term-{round_index}.log")
        server.start()
        channel, stub = server.stub()
        with channel:
            epoch = stub.DescribeTables(ps_pb2.DescribeTablesRequest(), timeout=10).epoch
        acked: list[np.ndarray] = []
        stop = threading.Event()
        threads = _pushers(server, 4, stop, acked)
        time.sleep(0.5 + 0.25 * round_index)
        acked_at_signal = len(acked)
        code = server.terminate()
        stop.set()
        for thread in threads:
            thread.join(10)
        merged = merge_chain(SnapshotStore(snaps).restore().chain)
        item = merged.tables["item"]
        held = set(item.keys.tolist())
        missing = sum(1 for keys in acked for k in keys.tolist() if k not in held)
        final = server.event("snapshot_written") or {}
        server.start()
        channel, stub = server.stub()
        with channel:
            kept = stub.DescribeTables(ps_pb2.DescribeTablesRequest(), timeout=10).epoch == epoch
        server.kill()
        out.append(
            {
                "exit_code": code,
                "acked_pushes": len(acked),
                "acked_at_signal": acked_at_signal,
                "acked_keys_missing_from_snapshot": missing,
                "final_snapshot_seconds": float(final.get("seconds", 0.0)),
                "final_snapshot_bytes": int(final.get("bytes", 0)),
                "epoch_kept_after_restart": kept,
            }
        )
    return {"rounds": out}


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


_DAMAGES = {
    "flip one byte of an array": lambda s: _flip(_largest(s)),
    "truncate an array by 1 byte": lambda s: _largest(s).write_bytes(_largest(s).read_bytes()[:-1]),
    "delete an array file": lambda s: _largest(s).unlink(),
    "delete the manifest": lambda s: (s / MANIFEST_NAME).unlink(),
    "change one digit in the manifest": lambda s: _edit_manifest(s),
}


def _largest(snap: Path) -> Path:
    return max(snap.glob("*.npy"), key=lambda p: p.stat().st_size)


def _edit_manifest(snap: Path) -> None:
    text = (snap / MANIFEST_NAME).read_text()
    at = text.index('"complete_version": ') + len('"complete_version": ')
    digit = text[at]
    (snap / MANIFEST_NAME).write_text(text[:at] + str((int(digit) + 1) % 10) + text[at + 1 :])


def damage_campaign(base: Path) -> dict[str, Any]:
    """Damage one snapshot of a real server's chain F, I, I, F, I, I and restore."""
    source = base / "damage-source"
    server = Server(base / "config-slow.json", source, base / "damage.log")
    server.start()
    channel, stub = server.stub()
    rng = np.random.default_rng(1)
    with channel:
        for step in range(6):
            _push(stub, "item", rng.integers(0, 1 << 40, 256, dtype=np.uint64), 8)
            stub.Snapshot(ps_pb2.SnapshotRequest(full=step in (0, 3)), timeout=60)
    server.kill()
    seqs = [s.seq for s in SnapshotStore(source).snapshots()]
    targets = {
        "newest incremental": seqs[-1],
        "middle incremental": seqs[-2],
        "newest full": seqs[3],
    }
    cases = []
    for damage, apply in _DAMAGES.items():
        for target, seq in targets.items():
            work = base / "damaged"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(source, work)
            store = SnapshotStore(work)
            apply(next(s.path for s in store.snapshots() if s.seq == seq))
            result = store.restore()
            inspect = subprocess.run(
                [sys.executable, "-m", "monolith_ps.cli", "snapshot", "inspect", str(work)],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=_REPO,
            )
            cases.append(
                {
                    "damage": damage,
                    "target": f"{target} (seq {seq})",
                    "detected": seq in [s.seq for s in result.skipped],
                    "restored_chain": [s.seq for s in result.chain],
                    "skipped": [s.seq for s in result.skipped],
                    "reason": next((s.reason for s in result.skipped if s.seq == seq), ""),
                    "inspect_exit_code": inspect.returncode,
                }
            )
    work = base / "damaged"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source, work)
    half = work / f"snap-{seqs[-1] + 1:08d}-incr.partial"
    half.mkdir()
    (half / "t0000.rows.keys.npy.tmp").write_bytes(b"\x93NUMPY")
    result = SnapshotStore(work).restore()
    cases.append(
        {
            "damage": "half-written snapshot directory",
            "target": half.name,
            "detected": result.orphans == [half],
            "restored_chain": [s.seq for s in result.chain],
            "skipped": [s.seq for s in result.skipped],
            "reason": "unfinished write (no final name); ignored, removed by retention",
            "inspect_exit_code": 0,
        }
    )
    return {"chain": seqs, "cases": cases}


def _markdown(report: dict[str, Any]) -> str:
    kill = report["kill"]
    lines = [
        "### kill -9 during snapshots",
        "",
        "| kills | mid-write | newest snapshot intact | restart served it exactly | "
        "epochs kept | max restore s | median start-to-ready s | max rows |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {kill['iterations']} | {kill['killed_mid_write']} | {kill['newest_intact']} | "
        f"{kill['served_exactly']} | {kill['epochs_kept']} | {kill['restore_seconds_max']:.3f} | "
        f"{kill['start_to_ready_seconds_median']:.2f} | {kill['restored_rows_max']} |",
        "",
        "### SIGTERM under concurrent pushes",
        "",
        "| round | exit | acked pushes | acked keys missing | final snapshot s | bytes | "
        "epoch kept |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for i, r in enumerate(report["sigterm"]["rounds"]):
        lines.append(
            f"| {i} | {r['exit_code']} | {r['acked_pushes']} | "
            f"{r['acked_keys_missing_from_snapshot']} | {r['final_snapshot_seconds']:.3f} | "
            f"{r['final_snapshot_bytes']} | {r['epoch_kept_after_restart']} |"
        )
    lines += [
        "",
        f"### Damage (chain {report['damage']['chain']})",
        "",
        "| damage | target | detected | restored chain | skipped | inspect exit |",
        "| --- | --- | --- | --- | --- | ---: |",
    ]
    for c in report["damage"]["cases"]:
        lines.append(
            f"| {c['damage']} | {c['target']} | {c['detected']} | {c['restored_chain']} | "
            f"{c['skipped']} | {c['inspect_exit_code']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50, help="kill -9 rounds")
    parser.add_argument("--sigterm-rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--json", help="write the full report here")
    args = parser.parse_args()
    os.environ.setdefault("NUMBA_CACHE_DIR", str(_REPO / ".numba_cache"))
    logging.basicConfig(level=logging.ERROR)  # the skips are the subject: reported below
    base = Path(tempfile.mkdtemp(prefix="snapshot-chaos-"))
    try:
        (base / "config.json").write_text(json.dumps(_CONFIG))
        slow = {**_CONFIG, "snapshot": {"full_interval": "1h", "incremental_interval": "1h"}}
        (base / "config-slow.json").write_text(json.dumps(slow))
        started = time.monotonic()
        report = {
            "kill": kill_campaign(base, args.iterations, args.seed),
            "sigterm": sigterm_campaign(base, args.sigterm_rounds),
            "damage": damage_campaign(base),
        }
        report["seconds"] = round(time.monotonic() - started, 1)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(_markdown(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
        Path(args.json).with_suffix(".md").write_text(_markdown(report) + "\n")
    kill = report["kill"]
    failed = (
        kill["newest_intact"] != kill["iterations"]
        or kill["served_exactly"] != kill["iterations"]
        or any(r["acked_keys_missing_from_snapshot"] for r in report["sigterm"]["rounds"])
        or not all(c["detected"] for c in report["damage"]["cases"])
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
