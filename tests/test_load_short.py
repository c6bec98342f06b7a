"""A short run of benchmarks/load_test.py: 8 clients (threads and a process) for 5 s on a
local cluster that syncs and snapshots meanwhile. Asserts correctness, never timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_short_load_has_no_errors_and_applies_every_push(tmp_path):
    out = tmp_path / "load.json"
    cmd = [
        sys.executable, str(REPO_ROOT / "benchmarks" / "load_test.py"),
        "--seconds", "5", "--threads", "4", "--processes", "1", "--threads-per-process", "4",
        "--reference-seconds", "0", "--json", str(out), "--workdir", str(tmp_path / "work"),
    ]  # fmt: skip
    run = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    result = json.loads(out.read_text())

    assert result["clients"] == 8
    assert result["errors"] == 0, result["error_samples"]
    assert result["processes_died"] == []
    counts = {op: result["latency"][op]["count"] for op in ("lookup", "push", "serving_lookup")}
    assert all(count > 0 for count in counts.values()), counts
    # Every acknowledged push applied its rows, each row taking a new version on training.
    assert result["pushes"] == counts["push"]
    assert result["rows_updated"] > 0
    assert result["training_version_growth"] >= result["rows_updated"]
    # Meanwhile the servers wrote snapshots and the agent synced rows to serving.
    assert result["snapshots_written"] > 0
    assert result["serving_rows"] > 0
    assert set(result["rss"]) == {"training-0", "training-1", "serving-0-0", "agent"}
