"""Seams where other parts plug into a PS server without changing it.

A ``Snapshotter`` is built by a ``SnapshotterFactory(state, settings, metrics, receiver)``
once the server's state exists (``receiver``: the serving server's ``DeltaReceiver``, None
on training): the server calls ``restore()`` before health turns SERVING, ``start()`` after, the
``Snapshot`` RPC calls ``snapshot(full)``, and shutdown calls ``close(final=True)``
(which writes the last snapshot) before the gRPC server stops.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ps_server.delta_receiver import DeltaReceiver
    from ps_server.metrics import ServerMetrics
    from ps_server.settings import ServerSettings
    from ps_server.state import ShardState

__all__ = ["SnapshotResult", "Snapshotter", "SnapshotterFactory"]


@dataclasses.dataclass(frozen=True)
class SnapshotResult:
    """Where a snapshot went, how big it is and how long it took."""

    path: str
    bytes: int
    seconds: float


class Snapshotter(Protocol):
    def restore(self) -> None:
        """Load the newest consistent snapshot into the state (may set ``state.epoch``)."""

    def start(self) -> None:
        """Begin periodic snapshots (returns at once)."""

    def snapshot(self, full: bool) -> SnapshotResult:
        """Write a full or incremental snapshot now."""

    def close(self, final: bool) -> None:
        """Stop periodic snapshots; with ``final``, write one last snapshot first."""


SnapshotterFactory = Callable[
    ["ShardState", "ServerSettings", "ServerMetrics", "DeltaReceiver | None"], Snapshotter
]
