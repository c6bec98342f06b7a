"""The MovieLens factorization machine and its metrics, without a PS."""

from __future__ import annotations

import types

import numpy as np
import pytest

from examples.movielens.metrics import log_loss, roc_auc
from examples.movielens.model import FactorizationMachine, Field, sigmoid

_FIELDS = (
    Field("user", "user"),
    Field("genre", "genre", pooled=True),
    Field("hour", "context", column=0),
    Field("weekday", "context", column=1),
)


def _pairwise_auc(labels, scores):
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def test_auc_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(size=500) + labels, 1)  # rounding makes many ties
    assert roc_auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores), abs=1e-12)
    assert roc_auc(labels, -scores) == pytest.approx(1 - roc_auc(labels, scores), abs=1e-12)
    assert roc_auc(labels, np.zeros(500)) == pytest.approx(0.5)


def test_auc_of_one_class_is_nan_and_shapes_must_match():
    assert np.isnan(roc_auc(np.ones(3), np.arange(3.0)))
    with pytest.raises(ValueError, match="shape"):
        roc_auc(np.ones(3), np.ones(4))


def test_log_loss_of_known_values():
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2))
    assert log_loss([1], [1.0]) == pytest.approx(0.0, abs=1e-6)


def _batch(rng, n=6, width=3):
    keys = {
        "user": rng.integers(1, 5, n).astype(np.uint64),
        "genre": rng.integers(1, 4, (n, width)).astype(np.uint64),
        "context": rng.integers(1, 9, (n, 2)).astype(np.uint64),
    }
    keys["genre"][:, -1] = 0  # padding
    keys["genre"][0, :] = 0  # an example with no genre at all
    return types.SimpleNamespace(keys=keys, labels=rng.integers(0, 2, n).astype(np.float32))


def _rows(rng, model, batch):
    rows = {t: rng.normal(size=k.shape + (model.row_dim,)) for t, k in batch.keys.items()}
    rows["genre"][batch.keys["genre"] == 0] = 0.0
    return rows


@pytest.mark.parametrize("hidden", [0, 5])
def test_backward_matches_finite_differences(hidden):
    rng = np.random.default_rng(1)
    model = FactorizationMachine(_FIELDS, factor_dim=3, hidden=hidden)
    batch = _batch(rng)
    rows = _rows(rng, model, batch)
    dense = {name: rng.normal(size=a.size) for name, a in model.init_dense(seed=2).items()}
    weights = rng.normal(size=len(batch.labels))

    def objective(rows, dense):
        logits, _ = model.forward(batch.keys, rows, dense)
        return float(weights @ logits)

    _, cache = model.forward(batch.keys, rows, dense)
    row_grads, dense_grads = model.backward(cache, weights, dense)
    eps = 1e-6
    for table, value in rows.items():
        numeric = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            bumped = {**rows, table: value.copy()}
            bumped[table][idx] += eps
            numeric[idx] = (objective(bumped, dense) - objective(rows, dense)) / eps
        if table == "genre":
            numeric[batch.keys["genre"] == 0] = 0.0  # pad rows are not parameters
        np.testing.assert_allclose(row_grads[table], numeric, atol=1e-4, err_msg=table)
    for name, value in dense.items():
        numeric = np.zeros_like(value)
        for i in range(value.size):
            bumped = {**dense, name: value.copy()}
            bumped[name][i] += eps
            numeric[i] = (objective(rows, bumped) - objective(rows, dense)) / eps
        np.testing.assert_allclose(dense_grads[name], numeric, atol=1e-4, err_msg=name)


def test_train_step_gradients_are_of_the_summed_log_loss():
    rng = np.random.default_rng(3)
    model = FactorizationMachine(_FIELDS, factor_dim=2)
    batch = _batch(rng)
    rows = _rows(rng, model, batch)
    dense = model.init_dense()
    result = model.train_step(batch, rows, dense)
    logits, _ = model.forward(batch.keys, rows, dense)
    p = sigmoid(logits)
    assert result.loss == pytest.approx(log_loss(batch.labels, p), rel=1e-5)
    np.testing.assert_allclose(result.predictions, p)
    assert result.dense_grads["bias"][0] == pytest.approx(float((p - batch.labels).sum()), rel=1e-5)


def test_model_rejects_bad_shapes_of_itself():
    with pytest.raises(ValueError, match="field"):
        FactorizationMachine([])
    with pytest.raises(ValueError, match="factor_dim"):
        FactorizationMachine(_FIELDS, factor_dim=0)
    model = FactorizationMachine(_FIELDS, factor_dim=4, hidden=3)
    assert model.tables == ("user", "genre", "context")
    assert model.dense_sizes() == {"bias": 1, "mlp_w1": 4 * 4 * 3, "mlp_b1": 3, "mlp_w2": 3}
