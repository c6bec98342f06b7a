"""The snapshotter on real tables (in process): restore is exact, epochs, schedule, metrics."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monolith_ps.config import parse_config
from monolith_ps.routing import shard_of
from ps_server.delta_receiver import DeltaReceiver
from ps_server.snapshot.bundle import write_bundle
from ps_server.snapshot.format import MANIFEST_NAME
from ps_server.snapshot.metrics import SnapshotMetrics
from ps_server.snapshot.records import SnapshotDirBusyError
from ps_server.snapshot.serving_bootstrap import ServingBootstrap
from ps_server.snapshot.snapshotter import NoValidSnapshotError, TrainingSnapshotter
from ps_server.snapshot.tables import SnapshotMismatchError
from ps_server.state import ShardState

CONFIG = {
    "tables": [
        {"name": "user", "dim": 8, "optimizer": "adagrad", "optimizer_args": {"lr": 0.05},
         "initializer": "normal"},
        {"name": "item", "dim": 4, "optimizer": "adam", "initializer": "learned",
         "admit_after": 2},
    ],
    "dense": [{"name": "mlp", "size": 16, "optimizer": "momentum"}],
}  # fmt: skip


def _state(config=CONFIG, role="training", shard=0, shards=1) -> ShardState:
    return ShardState.from_config(parse_config(config), role, shard, shards)


def _snapshotter(state: ShardState, root: Path, **kwargs) -> TrainingSnapshotter:
    options = {"full_interval": 3600.0, "incremental_interval": 3600.0, "keep": 2}
    return TrainingSnapshotter(state, root, **{**options, **kwargs})


def _train(state: ShardState, rng: np.random.Generator, steps: int = 3, now: float = 1e9) -> None:
    for step in range(steps):
        for table in state.tables.values():
            keys = rng.integers(0, 500, 200, dtype=np.uint64)
            table.find_or_insert(keys, now=now + step)
            grads = rng.standard_normal((keys.size, table.dim)).astype(np.float32)
            table.apply_gradients(keys, grads, now=now + step)
        state.dense.push({"mlp": rng.standard_normal(16).astype(np.float32)})
    state.tables["user"].delete(rng.integers(0, 500, 20, dtype=np.uint64))


def _restored(root: Path, **state_options) -> tuple[ShardState, TrainingSnapshotter]:
    """A fresh state restored from ``root`` (nothing there: empty) and its snapshotter."""
    state = _state(**state_options)
    snapshotter = _snapshotter(state, root)
    snapshotter.restore()
    return state, snapshotter


def _cleanly_stopped(root: Path, seed: int) -> ShardState:
    """A trained training state, stopped cleanly (the SIGTERM path) into ``root``."""
    live, snapshotter = _restored(root)
    _train(live, np.random.default_rng(seed))
    snapshotter.close(final=True)
    return live


# CONFIG with table "user" twice as wide: rows of CONFIG do not fit it.
WIDER = {**CONFIG, "tables": [{**CONFIG["tables"][0], "dim": 16}, CONFIG["tables"][1]]}


def _assert_same(a: ShardState, b: ShardState, *, same_cuckoo_rng: bool = True) -> None:
    """Rows, table metadata and dense state are equal. ``same_cuckoo_rng=False`` skips the
    cuckoo walk's random state: a restore rebuilds the index from the rows, so the slots
    (not the rows) may differ, and later inserts may then take different walks."""
    for name in a.tables:
        da = a.tables[name].export_since(0, with_state=True)
        db = b.tables[name].export_since(0, with_state=True)
        oa, ob = np.argsort(da.keys), np.argsort(db.keys)
        np.testing.assert_array_equal(da.keys[oa], db.keys[ob])
        for field in ("values", "versions", "opt_state", "push_counts", "last_update", "usage"):
            np.testing.assert_array_equal(getattr(da, field)[oa], getattr(db, field)[ob], field)
        ma, mb = a.tables[name].export_meta(), b.tables[name].export_meta()
        assert ma.keys() == mb.keys()
        for key in ma:
            if key != "rng" or same_cuckoo_rng:
                np.testing.assert_array_equal(ma[key], mb[key], f"{name} meta {key}")
    va, sa, version_a = a.dense.export()
    vb, sb, version_b = b.dense.export()
    assert version_a == version_b
    np.testing.assert_array_equal(va["mlp"], vb["mlp"])
    np.testing.assert_array_equal(sa["mlp"], sb["mlp"])


def test_restore_is_exact_and_training_continues_identically(tmp_path):
    rng = np.random.default_rng(7)
    live, writer = _restored(tmp_path)
    _train(live, rng)
    assert writer.snapshot(full=True).path.endswith("-full")
    _train(live, rng)
    assert writer.snapshot(full=False).path.endswith("-incr")
    _train(live, rng)
    writer.snapshot(full=False)
    writer.close(final=False)

    restored, reader = _restored(tmp_path)
    _assert_same(live, restored)
    assert restored.epoch != live.epoch  # no clean final snapshot: a new epoch
    more = np.random.default_rng(99)
    _train(live, more, now=2e9)
    _train(restored, np.random.default_rng(99), now=2e9)
    _assert_same(live, restored, same_cuckoo_rng=False)
    reader.close(final=False)


def test_clean_stop_keeps_the_epoch_and_holds_the_directory(tmp_path):
    first = _cleanly_stopped(tmp_path, 1)

    second, second_snapshotter = _restored(tmp_path)
    assert second.epoch == first.epoch
    _assert_same(first, second)
    with pytest.raises(SnapshotDirBusyError, match="another process"):
        _snapshotter(_state(), tmp_path).restore()
    second_snapshotter.close(final=False)


def test_dead_run_after_clean_restore_forces_a_new_epoch(tmp_path):
    first = _cleanly_stopped(tmp_path, 1)
    second, second_snapshotter = _restored(tmp_path)
    assert second.epoch == first.epoch
    second_snapshotter.store.unlock()  # dies: no final snapshot, lock released by the OS
    third = _state()
    _snapshotter(third, tmp_path).restore()
    assert third.epoch not in (first.epoch, 0)


def test_skipped_tail_forces_a_new_epoch_and_a_new_full(tmp_path):
    live, snapshotter = _restored(tmp_path)
    _train(live, np.random.default_rng(3))
    snapshotter.snapshot(full=True)
    _train(live, np.random.default_rng(4))
    snapshotter.close(final=True)
    final = max(tmp_path.glob("snap-*-incr"))
    (final / MANIFEST_NAME).unlink()

    restored, again = _restored(tmp_path)
    assert restored.epoch != live.epoch
    assert again.snapshot(full=False).path.endswith("-full")  # a new chain after a loss
    again.close(final=False)


def test_snapshot_of_another_shard_or_shape_is_refused(tmp_path):
    _cleanly_stopped(tmp_path, 5)
    with pytest.raises(SnapshotMismatchError, match="shard 0 of 1; this server is shard 1 of 2"):
        _snapshotter(_state(shard=1, shards=2), tmp_path).restore()
    with pytest.raises(SnapshotMismatchError, match="table 'user'.*dim or optimizer"):
        _snapshotter(_state(WIDER), tmp_path).restore()


def test_nothing_verifies_refuses_to_start_empty(tmp_path):
    _cleanly_stopped(tmp_path, 6)
    for manifest in tmp_path.glob("snap-*/" + MANIFEST_NAME):
        manifest.write_text("{}")
    with pytest.raises(NoValidSnapshotError, match="none verifies"):
        _snapshotter(_state(), tmp_path).restore()


def test_periodic_snapshots_and_metrics(tmp_path):
    registry = CollectorRegistry()
    live = _state()
    snapshotter = _snapshotter(
        live,
        tmp_path,
        full_interval=0.6,
        incremental_interval=0.15,
        metrics=SnapshotMetrics(registry),
    )
    snapshotter.restore()
    snapshotter.start()
    rng = np.random.default_rng(8)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _train(live, rng, steps=1)
        kinds = {p.name.rsplit("-", 1)[1] for p in tmp_path.glob("snap-*")}
        fulls = len(list(tmp_path.glob("snap-*-full")))
        if kinds == {"full", "incr"} and fulls >= 2:
            break
        time.sleep(0.05)
    snapshotter.close(final=True)
    assert kinds == {"full", "incr"} and fulls >= 2
    assert len(list(tmp_path.glob("snap-*-full"))) <= 2  # keep = 2
    sample = registry.get_sample_value
    assert sample("monolith_ps_snapshots_total", {"kind": "full", "result": "ok"}) >= 2
    assert sample("monolith_ps_snapshot_bytes", {"kind": "full"}) > 0
    assert sample("monolith_ps_snapshot_rows", {"kind": "full"}) > 0
    assert 0 <= sample("monolith_ps_snapshot_age_seconds") < 30
    assert sample("monolith_ps_snapshot_duration_seconds_count", {"kind": "incr"}) >= 1
    assert sample("monolith_ps_restore_rows") == 0


def test_serving_bootstrap_takes_its_shard_from_snapshots_and_bundles(tmp_path):
    live = _cleanly_stopped(tmp_path / "snaps", 9)
    write_bundle([tmp_path / "snaps"], tmp_path / "bundle", dtype="float16")
    user = live.tables["user"].export_since(0)
    for source, dtype in ((tmp_path / "snaps", np.float32), (tmp_path / "bundle", np.float16)):
        for shard in range(2):
            serving = _state(role="serving", shard=shard, shards=2)
            ServingBootstrap(serving, source, DeltaReceiver(serving)).restore()
            mine = shard_of(user.keys, 2) == shard
            values, found = serving.tables["user"].find(user.keys)
            assert found[mine].all() and not found[~mine].any()
            np.testing.assert_allclose(
                values[mine], user.values[mine].astype(dtype), rtol=1e-3, atol=1e-3
            )
            np.testing.assert_allclose(
                serving.dense.export()[0]["mlp"], live.dense.export()[0]["mlp"], rtol=1e-6
            )


def test_serving_bootstrap_refuses_rows_that_do_not_fit(tmp_path):
    _cleanly_stopped(tmp_path / "snaps", 10)
    serving = _state(WIDER, role="serving", shard=0, shards=1)
    with pytest.raises(SnapshotMismatchError, match="table 'user': the bootstrap rows do not fit"):
        ServingBootstrap(serving, tmp_path / "snaps", DeltaReceiver(serving)).restore()


def test_serving_bootstrap_through_the_sync_receiver_sets_cursors(tmp_path):
    live = _cleanly_stopped(tmp_path / "snaps", 11)
    write_bundle([tmp_path / "snaps"], tmp_path / "bundle")
    user = live.tables["user"].export_since(0)
    for source in (tmp_path / "snaps", tmp_path / "bundle"):
        serving = _state(role="serving", shard=1, shards=2)
        receiver = DeltaReceiver(serving)
        ServingBootstrap(serving, source, receiver).restore()
        state = receiver.sync_state()
        cursors = {(c.table, c.source_shard): c for c in state.cursors}
        assert set(cursors) == {("user", 0), ("item", 0)}
        for name, cursor in cursors.items():
            assert cursor.epoch == live.epoch and cursor.source_num_shards == 1
            assert cursor.version == live.tables[name[0]].version
        assert (state.dense_epoch, state.dense_version) == (live.epoch, live.dense.version)
        mine = shard_of(user.keys, 2) == 1
        values, found = serving.tables["user"].find(user.keys[mine])
        assert found.all()
        np.testing.assert_array_equal(values, user.values[mine])


def test_training_bootstrap_from_a_bundle_gets_values_and_fresh_optimizer_state(tmp_path):
    live = _cleanly_stopped(tmp_path / "snaps", 12)
    write_bundle([tmp_path / "snaps"], tmp_path / "bundle")
    for shard in range(2):  # a 1-shard bundle into a 2-shard cluster: each takes its own rows
        fresh = _state(shard=shard, shards=2)
        started = _snapshotter(fresh, tmp_path / f"new-{shard}", bootstrap_from=tmp_path / "bundle")
        started.restore()
        assert fresh.epoch != live.epoch
        for name in ("user", "item"):
            want = live.tables[name].export_since(0)
            mine = shard_of(want.keys, 2) == shard
            got = fresh.tables[name].export_since(0, with_state=True)
            order = np.argsort(got.keys)
            np.testing.assert_array_equal(got.keys[order], np.sort(want.keys[mine]))
            held = dict(zip(want.keys.tolist(), want.values, strict=True))
            np.testing.assert_array_equal(
                got.values[order], np.stack([held[k] for k in got.keys[order].tolist()])
            )
            assert not got.push_counts.any()  # optimizer state starts at the next push
        if shard == 0:  # dense arrays live on training shard 0
            dense = fresh.dense.export()[0]["mlp"]
            np.testing.assert_array_equal(dense, live.dense.export()[0]["mlp"])
        # Adagrad from a fresh accumulator (0.1): value - lr * g / sqrt(0.1 + g^2).
        user = fresh.tables["user"]
        key = user.export_since(0).keys[:1]
        before, _ = user.find(key)
        grad = np.full((1, 8), 0.5, np.float32)
        user.apply_gradients(key, grad)
        after, _ = user.find(key)
        np.testing.assert_allclose(after, before - 0.05 * 0.5 / np.sqrt(0.1 + 0.25), rtol=1e-5)
        started.close(final=True)
        assert len(list((tmp_path / f"new-{shard}").glob("snap-*-full"))) == 1


def test_bootstrap_refuses_what_is_neither_snapshots_nor_a_bundle(tmp_path):
    from ps_server.snapshot.snapshotter import NothingToBootstrapError

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    cases = {
        tmp_path / "other": "holds notes.txt",
        tmp_path / "empty": "is an empty directory",
        tmp_path / "nowhere": "does not exist",
    }
    for path, found in cases.items():
        with pytest.raises(NothingToBootstrapError, match="neither a training snapshot") as err:
            _snapshotter(_state(), tmp_path / "own", bootstrap_from=path).restore()
        assert found in str(err.value)
        assert not list((tmp_path / "own").glob("snap-*"))
        with pytest.raises(FileNotFoundError, match=found):
            serving = _state(role="serving")
            ServingBootstrap(serving, path, DeltaReceiver(serving)).restore()


def test_training_bootstrap_refuses_a_partial_bundle_missing_its_rows(tmp_path):
    from ps_server.snapshot.snapshotter import NothingToBootstrapError

    for shard in range(2):
        live = _state(shard=shard, shards=2)
        writer = _snapshotter(live, tmp_path / f"snaps-{shard}")
        writer.restore()
        keys = np.arange(1, 200, dtype=np.uint64)
        live.tables["user"].find_or_insert(keys[shard_of(keys, 2) == shard])
        writer.close(final=True)
    with pytest.raises(ValueError, match=r"shards \[1\] are missing.*--allow-partial"):
        write_bundle([tmp_path / "snaps-0"], tmp_path / "partial")
    assert not (tmp_path / "partial").exists()
    write_bundle([tmp_path / "snaps-0"], tmp_path / "partial", allow_partial=True)
    # Shard 1 of 2 owns only keys of old shard 1: refused. Shard 0 of 2 has all it needs.
    with pytest.raises(NothingToBootstrapError, match=r"without training shards \[1\] of 2"):
        _snapshotter(
            _state(shard=1, shards=2), tmp_path / "own-1", bootstrap_from=tmp_path / "partial"
        ).restore()
    _snapshotter(
        _state(shard=0, shards=2), tmp_path / "own-0", bootstrap_from=tmp_path / "partial"
    ).restore()


def test_no_empty_snapshot_beside_snapshots_with_rows_after_an_empty_restore(tmp_path):
    from ps_server.snapshot.snapshotter import EmptyOverwriteError

    _cleanly_stopped(tmp_path / "snaps", 13)
    # A server that restored nothing (its own directory was empty at the time) while rows
    # appeared in it since, e.g. copied in by an operator: its empty state is not written.
    empty, late = _restored(tmp_path / "late")
    for path in (tmp_path / "snaps").glob("snap-*"):
        path.rename(tmp_path / "late" / path.name)
    with pytest.raises(EmptyOverwriteError, match="holds no rows"):
        late.snapshot(full=True)
    empty.tables["user"].find_or_insert(np.array([1], np.uint64))  # now it has changed
    late.snapshot(full=True)
    late.close(final=False)
