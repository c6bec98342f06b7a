"""Resharding real training snapshots: every row once with its state, then training goes on
exactly as on a cluster that always had the new shard count; refusals change nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from monolith_ps.cli import main
from monolith_ps.config import parse_config
from monolith_ps.routing import shard_of, split_by_shard
from ps_server.snapshot.reshard import ReshardError, reshard
from ps_server.snapshot.snapshotter import TrainingSnapshotter
from ps_server.snapshot.store import SnapshotStore
from ps_server.state import ShardState

CONFIG = {
    "tables": [
        {"name": "user", "dim": 8, "optimizer": "adagrad", "optimizer_args": {"lr": 0.05},
         "initializer": "normal", "admit_after": 2},
        {"name": "item", "dim": 4, "optimizer": "adam", "initializer": "learned"},
    ],
    "dense": [{"name": "mlp", "size": 16, "optimizer": "momentum"}],
}  # fmt: skip
ROW_FIELDS = ("values", "versions", "opt_state", "push_counts", "last_update")
SAME_AFTER_PUSHES = ("values", "opt_state", "push_counts", "last_update")


def _cluster(shards: int) -> list[ShardState]:
    config = parse_config(CONFIG)
    return [ShardState.from_config(config, "training", i, shards) for i in range(shards)]


def _train(cluster: list[ShardState], seed: int, steps: int = 3, now: float = 1e9) -> None:
    """The same keys and gradients, routed to whatever shard count ``cluster`` has."""
    rng = np.random.default_rng(seed)
    for step in range(steps):
        for name in ("user", "item"):
            keys = rng.integers(0, 400, 300, dtype=np.uint64)
            grads = rng.standard_normal((keys.size, cluster[0].tables[name].dim))
            for shard, index in enumerate(split_by_shard(keys, len(cluster))):
                table = cluster[shard].tables[name]
                table.find_or_insert(keys[index], now=now + step)
                table.apply_gradients(keys[index], grads[index].astype(np.float32), now=now + step)
        cluster[0].dense.push({"mlp": rng.standard_normal(16).astype(np.float32)})
    deleted = rng.integers(0, 400, 25, dtype=np.uint64)
    for shard, index in enumerate(split_by_shard(deleted, len(cluster))):
        cluster[shard].tables["user"].delete(deleted[index])


def _snapshotter(state: ShardState, root: Path) -> TrainingSnapshotter:
    return TrainingSnapshotter(
        state, root, full_interval=3600.0, incremental_interval=3600.0, keep=2
    )


def _snapshot_cluster(cluster: list[ShardState], root: Path, seed: int) -> list[Path]:
    """A full snapshot, more training, an incremental (with tombstones) per shard."""
    dirs = [root / f"old-{i}" for i in range(len(cluster))]
    writers = [_snapshotter(state, d) for state, d in zip(cluster, dirs, strict=True)]
    for writer in writers:
        writer.restore()
        writer.snapshot(full=True)
    _train(cluster, seed + 1, steps=1, now=1.5e9)
    for writer in writers:
        writer.snapshot(full=False)
        writer.close(final=False)
    return dirs


def _restore(out: Path, shards: int) -> list[ShardState]:
    cluster = _cluster(shards)
    for i, state in enumerate(cluster):
        snapshotter = _snapshotter(state, out / f"shard-{i}")
        snapshotter.restore()
        snapshotter.close(final=False)
    return cluster


def _rows(cluster: list[ShardState], table: str) -> dict[str, np.ndarray]:
    """Every row of ``table`` across the cluster, by key; checks each is on its shard."""
    parts = []
    for state in cluster:
        delta = state.tables[table].export_since(0, with_state=True)
        assert np.all(shard_of(delta.keys, state.num_shards) == state.shard_index)
        parts.append(delta)
    keys = np.concatenate([p.keys for p in parts])
    order = np.argsort(keys)
    assert np.unique(keys).size == keys.size, "a row is on two shards"
    rows = {"keys": keys[order]}
    for field in ROW_FIELDS:
        rows[field] = np.concatenate([getattr(p, field) for p in parts])[order]
    return rows


def _assert_rows_equal(a: dict, b: dict, fields: tuple[str, ...]) -> None:
    np.testing.assert_array_equal(a["keys"], b["keys"])
    for field in fields:
        np.testing.assert_array_equal(a[field], b[field], err_msg=field)


@pytest.mark.parametrize(("old", "new"), [(2, 4), (4, 2), (3, 5), (2, 1)])
def test_reshard_moves_every_row_once_and_training_continues_as_never_resharded(tmp_path, old, new):
    before = _cluster(old)
    _train(before, seed=old * 10 + new)
    dirs = _snapshot_cluster(before, tmp_path, seed=old * 10 + new)
    result = reshard(dirs[::-1], new, tmp_path / "out", chunk_bytes=4096)
    assert (result.old_shards, result.new_shards) == (old, new)

    after = _restore(tmp_path / "out", new)
    for name in ("user", "item"):
        _assert_rows_equal(_rows(before, name), _rows(after, name), ROW_FIELDS)
    assert sum(result.rows) == sum(len(_rows(after, n)["keys"]) for n in ("user", "item"))
    values, states, version = before[0].dense.export()
    values2, states2, version2 = after[0].dense.export()
    assert version == version2
    np.testing.assert_array_equal(values["mlp"], values2["mlp"])
    np.testing.assert_array_equal(states["mlp"], states2["mlp"])
    for state in after:  # versions only grow; every new shard has a new epoch
        clock = max(s.tables["user"].export_meta()["version"] for s in before)
        assert state.tables["user"].export_meta()["version"] == clock
    assert len({s.epoch for s in after} | {s.epoch for s in before}) == old + new

    item = [s.tables["item"].export_meta() for s in before]
    expected = np.mean([m["default_row"].astype(np.float64) for m in item], axis=0)
    for state in after:
        np.testing.assert_array_equal(
            state.tables["item"].export_meta()["default_row"], expected.astype(np.float32)
        )
        np.testing.assert_array_equal(  # disjoint key sets, same hashes: the sketches add
            state.tables["user"].export_meta()["sketch"],
            sum(s.tables["user"].export_meta()["sketch"].astype(np.int64) for s in before),
        )

    reference = _cluster(new)  # always had `new` shards, saw the same history
    _train(reference, seed=old * 10 + new)
    _train(reference, seed=old * 10 + new + 1, steps=1, now=1.5e9)
    _assert_rows_equal(_rows(reference, "user"), _rows(after, "user"), SAME_AFTER_PUSHES)
    _train(reference, seed=99, now=2e9)
    _train(after, seed=99, now=2e9)
    _assert_rows_equal(_rows(reference, "user"), _rows(after, "user"), SAME_AFTER_PUSHES)


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("two")
    cluster = _cluster(2)
    _train(cluster, seed=5)
    return _snapshot_cluster(cluster, root, seed=5)


def test_refuses_a_missing_shard(two_shards, tmp_path):
    with pytest.raises(ReshardError, match=r"had 2 shards; missing shard\(s\) \[1\]"):
        reshard(two_shards[:1], 4, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("snap-*"))


def test_refuses_mixed_shard_counts(two_shards, tmp_path):
    three = _cluster(3)
    _train(three, seed=6)
    others = _snapshot_cluster(three, tmp_path, seed=6)
    with pytest.raises(ReshardError, match="clusters of different sizes"):
        reshard([two_shards[0], others[1]], 4, tmp_path / "out")
    with pytest.raises(ReshardError, match="shard 0 given twice"):
        reshard([two_shards[0], two_shards[0]], 4, tmp_path / "out")


def test_refuses_a_chain_that_does_not_verify(two_shards, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(two_shards[1], damaged)
    newest = sorted(damaged.glob("snap-*"))[-1]
    victim = next(newest.glob("*.rows.values.npy"))
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ReshardError, match=rf"{newest.name} does not verify \(.*crc32"):
        reshard([two_shards[0], damaged], 4, tmp_path / "out")
    assert not any((tmp_path / "out").rglob("snap-*"))


def test_refuses_while_a_server_holds_an_old_shard(two_shards, tmp_path):
    running = SnapshotStore(two_shards[1])
    running.lock()
    try:
        with pytest.raises(ReshardError, match="locked: a server still writes snapshots there"):
            reshard(two_shards, 4, tmp_path / "out")
    finally:
        running.unlock()
    assert not any((tmp_path / "out").rglob("snap-*"))


def test_refuses_to_write_over_snapshots(two_shards, tmp_path):
    reshard(two_shards, 3, tmp_path / "out")
    with pytest.raises(ReshardError, match="shard-0 already holds snapshots"):
        reshard(two_shards, 3, tmp_path / "out")


def test_cli_reshards_and_reports_errors(two_shards, tmp_path, capsys):
    args = ["snapshot", "reshard", "--shards", "3", "--to", str(tmp_path / "out")]
    for d in two_shards:
        args += ["--from", str(d)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "resharded 2 -> 3 shards" in out
    assert f"--shard-index 2 --num-shards 3 --snapshot-dir {tmp_path / 'out'}/shard-2" in out
    assert main(["snapshot", "reshard", "--from", str(two_shards[0]), "--shards", "2",
                 "--to", str(tmp_path / "other")]) == 1  # fmt: skip
    assert "missing shard(s) [1]" in capsys.readouterr().err
