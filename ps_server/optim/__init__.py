"""Optimizers and initializers of embedding rows: Numba kernels plus their specs."""

from ps_server.optim.initializers import INITIALIZERS, InitializerSpec
from ps_server.optim.optimizers import OPTIMIZERS, OptimizerSpec

__all__ = ["INITIALIZERS", "OPTIMIZERS", "InitializerSpec", "OptimizerSpec"]
