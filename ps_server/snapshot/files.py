"""Durable, checksummed files of snapshots: ``.npy`` arrays and JSON written under a
temporary name, fsynced and renamed; read back with their size and CRC-32 checked.

Arrays are read and written with ``numpy.lib.format`` (the ``.npy`` format of ``np.save``
and ``np.load``); object dtypes are refused both ways, so nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CorruptSnapshotError",
    "FileEntry",
    "UnsupportedFormatError",
    "check_file_size",
    "expect_files",
    "expect_int",
    "expect_type",
    "fsync_dir",
    "publish_files",
    "read_json",
    "read_npy",
    "to_json_value",
    "verify_file",
    "write_json",
    "write_npy",
]

CHECKSUM_ALGORITHM = "crc32"
_TMP_SUFFIX = ".tmp"
_IO_CHUNK = 4 << 20
_INLINE_FSYNC_BYTES = 16 << 20


class CorruptSnapshotError(ValueError):
    """A snapshot (or bundle) on disk does not match its manifest, or has none."""


class UnsupportedFormatError(CorruptSnapshotError):
    """A manifest written by an incompatible format version."""


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class FileEntry:
    """One file as the manifest records it."""

    bytes: int
    crc32: int
    dtype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            CHECKSUM_ALGORITHM: f"{self.crc32:08x}",
            "dtype": self.dtype,
            "shape": list(self.shape),
        }

    @classmethod
    def from_json(cls, obj: Any, where: str) -> FileEntry:
        obj = expect_type(obj, dict, where)
        try:
            crc = int(expect_type(obj.get(CHECKSUM_ALGORITHM), str, f"{where}.crc32"), 16)
        except ValueError:
            raise CorruptSnapshotError(f"{where}: crc32 is not hexadecimal") from None
        shape = expect_type(obj.get("shape"), list, f"{where}.shape")
        return cls(
            bytes=expect_int(obj.get("bytes"), f"{where}.bytes"),
            crc32=crc,
            dtype=expect_type(obj.get("dtype"), str, f"{where}.dtype"),
            shape=tuple(expect_int(n, f"{where}.shape") for n in shape),
        )


class _ChecksumWriter:
    """File-like sink that keeps a running CRC-32 and byte count of what passes through."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.crc = 0
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        return self._raw.write(data)


def write_npy(directory: Path, name: str, array: np.ndarray, publish: bool = True) -> FileEntry:
    """Write ``array`` to ``directory/name`` durably (temp name, fsync, rename).

    With ``publish=False`` the file stays under its temporary name and, when small, not yet
    fsynced: ``publish_files`` then fsyncs a batch of them at once (concurrent fsyncs share
    journal commits: 26 small files took 0.1 s instead of 0.2 s here) and renames them.
    Large files are fsynced at once, so dirty pages never pile up across a snapshot.
    The caller fsyncs ``directory`` once after its last rename.
    """
    array = np.asarray(array)
    if array.dtype.hasobject:
        raise TypeError(f"{name}: object arrays cannot be stored (no pickle in snapshots)")
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    tmp = directory / (name + _TMP_SUFFIX)
    with open(tmp, "wb") as raw:
        sink = _ChecksumWriter(raw)
        np.lib.format.write_array(sink, array, allow_pickle=False)
        raw.flush()
        if publish or sink.size >= _INLINE_FSYNC_BYTES:
            os.fsync(raw.fileno())
    if publish:
        os.replace(tmp, directory / name)
    return FileEntry(
        bytes=sink.size, crc32=sink.crc, dtype=array.dtype.str, shape=tuple(array.shape)
    )


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_files(directory: Path, names: list[str], threads: int = 8) -> None:
    """fsync the temporary files of ``names`` (concurrently), then rename each into place."""
    tmps = [directory / (name + _TMP_SUFFIX) for name in names]
    if len(tmps) > 1 and threads > 1:
        with ThreadPoolExecutor(min(threads, len(tmps)), thread_name_prefix="fsync") as pool:
            list(pool.map(_fsync_path, tmps))
    else:
        for tmp in tmps:
            _fsync_path(tmp)
    for tmp, name in zip(tmps, names, strict=True):
        os.replace(tmp, directory / name)


_SELF_CHECKSUM = "manifest_crc32"


def _canonical_crc(obj: dict[str, Any]) -> str:
    body = {k: v for k, v in obj.items() if k != _SELF_CHECKSUM}
    return f"{zlib.crc32(json.dumps(body, sort_keys=True, allow_nan=False).encode()):08x}"


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Write a manifest durably (temp name, fsync, rename, fsync the directory).

    The manifest carries a CRC-32 of its own canonical JSON, so a flipped digit in a
    version or size is caught like a flipped byte in an array.
    """
    obj = {**obj, _SELF_CHECKSUM: _canonical_crc(obj)}
    data = json.dumps(obj, indent=1, sort_keys=True, allow_nan=False).encode()
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    with open(tmp, "wb") as raw:
        raw.write(data)
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_json(path: Path) -> dict[str, Any]:
    """Parse a manifest; a missing, malformed or self-inconsistent one is corrupt."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorruptSnapshotError(f"{path}: manifest missing") from None
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptSnapshotError(f"{path}: manifest is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise CorruptSnapshotError(f"{path}: manifest is not a JSON object")
    try:
        expected = _canonical_crc(obj)
    except ValueError as exc:
        raise CorruptSnapshotError(f"{path}: manifest holds non-finite numbers ({exc})") from None
    if obj.get(_SELF_CHECKSUM) != expected:
        raise CorruptSnapshotError(f"{path}: manifest checksum does not match its content")
    return obj


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        raise CorruptSnapshotError(f"{path}: file missing") from None


def check_file_size(path: Path, entry: FileEntry) -> None:
    """Cheap check: the file exists and has the size the manifest says."""
    size = _file_size(path)
    if size != entry.bytes:
        raise CorruptSnapshotError(
            f"{path}: {size} bytes on disk, manifest says {entry.bytes} (truncated or damaged)"
        )


def _check_crc(path: Path, entry: FileEntry, crc: int) -> None:
    if crc != entry.crc32:
        raise CorruptSnapshotError(
            f"{path}: crc32 {crc:08x} does not match manifest {entry.crc32:08x}"
        )


def verify_file(path: Path, entry: FileEntry) -> None:
    """Full check of one file against its manifest entry: size and checksum."""
    check_file_size(path, entry)
    crc = 0
    with open(path, "rb") as raw:
        while chunk := raw.read(_IO_CHUNK):
            crc = zlib.crc32(chunk, crc)
    _check_crc(path, entry, crc)


def read_npy(path: Path, entry: FileEntry) -> np.ndarray:
    """Load one ``.npy`` file, checking size, checksum, dtype and shape in a single pass.

    Equivalent to ``np.load(path, allow_pickle=False)``, with the CRC computed over the
    bytes as they are read into the array.
    """
    check_file_size(path, entry)
    with open(path, "rb") as raw:
        try:
            version = np.lib.format.read_magic(raw)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(raw)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(raw)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except ValueError as exc:
            raise CorruptSnapshotError(f"{path}: bad .npy header ({exc})") from None
        header_len = raw.tell()
        if dtype.hasobject:
            raise CorruptSnapshotError(f"{path}: object arrays are never loaded (no pickle)")
        if dtype.str != entry.dtype or tuple(shape) != entry.shape:
            raise CorruptSnapshotError(
                f"{path}: header says {dtype.str}{list(shape)}, "
                f"manifest says {entry.dtype}{list(entry.shape)}"
            )
        array = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
        if header_len + array.nbytes != entry.bytes:
            raise CorruptSnapshotError(f"{path}: header and file size disagree")
        raw.seek(0)
        crc = zlib.crc32(raw.read(header_len))
        flat = memoryview(array.reshape(-1).view(np.uint8)) if array.nbytes else memoryview(b"")
        done = 0
        while done < len(flat):
            got = raw.readinto(flat[done : done + _IO_CHUNK])
            if not got:
                raise CorruptSnapshotError(f"{path}: ended early")
            crc = zlib.crc32(flat[done : done + got], crc)
            done += got
    _check_crc(path, entry, crc)
    return array.T if fortran else array


# ---------------------------------------------------------------- JSON helpers


def expect_type(value: Any, kind: type, where: str) -> Any:
    """``value`` if it is a ``kind`` (bools are not ints), else ``CorruptSnapshotError``."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CorruptSnapshotError(f"manifest field {where}: expected {kind.__name__}")
    return value


def expect_int(value: Any, where: str, minimum: int = 0) -> int:
    """An int manifest field no smaller than ``minimum``."""
    value = expect_type(value, int, where)
    if value < minimum:
        raise CorruptSnapshotError(f"manifest field {where}: {value} < {minimum}")
    return value


def expect_files(value: Any, where: str) -> dict[str, str]:
    """A ``name -> file name`` manifest mapping."""
    value = expect_type(value, dict, where)
    for name, rel in value.items():
        expect_type(rel, str, f"{where}.{name}")
    return dict(value)


def to_json_value(value: Any, where: str) -> Any:
    """JSON form of metadata: numpy scalars become Python scalars; arrays are refused."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: metadata float must be finite, got {value}")
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: metadata keys must be str, got {key!r}")
            out[key] = to_json_value(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [to_json_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} is not JSON metadata")
