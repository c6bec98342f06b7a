"""The cold tier's file: written with ``pwrite``, read through a read-only shared mapping.

The file is unlinked as soon as it is opened (a killed process leaves nothing on disk) and
extended with ``ftruncate`` to a sparse length ahead of its rows, which is mapped
``MAP_SHARED``/``PROT_READ`` once: reading a cold row is a memory copy from the page
cache, not a system call (a ``pread`` of a 512-byte row costs about 1 us, most of it the
call itself). Reads stay inside the file's length, so a row never written reads as zeros
and nothing faults past the end. Writes go through ``pwrite``, which shares the page cache
with the mapping; each write then fills in the page tables of the bytes it wrote
(``MADV_POPULATE_READ``, Linux >= 5.14, best effort: they are in the page cache, just
written) so the first read of a row does not take a page fault. When the rows outgrow the
mapping, the file is extended and mapped again at twice the length, and the page tables of
the rows written so far are filled in again in one call (once per doubling; pages the
kernel reclaimed since are read back from disk then, instead of one fault at a time).

Every slot the tier hands out has its disk space allocated first (``posix_fallocate``), so
a full disk fails the reservation of a new segment, before any row moves there, and never
the write of rows already moved out of the hot tier.

The mapped pages are clean page cache after writeback, not the process's own memory: the
kernel can reclaim them under pressure (a later read faults them back in from disk), and
they count as the process's ``RssFile`` (``RssShmem`` on tmpfs), not ``RssAnon``.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import weakref

import numpy as np
import numpy.typing as npt

from monolith_ps.errors import ConfigError
from ps_server.table.arena import MADV_POPULATE_READ, populate

MAP_BYTES = 64 << 20  # of the file mapped at first; doubled each time the rows outgrow it
_PAGE = mmap.PAGESIZE


class ColdTierFullError(OSError):
    """No disk space is left under ``cold_dir`` for another segment of cold rows."""


def _open_unlinked(directory: str) -> int:
    try:
        fd, path = tempfile.mkstemp(prefix="cold-", suffix=".rows", dir=directory)
    except OSError as exc:
        raise ConfigError(f"cold_dir {directory!r}: cannot create a file there ({exc})") from None
    os.unlink(path)
    return fd


class ColdFile:
    """Rows of ``row_width`` ``storage`` items in an unlinked file in ``directory``;
    :attr:`rows` is the read-only mapped view of the first :attr:`capacity` of them."""

    def __init__(self, directory: str, row_width: int, storage: npt.DTypeLike) -> None:
        self._fd = _open_unlinked(directory)
        weakref.finalize(self, os.close, self._fd)
        self._storage = np.dtype(storage)
        self._row_width = row_width
        self.row_bytes = row_width * self._storage.itemsize
        self.rows = np.zeros((0, row_width), dtype=self._storage)
        self._mapping: mmap.mmap | None = None
        self._written = 0  # bytes from the start of the file that hold rows
        self._allocated = 0  # bytes from the start of the file with disk space allocated
        self._directory = directory
        try:
            self._map(MAP_BYTES)
        except OSError as exc:
            raise ConfigError(f"cold_dir {directory!r}: cannot map a file there ({exc})") from None

    @property
    def capacity(self) -> int:
        return int(self.rows.shape[0])

    def reserve(self, rows: int) -> None:
        """Allocate disk space for ``rows`` rows and make :attr:`rows` cover them (a new,
        longer view); raises :class:`ColdTierFullError`, changing nothing the rows read,
        when the disk has no room for them."""
        need = rows * self.row_bytes
        if need > self._allocated:
            try:
                os.posix_fallocate(self._fd, self._allocated, need - self._allocated)
            except OSError as exc:
                raise ColdTierFullError(
                    exc.errno,
                    f"cold_dir {self._directory!r}: no space for {need} bytes of "
                    f"cold rows ({exc.strerror})",
                ) from None
            self._allocated = need
        if rows > self.capacity:
            self._map(max(need, 2 * self.capacity * self.row_bytes))
            self._populate(0, self._written)

    def write(self, first_row: int, data: np.ndarray) -> None:
        """Write the contiguous rows ``data`` from row ``first_row`` on (within
        :attr:`capacity`)."""
        offset = first_row * self.row_bytes
        view = memoryview(data).cast("B")
        if os.pwrite(self._fd, view, offset) != view.nbytes:
            raise OSError(f"short write to the cold tier's file ({view.nbytes} bytes)")
        self._written = max(self._written, offset + view.nbytes)
        self._populate(offset, offset + view.nbytes)

    def _map(self, nbytes: int) -> None:
        length = -(-nbytes // _PAGE) * _PAGE
        os.ftruncate(self._fd, length)
        mapping = mmap.mmap(self._fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        count = length // self.row_bytes
        flat = np.frombuffer(mapping, dtype=self._storage, count=count * self._row_width)
        self.rows = flat.reshape(count, self._row_width)
        self._mapping = mapping  # the views keep older mappings alive while in use

    def _populate(self, start: int, stop: int) -> None:
        if self._mapping is not None:
            populate(self._mapping, start, stop, MADV_POPULATE_READ)
