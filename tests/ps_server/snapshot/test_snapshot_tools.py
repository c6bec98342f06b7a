"""`mps bundle` bundles, `mps snapshot inspect`, and loading what a serving server starts from."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from snapshot_helpers import ReferenceShard

from ps_server.snapshot import bundle_cli
from ps_server.snapshot import cli as snapshot_cli
from ps_server.snapshot.bundle import (
    NoSnapshotError,
    load_serving_sources,
    read_bundle,
    write_bundle,
)
from ps_server.snapshot.files import CorruptSnapshotError
from ps_server.snapshot.format import MANIFEST_NAME, ServerInfo
from ps_server.snapshot.inspect import inspect_path

_REPO = Path(__file__).parents[3]


def _run(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.configure_parser(parser)
    return module.run(parser.parse_args(argv))


@pytest.fixture
def shard_dirs(tmp_path) -> tuple[list[Path], list[ReferenceShard]]:
    """Two training shards, each with a chain F1 I2 I3 F4 I5."""
    trainers = []
    for shard in range(2):
        server = ServerInfo("training", shard, 2, 1000 + shard)
        trainer = ReferenceShard(tmp_path / f"shard-{shard}", seed=shard, server=server)
        for kind in ["full", "incr", "incr", "full", "incr"]:
            trainer.step()
            trainer.snapshot(kind)
        trainers.append(trainer)
    return [t.store.root for t in trainers], trainers


def _assert_values(table, expected: dict, dtype) -> None:
    assert sorted(table.keys.tolist()) == sorted(expected)
    order = np.argsort(table.keys)
    keys = table.keys[order]
    want = np.stack([expected[int(k)][0] for k in keys]).astype(dtype)
    assert table.values.dtype == dtype
    np.testing.assert_array_equal(table.values[order], want)
    np.testing.assert_array_equal(table.versions[order], [expected[int(k)][3] for k in keys])


def test_bundle_holds_values_without_optimizer_state(shard_dirs, tmp_path):
    roots, trainers = shard_dirs
    info = write_bundle(roots, tmp_path / "bundle")
    assert (info.sources, info.tables, info.clipped_values) == (2, 2, 0)
    assert info.rows == sum(len(t.rows) for tr in trainers for t in tr.tables.values())
    names = sorted(p.name for p in (tmp_path / "bundle").iterdir())
    assert MANIFEST_NAME in names
    assert not [n for n in names if "opt_state" in n or "push_counts" in n or "state" in n]
    sources = read_bundle(tmp_path / "bundle")
    for source, trainer in zip(sources, trainers, strict=True):
        assert source.server == trainer.server
        assert source.seqs == (4, 5)
        for name, table in trainer.tables.items():
            _assert_values(source.tables[name], table.snapshot_state(), np.float32)
            assert source.tables[name].complete_version == table.version
            np.testing.assert_array_equal(source.tables[name].default_row, 0.25)
        assert source.dense.version == trainer.dense_version
        assert not source.dense.states
    assert not (tmp_path / "bundle.partial").exists()


def test_a_bundle_and_its_snapshots_load_the_same(shard_dirs, tmp_path):
    roots, _ = shard_dirs
    write_bundle(roots, tmp_path / "bundle")
    from_bundle = load_serving_sources([tmp_path / "bundle"])
    from_snapshots = load_serving_sources(roots)
    for a, b in zip(from_bundle, from_snapshots, strict=True):
        assert a.server == b.server and a.seqs == b.seqs
        for name in a.tables:
            np.testing.assert_array_equal(a.tables[name].keys, b.tables[name].keys)
            np.testing.assert_array_equal(a.tables[name].values, b.tables[name].values)


def test_float16_bundle_halves_values_and_clips_out_of_range(tmp_path):
    trainer = ReferenceShard(tmp_path / "s0")
    trainer.step()
    key = next(iter(trainer.tables["user"].rows))
    value, state, pushes, version = trainer.tables["user"].rows[key]
    value = value.copy()
    value[0], value[1] = 1e6, -1e6
    trainer.tables["user"].rows[key] = (value, state, pushes, version)
    trainer.snapshot("full")
    info = write_bundle([trainer.store.root], tmp_path / "b16", dtype="float16")
    assert info.clipped_values == 2
    (source,) = read_bundle(tmp_path / "b16")
    table = source.tables["user"]
    assert table.values.dtype == np.float16
    row = table.values[table.keys == key][0]
    assert row[0] == np.float16(65504) and row[1] == np.float16(-65504)
    assert np.isfinite(table.values).all()
    expected = trainer.tables["item"].snapshot_state()
    _assert_values(source.tables["item"], expected, np.float16)
    assert json.loads((tmp_path / "b16" / MANIFEST_NAME).read_text())["clipped_values"] == 2


def test_bundle_refuses_bad_requests_and_writes_nothing(shard_dirs, tmp_path, capsys):
    roots, _ = shard_dirs
    (tmp_path / "taken").mkdir()
    (tmp_path / "empty").mkdir()
    cases = [
        (["--from", str(roots[0]), "--to", str(tmp_path / "taken")], "already exists"),
        (["--from", str(tmp_path / "empty"), "--to", str(tmp_path / "x")], "is an empty directory"),
        (["--from", str(roots[0]), "--to", str(tmp_path / "x")], "shards [1] are missing"),
        (["--from", str(roots[0]), "--from", str(roots[0]), "--to", str(tmp_path / "x")], "twice"),
        (["--from", str(roots[0]), "--to", str(tmp_path / "no" / "x")], "does not exist"),
    ]
    for argv, message in cases:
        assert _run(bundle_cli, argv) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()
    with pytest.raises(NoSnapshotError):
        load_serving_sources([tmp_path / "empty"])
    with pytest.raises(ValueError, match="dtype"):
        write_bundle(roots, tmp_path / "y", dtype="int8")


def test_damaged_bundle_is_detected(shard_dirs, tmp_path, capsys):
    roots, _ = shard_dirs
    bundle = tmp_path / "bundle"
    argv = ["--from", str(roots[0]), "--to", str(bundle), "--allow-partial"]
    assert _run(bundle_cli, argv) == 0
    assert "1 shard(s), 2 table(s)" in capsys.readouterr().out
    assert _run(snapshot_cli, ["inspect", str(bundle)]) == 0
    assert "verified bundle" in capsys.readouterr().out
    victim = max(bundle.glob("*.values.npy"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(CorruptSnapshotError, match="crc32"):
        read_bundle(bundle)
    assert _run(snapshot_cli, ["inspect", str(bundle)]) == 1
    assert "NOT VERIFIED" in capsys.readouterr().out


def test_inspect_reports_chain_and_damage(shard_dirs, capsys):
    roots, trainers = shard_dirs
    root = roots[0]
    assert _run(snapshot_cli, ["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert "verified: restore would load seq 4, 5" in out
    assert "table user:" in out and "dense: 2 arrays" in out
    (root / "snap-00000006-incr.partial").mkdir()
    victim = max(trainers[0].path(5).glob("*.npy"), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-1])
    assert _run(snapshot_cli, ["inspect", str(root)]) == 1
    out = capsys.readouterr().out
    assert "NOT VERIFIED: restore would stop at seq 4 and skip newer 5" in out
    assert "orphan" in out and "snap-00000006-incr.partial" in out
    report = inspect_path(root)
    by_seq = {line.seq: line for line in report.snapshots}
    assert (
        by_seq[5].skipped
        and by_seq[5].status.startswith("CORRUPT")
        and "truncated" in (by_seq[5].status)
    )
    assert by_seq[4].in_chain and by_seq[1].status == "ok" and not by_seq[1].in_chain
    assert _run(snapshot_cli, ["inspect", "--json", str(root)]) == 1
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["chain"] == [4] and as_json["ok"] is False


def test_inspect_empty_and_missing_dirs(tmp_path, capsys):
    assert _run(snapshot_cli, ["inspect", str(tmp_path)]) == 1
    assert "no snapshots" in capsys.readouterr().out
    assert _run(snapshot_cli, ["inspect", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_mps_snapshot_inspect_runs_as_a_command(shard_dirs):
    roots, _ = shard_dirs
    done = subprocess.run(
        [sys.executable, "-m", "monolith_ps.cli", "snapshot", "inspect", "--quick", str(roots[1])],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=_REPO,
    )
    assert done.returncode == 0, done.stderr
    assert "sizes only" in done.stdout and "training 1/2" in done.stdout
