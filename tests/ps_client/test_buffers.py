"""Output buffers: reused once nothing references them, never while an array or view does."""

from __future__ import annotations

import numpy as np

from ps_client.buffers import OutputBuffers


def test_a_buffer_is_reused_only_after_every_view_of_it_is_gone():
    pool = OutputBuffers(keep=4)
    first = pool.rows(16, 8)
    first[:] = 1.0
    second = pool.rows(16, 8)
    assert not np.shares_memory(first, second)
    tail = first[4:]
    del first
    third = pool.rows(16, 8)  # a view of the first buffer is alive
    assert not np.shares_memory(third, tail) and not np.shares_memory(third, second)
    np.testing.assert_array_equal(tail, 1.0)
    address = tail.__array_interface__["data"][0] - 4 * 8 * 4
    del tail
    again = pool.rows(8, 8)  # smaller fits the freed buffer
    assert again.__array_interface__["data"][0] == address
    assert again.shape == (8, 8) and again.dtype == np.float32 and again.flags.writeable


def test_the_pool_forgets_buffers_past_its_size_but_they_stay_valid():
    pool = OutputBuffers(keep=2)
    held = [pool.rows(4, 4) for _ in range(5)]
    for i, rows in enumerate(held):
        rows[:] = i
    for i, rows in enumerate(held):
        np.testing.assert_array_equal(rows, i)
