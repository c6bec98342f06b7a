"""A table's changes as a ``Delta`` (rows with a newer version, tombstones after it) and the
upsert of a ``Delta`` into a table, for sync, snapshots and restores."""

from __future__ import annotations

import time

import numpy as np

from ps_server.optim.optimizers import init_state_rows
from ps_server.table import removal, rows, update
from ps_server.table.arrays import TableArrays
from ps_server.table.delta import Delta
from ps_server.table.tiering import Tiering
from ps_server.table.validation import CheckedDelta, micros

__all__ = ["apply_delta", "delta_since"]


def delta_since(
    t: TableArrays, tiering: Tiering | None, version: int, with_state: bool, with_values: bool
) -> Delta:
    """Rows of both tiers with ``version > since`` and the tombstones after it; a ``full``
    delta (every live row, no tombstones) when ``version`` is older than the tombstone log
    reaches or newer than the table. Without ``with_values``, ``values`` has no columns."""
    current = t.version
    full = version < int(t.scalars[rows.LOG_FLOOR]) or version > current
    since = 0 if full else version
    picked = removal.rows_since(t.meta, t.high, since)
    row_keys = t.row_keys[picked]
    columns = slice(None) if with_state else slice(rows.VERSION_COL + 1)  # state needs all
    meta = t.meta[picked, columns]
    values = t.rows[picked, : t.dim if with_values else 0]
    state = t.rows[picked, t.dim :] if with_state and t.trainable else None
    cold = None if tiering is None else tiering.cold
    if cold is not None and len(cold):
        cold_picked = removal.rows_since(cold.meta, cold.high, since)
        row_keys = np.concatenate([row_keys, cold.keys[cold_picked]])
        meta = np.concatenate([meta, cold.meta[cold_picked, columns]])
        if with_values or state is not None:
            cold_rows = cold.read_rows(cold_picked)
            values = np.concatenate([values, cold_rows[:, : values.shape[1]]])
        else:
            values = np.empty((len(row_keys), 0), dtype=values.dtype)
        if state is not None:
            state = np.concatenate([state, cold_rows[:, t.dim :]])
    if t.storage is np.uint16:
        values = values.view(np.float16)
    if full:
        t_keys = np.zeros(0, dtype=np.uint64)
        t_versions = np.zeros(0, dtype=np.int64)
    else:
        t_keys, t_versions = removal.tombstones_since(t.scalars, t.log_keys, t.log_versions, since)
    delta = Delta(
        keys=row_keys,
        values=values,
        versions=meta[:, rows.VERSION_COL].astype(np.uint64),
        tombstone_keys=t_keys,
        tombstone_versions=t_versions.astype(np.uint64),
        complete_version=current,
        full=full,
        since_version=since,
    )
    if with_state:
        if state is not None:
            # a row gets its optimizer state at its first push: before, report the
            # state it will start from
            fresh = meta[:, rows.PUSHES_COL] == 0
            initial = np.empty((int(fresh.sum()), t.state_width), dtype=np.float32)
            init_state_rows(t.opt_kind, t.hp, initial)
            state[fresh] = initial
        else:
            state = np.zeros((len(row_keys), 0), dtype=np.float32)
        delta.opt_state = state
        delta.push_counts = meta[:, rows.PUSHES_COL].astype(np.uint32)
        delta.last_update = meta[:, rows.UPDATED_COL] / 1e6
        delta.usage = meta[:, rows.USAGE_COL].copy()
    default_version = int(t.scalars[rows.DEFAULT_VERSION])
    if t.learned and default_version > since:
        delta.default_value = t.default_row[0].copy()
        delta.default_version = default_version
    return delta


def apply_delta(
    t: TableArrays, tiering: Tiering | None, checked: CheckedDelta, delta: Delta
) -> tuple[int, int, int]:
    """Upsert the checked rows newer than the held ones, then the tombstones; returns
    ``(rows_applied, rows_skipped, tombstones_applied)``."""
    keys, values, versions, t_keys, t_versions, state, pushes, last_update, usage = checked
    has_state = state is not None
    if state is None or pushes is None or last_update is None:  # all three or none
        state = np.zeros((0, t.state_width), dtype=np.float32)
        pushes = np.zeros(0, dtype=np.int64)
        last_update = np.zeros(0, dtype=np.int64)
    now = micros(time.time())
    n = keys.shape[0]
    applied = skipped = 0
    # with tiers, in chunks: the hot tier never holds more than a chunk over budget
    step = n if tiering is None else max(256, tiering.hot_limit // 8)
    for lo in range(0, n, max(step, 1)):
        part = slice(lo, lo + step)
        chunk = keys[part]
        if tiering is not None:
            tiering.promote(chunk)
        start = 0
        while True:
            status, start, a, s = update.upsert_rows(
                t.index, t.max_live, t.walk, t.scalars, t.row_keys,
                t.meta, t.rows, chunk, values[part], versions[part], has_state,
                state[part] if has_state else state,
                pushes[part] if has_state else pushes,
                last_update[part] if has_state else last_update,
                usage[part] if usage.shape[0] else usage, start, now, t.lfu,
            )  # fmt: skip
            applied += a
            skipped += s
            if status == rows.DONE:
                break
            t.grow(status)
        if tiering is not None:
            tiering.demote_over_budget()
    if tiering is not None:
        tiering.promote(t_keys)
    deleted = t.run_removal(removal.apply_tombstones, t_keys, t_versions)
    if delta.default_value is not None and delta.default_version > int(
        t.scalars[rows.DEFAULT_VERSION]
    ):
        t.default_row[0] = delta.default_value
        t.scalars[rows.DEFAULT_VERSION] = delta.default_version
        t.scalars[rows.VERSION] = max(t.version, delta.default_version)
    t.stats["delta_rows_applied"] += applied
    t.stats["delta_rows_skipped"] += skipped
    t.stats["delta_tombstones_applied"] += deleted
    if tiering is not None:
        tiering.demote_over_budget()
    return int(applied), int(skipped), int(deleted)
