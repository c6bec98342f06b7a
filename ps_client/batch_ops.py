"""The client's batch kernels: Numba's (``ps_client.kernels``) when Numba is installed,
else the numpy ones (``ps_client.kernels_numpy``), which give the same results.

The client needs only grpcio, protobuf and numpy; ``pip install numba`` (or the
``cluster`` extra) makes routing, gradient sums and feature-ID hashing faster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = [
    "ACCELERATED",
    "HALF_TO_F32",
    "fids_of_bytes",
    "fids_of_ints",
    "route_keys",
    "scatter_answer",
    "segment_sum",
]

if TYPE_CHECKING:
    # The two modules define the same functions; the numpy ones carry the annotations
    # (a Numba dispatcher's signature is untyped), so type checkers read those.
    from ps_client import kernels_numpy as _kernels

    ACCELERATED: bool
else:
    try:
        from ps_client import kernels as _kernels

        ACCELERATED = True
    except ModuleNotFoundError as missing:
        if missing.name not in ("numba", "llvmlite"):
            raise
        from ps_client import kernels_numpy as _kernels

        ACCELERATED = False

HALF_TO_F32 = _kernels.HALF_TO_F32
fids_of_bytes = _kernels.fids_of_bytes
fids_of_ints = _kernels.fids_of_ints
route_keys = _kernels.route_keys
scatter_answer = _kernels.scatter_answer
segment_sum = _kernels.segment_sum
