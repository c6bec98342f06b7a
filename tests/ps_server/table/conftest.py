"""Fixtures and helpers for table tests: config factory and a table-state fingerprint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from ps_server.table import EmbeddingTable, TableConfig


@pytest.fixture
def make_table() -> Callable[..., EmbeddingTable]:
    """``make_table(dim=4, optimizer="sgd", ...)``: a training table with small defaults."""

    def make(*, trainable: bool = True, dtype: Any = None, **fields: Any) -> EmbeddingTable:
        fields.setdefault("name", "t")
        fields.setdefault("dim", 4)
        fields.setdefault("optimizer", "sgd")
        fields.setdefault("optimizer_args", {"lr": 0.5})
        return EmbeddingTable(TableConfig(**fields), trainable=trainable, dtype=dtype)

    return make


def fingerprint(table: EmbeddingTable) -> tuple:
    """Everything observable about a table, to check that a failed call changed nothing."""
    d = table.export_since(0, with_state=True)
    order = np.argsort(d.keys)
    meta = table.export_meta()
    # rows expired or evicted in one sweep are visited in row order, which restores renumber:
    # compare which keys and which versions the log holds, not their pairing
    for name in ("tombstone_keys", "tombstone_versions"):
        meta[name] = np.sort(meta[name])
    return (
        table.version,
        len(table),
        d.keys[order].tobytes(),
        d.values[order].tobytes(),
        d.versions[order].tobytes(),
        d.opt_state[order].tobytes(),
        d.push_counts[order].tobytes(),
        tuple(
            (k, v.tobytes() if isinstance(v, np.ndarray) else v)
            for k, v in sorted(meta.items())
            if k != "rng"  # cuckoo-walk randomness: moves keys between slots, nothing else
        ),
        tuple(sorted(table.stats().items())),
    )
