"""Reshard throughput and memory: ``mps snapshot reshard`` of real training snapshots.

Two training shards of ``--rows`` rows in all (dim ``--dim``, Adagrad) write a full
snapshot each; ``mps snapshot reshard`` (a fresh process, as a user runs it) routes them
to ``--to-shards`` shards. Measured: wall time and rows/s, the peak anonymous memory of
the process (sampled every 20 ms from /proc; memory-mapped file pages, which the kernel
can drop, are not in it) and its peak RSS (which counts them).

Reference, in the same run: copying the same snapshot directories file by file with
fsync (``shutil.copytree``), the least any reshard must do (read every byte once, write
it once). Ratio = reshard seconds / copy seconds.

    python benchmarks/reshard_bench.py --rows 1000000 --json results/reshard_bench.json
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report import benchmark_parser, markdown_table, publish

from monolith_ps.config import parse_config
from monolith_ps.routing import shard_of
from ps_server.snapshot.snapshotter import TrainingSnapshotter
from ps_server.state import ShardState

_CHILD = """
import os, resource, sys, threading, time
from monolith_ps.processes import rss_bytes
peak = [0]
def watch():
    while True:
        peak[0] = max(peak[0], rss_bytes(os.getpid(), "RssAnon") // 1024)
        time.sleep(0.02)
threading.Thread(target=watch, daemon=True).start()
from monolith_ps.cli import main
status = main(sys.argv[1:])
print("peak_anon_kb", peak[0], "maxrss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(status)
"""


def _old_shards(root: Path, rows: int, dim: int) -> list[Path]:
    config = parse_config(
        {"tables": [{"name": "emb", "dim": dim, "optimizer": "adagrad", "initializer": "normal"}]}
    )
    keys = np.arange(1, rows + 1, dtype=np.uint64) * np.uint64(0x9E3779B1)
    dirs = []
    for i in range(2):
        state = ShardState.from_config(config, "training", i, 2)
        state.tables["emb"].find_or_insert(keys[shard_of(keys, 2) == i], now=1.0)
        snapshotter = TrainingSnapshotter(
            state, root / f"old-{i}", full_interval=3600, incremental_interval=3600, keep=1
        )
        snapshotter.restore()
        snapshotter.snapshot(full=True)
        snapshotter.close(final=True)
        dirs.append(root / f"old-{i}")
    return dirs


def _copy_with_fsync(dirs: list[Path], dest: Path) -> float:
    started = time.monotonic()
    for d in dirs:
        shutil.copytree(d, dest / d.name)
        for path in (dest / d.name).rglob("*"):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
    return time.monotonic() - started


def main() -> int:
    parser = benchmark_parser(__doc__, rows=1_000_000, dim=64)
    parser.add_argument("--to-shards", type=int, default=4)
    parser.add_argument("--chunk-mb", type=int, default=64)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mps-reshard-bench-"))
    try:
        dirs = _old_shards(root, args.rows, args.dim)
        size = sum(f.stat().st_size for d in dirs for f in d.rglob("*.npy"))
        copy_s = _copy_with_fsync(dirs, root / "copy")
        cmd = [sys.executable, "-c", _CHILD, "snapshot", "reshard"]
        cmd += [f"--from={d}" for d in dirs]
        cmd += [f"--shards={args.to_shards}", f"--to={root / 'out'}", f"--chunk-mb={args.chunk_mb}"]
        started = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
        reshard_s = time.monotonic() - started
        fields = done.stdout.split()
        peak_anon = int(fields[fields.index("peak_anon_kb") + 1]) / 1024
        maxrss = int(fields[fields.index("maxrss_kb") + 1]) / 1024
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "rows": args.rows,
        "dim": args.dim,
        "snapshot_mb": size / 2**20,
        "to_shards": args.to_shards,
        "chunk_mb": args.chunk_mb,
        "reshard_s": reshard_s,
        "reshard_rows_per_s": args.rows / reshard_s,
        "copy_s": copy_s,
        "ratio_reshard_to_copy": reshard_s / copy_s,
        "peak_anon_mb": peak_anon,
        "peak_rss_mb": maxrss,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    columns = ["rows", "snapshot MB", "reshard s", "rows/s", "copy+fsync s", "ratio"]
    columns += ["peak anon MB", "peak RSS MB"]
    row = [f"{args.rows:,}", f"{result['snapshot_mb']:.0f}", f"{reshard_s:.1f}",
           f"{result['reshard_rows_per_s']:,.0f}", f"{copy_s:.1f}",
           f"{result['ratio_reshard_to_copy']:.1f}", f"{peak_anon:.0f}",
           f"{maxrss:.0f}"]  # fmt: skip
    publish(result, markdown_table(columns, [row]), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
