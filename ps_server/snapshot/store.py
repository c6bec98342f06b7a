"""A directory of snapshots: write one, find the newest consistent chain, keep the last K.

Layout of the root directory::

    snap-00000007-full/      manifest.json + t0000.rows.keys.npy ...
    snap-00000008-incr/      rows and tombstones changed since snap 7
    snap-00000009-incr.partial/   being written (or left by a crash: an orphan)
    .lock                    held by the one process that writes here

A chain is a full snapshot followed by incrementals, each naming the previous one as
its parent. Restore walks the newest chain whose full verifies, as far as its links
verify; whatever newer snapshot it cannot use is reported, so the server knows it may
have lost updates.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ps_server.snapshot.content import DenseSnapshot, LoadedSnapshot, TableSnapshot
from ps_server.snapshot.files import (
    CorruptSnapshotError,
    FileEntry,
    check_file_size,
    fsync_dir,
    publish_files,
    read_json,
    read_npy,
    to_json_value,
    verify_file,
    write_json,
    write_npy,
)
from ps_server.snapshot.format import (
    DELETING_SUFFIX,
    MANIFEST_NAME,
    PARTIAL_SUFFIX,
    DenseEntry,
    Manifest,
    ServerInfo,
    TableEntry,
    parse_snapshot_dir_name,
    parse_work_dir_name,
    snapshot_dir_name,
)
from ps_server.snapshot.records import (
    ChainLinkError,
    ChainSelection,
    RestoreResult,
    SkippedSnapshot,
    SnapshotDir,
    SnapshotDirBusyError,
    WrittenSnapshot,
)

_LOGGER = logging.getLogger(__name__)
_LOCK_NAME = ".lock"

_T = TypeVar("_T")


class SnapshotStore:
    """Snapshots of one server in one directory.

    >>> store = SnapshotStore("/var/lib/mps/shard-0")
    >>> written = store.write("full", {"user": section}, dense=None, server=info)
    >>> result = store.restore()          # newest verified chain, oldest first
    >>> store.retain(keep_full=2)         # drop older chains and orphans
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._lock_fd: int | None = None

    # ------------------------------------------------------------ listing

    def snapshots(self) -> list[SnapshotDir]:
        """Every directory with a final snapshot name, by ascending seq."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in os.scandir(self.root):
            parsed = parse_snapshot_dir_name(entry.name)
            if parsed and entry.is_dir(follow_symlinks=False):
                found.append(SnapshotDir(parsed[0], parsed[1], Path(entry.path)))
        return sorted(found, key=lambda s: s.seq)

    def work_dirs(self) -> list[Path]:
        """``.partial`` and ``.deleting`` directories: unfinished writes and deletes."""
        if not self.root.is_dir():
            return []
        return sorted(
            Path(e.path)
            for e in os.scandir(self.root)
            if parse_work_dir_name(e.name) and e.is_dir(follow_symlinks=False)
        )

    def next_seq(self) -> int:
        seqs = [s.seq for s in self.snapshots()]
        seqs += [w[0] for p in self.work_dirs() if (w := parse_work_dir_name(p.name))]
        return max(seqs, default=0) + 1

    # ------------------------------------------------------------ lock

    def lock(self) -> None:
        """Take the directory's writer lock for the life of this object (or ``unlock``)."""
        if self._lock_fd is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SnapshotDirBusyError(
                f"{self.root}: another process is writing snapshots here"
            ) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------ write

    def write(
        self,
        kind: str,
        tables: Mapping[str, TableSnapshot],
        dense: DenseSnapshot | None,
        server: ServerInfo,
        parent: Manifest | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> WrittenSnapshot:
        """Write one snapshot durably and return its manifest.

        ``kind="incr"`` needs ``parent`` (the previous snapshot of the chain) and each
        table's ``since_version`` must equal the parent's ``complete_version`` for it,
        so a chain never has a gap. Nothing is written if the input is malformed.
        """
        started = time.monotonic()
        if kind == "full" and parent is not None:
            raise ValueError("a full snapshot has no parent")
        if kind == "incr":
            if parent is None:
                raise ValueError("an incremental snapshot needs its parent's manifest")
            _check_continues(parent, tables)
        for name, section in tables.items():
            section.validate(name)
        extra_json = to_json_value(dict(extra or {}), "extra")
        metas = {
            name: to_json_value(dict(s.meta), f"tables.{name}.meta") for name, s in tables.items()
        }
        dense_meta = to_json_value(dict(dense.meta), "dense.meta") if dense else None

        self.root.mkdir(parents=True, exist_ok=True)
        seq = self.next_seq()
        name = snapshot_dir_name(seq, kind)
        work = self.root / (name + PARTIAL_SUFFIX)
        work.mkdir()
        try:
            table_entries, dense_entry, files = _write_arrays(
                work, tables, metas, dense, dense_meta
            )
            manifest = Manifest(
                kind=kind,
                seq=seq,
                base_seq=seq if parent is None else parent.base_seq,
                parent_seq=None if parent is None else parent.seq,
                created_unix=time.time(),
                server=server,
                tables=table_entries,
                dense=dense_entry,
                files=files,
                extra=extra_json,
            )
            write_json(work / MANIFEST_NAME, manifest.to_json())
            final = self.root / name
            os.rename(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        fsync_dir(self.root)
        return WrittenSnapshot(final, manifest, time.monotonic() - started)

    # ------------------------------------------------------------ read

    def read_manifest(self, snap: SnapshotDir | Path) -> Manifest:
        """Parse and sanity-check a snapshot's manifest (no file contents read)."""
        path = snap.path if isinstance(snap, SnapshotDir) else Path(snap)
        try:
            manifest = Manifest.from_json(read_json(path / MANIFEST_NAME))
        except CorruptSnapshotError as exc:
            raise CorruptSnapshotError(f"{path.name}: {exc}") from None
        parsed = parse_snapshot_dir_name(path.name)
        if parsed and parsed != (manifest.seq, manifest.kind):
            raise CorruptSnapshotError(
                f"{path.name}: manifest says seq {manifest.seq} kind {manifest.kind}"
            )
        return manifest

    def check_sizes(self, path: Path, manifest: Manifest) -> None:
        """Cheap check: every listed file exists with the listed size."""
        for rel, entry in manifest.files.items():
            check_file_size(path / rel, entry)

    def verify(self, path: Path, manifest: Manifest | None = None) -> Manifest:
        """Full check of a snapshot (manifest, sizes, checksums) without keeping arrays."""
        manifest = manifest or self.read_manifest(path)
        self.check_sizes(path, manifest)
        for rel, entry in manifest.files.items():
            verify_file(path / rel, entry)
        return manifest

    def load(self, path: Path, manifest: Manifest | None = None) -> LoadedSnapshot:
        """Read a snapshot back, verifying every file while reading it."""
        manifest = manifest or self.read_manifest(path)
        self.check_sizes(path, manifest)

        def get(rel: str) -> np.ndarray:
            return read_npy(path / rel, manifest.files[rel])

        tables = {}
        for name, entry in manifest.tables.items():
            tables[name] = TableSnapshot.from_entry(entry, get, get)
            try:
                tables[name].validate(name)
            except (TypeError, ValueError) as exc:
                raise CorruptSnapshotError(f"{path.name}: {exc}") from None
        dense = None
        if manifest.dense is not None:
            dense = DenseSnapshot(
                arrays={n: get(rel) for n, rel in manifest.dense.files.items()},
                version=manifest.dense.version,
                states={n: get(rel) for n, rel in manifest.dense.state_files.items()},
                meta=manifest.dense.meta,
            )
        return LoadedSnapshot(path, manifest, tables, dense)

    # ------------------------------------------------------------ chain selection

    def select_chain(self, check: Callable[[Path, Manifest], _T]) -> ChainSelection[_T]:
        """The newest chain whose full passes ``check``, extended while links pass it.

        ``check(path, manifest)`` verifies a snapshot (raising ``CorruptSnapshotError``)
        and returns what the caller wants kept (the loaded arrays, or nothing). Each
        failure is logged as a warning. Snapshots newer than the chain's end that are
        not in it are returned as skipped, with the reason.
        """
        snaps = self.snapshots()
        manifests: dict[int, Manifest] = {}
        reasons: dict[int, str] = {}
        for snap in snaps:
            try:
                manifest = self.read_manifest(snap)
                self.check_sizes(snap.path, manifest)
                manifests[snap.seq] = manifest
            except CorruptSnapshotError as exc:
                reasons[snap.seq] = str(exc)
                _LOGGER.warning("snapshot %s unusable: %s", snap.path, exc)
        children: dict[int, list[Manifest]] = {}
        for manifest in manifests.values():
            if manifest.kind == "incr" and manifest.parent_seq is not None:  # both or neither
                children.setdefault(manifest.parent_seq, []).append(manifest)

        def attempt(snap_path: Path, manifest: Manifest) -> tuple[bool, Any]:
            try:
                return True, check(snap_path, manifest)
            except CorruptSnapshotError as exc:
                reasons[manifest.seq] = str(exc)
                _LOGGER.warning("snapshot %s unusable: %s", snap_path, exc)
                return False, None

        by_seq = {s.seq: s for s in snaps}
        chain: list[tuple[Manifest, Any]] = []
        fulls = sorted((m for m in manifests.values() if m.kind == "full"), key=lambda m: -m.seq)
        for full in fulls:
            ok, kept = attempt(by_seq[full.seq].path, full)
            if not ok:
                continue
            chain.append((full, kept))
            while True:
                last = chain[-1][0]
                linked = None
                for child in sorted(children.get(last.seq, []), key=lambda m: -m.seq):
                    if child.base_seq != full.seq:
                        reasons.setdefault(child.seq, f"base {child.base_seq} != {full.seq}")
                        continue
                    try:
                        _check_link(last, child)
                    except ChainLinkError as exc:
                        reasons[child.seq] = str(exc)
                        _LOGGER.warning("snapshot %s unusable: %s", by_seq[child.seq].path, exc)
                        continue
                    ok, kept = attempt(by_seq[child.seq].path, child)
                    if ok:
                        linked = (child, kept)
                        break
                if linked is None:
                    break
                chain.append(linked)
            break
        end = chain[-1][0].seq if chain else 0
        used = {m.seq for m, _ in chain}
        skipped = [
            SkippedSnapshot(
                s.seq,
                s.kind,
                s.path,
                reasons.get(s.seq, "not reachable from the restored chain"),
            )
            for s in snaps
            if s.seq > end and s.seq not in used
        ]
        if skipped:
            _LOGGER.warning(
                "restore skips %d snapshot(s) newer than seq %d: %s",
                len(skipped),
                end,
                ", ".join(s.path.name for s in skipped),
            )
        return ChainSelection(chain, skipped, self.work_dirs())

    def restore(self) -> RestoreResult:
        """Load the newest consistent chain (see ``select_chain``), verified, oldest first."""
        started = time.monotonic()
        selection = self.select_chain(self.load)
        chain = [loaded for _, loaded in selection.chain]
        return RestoreResult(
            chain, selection.skipped, selection.orphans, time.monotonic() - started
        )

    # ------------------------------------------------------------ retention

    def retain(self, keep_full: int) -> list[Path]:
        """Keep the newest ``keep_full`` full chains; delete older snapshots and orphans.

        Fulls whose manifest or file sizes are bad do not count as kept chains. A
        directory is renamed to ``.deleting`` before it is removed, so a crash midway
        never leaves a half-deleted snapshot under a final name. Returns what was removed.
        """
        if keep_full < 1:
            raise ValueError(f"keep_full must be >= 1, got {keep_full}")
        snaps = self.snapshots()
        good_fulls = []
        for snap in reversed(snaps):
            if snap.kind != "full":
                continue
            with contextlib.suppress(CorruptSnapshotError):
                self.check_sizes(snap.path, self.read_manifest(snap))
                good_fulls.append(snap.seq)
        doomed: list[Path] = []
        if len(good_fulls) > keep_full:
            cutoff = good_fulls[keep_full - 1]
            doomed = [s.path for s in snaps if s.seq < cutoff]
        removed = []
        for path in doomed:
            target = path.with_name(path.name + DELETING_SUFFIX)
            os.rename(path, target)
            fsync_dir(self.root)
            shutil.rmtree(target)
            removed.append(path)
        for path in self.work_dirs():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        if removed:
            fsync_dir(self.root)
            _LOGGER.info("retention removed %s", ", ".join(p.name for p in removed))
        return removed

    def iter_manifests(self) -> Iterator[tuple[SnapshotDir, Manifest | CorruptSnapshotError]]:
        """Each snapshot with its manifest, or the error that stops reading it."""
        for snap in self.snapshots():
            try:
                yield snap, self.read_manifest(snap)
            except CorruptSnapshotError as exc:
                yield snap, exc


def _chain_gap(
    parent: Manifest, tables: Mapping[str, TableSnapshot | TableEntry]
) -> tuple[str, int, int] | None:
    """The first table whose ``since_version`` is not where ``parent`` ends (0 for a table
    it lacks), as ``(name, since_version, parent's end)``; None where every table continues."""
    for name, section in tables.items():
        entry = parent.tables.get(name)
        expected = entry.complete_version if entry else 0
        if section.since_version != expected:
            return name, section.since_version, expected
    return None


def _check_continues(parent: Manifest, tables: Mapping[str, TableSnapshot]) -> None:
    if gap := _chain_gap(parent, tables):
        name, since, expected = gap
        raise ValueError(
            f"table {name!r}: incremental since_version {since} does not "
            f"continue parent seq {parent.seq} (complete_version {expected})"
        )


def _check_link(parent: Manifest, child: Manifest) -> None:
    if gap := _chain_gap(parent, child.tables):
        name, since, expected = gap
        raise ChainLinkError(
            f"seq {child.seq} table {name!r} starts at version {since}, "
            f"parent seq {parent.seq} ends at {expected}"
        )


def _write_arrays(
    work: Path,
    tables: Mapping[str, TableSnapshot],
    metas: dict[str, Any],
    dense: DenseSnapshot | None,
    dense_meta: Any,
) -> tuple[dict[str, TableEntry], DenseEntry | None, dict[str, FileEntry]]:
    """Write every array of a snapshot into ``work``; return the manifest's sections."""
    files: dict[str, FileEntry] = {}

    def put(rel: str, array: np.ndarray) -> str:
        files[rel] = write_npy(work, rel, array, publish=False)
        return rel

    table_entries = {}
    for index, (table, section) in enumerate(sorted(tables.items())):
        prefix = f"t{index:04d}"
        table_entries[table] = TableEntry(
            since_version=int(section.since_version),
            complete_version=int(section.complete_version),
            rows=section.num_rows,
            tombstones=int(section.tombstone_keys.shape[0]),
            row_files={f: put(f"{prefix}.rows.{f}.npy", a) for f, a in section.rows.items()},
            tombstone_files={
                "keys": put(f"{prefix}.tombstones.keys.npy", section.tombstone_keys),
                "versions": put(f"{prefix}.tombstones.versions.npy", section.tombstone_versions),
            },
            array_files={f: put(f"{prefix}.arrays.{f}.npy", a) for f, a in section.arrays.items()},
            meta=metas[table],
        )
    dense_entry = None
    if dense is not None:
        names = {n: i for i, n in enumerate(sorted({*dense.arrays, *dense.states}))}
        dense_entry = DenseEntry(
            version=int(dense.version),
            files={n: put(f"dense.{names[n]:04d}.values.npy", a) for n, a in dense.arrays.items()},
            state_files={
                n: put(f"dense.{names[n]:04d}.state.npy", a) for n, a in dense.states.items()
            },
            meta=dense_meta,
        )
    publish_files(work, list(files))
    fsync_dir(work)
    return table_entries, dense_entry, files
