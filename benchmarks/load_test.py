"""Load test: many concurrent clients on a local cluster while it syncs and snapshots.

Ours: a local cluster (``monolith_ps.local.LocalCluster``) of 2 training shards with
snapshots (incremental every second, full every 5 s), 1 serving shard and the sync
agent (sparse interval 1 s). ``--clients`` clients (``--threads`` threads in this process
plus ``--processes`` processes of ``--threads-per-process`` threads; each thread its own
``PSClient``) loop for ``--seconds``: a two-table lookup on training, a two-table push on
training, or a two-table lookup on serving: one of each first, so every kind is measured
however slow the machine, then picked at random (60/30/10 %). Every loop is bounded by
the deadline and by ``--max-ops`` per client.

Reported: throughput, p50/p99/p999 latency per operation, errors (must be 0), rows
applied by pushes (checked against the training tables' version counters), the snapshots
written and the rows synced to serving, and each server's resident memory
(``VmRSS`` from ``/proc/PID/status``) over time, with its growth over the second half.

Reference, in the same run: the same clients for ``--reference-seconds`` against canned
gRPC servers (subprocesses answering Lookup and Push with zero rows, no table work):
the transport's ceiling on this machine. Ratio = ours / reference.

    python benchmarks/load_test.py --json results/load_test.json
    python benchmarks/load_test.py --seconds 5 --threads 4 --processes 1 --reference-seconds 0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np
from load_reference import TABLES, reference_cluster
from load_rss import RssSampler

from monolith_ps.local import LocalCluster
from ps_client import PSClient

_OPS = ("lookup", "push", "serving_lookup")
_OP_WEIGHTS = np.array([0.6, 0.3, 0.1])
_READY_TIMEOUT = 180.0


def cluster_config(snapshot_incremental: float, snapshot_full: float, sparse: float) -> dict:
    """The tables and the short snapshot and sync intervals of the load test."""
    return {
        "tables": [
            {"name": "user", "dim": TABLES["user"], "optimizer": "adagrad",
             "optimizer_args": {"lr": 0.05}, "initializer": "normal"},
            {"name": "item", "dim": TABLES["item"], "optimizer": "sgd",
             "optimizer_args": {"lr": 0.1}, "initializer": "uniform"},
        ],
        "snapshot": {"full_interval": f"{snapshot_full}s",
                     "incremental_interval": f"{snapshot_incremental}s", "keep": 2},
        "sync": {"sparse_interval": f"{sparse}s"},
    }  # fmt: skip


# ---------------------------------------------------------------- clients


class ClientLoop:
    """One client: its own PSClients, a seeded stream of operations, its latencies."""

    def __init__(
        self, training: list[str], serving: list[str], seed: int, batch: int, key_space: int
    ) -> None:
        self.training = PSClient(training, role="training", max_workers=2)
        self.serving = PSClient(serving, role="serving", max_workers=1) if serving else None
        self.rng = np.random.default_rng(seed)
        self.batch = batch
        self.key_space = key_space
        self.latencies: list[float] = []
        self.ops: list[int] = []
        self.errors = 0
        self.error_samples: list[str] = []
        self.rows_updated = 0
        self.pushes = 0

    def warm_up(self) -> None:
        """Learn the topology before the clock starts."""
        self.training.describe()
        if self.serving is not None:
            self.serving.describe()

    def run(self, start_at: float, stop_at: float, max_ops: int) -> None:
        weights = _OP_WEIGHTS if self.serving is not None else np.array([2 / 3, 1 / 3, 0.0])
        delay = start_at - time.time()
        if delay > 0:
            time.sleep(delay)
        for i in range(max_ops):
            if time.time() >= stop_at:
                break
            first_of_kind = i < len(_OPS) and weights[i] > 0
            op = i if first_of_kind else int(self.rng.choice(3, p=weights))
            keys = {
                name: self.rng.integers(1, self.key_space, self.batch, dtype=np.uint64)
                for name in TABLES
            }
            started = time.perf_counter()
            try:
                if op == 0:
                    self.training.lookup_many(keys)
                elif op == 1:
                    grads = {
                        name: (k, self.rng.standard_normal((k.size, TABLES[name]), np.float32))
                        for name, k in keys.items()
                    }
                    result = self.training.push_many(grads)
                    self.rows_updated += result.rows_updated
                    self.pushes += 1
                else:
                    assert self.serving is not None
                    self.serving.lookup_many(keys)
            except Exception as exc:  # every failure counts; the first few are kept
                self.errors += 1
                if len(self.error_samples) < 5:
                    self.error_samples.append(f"{_OPS[op]}: {type(exc).__name__}: {exc}")
                continue
            self.latencies.append(time.perf_counter() - started)
            self.ops.append(op)

    def close(self) -> None:
        self.training.close()
        if self.serving is not None:
            self.serving.close()


def run_clients(
    loops: list[ClientLoop], start_at: float, stop_at: float, max_ops: int
) -> list[ClientLoop]:
    with futures.ThreadPoolExecutor(max_workers=max(1, len(loops))) as pool:
        for f in [pool.submit(c.run, start_at, stop_at, max_ops) for c in loops]:
            f.result()
    return loops


def summarize_loops(loops: list[ClientLoop]) -> dict[str, Any]:
    return {
        "latencies": np.array([x for c in loops for x in c.latencies], dtype=np.float64),
        "ops": np.array([x for c in loops for x in c.ops], dtype=np.uint8),
        "errors": sum(c.errors for c in loops),
        "error_samples": [s for c in loops for s in c.error_samples][:10],
        "rows_updated": sum(c.rows_updated for c in loops),
        "pushes": sum(c.pushes for c in loops),
    }


def worker_main(args: argparse.Namespace) -> int:
    """A client process: ``ready`` on stdout, start time on stdin, results to ``--out``."""
    training = args.training.split(",")
    serving = args.serving.split(",") if args.serving else []
    loops = [
        ClientLoop(training, serving, args.seed * 1000 + t, args.batch, args.key_space)
        for t in range(args.threads_per_process)
    ]
    for c in loops:
        c.warm_up()
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    run_clients(loops, start_at, start_at + args.seconds, args.max_ops)
    summary = summarize_loops(loops)
    out = Path(args.out)
    np.save(out.with_suffix(".lat.npy"), summary.pop("latencies"), allow_pickle=False)
    np.save(out.with_suffix(".ops.npy"), summary.pop("ops"), allow_pickle=False)
    out.with_suffix(".json").write_text(json.dumps(summary))
    for c in loops:
        c.close()
    return 0


class WorkerProcess:
    """A client process of this script (``--worker``)."""

    def __init__(self, index: int, args: argparse.Namespace, training: list[str],
                 serving: list[str], workdir: Path) -> None:  # fmt: skip
        self.out = workdir / f"worker-{index}"
        cmd = [
            sys.executable, __file__, "--worker",
            "--training", ",".join(training), "--serving", ",".join(serving),
            "--threads-per-process", str(args.threads_per_process),
            "--seconds", str(args.seconds), "--max-ops", str(args.max_ops),
            "--batch", str(args.batch), "--key-space", str(args.key_space),
            "--seed", str(index + 1), "--out", str(self.out),
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def wait_ready(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(self.proc.stdout.readline()))
        reader.start()
        reader.join(timeout)
        if not ready or ready[0].strip() != "ready":
            raise RuntimeError(f"client process {self.proc.pid} did not become ready")

    def start(self, start_at: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{start_at!r}\n")
        self.proc.stdin.close()

    def result(self, timeout: float) -> dict[str, Any]:
        if self.proc.wait(timeout=timeout) != 0:
            raise RuntimeError(f"client process exited with {self.proc.returncode}")
        summary = json.loads(self.out.with_suffix(".json").read_text())
        summary["latencies"] = np.load(self.out.with_suffix(".lat.npy"), allow_pickle=False)
        summary["ops"] = np.load(self.out.with_suffix(".ops.npy"), allow_pickle=False)
        return summary

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_load(
    args: argparse.Namespace, training: list[str], serving: list[str], seconds: float,
    workdir: Path, during: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """Every client against these addresses for ``seconds``; merged latencies and counts.

    ``during(start_at, stop_at)`` runs in this process while the clients run.
    """
    run_args = argparse.Namespace(**{**vars(args), "seconds": seconds})
    workers = [
        WorkerProcess(i, run_args, training, serving, workdir) for i in range(args.processes)
    ]
    try:
        loops = [
            ClientLoop(training, serving, 10_000 + t, args.batch, args.key_space)
            for t in range(args.threads)
        ]
        for c in loops:
            c.warm_up()
        for w in workers:
            w.wait_ready(_READY_TIMEOUT)
        start_at = time.time() + 1.0
        stop_at = start_at + seconds
        for w in workers:
            w.start(start_at)
        sampler = None
        if during is not None:
            sampler = threading.Thread(target=during, args=(start_at, stop_at), daemon=True)
            sampler.start()
        parts = [summarize_loops(run_clients(loops, start_at, stop_at, args.max_ops))]
        for c in loops:
            c.close()
        parts += [w.result(timeout=seconds + 120) for w in workers]
        if sampler is not None:
            sampler.join(timeout=10)
    finally:
        for w in workers:
            w.kill()
    merged = {
        "seconds": seconds,
        "clients": args.threads + args.processes * args.threads_per_process,
        "latencies": np.concatenate([p["latencies"] for p in parts]),
        "ops": np.concatenate([p["ops"] for p in parts]),
        "errors": sum(p["errors"] for p in parts),
        "error_samples": [s for p in parts for s in p["error_samples"]][:10],
        "rows_updated": sum(p["rows_updated"] for p in parts),
        "pushes": sum(p["pushes"] for p in parts),
    }
    return merged


def latency_stats(merged: dict[str, Any]) -> dict[str, Any]:
    """Throughput and p50/p99/p999 per operation and over all of them."""
    seconds = merged["seconds"]
    out: dict[str, Any] = {}
    groups = {"all": np.ones(merged["ops"].shape, bool)}
    groups.update({name: merged["ops"] == i for i, name in enumerate(_OPS)})
    for name, mask in groups.items():
        ms = merged["latencies"][mask] * 1000.0
        if ms.size == 0:
            continue
        out[name] = {
            "count": int(ms.size),
            "ops_per_second": ms.size / seconds,
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "p999_ms": float(np.percentile(ms, 99.9)),
            "max_ms": float(ms.max()),
        }
    return out


# ---------------------------------------------------------------- memory


def training_versions(addresses: list[str]) -> int:
    """Sum of every table's version counter over the training shards."""
    with PSClient(addresses, role="training") as client:
        return sum(t.version for shard in client.describe() for t in shard.tables.values())


def serving_rows(addresses: list[str]) -> int:
    with PSClient(addresses, role="serving") as client:
        return sum(t.num_rows for shard in client.describe() for t in shard.tables.values())


def count_snapshots(snapshot_dir: Path) -> int:
    """Finished snapshot directories left (retention removes old chains)."""
    return sum(
        1 for p in snapshot_dir.glob("*/snap-*") if p.is_dir() and not p.name.endswith(".partial")
    )


def snapshots_written(log_dir: Path) -> int:
    """``snapshot_written`` log events of the training servers."""
    total = 0
    for log in log_dir.glob("training-*.log"):
        with open(log, "rb") as f:
            total += sum(1 for line in f if b'"snapshot_written"' in line)
    return total


def markdown(result: dict[str, Any]) -> str:
    ours, ref = result["latency"], result.get("reference_latency")
    lines = [
        f"Load: {result['clients']} clients ({result['topology']}), {result['seconds']:g} s, "
        f"batch {result['batch']} keys x 2 tables",
        "",
        "| operation | ops | ops/s | p50 ms | p99 ms | p99.9 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in ours.items():
        lines.append(
            f"| {name} | {s['count']:,} | {s['ops_per_second']:,.0f} | {s['p50_ms']:.1f} "
            f"| {s['p99_ms']:.1f} | {s['p999_ms']:.1f} | {s['max_ms']:.1f} |"
        )
    lines += [
        "",
        f"errors: {result['errors']}; pushes: {result['pushes']:,} "
        f"({result['rows_updated']:,} rows applied, training versions grew by "
        f"{result['training_version_growth']:,}); snapshots written: "
        f"{result['snapshots_written']}; rows on serving at the end: {result['serving_rows']:,}",
    ]
    if ref:
        lines += [
            "",
            "| throughput | ours | reference (canned servers) | ours / reference |",
            "| --- | ---: | ---: | ---: |",
            f"| ops/s | {ours['all']['ops_per_second']:,.0f} | {ref['all']['ops_per_second']:,.0f} "
            f"| {result['ratio']:.2f} |",
            f"| p99 ms | {ours['all']['p99_ms']:.1f} | {ref['all']['p99_ms']:.1f} | "
            f"{ours['all']['p99_ms'] / ref['all']['p99_ms']:.2f} |",
        ]
    lines += [
        "",
        "| process | RSS start MB | half-way MB | end MB | peak MB | growth, 2nd half |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in result["rss"].items():
        lines.append(
            f"| {name} | {r['start_mb']:.0f} | {r['half_mb']:.0f} | {r['end_mb']:.0f} "
            f"| {r['peak_mb']:.0f} | {r['second_half_growth_pct']:+.1f} % |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration (60)")
    parser.add_argument("--threads", type=int, default=16, help="client threads here (16)")
    parser.add_argument("--processes", type=int, default=4, help="client processes (4)")
    parser.add_argument("--threads-per-process", type=int, default=4, help="(4)")
    parser.add_argument("--batch", type=int, default=128, help="keys per table per call (128)")
    parser.add_argument("--key-space", type=int, default=50_000, help="keys per table (50000)")
    parser.add_argument("--max-ops", type=int, default=200_000, help="bound per client")
    parser.add_argument("--reference-seconds", type=float, default=15.0,
                        help="reference run length; 0 skips it (15)")  # fmt: skip
    parser.add_argument("--snapshot-incremental", type=float, default=1.0)
    parser.add_argument("--snapshot-full", type=float, default=5.0)
    parser.add_argument("--sparse-interval", type=float, default=1.0)
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    parser.add_argument("--workdir", help="keep logs and snapshots here (default: temporary)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--training", help=argparse.SUPPRESS)
    parser.add_argument("--serving", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.seconds > 3600:
        parser.error("--seconds must be in (0, 3600]")
    if args.threads < 0 or args.processes < 0 or args.threads + args.processes == 0:
        parser.error("need at least one client")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)

    with contextlib.ExitStack() as stack:
        workdir = Path(args.workdir) if args.workdir else Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="load-test-"))
        )  # fmt: skip
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "tables.json"
        config.write_text(json.dumps(cluster_config(
            args.snapshot_incremental, args.snapshot_full, args.sparse_interval)))  # fmt: skip
        snapshot_dir = workdir / "snapshots"
        with LocalCluster(
            config,
            training_shards=2,
            serving_shards=1,
            sparse_interval=f"{args.sparse_interval}s",
            snapshot_dir=snapshot_dir,
            log_dir=workdir / "logs",
        ) as cluster:
            training = cluster.training_addresses
            serving = [replicas[0] for replicas in cluster.serving_addresses]
            pids = {p.name: p.pid for p in cluster.processes() if p.pid is not None}
            sampler = RssSampler(pids)
            versions_before = training_versions(training)
            merged = run_load(args, training, serving, args.seconds, workdir, during=sampler)
            versions_after = training_versions(training)
            time.sleep(2 * args.sparse_interval + 1)  # one more sync round
            rows_on_serving = serving_rows(serving)
            dead = [p.name for p in cluster.processes() if not p.running()]
            written = snapshots_written(workdir / "logs")
            kept = count_snapshots(snapshot_dir)
        reference = None
        if args.reference_seconds > 0:
            with reference_cluster(2) as ref:
                reference = run_load(
                    args, ref["training"], ref["serving"], args.reference_seconds, workdir
                )

    latency = latency_stats(merged)
    result: dict[str, Any] = {
        "benchmark": "load",
        "topology": "2 training shards with snapshots, 1 serving shard, sync agent",
        "clients": merged["clients"],
        "threads": args.threads,
        "processes": args.processes,
        "threads_per_process": args.threads_per_process,
        "seconds": args.seconds,
        "batch": args.batch,
        "key_space": args.key_space,
        "snapshot_intervals_s": {"incremental": args.snapshot_incremental,
                                 "full": args.snapshot_full},
        "sparse_interval_s": args.sparse_interval,
        "latency": latency,
        "errors": merged["errors"],
        "error_samples": merged["error_samples"],
        "pushes": merged["pushes"],
        "rows_updated": merged["rows_updated"],
        "training_version_growth": versions_after - versions_before,
        "snapshots_written": written,
        "snapshots_kept": kept,
        "serving_rows": rows_on_serving,
        "processes_died": dead,
        "rss": sampler.report(args.seconds),
    }  # fmt: skip
    if reference is not None:
        result["reference_latency"] = latency_stats(reference)
        result["reference_errors"] = reference["errors"]
        result["ratio"] = (
            latency["all"]["ops_per_second"] / result["reference_latency"]["all"]["ops_per_second"]
        )
    print(markdown(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if merged["errors"] == 0 and not dead else 1


if __name__ == "__main__":
    sys.exit(main())
