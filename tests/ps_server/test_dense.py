"""``DenseStore``: dense arrays trained by the row optimizers, as configured."""

from __future__ import annotations

import numpy as np
import yaml

from monolith_ps.config import parse_config
from monolith_ps.table_config import TableConfig
from ps_server.dense import DenseStore
from ps_server.table import EmbeddingTable

NESTEROV_CONFIG = """
tables: [{name: t, dim: 4}]
dense:
  - {name: w, size: 4, optimizer: momentum,
     optimizer_args: {lr: 0.1, momentum: 0.5, nesterov: true}}
"""


def test_a_dense_momentum_array_with_nesterov_steps_like_a_table_row():
    config = parse_config(yaml.safe_load(NESTEROV_CONFIG))
    dense = DenseStore(config.dense)
    args = dict(config.dense[0].optimizer_args)
    row = EmbeddingTable(
        TableConfig(name="r", dim=4, optimizer="momentum", optimizer_args=args, initializer="zeros")
    )
    key = np.array([7], dtype=np.uint64)
    grads = [
        np.array([1.0, -2.0, 0.5, 0.0], np.float32),
        np.array([0.5, 1.0, -1.0, 2.0], np.float32),
    ]
    for grad in grads:
        dense.push({"w": grad})
        row.apply_gradients(key, grad[None, :])
    values = dense.pull(["w"])[0]["w"]
    np.testing.assert_array_equal(values, row.find(key)[0][0])
    # Nesterov by hand: v = mu * v + g; w -= lr * (g + mu * v), from w = v = 0.
    w, v = np.zeros(4), np.zeros(4)
    for grad in grads:
        v = 0.5 * v + grad
        w -= 0.1 * (grad + 0.5 * v)
    np.testing.assert_allclose(values, w, rtol=1e-6)
    plain_first_step = -0.1 * grads[0]
    assert not np.allclose(values, plain_first_step - 0.1 * (0.5 * grads[0] + grads[1]))
