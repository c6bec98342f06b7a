"""A rolling restart under load, as a StatefulSet rollout does it, timed and counted.

A local cluster (2 training shards with snapshots, 2 serving shards x 2 replicas, the
agent on a 5 min sparse interval) serves lookups of keys synced before the rollout and
takes pushes, while every process is restarted in turn: SIGTERM, start, wait ready
(training shards, then serving pods highest ordinal first, then the agent). Clients look
up through the two replica sets (like a Service over ready pods: a call that fails on one
replica set goes to the other) and push to training with the client's own retries.

Counted: failed client calls (after retries), serving answers with found=False for keys
synced before the rollout, acknowledged pushes missing at the end (all must be 0).
Timed: per pod, seconds from start to ready and to caught up; client p50/p99 latency and
errors during the rollout against the same clients before it (the reference).

    python benchmarks/rollout_bench.py --json results/rollout_bench.json
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from report import benchmark_parser, publish

from monolith_ps.local import LocalCluster
from ps_client import PSClient

CONFIG = {
    "tables": [
        {"name": "emb", "dim": 8, "optimizer": "adagrad", "initializer": "normal"},
        {"name": "counter", "dim": 1, "optimizer": "sgd", "optimizer_args": {"lr": 1.0},
         "initializer": "zeros"},
    ],
    "snapshot": {"full_interval": "1h", "incremental_interval": "1h"},
}  # fmt: skip
KNOWN = np.arange(1, 2001, dtype=np.uint64)
COUNTERS = np.arange(1, 65, dtype=np.uint64)


class Load:
    """Lookup clients on serving and a push client on training, until stopped."""

    def __init__(self, cluster: LocalCluster) -> None:
        serving = cluster.serving_addresses
        # replica set r: replica r of every shard
        self.sets = [
            PSClient([shard[r] for shard in serving], role="serving", timeout=3, attempt_timeout=1)
            for r in range(len(serving[0]))
        ]
        self.training = PSClient(cluster.training_addresses, role="training", timeout=60)
        self.lookups: list[tuple[float, float]] = []  # (time, seconds)
        self.failed_lookups = 0
        self.not_found = 0
        self.failed_pushes = 0
        self.failures: list[dict[str, Any]] = []  # what each failed call saw, for the report
        self.restarting = "-"  # the pod being restarted, set by the rollout
        self.acked = np.zeros(len(COUNTERS), np.int64)
        self._stop = threading.Event()
        self._rng = np.random.default_rng(7)
        self._threads = [
            threading.Thread(target=self._look, args=(i,), daemon=True) for i in range(2)
        ] + [threading.Thread(target=self._push, daemon=True)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)
        for client in (*self.sets, self.training):
            client.close()

    def _look(self, first: int) -> None:
        rng = np.random.default_rng(first)
        while not self._stop.is_set():
            keys = rng.choice(KNOWN, 256, replace=False)
            started = time.monotonic()
            errors: list[str] = []
            for attempt in range(2 * len(self.sets)):  # each replica set, twice
                client = self.sets[(first + attempt) % len(self.sets)]
                try:
                    _, found = client.lookup("emb", keys, with_found=True)
                except Exception as exc:
                    errors.append(f"set {(first + attempt) % len(self.sets)}: {exc}"[:300])
                    continue
                self.not_found += int((~found).sum())
                break
            else:
                self.failed_lookups += 1
                self._record("lookup", started, errors)
                continue
            self.lookups.append((started, time.monotonic() - started))
            time.sleep(0.005)

    def _push(self) -> None:
        while not self._stop.is_set():
            picked = self._rng.choice(len(COUNTERS), 16, replace=False)
            started = time.monotonic()
            try:
                self.training.push("counter", COUNTERS[picked], -np.ones((16, 1), np.float32))
            except Exception as exc:
                self.failed_pushes += 1
                self._record("push", started, [str(exc)[:300]])
                continue
            self.acked[picked] += 1
            time.sleep(0.01)

    def _record(self, call: str, started: float, errors: list[str]) -> None:
        self.failures.append(
            {
                "call": call,
                "seconds": round(time.monotonic() - started, 3),
                "while_restarting": self.restarting,
                "errors": errors,
            }
        )


def _percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "calls": 0}
    values = np.array(samples) * 1000
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "calls": len(samples),
    }


def _restart(cluster: LocalCluster, role: str, index: int = 0, replica: int = 0) -> float:
    """SIGTERM, wait for the exit, start, wait ready; seconds from start to ready."""
    proc = cluster.process(role, index, replica)
    proc.send(signal.SIGTERM)
    if proc.wait(60) is None:
        raise RuntimeError(f"{proc.name} did not stop within 60 s of SIGTERM")
    started = time.monotonic()
    cluster.restart(role, index, replica)
    return time.monotonic() - started


def _all_found(client: PSClient) -> bool:
    try:
        return bool(client.lookup("emb", KNOWN, with_found=True)[1].all())
    except Exception:
        return False


def run_rollout(workdir: Path, baseline_seconds: float = 3.0) -> dict[str, Any]:
    """Start the cluster, sync the known keys, run the rollout under load; the counts
    and timings (see the module doc)."""
    config = workdir / "tables.json"
    config.write_text(json.dumps(CONFIG))
    with LocalCluster(
        config,
        training_shards=2,
        serving_shards=2,
        serving_replicas=2,
        sparse_interval="5m",
        dense_interval="1h",
        snapshot_dir=workdir / "snapshots",
        log_dir=workdir / "logs",
    ) as cluster:
        with PSClient(cluster.training_addresses, role="training") as training:
            training.lookup("emb", KNOWN)  # the rows exist on training ...
        cluster.restart("agent")  # ... and the agent's first round syncs them
        deadline = time.monotonic() + 60
        for r in range(2):
            with PSClient([s[r] for s in cluster.serving_addresses], role="serving") as c:
                while not _all_found(c):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the known keys did not reach serving")
                    time.sleep(0.1)
        load = Load(cluster)
        load.start()
        time.sleep(baseline_seconds)
        rollout_start = time.monotonic()
        errors_before = load.failed_lookups + load.failed_pushes
        pods: list[dict[str, Any]] = []
        order = [("training", 1, 0), ("training", 0, 0)]
        order += [("serving", s, r) for r in (1, 0) for s in (1, 0)]  # highest ordinal first
        for role, index, replica in order:
            load.restarting = cluster.process(role, index, replica).name
            ready = _restart(cluster, role, index, replica)
            name = cluster.process(role, index, replica).name
            caught_up = ready
            if role == "serving":
                address = cluster.serving_addresses[index][replica]
                started = time.monotonic() - ready
                with PSClient(
                    [address if s == index else cluster.serving_addresses[s][replica]
                     for s in range(2)], role="serving",
                ) as client:  # fmt: skip
                    while not _all_found(client):
                        time.sleep(0.02)
                caught_up = time.monotonic() - started
            pods.append(
                {"pod": name, "ready_s": round(ready, 2), "caught_up_s": round(caught_up, 2)}
            )
        load.restarting = "agent"
        agent_started = time.monotonic()
        cluster.kill("agent", sig=signal.SIGTERM)
        cluster.process("agent").wait(30)
        cluster.restart("agent")
        pods.append({"pod": "agent", "ready_s": round(time.monotonic() - agent_started, 2),
                     "caught_up_s": None})  # fmt: skip
        rollout_end = time.monotonic()
        time.sleep(0.5)
        load.stop()
        with PSClient(cluster.training_addresses, role="training") as training:
            values = training.lookup("counter", COUNTERS)[:, 0]
        missing = int(np.maximum(load.acked - np.rint(values).astype(np.int64), 0).sum())
        before = [s for t, s in load.lookups if t < rollout_start]
        during = [s for t, s in load.lookups if rollout_start <= t <= rollout_end]
        return {
            "pods": pods,
            "rollout_seconds": round(rollout_end - rollout_start, 1),
            "lookups_before": _percentiles(before),
            "lookups_during": _percentiles(during),
            "errors_before": errors_before,
            "failed_client_calls": load.failed_lookups + load.failed_pushes,
            "failures": load.failures,
            "not_found_synced_keys": load.not_found,
            "acknowledged_pushes": int(load.acked.sum()),
            "acknowledged_pushes_missing": missing,
        }


def markdown(result: dict[str, Any]) -> str:
    lines = ["| pod | start to ready s | start to caught up s |", "| --- | ---: | ---: |"]
    for pod in result["pods"]:
        caught = "-" if pod["caught_up_s"] is None else f"{pod['caught_up_s']:.2f}"
        lines.append(f"| {pod['pod']} | {pod['ready_s']:.2f} | {caught} |")
    b, d = result["lookups_before"], result["lookups_during"]
    lines += [
        "",
        "| lookups | calls | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: |",
        f"| before (reference) | {b['calls']} | {b['p50_ms']:.1f} | {b['p99_ms']:.1f} |",
        f"| during the rollout | {d['calls']} | {d['p50_ms']:.1f} | {d['p99_ms']:.1f} |",
        "",
        "| count | value |",
        "| --- | ---: |",
        f"| failed client calls (after retries) | {result['failed_client_calls']} |",
        f"| found=False for keys synced before | {result['not_found_synced_keys']} |",
        f"| acknowledged pushes missing at the end | {result['acknowledged_pushes_missing']} "
        f"(of {result['acknowledged_pushes']}) |",
    ]
    return "\n".join(lines)


def main() -> int:
    args = benchmark_parser(__doc__).parse_args()
    with tempfile.TemporaryDirectory(prefix="rollout-bench-") as tmp:
        result = run_rollout(Path(tmp))
    publish(result, markdown(result), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
