"""A rolling restart under load (benchmarks/rollout_bench.py): 2 training shards with
snapshots, 2 serving shards x 2 replicas, the agent on a 5 min sparse interval; every
process restarted in turn (SIGTERM, start, wait ready) while clients look up synced keys
on serving and push on training. No failed call, no missing synced row, no lost push."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_a_rolling_restart_under_load_loses_and_fails_nothing(tmp_path):
    out = tmp_path / "rollout.json"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "rollout_bench.py"), "--json", str(out)],
        cwd=REPO_ROOT,
        check=True,
        timeout=300,
        capture_output=True,
    )
    result = json.loads(out.read_text())
    assert result["failed_client_calls"] == 0, result["failures"]
    assert result["not_found_synced_keys"] == 0
    assert result["acknowledged_pushes"] > 0
    assert result["acknowledged_pushes_missing"] == 0
    pods = {p["pod"] for p in result["pods"]}
    assert pods == {"training-0", "training-1", "serving-0-0", "serving-0-1", "serving-1-0",
                    "serving-1-1", "agent"}  # fmt: skip
    assert result["lookups_during"]["calls"] > 0
