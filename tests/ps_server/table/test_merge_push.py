"""The push's one pass over its input (``update.merge_push``) against plain Python: distinct
keys in first-seen order, each one's occurrences chained, the first non-finite row."""

from __future__ import annotations

import numpy as np
import pytest

from ps_server.table.update import merge_push


def reference(keys: np.ndarray, grads: np.ndarray) -> tuple[list, list, list, int]:
    """Distinct keys, their counts and positions, and the first row with NaN or Inf."""
    for i, row in enumerate(grads):
        if not np.isfinite(row).all():
            return [], [], [], i
    positions: dict[int, list[int]] = {}
    for i, key in enumerate(keys.tolist()):
        positions.setdefault(key, []).append(i)
    unique = list(positions)
    return unique, [len(positions[k]) for k in unique], [positions[k] for k in unique], -1


def chain(first: int, next_same: np.ndarray) -> list[int]:
    out = [first]
    while next_same[out[-1]] >= 0:
        out.append(int(next_same[out[-1]]))
    return out


@pytest.mark.parametrize("n, distinct", [(0, 1), (1, 1), (50, 7), (1000, 900), (4096, 4096)])
def test_merge_matches_reference(n: int, distinct: int) -> None:
    rng = np.random.default_rng(n)
    pool = rng.integers(0, 2**64, distinct, dtype=np.uint64)
    keys = rng.choice(pool, n)
    grads = rng.standard_normal((n, 3), dtype=np.float32)
    unique, counts, first, next_same, u, bad = merge_push(keys, grads.view(np.uint32))
    want_unique, want_counts, want_positions, want_bad = reference(keys, grads)
    assert bad == want_bad == -1
    assert unique[:u].tolist() == want_unique
    assert counts[:u].tolist() == want_counts
    assert [chain(int(f), next_same) for f in first[:u]] == want_positions


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("row, col", [(0, 0), (5, 2), (9, 3)])
def test_first_non_finite_row_is_found(value: float, row: int, col: int) -> None:
    keys = np.arange(10, dtype=np.uint64) % 4
    grads = np.ones((10, 4), np.float32)
    grads[row, col] = value
    grads[9, 0] = np.nan  # a later bad row does not hide the first one
    *_, bad = merge_push(keys, grads.view(np.uint32))
    assert bad == reference(keys, grads)[3] == row


def test_largest_finite_values_pass() -> None:
    keys = np.array([3, 3], np.uint64)
    grads = np.full((2, 2), np.finfo(np.float32).max, np.float32)
    grads[1] = np.finfo(np.float32).smallest_subnormal
    *_, u, bad = merge_push(keys, grads.view(np.uint32))
    assert (u, bad) == (1, -1)


def test_every_sign_and_exponent_is_judged_as_numpy_does() -> None:
    """Each of the 512 sign-and-exponent patterns, with zero, one and random mantissas
    (NaN payloads, signalling NaNs, subnormals), one value per row."""
    rng = np.random.default_rng(3)
    top = np.arange(512, dtype=np.uint32) << np.uint32(23)
    mantissas = [np.zeros(512, np.uint32), np.ones(512, np.uint32)]
    mantissas.append(rng.integers(0, 1 << 23, 512, dtype=np.uint32))
    bits = np.concatenate([top | m for m in mantissas])
    finite = np.isfinite(bits.view(np.float32))
    for i in range(bits.shape[0]):
        grads = np.zeros((3, 9), np.float32)
        grads[1, i % 9] = bits[i : i + 1].view(np.float32)[0]
        *_, bad = merge_push(np.arange(3, dtype=np.uint64), grads.view(np.uint32))
        assert bad == (-1 if finite[i] else 1), hex(int(bits[i]))
