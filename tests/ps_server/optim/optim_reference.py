"""Plain numpy references for the optimizers and initializers (float64 math)."""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_INIT_SEED = np.uint64(0x5851F42D4C957F2D)


def mix64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.uint64)
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def stream(keys: np.ndarray, seed: int, dim: int) -> np.ndarray:
    """The (n, dim) uint64 splitmix64 draws of each key's row."""
    base = mix64(keys.astype(np.uint64) ^ mix64(np.array([seed], dtype=np.uint64) ^ _INIT_SEED))
    counters = (np.arange(1, dim + 1, dtype=np.uint64) * _GOLDEN)[None, :]
    return mix64(base[:, None] + counters)


def init_reference(name: str, args: dict, keys: np.ndarray, seed: int, dim: int) -> np.ndarray:
    if name == "zeros":
        return np.zeros((len(keys), dim))
    if name == "constant":
        return np.full((len(keys), dim), args.get("value", 0.0))
    z = stream(keys, seed, dim)
    if name == "uniform":
        low, high = args.get("low", -0.05), args.get("high", 0.05)
        return low + (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 * (high - low)
    if name == "normal":
        lanes = sum(
            ((z >> np.uint64(16 * k)) & np.uint64(0xFFFF)).astype(np.float64) for k in range(4)
        )
        std = np.sqrt(4 * (65536.0**2 - 1) / 12)
        return args.get("mean", 0.0) + args.get("std", 0.05) * (lanes - 131070.0) / std
    raise ValueError(name)


def new_state(name: str, args: dict, dim: int) -> np.ndarray:
    if name == "sgd":
        return np.zeros(0)
    if name in ("momentum",):
        return np.zeros(dim)
    if name == "adagrad":
        return np.full(dim, args.get("initial_accumulator", 0.1))
    if name == "adam":
        return np.zeros(2 * dim + 1)
    if name == "ftrl":
        return np.concatenate([np.full(dim, args.get("initial_accumulator", 0.1)), np.zeros(dim)])
    raise ValueError(name)


def step(name: str, args: dict, w: np.ndarray, s: np.ndarray, g: np.ndarray, scale: float = 1.0):
    """One step on float64 copies; returns new (w, s)."""
    w, s, g = w.astype(np.float64), s.astype(np.float64), g.astype(np.float64)
    dim = w.shape[0]
    if name == "sgd":
        return w - args.get("lr", 0.01) * scale * g, s
    if name == "momentum":
        lr, mu = args.get("lr", 0.01) * scale, args.get("momentum", 0.9)
        v = mu * s + g
        if args.get("nesterov", False):
            return w - lr * (g + mu * v), v
        return w - lr * v, v
    if name == "adagrad":
        lr, eps = args.get("lr", 0.01) * scale, args.get("eps", 1e-10)
        acc = s + g * g
        return w - lr * g / (np.sqrt(acc) + eps), acc
    if name == "adam":
        lr = args.get("lr", 0.001) * scale
        b1, b2, eps = args.get("beta1", 0.9), args.get("beta2", 0.999), args.get("eps", 1e-8)
        t = s[2 * dim] + 1
        m = b1 * s[:dim] + (1 - b1) * g
        v = b2 * s[dim : 2 * dim] + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1**t), v / (1 - b2**t)
        return w - lr * mhat / (np.sqrt(vhat) + eps), np.concatenate([m, v, [t]])
    if name == "ftrl":
        alpha = args.get("alpha", 0.05) * scale
        beta, l1, l2 = args.get("beta", 1.0), args.get("l1", 0.0), args.get("l2", 0.0)
        p = args.get("lr_power", -0.5)
        n, z = s[:dim], s[dim:]
        n_new = n + g * g
        sigma = (n_new ** (-p) - n ** (-p)) / alpha
        z = z + g - sigma * w
        w_new = np.where(
            np.abs(z) <= l1, 0.0, (np.sign(z) * l1 - z) / ((beta + n_new ** (-p)) / alpha + l2)
        )
        return w_new, np.concatenate([n_new, z])
    raise ValueError(name)
