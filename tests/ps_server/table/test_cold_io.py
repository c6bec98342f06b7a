"""The cold tier's file: rows written with ``pwrite`` read back through the mapping, across
growth past the mapped length and rewrites, against rows kept in memory."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from ps_server.table import cold_io
from ps_server.table.cold_io import ColdFile

WIDTH = 24  # rows of 96 bytes (float32), so rows straddle pages


@pytest.mark.parametrize("storage", [np.float32, np.uint16])
def test_rows_read_through_the_mapping_are_the_rows_written(storage, monkeypatch, tmp_path):
    monkeypatch.setattr(cold_io, "MAP_BYTES", mmap.PAGESIZE)
    file = ColdFile(str(tmp_path), WIDTH, storage)
    first_capacity = file.capacity
    rng = np.random.default_rng(0)
    reference = np.zeros((0, WIDTH), dtype=storage)
    for _ in range(12):  # each step appends a stretch past the mapping, then rewrites some
        first = reference.shape[0]
        data = rng.integers(0, 60000, (int(rng.integers(1, 200)), WIDTH)).astype(storage)
        file.reserve(first + data.shape[0])
        file.write(first, data)
        reference = np.concatenate([reference, data])
        lo = int(rng.integers(0, reference.shape[0]))
        again = rng.integers(0, 60000, (min(5, reference.shape[0] - lo), WIDTH)).astype(storage)
        file.write(lo, again)
        reference[lo : lo + again.shape[0]] = again
        np.testing.assert_array_equal(file.rows[: reference.shape[0]], reference)
        slots = rng.permutation(reference.shape[0])
        np.testing.assert_array_equal(file.rows[slots], reference[slots])
    assert file.capacity >= reference.shape[0] > 10 * first_capacity
    # rows reserved but never written read as zeros, and the mapping is read-only
    assert not file.rows[reference.shape[0] :].any()
    with pytest.raises(ValueError):
        file.rows[0, 0] = 1


def test_a_view_taken_before_growth_still_reads_its_rows(monkeypatch, tmp_path):
    monkeypatch.setattr(cold_io, "MAP_BYTES", mmap.PAGESIZE)
    file = ColdFile(str(tmp_path), WIDTH, np.float32)
    data = np.arange(10 * WIDTH, dtype=np.float32).reshape(10, WIDTH)
    file.write(0, data)
    old = file.rows
    file.reserve(100 * file.capacity)
    file.write(10, data)
    np.testing.assert_array_equal(old[:10], data)
    np.testing.assert_array_equal(file.rows[:20], np.concatenate([data, data]))
