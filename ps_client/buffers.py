"""Output arrays that are reused once the caller has let go of them.

A lookup answer of 4,096 rows of dim 64 is 1 MiB. Allocated anew each call, a block that
size is, under glibc's default thresholds, mapped fresh and faulted in page by page (about
256 minor faults) and unmapped when freed: a training loop pays that on every step unless
its process once freed a much larger block. The client therefore keeps a few buffers of its
own and decodes answers into one that nothing references any more (every array or view made
from a buffer holds a reference to it, so a buffer still in use is never handed out again).
"""

from __future__ import annotations

import sys
import threading

import numpy as np

_KEEP = 4  # buffers kept; a caller holding more answers than this gets new ones


class OutputBuffers:
    """A small pool of byte buffers behind the arrays :class:`PSClient` returns."""

    def __init__(self, keep: int = _KEEP) -> None:
        self._keep = keep
        self._buffers: list[bytearray] = []
        self._lock = threading.Lock()

    def rows(self, n: int, dim: int) -> np.ndarray:
        """A float32 ``(n, dim)`` array over a buffer no live array uses (contents are
        whatever the buffer last held: the caller overwrites every value)."""
        nbytes = 4 * n * dim
        with self._lock:
            buf = self._free_buffer(nbytes)
            # the view takes its reference before the lock is released
            return np.frombuffer(buf, dtype=np.float32, count=n * dim).reshape(n, dim)

    def _free_buffer(self, nbytes: int) -> bytearray:
        for buf in self._buffers:
            # references: the list, ``buf`` and getrefcount's argument; any more is an array
            if len(buf) >= nbytes and sys.getrefcount(buf) <= 3:
                return buf
        buf = bytearray(nbytes)
        self._buffers.append(buf)
        if len(self._buffers) > self._keep:
            del self._buffers[0]  # its arrays keep it alive; the pool forgets it
        return buf
