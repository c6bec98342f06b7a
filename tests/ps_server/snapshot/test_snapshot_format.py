"""The on-disk format: atomic checksummed .npy files and the manifest schema."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ps_server.snapshot import files
from ps_server.snapshot.format import parse_snapshot_dir_name, snapshot_dir_name

_DTYPES = st.sampled_from(["<f4", "<f2", "<u8", "<i8", "<u4", "|u1", "|b1", "<f8"])


@settings(max_examples=40, deadline=None)
@given(
    array=_DTYPES.flatmap(
        lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0))
    )
)
def test_npy_round_trip_matches_np_load(tmp_path_factory, array):
    directory = tmp_path_factory.mktemp("npy")
    entry = files.write_npy(directory, "a.npy", array)
    assert entry.bytes == (directory / "a.npy").stat().st_size
    back = files.read_npy(directory / "a.npy", entry)
    np.testing.assert_array_equal(back, array)
    assert back.dtype == array.dtype and back.shape == array.shape
    plain = np.load(directory / "a.npy", allow_pickle=False)
    np.testing.assert_array_equal(plain, array)
    assert not list(directory.glob("*.tmp"))


def test_fortran_ordered_input_is_stored_c_ordered(tmp_path):
    array = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    entry = files.write_npy(tmp_path, "f.npy", array)
    np.testing.assert_array_equal(files.read_npy(tmp_path / "f.npy", entry), array)


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(TypeError, match="no pickle"):
        files.write_npy(tmp_path, "o.npy", np.array([{"a": 1}], dtype=object))
    assert not list(tmp_path.iterdir())


def test_object_npy_file_is_never_loaded(tmp_path):
    path = tmp_path / "o.npy"
    with path.open("wb") as f:  # an object-dtype header; its payload would be a pickle stream
        header = {"descr": "|O", "fortran_order": False, "shape": (2,)}
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\x80\x04not-a-real-pickle.")
    data = path.read_bytes()
    entry = files.FileEntry(bytes=len(data), crc32=zlib.crc32(data), dtype="|O", shape=(2,))
    with pytest.raises(files.CorruptSnapshotError, match="object arrays"):
        files.read_npy(path, entry)


@pytest.fixture
def written(tmp_path) -> tuple[Path, files.FileEntry]:
    array = np.arange(1000, dtype=np.float32).reshape(100, 10)
    return tmp_path / "a.npy", files.write_npy(tmp_path, "a.npy", array)


def test_flipped_byte_is_detected(written):
    path, entry = written
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(files.CorruptSnapshotError, match="crc32"):
        files.read_npy(path, entry)
    with pytest.raises(files.CorruptSnapshotError, match="crc32"):
        files.verify_file(path, entry)


def test_truncated_file_is_detected(written):
    path, entry = written
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(files.CorruptSnapshotError, match="truncated"):
        files.read_npy(path, entry)


def test_missing_file_is_detected(written):
    path, entry = written
    path.unlink()
    with pytest.raises(files.CorruptSnapshotError, match="missing"):
        files.read_npy(path, entry)


def test_header_disagreeing_with_manifest_is_detected(written):
    path, entry = written
    lying = files.FileEntry(entry.bytes, entry.crc32, "<i4", entry.shape)
    with pytest.raises(files.CorruptSnapshotError, match="header says"):
        files.read_npy(path, lying)


def test_manifest_self_checksum_catches_an_edited_number(tmp_path):
    path = tmp_path / "manifest.json"
    files.write_json(path, {"complete_version": 1234, "x": [1, 2]})
    assert files.read_json(path)["complete_version"] == 1234
    path.write_text(path.read_text().replace("1234", "1235"))
    with pytest.raises(files.CorruptSnapshotError, match="checksum"):
        files.read_json(path)


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", '{"a": NaN}', "\xff\xfe"])
def test_malformed_manifest_is_corrupt(tmp_path, text):
    path = tmp_path / "manifest.json"
    path.write_text(text, encoding="latin-1")
    with pytest.raises(files.CorruptSnapshotError):
        files.read_json(path)


def test_unsupported_format_version_is_named(tmp_path):
    from ps_server.snapshot.format import Manifest

    with pytest.raises(files.UnsupportedFormatError, match="format_version 99"):
        Manifest.from_json({"format": "monolith-ps-snapshot", "format_version": 99})


def test_dir_names_round_trip():
    assert snapshot_dir_name(7, "incr") == "snap-00000007-incr"
    assert parse_snapshot_dir_name("snap-00000007-incr") == (7, "incr")
    for name in ["snap-7-full", "snap-00000007-full.partial", "snap-00000007-diff", "x"]:
        assert parse_snapshot_dir_name(name) is None
    with pytest.raises(ValueError, match="kind"):
        snapshot_dir_name(1, "delta")


def test_json_metadata_conversion():
    meta = {"n": np.uint64(2**63 + 5), "lr": np.float32(0.5), "tags": ("a", 1), "ok": True}
    out = files.to_json_value(meta, "meta")
    assert out == {"n": 2**63 + 5, "lr": 0.5, "tags": ["a", 1], "ok": True}
    assert json.loads(json.dumps(out)) == out
    with pytest.raises(ValueError, match=r"meta\.bad.*finite"):
        files.to_json_value({"bad": float("nan")}, "meta")
    with pytest.raises(TypeError, match=r"meta\.arr: ndarray"):
        files.to_json_value({"arr": np.zeros(2)}, "meta")
