"""Initializers: reproducible per (key, seed), the documented distribution, cheap normal."""

from __future__ import annotations

import numpy as np
import pytest
from optim_reference import init_reference, stream

from monolith_ps.optimizer_specs import INITIALIZERS
from ps_server.optim.initializers import init_rows

DIM = 16


def run(name: str, args: dict, keys: np.ndarray, seed: int, dim: int = DIM) -> np.ndarray:
    spec = INITIALIZERS[name]
    out = np.empty((len(keys), dim), np.float32)
    default = np.arange(dim, dtype=np.float32)[None, :]
    init_rows(spec.kind, spec.parameters(args), np.uint64(seed), keys, default, out)
    return out


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("zeros", {}),
        ("constant", {"value": 0.25}),
        ("uniform", {"low": -0.5, "high": 1.5}),
        ("normal", {"mean": 1.0, "std": 2.0}),
    ],
)
def test_initializer_matches_reference(name, args, rng):
    keys = rng.integers(0, 2**64, 200, dtype=np.uint64)
    got = run(name, args, keys, seed=5)
    np.testing.assert_allclose(got, init_reference(name, args, keys, 5, DIM), rtol=1e-6, atol=1e-6)


def test_normal_is_exactly_the_float32_four_lane_formula(rng):
    """Bit for bit: mean + scale * (sum of the draw's four 16-bit lanes - 131070), each step
    rounded to float32, as the table has always stored it."""
    keys = rng.integers(0, 2**64, 300, dtype=np.uint64)
    args = {"mean": 0.25, "std": 0.05}
    z = stream(keys, 3, 64)
    lanes = sum(((z >> np.uint64(16 * k)) & np.uint64(0xFFFF)).astype(np.int64) for k in range(4))
    spec = INITIALIZERS["normal"]
    mean, std = spec.parameters(args)[:2]
    scale = np.float32(std / np.sqrt(4.0 * (65536.0**2 - 1.0) / 12.0))
    want = np.float32(mean) + scale * (lanes - 131070).astype(np.float32)
    np.testing.assert_array_equal(
        run("normal", args, keys, seed=3, dim=64).view(np.uint32), want.view(np.uint32)
    )


def test_rows_depend_on_key_and_seed_only(rng):
    keys = rng.integers(0, 2**64, 50, dtype=np.uint64)
    a = run("normal", {}, keys, seed=1)
    np.testing.assert_array_equal(a[::-1], run("normal", {}, keys[::-1].copy(), seed=1))
    assert not np.allclose(a, run("normal", {}, keys, seed=2))
    assert len({row.tobytes() for row in a}) == len(keys)


def test_normal_mean_and_variance():
    keys = np.arange(20_000, dtype=np.uint64)
    x = run("normal", {"mean": 0.5, "std": 3.0}, keys, seed=9, dim=32).astype(np.float64)
    n = x.size
    # standard errors: mean 3/sqrt(n) ~ 0.004; the variance of a variance estimate is 2 sigma^4/n
    assert abs(x.mean() - 0.5) < 5 * 3.0 / np.sqrt(n)
    assert abs(x.var() - 9.0) < 5 * 9.0 * np.sqrt(2 / n) * 1.2
    # four-lane sum: bounded at sqrt(12) sigma, and no dimension is biased
    assert np.abs(x - 0.5).max() <= 3.0 * np.sqrt(12) + 1e-4
    assert np.abs(x.mean(axis=0) - 0.5).max() < 5 * 3.0 / np.sqrt(20_000)


def test_uniform_range_and_moments():
    x = run("uniform", {"low": -1.0, "high": 3.0}, np.arange(10_000, dtype=np.uint64), seed=0)
    assert x.min() >= -1.0 and x.max() < 3.0
    assert abs(x.mean() - 1.0) < 0.02
    assert abs(x.var() - 16 / 12) < 0.03


def test_learned_copies_the_default_row():
    out = run("learned", {}, np.arange(3, dtype=np.uint64), seed=0)
    np.testing.assert_array_equal(out, np.tile(np.arange(DIM, dtype=np.float32), (3, 1)))
