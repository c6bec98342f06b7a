"""The cold tier of a table: rows in a memory-mapped file, their keys in a cuckoo index.

The cold tier holds the hot tier's rows (see ``embedding_table``): the metadata line, the
key, and an arena row of values then optimizer state, packed into one record of a file in
``cold_dir`` mapped shared (so touching a cold row faults one or two pages, not one per
array), seen through strided views with the hot tier's shapes; plus a cuckoo index and its
own live/high-water/free-list scalars in memory (about 18-36 bytes a cold row).

The file is unlinked as soon as it is opened: the cold tier is a cache of the table, not
its durable copy (snapshots export every row, whatever its tier), so a killed process
leaves nothing behind on disk.

The kernels touch the mapping like any array; pages they fault in count towards the
process's resident memory until :meth:`ColdTier.release` drops them from the mapping (the
data stays in the file and the page cache). The table releases after every operation that
may have mapped more than ``release_bytes`` of cold pages, and works through many cold rows
in chunks of that size with a release after each, so resident memory stays within the hot
budget plus that window. Whole-tier scans (export, expiry, eviction ranks, ``keys``) map
what they read and release at their end.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import weakref

import numpy as np

from monolith_ps.errors import ConfigError
from ps_server.table import cuckoo, rows, tiers
from ps_server.table.arrays import max_live_for

GROWTH = 1.5
# resident bytes one row access may map: a read fault maps up to 16 neighbouring pages that
# are in the page cache ("fault-around", 64 KiB by default), and a record spans at most two
# pages
TOUCH_CHARGE = 2 * 16 * 4096
_MIN_ROWS = 1024
# cold rows freed by promotions that the in-memory stack holds before they go on the free
# list (in the files) in one pass: 256 KiB
FREED_STACK = 1 << 15
# scalars the cold tier shares with the table (version, clocks, tombstone log):
# copied in before and out after a removal kernel runs over the cold tier
SHARED_SCALARS = np.array(
    [i for i in range(rows.NUM_SCALARS) if i not in (rows.LIVE, rows.HIGH, rows.FREE_HEAD)],
    dtype=np.int64,
)


class FileArena:
    """A ``(capacity, *row_shape)`` array of ``dtype`` in an unlinked, shared-mapped file;
    capacity only grows (the file is extended and mapped again: nothing is copied)."""

    def __init__(self, directory: str, row_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self._row_shape = row_shape
        self._dtype = np.dtype(dtype)
        self.row_bytes = self._dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
        try:
            fd, path = tempfile.mkstemp(prefix="cold-", suffix=".rows", dir=directory)
        except OSError as exc:
            raise ConfigError(
                f"cold_dir {directory!r}: cannot create a file there ({exc})"
            ) from None
        os.unlink(path)
        self._fd = fd
        weakref.finalize(self, os.close, fd)
        self._map: mmap.mmap | None = None
        self.array = np.zeros((0, *row_shape), dtype=self._dtype)

    @property
    def capacity(self) -> int:
        return int(self.array.shape[0])

    @property
    def file_bytes(self) -> int:
        return self.capacity * self.row_bytes

    def grow(self, rows_wanted: int) -> np.ndarray:
        """Make room for ``rows_wanted`` rows (new rows are zero) and return the new view."""
        if rows_wanted <= self.capacity:
            return self.array
        nbytes = rows_wanted * self.row_bytes
        os.ftruncate(self._fd, nbytes)
        m = mmap.mmap(self._fd, nbytes, flags=mmap.MAP_SHARED)
        if hasattr(mmap, "MADV_RANDOM"):
            m.madvise(mmap.MADV_RANDOM)  # rows are read one by one: no readahead
        self._map = m
        self.array = np.frombuffer(m, dtype=self._dtype).reshape((rows_wanted, *self._row_shape))
        return self.array

    def release(self) -> None:
        """Drop the mapping's resident pages (the file keeps the data)."""
        if self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED)


class ColdTier:
    """Cold rows of one table: arenas in ``directory``, index and scalars in memory."""

    def __init__(self, directory: str, row_width: int, storage: np.dtype) -> None:
        self._meta_bytes = 8 * rows.META_COLUMNS
        self._storage = np.dtype(storage)
        self._arena_bytes = row_width * self._storage.itemsize
        record = self._meta_bytes + 8 + self._arena_bytes
        self._file = FileArena(directory, (record + -record % 8,), np.uint8)
        self.arena, self.keys, self.meta = self._views(self._file.array)
        self.index = cuckoo.new_index(1)
        self.max_live = max_live_for(1)
        self.scalars = rows.new_scalars()
        self.freed = np.zeros(FREED_STACK, dtype=np.int64)
        self.freed_count = np.zeros(1, dtype=np.int64)
        self.row_bytes = self._file.row_bytes
        self.touched_bytes = 0

    def __len__(self) -> int:
        return int(self.scalars[rows.LIVE])

    @property
    def high(self) -> int:
        return int(self.scalars[rows.HIGH])

    def file_bytes(self) -> int:
        return self._file.file_bytes

    def memory_bytes(self) -> int:
        """Bytes the cold tier keeps in memory (its index, freed-row stack and scalars)."""
        return int(self.index.nbytes + self.freed.nbytes + self.scalars.nbytes)

    def settle(self) -> None:
        """Mark the rows on the freed stack free in the files: call before scanning the
        cold rows (a row there still looks live in its metadata)."""
        if self.freed_count[0]:
            tiers.release_freed(self.scalars, self.keys, self.meta, self.freed, self.freed_count)

    def grow(self, status: int) -> None:
        """Grow what a tier kernel's ``status`` asks for (index or files)."""
        if status == rows.NEED_INDEX:
            index = cuckoo.new_index(self.index.shape[0] * 2)
            cuckoo.rehash_doubled(self.index, index)
            self.index = index
            self.max_live = max_live_for(index.shape[0])
        elif status == rows.NEED_ROWS:
            cap = self.arena.shape[0]
            new = max(_MIN_ROWS, int(cap * GROWTH))
            self.arena, self.keys, self.meta = self._views(self._file.grow(new))
        else:  # pragma: no cover - tier kernels return only the codes above
            raise AssertionError(f"unknown kernel status {status}")

    @staticmethod
    def chunk_rows(release_bytes: int) -> int:
        """Cold rows one chunk of a batch may touch before the pages must be released."""
        return max(1, release_bytes // TOUCH_CHARGE)

    def note_touched(self, nrows: int, release_bytes: int) -> None:
        """Count ``nrows`` rows of cold pages faulted in; release them past the window."""
        self.touched_bytes += nrows * TOUCH_CHARGE
        if self.touched_bytes > release_bytes:
            self.release()

    def release(self) -> None:
        self._file.release()
        self.touched_bytes = 0

    def _views(self, records: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The arena, key and metadata views of a ``(rows, record bytes)`` uint8 array."""
        m, k = self._meta_bytes, self._meta_bytes + 8
        meta = records[:, :m].view(np.int64)
        keys = records[:, m:k].view(np.uint64)[:, 0]
        arena = records[:, k : k + self._arena_bytes].view(self._storage)
        return arena, keys, meta
