"""Row optimizers: SGD, Momentum, Adagrad, Adam and FTRL.

Each optimizer updates one embedding row ``w`` (float32, ``dim`` wide) in place from a
gradient row ``g`` and a state row ``s`` (float32, ``state_width(dim)`` wide), all 1-D views
(in the table's hot kernels, compiled without reference counting, a view costs nothing).
Hyper-parameters travel
as a float64 array in the order of the spec's ``args``; ``lr_scale`` multiplies the learning
rate (frequency-aware scaling). :func:`optimizer_step` dispatches on the optimizer's kind.

State layouts:

- sgd: none.
- momentum: ``s[:dim]`` velocity; ``w -= lr * v`` (Nesterov: ``lr * (g + momentum * v)``).
- adagrad: ``s[:dim]`` accumulated squared gradients; ``w -= lr * g / (sqrt(acc) + eps)``.
- adam: ``s[:dim]`` first moment, ``s[dim:2dim]`` second moment, ``s[2dim]`` this row's step
  count; bias-corrected per row, so rows updated rarely still take full-sized steps.
- ftrl: ``s[:dim]`` accumulator ``n``, ``s[dim:2dim]`` linear term ``z`` (McMahan et al. 2013,
  with a general ``lr_power``: ``-0.5`` is the paper's square root).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from monolith_ps.optimizer_specs import ADAGRAD, ADAM, FTRL, MOMENTUM, SGD


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def init_state(kind, hp, s):
    """Fill the state row ``s`` with a new row's optimizer state."""
    if kind == ADAGRAD:
        s[:] = np.float32(hp[1])
    elif kind == FTRL:
        half = s.shape[0] // 2
        s[:half] = np.float32(hp[5])
        s[half:] = np.float32(0.0)
    else:
        s[:] = np.float32(0.0)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def optimizer_step(kind, hp, w, s, g, lr_scale):
    """Apply one optimizer step to the values row ``w`` with state row ``s`` and gradient
    row ``g`` (1-D views, ``dim = g.shape[0]``). Each loop runs over one row's contiguous
    columns, so the compiler turns it into vector instructions."""
    dim = g.shape[0]
    lr = np.float32(hp[0] * lr_scale)
    if kind == SGD:
        for j in range(dim):
            w[j] -= lr * g[j]
    elif kind == MOMENTUM:
        mu = np.float32(hp[1])
        if hp[2] != 0.0:
            for j in range(dim):
                v = mu * s[j] + g[j]
                s[j] = v
                w[j] -= lr * (g[j] + mu * v)
        else:
            for j in range(dim):
                v = mu * s[j] + g[j]
                s[j] = v
                w[j] -= lr * v
    elif kind == ADAGRAD:
        eps = np.float32(hp[2])
        for j in range(dim):
            acc = s[j] + g[j] * g[j]
            s[j] = acc
            w[j] -= lr * g[j] / (np.sqrt(acc) + eps)
    elif kind == ADAM:
        b1 = hp[1]
        b2 = hp[2]
        first = s[:dim]
        second = s[dim : 2 * dim]
        t = s[2 * dim] + np.float32(1.0)
        s[2 * dim] = t
        c1 = np.float32(1.0 / (1.0 - b1 ** float(t)))
        c2 = np.float32(1.0 / (1.0 - b2 ** float(t)))
        b1f = np.float32(b1)
        b2f = np.float32(b2)
        eps = np.float32(hp[3])
        one = np.float32(1.0)
        for j in range(dim):
            m = b1f * first[j] + (one - b1f) * g[j]
            v = b2f * second[j] + (one - b2f) * g[j] * g[j]
            first[j] = m
            second[j] = v
            w[j] -= lr * (m * c1) / (np.sqrt(v * c2) + eps)
    elif kind == FTRL:
        beta = np.float32(hp[1])
        l1 = np.float32(hp[2])
        l2 = np.float32(hp[3])
        square_root = hp[4] == -0.5
        neg_power = np.float32(-hp[4])
        acc = s[:dim]
        linear = s[dim : 2 * dim]
        for j in range(dim):
            n = acc[j]
            n_new = n + g[j] * g[j]
            if square_root:
                root_old = np.sqrt(n)
                root_new = np.sqrt(n_new)
            else:
                root_old = n**neg_power
                root_new = n_new**neg_power
            sigma = (root_new - root_old) / lr
            z = linear[j] + g[j] - sigma * w[j]
            acc[j] = n_new
            linear[j] = z
            if abs(z) <= l1:
                w[j] = np.float32(0.0)
            else:
                sign = np.float32(1.0) if z > 0 else np.float32(-1.0)
                w[j] = (sign * l1 - z) / ((beta + root_new) / lr + l2)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def frequency_lr_scale(count, power):
    """``1 / (1 + count) ** power``: rows pushed often take smaller steps when ``power > 0``."""
    if power == 0.0:
        return 1.0
    return 1.0 / math.pow(1.0 + count, power)


@njit(nogil=True, cache=True, error_model="numpy")
def init_state_rows(kind, hp, out):
    """Fill each row of ``out`` with a new row's optimizer state."""
    for i in range(out.shape[0]):
        init_state(kind, hp, out[i])
