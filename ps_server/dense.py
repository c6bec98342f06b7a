"""Dense parameters: named float32 arrays pulled and pushed whole.

Training shard 0 holds the live arrays and trains them with the same optimizer kernels
as embedding rows (a dense array is one row of ``size`` values); serving servers hold
copies that the sync agent replaces. Every push takes the next version.
"""

from __future__ import annotations

import dataclasses
import threading
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from monolith_ps.config import DenseConfig
from monolith_ps.optimizer_specs import INITIALIZERS, OPTIMIZERS
from ps_server.errors import BadRequestError, UnknownNameError, WrongRoleError
from ps_server.optim.initializers import init_rows
from ps_server.optim.optimizers import init_state_rows, optimizer_step

__all__ = ["DenseArrayInfo", "DenseStore"]


@dataclasses.dataclass(frozen=True)
class DenseArrayInfo:
    name: str
    size: int
    optimizer: str


class DenseStore:
    """Named dense arrays with their optimizer state and one version for all of them."""

    def __init__(self, configs: Sequence[DenseConfig], trainable: bool = True) -> None:
        self.trainable = trainable
        self._lock = threading.Lock()
        self._configs = {cfg.name: cfg for cfg in configs}
        self._values: dict[str, np.ndarray] = {}
        self._states: dict[str, np.ndarray] = {}
        self._hyper: dict[str, tuple[int, np.ndarray]] = {}
        self._version = 0
        for cfg in configs:
            spec = OPTIMIZERS[cfg.optimizer]
            init = INITIALIZERS[cfg.initializer]
            # One row of ``size`` values, as the row kernels expect.
            values = np.empty((1, cfg.size), dtype=np.float32)
            key = np.array([zlib.crc32(cfg.name.encode())], dtype=np.uint64)
            init_rows(
                init.kind,
                init.parameters(dict(cfg.initializer_args)),
                np.uint64(cfg.seed),
                key,
                np.zeros((1, cfg.size), dtype=np.float32),
                values,
            )
            self._values[cfg.name] = values
            if trainable:
                hyper = spec.hyper_parameters(dict(cfg.optimizer_args))
                state = np.empty((1, spec.state_width(cfg.size)), dtype=np.float32)
                init_state_rows(spec.kind, hyper, state)
                self._states[cfg.name] = state
                self._hyper[cfg.name] = (spec.kind, hyper)

    @property
    def version(self) -> int:
        return self._version

    def describe(self) -> list[DenseArrayInfo]:
        return [DenseArrayInfo(c.name, c.size, c.optimizer) for c in self._configs.values()]

    def size_of(self, name: str) -> int:
        """Length of array ``name``; ``UnknownNameError`` naming it when absent."""
        try:
            return self._configs[name].size
        except KeyError:
            raise UnknownNameError(
                f"unknown dense array {name!r} (this server has: "
                f"{', '.join(sorted(self._configs)) or 'none'})"
            ) from None

    def pull(self, names: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], int]:
        """Copies of the named arrays (all when ``names`` is empty) and their version."""
        for name in names:
            self.size_of(name)
        with self._lock:
            wanted = names or list(self._values)
            return {name: self._values[name][0].copy() for name in wanted}, self._version

    def push(self, grads: Mapping[str, np.ndarray]) -> int:
        """Apply one optimizer step to each named array; returns the new version.

        Every gradient is checked (name, size, finite) before any array changes.
        """
        if not self.trainable:
            raise WrongRoleError("dense arrays on a serving server are read-only")
        checked = {}
        for name, grad in grads.items():
            size = self.size_of(name)
            grad = np.ascontiguousarray(grad, dtype=np.float32).reshape(1, -1)
            if grad.shape[1] != size:
                raise BadRequestError(
                    f"grads of dense array {name!r}: expected {size} values, got {grad.shape[1]}"
                )
            if not np.isfinite(grad).all():
                raise BadRequestError(f"grads of dense array {name!r}: NaN or Inf")
            checked[name] = grad
        with self._lock:
            for name, grad in checked.items():
                kind, hyper = self._hyper[name]
                optimizer_step(
                    kind, hyper, self._values[name][0], self._states[name][0], grad[0], 1.0
                )
            self._version += 1
            return self._version

    def export(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
        """Copies of values and optimizer states (empty on serving), and the version."""
        with self._lock:
            values = {name: v[0].copy() for name, v in self._values.items()}
            states = {name: s[0].copy() for name, s in self._states.items()}
            return values, states, self._version

    def load(
        self,
        values: Mapping[str, np.ndarray],
        version: int,
        states: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Replace arrays (and optimizer states) wholesale, e.g. from a snapshot or a sync."""
        for name, array in values.items():
            if np.asarray(array).reshape(-1).shape[0] != self.size_of(name):
                raise BadRequestError(
                    f"dense array {name!r}: expected {self.size_of(name)} values, "
                    f"got {np.asarray(array).size}"
                )
        with self._lock:
            for name, array in values.items():
                self._values[name] = np.array(array, dtype=np.float32).reshape(1, -1)
            for name, state in (states or {}).items():
                if name in self._states:
                    self._states[name] = np.array(state, dtype=np.float32).reshape(1, -1)
            self._version = int(version)
