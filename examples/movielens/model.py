"""A factorization machine (optionally with a small MLP beside it) in vectorized numpy.

Each field reads rows of ``1 + factor_dim`` floats from a PS table: column 0 is
the field's first-order weight, the rest its factor vector. The logit is

    bias + sum_f w_f + sum_{f<g} <v_f, v_g> [+ mlp(concat_f v_f)]

with the pairwise term computed as ``0.5 * (|sum_f v_f|^2 - sum_f |v_f|^2)``.
A multi-hot field (``pooled``) averages the rows of its non-pad keys. The dense
part (bias and MLP) is a dict of flat float32 arrays, the shape the PS's
PullDense/PushDense carry. ``backward`` returns a gradient for every looked-up
row in the shape of the rows, so a trainer can sum them per unique key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from ps_client.trainer import StepResult

__all__ = ["FactorizationMachine", "Field", "sigmoid"]


@dataclasses.dataclass(frozen=True)
class Field:
    """One model input: the keys of ``table`` (one ``column`` of them, or all of them)."""

    name: str
    table: str
    column: int | None = None  # column of a 2-D key matrix; None = the table's whole key array
    pooled: bool = False  # mean over the non-pad keys of each example (multi-hot)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


@dataclasses.dataclass
class _Cache:
    keys: Mapping[str, np.ndarray]
    rows: Mapping[str, np.ndarray]
    pool_weight: dict[str, np.ndarray]  # pooled field -> (n, width) mask / count
    factors: np.ndarray  # (n, F, k)
    factor_sum: np.ndarray  # (n, k)
    mlp_input: np.ndarray | None
    mlp_hidden: np.ndarray | None


class FactorizationMachine:
    """FM over ``fields`` with ``factor_dim`` factors; ``hidden > 0`` adds a DeepFM-style MLP.

    Usage::

        model = FactorizationMachine(fields, factor_dim=8)
        logits, cache = model.forward(batch.keys, rows, dense)
        row_grads, dense_grads = model.backward(cache, dlogits)
    """

    def __init__(
        self,
        fields: Sequence[Field],
        factor_dim: int = 8,
        hidden: int = 0,
        pad_key: int = 0,
    ) -> None:
        if not fields:
            raise ValueError("a factorization machine needs at least one field")
        if factor_dim < 1:
            raise ValueError(f"factor_dim must be >= 1, got {factor_dim}")
        if hidden < 0:
            raise ValueError(f"hidden must be >= 0, got {hidden}")
        self.fields = tuple(fields)
        self.factor_dim = factor_dim
        self.hidden = hidden
        self.pad_key = np.uint64(pad_key)

    @property
    def row_dim(self) -> int:
        """Floats per embedding row: one first-order weight plus the factor vector."""
        return 1 + self.factor_dim

    @property
    def tables(self) -> tuple[str, ...]:
        """The PS tables the model reads, each once, in field order."""
        return tuple(dict.fromkeys(field.table for field in self.fields))

    def dense_sizes(self) -> dict[str, int]:
        """Name and size of every dense array (the ``dense:`` entries of the config)."""
        sizes = {"bias": 1}
        if self.hidden:
            width = len(self.fields) * self.factor_dim
            sizes |= {"mlp_w1": width * self.hidden, "mlp_b1": self.hidden, "mlp_w2": self.hidden}
        return sizes

    def init_dense(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Dense arrays for a model that keeps them locally (zeros bias, scaled-normal weights)."""
        rng = np.random.default_rng(seed)
        dense = {}
        for name, size in self.dense_sizes().items():
            scale = 0.0 if name in ("bias", "mlp_b1") else 1.0 / np.sqrt(self.hidden)
            dense[name] = (rng.standard_normal(size) * scale).astype(np.float32)
        return dense

    # ------------------------------------------------------------------ forward / backward

    def forward(
        self,
        keys: Mapping[str, np.ndarray],
        rows: Mapping[str, np.ndarray],
        dense: Mapping[str, np.ndarray],
    ) -> tuple[np.ndarray, _Cache]:
        """Logits ``(n,)`` from the rows of each table's keys (pad rows must be zeros)."""
        weights, factors, pool_weight = [], [], {}
        for field in self.fields:
            row = rows[field.table]
            if field.column is not None:
                row = row[:, field.column]
            if field.pooled:
                present = keys[field.table] != self.pad_key
                count = np.maximum(present.sum(axis=1, keepdims=True), 1)
                pw = (present / count).astype(np.float32)
                pool_weight[field.name] = pw
                row = np.einsum("nm,nmd->nd", pw, row)
            weights.append(row[:, 0])
            factors.append(row[:, 1:])
        v = np.stack(factors, axis=1)  # (n, F, k)
        s = v.sum(axis=1)
        pairwise = 0.5 * (np.einsum("nk,nk->n", s, s) - np.einsum("nfk,nfk->n", v, v))
        logits = dense["bias"][0] + np.sum(weights, axis=0) + pairwise
        mlp_input = mlp_hidden = None
        if self.hidden:
            mlp_input = v.reshape(v.shape[0], -1)
            w1 = dense["mlp_w1"].reshape(mlp_input.shape[1], self.hidden)
            mlp_hidden = np.maximum(mlp_input @ w1 + dense["mlp_b1"], 0.0)
            logits = logits + mlp_hidden @ dense["mlp_w2"]
        cache = _Cache(keys, rows, pool_weight, v, s, mlp_input, mlp_hidden)
        return logits, cache

    def backward(
        self, cache: _Cache, dlogits: np.ndarray, dense: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Gradients of the rows (shaped like ``rows``) and of the dense arrays."""
        g = dlogits.astype(np.float32, copy=False)
        dv = g[:, None, None] * (cache.factor_sum[:, None, :] - cache.factors)  # (n, F, k)
        dense_grads = {"bias": np.array([g.sum()], dtype=np.float32)}
        if self.hidden:
            w1 = dense["mlp_w1"].reshape(cache.mlp_input.shape[1], self.hidden)
            dh = np.outer(g, dense["mlp_w2"]) * (cache.mlp_hidden > 0)
            dense_grads |= {
                "mlp_w2": cache.mlp_hidden.T @ g,
                "mlp_b1": dh.sum(axis=0),
                "mlp_w1": (cache.mlp_input.T @ dh).ravel(),
            }
            dv = dv + (dh @ w1.T).reshape(dv.shape)
        dfield = np.concatenate([np.broadcast_to(g[:, None, None], dv.shape[:2] + (1,)), dv], 2)
        row_grads = {table: np.zeros_like(cache.rows[table]) for table in self.tables}
        for f, field in enumerate(self.fields):
            grad = dfield[:, f]
            if field.pooled:
                grad = cache.pool_weight[field.name][:, :, None] * grad[:, None, :]
            if field.column is not None:
                row_grads[field.table][:, field.column] += grad
            else:
                row_grads[field.table] += grad
        return row_grads, {
            name: a.astype(np.float32, copy=False) for name, a in dense_grads.items()
        }

    # ------------------------------------------------------------------ trainer steps

    def train_step(
        self,
        batch: object,
        rows: Mapping[str, np.ndarray],
        dense: Mapping[str, np.ndarray],
    ) -> StepResult:
        """Mean log loss of ``batch`` (with ``.keys`` and ``.labels``) and the gradients of the
        summed loss: every example pushes its full gradient, the scale sparse optimizers such
        as Adagrad are tuned for (a mean would shrink a key's update with the batch size)."""
        logits, cache = self.forward(batch.keys, rows, dense)
        labels = batch.labels
        p = sigmoid(logits)
        # log(1 + e^x) - y x, stable for either sign of x
        losses = np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))
        row_grads, dense_grads = self.backward(cache, p - labels, dense)
        return StepResult(
            loss=float(losses.mean()),
            row_grads=row_grads,
            dense_grads=dense_grads,
            predictions=p,
        )

    def predict(
        self,
        batch: object,
        rows: Mapping[str, np.ndarray],
        dense: Mapping[str, np.ndarray],
    ) -> np.ndarray:
        """Click probabilities ``(n,)`` for ``batch``."""
        logits, _ = self.forward(batch.keys, rows, dense)
        return sigmoid(logits)
