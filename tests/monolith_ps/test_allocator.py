"""The allocator knob: glibc takes fixed thresholds (the server sets them at start)."""

from __future__ import annotations

from monolith_ps.allocator import reuse_large_buffers


def test_reuse_large_buffers_sets_the_thresholds_on_glibc():
    assert reuse_large_buffers(1 << 20, 2 << 20) is True
    assert reuse_large_buffers() is True
