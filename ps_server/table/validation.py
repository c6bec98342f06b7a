"""Checks of what callers hand a table: keys, times, pushes, deltas and metadata.

Each check raises the table error that names the problem (``KeysError``, ``ShapeError``,
``NonFiniteGradientError``, ``DeltaError``) before anything changes, and returns the
input in the layout the kernels take.
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import numpy as np

from ps_server.table import update
from ps_server.table.arrays import TableArrays
from ps_server.table.delta import Delta
from ps_server.table.errors import DeltaError, KeysError, NonFiniteGradientError, ShapeError

__all__ = [
    "MAX_VERSION",
    "META_ARRAYS",
    "META_INTS",
    "CheckedDelta",
    "CheckedPush",
    "check_delta",
    "check_keys",
    "check_meta",
    "check_now",
    "check_push",
    "check_versions",
    "describe",
    "micros",
]

MAX_VERSION = 2**63 - 1
META_INTS = ("version", "tick", "log_floor", "default_version", "default_pushes", "rng")
META_ARRAYS = ("sketch", "default_row", "default_state", "tombstone_keys", "tombstone_versions")
_NO_COUNTS = np.empty(0, dtype=np.int64)


class CheckedDelta(NamedTuple):
    """A delta's arrays in the kernels' layout (state fields None when absent)."""

    keys: np.ndarray
    values: np.ndarray
    versions: np.ndarray
    tombstone_keys: np.ndarray
    tombstone_versions: np.ndarray
    state: np.ndarray | None
    pushes: np.ndarray | None
    last_update: np.ndarray | None
    usage: np.ndarray


def describe(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def check_keys(keys: Any, what: str = "keys") -> np.ndarray:
    if not isinstance(keys, np.ndarray) or keys.dtype != np.uint64 or keys.ndim != 1:
        raise KeysError(f"{what} must be a one-dimensional uint64 array, got {describe(keys)}")
    return np.ascontiguousarray(keys)


def micros(seconds: float) -> int:
    return int(round(seconds * 1e6))


def check_now(now: float | None) -> float:
    if now is None:
        return time.time()
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise ValueError(f"now must be a finite number of unix seconds, got {now!r}")
    return float(now)


class CheckedPush(NamedTuple):
    """A push checked and merged (``update.merge_push``): its distinct keys, the position
    of each one's first occurrence in ``grads``, the next occurrence of each position and
    each distinct key's count."""

    keys: np.ndarray
    grads: np.ndarray
    first: np.ndarray
    next_same: np.ndarray
    counts: np.ndarray


def check_push(keys: Any, grads: Any, name: str, dim: int) -> CheckedPush:
    """``keys`` and ``grads`` (float32 ``(len(keys), dim)``, finite) of a push to table
    ``name``, merged per distinct key in the same pass that checks the values."""
    keys = check_keys(keys)
    if not isinstance(grads, np.ndarray) or grads.dtype != np.float32:
        raise ShapeError(f"grads must be a float32 array, got {describe(grads)}")
    if grads.shape != (keys.shape[0], dim):
        raise ShapeError(
            f"grads must have shape ({keys.shape[0]}, {dim}) for {keys.shape[0]} keys "
            f"of table {name!r} (dim {dim}), got {grads.shape}"
        )
    grads = np.ascontiguousarray(grads)
    unique, counts, first, next_same, n, bad = update.merge_push(keys, grads.view(np.uint32))
    if bad >= 0:
        raise NonFiniteGradientError(
            f"grads of table {name!r}: NaN or Inf in row {bad} (key {int(keys[bad])})"
        )
    return CheckedPush(unique[:n], grads, first[:n], next_same, counts[:n])


def check_versions(versions: Any, n: int, what: str) -> np.ndarray:
    if (
        not isinstance(versions, np.ndarray)
        or versions.dtype != np.uint64
        or versions.shape != (n,)
    ):
        raise DeltaError(
            f"{what} versions must be a uint64 array of shape ({n},), got {describe(versions)}"
        )
    if n and (versions.min() == 0 or versions.max() > MAX_VERSION):
        raise DeltaError(f"{what} versions must be in [1, 2**63 - 1]")
    return versions.astype(np.int64)


def check_delta(t: TableArrays, delta: Any) -> CheckedDelta:
    """``delta`` checked against the table of ``t``: shapes, dtypes, finite values,
    versions in range, state fields only where the optimizer's widths match."""
    if not isinstance(delta, Delta):
        raise DeltaError(f"expected a Delta, got {type(delta).__name__}")
    name = t.config.name
    keys = check_keys(delta.keys, "delta.keys")
    n = keys.shape[0]
    values = _check_delta_array(
        delta, "values", (n, t.dim), "f", "a float array", f" for table {name!r}"
    )
    if not np.isfinite(values).all():
        raise DeltaError("delta.values contains NaN or Inf")
    values = np.ascontiguousarray(values, dtype=t.dtype)
    if t.storage is np.uint16:
        values = values.view(np.uint16)
    versions = check_versions(delta.versions, n, "row")
    t_keys = check_keys(delta.tombstone_keys, "delta.tombstone_keys")
    t_versions = check_versions(delta.tombstone_versions, t_keys.shape[0], "tombstone")
    state = pushes = last_update = None
    if delta.opt_state is not None and t.trainable:
        state = _check_delta_array(
            delta,
            "opt_state",
            (n, t.state_width),
            np.float32,
            "a float32 array",
            f" for optimizer {t.config.optimizer!r}",
        )
        pushes = _check_delta_array(delta, "push_counts", (n,), "u", "an unsigned array")
        last_update = _check_delta_array(delta, "last_update", (n,), "f", "a float array")
        if not np.isfinite(last_update).all():
            raise DeltaError("delta.last_update contains NaN or Inf")
        state = np.ascontiguousarray(state)
        pushes = np.minimum(pushes, 0xFFFFFFFF).astype(np.int64)
        last_update = np.round(last_update * 1e6).astype(np.int64)
    if delta.default_value is not None:
        if not t.learned:
            raise DeltaError(
                f"delta carries a learned default row, but table {name!r} uses the "
                f"{t.config.initializer!r} initializer"
            )
        _check_delta_array(delta, "default_value", (t.dim,), "f", "a float array")
        dver = delta.default_version
        if (
            isinstance(dver, bool)
            or not isinstance(dver, int | np.integer)
            or not (0 < dver <= MAX_VERSION)
        ):
            raise DeltaError(f"delta.default_version must be a positive integer, got {dver!r}")
    usage = _NO_COUNTS
    if delta.usage is not None:
        usage = _check_delta_array(delta, "usage", (n,), np.int64, "an int64 array")
        if n and usage.min() < 0:
            raise DeltaError("delta.usage must not be negative")
        usage = np.ascontiguousarray(usage)
    return CheckedDelta(
        keys, values, versions, t_keys, t_versions, state, pushes, last_update, usage
    )


def check_meta(t: TableArrays, meta: Any) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """The integers and the tombstone log of a table's metadata (see ``metadata``), checked
    against the arrays of ``t``."""
    name = t.config.name
    if not isinstance(meta, dict):
        raise DeltaError(f"meta must be a dict, got {type(meta).__name__}")
    missing = [k for k in META_INTS + META_ARRAYS if k not in meta]
    if missing:
        raise DeltaError(f"meta of table {name!r} lacks {', '.join(missing)}")
    ints = {}
    for k in META_INTS:
        v = meta[k]
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
            raise DeltaError(f"meta[{k!r}] must be a non-negative integer, got {v!r}")
        limit = 2**64 - 1 if k == "rng" else MAX_VERSION
        if v > limit:
            raise DeltaError(f"meta[{k!r}] is out of range: {v}")
        ints[k] = int(v)
    expect = {  # the sketch is checked by ``frequency.sketch_from``
        "default_row": ((t.default_row.size,), np.float32),
        "default_state": ((t.default_state.size,), np.float32),
    }
    for k, (shape, dt) in expect.items():
        a = meta[k]
        if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != dt:
            raise DeltaError(
                f"meta[{k!r}] must be a {np.dtype(dt)} array of shape {shape}, got {describe(a)}"
            )
    t_keys = check_keys(meta["tombstone_keys"], "meta['tombstone_keys']")
    t_versions = check_versions(meta["tombstone_versions"], t_keys.shape[0], "tombstone")
    return ints, t_keys, t_versions


def _check_delta_array(
    delta: Delta,
    field: str,
    shape: tuple[int, ...],
    dtype: str | type,
    description: str,
    context: str = "",
) -> np.ndarray:
    """``delta.<field>`` if it is an array of ``shape`` and of ``dtype`` (a dtype, or a
    dtype kind such as ``"f"``), else a DeltaError naming the field and what it got."""
    a = getattr(delta, field)
    if isinstance(a, np.ndarray) and a.shape == shape and _dtype_matches(a.dtype, dtype):
        return a
    raise DeltaError(
        f"delta.{field} must be {description} of shape {shape}{context}, got {describe(a)}"
    )


def _dtype_matches(actual: np.dtype, wanted: str | type) -> bool:
    return actual.kind == wanted if isinstance(wanted, str) else actual == wanted
