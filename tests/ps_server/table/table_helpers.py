"""Helpers shared by table tests (a module of its own, so its name is unique in the suite)."""

from __future__ import annotations

import numpy as np

from ps_server.table import EmbeddingTable


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
