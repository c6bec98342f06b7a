"""The allocator knob: glibc takes fixed thresholds (the server sets them at start, a
client when it is made), unless the environment already sets them."""

from __future__ import annotations

import pytest

from monolith_ps.allocator import reuse_large_buffers, reuse_large_buffers_by_default


def test_reuse_large_buffers_sets_the_thresholds_on_glibc():
    assert reuse_large_buffers(1 << 20, 2 << 20) is True
    assert reuse_large_buffers() is True


@pytest.mark.parametrize("variable", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_thresholds_set_in_the_environment_stand(monkeypatch, variable):
    monkeypatch.setenv(variable, "1048576")
    assert reuse_large_buffers_by_default() is False


def test_by_default_the_thresholds_are_set(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert reuse_large_buffers_by_default() is True
