"""What the snapshot store hands back: snapshot directories, written snapshots, the chain
restore picked and what it skipped, and the store's errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from ps_server.snapshot.content import LoadedSnapshot
from ps_server.snapshot.files import CorruptSnapshotError
from ps_server.snapshot.format import Manifest

__all__ = [
    "ChainLinkError",
    "ChainSelection",
    "RestoreResult",
    "SkippedSnapshot",
    "SnapshotDir",
    "SnapshotDirBusyError",
    "WrittenSnapshot",
]

_T = TypeVar("_T")


class SnapshotDirBusyError(RuntimeError):
    """Another process holds the snapshot directory's writer lock."""


class ChainLinkError(CorruptSnapshotError):
    """An incremental does not continue its parent (version ranges do not meet)."""


@dataclass(frozen=True)
class SnapshotDir:
    """A snapshot directory with a final name (complete when written)."""

    seq: int
    kind: str
    path: Path


@dataclass(frozen=True)
class SkippedSnapshot:
    """A snapshot newer than the restored state that restore could not use, and why."""

    seq: int
    kind: str
    path: Path
    reason: str


@dataclass(frozen=True)
class WrittenSnapshot:
    """What ``SnapshotStore.write`` produced, for logs and metrics."""

    path: Path
    manifest: Manifest
    seconds: float

    @property
    def bytes(self) -> int:
        return self.manifest.bytes

    @property
    def rows(self) -> int:
        return self.manifest.rows


@dataclass(frozen=True)
class ChainSelection(Generic[_T]):
    """The chain restore picked (oldest first, each with what the check returned)."""

    chain: list[tuple[Manifest, _T]]
    skipped: list[SkippedSnapshot]
    orphans: list[Path] = field(default_factory=list)

    @property
    def lost_updates(self) -> bool:
        """True when some snapshot newer than the chosen state could not be used."""
        return bool(self.skipped)


@dataclass(frozen=True)
class RestoreResult:
    """The verified chain to load, in order, and what was skipped on the way."""

    chain: list[LoadedSnapshot]
    skipped: list[SkippedSnapshot]
    orphans: list[Path]
    seconds: float

    @property
    def lost_updates(self) -> bool:
        """Newer snapshots existed but were unusable: take a new epoch."""
        return bool(self.skipped)

    @property
    def empty(self) -> bool:
        return not self.chain
