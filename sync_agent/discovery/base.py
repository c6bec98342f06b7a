"""The contract every discovery source meets.

A discovery source only says which servers exist and are ready, and where they
listen. Shard index, shard count and epoch are asked of each server itself
(``DescribeTables``/``GetSyncState``), so a source can never route rows wrongly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class Role(enum.Enum):
    TRAINING = "training"
    SERVING = "serving"


@dataclass(frozen=True)
class Endpoint:
    """One server as discovery sees it.

    ``instance`` changes whenever the server behind the name is replaced (a new pod
    UID, a restarted process), so the agent can tell a restart from a steady server.
    """

    role: Role
    address: str  # "host:port"
    name: str  # pod name, or the address for static lists
    instance: str = ""


class Discovery(Protocol):
    """A live view of the ready servers of each role."""

    def endpoints(self, role: Role) -> list[Endpoint]:
        """The ready endpoints of ``role`` now, sorted by name."""
        ...

    def close(self) -> None:
        """Stop any background watch; idempotent."""
        ...
