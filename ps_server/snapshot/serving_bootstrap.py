"""A serving server's start from ``--bootstrap-from`` (training snapshots or a serving
bundle): its shard of every source's rows, through the sync receiver."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from monolith_ps.logs import fields
from ps_server.delta_receiver import DeltaReceiver
from ps_server.errors import NotConfiguredError
from ps_server.hooks import SnapshotResult
from ps_server.snapshot.bundle import load_serving_sources
from ps_server.snapshot.tables import SnapshotMismatchError, dense_chunk, serving_chunk
from ps_server.state import ShardState

__all__ = ["ServingBootstrap"]

_LOGGER = logging.getLogger(__name__)


class ServingBootstrap:
    """A serving server's start from ``--bootstrap-from``: its shard of every source's rows.

    The rows go in through ``receiver`` (the serving server's ``DeltaReceiver``) as one
    full-resync stream per table and training shard, so the sync cursors start at the
    sources' epochs and versions and the agent continues with deltas.
    """

    def __init__(self, state: ShardState, bootstrap_from: str | Path, receiver: DeltaReceiver):
        self.state = state
        self.bootstrap_from = Path(bootstrap_from)
        self.receiver = receiver

    def restore(self) -> None:
        started = time.monotonic()
        sources = load_serving_sources([self.bootstrap_from])
        state = self.state
        rows = 0
        for source in sources:
            for name, table in source.tables.items():
                if name not in state.tables:
                    _LOGGER.warning("bootstrap_table_dropped", extra=fields(table=name))
                    continue
                chunk = serving_chunk(
                    name, table, source.server, state.shard_index, state.num_shards
                )
                self._apply(chunk, f"table {name!r}", source.created_unix or None)
                rows += len(chunk.keys) // 8
            if source.dense is not None and state.dense is not None:
                known = {info.name for info in state.dense.describe()}
                self._apply(dense_chunk(source.dense, source.server, known), "dense arrays")
        _LOGGER.info(
            "bootstrap_done",
            extra=fields(
                source=str(self.bootstrap_from),
                shards=len(sources),
                rows=rows,
                seconds=round(time.monotonic() - started, 3),
            ),
        )

    def _apply(self, chunk: Any, what: str, as_of: float | None = None) -> None:
        try:
            self.receiver.apply_stream([chunk], as_of=as_of)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise SnapshotMismatchError(
                f"{what}: the bootstrap rows do not fit the configured table ({exc})"
            ) from None

    def start(self) -> None:
        """Serving servers write no snapshots."""

    def snapshot(self, full: bool) -> SnapshotResult:
        raise NotConfiguredError("serving servers do not write snapshots")

    def close(self, final: bool) -> None:
        """Nothing to write."""
