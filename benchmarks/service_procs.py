"""Processes and timing shared by the service benchmarks: a training PS subprocess, a bare
gRPC servicer subprocess (the transport ceiling), and per-call latency helpers.

    python benchmarks/service_procs.py --bare-server --dim 64 --batch 4096   # prints its port
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

from monolith_ps.allocator import reuse_large_buffers
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[1]

TABLE = "emb"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


# ---------------------------------------------------------------- bare transport ceiling


class _BareServicer(ps_pb2_grpc.ParameterServerServicer):
    """Answers Lookup with ``n * dim * 4`` bytes and does nothing else.

    The bytes come from ``ndarray.tobytes()`` per call, as a real server's would: handing
    gRPC one long-lived bytes object measured slower here, not faster.
    """

    def __init__(self, dim: int, batch: int) -> None:
        self._dim = dim
        self._rows = np.zeros((batch, dim), dtype=np.float32)

    def Lookup(self, request, context):  # noqa: ANN001, ANN201
        out = ps_pb2.LookupResponse()
        for entry in request.tables:
            n = len(entry.keys) // 8
            rows = self._rows if n == self._rows.shape[0] else np.zeros((n, self._dim), np.float32)
            out.tables.append(
                ps_pb2.TableValues(
                    table=entry.table, dim=self._dim, dtype=ps_pb2.DTYPE_FLOAT32,
                    values=rows.tobytes(),
                )
            )  # fmt: skip
        return out


def _run_bare_server(dim: int, batch: int) -> None:
    """The ``--bare-server`` mode: serve until SIGTERM, print the bound port first. Its
    malloc thresholds are fixed as ``mps server`` fixes its own, so the ceiling is the
    transport's, not the allocator's."""
    reuse_large_buffers()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max(8, 4 * (os.cpu_count() or 1))),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    ps_pb2_grpc.add_ParameterServerServicer_to_server(_BareServicer(dim, batch), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(0)


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(call, batches: list, seconds: float, min_calls: int) -> np.ndarray:
    """Per-call latencies (s) of ``call(batch)`` over the batches, for ``seconds``."""
    latencies = []
    deadline = time.perf_counter() + seconds
    i = 0
    while i < min_calls or (time.perf_counter() < deadline and i < 100 * len(batches)):
        batch = batches[i % len(batches)]
        start = time.perf_counter()
        call(batch)
        latencies.append(time.perf_counter() - start)
        i += 1
    return np.array(latencies)


def rate(latencies: np.ndarray, batch: int) -> float:
    return batch * latencies.size / latencies.sum()


class Process:
    def __init__(self, cmd: list[str], log: Path) -> None:
        self._log = open(log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=self._log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def start_ps(workdir: Path, dim: int) -> tuple[Process, str]:
    config = {
        "tables": [
            {"name": TABLE, "dim": dim, "optimizer": "adagrad", "optimizer_args": {"lr": 0.05},
             "initializer": "normal"}
        ],
        "server": {"max_message_bytes": MAX_MESSAGE_BYTES},
    }  # fmt: skip
    (workdir / "config.json").write_text(json.dumps(config))
    log = workdir / "server.log"
    cmd = [sys.executable, "-m", "monolith_ps.cli", "server", "--role", "training",
           "--shard-index", "0", "--num-shards", "1", "--config", str(workdir / "config.json"),
           "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
           "--log-format", "json", "--auth", "off"]  # fmt: skip
    process = Process(cmd, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "server_ready":
                return process, f"127.0.0.1:{event['port']}"
        if process.proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    raise TimeoutError("server did not become ready")


def start_bare(workdir: Path, dim: int, batch: int) -> tuple[Process, str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--bare-server", "--dim", str(dim),
           "--batch", str(batch)]  # fmt: skip
    process = Process(cmd, workdir / "bare.log")
    assert process.proc.stdout is not None
    port = int(process.proc.stdout.readline())
    return process, f"127.0.0.1:{port}"


def summary(rounds: list[np.ndarray], batch: int) -> dict:
    """Median rate over rounds and latency percentiles over every call."""
    every = np.concatenate(rounds)
    return {
        "rows_per_s": float(np.median([rate(r, batch) for r in rounds])),
        "round_rows_per_s": [round(rate(r, batch)) for r in rounds],
        "calls": int(every.size),
        "p50_ms": float(np.percentile(every, 50) * 1e3),
        "p99_ms": float(np.percentile(every, 99) * 1e3),
    }


def paired(ours: dict, reference: dict) -> dict:
    """Each round's rate against the reference's in the same round (measured right after
    it): the median and the range over rounds, for two ``summary`` results."""
    ratios = [
        a / b for a, b in zip(ours["round_rows_per_s"], reference["round_rows_per_s"], strict=True)
    ]
    return {"median": float(np.median(ratios)), "min": min(ratios), "max": max(ratios)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the bare gRPC servicer of the benchmarks")
    parser.add_argument("--bare-server", action="store_true", required=True)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4096)
    args = parser.parse_args()
    _run_bare_server(args.dim, args.batch)
