"""The cold tier of a table: arena rows in a file (``cold_io``), their keys, metadata and
cuckoo index in memory.

The file in ``cold_dir`` holds one arena row (values then optimizer state) per slot and is
unlinked as soon as it is opened: the cold tier is a cache of the table, not its durable
copy (snapshots export every row, whatever its tier), so a killed process leaves nothing
behind on disk. The process's own memory holds the hot tier, the cold keys, metadata and
index (about 60-80 bytes a cold row) and one segment buffer; the rows themselves live in
the page cache and on disk, read through a read-only shared mapping of the file: resident
as the process's file pages (``RssFile``), which the kernel reclaims under pressure.

Slots are grouped in segments of about 1 MiB. A promotion copies its row from the mapping
straight into the hot arena and leaves a hole in its segment. Demoted rows fill the holes
of the head segment, whose rows the head buffer holds, and each demotion pass writes the
stretch of the buffer it changed with one ``pwrite``: demoting costs a copy, not a system
call, per row. When the head segment has no hole left the next head is the segment with
the fewest live rows when at most three quarters are live (copied whole from the mapping;
an empty one is not read), else a new segment at the end of the file: the file stays within
4/3 of the cold rows plus two segments, and each reuse fills at least a quarter segment of
holes for one segment read and one written.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ps_server.table import cuckoo, rows
from ps_server.table.arena import RowArena
from ps_server.table.arrays import max_live_for
from ps_server.table.cold_io import ColdFile

SEGMENT_BYTES = 1 << 20
_MIN_SEGMENT_ROWS = 16
# a segment becomes the head again when at most this share of it is live
_REUSE_LIVE = 0.75
# scalars the cold tier shares with the table (version, clocks, tombstone log):
# copied in before and out after a removal kernel runs over the cold tier
SHARED_SCALARS = np.array(
    [i for i in range(rows.NUM_SCALARS) if i not in (rows.LIVE, rows.HIGH, rows.FREE_HEAD)],
    dtype=np.int64,
)


class ColdTier:
    """Cold rows of one table: arena rows in a file in ``directory``, the rest in memory.

    ``cursor`` is ``[head segment, next row of it to fill, first and last + 1 row of the
    buffer not written to the file yet]``."""

    def __init__(self, directory: str, row_width: int, storage: npt.DTypeLike) -> None:
        self._file = ColdFile(directory, row_width, storage)
        self.storage = np.dtype(storage)
        self.row_bytes = self._file.row_bytes
        self.segment_rows = max(_MIN_SEGMENT_ROWS, SEGMENT_BYTES // self.row_bytes)
        self.buffer = np.zeros((self.segment_rows, row_width), dtype=self.storage)
        self._arenas = (RowArena((), np.uint64), RowArena((rows.META_COLUMNS,), np.int64))
        self.keys, self.meta = (a.array for a in self._arenas)
        self.segment_live = np.zeros(0, dtype=np.int64)
        self.segments = 0
        self.cursor = np.array([-1, self.segment_rows, self.segment_rows, 0], dtype=np.int64)
        self.index = cuckoo.new_index(1)
        self._index_arena = cuckoo.new_index_arena()
        self.max_live = max_live_for(1)
        self.scalars = rows.new_scalars()

    @property
    def rows(self) -> np.ndarray:
        """The file's rows, mapped read-only: slot ``c`` is ``rows[c]`` (live slots only
        hold a row)."""
        return self._file.rows

    def __len__(self) -> int:
        return int(self.scalars[rows.LIVE])

    @property
    def high(self) -> int:
        return int(self.scalars[rows.HIGH])

    def file_bytes(self) -> int:
        return self.segments * self.segment_rows * self.row_bytes

    def memory_bytes(self) -> int:
        """Bytes the cold tier keeps in memory: index, keys, metadata, segment buffer."""
        arrays = (self.index, self.keys, self.meta, self.buffer, self.segment_live, self.scalars)
        return int(sum(a.nbytes for a in arrays))

    def grow_index(self) -> None:
        self.index = cuckoo.doubled(self.index, self._index_arena)
        self.max_live = max_live_for(self.index.shape[0])

    def read_rows(self, slots: np.ndarray) -> np.ndarray:
        """A copy of the arena rows at ``slots`` (live cold rows), in that order."""
        return self._file.rows[slots]

    def flush(self) -> None:
        """Write the head segment's rows not yet in the file."""
        head, _, lo, hi = (int(v) for v in self.cursor)
        if hi > lo:
            self._file.write(head * self.segment_rows + lo, self.buffer[lo:hi])
        self.cursor[2:] = (self.segment_rows, 0)

    def next_head(self) -> None:
        """The head segment is full: write it out and pick the next (see the module doc)."""
        self.flush()
        head = int(self.cursor[0])
        live = self.segment_live[: self.segments].copy()
        if head >= 0:
            live[head] = self.segment_rows
        best = int(np.argmin(live)) if self.segments else -1
        if best >= 0 and live[best] <= _REUSE_LIVE * self.segment_rows:
            if live[best]:
                first = best * self.segment_rows
                self.buffer[:] = self._file.rows[first : first + self.segment_rows]
        else:
            self._add_segment()
            best = self.segments - 1
        self.cursor[:2] = (best, 0)

    def recount(self) -> None:
        """Count live rows per segment again (after a removal kernel freed cold rows)."""
        live = self.meta[: self.high, rows.VERSION_COL] != 0
        per_segment = live.reshape(self.segments, self.segment_rows).sum(axis=1)
        self.segment_live[: self.segments] = per_segment

    def _add_segment(self) -> None:
        high = (self.segments + 1) * self.segment_rows
        self._file.reserve(high)
        self.segments += 1
        self.keys, self.meta = (a.grow(high) for a in self._arenas)
        if self.segments > self.segment_live.shape[0]:
            live = np.zeros(max(4, 2 * self.segments), dtype=np.int64)
            live[: self.segment_live.shape[0]] = self.segment_live
            self.segment_live = live
        self.scalars[rows.HIGH] = high
