"""Service benchmark: training PS subprocesses, the client in this process and in fresh ones.

Dim 64, batches of 4,096 random keys of a 1 M-row table. Each reference runs in the
same process run:

- Lookup rows/s, primed: this process's client against a server whose table it filled with
  65,536-key lookups (16 MiB answers, which leave both processes' allocators tuned for
  large buffers), vs a bare gRPC servicer subprocess that answers every Lookup with the
  same number of bytes and does nothing else (the transport ceiling), called through a raw
  stub with a pre-built request: target ratio >= 0.6. Both bare clients, primed and fresh,
  only parse the answer (one copy of the rows, as our client makes into its output);
  reading ``values`` would copy the rows again (~0.2 ms a call).
- Lookup rows/s, fresh (what a trainer gets): a new client in a new process against a
  new server, both having only ever exchanged 4,096-key batches (the table filled by
  4,096-key lookups), vs the primed figure (>= 0.9) and vs the bare servicer called the
  same way from a fresh process (>= 0.85; that process fixes its malloc thresholds as a
  default ``PSClient`` does). Beside it, a fresh ``PSClient(tune_allocator=False)``, and
  the ceiling of that last ratio: the bare call's p50 plus the p50 of the table's own
  ``find_or_insert`` in this process, the figure ours would reach if everything but the
  table cost what the bare servicer's path costs.
- A trainer-like loop in a fresh process (lookup, some numpy, push; 1 key in 16 new each
  step): lookup rows/s, lookup p50 and step time; beside it the same loop with
  ``OPENBLAS_NUM_THREADS=1`` (numpy's BLAS threads spin after each product, on the cores
  the client and server need).
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
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.service_procs import (  # noqa: E402
    MAX_MESSAGE_BYTES,
    TABLE,
    paired,
    start_bare,
    start_ps,
    summary,
    timed,
)
from benchmarks.service_redis import redis_or_reason  # noqa: E402
from monolith_ps.processes import rss_bytes  # noqa: E402
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc  # noqa: E402
from ps_client import PSClient  # noqa: E402

_POPULATE_BATCH = 65536
_FRESH = str(Path(__file__).resolve().with_name("service_fresh.py"))
# numpy's OpenBLAS threads spin after each product and take the cores gRPC needs
_ONE_BLAS_THREAD = {"OPENBLAS_NUM_THREADS": "1"}
_PAIRED_SHOWN = ("lookup_vs_bare_grpc", "fresh_vs_primed", "fresh_vs_fresh_bare_grpc")


# ---------------------------------------------------------------- measurements
#
# The machine may be shared, so the three systems run side by side and are measured in
# interleaved rounds (ours, bare gRPC, Redis, ours, ...); each rate is the median of its
# rounds, each latency percentile is over all of its calls. Beside each ratio of medians,
# the paired ratio: the median (and range) over rounds of each round's ours against the
# reference measured right after it, which the load drifting between rounds moves less.


class _Ours:
    def __init__(self, args, workdir: Path, key_batches, grad_batches) -> None:
        (workdir / "primed").mkdir()
        self.process, address = start_ps(workdir / "primed", args.dim)
        self.client = PSClient([address], timeout=120, attempt_timeout=120)
        self.key_batches = key_batches
        self.pairs = list(zip(key_batches, grad_batches, strict=True))
        self.client.lookup(TABLE, np.arange(1, 2, dtype=np.uint64))
        rss_before = rss_bytes(self.process.proc.pid)
        for start in range(0, args.rows, _POPULATE_BATCH):
            stop = min(args.rows, start + _POPULATE_BATCH)
            self.client.lookup(TABLE, np.arange(start, stop, dtype=np.uint64))
        self.rss_bytes_per_row = (rss_bytes(self.process.proc.pid) - rss_before) / args.rows
        info = self.client.describe()[0].tables[TABLE]
        self.rows = int(info.num_rows)
        self.table_memory_bytes_per_row = info.memory_bytes / info.num_rows

    def lookup(self, seconds: float, min_calls: int) -> np.ndarray:
        return timed(lambda k: self.client.lookup(TABLE, k), self.key_batches, seconds, min_calls)

    def push(self, seconds: float, min_calls: int) -> np.ndarray:
        return timed(lambda kg: self.client.push(TABLE, *kg), self.pairs, seconds, min_calls)

    def close(self) -> None:
        self.client.close()
        self.process.stop()


class _Bare:
    def __init__(self, args, workdir: Path, key_batches) -> None:
        (workdir / "bare").mkdir()
        self.process, address = start_bare(workdir / "bare", args.dim, args.batch)
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        self.channel = grpc.insecure_channel(address, options=options)
        self.stub = ps_pb2_grpc.ParameterServerStub(self.channel)
        self.requests = [
            ps_pb2.LookupRequest(tables=[ps_pb2.TableKeys(table=TABLE, keys=k.tobytes())])
            for k in key_batches
        ]
        self.expected = args.batch * args.dim * 4
        # The same traffic as the PS got while it was filled: large answers leave the
        # allocator of either process in the same state (glibc raises its mmap and trim
        # thresholds after freeing big blocks, which makes later 1 MiB answers cheaper).
        for start in range(0, args.rows, _POPULATE_BATCH):
            keys = np.arange(start, min(args.rows, start + _POPULATE_BATCH), dtype=np.uint64)
            request = ps_pb2.LookupRequest(
                tables=[ps_pb2.TableKeys(table=TABLE, keys=keys.tobytes())]
            )
            self.stub.Lookup(request, timeout=120, wait_for_ready=True)

    def _call(self, request) -> None:
        reply = self.stub.Lookup(request, timeout=60, wait_for_ready=True)
        assert reply.tables[0].ByteSize() > self.expected  # no copy of the rows

    def lookup(self, seconds: float, min_calls: int) -> np.ndarray:
        return timed(self._call, self.requests, seconds, min_calls)

    def close(self) -> None:
        self.channel.close()
        self.process.stop()


class _Fresh:
    """A fresh server and a fresh bare servicer, each round met by new client processes."""

    def __init__(self, args, workdir: Path) -> None:
        self.args = args
        (workdir / "fresh").mkdir()
        (workdir / "fresh-bare").mkdir()
        self.ps, self.ps_address = start_ps(workdir / "fresh", args.dim)
        self.bare, self.bare_address = start_bare(workdir / "fresh-bare", args.dim, args.batch)
        self.round = 0

    def run(
        self, mode: str, seconds: float, *extra: str, env: dict[str, str] | None = None
    ) -> dict[str, np.ndarray]:
        address = self.bare_address if mode == "bare" else self.ps_address
        a = self.args
        cmd = [sys.executable, _FRESH, mode, address, "--rows", str(a.rows), "--dim",
               str(a.dim), "--batch", str(a.batch), "--seconds", str(seconds), "--seed",
               str(self.round), *extra]  # fmt: skip
        self.round += 1
        done = subprocess.run(
            cmd, cwd=REPO_ROOT, capture_output=True, timeout=600, check=True,
            env=None if env is None else os.environ | env,
        )  # fmt: skip
        return {k: np.array(v) for k, v in json.loads(done.stdout.splitlines()[-1]).items()}

    def close(self) -> None:
        self.ps.stop()
        self.bare.stop()


class _LocalTable:
    """The server's own table in this process: the part of a Lookup no transport can hide."""

    def __init__(self, args, key_batches) -> None:
        from monolith_ps.table_config import TableConfig
        from ps_server.table import EmbeddingTable

        self.table = EmbeddingTable(
            TableConfig(name=TABLE, dim=args.dim, optimizer="adagrad",
                        optimizer_args={"lr": 0.05}, initializer="normal")
        )  # fmt: skip
        for start in range(0, args.rows, _POPULATE_BATCH):
            stop = min(args.rows, start + _POPULATE_BATCH)
            self.table.find_or_insert(np.arange(start, stop, dtype=np.uint64))
        # read-only views over bytes, as the server decodes them
        self.key_batches = [np.frombuffer(k.tobytes(), dtype="<u8") for k in key_batches]

    def lookup(self, seconds: float, min_calls: int) -> np.ndarray:
        return timed(self.table.find_or_insert, self.key_batches, seconds, min_calls)

    def close(self) -> None:
        self.table = None


def _measure(args, workdir: Path, key_batches, grad_batches) -> dict:
    ours = bare = redis_ref = fresh = None
    try:
        fresh = _Fresh(args, workdir)
        fresh.run("lookup", 0.5)  # fills the fresh server with batch-sized lookups
        ours = _Ours(args, workdir, key_batches, grad_batches)
        bare = _Bare(args, workdir, key_batches)
        redis_ref = redis_or_reason(args, workdir, key_batches, grad_batches)
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
            series.setdefault("fresh_lookup", []).append(
                fresh.run("lookup", per_round)["latencies"]
            )
            series.setdefault("fresh_bare_lookup", []).append(
                fresh.run("bare", per_round)["latencies"]
            )
            series.setdefault("fresh_untuned_lookup", []).append(
                fresh.run("lookup", per_round, "--untuned")["latencies"]
            )
            trainer = fresh.run("trainer", per_round)
            series.setdefault("trainer_lookup", []).append(trainer["latencies"])
            series.setdefault("trainer_step", []).append(trainer["steps"])
            trainer = fresh.run("trainer", per_round, env=_ONE_BLAS_THREAD)
            series.setdefault("trainer_1blas_lookup", []).append(trainer["latencies"])
            series.setdefault("trainer_1blas_step", []).append(trainer["steps"])
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
                "lookup": summary(series["ps_lookup"], args.batch),
                "push": summary(series["ps_push"], args.batch),
            },
            "fresh": {
                "lookup": summary(series["fresh_lookup"], args.batch),
                "bare_lookup": summary(series["fresh_bare_lookup"], args.batch),
                "untuned_lookup": summary(series["fresh_untuned_lookup"], args.batch),
                "trainer_lookup": summary(series["trainer_lookup"], args.batch),
                "trainer_step": summary(series["trainer_step"], args.batch),
                "trainer_1blas_lookup": summary(series["trainer_1blas_lookup"], args.batch),
                "trainer_1blas_step": summary(series["trainer_1blas_step"], args.batch),
            },
            "bare_grpc": {"lookup": summary(series["bare_lookup"], args.batch)},
            "table_in_process": {"find_or_insert": summary(series["table_lookup"], args.batch)},
        }
        if has_redis:
            results["redis"] = {
                "version": redis_ref.version,
                "used_memory_bytes_per_row": redis_ref.used_memory_bytes_per_row,
                "lookup": summary(series["redis_lookup"], args.batch),
                "push": summary(series["redis_push"], args.batch),
            }
        else:
            results["redis"] = {"skipped": redis_ref}
        return results
    finally:
        for system in (ours, bare, redis_ref, fresh):
            if system is not None and not isinstance(system, str):
                system.close()


# ---------------------------------------------------------------- report


def _report(results: dict, args) -> str:
    ps, bare, rd, ratios = results["ps"], results["bare_grpc"], results["redis"], results["ratios"]
    fresh = results["fresh"]
    rows = [
        ("Lookup rows/s, primed", ps["lookup"]["rows_per_s"], "bare gRPC servicer (same bytes)",
         bare["lookup"]["rows_per_s"], ratios["lookup_vs_bare_grpc"], ">= 0.6"),
        ("Lookup rows/s, fresh client and server", fresh["lookup"]["rows_per_s"],
         "Lookup rows/s, primed", ps["lookup"]["rows_per_s"], ratios["fresh_vs_primed"],
         ">= 0.9"),
        ("Lookup rows/s, fresh client and server", fresh["lookup"]["rows_per_s"],
         "bare gRPC servicer, fresh client", fresh["bare_lookup"]["rows_per_s"],
         ratios["fresh_vs_fresh_bare_grpc"], ">= 0.85"),
        ("Lookup rows/s, ceiling: bare transport + the table's own find_or_insert (p50s)",
         results["fresh_ceiling"]["rows_per_s"], "bare gRPC servicer, fresh client",
         fresh["bare_lookup"]["rows_per_s"], ratios["fresh_ceiling_vs_fresh_bare_grpc"],
         "reported"),
        ("Lookup rows/s, fresh, PSClient(tune_allocator=False)",
         fresh["untuned_lookup"]["rows_per_s"], "Lookup rows/s, primed",
         ps["lookup"]["rows_per_s"], ratios["fresh_untuned_vs_primed"], "reported"),
        ("Lookup rows/s, trainer loop (fresh)", fresh["trainer_lookup"]["rows_per_s"],
         "bare gRPC servicer, fresh client", fresh["bare_lookup"]["rows_per_s"],
         ratios["trainer_vs_fresh_bare_grpc"], "reported"),
        ("Lookup rows/s, trainer loop (fresh), OPENBLAS_NUM_THREADS=1",
         fresh["trainer_1blas_lookup"]["rows_per_s"], "bare gRPC servicer, fresh client",
         fresh["bare_lookup"]["rows_per_s"], ratios["trainer_1blas_vs_fresh_bare_grpc"],
         "reported"),
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
        "Paired ratios (median and range over rounds of each round's figure against the "
        "reference measured right after it): "
        + "; ".join(
            f"{name} {p['median']:.2f} ({p['min']:.2f}-{p['max']:.2f})"
            for name, p in results["paired_ratios"].items()
            if name in _PAIRED_SHOWN
        )
        + ".",
        *lines_redis,
        f"Lookup latency ({args.batch:,} keys): p50 {ps['lookup']['p50_ms']:.2f} ms, "
        f"p99 {ps['lookup']['p99_ms']:.2f} ms (bare gRPC: p50 {bare['lookup']['p50_ms']:.2f} ms, "
        f"p99 {bare['lookup']['p99_ms']:.2f} ms). Push: p50 {ps['push']['p50_ms']:.2f} ms, "
        f"p99 {ps['push']['p99_ms']:.2f} ms.",
        f"Fresh client and server: Lookup p50 {fresh['lookup']['p50_ms']:.2f} ms, p99 "
        f"{fresh['lookup']['p99_ms']:.2f} ms. Trainer loop (lookup, numpy, push; 1 key in 16 "
        f"new): lookup p50 {fresh['trainer_lookup']['p50_ms']:.2f} ms, step p50 "
        f"{fresh['trainer_step']['p50_ms']:.2f} ms; with OPENBLAS_NUM_THREADS=1 (the numpy "
        f"product's threads no longer spin on the cores gRPC needs): lookup p50 "
        f"{fresh['trainer_1blas_lookup']['p50_ms']:.2f} ms, step p50 "
        f"{fresh['trainer_1blas_step']['p50_ms']:.2f} ms.",
        f"Where a Lookup's time goes (p50 per call): the table's find_or_insert alone, in "
        f"process, {results['table_in_process']['find_or_insert']['p50_ms']:.2f} ms (random rows "
        f"of a {ps['rows']:,}-row arena); the bare transport {bare['lookup']['p50_ms']:.2f} ms; "
        f"monolith-ps end to end {ps['lookup']['p50_ms']:.2f} ms. Fresh: the bare transport "
        f"{fresh['bare_lookup']['p50_ms']:.2f} ms, monolith-ps {fresh['lookup']['p50_ms']:.2f} ms "
        f"(the bare servicer does no table work: the gap is mostly the table's).",
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
    args = parser.parse_args(argv)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO_ROOT / ".numba_cache"))
    rng = np.random.default_rng(0)
    key_batches = [rng.integers(0, args.rows, size=args.batch).astype(np.uint64) for _ in range(64)]
    grad_batches = [
        (rng.standard_normal((args.batch, args.dim)) * 0.01).astype(np.float32) for _ in range(64)
    ]
    with tempfile.TemporaryDirectory(prefix="service-bench-") as tmp:
        results = _measure(args, Path(tmp), key_batches, grad_batches)
    ps, bare, rd = results["ps"], results["bare_grpc"], results["redis"]
    fresh = results["fresh"]
    pairs = {
        "lookup_vs_bare_grpc": (ps["lookup"], bare["lookup"]),
        "fresh_vs_primed": (fresh["lookup"], ps["lookup"]),
        "fresh_vs_fresh_bare_grpc": (fresh["lookup"], fresh["bare_lookup"]),
        "fresh_untuned_vs_primed": (fresh["untuned_lookup"], ps["lookup"]),
        "fresh_vs_primed_bare_grpc": (fresh["lookup"], bare["lookup"]),
        "trainer_vs_fresh_bare_grpc": (fresh["trainer_lookup"], fresh["bare_lookup"]),
        "trainer_1blas_vs_fresh_bare_grpc": (fresh["trainer_1blas_lookup"], fresh["bare_lookup"]),
    }
    ratios = {name: a["rows_per_s"] / b["rows_per_s"] for name, (a, b) in pairs.items()}
    # what the fresh ratio could reach if every part of ours but the table cost what bare does
    bare_ms = fresh["bare_lookup"]["p50_ms"]
    table_ms = results["table_in_process"]["find_or_insert"]["p50_ms"]
    results["fresh_ceiling"] = {"rows_per_s": args.batch / ((bare_ms + table_ms) / 1e3)}
    ratios["fresh_ceiling_vs_fresh_bare_grpc"] = bare_ms / (bare_ms + table_ms)
    results["paired_ratios"] = {name: paired(a, b) for name, (a, b) in pairs.items()}
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
