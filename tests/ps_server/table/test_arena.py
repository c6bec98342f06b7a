"""Row arenas: growth keeps rows in place, a shrink gives the tail back and a later growth
brings it back zeroed."""

from __future__ import annotations

import numpy as np
import pytest

from ps_server.table import arena
from ps_server.table.arena import RowArena


@pytest.mark.parametrize("reserve", [True, False])
@pytest.mark.parametrize("row_shape", [(), (3,), (129,)])
def test_shrink_keeps_the_head_and_regrows_zeroed(reserve, row_shape, monkeypatch):
    monkeypatch.setattr(arena, "_CAN_RESERVE", reserve)
    a = RowArena(row_shape, np.float32)
    rows = a.grow(5000)
    rows[:] = np.arange(rows.size, dtype=np.float32).reshape(rows.shape) + 1
    want = rows[:1234].copy()
    shrunk = a.shrink(1234)
    assert shrunk.shape[0] == a.capacity == 1234
    np.testing.assert_array_equal(shrunk, want)
    grown = a.grow(5000)
    np.testing.assert_array_equal(grown[:1234], want)
    assert not grown[1234:].any()
