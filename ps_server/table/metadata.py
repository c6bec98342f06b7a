"""A table's state that is not a row: version and access clocks, admission sketch, learned
default row and its optimizer state, tombstone log. Snapshots save it beside the rows."""

from __future__ import annotations

from typing import Any

import numpy as np

from ps_server.table import admission, removal, rows
from ps_server.table.arrays import MIN_LOG, TableArrays

__all__ = ["export_meta", "import_meta"]


def export_meta(t: TableArrays) -> dict[str, np.ndarray | int]:
    """Everything of ``t`` that is not a row; inverse of :func:`import_meta`."""
    t_keys, t_versions = removal.tombstones_since(t.scalars, t.log_keys, t.log_versions, -1)
    s = t.scalars
    return {
        "version": int(s[rows.VERSION]),
        "tick": int(s[rows.TICK]),
        "log_floor": int(s[rows.LOG_FLOOR]),
        "default_version": int(s[rows.DEFAULT_VERSION]),
        "default_pushes": int(s[rows.DEFAULT_PUSHES]),
        "rng": int(t.walk[0]),
        "sketch": t.sketch.copy(),
        # one-dimensional: (dim,) and (state_width,) when learned, else empty
        "default_row": t.default_row.reshape(-1).copy(),
        "default_state": t.default_state.reshape(-1).copy(),
        "tombstone_keys": t_keys,
        "tombstone_versions": t_versions.astype(np.uint64),
    }


def import_meta(
    t: TableArrays,
    meta: dict[str, Any],
    ints: dict[str, int],
    sketch: np.ndarray,
    t_keys: np.ndarray,
    t_versions: np.ndarray,
) -> None:
    """Restore what :func:`export_meta` returned, as ``validation.check_meta`` checked it
    (``sketch``: as ``frequency.sketch_from`` made it fit ``t``).
    The version counter never moves backwards; a log longer than the table keeps moves
    its floor up."""
    s = t.scalars
    s[rows.VERSION] = max(int(s[rows.VERSION]), ints["version"])
    s[rows.TICK] = max(int(s[rows.TICK]), ints["tick"])
    s[rows.DEFAULT_VERSION] = ints["default_version"]
    s[rows.DEFAULT_PUSHES] = ints["default_pushes"]
    t.walk[0] = np.uint64(ints["rng"] or 1)
    t.sketch = sketch
    s[rows.SKETCH_KEYS] = int(np.count_nonzero(admission.last_stage(sketch)[0]))
    t.default_row.reshape(-1)[:] = meta["default_row"]
    t.default_state.reshape(-1)[:] = meta["default_state"]
    limit = t.log_limit
    floor = ints["log_floor"]
    if t_keys.shape[0] > limit:
        floor = max(floor, int(t_versions[-limit - 1]))
        t_keys, t_versions = t_keys[-limit:], t_versions[-limit:]
    n = t_keys.shape[0]
    cap = min(limit, max(MIN_LOG, n))
    t.log_keys = np.zeros(cap, dtype=np.uint64)
    t.log_versions = np.zeros(cap, dtype=np.int64)
    t.log_keys[:n] = t_keys
    t.log_versions[:n] = t_versions
    s[rows.LOG_START] = 0
    s[rows.LOG_COUNT] = n
    s[rows.LOG_FLOOR] = floor
