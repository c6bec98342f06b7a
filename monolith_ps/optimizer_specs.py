"""The optimizers and initializers a table or dense array may name: plain data.

Each spec gives a name, the integer kind the Numba kernels dispatch on
(``ps_server/optim``), the arguments with their defaults in kernel order and, for an
optimizer, how many float32 values of state a row carries. The config schema validates
against these specs without importing a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "INITIALIZERS",
    "OPTIMIZERS",
    "InitializerSpec",
    "OptimizerSpec",
]

# Optimizer kinds.
SGD = 0
MOMENTUM = 1
ADAGRAD = 2
ADAM = 3
FTRL = 4

# Initializer kinds.
ZEROS = 0
CONSTANT = 1
UNIFORM = 2
NORMAL = 3
LEARNED = 4


@dataclass(frozen=True)
class OptimizerSpec:
    """What an optimizer is called, its id in the kernels, its arguments and state width."""

    name: str
    kind: int
    args: tuple[tuple[str, float], ...]  # (name, default) in kernel order
    state_per_dim: int
    state_extra: int = 0

    def state_width(self, dim: int) -> int:
        """Float32 values of optimizer state per row."""
        return self.state_per_dim * dim + self.state_extra

    def hyper_parameters(self, given: dict[str, float]) -> np.ndarray:
        """The float64 argument array of the kernels, defaults filled in."""
        return np.array([float(given.get(k, d)) for k, d in self.args], dtype=np.float64)


@dataclass(frozen=True)
class InitializerSpec:
    """What an initializer is called, its id in the kernels and its arguments."""

    name: str
    kind: int
    args: tuple[tuple[str, float], ...]  # (name, default) in kernel order

    def parameters(self, given: dict[str, float]) -> np.ndarray:
        """The float64 argument array of the kernels (always two values), defaults filled in."""
        values = [float(given.get(k, d)) for k, d in self.args]
        return np.array((values + [0.0, 0.0])[:2], dtype=np.float64)


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec("sgd", SGD, (("lr", 0.01),), 0),
    "momentum": OptimizerSpec(
        "momentum", MOMENTUM, (("lr", 0.01), ("momentum", 0.9), ("nesterov", 0.0)), 1
    ),
    "adagrad": OptimizerSpec(
        "adagrad", ADAGRAD, (("lr", 0.01), ("initial_accumulator", 0.1), ("eps", 1e-10)), 1
    ),
    "adam": OptimizerSpec(
        "adam",
        ADAM,
        (("lr", 0.001), ("beta1", 0.9), ("beta2", 0.999), ("eps", 1e-8)),
        2,
        1,
    ),
    "ftrl": OptimizerSpec(
        "ftrl",
        FTRL,
        (
            ("alpha", 0.05),
            ("beta", 1.0),
            ("l1", 0.0),
            ("l2", 0.0),
            ("lr_power", -0.5),
            ("initial_accumulator", 0.1),
        ),
        2,
    ),
}

INITIALIZERS: dict[str, InitializerSpec] = {
    "zeros": InitializerSpec("zeros", ZEROS, ()),
    "constant": InitializerSpec("constant", CONSTANT, (("value", 0.0),)),
    "uniform": InitializerSpec("uniform", UNIFORM, (("low", -0.05), ("high", 0.05))),
    "normal": InitializerSpec("normal", NORMAL, (("mean", 0.0), ("std", 0.05))),
    "learned": InitializerSpec("learned", LEARNED, ()),
}
