"""Writing snapshots, restoring the newest consistent chain, falling back past damage."""

from __future__ import annotations

import errno
import logging
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from snapshot_helpers import (
    SERVER,
    ReferenceShard,
    ReferenceTable,
    assert_section_matches,
    make_dense,
)

from ps_server.snapshot import store as store_module
from ps_server.snapshot.content import TableSnapshot
from ps_server.snapshot.files import CorruptSnapshotError
from ps_server.snapshot.format import MANIFEST_NAME
from ps_server.snapshot.merge import merge_chain
from ps_server.snapshot.records import SnapshotDirBusyError
from ps_server.snapshot.store import SnapshotStore

_STORE_LOGGER = "ps_server.snapshot.store"


def assert_restores_state(store: SnapshotStore, expected: dict[str, dict]) -> None:
    result = store.restore()
    merged = merge_chain(result.chain)
    for name, rows in expected.items():
        assert_section_matches(merged.tables[name], rows)


def test_full_snapshot_round_trip(snap_root, rng):
    table = ReferenceTable(dim=8, state_width=3)
    table.upsert(rng.integers(0, 1000, 300, dtype=np.uint64), rng)
    table.delete(rng.integers(0, 1000, 50, dtype=np.uint64))
    dense = make_dense(version=7)
    store = SnapshotStore(snap_root)
    written = store.write(
        "full",
        {"user": table.export_since(0)},
        dense=dense,
        server=SERVER,
        extra={"reason": "test"},
    )
    assert written.path.name == "snap-00000001-full"
    assert written.rows == len(table.rows)
    assert written.bytes == sum(p.stat().st_size for p in written.path.glob("*.npy"))

    result = store.restore()
    assert [s.seq for s in result.chain] == [1]
    assert not result.lost_updates and not result.skipped and not result.orphans
    loaded = result.chain[0]
    assert loaded.manifest.server == SERVER
    assert loaded.manifest.extra == {"reason": "test"}
    section = loaded.tables["user"]
    assert_section_matches(section, table.snapshot_state())
    np.testing.assert_array_equal(section.arrays["sketch"], table.export_since(0).arrays["sketch"])
    assert section.meta == {"version": table.version, "admit_after": 1, "default_version": 1}
    assert section.complete_version == table.version
    assert sorted(section.tombstone_keys.tolist()) == sorted(k for k, _ in table.tombstones)
    assert loaded.dense.version == 7
    for name, array in dense.arrays.items():
        np.testing.assert_array_equal(loaded.dense.arrays[name], array)
    assert list(loaded.dense.states) == ["mlp/w1"]
    np.testing.assert_array_equal(loaded.dense.states["mlp/w1"], dense.states["mlp/w1"])
    assert loaded.dense.meta == {"optimizer": "adam"}
    for npy in written.path.glob("*.npy"):
        np.load(npy, allow_pickle=False)


def test_incremental_chain_restores_every_change(snap_root):
    trainer = ReferenceShard(snap_root)
    kinds = ["full", "incr", "incr", "incr"]
    for kind in kinds:
        trainer.step()
        seq = trainer.snapshot(kind)
    result = trainer.store.restore()
    assert [s.manifest.kind for s in result.chain] == kinds
    assert [s.manifest.parent_seq for s in result.chain] == [None, 1, 2, 3]
    incr = result.chain[-1].tables["user"]
    assert incr.since_version == result.chain[-2].tables["user"].complete_version
    assert incr.num_rows < len(trainer.tables["user"].rows) + 20
    assert_restores_state(trainer.store, trainer.states[seq])
    assert merge_chain(result.chain).dense.version == trainer.dense_version


def test_table_added_mid_chain_and_table_missing_later_carry_over(snap_root, rng):
    store = SnapshotStore(snap_root)
    a, b = ReferenceTable(), ReferenceTable()
    a.upsert([1, 2, 3], rng)
    full = store.write("full", {"a": a.export_since(0)}, None, SERVER).manifest
    b.upsert([7, 8], rng)
    incr = store.write(
        "incr", {"a": a.export_since(a.version), "b": b.export_since(0)}, None, SERVER, full
    ).manifest
    a.upsert([4], rng)
    store.write("incr", {"a": a.export_since(3)}, None, SERVER, incr)
    merged = merge_chain(store.restore().chain)
    assert_section_matches(merged.tables["a"], a.snapshot_state())
    assert_section_matches(merged.tables["b"], b.snapshot_state())
    assert merged.dense is None


def test_incremental_that_does_not_continue_its_parent_is_refused(snap_root, rng):
    store = SnapshotStore(snap_root)
    table = ReferenceTable()
    table.upsert([1, 2, 3], rng)
    full = store.write("full", {"t": table.export_since(0)}, None, SERVER).manifest
    table.upsert([4], rng)
    with pytest.raises(ValueError, match="does not continue parent seq 1"):
        store.write("incr", {"t": table.export_since(1)}, None, SERVER, full)
    with pytest.raises(ValueError, match="needs its parent"):
        store.write("incr", {"t": table.export_since(3)}, None, SERVER)
    assert [s.seq for s in store.snapshots()] == [1] and not store.work_dirs()


@pytest.mark.parametrize(
    ("field", "bad", "message"),
    [
        ("keys", np.array([1, 2], dtype=np.int64), "uint64"),
        ("values", np.zeros((3, 2), dtype=np.float32), r"\(3,\) rows, keys have 2"),
        ("bad name", np.zeros(2, dtype=np.float32), "row field name"),
    ],
)
def test_malformed_section_is_refused_before_writing(snap_root, field, bad, message):
    rows = {
        "keys": np.array([1, 2], dtype=np.uint64),
        "versions": np.array([1, 2], dtype=np.uint64),
        field: bad,
    }
    section = TableSnapshot(rows=rows, since_version=0, complete_version=2)
    with pytest.raises((TypeError, ValueError), match=message):
        SnapshotStore(snap_root).write("full", {"t": section}, None, SERVER)
    assert not SnapshotStore(snap_root).snapshots()


# ---------------------------------------------------------------- damage and fallback


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) * 2 // 3] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-5])


def _largest_npy(snapshot: Path) -> Path:
    return max(snapshot.glob("*.npy"), key=lambda p: p.stat().st_size)


_DAMAGE = {
    "flip a byte": lambda snap: _flip_byte(_largest_npy(snap)),
    "truncate a file": lambda snap: _truncate(_largest_npy(snap)),
    "delete a file": lambda snap: _largest_npy(snap).unlink(),
    "delete the manifest": lambda snap: (snap / MANIFEST_NAME).unlink(),
    "flip a manifest byte": lambda snap: _flip_byte(snap / MANIFEST_NAME),
}


@pytest.fixture
def two_chains(snap_root) -> ReferenceShard:
    """F1 I2 I3, then F4 I5 I6."""
    trainer = ReferenceShard(snap_root)
    for kind in ["full", "incr", "incr", "full", "incr", "incr"]:
        trainer.step()
        trainer.snapshot(kind)
    return trainer


@pytest.mark.parametrize("damage", sorted(_DAMAGE))
@pytest.mark.parametrize(
    ("damaged", "chain", "skipped"),
    [(6, [4, 5], [6]), (5, [4], [5, 6]), (4, [1, 2, 3], [4, 5, 6])],
    ids=["incr-tail", "incr-middle", "newest-full"],
)
def test_damage_is_detected_and_restore_falls_back(
    two_chains, caplog, damage, damaged, chain, skipped
):
    _DAMAGE[damage](two_chains.path(damaged))
    with caplog.at_level(logging.WARNING, logger=_STORE_LOGGER):
        result = two_chains.store.restore()
    assert [s.seq for s in result.chain] == chain
    assert [s.seq for s in result.skipped] == skipped
    assert result.lost_updates
    assert any(f"snap-{damaged:08d}" in r.getMessage() for r in caplog.records)
    assert "restore skips" in caplog.text
    assert_restores_state(two_chains.store, two_chains.states[chain[-1]])


def test_every_snapshot_damaged_restores_nothing_and_says_so(two_chains):
    for seq in (1, 4):
        _DAMAGE["flip a byte"](two_chains.path(seq))
    result = two_chains.store.restore()
    assert result.empty and result.lost_updates
    assert [s.seq for s in result.skipped] == [1, 2, 3, 4, 5, 6]


def test_verify_reports_damage_without_loading(two_chains):
    store = two_chains.store
    store.verify(two_chains.path(5))
    _flip_byte(_largest_npy(two_chains.path(5)))
    with pytest.raises(CorruptSnapshotError, match="crc32"):
        store.verify(two_chains.path(5))


def test_half_written_snapshot_dir_is_ignored_then_cleaned(two_chains):
    store = two_chains.store
    half = store.root / "snap-00000007-incr.partial"
    half.mkdir()
    (half / "t0000.rows.keys.npy.tmp").write_bytes(b"\x93NUMPY partial")
    result = store.restore()
    assert [s.seq for s in result.chain] == [4, 5, 6]
    assert not result.lost_updates
    assert result.orphans == [half]
    trainer_seq = two_chains.snapshot("incr")
    assert trainer_seq == 8
    removed = store.retain(keep_full=2)
    assert half in removed and not half.exists()


_CRASHING_WRITER = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from ps_server.snapshot import store as store_module
    from ps_server.snapshot.content import TableSnapshot
    from ps_server.snapshot.format import ServerInfo

    real_write = store_module.write_npy
    calls = []

    def write_then_die(directory, name, array, **kwargs):
        calls.append(name)
        if len(calls) == int(sys.argv[2]):
            os._exit(9)  # dies like SIGKILL: no cleanup, no exception handlers
        return real_write(directory, name, array, **kwargs)

    store_module.write_npy = write_then_die
    n = 1000
    keys = np.arange(n, dtype=np.uint64)
    section = TableSnapshot(
        rows={"keys": keys, "versions": keys + 1, "values": np.ones((n, 8), np.float32)},
        since_version=0, complete_version=n,
    )
    store_module.SnapshotStore(sys.argv[1]).write(
        "full", {"t": section}, None, ServerInfo("training", 0, 1, 1)
    )
    """
)


def test_crash_while_writing_keeps_the_previous_chain(two_chains):
    store = two_chains.store
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASHING_WRITER, str(store.root), "3"],
        capture_output=True,
        timeout=120,
        cwd=Path(__file__).parents[3],
    )
    assert crashed.returncode == 9, crashed.stderr.decode()
    assert [p.name for p in store.work_dirs()] == ["snap-00000007-full.partial"]
    result = store.restore()
    assert [s.seq for s in result.chain] == [4, 5, 6] and not result.lost_updates
    assert_restores_state(store, two_chains.states[6])
    assert two_chains.snapshot("full") == 8
    store.retain(keep_full=1)
    assert [s.seq for s in store.snapshots()] == [8] and not store.work_dirs()


# ---------------------------------------------------------------- retention and lock


def test_retention_keeps_the_last_k_chains(snap_root):
    trainer = ReferenceShard(snap_root)
    for kind in ["full", "incr", "full", "incr", "incr", "full", "full", "incr"]:
        trainer.step(5, 1)
        trainer.snapshot(kind)
    removed = trainer.store.retain(keep_full=2)
    assert [p.name for p in removed] == [
        "snap-00000001-full",
        "snap-00000002-incr",
        "snap-00000003-full",
        "snap-00000004-incr",
        "snap-00000005-incr",
    ]
    assert [s.seq for s in trainer.store.snapshots()] == [6, 7, 8]
    assert_restores_state(trainer.store, trainer.states[8])
    assert trainer.store.retain(keep_full=2) == []
    with pytest.raises(ValueError, match="keep_full"):
        trainer.store.retain(keep_full=0)


def test_retention_does_not_count_a_broken_full(snap_root):
    trainer = ReferenceShard(snap_root)
    for kind in ["full", "full", "full"]:
        trainer.step(5, 1)
        trainer.snapshot(kind)
    (trainer.path(3) / MANIFEST_NAME).unlink()
    trainer.store.retain(keep_full=1)
    assert [s.seq for s in trainer.store.snapshots()] == [2, 3]
    assert [s.seq for s in trainer.store.restore().chain] == [2]


def test_writer_lock_is_exclusive(snap_root):
    first, second = SnapshotStore(snap_root), SnapshotStore(snap_root)
    first.lock()
    with pytest.raises(SnapshotDirBusyError, match="another process"):
        second.lock()
    first.unlock()
    second.lock()
    second.unlock()


# ---------------------------------------------------------------- property: any damage


def _expected_chain(kinds: list[str], damaged: int | None) -> list[int]:
    """Seqs restore must pick: the newest intact full and its intact prefix of links."""
    chains: list[list[int]] = []
    for seq, kind in enumerate(kinds, start=1):
        if kind == "full" or not chains:
            chains.append([seq])
        else:
            chains[-1].append(seq)
    for chain in reversed(chains):
        if chain[0] == damaged:
            continue
        return chain[: chain.index(damaged)] if damaged in chain else chain
    return []


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    kinds=st.lists(st.sampled_from(["full", "incr", "incr"]), min_size=1, max_size=6),
    damage=st.sampled_from(sorted(_DAMAGE) + [None]),
    damaged_index=st.integers(min_value=0, max_value=5),
    seed=st.integers(0, 2**16),
)
def test_restore_is_the_newest_intact_state_under_any_single_damage(
    kinds, damage, damaged_index, seed
):
    kinds = ["full", *kinds[1:]]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = ReferenceShard(Path(tmp) / "snaps", seed)
        for kind in kinds:
            trainer.step(8, 2)
            trainer.snapshot(kind)
        damaged = None
        if damage is not None:
            damaged = damaged_index % len(kinds) + 1
            _DAMAGE[damage](trainer.path(damaged))
        expected = _expected_chain(kinds, damaged)
        result = trainer.store.restore()
        assert [s.seq for s in result.chain] == expected
        assert result.lost_updates == ((expected[-1] if expected else 0) < len(kinds))
        if expected:
            assert_restores_state(trainer.store, trainer.states[expected[-1]])


def test_failed_write_leaves_nothing_behind(two_chains, monkeypatch):
    """A write that fails midway (disk full) removes its partial directory."""
    real_write = store_module.write_npy
    calls = []

    def write_until_full(directory, name, array, **kwargs):
        calls.append(name)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(directory, name, array, **kwargs)

    monkeypatch.setattr(store_module, "write_npy", write_until_full)
    with pytest.raises(OSError, match="No space left"):
        two_chains.snapshot("incr")
    monkeypatch.undo()
    store = two_chains.store
    assert not store.work_dirs() and [s.seq for s in store.snapshots()] == [1, 2, 3, 4, 5, 6]
    assert_restores_state(store, two_chains.states[6])
    assert two_chains.snapshot("incr") == 7
