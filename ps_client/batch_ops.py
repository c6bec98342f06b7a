"""The client's batch kernels: Numba's (``ps_client.kernels``) when Numba is installed,
else the numpy ones (``ps_client.kernels_numpy``), which give the same results.

The client needs only grpcio, protobuf and numpy; ``pip install numba`` (or the
``cluster`` extra) makes routing, gradient sums and feature-ID hashing faster.
"""

from __future__ import annotations

__all__ = [
    "ACCELERATED",
    "HALF_TO_F32",
    "fids_of_bytes",
    "fids_of_ints",
    "route_keys",
    "scatter_answer",
    "scatter_answer_f16",
    "segment_sum",
]

try:
    from ps_client.kernels import (
        HALF_TO_F32,
        fids_of_bytes,
        fids_of_ints,
        route_keys,
        scatter_answer,
        scatter_answer_f16,
        segment_sum,
    )

    ACCELERATED = True
except ModuleNotFoundError as missing:
    if missing.name not in ("numba", "llvmlite"):
        raise
    from ps_client.kernels_numpy import (
        HALF_TO_F32,
        fids_of_bytes,
        fids_of_ints,
        route_keys,
        scatter_answer,
        scatter_answer_f16,
        segment_sum,
    )

    ACCELERATED = False
