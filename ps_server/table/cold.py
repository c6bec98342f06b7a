"""The cold tier of a table: arena rows in a file read and written with ``pread``/``pwrite``,
their keys, metadata and cuckoo index in memory.

The file in ``cold_dir`` holds one arena row (values then optimizer state) per slot and is
unlinked as soon as it is opened: the cold tier is a cache of the table, not its durable
copy (snapshots export every row, whatever its tier), so a killed process leaves nothing
behind on disk. Nothing of it is mapped: the process's resident memory holds the hot tier,
the cold keys, metadata and index (about 60-80 bytes a cold row) and one segment buffer;
the rows themselves live in the page cache and on disk.

Slots are grouped in segments of about 1 MiB, written like a log: demoted rows are copied
into the buffer of the head segment and written with one ``pwrite`` per demotion pass, so
demoting costs a copy, not a system call, per row. A promotion reads its row with one
``pread`` straight into the hot arena and leaves a hole. When the head segment is full the
next head is an empty segment, else the segment with the fewest live rows when at most
three quarters are live (read whole, compacted in memory, its holes become the head's free
tail), else a new segment at the end of the file: the file stays within 4/3 of the cold
rows plus a segment, and each compaction frees at least a quarter segment for two segment
transfers.
"""

from __future__ import annotations

import os
import tempfile
import weakref

import numpy as np

from monolith_ps.errors import ConfigError
from ps_server.table import cold_io, cuckoo, rows
from ps_server.table.arena import RowArena
from ps_server.table.arrays import max_live_for

SEGMENT_BYTES = 1 << 20
_MIN_SEGMENT_ROWS = 16
_GROWTH = 1.5
# a segment is compacted into the head when at most this share of it is live
_COMPACT_LIVE = 0.75
# rows one read of cold rows brings into memory at a time
READ_CHUNK_ROWS = 4096
# scalars the cold tier shares with the table (version, clocks, tombstone log):
# copied in before and out after a removal kernel runs over the cold tier
SHARED_SCALARS = np.array(
    [i for i in range(rows.NUM_SCALARS) if i not in (rows.LIVE, rows.HIGH, rows.FREE_HEAD)],
    dtype=np.int64,
)


def _open_unlinked(directory: str) -> int:
    try:
        fd, path = tempfile.mkstemp(prefix="cold-", suffix=".rows", dir=directory)
    except OSError as exc:
        raise ConfigError(f"cold_dir {directory!r}: cannot create a file there ({exc})") from None
    os.unlink(path)
    return fd


class ColdTier:
    """Cold rows of one table: arena rows in a file in ``directory``, the rest in memory.

    ``cursor`` is ``[head segment, rows used in it, rows of it written to the file]``."""

    def __init__(self, directory: str, row_width: int, storage: np.dtype) -> None:
        self._fd = _open_unlinked(directory)
        weakref.finalize(self, os.close, self._fd)
        self.storage = np.dtype(storage)
        self.row_bytes = row_width * self.storage.itemsize
        self.segment_rows = max(_MIN_SEGMENT_ROWS, SEGMENT_BYTES // self.row_bytes)
        self.buffer = np.zeros((self.segment_rows, row_width), dtype=self.storage)
        self._arenas = (RowArena((), np.uint64), RowArena((rows.META_COLUMNS,), np.int64))
        self.keys, self.meta = (a.array for a in self._arenas)
        self.segment_live = np.zeros(0, dtype=np.int64)
        self.segments = 0
        self.cursor = np.array([-1, self.segment_rows, self.segment_rows], dtype=np.int64)
        self.index = cuckoo.new_index(1)
        self.max_live = max_live_for(1)
        self.scalars = rows.new_scalars()
        self.stats = {"segments_compacted": 0, "rows_compacted": 0}

    @property
    def fd(self) -> int:
        return self._fd

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
        index = cuckoo.new_index(self.index.shape[0] * 2)
        cuckoo.rehash_doubled(self.index, index)
        self.index = index
        self.max_live = max_live_for(index.shape[0])

    def read_rows(self, slots: np.ndarray) -> np.ndarray:
        """The arena rows at ``slots`` (live cold rows), in that order."""
        out = np.empty((slots.shape[0], self.buffer.shape[1]), dtype=self.storage)
        order = np.argsort(slots, kind="stable")
        for lo in range(0, slots.shape[0], READ_CHUNK_ROWS):
            part = order[lo : lo + READ_CHUNK_ROWS]
            chunk = np.empty((part.shape[0], self.buffer.shape[1]), dtype=self.storage)
            if cold_io.read_rows(self._fd, self.row_bytes, slots[part], chunk) < 0:
                raise OSError(f"short read from the cold tier's file ({chunk.nbytes} bytes)")
            out[part] = chunk
        return out

    def flush(self) -> None:
        """Write the head segment's rows not yet in the file."""
        head, used, written = (int(v) for v in self.cursor)
        if used > written:
            data = memoryview(self.buffer[written:used]).cast("B")
            offset = (head * self.segment_rows + written) * self.row_bytes
            if os.pwrite(self._fd, data, offset) != data.nbytes:
                raise OSError(f"short write to the cold tier's file ({data.nbytes} bytes)")
            self.cursor[2] = used

    def next_head(self) -> None:
        """The head segment is full: write it out and pick the next (see the module doc)."""
        self.flush()
        head = int(self.cursor[0])
        live = self.segment_live[: self.segments].copy()
        if head >= 0:
            live[head] = self.segment_rows
        best = int(np.argmin(live)) if self.segments else -1
        if best >= 0 and live[best] <= _COMPACT_LIVE * self.segment_rows:
            used = self._compact(best) if live[best] else 0
            self.cursor[:] = (best, used, 0)
        else:
            self._add_segment()
            self.cursor[:] = (self.segments - 1, 0, 0)

    def recount(self) -> None:
        """Count live rows per segment again (after a removal kernel freed cold rows)."""
        live = self.meta[: self.high, rows.VERSION_COL] != 0
        per_segment = live.reshape(self.segments, self.segment_rows).sum(axis=1)
        self.segment_live[: self.segments] = per_segment

    def _compact(self, segment: int) -> int:
        """Read ``segment`` into the buffer, its live rows moved to its start; returns them."""
        first = segment * self.segment_rows
        got = os.preadv(self._fd, [memoryview(self.buffer).cast("B")], first * self.row_bytes)
        live = int(self.segment_live[segment])
        used = cold_io.compact_segment(self.index, self.keys, self.meta, self.buffer, first)
        if used != live or got < used * self.row_bytes:
            raise OSError(f"cold segment {segment}: {used} live rows, {live} counted")
        self.stats["segments_compacted"] += 1
        self.stats["rows_compacted"] += used
        return used

    def _add_segment(self) -> None:
        self.segments += 1
        high = self.segments * self.segment_rows
        if high > self.keys.shape[0]:
            capacity = max(high, int(self.keys.shape[0] * _GROWTH))
            capacity += -capacity % self.segment_rows
            self.keys, self.meta = (a.grow(capacity) for a in self._arenas)
        if self.segments > self.segment_live.shape[0]:
            live = np.zeros(max(4, 2 * self.segments), dtype=np.int64)
            live[: self.segment_live.shape[0]] = self.segment_live
            self.segment_live = live
        self.scalars[rows.HIGH] = high
