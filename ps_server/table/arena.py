"""Row arenas that grow without moving: reserved virtual memory, committed on first touch.

An arena reserves address space for many rows up front (``MAP_NORESERVE``: no memory is
taken until a page is written) and asks for transparent huge pages, so random row access
costs one TLB entry per 2 MiB instead of per 4 KiB. Growing is only a longer view over the
same memory: nothing is copied and nothing is touched. A page is faulted in when a row on
it is first written, so resident memory follows the rows in use, not the capacity: where
faulting new memory is slow (a virtual machine whose host backs guest memory lazily runs
at a few hundred MB/s), capacity reserved ahead of use costs nothing. Outgrowing the
reservation (or a platform without ``MAP_NORESERVE``) falls back to a new block and a copy.

Views keep their mapping alive through the buffer protocol, so no array ever points at
unmapped memory.
"""

from __future__ import annotations

import mmap
import sys

import numpy as np
import numpy.typing as npt

HUGE_PAGE = 2 << 20
RESERVE_BYTES = 32 << 30  # per arena, virtual
RESERVE_ROWS = 1 << 28
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux >= 5.14
_REFUSED_ADVICE: set[int] = set()
_CAN_RESERVE = sys.platform.startswith("linux")
_PAGE = mmap.PAGESIZE


class RowArena:
    """A ``(capacity, *row_shape)`` array of ``dtype`` that grows in place and can give its
    tail back."""

    def __init__(self, row_shape: tuple[int, ...], dtype: npt.DTypeLike) -> None:
        self._row_shape = row_shape
        self._dtype = np.dtype(dtype)
        self._row_bytes = self._dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
        self._block: np.ndarray | None = None  # uint8 view of the reservation
        self._mapping: mmap.mmap | None = None  # the reservation, when there is one
        self._offset = 0  # of the block in the mapping
        self.array = np.zeros((0, *row_shape), dtype=self._dtype)

    @property
    def capacity(self) -> int:
        return int(self.array.shape[0])

    def grow(self, rows: int) -> np.ndarray:
        """Make room for ``rows`` rows (new rows are zero) and return the new view."""
        if rows <= self.capacity:
            return self.array
        if self._row_bytes == 0:
            self.array = np.zeros((rows, *self._row_shape), dtype=self._dtype)
            return self.array
        need = rows * self._row_bytes
        if self._block is None or need > self._block.shape[0]:
            old = self.array
            want = max(
                need, 2 * self._block_size(), min(RESERVE_BYTES, RESERVE_ROWS * self._row_bytes)
            )
            reserved = _reserve(want)
            if reserved is None:
                self._mapping, self._offset = None, 0
                self._block = np.zeros(need, dtype=np.uint8)
            else:
                self._mapping, self._offset, self._block = reserved
            self.array = self._view(rows)
            self.array[: old.shape[0]] = old
        else:
            self.array = self._view(rows)
        return self.array

    def shrink(self, rows: int) -> np.ndarray:
        """Drop the rows from ``rows`` on, their memory back to the system (grown again,
        they are zero), and return the new view."""
        if rows >= self.capacity or self._row_bytes == 0:
            return self.array
        assert self._block is not None  # capacity > 0 rows of bytes: grow made the block
        start, stop = rows * self._row_bytes, self.capacity * self._row_bytes
        if self._mapping is None:
            self._block = np.array(self._block[:start])
        else:
            first_page = -(-(self._offset + start) // _PAGE) * _PAGE - self._offset
            self._block[start : min(first_page, stop)] = 0
            if stop > first_page:
                self._mapping.madvise(
                    mmap.MADV_DONTNEED, self._offset + first_page, stop - first_page
                )
        self.array = self._view(rows)
        return self.array

    def _block_size(self) -> int:
        return 0 if self._block is None else int(self._block.shape[0])

    def _view(self, rows: int) -> np.ndarray:
        assert self._block is not None  # called once grow has made the block
        raw = self._block[: rows * self._row_bytes]
        return raw.view(self._dtype).reshape((rows, *self._row_shape))


def populate(mapping: mmap.mmap, start: int, stop: int, advice: int) -> None:
    """Fill in the page tables of bytes ``[start, stop)`` of ``mapping`` in one call
    (``MADV_POPULATE_READ`` maps file pages), so the kernel does it in a batch instead of one
    fault per page at first touch. Best effort: an advice the kernel refuses (before Linux
    5.14) is not asked again, and the pages are left to first touch."""
    lo = start // _PAGE * _PAGE
    if advice in _REFUSED_ADVICE or stop <= lo:
        return
    try:
        mapping.madvise(advice, lo, stop - lo)
    except OSError:
        _REFUSED_ADVICE.add(advice)


def _reserve(nbytes: int) -> tuple[mmap.mmap, int, np.ndarray] | None:
    """A zero-filled, 2 MiB-aligned uint8 block of ``nbytes`` reserved address space, with
    its mapping and its offset there, or None where address space cannot be reserved (the
    caller then allocates exactly)."""
    if _CAN_RESERVE:
        try:
            m = mmap.mmap(
                -1,
                nbytes + HUGE_PAGE,
                flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE,
            )
        except OSError:
            pass
        else:
            if hasattr(m, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
                m.madvise(mmap.MADV_HUGEPAGE)
            whole = np.frombuffer(m, dtype=np.uint8)
            offset = -whole.ctypes.data % HUGE_PAGE
            return m, offset, whole[offset : offset + nbytes]
    return None
