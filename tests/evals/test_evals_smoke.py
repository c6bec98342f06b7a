"""Every eval, short: the first ratings of the stream through a real local cluster (server
and agent subprocesses), checking that the results are written, well formed, and say
what the experiment is about (AUC above chance, rows shrinking with admission, ...)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from movielens_layouts import synthetic_release, write_release

from evals import admission, collisionless, expiry, fault_snapshot, run_all, sync_interval

LIMIT = "20000"  # the first ratings (1996 to 2000): enough to rank well above chance


def run_eval(
    module: Any, tmp_path: Path, *flags: str, shards: int = 1
) -> tuple[dict[str, Any], str]:
    results = tmp_path / "results"
    code = module.main(
        [
            "--limit", LIMIT, "--results", str(results), "--workdir", str(tmp_path), "--quiet",
            "--training-shards", str(shards), *flags,
        ]
    )  # fmt: skip
    assert code == 0
    for suffix in ("json", "md", "png"):
        path = results / f"{module.NAME}.{suffix}"
        assert path.is_file() and path.stat().st_size > 0, path
    assert (results / f"{module.NAME}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((results / f"{module.NAME}.json").read_text())
    markdown = (results / f"{module.NAME}.md").read_text()
    assert markdown.startswith(f"## {module.TITLE}")
    assert doc["experiment"] == module.NAME and doc["events"] == int(LIMIT)
    assert doc["machine"] and doc["date"] and doc["command"].startswith("python -m evals.")
    assert doc["dataset"]["ratings"] == int(LIMIT) and doc["dataset"]["first"]
    assert f"the first {int(LIMIT):,} of its" in markdown.split("\n\n")[1]
    return doc, markdown


def table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_collisionless_beats_hashing_into_a_tenth_of_the_ids(tmp_path):
    doc, markdown = run_eval(
        collisionless, tmp_path, "--seeds", "1", "--fractions", "1/10", "--test-fraction", "0.25"
    )
    exact, hashed = doc["summary"]
    assert (exact["variant"], hashed["variant"]) == ("collisionless", "hashed 1/10")
    distinct = doc["variants"][0]["distinct"]
    assert hashed["buckets"] == {t: math.ceil(n / 10) for t, n in distinct.items()}
    # One row per ID against at most a tenth of the user and movie IDs.
    assert hashed["rows_mean"] < 0.5 * exact["rows_mean"]
    assert exact["test_auc_mean"] > 0.55 and exact["train_auc_mean"] > 0.55
    # Collisions blur the rows that were trained: progressive AUC drops.
    assert hashed["train_auc_mean"] < exact["train_auc_mean"]
    assert [row[0] for row in table_rows(markdown)] == ["collisionless", "hashed 1/10"]


def test_serving_synced_every_window_beats_serving_never_synced(tmp_path):
    """On another layout (ml-100k's u.data and u.item), synthetic: any release runs."""
    release = synthetic_release(tmp_path / "ml-100k", "100k", 24_000, days=200)
    doc, markdown = run_eval(
        sync_interval, tmp_path, "--data", str(release), "--windows", "4", "--intervals", "1"
    )
    assert doc["dataset"]["layout"] == "u.data" and doc["dataset"]["name"] == "ml-100k"
    assert "Data: ml-100k (`u.data` layout" in markdown
    every, never = doc["summary"]
    assert (every["interval"], never["interval"]) == (1, sync_interval.NEVER)
    assert every["syncs"] == 3 and never["syncs"] == 1
    assert every["windows_behind_mean"] == 0 and never["windows_behind_mean"] > 0
    # The stale replica lacks the rows of the IDs that arrived after the start.
    assert never["found_mean"] < every["found_mean"]
    assert every["auc_all_events"] > 0.55
    assert every["auc_all_events"] > never["auc_all_events"]
    assert len(table_rows(markdown)) == 2


def test_admission_keeps_fewer_rows_as_the_threshold_grows(tmp_path):
    doc, _ = run_eval(admission, tmp_path, "--admit-after", "1,3", "--seeds", "1")
    first, third = doc["summary"]
    assert (first["admit_after"], third["admit_after"]) == (1, 3)
    assert third["rows_mean"] < first["rows_mean"]
    assert third["found_mean"] < first["found_mean"]
    for entry in doc["summary"]:
        assert entry["test_auc_mean"] > 0.55
    for run in doc["runs"]:
        assert run["serving_rows"] == run["rows"]  # serving got exactly what training kept
        assert 0 < run["memory_bytes_at_start"] < run["memory_bytes"]


def test_expiry_in_stream_time_drops_rows_and_serving_follows(tmp_path):
    doc, markdown = run_eval(
        expiry, tmp_path, "--ttl-days", "0,30,100000", "--windows", "3", "--seeds", "1"
    )
    none, month = doc["runs"]
    assert none["expired"] == 0 and month["expired"] > 0
    assert month["rows"] < none["rows"]
    # Expiry's tombstones reached serving through the agent.
    assert month["serving_rows"] == month["rows"] and none["serving_rows"] == none["rows"]
    assert none["test_auc"] > 0.55 and month["test_auc"] > 0.5
    # A TTL longer than the training part could expire nothing: reported, not run.
    (longer,) = doc["no_effect"]
    assert longer["ttl_days"] == 100000 and "training part spans" in longer["why"]
    assert [row[0] for row in table_rows(markdown)] == ["none", "30 days"]
    assert "Not results (they would change nothing): TTL 100,000 days" in markdown


def test_a_killed_shard_restores_its_snapshot_and_loses_only_what_came_after(tmp_path):
    doc, markdown = run_eval(
        fault_snapshot,
        tmp_path,
        *("--windows", "2", "--intervals-days", "7,100000", "--crash-at", "0.3"),
        shards=2,
    )
    base, killed = doc["runs"]
    assert base["crash"] is None
    crash = killed["crash"]
    assert killed["snapshots"] > 0 and crash["last_snapshot_event"] is not None
    # The kill point reported is where it happened: the batch boundary at or after 30%.
    assert doc["crash_event_requested"] == 6000 and crash["event"] == doc["crash_event"] == 6144
    assert "after event 6144" in markdown
    # 100,000 days of stream time never come before the kill: reported, not run.
    assert [v["variant"] for v in doc["no_effect"]] == ["killed, snapshot every 100,000 days"]
    assert "no snapshot falls before the kill" in doc["no_effect"][0]["why"]
    assert 0 < crash["events_lost"] < crash["event"]
    # The restarted shard came back with the rows of its snapshot, not empty.
    assert 0 <= crash["rows_lost"] < crash["rows_before"] and crash["rows_after_restore"] > 0
    summary = {s["variant"]: s for s in doc["summary"]}
    assert summary["uninterrupted"]["delta_auc_after"] == 0.0
    assert all(s["serving_auc_after"] > 0.55 for s in summary.values())
    assert len(table_rows(markdown)) == 2


def test_the_readme_gets_the_tables_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Evals\n\nintro\n\n{run_all.START}\nold\n{run_all.END}\n\n## After\n")
    run_all.update_readme(readme, ["## A\n\n| x |\n|---|\n| 1 |\n"], "made by `make evals`")
    text = readme.read_text()
    assert "old" not in text and "| 1 |" in text and "made by `make evals`" in text
    assert "\n### A\n" in text  # each eval's title goes under the README's own heading
    assert text.startswith("# Evals\n\nintro") and text.endswith("## After\n")
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="markers"):
        run_all.update_readme(readme, [], "")


def test_run_all_refuses_a_folder_that_is_no_release(tmp_path, capsys):
    assert run_all.main(["--data", str(tmp_path), "--results", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "ratings.dat + movies.dat" in err
    assert not (tmp_path / "out").exists()


def test_run_all_updates_the_readme_only_when_asked_and_only_from_the_default_data(
    tmp_path, capsys
):
    other = tmp_path / "ml-1m"
    write_release(other, "dat", [(1, 1, 4.0, 900_000_000)], [(1, "A (1990)", ["Drama"], "")])
    readme = tmp_path / "README.md"
    readme.write_text(f"{run_all.START}\nold\n{run_all.END}\n")
    with pytest.raises(SystemExit):
        run_all.main(["--data", str(other), "--update-readme", "--readme", str(readme)])
    assert "the README is about ml-latest-small" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_all.main(["--only", "expiry", "--update-readme", "--readme", str(readme)])
    assert "needs every eval" in capsys.readouterr().err
    assert "old" in readme.read_text()
