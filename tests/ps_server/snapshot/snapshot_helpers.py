"""Synthetic tables for snapshot tests: a plain-dict reference with versions and tombstones."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ps_server.snapshot.content import DenseSnapshot, TableSnapshot
from ps_server.snapshot.format import ServerInfo
from ps_server.snapshot.store import SnapshotStore

SERVER = ServerInfo(role="training", shard_index=0, num_shards=1, epoch=0xDEADBEEF12345678)


class ReferenceTable:
    """Rows in a dict, every change stamped with the next version, deletes leave tombstones."""

    def __init__(self, dim: int = 4, state_width: int = 2) -> None:
        self.dim = dim
        self.state_width = state_width
        self.version = 0
        self.rows: dict[int, tuple[np.ndarray, np.ndarray, int, int]] = {}
        self.tombstones: list[tuple[int, int]] = []

    def upsert(self, keys, rng: np.random.Generator) -> None:
        for key in keys:
            self.version += 1
            value = rng.standard_normal(self.dim).astype(np.float32)
            state = rng.random(self.state_width).astype(np.float32)
            pushes = self.rows[int(key)][2] + 1 if int(key) in self.rows else 1
            self.rows[int(key)] = (value, state, pushes, self.version)

    def delete(self, keys) -> None:
        for key in keys:
            if int(key) in self.rows:
                self.version += 1
                del self.rows[int(key)]
                self.tombstones.append((int(key), self.version))

    def export_since(self, since: int) -> TableSnapshot:
        keys = [k for k, row in self.rows.items() if row[3] > since]
        dead = [(k, v) for k, v in self.tombstones if v > since]
        return TableSnapshot(
            rows={
                "keys": np.array(keys, dtype=np.uint64),
                "versions": np.array([self.rows[k][3] for k in keys], dtype=np.uint64),
                "values": np.array([self.rows[k][0] for k in keys], dtype=np.float32).reshape(
                    -1, self.dim
                ),
                "opt_state": np.array([self.rows[k][1] for k in keys], dtype=np.float32).reshape(
                    -1, self.state_width
                ),
                "push_counts": np.array([self.rows[k][2] for k in keys], dtype=np.uint32),
            },
            since_version=since,
            complete_version=self.version,
            tombstone_keys=np.array([k for k, _ in dead], dtype=np.uint64),
            tombstone_versions=np.array([v for _, v in dead], dtype=np.uint64),
            arrays={
                "sketch": np.full((2, 8), self.version, dtype=np.uint32),
                "default_row": np.full(self.dim, 0.25, dtype=np.float32),
            },
            meta={"version": self.version, "admit_after": 1, "default_version": 1},
        )

    def snapshot_state(self) -> dict[int, tuple[np.ndarray, np.ndarray, int, int]]:
        return {k: (v[0].copy(), v[1].copy(), v[2], v[3]) for k, v in self.rows.items()}


def assert_section_matches(section: TableSnapshot, expected: dict) -> None:
    """A merged section holds exactly the reference rows (any order)."""
    keys = section.rows["keys"]
    assert sorted(keys.tolist()) == sorted(expected)
    for i, key in enumerate(keys.tolist()):
        value, state, pushes, version = expected[key]
        np.testing.assert_array_equal(section.rows["values"][i], value)
        np.testing.assert_array_equal(section.rows["opt_state"][i], state)
        assert int(section.rows["push_counts"][i]) == pushes
        assert int(section.rows["versions"][i]) == version


def make_dense(version: int, seed: int = 0) -> DenseSnapshot:
    rng = np.random.default_rng(seed)
    return DenseSnapshot(
        arrays={
            "mlp/w1": rng.standard_normal(12).astype(np.float32),
            "mlp/b1": rng.standard_normal(3).astype(np.float32),
        },
        states={"mlp/w1": rng.standard_normal(24).astype(np.float32)},
        version=version,
        meta={"optimizer": "adam"},
    )


class ReferenceShard:
    """Two reference tables changing between snapshots, and the state at each snapshot."""

    def __init__(self, root: Path, seed: int = 0, server: ServerInfo = SERVER) -> None:
        self.server = server
        self.store = SnapshotStore(root)
        self.rng = np.random.default_rng(seed)
        self.tables = {"user": ReferenceTable(dim=4), "item": ReferenceTable(dim=3)}
        self.states: dict[int, dict[str, dict]] = {0: {"user": {}, "item": {}}}
        self.last = None
        self.dense_version = 0

    def step(self, n_upserts: int = 20, n_deletes: int = 3) -> None:
        for table in self.tables.values():
            table.upsert(self.rng.integers(0, 60, n_upserts, dtype=np.uint64), self.rng)
            table.delete(self.rng.integers(0, 60, n_deletes, dtype=np.uint64))
        self.dense_version += 1

    def snapshot(self, kind: str) -> int:
        parent = None if kind == "full" or self.last is None else self.last
        kind = "full" if parent is None else kind
        since = {n: (parent.tables[n].complete_version if parent else 0) for n in self.tables}
        written = self.store.write(
            kind,
            {n: t.export_since(since[n]) for n, t in self.tables.items()},
            dense=make_dense(self.dense_version, self.dense_version),
            server=self.server,
            parent=parent,
        )
        self.last = written.manifest
        self.states[written.manifest.seq] = {n: t.snapshot_state() for n, t in self.tables.items()}
        return written.manifest.seq

    def path(self, seq: int) -> Path:
        return next(s.path for s in self.store.snapshots() if s.seq == seq)
