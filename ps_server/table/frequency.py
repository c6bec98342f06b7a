"""How a table keeps its counts of keys: the admission sketch sized to the keys it counts,
and LFU aging.

A self-sized sketch (``sketch_width: null``) starts as one stage of four counters a row per
key of the first lookup (at least ``admission.AUTO_MIN_WIDTH``), and gets a new stage twice
as wide once the last has counted new keys for a quarter of its width: few keys share a
counter, so few keys are admitted early, and memory follows the keys seen. LFU tables age:
every ``10 * max_rows`` accesses, every row's count and every sketch counter halve, so counts
earned long ago give way to what is hot now.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ps_server.table import admission, rows
from ps_server.table.arrays import TableArrays
from ps_server.table.errors import DeltaError
from ps_server.table.tiering import Tiering
from ps_server.table.validation import describe

__all__ = ["age_frequencies", "fit_sketch", "sketch_from"]


def fit_sketch(t: TableArrays, batch: int) -> None:
    """Size a self-sized sketch before (``batch`` keys coming) and after (``batch`` 0) a
    lookup."""
    sketch = t.sketch
    if not t.auto_sketch or sketch.shape[1] == 1:
        return
    counted = int(t.scalars[rows.SKETCH_KEYS])
    last = admission.stages(sketch.shape[1])[-1][1]
    if batch and counted == 0 and sketch.shape[1] == last and not sketch.any():
        want = admission.AUTO_MIN_WIDTH
        while want < 4 * batch and want < admission.AUTO_MAX_WIDTH:
            want *= 2
        if want > last:
            t.sketch = admission.new_sketch(want)
    elif not batch and 4 * counted > last and last < admission.AUTO_MAX_WIDTH:
        t.sketch = admission.with_stage(sketch, 2 * last)
        t.scalars[rows.SKETCH_KEYS] = 0


def age_frequencies(t: TableArrays, tiering: Tiering | None) -> None:
    """LFU aging, when ``10 * max_rows`` accesses passed since the last: halve every row's
    count (hot and cold), every sketch counter and the tiers' horizon."""
    if not t.aging_period or int(t.scalars[rows.TICK]) < t.next_aging:
        return
    rows.halve_frequencies(t.meta, t.high)
    cold = None if tiering is None else tiering.cold
    if cold is not None and len(cold):
        rows.halve_frequencies(cold.meta, cold.high)
    if tiering is not None:
        tiering.halve_horizon()
    np.right_shift(t.sketch, 1, out=t.sketch)
    t.next_aging = int(t.scalars[rows.TICK]) + t.aging_period


def sketch_from(t: TableArrays, sketch: Any) -> np.ndarray:
    """A snapshot's sketch as ``t`` keeps it: adopted when ``t`` sizes its own, made one
    stage of the set ``sketch_width`` otherwise (no key counted less); one of width 1
    (nothing counted) leaves ``t``'s. A malformed one raises DeltaError."""
    try:
        if not isinstance(sketch, np.ndarray) or sketch.dtype != np.uint16:
            raise ValueError("not a uint16 array")
        if sketch.ndim != 2 or sketch.shape[0] != admission.DEPTH:
            raise ValueError(f"not {admission.DEPTH} rows")
        admission.stages(sketch.shape[1])
    except ValueError as exc:
        raise DeltaError(
            f"meta['sketch'] must be a uint16 array of {admission.DEPTH} rows of doubling "
            f"stages ({exc}), got {describe(sketch)}"
        ) from None
    ours = t.sketch
    if sketch.shape[1] == 1 or ours.shape[1] == 1:
        return ours
    if t.auto_sketch:
        return np.array(sketch)
    return admission.as_width(sketch, ours.shape[1])
