"""Tiered tables in real processes: the process's own resident memory under the budget and
the cold file's mapped pages no more than the file, and kill -9 of a training server whose
rows are in both tiers, restored from its snapshots on start."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np

from tests.ps_server.snapshot.test_snapshot_process import Client

_REPO = Path(__file__).parents[3]
MiB = 1 << 20

# a table of dim 64 with Adagrad state: 512 payload bytes a row, 400,000 rows (205 MB,
# about 4x the 50 MB budget), inserted, pushed to and read by random batches. The cold
# file is mapped: its pages are resident as file pages (RssFile, or RssShmem on tmpfs),
# which the kernel can reclaim, and the process's own memory is the rest. For each call
# the peak resident memory is reset (clear_refs 5) and the file pages resident before the
# call taken off the call's peak: an upper bound of the call's own peak, as file pages
# only grow during a call.
_RSS_SCRIPT = r"""
import gc, json, os, sys
import numpy as np
from monolith_ps.processes import rss_bytes
from monolith_ps.table_config import TableConfig
from ps_server.table import EmbeddingTable

def status(field):
    return rss_bytes(os.getpid(), field)

def file_pages():
    return status("RssFile") + status("RssShmem")

own_peak = 0

def call(method, *args):
    global own_peak
    before = file_pages()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    method(*args)
    own_peak = max(own_peak, status("VmHWM") - before)

cold_dir, budget, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
warm = EmbeddingTable(TableConfig(name="w", dim=64, memory_budget_bytes=20000, cold_dir=cold_dir))
k = np.arange(300, dtype=np.uint64)
for _ in range(3):
    warm.find_or_insert(k); warm.apply_gradients(k, np.ones((300, 64), np.float32)); warm.find(k)
del warm, k
gc.collect()
base, base_files = status("RssAnon"), file_pages()
table = EmbeddingTable(TableConfig(name="t", dim=64, memory_budget_bytes=budget, cold_dir=cold_dir))
batch = 8192
for lo in range(0, n, batch):
    call(table.find_or_insert, np.arange(lo, min(lo + batch, n), dtype=np.uint64))
rng = np.random.default_rng(0)
grads = np.full((batch, 64), 0.01, np.float32)
for _ in range(8):
    call(table.apply_gradients, rng.integers(0, n, batch).astype(np.uint64), grads)
    call(table.find, rng.integers(0, n, batch).astype(np.uint64))
print(json.dumps({"peak": own_peak - base, "file_pages": file_pages() - base_files,
                  "rows": len(table), **table.tier_stats(), **table.stats()}))
"""


def test_resident_memory_stays_within_budget_plus_overhead(tmp_path):
    budget, rows = 50_000_000, 400_000
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(tmp_path), str(budget), str(rows)],
        cwd=_REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["rows"] == rows and got["cold_rows"] > 3 * got["hot_rows"]
    assert got["promoted"] > 0 and got["cold_hits"] > 0
    # stated overhead: the cold tier's memory (index, keys, metadata, segment buffer), and
    # 24 MiB for one batch over the hot limit, the arena's growth step and batch arrays
    overhead = got["cold_memory_bytes"] + 24 * MiB
    assert got["peak"] <= budget + overhead, (got["peak"] / MiB, (budget + overhead) / MiB)
    # the mapped file pages are the cold file's (and a few of the code the calls loaded)
    assert got["file_pages"] <= got["cold_bytes"] + 8 * MiB, got["file_pages"] / MiB


CONFIG = {
    "tables": [
        {"name": "user", "dim": 8, "optimizer": "adam", "optimizer_args": {"lr": 0.05},
         "memory_budget_bytes": 20_000, "cold_dir": None},
    ],
    "snapshot": {"full_interval": "1h", "incremental_interval": "1h", "keep": 2},
}  # fmt: skip


def _tier_rows(metrics_port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).read()
    out = {}
    for line in text.decode().splitlines():
        if line.startswith("monolith_ps_table_tier_rows{"):
            tier = line.split('tier="')[1].split('"')[0]
            out[tier] = float(line.rsplit(" ", 1)[1])
    return out


def test_kill9_restores_rows_of_both_tiers(process_factory, tmp_path):
    cold = tmp_path / "cold"
    cold.mkdir()
    config = json.loads(json.dumps(CONFIG))
    config["tables"][0]["cold_dir"] = str(cold)
    server = process_factory(
        "training", config=config, extra_args=("--snapshot-dir", str(tmp_path / "snaps"))
    )
    rng = np.random.default_rng(2)
    keys = np.arange(1, 1501, dtype=np.uint64)
    with Client(server.address) as client:
        client.lookup("user", keys)
        for step in range(6):
            batch = rng.choice(keys, 400, replace=False)
            client.lookup("user", batch)
            client.push("user", batch, rng.standard_normal((400, 8)).astype(np.float32))
            if step == 2:
                client.snapshot(full=True)
        client.snapshot(full=False)
        before, _ = client.lookup("user", keys)
    tiers = _tier_rows(server.metrics_port)
    assert tiers["cold"] > tiers["hot"] > 0

    server.kill()
    server.start()
    with Client(server.address) as client:
        after, _ = client.lookup("user", keys)
    np.testing.assert_array_equal(after, before)
    tiers = _tier_rows(server.metrics_port)
    assert tiers["cold"] > tiers["hot"] > 0 and sum(tiers.values()) == len(keys)
