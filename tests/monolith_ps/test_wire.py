"""The wire codec: round trips, zero-copy decoding and length errors that name the field."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_ps import wire
from monolith_ps.v1 import ps_pb2


def test_keys_round_trip_without_copy(rng):
    keys = rng.integers(0, 2**64, size=100, dtype=np.uint64)
    buf = wire.encode_keys(keys)
    assert len(buf) == 800
    decoded = wire.decode_keys(buf)
    np.testing.assert_array_equal(decoded, keys)
    assert not decoded.flags.owndata and not decoded.flags.writeable


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_values_round_trip(rng, dtype):
    values = rng.standard_normal((5, 3)).astype(dtype)
    buf, wire_dtype = wire.encode_values(values)
    assert wire.dtype_from_wire(wire_dtype) == np.dtype(dtype)
    np.testing.assert_array_equal(wire.decode_values(buf, 5, 3, wire_dtype), values)


def test_unspecified_dtype_reads_as_float32():
    assert wire.dtype_from_wire(ps_pb2.DTYPE_UNSPECIFIED) == np.float32
    assert wire.dtype_to_wire(np.float32) == ps_pb2.DTYPE_FLOAT32
    assert wire.dtype_to_wire(np.float16) == ps_pb2.DTYPE_FLOAT16


def test_found_and_versions_round_trip():
    found = np.array([True, False, True])
    np.testing.assert_array_equal(wire.decode_found(wire.encode_found(found), 3), found)
    assert wire.decode_found(b"\x00\x07", 2).tolist() == [False, True]
    versions = np.array([1, 2**63], dtype=np.uint64)
    np.testing.assert_array_equal(wire.decode_versions(wire.encode_versions(versions), 2), versions)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: wire.decode_keys(b"\x00" * 7, "tables[0].keys"),
         r"tables\[0\]\.keys: 7 bytes is not a whole number of 8-byte"),
        (lambda: wire.decode_values(b"\x00" * 12, 2, 2, field="grads"),
         r"grads: expected 2 x 2 float32 values \(16 bytes\), got 12 bytes"),
        (lambda: wire.decode_values(b"\x00" * 16, 2, 2, ps_pb2.DTYPE_FLOAT16),
         r"expected 2 x 2 float16 values \(8 bytes\), got 16"),
        (lambda: wire.decode_found(b"\x01", 2), r"found: expected 2 bytes"),
        (lambda: wire.decode_versions(b"\x00" * 9, 1), r"versions: expected 1 uint64"),
        (lambda: wire.dtype_from_wire(99), "unknown dtype enum value 99"),
        (lambda: wire.dtype_to_wire(np.float64), "cannot travel on the wire"),
    ],
)  # fmt: skip
def test_wrong_lengths_raise_wire_format_error(call, message):
    with pytest.raises(wire.WireFormatError, match=message):
        call()
    assert issubclass(wire.WireFormatError, ValueError)


def test_lookup_response_decodes_in_place_like_protobuf(rng):
    tables = []
    for i, dtype in enumerate([np.float32, np.float16, np.float32]):
        values = rng.standard_normal((i + 2, 3)).astype(dtype)
        payload, wire_dtype = wire.encode_values(values)
        found = wire.encode_found(rng.random(i + 2) < 0.5) if i != 1 else b""
        tables.append(
            ps_pb2.TableValues(
                table=f"t{i}-é", dim=3, dtype=wire_dtype, values=payload, found=found
            )
        )
    data = ps_pb2.LookupResponse(tables=tables).SerializeToString()
    answers = wire.decode_lookup_response(data)
    assert len(answers) == 3
    for answer, expected in zip(answers, tables, strict=True):
        assert (answer.table, answer.dim, answer.dtype) == (expected.table, 3, expected.dtype)
        assert bytes(answer.values) == expected.values
        assert bytes(answer.found) == expected.found
        assert isinstance(answer.values, memoryview)
    assert wire.decode_lookup_response(b"") == []


def test_lookup_response_skips_unknown_fields_and_refuses_truncation():
    entry = ps_pb2.TableValues(table="t", dim=2, values=b"\x00" * 8).SerializeToString()
    # unknown varint field 9, unknown fixed32 field 10 and fixed64 field 11 in the entry
    entry += b"\x48\x05" + b"\x55" + b"\x00" * 4 + b"\x59" + b"\x00" * 8
    data = b"\x0a" + bytes([len(entry)]) + entry + b"\x10\x07"  # + unknown top-level field
    (answer,) = wire.decode_lookup_response(data)
    assert (answer.table, answer.dim, bytes(answer.values)) == ("t", 2, b"\x00" * 8)
    assert ps_pb2.LookupResponse.FromString(data).tables[0].table == "t"
    for bad in (data[:-3], b"\x0a\x80", b"\x0a\x05abc", b"\x0b"):
        with pytest.raises(wire.WireFormatError, match="LookupResponse"):
            wire.decode_lookup_response(bad)


@pytest.mark.parametrize("with_found", [False, True])
def test_lookup_response_encodes_byte_for_byte_like_protobuf(rng, with_found):
    answers, messages = [], []
    for i, (dtype, n) in enumerate([(np.float32, 3), (np.float16, 200), (np.float32, 0)]):
        values = rng.standard_normal((n, 5)).astype(dtype)
        found = rng.random(n) < 0.5 if with_found else None
        answers.append((f"table-{i}", 5, values, found))
        payload, wire_dtype = wire.encode_values(values)
        messages.append(
            ps_pb2.TableValues(
                table=f"table-{i}", dim=5, dtype=wire_dtype, values=payload,
                found=wire.encode_found(found) if with_found else b"",
            )
        )  # fmt: skip
    expected = ps_pb2.LookupResponse(tables=messages).SerializeToString()
    assert wire.encode_lookup_response(answers) == expected
    assert wire.encode_lookup_response([]) == b""


def test_lookup_response_encodes_big_endian_and_strided_values_as_little_endian(rng):
    rows = rng.standard_normal((4, 10)).astype(">f4")[:, ::2]  # big-endian, not contiguous
    expected = ps_pb2.LookupResponse(
        tables=[
            ps_pb2.TableValues(
                table="t", dim=5, dtype=ps_pb2.DTYPE_FLOAT32, values=rows.astype("<f4").tobytes()
            )
        ]
    ).SerializeToString()
    assert wire.encode_lookup_response([("t", 5, rows, None)]) == expected


@pytest.mark.parametrize(("shard_index", "num_shards"), [(0, 1), (3, 200), (0, 0)])
def test_lookup_request_encodes_byte_for_byte_like_protobuf(rng, shard_index, num_shards):
    entries = [
        ("user_id", rng.integers(0, 2**63, 300, dtype=np.uint64)),
        ("", np.arange(3, dtype=np.uint64)),
        ("empty", np.zeros(0, dtype=np.uint64)),
        ("ünïcode", np.arange(10, 20, dtype=np.int64).view(np.uint64)[::2]),  # strided
    ]
    expected = ps_pb2.LookupRequest(
        tables=[ps_pb2.TableKeys(table=name, keys=wire.encode_keys(k)) for name, k in entries],
        view=ps_pb2.ShardView(shard_index=shard_index, num_shards=num_shards),
    ).SerializeToString()
    assert wire.encode_lookup_request(entries, shard_index, num_shards) == expected
    assert wire.serialized(expected) is expected
    assert wire.serialized(ps_pb2.LookupRequest.FromString(expected)) == expected


@pytest.mark.parametrize(("shard_index", "num_shards"), [(0, 1), (5, 300)])
def test_push_request_encodes_byte_for_byte_like_protobuf(rng, shard_index, num_shards):
    entries = [
        ("user_id", rng.integers(0, 2**63, 40, dtype=np.uint64), rng.random((40, 8))),
        ("", np.arange(2, dtype=np.uint64), np.ones((2, 3), np.float32)),
        ("item", np.zeros(0, dtype=np.uint64), np.zeros((0, 8), np.float32)),
    ]
    expected = ps_pb2.PushRequest(
        tables=[
            ps_pb2.TableGradients(
                table=name, keys=wire.encode_keys(k), grads=g.astype("<f4").tobytes()
            )
            for name, k, g in entries
        ],
        request_id="abc-7/1.0",
        view=ps_pb2.ShardView(shard_index=shard_index, num_shards=num_shards),
    ).SerializeToString()
    assert wire.encode_push_request(entries, "abc-7/1.0", shard_index, num_shards) == expected
