"""Process start to SERVING of an ``mps server`` with an empty table: warm and cold cache.

Warm: ``NUMBA_CACHE_DIR`` filled by ``mps warmup`` beforehand (what ``make install`` and
the image do). Cold: an empty cache directory (every kernel compiles at start). Each is a
fresh ``python -m monolith_ps.cli server`` process on loopback, timed from spawn to gRPC
health SERVING. The cold run is the reference the warm one is compared with.

    python benchmarks/start_bench.py --json results/start_bench.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from report import benchmark_parser, publish

_CONFIG = {"tables": [{"name": "emb", "dim": 64, "optimizer": "adagrad"}]}


def _serving_after(cache_dir: Path, role: str, workdir: Path, timeout: float = 900) -> float:
    """Seconds from spawning a server to its health SERVING."""
    config = workdir / "tables.json"
    config.write_text(json.dumps(_CONFIG))
    port_file = workdir / "port.log"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    started = time.monotonic()
    with open(port_file, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "monolith_ps.cli", "server", "--role", role,
             "--shard-index", "0", "--num-shards", "1", "--config", str(config),
             "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
             "--log-format", "json", "--auth", "off",
             *(["--serve-before-sync"] if role == "serving" else [])],
            stderr=log, stdout=subprocess.DEVNULL, env=env,
        )  # fmt: skip
    try:
        port = None
        while port is None:
            for line in port_file.read_text().splitlines():
                if '"server_started"' in line:
                    port = json.loads(line)["port"]
            if time.monotonic() - started > timeout or proc.poll() is not None:
                raise RuntimeError(f"server did not start: {port_file.read_text()[-2000:]}")
            time.sleep(0.01)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - started
                except grpc.RpcError:
                    pass
                if time.monotonic() - started > timeout:
                    raise RuntimeError("not SERVING in time")
                time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="warm starts to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="start-bench-") as tmp:
        tmp_path = Path(tmp)
        cold = {}
        for role in ("training", "serving"):
            cache = tmp_path / f"cold-{role}"
            cache.mkdir()
            cold[role] = _serving_after(cache, role, tmp_path)
        warm_cache = tmp_path / "warm"
        env = {**os.environ, "NUMBA_CACHE_DIR": str(warm_cache)}
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "monolith_ps.cli", "warmup"], env=env, check=True)
        warmup_seconds = time.monotonic() - t0
        warm = {
            role: sorted(_serving_after(warm_cache, role, tmp_path) for _ in range(args.repeats))
            for role in ("training", "serving")
        }
    result = {
        "benchmark": "start",
        "cold_seconds": cold,
        "warm_seconds": warm,
        "warm_median_seconds": {r: v[len(v) // 2] for r, v in warm.items()},
        "warmup_command_seconds": warmup_seconds,
        "ratio_cold_over_warm": {r: cold[r] / warm[r][len(warm[r]) // 2] for r in cold},
        "note": "spawn to gRPC health SERVING, empty table; the machine may be shared",
    }
    rows = ["| role | cold s | warm s (median) | cold / warm |", "| --- | ---: | ---: | ---: |"]
    for role in ("training", "serving"):
        median = result["warm_median_seconds"][role]
        rows.append(f"| {role} | {cold[role]:.1f} | {median:.2f} | {cold[role] / median:.1f} |")
    publish(result, "\n".join(rows), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
