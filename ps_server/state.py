"""What one PS server holds: its identity, tables and dense arrays.

The servicers, the expiry sweep, the metrics collector and the snapshotter all work on
the same ``ShardState``; none of them owns it.
"""

from __future__ import annotations

import dataclasses
import secrets

import numpy as np

from monolith_ps.config import ClusterConfig
from ps_server.dense import DenseStore
from ps_server.errors import UnknownNameError
from ps_server.table import EmbeddingTable

__all__ = ["ROLES", "ShardState", "new_epoch"]

ROLES = ("training", "serving")
_SERVING_DTYPES = {"float32": np.float32, "float16": np.float16}


def new_epoch() -> int:
    """A random non-zero 64-bit epoch: a new one marks a start that may have lost updates."""
    return secrets.randbits(64) or 1


@dataclasses.dataclass
class ShardState:
    """A server's role, place in the cluster, tables and (on shard 0 / serving) dense arrays.

    ``tables`` maps names to tables; a full resync may replace a table object, so
    readers look it up per request (``table()``) instead of keeping it.
    """

    role: str
    shard_index: int
    num_shards: int
    config: ClusterConfig
    tables: dict[str, EmbeddingTable]
    dense: DenseStore | None
    epoch: int = dataclasses.field(default_factory=new_epoch)

    @classmethod
    def from_config(
        cls, config: ClusterConfig, role: str, shard_index: int, num_shards: int
    ) -> ShardState:
        """Empty tables (and dense arrays where they live) for a server of ``role``."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise ValueError(
                f"shard index must be in [0, {num_shards}) with num_shards >= 1, "
                f"got shard {shard_index} of {num_shards}"
            )
        if role == "training":
            tables = {cfg.name: EmbeddingTable(cfg) for cfg in config.tables}
        else:
            tables = {
                cfg.name: EmbeddingTable(
                    cfg, trainable=False, dtype=_SERVING_DTYPES[cfg.serving_dtype]
                )
                for cfg in config.tables
            }
        # Training keeps dense arrays on shard 0 only; every serving server keeps a copy.
        has_dense = bool(config.dense) and (role == "serving" or shard_index == 0)
        dense = DenseStore(config.dense, trainable=role == "training") if has_dense else None
        return cls(role, shard_index, num_shards, config, tables, dense)

    def table(self, name: str) -> EmbeddingTable:
        """The table ``name``; ``UnknownNameError`` (NOT_FOUND) naming it when absent."""
        try:
            return self.tables[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown table {name!r} (this server has: {', '.join(sorted(self.tables))})"
            ) from None
