"""The MovieLens demo, short: a real local cluster (2 training shards, 2 serving shards and
the sync agent as subprocesses), a few windows of the stream, scoring through serving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from examples.movielens import demo
from examples.movielens.data import load_events
from examples.movielens.report import format_table, stream_windows
from examples.movielens.stream import (
    DEFAULT_CONFIG,
    OnlineLoop,
    ServingScorer,
    SyncReport,
    WindowReport,
    build_model,
)
from ps_server.local_store import LocalStore

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict, Path]:
    out = tmp_path_factory.mktemp("demo")
    code = demo.main(
        [
            "--limit", "30000", "--windows", "5", "--sparse-interval", "0.5s",
            "--dense-interval", "0.5s", "--results", str(out), "--log-dir", str(out / "logs"),
            "--quiet",
        ]
    )  # fmt: skip
    return code, json.loads((out / "demo.json").read_text()), out


def test_serving_scores_the_next_window_well_above_chance(short_run):
    code, doc, _ = short_run
    assert code == 0 and not doc["interrupted"]
    windows = doc["windows"]
    assert [w["window"] for w in windows] == [0, 1, 2, 3]
    assert all(w["train_events"] == 6000 and w["serve_events"] == 6000 for w in windows)
    # The first window (spring 1996) knows few users and movies; after it, the served model
    # ranks the next window's ratings well above chance.
    assert doc["summary"]["serving_auc_mean"] > 0.62
    assert all(w["serving_auc"] > 0.62 for w in windows[1:])
    assert doc["summary"]["train_auc_all"] > 0.62
    # Serving had the trained rows: most scoring keys were found (the next window's new
    # users and movies are not, and get the default row).
    assert all(w["serving_found"] > 0.25 for w in windows) and windows[-1]["serving_found"] > 0.6
    assert all(w["serving_rows"] == w["training_rows"] > 0 for w in windows)


def test_serving_scores_exactly_what_the_model_trained_in_process_scores(short_run):
    """Nothing is lost or changed between the training PS, the agent and the serving PS:
    the same stream through one in-process store gives the same serving AUC per window."""
    _, doc, _ = short_run
    store = LocalStore.from_config(DEFAULT_CONFIG)
    model = build_model(store.config)
    loop = OnlineLoop(
        store,
        model,
        ServingScorer(store, model),
        sync=lambda: SyncReport(0, 0, 0.0),
        progress=False,
    )
    local = loop.run(load_events(limit=30_000).windows(5))
    np.testing.assert_allclose(
        [w["serving_auc"] for w in doc["windows"]], [r.serving_auc for r in local], atol=1e-4
    )
    np.testing.assert_allclose(
        [w["train_auc"] for w in doc["windows"]], [r.train_auc for r in local], atol=1e-4
    )


def test_every_scoring_lookup_was_answered_by_the_serving_servers(short_run):
    _, doc, _ = short_run
    lookups = doc["serving_lookups"]
    assert lookups["keys_asked_by_scorer"] > 10_000
    # The serving servers' own counters saw exactly the scorer's keys: nothing was scored
    # from training, and nothing else looked serving up.
    assert lookups["keys_looked_up_by_serving"] == lookups["keys_asked_by_scorer"]


def test_results_hold_the_table_and_a_png_plot(short_run):
    _, doc, out = short_run
    markdown = (out / "demo.md").read_text()
    assert "| window |" in markdown and "serving AUC" in markdown
    assert doc["dataset"]["name"] == "ml-latest-small" and doc["dataset"]["ratings"] == 30_000
    assert doc["dataset"]["ratings_in_release"] == 100_836
    assert "Data: ml-latest-small" in markdown and "the first 30,000 of its 100,836" in markdown
    png = (out / "demo_auc.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    logs = {p.name: p.read_text() for p in (out / "logs").glob("*.log")}
    assert sorted(logs) == [
        "agent.log",
        "serving-0-0.log",
        "serving-1-0.log",
        "training-0.log",
        "training-1.log",
    ]
    assert all('"server_stopped"' in text for name, text in logs.items() if name != "agent.log")
    assert '"agent_stopped"' in logs["agent.log"]


def _report(window: int, auc: float) -> WindowReport:
    day = 86400
    return WindowReport(
        window=window, first_timestamp=window * day, train_events=10, train_auc=auc,
        train_logloss=0.6, train_seconds=1.0, serve_events=10 + window,
        serve_first_timestamp=(window + 1) * day, serving_auc=auc + 0.1, serving_logloss=0.6,
        serving_found=0.5, sync_seconds=0.25, sync_versions_behind=1, training_rows=window,
        serving_rows=window,
    )  # fmt: skip


def test_a_windows_serving_auc_is_on_its_own_row():
    """Step i trains window i and scores window i + 1: the table shows window i + 1's
    serving AUC on row i + 1, where the plot draws it."""
    windows = stream_windows([_report(0, 0.6), _report(1, 0.7)])
    assert [w.window for w in windows] == [0, 1, 2]
    assert [w.serving_auc for w in windows] == [None, pytest.approx(0.7), pytest.approx(0.8)]
    assert [w.train_auc for w in windows] == [0.6, 0.7, None]
    assert [w.events for w in windows] == [10, 10, 11]
    rows = [line.split() for line in format_table([_report(0, 0.6), _report(1, 0.7)]).splitlines()]
    assert rows[2][:5] == ["0", "1970-01-01", "10", "0.6000", "-"]
    assert rows[3][:5] == ["1", "1970-01-02", "10", "0.7000", "0.7000"]
    assert rows[4][:5] == ["2", "1970-01-03", "11", "-", "0.8000"]


def test_a_folder_that_is_no_release_is_refused_before_any_cluster_starts(tmp_path, capsys):
    assert demo.main(["--data", str(tmp_path), "--results", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "u.data + u.item" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        demo.main(["--help"])
    assert "MONOLITH_PS_DATA" in capsys.readouterr().out


def test_ctrl_c_shuts_the_cluster_down(tmp_path, metric_value):
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "examples.movielens.demo", "--windows", "40",
            "--sparse-interval", "0.5s", "--results", str(tmp_path),
            "--log-dir", str(tmp_path / "logs"), "--no-plot",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        for line in proc.stderr:
            if line.startswith("cluster up") or time.monotonic() > deadline:
                break
        log = (tmp_path / "logs" / "training-0.log").read_text().splitlines()
        started = next(json.loads(x) for x in log if '"server_started"' in x)
        metrics_url = f"http://127.0.0.1:{started['metrics_port']}/metrics"
        while not metric_value(metrics_url, "monolith_ps_rpc_requests_total", method="Push"):
            assert time.monotonic() < deadline, "the stream never pushed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # in the stream: training has taken a push
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    logs = {p.name: p.read_text() for p in (tmp_path / "logs").glob("*.log")}
    assert len(logs) == 5
    assert all('"server_stopped"' in text for name, text in logs.items() if name != "agent.log")
    assert '"agent_stopped"' in logs["agent.log"]
