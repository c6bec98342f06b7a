"""Scale simulation: a local cluster resharded 2 -> 4 -> 8 training shards under a trainer.

Every server is a subprocess on 127.0.0.1 (``LocalCluster``): N training shards writing
snapshots, ``--serving-shards`` serving shards (one replica each) and the sync agent
(sparse interval 1 s). Phase by phase:

1. start the cluster (the first phase empty, later ones restoring resharded snapshots)
   and time until serving holds every training row (a full resync from every training
   shard after a reshard: the agent's carrying rate for full rounds);
2. a trainer (``--threads`` threads, each its own ``PSClient``) loops lookup + Adagrad
   push of ``--batch`` keys for ``--seconds``; rows/s in total and per training shard,
   each shard's own counters (its share of the load), step latencies, DescribeTables
   latency, the agent's incremental sync rows/s under that load, memory per row and RSS;
3. SIGTERM every process (training writes its final snapshot) and run
   ``mps snapshot reshard`` to the next shard count (rows/s of the reshard).

The reference is the first phase, in the same run: every per-shard figure is also given
as a ratio to the 2-shard phase. All processes share this machine's cores, so totals do
not grow with the shard count here; per-process figures and the overheads that grow with
N (fan-out, streams, DescribeTables) are what this measures.

    python benchmarks/scale_sim.py --json results/scale_sim.json --markdown results/scale_sim.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from report import write_result

from monolith_ps.local import LocalCluster
from monolith_ps.processes import rss_bytes
from ps_client import PSClient

_TABLE = "emb"


def _config(dim: int) -> str:
    return (
        f"tables:\n  - {{name: {_TABLE}, dim: {dim}, optimizer: adagrad, "
        "optimizer_args: {lr: 0.05}, initializer: normal}\n"
        "snapshot: {full_interval: 1h, incremental_interval: 1h, keep: 1}\n"
        "sync: {sparse_interval: 1s, dense_interval: 1h}\n"
    )


def _metrics(url: str) -> dict[str, float]:
    """``name{labels}`` -> value of every sample of one process's /metrics."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def _sum(samples: dict[str, float], name: str, **labels: str) -> float:
    want = [f"{k}={v}" for k, v in labels.items()]
    return sum(
        v for k, v in samples.items() if k.split("{")[0] == name and all(w in k for w in want)
    )


def _rss_mb(pid: int | None) -> float:
    return 0.0 if pid is None else rss_bytes(pid) / 2**20


def _fill(addresses: list[str], rows: int, batch: int = 65536) -> float:
    with PSClient(addresses, role="training", timeout=120) as client:
        started = time.monotonic()
        for start in range(0, rows, batch):
            client.lookup(_TABLE, np.arange(start, min(start + batch, rows), dtype=np.uint64))
        return rows / (time.monotonic() - started)


def _wait_serving_full(cluster: LocalCluster, rows: int, timeout: float) -> float:
    started = time.monotonic()
    urls = cluster.metrics_urls
    while time.monotonic() - started < timeout:
        held = sum(
            _sum(_metrics(u), "monolith_ps_table_rows", table=_TABLE)
            for name, u in urls.items()
            if name.startswith("serving")
        )
        if held >= rows:
            return time.monotonic() - started
        time.sleep(0.2)
    raise TimeoutError(f"serving did not reach {rows} rows in {timeout} s")


def _trainer_load(
    addresses: list[str], rows: int, batch: int, seconds: float, threads: int, dim: int
) -> dict[str, Any]:
    lock = threading.Lock()
    done = {"lookup": 0, "push": 0, "steps": 0}
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    def run(seed: int) -> None:
        rng = np.random.default_rng(seed)
        grads = (rng.standard_normal((batch, dim)) * 0.01).astype(np.float32)
        with PSClient(addresses, role="training", timeout=60) as client:
            for _ in range(1_000_000):
                if time.monotonic() >= deadline:
                    break
                keys = rng.integers(0, rows, batch, dtype=np.uint64)
                t0 = time.perf_counter()
                client.lookup(_TABLE, keys)
                client.push(_TABLE, keys, grads)
                elapsed = time.perf_counter() - t0
                with lock:
                    done["lookup"] += batch
                    done["push"] += batch
                    done["steps"] += 1
                    latencies.append(elapsed)

    started = time.monotonic()
    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=seconds + 120)
    wall = time.monotonic() - started
    ms = sorted(x * 1000 for x in latencies)
    return {
        "seconds": wall,
        "steps": done["steps"],
        "lookup_rows_per_s": done["lookup"] / wall,
        "push_rows_per_s": done["push"] / wall,
        "step_ms_p50": ms[len(ms) // 2] if ms else None,
        "step_ms_p99": ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else None,
    }


def _describe_ms(addresses: list[str], repeats: int = 20) -> float:
    times = []
    with PSClient(addresses, role="training", timeout=30) as client:
        for _ in range(repeats):
            t0 = time.perf_counter()
            client.describe()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _phase(args: argparse.Namespace, root: Path, config: Path, shards: int) -> dict[str, Any]:
    snaps = root / f"phase-{shards}"
    cluster = LocalCluster(
        config,
        training_shards=shards,
        serving_shards=args.serving_shards,
        sparse_interval="1s",
        snapshot_dir=snaps,
        log_dir=root / f"logs-{shards}",
        startup_timeout=600,
        stop_timeout=300,
    )
    result: dict[str, Any] = {"training_shards": shards, "serving_shards": args.serving_shards}
    started = time.monotonic()
    with cluster:
        result["start_s"] = time.monotonic() - started
        training = cluster.training_addresses
        if any(snaps.glob("training-*/snap-*")):
            result["serving_full_s"] = _wait_serving_full(cluster, args.rows, timeout=900)
            result["serving_full_rows_per_s"] = args.rows / result["serving_full_s"]
        else:
            result["fill_rows_per_s"] = _fill(training, args.rows)
            _wait_serving_full(cluster, args.rows, timeout=900)
        result["describe_ms"] = _describe_ms(training)
        urls = cluster.metrics_urls
        before = {n: _metrics(u) for n, u in urls.items()}
        agent_before = _metrics(cluster.agent_metrics_url)
        load = _trainer_load(training, args.rows, args.batch, args.seconds, args.threads, args.dim)
        after = {n: _metrics(u) for n, u in urls.items()}
        agent_after = _metrics(cluster.agent_metrics_url)
        result.update(load)
        result["lookup_rows_per_s_per_shard"] = load["lookup_rows_per_s"] / shards
        result["push_rows_per_s_per_shard"] = load["push_rows_per_s"] / shards
        per_shard = []
        for i in range(shards):
            name = f"training-{i}"
            keys = _sum(after[name], "monolith_ps_rows_looked_up_total", table=_TABLE) - _sum(
                before[name], "monolith_ps_rows_looked_up_total", table=_TABLE
            )
            rows_i = _sum(after[name], "monolith_ps_table_rows", table=_TABLE)
            per_shard.append(
                {
                    "shard": i,
                    "rows": int(rows_i),
                    "keys_per_s": keys / load["seconds"],
                    "bytes_per_row": _sum(
                        after[name], "monolith_ps_table_memory_bytes", table=_TABLE
                    )
                    / max(rows_i, 1),
                    "rss_mb": _rss_mb(cluster.process("training", i).pid),
                }
            )
        result["per_shard"] = per_shard
        applied = _sum(agent_after, "monolith_ps_sync_rows_applied_total") - _sum(
            agent_before, "monolith_ps_sync_rows_applied_total"
        )
        result["agent_sync_rows_per_s_under_load"] = applied / load["seconds"]
        result["agent_rss_mb"] = _rss_mb(cluster.process("agent").pid)
        result["serving_rss_mb"] = [
            _rss_mb(cluster.process("serving", s).pid) for s in range(args.serving_shards)
        ]
    return result


def _reshard(root: Path, old: int, new: int, rows: int) -> dict[str, Any]:
    out = root / f"out-{new}"
    cmd = [sys.executable, "-m", "monolith_ps.cli", "snapshot", "reshard", "--shards", str(new)]
    for i in range(old):
        cmd += ["--from", str(root / f"phase-{old}" / f"training-{i}")]
    cmd += ["--to", str(out)]
    started = time.monotonic()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - started
    inside = float(done.stdout.split(" bytes in ")[1].split(" s")[0])
    target = root / f"phase-{new}"
    target.mkdir()
    for i in range(new):
        os.rename(out / f"shard-{i}", target / f"training-{i}")
    return {
        "from": old,
        "to": new,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "seconds_in_reshard": inside,
        "rows_per_s_in_reshard": rows / inside,
    }


def _markdown(report: dict[str, Any]) -> str:
    phases = report["phases"]
    base = phases[0]
    lines = [
        f"Scale simulation: {report['rows']:,} rows x dim {report['dim']} (Adagrad), "
        f"{report['serving_shards']} serving shards, {report['threads']} trainer threads, "
        f"batch {report['batch']}, {report['seconds']:.0f} s of load a phase; "
        f"{report['cpus']} CPUs shared by every process.",
        "",
        "| training shards | lookup rows/s | push rows/s | per shard (lookup) | vs 2 shards "
        "| step p50 ms | step p99 ms | DescribeTables ms | serving full resync s (rows/s) "
        "| agent rows/s under load | bytes/row | training RSS MB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in phases:
        ratio = p["lookup_rows_per_s_per_shard"] / base["lookup_rows_per_s_per_shard"]
        bpr = statistics.mean(s["bytes_per_row"] for s in p["per_shard"])
        rss = statistics.mean(s["rss_mb"] for s in p["per_shard"])
        resync = (
            f"{p['serving_full_s']:.1f} ({p['serving_full_rows_per_s']:,.0f})"
            if "serving_full_s" in p
            else "- (filled live)"
        )
        lines.append(
            f"| {p['training_shards']} | {p['lookup_rows_per_s']:,.0f} | "
            f"{p['push_rows_per_s']:,.0f} | {p['lookup_rows_per_s_per_shard']:,.0f} | "
            f"{ratio:.2f} | {p['step_ms_p50']:.0f} | {p['step_ms_p99']:.0f} | "
            f"{p['describe_ms']:.1f} | {resync} | "
            f"{p['agent_sync_rows_per_s_under_load']:,.0f} | {bpr:.0f} | {rss:.0f} |"
        )
    lines += [
        "",
        "| reshard | command s (with start-up) | rows/s | reshard itself s | rows/s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in report["reshards"]:
        lines.append(
            f"| {r['from']} -> {r['to']} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | "
            f"{r['seconds_in_reshard']:.1f} | {r['rows_per_s_in_reshard']:,.0f} |"
        )
    lines += [
        "",
        "Rows each training shard held, and keys it handled a second (lookups and pushes,",
        "its own counter):",
        "",
    ]
    for p in phases:
        shares = ", ".join(f"{s['rows']:,} / {s['keys_per_s']:,.0f}" for s in p["per_shard"])
        lines.append(f"- {p['training_shards']} shards: {shares}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--shards", default="2,4,8", help="training shard counts, in order")
    parser.add_argument("--serving-shards", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=20.0, help="trainer load per phase")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--markdown", help="write the Markdown tables here")
    args = parser.parse_args()
    counts = [int(n) for n in args.shards.split(",")]
    root = Path(tempfile.mkdtemp(prefix="mps-scale-"))
    try:
        config = root / "tables.yaml"
        config.write_text(_config(args.dim))
        phases, reshards = [], []
        for k, shards in enumerate(counts):
            if k:
                reshards.append(_reshard(root, counts[k - 1], shards, args.rows))
            phases.append(_phase(args, root, config, shards))
            print(json.dumps(phases[-1]), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {
        "rows": args.rows,
        "dim": args.dim,
        "serving_shards": args.serving_shards,
        "threads": args.threads,
        "batch": args.batch,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "phases": phases,
        "reshards": reshards,
    }
    markdown = _markdown(report)
    print(markdown)
    if args.json:
        write_result(args.json, report)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
