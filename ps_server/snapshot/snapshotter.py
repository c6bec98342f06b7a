"""Snapshots of a running server: periodic, on demand, on SIGTERM, and the start-up restore.

``make_snapshotter(state, settings, metrics)`` is the server's ``SnapshotterFactory``:

- a training server with ``--snapshot-dir`` restores the newest consistent chain before
  it reports SERVING, then writes a full snapshot every ``snapshot.full_interval`` and
  incrementals every ``snapshot.incremental_interval`` in between, keeps the last
  ``snapshot.keep`` full chains, and writes a final snapshot when it stops;
- a serving server with ``--bootstrap-from`` loads its shard's rows from a training
  snapshot directory or a bundle written by ``mps bundle``.

Epochs: a restore keeps the snapshot's epoch only when the previous run ended with a
clean final snapshot (SIGTERM, after draining RPCs) and no run started from it since;
any other restore may have lost updates, so the server takes a new epoch and the sync
agent resyncs serving in full. A ``session.json`` next to the snapshots records which
snapshot the current run started from.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monolith_ps.logs import fields
from monolith_ps.routing import can_share_keys
from ps_server.hooks import SnapshotResult
from ps_server.snapshot.bundle import (
    is_bundle,
    missing_shards,
    not_a_source_message,
    read_bundle,
)
from ps_server.snapshot.files import write_json
from ps_server.snapshot.format import Manifest, ServerInfo
from ps_server.snapshot.merge import merge_chain
from ps_server.snapshot.metrics import SnapshotMetrics
from ps_server.snapshot.records import RestoreResult
from ps_server.snapshot.reshard import RESHARDED_FROM
from ps_server.snapshot.serving_bootstrap import ServingBootstrap
from ps_server.snapshot.store import SnapshotStore
from ps_server.snapshot.tables import (
    SnapshotMismatchError,
    dense_section,
    load_dense,
    load_serving_table,
    load_table,
    table_section,
)
from ps_server.state import new_epoch

if TYPE_CHECKING:
    from ps_server.delta_receiver import DeltaReceiver
    from ps_server.metrics import ServerMetrics
    from ps_server.settings import ServerSettings
    from ps_server.state import ShardState

__all__ = [
    "EmptyOverwriteError",
    "NoValidSnapshotError",
    "NothingToBootstrapError",
    "TrainingSnapshotter",
    "make_snapshotter",
]

_LOGGER = logging.getLogger(__name__)
SESSION_NAME = "session.json"
CLEAN_SHUTDOWN = "clean_shutdown"


class NoValidSnapshotError(RuntimeError):
    """Snapshots exist but none verifies: starting empty would throw the model away."""


class NothingToBootstrapError(RuntimeError):
    """``--bootstrap-from`` names nothing a server can start from (the message says what
    it found there)."""


class EmptyOverwriteError(RuntimeError):
    """A snapshot of a server that holds nothing would join a directory of snapshots with
    rows: after a restore that loaded nothing, that hides the model instead of saving it."""


class TrainingSnapshotter:
    """Writes and restores the snapshots of one training shard (see the module doc)."""

    def __init__(
        self,
        state: ShardState,
        snapshot_dir: str | Path,
        full_interval: float,
        incremental_interval: float,
        keep: int,
        metrics: SnapshotMetrics | None = None,
        bootstrap_from: str | Path | None = None,
    ) -> None:
        if state.role != "training":
            raise ValueError(f"a {state.role} server does not write snapshots")
        self.state = state
        self.store = SnapshotStore(snapshot_dir)
        self.full_interval = full_interval
        self.incremental_interval = incremental_interval
        self.keep = keep
        self.metrics = metrics
        self.bootstrap_from = Path(bootstrap_from) if bootstrap_from else None
        self._write_lock = threading.Lock()
        self._parent: Manifest | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._restored_rows: int | None = None  # None until restore() ran

    # ------------------------------------------------------------ restore

    def restore(self) -> None:
        """Load the newest consistent chain and choose the epoch; call before SERVING.

        Takes the directory's writer lock for the life of the server (released if the
        restore fails)."""
        self.store.lock()
        try:
            self._restore()
        except BaseException:
            self.store.unlock()
            raise

    def _restore(self) -> None:
        started = time.monotonic()
        result = self.store.restore()
        source = self.store
        if result.empty and not result.skipped and self.bootstrap_from is not None:
            if is_bundle(self.bootstrap_from):
                self._restore_bundle(started)
                return
            source = SnapshotStore(self.bootstrap_from)
            result = source.restore()
            if result.empty and not result.skipped:
                raise NothingToBootstrapError(
                    f"--bootstrap-from {not_a_source_message(self.bootstrap_from)}"
                )
        if result.empty:
            if result.skipped:
                raise NoValidSnapshotError(
                    f"{source.root}: {len(result.skipped)} snapshot(s) and none verifies "
                    f"({result.skipped[-1].path.name}: {result.skipped[-1].reason}); refusing "
                    "to start empty over them; move them aside to start anew"
                )
            self._restored_rows = 0
            self._write_session(0)
            _LOGGER.info("snapshot_restore_empty", extra=fields(snapshot_dir=str(self.store.root)))
            self._record_restore(started, 0, 0)
            return
        rows = self._load(result)
        self._restored_rows = rows
        newest = result.chain[-1].manifest
        keep_epoch, reason = self._epoch_decision(result, from_own_dir=source is self.store)
        self.state.epoch = newest.server.epoch if keep_epoch else new_epoch()
        if source is self.store and not result.lost_updates:
            self._parent = newest
        self._write_session(newest.seq if source is self.store else 0)
        _LOGGER.log(
            logging.WARNING if result.lost_updates else logging.INFO,
            "snapshot_restored",
            extra=fields(
                snapshot_dir=str(source.root),
                chain=",".join(str(s.seq) for s in result.chain),
                skipped=",".join(s.path.name for s in result.skipped),
                rows=rows,
                epoch=f"{self.state.epoch:016x}",
                epoch_kept=keep_epoch,
                epoch_reason=reason,
                seconds=round(time.monotonic() - started, 3),
            ),
        )
        if self.metrics is not None:
            self.metrics.mark_success(newest.created_unix)
        self._record_restore(started, rows, len(result.skipped))

    def _restore_bundle(self, started: float) -> None:
        """Start from a serving bundle: this shard's rows with their values and versions;
        optimizer state, push counts and admission sketches start fresh (a bundle holds
        none), the learned default row keeps its value. Takes a new epoch."""
        assert self.bootstrap_from is not None
        state = self.state
        sources = read_bundle(self.bootstrap_from)
        missing = [
            i
            for i in missing_shards(sources)
            if can_share_keys(i, sources[0].server.num_shards, state.shard_index, state.num_shards)
        ]
        if missing:
            raise NothingToBootstrapError(
                f"--bootstrap-from {self.bootstrap_from}: a partial bundle without training "
                f"shards {missing} of {sources[0].server.num_shards}, whose rows this shard "
                "would own; bundle it from every shard's snapshots"
            )
        rows = 0
        for source in sources:
            for name, table in source.tables.items():
                target = state.tables.get(name)
                if target is None:
                    _LOGGER.warning("restore_table_dropped", extra=fields(table=name))
                    continue
                rows += load_serving_table(target, name, table, state.shard_index, state.num_shards)
            if source.dense is not None and state.dense is not None:
                load_dense(state.dense, source.dense, trainable=True)
        state.epoch = new_epoch()
        self._restored_rows = rows
        self._write_session(0)
        _LOGGER.info(
            "bootstrap_done",
            extra=fields(
                source=str(self.bootstrap_from),
                kind="bundle",
                shards=len(sources),
                rows=rows,
                optimizer_state="fresh",
                epoch=f"{state.epoch:016x}",
                seconds=round(time.monotonic() - started, 3),
            ),
        )
        self._record_restore(started, rows, 0)

    def _load(self, result: RestoreResult) -> int:
        merged = merge_chain(result.chain)
        server = merged.server
        state = self.state
        if (server.shard_index, server.num_shards) != (state.shard_index, state.num_shards):
            raise SnapshotMismatchError(
                f"the snapshots are of training shard {server.shard_index} of "
                f"{server.num_shards}; this server is shard {state.shard_index} of "
                f"{state.num_shards}"
            )
        rows = 0
        for name, section in merged.tables.items():
            table = state.tables.get(name)
            if table is None:
                _LOGGER.warning("restore_table_dropped", extra=fields(table=name))
                continue
            rows += load_table(table, name, section)
        for name in sorted(set(state.tables) - set(merged.tables)):
            _LOGGER.info("restore_table_new", extra=fields(table=name))
        if merged.dense is not None and state.dense is not None:
            left_out = load_dense(state.dense, merged.dense, trainable=True)
            if left_out:
                _LOGGER.warning("restore_dense_dropped", extra=fields(arrays=",".join(left_out)))
        return rows

    def _epoch_decision(self, result: RestoreResult, from_own_dir: bool) -> tuple[bool, str]:
        newest = result.chain[-1].manifest
        if not from_own_dir:
            return False, "bootstrapped from another directory"
        if RESHARDED_FROM in newest.extra:
            return False, "resharded from another shard count"
        if result.lost_updates:
            return False, "newer snapshots were unusable"
        if newest.extra.get(CLEAN_SHUTDOWN) is not True:
            return False, "the previous run did not stop cleanly"
        session = self._read_session()
        if session is not None and session.get("restored_seq", 0) >= newest.seq:
            return False, "a run started from this snapshot since and did not stop cleanly"
        return True, "the previous run stopped cleanly"

    def _read_session(self) -> dict[str, Any] | None:
        try:
            obj = json.loads((self.store.root / SESSION_NAME).read_text())
        except (OSError, ValueError):
            return None
        return obj if isinstance(obj, dict) else None

    def _write_session(self, restored_seq: int) -> None:
        write_json(
            self.store.root / SESSION_NAME,
            {
                "restored_seq": restored_seq,
                "epoch": f"{self.state.epoch:016x}",
                "started_unix": time.time(),
            },
        )

    def _record_restore(self, started: float, rows: int, skipped: int) -> None:
        if self.metrics is not None:
            self.metrics.restored(time.monotonic() - started, rows, skipped)

    # ------------------------------------------------------------ writing

    def snapshot(self, full: bool, final: bool = False) -> SnapshotResult:
        """Write a snapshot now: full, or incremental on the previous one when there is one."""
        with self._write_lock:
            kind = "full" if full or self._parent is None else "incr"
            try:
                written = self._write(kind, final)
            except Exception:
                if self.metrics is not None:
                    self.metrics.failed(kind)
                _LOGGER.exception("snapshot_failed", extra=fields(kind=kind))
                raise
        manifest = written.manifest
        if self.metrics is not None:
            self.metrics.wrote(
                manifest.kind, written.seconds, manifest.bytes, manifest.rows, manifest.created_unix
            )
        _LOGGER.info(
            "snapshot_written",
            extra=fields(
                path=str(written.path),
                kind=manifest.kind,
                rows=manifest.rows,
                bytes=manifest.bytes,
                seconds=round(written.seconds, 3),
                final=final,
            ),
        )
        return SnapshotResult(str(written.path), manifest.bytes, written.seconds)

    def _write(self, kind: str, final: bool):  # noqa: ANN202 - WrittenSnapshot
        self._refuse_empty_overwrite()
        parent = self._parent if kind == "incr" else None
        sections = {}
        for name, table in list(self.state.tables.items()):
            entry = parent.tables.get(name) if parent is not None else None
            since = entry.complete_version if entry is not None else 0
            section, needs_full = table_section(table, since)
            if needs_full:
                _LOGGER.info("snapshot_promoted_to_full", extra=fields(table=name))
                return self._write("full", final)
            sections[name] = section
        dense = dense_section(self.state.dense) if self.state.dense is not None else None
        state = self.state
        written = self.store.write(
            kind,
            sections,
            dense,
            ServerInfo(state.role, state.shard_index, state.num_shards, state.epoch),
            parent=parent,
            extra={CLEAN_SHUTDOWN: final},
        )
        self._parent = written.manifest
        if kind == "full":
            self.store.retain(self.keep)
        return written

    def _refuse_empty_overwrite(self) -> None:
        """After a restore that loaded nothing, and before anything changed, a snapshot
        would record an empty model: refused while the directory holds snapshots with rows."""
        if self._restored_rows != 0 or self._parent is not None:
            return
        if any(t.version or len(t) for t in self.state.tables.values()):
            return
        if self.state.dense is not None and self.state.dense.version:
            return
        for snap, manifest in self.store.iter_manifests():
            if not isinstance(manifest, Exception) and manifest.rows:
                raise EmptyOverwriteError(
                    f"{self.store.root}: this server holds no rows and changed nothing since "
                    f"its restore loaded none, but {snap.path.name} holds {manifest.rows} "
                    "rows; not writing an empty snapshot beside it"
                )

    def _changed_since_parent(self) -> bool:
        parent = self._parent
        if parent is None:
            return True
        for name, table in list(self.state.tables.items()):
            entry = parent.tables.get(name)
            if entry is None or table.version != entry.complete_version:
                return True
        dense = self.state.dense
        return dense is not None and (parent.dense is None or dense.version != parent.dense.version)

    # ------------------------------------------------------------ schedule

    def start(self) -> None:
        """Begin periodic snapshots in a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ps-snapshot", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        now = time.monotonic()
        next_full = now + self.full_interval
        next_incr = now + self.incremental_interval
        while not self._stop.wait(max(0.0, min(next_full, next_incr) - time.monotonic())):
            now = time.monotonic()
            full = now >= next_full or self._parent is None
            if self._parent is not None and not self._changed_since_parent():
                next_incr = now + self.incremental_interval
                if full:
                    next_full = now + self.full_interval
                continue
            # A failure is logged and counted by snapshot(); the next period tries again.
            with contextlib.suppress(Exception):
                self.snapshot(full=full)
            now = time.monotonic()
            if full:
                next_full = now + self.full_interval
            next_incr = now + self.incremental_interval

    def close(self, final: bool) -> None:
        """Stop the schedule (waiting out a snapshot in progress); with ``final``, write
        the last snapshot, marked clean so the next start keeps the epoch."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if final:
                self.snapshot(full=False, final=True)
        finally:
            self.store.unlock()


def make_snapshotter(
    state: ShardState,
    settings: ServerSettings,
    metrics: ServerMetrics,
    receiver: DeltaReceiver | None,
) -> TrainingSnapshotter | ServingBootstrap:
    """The server's ``SnapshotterFactory``: training snapshots, or a serving bootstrap."""
    if receiver is not None:
        if not settings.bootstrap_from:
            raise ValueError("a serving server takes --bootstrap-from, not --snapshot-dir")
        return ServingBootstrap(state, settings.bootstrap_from, receiver)
    if not settings.snapshot_dir:
        raise ValueError("a training server needs --snapshot-dir to keep snapshots")
    config = settings.config.snapshot
    return TrainingSnapshotter(
        state,
        settings.snapshot_dir,
        full_interval=config.full_interval,
        incremental_interval=config.incremental_interval,
        keep=config.keep,
        metrics=SnapshotMetrics(metrics.registry),
        bootstrap_from=settings.bootstrap_from,
    )
