"""Service benchmark: one training PS subprocess, the client in this process.

Dim 64, batches of 4,096 random keys of a 1 M-row table. Each reference runs in the
same process run:

- Lookup rows/s vs a bare gRPC servicer subprocess that answers every Lookup with the
  same number of bytes and does nothing else (the transport ceiling), called through a
  raw stub with a pre-built request: target ratio >= 0.6.
- Lookup rows/s vs Redis MGET of the same rows stored as 256-byte strings: >= 5.
- Push (Adagrad) rows/s vs Redis GET of values and accumulators + numpy Adagrad + SET:
  >= 8.
- Server memory per row (RSS growth over the rows) vs Redis ``used_memory`` per row
  (value and accumulator keys: the same 512 payload bytes a row as ours).
- p50/p99 latency of a 4,096-key Lookup.

Redis needs ``redis-server`` on PATH (``make bench-deps``) and the ``redis`` package;
without them the Redis rows say so and the rest is reported.

    python benchmarks/service_bench.py --json results/service_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from monolith_ps.v1 import ps_pb2, ps_pb2_grpc  # noqa: E402
from ps_client import PSClient  # noqa: E402

_TABLE = "emb"
_POPULATE_BATCH = 65536
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


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
    """The ``--bare-server`` mode: serve until SIGTERM, print the bound port first."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max(8, 4 * (os.cpu_count() or 1))),
        options=[
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
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


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(call, batches: list, seconds: float, min_calls: int) -> np.ndarray:
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


def _rate(latencies: np.ndarray, batch: int) -> float:
    return batch * latencies.size / latencies.sum()


class _Process:
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


def _start_ps(workdir: Path, dim: int) -> tuple[_Process, str]:
    config = {
        "tables": [
            {"name": _TABLE, "dim": dim, "optimizer": "adagrad", "optimizer_args": {"lr": 0.05},
             "initializer": "normal"}
        ],
        "server": {"max_message_bytes": _MAX_MESSAGE_BYTES},
    }  # fmt: skip
    (workdir / "config.json").write_text(json.dumps(config))
    log = workdir / "server.log"
    cmd = [sys.executable, "-m", "monolith_ps.cli", "server", "--role", "training",
           "--shard-index", "0", "--num-shards", "1", "--config", str(workdir / "config.json"),
           "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
           "--log-format", "json"]  # fmt: skip
    process = _Process(cmd, log)
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


def _start_bare(workdir: Path, dim: int, batch: int) -> tuple[_Process, str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--bare-server", "--dim", str(dim),
           "--batch", str(batch)]  # fmt: skip
    process = _Process(cmd, workdir / "bare.log")
    assert process.proc.stdout is not None
    port = int(process.proc.stdout.readline())
    return process, f"127.0.0.1:{port}"


# ---------------------------------------------------------------- measurements
#
# The machine may be shared, so the three systems run side by side and are measured in
# interleaved rounds (ours, bare gRPC, Redis, ours, ...); each rate is the median of its
# rounds, each latency percentile is over all of its calls.


class _Ours:
    def __init__(self, args, workdir: Path, key_batches, grad_batches) -> None:
        self.process, address = _start_ps(workdir, args.dim)
        self.client = PSClient([address], timeout=120, attempt_timeout=120)
        self.key_batches = key_batches
        self.pairs = list(zip(key_batches, grad_batches, strict=True))
        self.client.lookup(_TABLE, np.arange(1, 2, dtype=np.uint64))
        rss_before = _rss_bytes(self.process.proc.pid)
        for start in range(0, args.rows, _POPULATE_BATCH):
            stop = min(args.rows, start + _POPULATE_BATCH)
            self.client.lookup(_TABLE, np.arange(start, stop, dtype=np.uint64))
        self.rss_bytes_per_row = (_rss_bytes(self.process.proc.pid) - rss_before) / args.rows
        info = self.client.describe()[0].tables[_TABLE]
        self.rows = int(info.num_rows)
        self.table_memory_bytes_per_row = info.memory_bytes / info.num_rows

    def lookup(self, seconds: float, min_calls: int) -> np.ndarray:
        return _timed(lambda k: self.client.lookup(_TABLE, k), self.key_batches, seconds, min_calls)

    def push(self, seconds: float, min_calls: int) -> np.ndarray:
        return _timed(lambda kg: self.client.push(_TABLE, *kg), self.pairs, seconds, min_calls)

    def close(self) -> None:
        self.client.close()
        self.process.stop()


class _Bare:
    def __init__(self, args, workdir: Path, key_batches) -> None:
        self.process, address = _start_bare(workdir, args.dim, args.batch)
        options = [("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES)]
        self.channel = grpc.insecure_channel(address, options=options)
        self.stub = ps_pb2_grpc.ParameterServerStub(self.channel)
        self.requests = [
            ps_pb2.LookupRequest(tables=[ps_pb2.TableKeys(table=_TABLE, keys=k.tobytes())])
            for k in key_batches
        ]
        self.expected = args.batch * args.dim * 4
        # The same traffic as the PS got while it was filled: large answers leave the
        # allocator of either process in the same state (glibc raises its mmap and trim
        # thresholds after freeing big blocks, which makes later 1 MiB answers cheaper).
        for start in range(0, args.rows, _POPULATE_BATCH):
            keys = np.arange(start, min(args.rows, start + _POPULATE_BATCH), dtype=np.uint64)
            request = ps_pb2.LookupRequest(
                tables=[ps_pb2.TableKeys(table=_TABLE, keys=keys.tobytes())]
            )
            self.stub.Lookup(request, timeout=120, wait_for_ready=True)

    def _call(self, request) -> None:
        reply = self.stub.Lookup(request, timeout=60, wait_for_ready=True)
        assert len(reply.tables[0].values) == self.expected

    def lookup(self, seconds: float, min_calls: int) -> np.ndarray:
        return _timed(self._call, self.requests, seconds, min_calls)

    def close(self) -> None:
        self.channel.close()
        self.process.stop()


class _Redis:
    """Rows as 256-byte strings (and Adagrad accumulators under a second key)."""

    def __init__(self, args, workdir: Path, key_batches, grad_batches, binary: str) -> None:
        import redis

        port = _free_port()
        cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--daemonize", "no", "--dir", str(workdir)]  # fmt: skip
        self.process = _Process(cmd, workdir / "redis.log")
        self.r = r = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                r.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        used_before = r.info("memory")["used_memory"]
        rng = np.random.default_rng(1)
        for start in range(0, args.rows, _POPULATE_BATCH):
            keys = np.arange(start, min(args.rows, start + _POPULATE_BATCH), dtype=np.uint64)
            values = rng.standard_normal((keys.size, args.dim)).astype(np.float32) * 0.05
            acc = np.full((keys.size, args.dim), 0.1, dtype=np.float32)
            names = _redis_names(keys)
            pipe = r.pipeline(transaction=False)
            pipe.mset(dict(zip(names, [v.tobytes() for v in values], strict=True)))
            pipe.mset(dict(zip([b"a" + n for n in names], [a.tobytes() for a in acc],
                               strict=True)))  # fmt: skip
            pipe.execute()
        self.used_memory_bytes_per_row = (r.info("memory")["used_memory"] - used_before) / args.rows
        self.version = r.info("server")["redis_version"]
        # Key names are built before timing: Redis gets its best case.
        self.name_batches = [_redis_names(k) for k in key_batches]
        self.acc_batches = [[b"a" + n for n in names] for names in self.name_batches]
        self.grad_batches = grad_batches
        self.dim = args.dim

    def _lookup(self, names: list[bytes]) -> np.ndarray:
        pipe = self.r.pipeline(transaction=False)
        pipe.mget(names)
        (values,) = pipe.execute()
        return np.frombuffer(b"".join(values), dtype=np.float32).reshape(len(names), self.dim)

    def _push(self, i: int) -> None:
        names, acc_names, grads = self.name_batches[i], self.acc_batches[i], self.grad_batches[i]
        raw = self.r.mget(names + acc_names)
        n = len(names)
        values = np.frombuffer(b"".join(raw[:n]), dtype=np.float32).reshape(n, self.dim)
        acc = np.frombuffer(b"".join(raw[n:]), dtype=np.float32).reshape(n, self.dim)
        acc = acc + grads * grads
        values = values - 0.05 * grads / (np.sqrt(acc) + 1e-10)
        pipe = self.r.pipeline(transaction=False)
        pipe.mset(dict(zip(names, [v.tobytes() for v in values], strict=True)))
        pipe.mset(dict(zip(acc_names, [a.tobytes() for a in acc], strict=True)))
        pipe.execute()

    def lookup(self, seconds: float, min_calls: int) -> np.ndarray:
        return _timed(self._lookup, self.name_batches, seconds, min_calls)

    def push(self, seconds: float, min_calls: int) -> np.ndarray:
        return _timed(self._push, list(range(len(self.name_batches))), seconds, min_calls)

    def close(self) -> None:
        self.r.close()
        self.process.stop()


class _LocalTable:
    """The server's own table in this process: the part of a Lookup no transport can hide."""

    def __init__(self, args, key_batches) -> None:
        from ps_server.table import EmbeddingTable, TableConfig

        self.table = EmbeddingTable(
            TableConfig(name=_TABLE, dim=args.dim, optimizer="adagrad",
                        optimizer_args={"lr": 0.05}, initializer="normal")
        )  # fmt: skip
        for start in range(0, args.rows, _POPULATE_BATCH):
            stop = min(args.rows, start + _POPULATE_BATCH)
            self.table.find_or_insert(np.arange(start, stop, dtype=np.uint64))
        # read-only views over bytes, as the server decodes them
        self.key_batches = [np.frombuffer(k.tobytes(), dtype="<u8") for k in key_batches]

    def lookup(self, seconds: float, min_calls: int) -> np.ndarray:
        return _timed(self.table.find_or_insert, self.key_batches, seconds, min_calls)

    def close(self) -> None:
        self.table = None


def _redis_or_reason(args, workdir, key_batches, grad_batches) -> _Redis | str:
    if args.no_redis:
        return "skipped (--no-redis)"
    binary = shutil.which("redis-server")
    if binary is None:
        return "redis-server not found on PATH (run `make bench-deps`)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis Python package is not installed"
    return _Redis(args, workdir, key_batches, grad_batches, binary)


def _summary(rounds: list[np.ndarray], batch: int) -> dict:
    every = np.concatenate(rounds)
    return {
        "rows_per_s": float(np.median([_rate(r, batch) for r in rounds])),
        "round_rows_per_s": [round(_rate(r, batch)) for r in rounds],
        "calls": int(every.size),
        "p50_ms": float(np.percentile(every, 50) * 1e3),
        "p99_ms": float(np.percentile(every, 99) * 1e3),
    }


def _measure(args, workdir: Path, key_batches, grad_batches) -> dict:
    ours = bare = redis_ref = None
    try:
        ours = _Ours(args, workdir, key_batches, grad_batches)
        bare = _Bare(args, workdir, key_batches)
        redis_ref = _redis_or_reason(args, workdir, key_batches, grad_batches)
        has_redis = not isinstance(redis_ref, str)
        local = _LocalTable(args, key_batches)
        # warm-up, untimed
        ours.lookup(0.5, 10), ours.push(0.5, 10), bare.lookup(0.5, 10)
        if has_redis:
            redis_ref.lookup(0.5, 5), redis_ref.push(0.5, 5)
        series: dict[str, list[np.ndarray]] = {}
        per_round = args.seconds / args.rounds
        for _ in range(args.rounds):
            series.setdefault("ps_lookup", []).append(ours.lookup(per_round, 10))
            series.setdefault("bare_lookup", []).append(bare.lookup(per_round, 10))
            series.setdefault("table_lookup", []).append(local.lookup(per_round / 4, 10))
            series.setdefault("ps_push", []).append(ours.push(per_round, 10))
            if has_redis:
                series.setdefault("redis_lookup", []).append(redis_ref.lookup(per_round, 5))
                series.setdefault("redis_push", []).append(redis_ref.push(per_round, 5))
        results = {
            "ps": {
                "rows": ours.rows,
                "rss_bytes_per_row": ours.rss_bytes_per_row,
                "table_memory_bytes_per_row": ours.table_memory_bytes_per_row,
                "lookup": _summary(series["ps_lookup"], args.batch),
                "push": _summary(series["ps_push"], args.batch),
            },
            "bare_grpc": {"lookup": _summary(series["bare_lookup"], args.batch)},
            "table_in_process": {"find_or_insert": _summary(series["table_lookup"], args.batch)},
        }
        if has_redis:
            results["redis"] = {
                "version": redis_ref.version,
                "used_memory_bytes_per_row": redis_ref.used_memory_bytes_per_row,
                "lookup": _summary(series["redis_lookup"], args.batch),
                "push": _summary(series["redis_push"], args.batch),
            }
        else:
            results["redis"] = {"skipped": redis_ref}
        return results
    finally:
        for system in (ours, bare, redis_ref):
            if system is not None and not isinstance(system, str):
                system.close()


def _redis_names(keys: np.ndarray) -> list[bytes]:
    raw = keys.astype(">u8").tobytes()
    return [raw[i : i + 8] for i in range(0, len(raw), 8)]


# ---------------------------------------------------------------- report


def _report(results: dict, args) -> str:
    ps, bare, rd, ratios = results["ps"], results["bare_grpc"], results["redis"], results["ratios"]
    rows = [
        ("Lookup rows/s", ps["lookup"]["rows_per_s"], "bare gRPC servicer (same bytes)",
         bare["lookup"]["rows_per_s"], ratios["lookup_vs_bare_grpc"], ">= 0.6"),
    ]  # fmt: skip
    if "skipped" in rd:
        lines_redis = [f"Redis references not run: {rd['skipped']}."]
    else:
        lines_redis = []
        rows += [
            ("Lookup rows/s", ps["lookup"]["rows_per_s"], f"Redis {rd['version']} MGET",
             rd["lookup"]["rows_per_s"], ratios["lookup_vs_redis"], ">= 5"),
            ("Push (Adagrad) rows/s", ps["push"]["rows_per_s"],
             "Redis MGET + numpy Adagrad + MSET", rd["push"]["rows_per_s"],
             ratios["push_vs_redis"], ">= 8"),
            ("bytes per row", ps["rss_bytes_per_row"],
             "Redis used_memory per row (value + accumulator keys)",
             rd["used_memory_bytes_per_row"], ratios["memory_vs_redis"], "lower is better"),
        ]  # fmt: skip
    lines = [
        f"Service benchmark: dim {args.dim}, {args.batch:,}-key batches of a {ps['rows']:,}-row "
        f"table, {os.cpu_count()} cores, {args.rounds} interleaved rounds (median)",
        "",
        "| measure | monolith-ps | reference | reference value | ratio | target |",
        "| --- | ---: | --- | ---: | ---: | --- |",
    ]
    for measure, ours, ref, ref_value, ratio, target in rows:
        lines.append(
            f"| {measure} | {ours:,.0f} | {ref} | {ref_value:,.0f} | {ratio:.2f} | {target} |"
        )
    lines += [
        "",
        *lines_redis,
        f"Lookup latency ({args.batch:,} keys): p50 {ps['lookup']['p50_ms']:.2f} ms, "
        f"p99 {ps['lookup']['p99_ms']:.2f} ms (bare gRPC: p50 {bare['lookup']['p50_ms']:.2f} ms, "
        f"p99 {bare['lookup']['p99_ms']:.2f} ms). Push: p50 {ps['push']['p50_ms']:.2f} ms, "
        f"p99 {ps['push']['p99_ms']:.2f} ms.",
        f"Where a Lookup's time goes (p50 per call): the table's find_or_insert alone, in "
        f"process, {results['table_in_process']['find_or_insert']['p50_ms']:.2f} ms (random rows "
        f"of a {ps['rows']:,}-row arena); the bare transport {bare['lookup']['p50_ms']:.2f} ms; "
        f"monolith-ps end to end {ps['lookup']['p50_ms']:.2f} ms.",
        f"Server memory per row: {ps['rss_bytes_per_row']:.0f} bytes of RSS growth, "
        f"{ps['table_memory_bytes_per_row']:.0f} bytes by the table's memory_bytes(); payload "
        f"{8 + 2 * 4 * args.dim} bytes (key, values, Adagrad state).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=20.0, help="per measured series")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis references")
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_server:
        _run_bare_server(args.dim, args.batch)
        return 0
    os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO_ROOT / ".numba_cache"))
    rng = np.random.default_rng(0)
    key_batches = [rng.integers(0, args.rows, size=args.batch).astype(np.uint64) for _ in range(64)]
    grad_batches = [
        (rng.standard_normal((args.batch, args.dim)) * 0.01).astype(np.float32) for _ in range(64)
    ]
    with tempfile.TemporaryDirectory(prefix="service-bench-") as tmp:
        results = _measure(args, Path(tmp), key_batches, grad_batches)
    ps, bare, rd = results["ps"], results["bare_grpc"], results["redis"]
    ratios = {"lookup_vs_bare_grpc": ps["lookup"]["rows_per_s"] / bare["lookup"]["rows_per_s"]}
    if "skipped" not in rd:
        ratios["lookup_vs_redis"] = ps["lookup"]["rows_per_s"] / rd["lookup"]["rows_per_s"]
        ratios["push_vs_redis"] = ps["push"]["rows_per_s"] / rd["push"]["rows_per_s"]
        ratios["memory_vs_redis"] = ps["rss_bytes_per_row"] / rd["used_memory_bytes_per_row"]
    results = {"config": vars(args) | {"cores": os.cpu_count()}, **results, "ratios": ratios}
    report = _report(results, args)
    print(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results | {"markdown": report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
