"""Rows stored as float16 bits (``uint16``), read as float32 by the kernels of the server
and the client: one widening table, and one read that compiles to a plain load for a
float32 array and to a table lookup for ``uint16`` bits."""

from __future__ import annotations

import numpy as np
from numba.core import types
from numba.extending import overload

__all__ = ["HALF_TO_F32", "read_f32"]

HALF_TO_F32 = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)


def read_f32(values: np.ndarray, half_to_f32: np.ndarray, r: int, c: int) -> float:
    """``values[r, c]`` as float32: as it is, or widened through ``half_to_f32`` where
    ``values`` holds float16 bits as ``uint16``. Callable from compiled code only."""
    raise NotImplementedError("read_f32 runs in compiled kernels only")


@overload(read_f32, inline="always")
def _read_f32(values, half_to_f32, r, c):
    if values.dtype == types.uint16:
        return lambda values, half_to_f32, r, c: half_to_f32[values[r, c]]
    return lambda values, half_to_f32, r, c: values[r, c]
