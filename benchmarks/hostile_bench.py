"""Valid traffic beside hostile delta streams: what a well-behaved client gets.

One training and one serving ``mps server`` subprocess with the default stream limits.
Valid traffic (Lookup and Push on training, Lookup and GetSyncState on serving, health on
both, from a few client threads, each call with a deadline) runs twice for the same time:
alone (the reference), then beside ``--idle-exports`` ExportDelta streams that are never
read, ``--trickles`` full-resync ApplyDelta streams that send one small chunk every
``--trickle-every`` seconds (distinct source shards), and ``--endless`` full resyncs that
send chunks as fast as they can and never finish. Reported: valid-call p50/p99 and errors
in both runs, the p99 ratio, what the servers did with the hostile streams (refused, cut)
and the peak RSS of each server (from /proc).

    python benchmarks/hostile_bench.py --json results/hostile_bench.json

Target: no valid call fails, p99 within 2x of the clean run.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from report import write_result

from monolith_ps import wire
from monolith_ps.processes import rss_bytes
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc

_TABLE = "emb"
_DEADLINE = 2.0  # every valid call's deadline: past it, the call counts as failed


class BenchServer:
    """An ``mps server`` subprocess; ``address`` and ``metrics_port`` from its start log."""

    def __init__(self, role: str, config: Path, log: Path) -> None:
        cmd = [sys.executable, "-m", "monolith_ps.cli", "server", "--role", role,
               "--shard-index", "0", "--num-shards", "1", "--config", str(config),
               "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
               "--log-format", "json", "--auth", "off"]  # fmt: skip
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._out)
        self.address = ""
        self.metrics_port = 0
        self.peak_rss = 0
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not self.address:
            for line in log.read_text().splitlines():
                event = json.loads(line) if line.startswith("{") else {}
                if event.get("event") == "server_started":
                    self.address = f"127.0.0.1:{event['port']}"
                    self.metrics_port = int(event["metrics_port"])
            if self.proc.poll() is not None:
                raise RuntimeError(f"{role} server exited: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        if not self.address:
            raise TimeoutError(f"{role} server did not start")

    def sample_rss(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):  # an exiting process has no RSS
            self.peak_rss = max(self.peak_rss, rss_bytes(self.proc.pid))

    def metric(self, prefix: str) -> float:
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(prefix))  # fmt: skip

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


def until_started(call, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
    """``call`` retried while the server answers UNAVAILABLE (it is still starting)."""
    for _ in range(3000):
        try:
            return call(*args, **kwargs)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            time.sleep(0.1)
    raise TimeoutError("the server did not start")


def _fill_and_sync(training: BenchServer, serving: BenchServer, rows: int, dim: int) -> None:
    """``rows`` rows on training (lookups insert), then one full export applied to serving,
    so both answer and serving's Lookups find rows."""
    options = [("grpc.max_receive_message_length", 64 << 20)]
    with (
        grpc.insecure_channel(training.address, options) as t,
        grpc.insecure_channel(serving.address, options) as s,
    ):
        train, serve = ps_pb2_grpc.ParameterServerStub(t), ps_pb2_grpc.ParameterServerStub(s)
        for start in range(1, rows + 1, 20_000):
            keys = np.arange(start, min(rows + 1, start + 20_000), dtype=np.uint64)
            table = ps_pb2.TableKeys(table=_TABLE, keys=wire.encode_keys(keys))
            until_started(train.Lookup, ps_pb2.LookupRequest(tables=[table]), timeout=120)
        request = ps_pb2.ExportDeltaRequest(table=_TABLE, max_chunk_rows=20_000)
        chunks = list(train.ExportDelta(request, timeout=120))
        until_started(lambda: serve.ApplyDelta(iter(chunks), timeout=120))
        assert [c.table for c in serve.GetSyncState(ps_pb2.GetSyncStateRequest()).cursors]


def _valid_traffic(
    training: BenchServer, serving: BenchServer, seconds: float, threads: int, rows: int, dim: int
) -> tuple[np.ndarray, list[str]]:
    """Latencies (s) of every valid call, and the failures, over ``seconds``."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with (
            grpc.insecure_channel(training.address) as t,
            grpc.insecure_channel(serving.address) as s,
        ):
            train, serve = ps_pb2_grpc.ParameterServerStub(t), ps_pb2_grpc.ParameterServerStub(s)
            health = [health_pb2_grpc.HealthStub(t), health_pb2_grpc.HealthStub(s)]
            for _ in range(1_000_000):
                if time.monotonic() >= end:
                    return
                keys = wire.encode_keys(np.sort(rng.choice(rows, 256, replace=False) + 1)
                                        .astype(np.uint64))  # fmt: skip
                grads = wire.encode_values(np.full((256, dim), 0.01, np.float32))[0]
                lookup = ps_pb2.LookupRequest(tables=[ps_pb2.TableKeys(table=_TABLE, keys=keys)])
                push = ps_pb2.PushRequest(
                    tables=[ps_pb2.TableGradients(table=_TABLE, keys=keys, grads=grads)]
                )
                calls = [
                    ("train.Lookup", train.Lookup, lookup),
                    ("train.Push", train.Push, push),
                    ("serve.Lookup", serve.Lookup, lookup),
                    ("serve.GetSyncState", serve.GetSyncState, ps_pb2.GetSyncStateRequest()),
                    ("train.health", health[0].Check, health_pb2.HealthCheckRequest()),
                    ("serve.health", health[1].Check, health_pb2.HealthCheckRequest()),
                ]
                for name, rpc, request in calls:
                    start = time.perf_counter()
                    try:
                        rpc(request, timeout=_DEADLINE)
                        with lock:
                            latencies.append(time.perf_counter() - start)
                    except grpc.RpcError as exc:
                        with lock:
                            errors.append(f"{name}: {exc.code().name}")

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    while any(w.is_alive() for w in workers):
        training.sample_rss()
        serving.sample_rss()
        time.sleep(0.1)
    return np.array(latencies), errors


@contextlib.contextmanager
def _hostile(
    training: BenchServer, serving: BenchServer, idle: int, trickles: int, every: float,
    endless: int, dim: int,
) -> Iterator[dict[str, int]]:  # fmt: skip
    """Open the hostile streams; yield counts of how they ended (filled in on exit)."""
    stop = threading.Event()
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    channels = [grpc.insecure_channel(training.address), grpc.insecure_channel(serving.address)]
    train, serve = (ps_pb2_grpc.ParameterServerStub(c) for c in channels)

    def note(kind: str, code: str) -> None:
        with lock:
            outcomes[f"{kind} {code}"] = outcomes.get(f"{kind} {code}", 0) + 1

    def chunk(source: int, start: int, rows: int) -> ps_pb2.DeltaChunk:
        keys = np.arange(start, start + rows, dtype=np.uint64)
        return ps_pb2.DeltaChunk(
            table=_TABLE, source_shard=source, source_num_shards=64, epoch=99,
            full_resync=True, dim=dim, keys=wire.encode_keys(keys),
            versions=wire.encode_versions(keys),
            values=wire.encode_values(np.ones((rows, dim), np.float32))[0],
        )  # fmt: skip

    def trickle(source: int) -> Iterator[ps_pb2.DeltaChunk]:
        for i in range(100_000):
            yield chunk(source, 1 + i * 10, 10)
            if stop.wait(every):
                return

    def flood(source: int) -> Iterator[ps_pb2.DeltaChunk]:
        for i in range(100_000):
            if stop.is_set():
                return
            yield chunk(source, 1 + i * 4096, 4096)

    calls: list[tuple[str, object]] = []
    for _ in range(idle):
        request = ps_pb2.ExportDeltaRequest(table=_TABLE, max_chunk_rows=1)
        calls.append(("idle export", train.ExportDelta(request, timeout=600)))
    for i in range(trickles):
        calls.append(("trickling resync", serve.ApplyDelta.future(trickle(i), timeout=600)))
    for i in range(endless):
        calls.append(("endless resync", serve.ApplyDelta.future(flood(32 + i), timeout=600)))
    try:
        yield outcomes
    finally:
        stop.set()
        for kind, call in calls:
            code = "ok"
            try:
                if kind == "idle export":
                    for _ in call:  # type: ignore[attr-defined]
                        pass
                else:
                    call.result(timeout=60)  # type: ignore[attr-defined]
            except grpc.RpcError as exc:
                code = exc.code().name
            note(kind, code)
        for channel in channels:
            channel.close()


def _summary(latencies: np.ndarray, errors: list[str], seconds: float) -> dict[str, Any]:
    ms = latencies * 1e3
    return {
        "calls": int(latencies.size + len(errors)),
        "calls_per_s": round((latencies.size + len(errors)) / seconds, 1),
        "failed": len(errors),
        "failures": dict(collections.Counter(errors).most_common()),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if ms.size else 0.0,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if ms.size else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the table")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each run")
    parser.add_argument("--threads", type=int, default=2, help="valid-traffic client threads")
    parser.add_argument("--idle-exports", type=int, default=20)
    parser.add_argument("--trickles", type=int, default=12)
    parser.add_argument("--trickle-every", type=float, default=2.0)
    parser.add_argument("--endless", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the results here (and a .md beside)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "config.json"
        config.write_text(json.dumps({"tables": [{"name": _TABLE, "dim": args.dim}]}))
        training = BenchServer("training", config, work / "training.log")
        serving = BenchServer("serving", config, work / "serving.log")
        try:
            _fill_and_sync(training, serving, args.rows, args.dim)
            clean = _summary(*_valid_traffic(training, serving, args.seconds, args.threads,
                                             args.rows, args.dim), args.seconds)  # fmt: skip
            clean_rss = {"training": training.peak_rss, "serving": serving.peak_rss}
            with _hostile(training, serving, args.idle_exports, args.trickles,
                          args.trickle_every, args.endless, args.dim) as ended:  # fmt: skip
                time.sleep(1.0)  # the streams are open before valid traffic starts
                latencies, errors = _valid_traffic(
                    training, serving, args.seconds, args.threads, args.rows, args.dim
                )
            hostile = _summary(latencies, errors, args.seconds)
            servers = {
                "refused": training.metric("monolith_ps_streams_refused_total")
                + serving.metric("monolith_ps_streams_refused_total"),
                "cut_idle": training.metric(
                    'monolith_ps_streams_cut_total{method="ExportDelta",reason="idle"}'
                )  # fmt: skip
                + serving.metric(
                    'monolith_ps_streams_cut_total{method="ApplyDelta",reason="idle"}'
                ),
                "refused_budget": serving.metric(
                    'monolith_ps_rpc_requests_total{code="RESOURCE_EXHAUSTED",method="ApplyDelta"}'
                ),
            }
        finally:
            training.stop()
            serving.stop()
    result = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "clean": {**clean, "peak_rss_mb": {k: v >> 20 for k, v in clean_rss.items()}},
        "hostile": {
            **hostile,
            "peak_rss_mb": {"training": training.peak_rss >> 20, "serving": serving.peak_rss >> 20},
            "hostile_streams_ended": dict(sorted(ended.items())),
            "server_counters": servers,
        },
        "p99_ratio": round(hostile["p99_ms"] / clean["p99_ms"], 2) if clean["p99_ms"] else None,
        "target_met": hostile["failed"] == 0
        and clean["p99_ms"] > 0
        and hostile["p99_ms"] <= 2 * clean["p99_ms"],
        "note": "2-core machine shared with other work; ratios are within one process run",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        write_result(args.json, result, _markdown(result))


def _markdown(r: dict) -> str:
    c, h = r["clean"], r["hostile"]
    lines = [
        "| run | valid calls | calls/s | failed | p50 ms | p99 ms | peak RSS training MB | "
        "peak RSS serving MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in (("valid traffic alone", c), ("with hostile streams", h)):
        lines.append(
            f"| {name} | {run['calls']} | {run['calls_per_s']} | {run['failed']} | "
            f"{run['p50_ms']} | {run['p99_ms']} | "
            f"{run['peak_rss_mb']['training']} | {run['peak_rss_mb']['serving']} |"
        )
    cfg = r["config"]
    lines += [
        "",
        f"p99 ratio (hostile / alone): {r['p99_ratio']}; target met: {r['target_met']}. "
        f"Hostile: {cfg['idle_exports']} unread exports, {cfg['trickles']} trickling "
        f"resyncs (a chunk every {cfg['trickle_every']} s), {cfg['endless']} endless resync(s); "
        f"how they ended: {h['hostile_streams_ended']}; server counters: {h['server_counters']}; "
        f"failed valid calls: {h['failures'] or 'none'}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
