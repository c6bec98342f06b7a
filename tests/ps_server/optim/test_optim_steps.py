"""Each optimizer, run through the table's fused kernel, against a float64 numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
from optim_reference import init_reference, new_state, step

from monolith_ps.table_config import TableConfig
from ps_server.table import EmbeddingTable

CASES = [
    ("sgd", {"lr": 0.1}, 0.0),
    ("momentum", {"lr": 0.05, "momentum": 0.8}, 0.0),
    ("momentum", {"lr": 0.05, "momentum": 0.9, "nesterov": True}, 0.0),
    ("adagrad", {"lr": 0.05, "initial_accumulator": 0.2}, 0.0),
    ("adagrad", {"lr": 0.05}, 0.5),
    ("adam", {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6}, 0.0),
    ("ftrl", {"alpha": 0.1, "beta": 1.0, "l1": 0.001, "l2": 0.01}, 0.0),
    ("ftrl", {"alpha": 0.1, "beta": 0.5, "l1": 0.0, "l2": 0.0, "lr_power": -0.7}, 0.3),
]


@pytest.mark.parametrize(("name", "args", "power"), CASES)
def test_optimizer_matches_numpy_reference(name, args, power, rng):
    dim, seed = 6, 11
    init_args = {"mean": 0.0, "std": 0.3}
    table = EmbeddingTable(
        TableConfig(
            name="t", dim=dim, optimizer=name, optimizer_args=args, initializer="normal",
            initializer_args=init_args, seed=seed, lr_frequency_power=power,
        )
    )  # fmt: skip
    ref: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
    for _ in range(6):
        keys = rng.integers(0, 20, 40).astype(np.uint64)  # many duplicates per batch
        grads = rng.normal(0, 1, (40, dim)).astype(np.float32)
        table.apply_gradients(keys, grads)
        for k in np.unique(keys):
            mask = keys == k
            g = grads[mask].astype(np.float64).sum(axis=0)
            if int(k) not in ref:
                w0 = init_reference("normal", init_args, np.array([k], np.uint64), seed, dim)[0]
                ref[int(k)] = (
                    w0.astype(np.float32).astype(np.float64),
                    new_state(name, args, dim),
                    0,
                )
            w, s, count = ref[int(k)]
            w, s = step(name, args, w, s, g, scale=1.0 / (1.0 + count) ** power)
            ref[int(k)] = (w, s, count + int(mask.sum()))

    delta = table.export_since(0, with_state=True)
    assert len(delta) == len(ref)
    for i, k in enumerate(delta.keys):
        w, s, count = ref[int(k)]
        np.testing.assert_allclose(delta.values[i], w, rtol=2e-4, atol=2e-5, err_msg=f"key {k}")
        np.testing.assert_allclose(delta.opt_state[i], s, rtol=2e-4, atol=2e-5)
        assert delta.push_counts[i] == count
    assert delta.opt_state.shape == (len(ref), table.state_width)


def test_ftrl_l1_keeps_weights_at_zero_for_small_gradients():
    table = EmbeddingTable(
        TableConfig(name="t", dim=4, optimizer="ftrl", optimizer_args={"l1": 10.0})
    )
    keys = np.arange(5, dtype=np.uint64)
    table.apply_gradients(keys, np.full((5, 4), 0.01, np.float32))
    values, found = table.find(keys)
    assert found.all() and not values.any()


def test_frequency_power_shrinks_steps_of_often_pushed_rows():
    cfg = dict(name="t", dim=2, optimizer="sgd", optimizer_args={"lr": 1.0}, initializer="zeros")
    plain = EmbeddingTable(TableConfig(**cfg))
    scaled = EmbeddingTable(TableConfig(**cfg, lr_frequency_power=1.0))
    key = np.array([7], np.uint64)
    for t in (plain, scaled):
        for _ in range(4):
            t.apply_gradients(key, np.ones((1, 2), np.float32))
    # steps 1, 1/2, 1/3, 1/4 after 0, 1, 2, 3 earlier pushes
    np.testing.assert_allclose(plain.find(key)[0][0], [-4.0, -4.0])
    np.testing.assert_allclose(
        scaled.find(key)[0][0], -np.full(2, 1 + 1 / 2 + 1 / 3 + 1 / 4), rtol=1e-6
    )


def test_one_push_inserts_admitted_keys_across_growth_and_trains_the_learned_row(rng):
    """The fused push kernel stops for growth and resumes mid-batch: admitted keys without
    a row get one (from the learned default row) and their step, keys not admitted train the
    learned row once, every sum of duplicates applied once."""
    dim, args = 4, {"lr": 0.1, "initial_accumulator": 0.1}
    config = TableConfig(
        name="t", dim=dim, optimizer="adagrad", optimizer_args=args, initializer="learned",
        admit_after=2,
    )  # fmt: skip
    counted = EmbeddingTable(config)
    admitted = np.arange(1, 3001, dtype=np.uint64)
    counted.find_or_insert(admitted)
    counted.find_or_insert(admitted)
    table = EmbeddingTable(config)
    table.import_meta(counted.export_meta())  # keys admitted, no rows: the push inserts
    assert len(table) == 0
    pending = np.arange(10_001, 10_050, dtype=np.uint64)
    keys = np.concatenate([admitted, admitted[:500], pending])
    grads = rng.normal(0, 1, (keys.size, dim)).astype(np.float32)
    assert table.apply_gradients(keys, grads) == (3000, pending.size)
    # the learned row took one step from zeros with the summed pending gradients
    learned = step("adagrad", args, np.zeros(dim), new_state("adagrad", args, dim),
                   grads[-pending.size:].astype(np.float64).sum(axis=0), scale=1.0)[0]  # fmt: skip
    np.testing.assert_allclose(table.find(pending[:1])[0][0], learned, rtol=2e-4, atol=2e-5)
    values = table.find(admitted)[0]
    for i in (0, 499, 500, 2999):  # rows start from the learned row as it was (zeros)
        g = grads[keys == admitted[i]].astype(np.float64).sum(axis=0)
        w = step("adagrad", args, np.zeros(dim), new_state("adagrad", args, dim), g, 1.0)[0]
        np.testing.assert_allclose(values[i], w, rtol=2e-4, atol=2e-5, err_msg=f"key {i}")
