"""The wire format of ``monolith_ps.v1``: bytes fields to numpy arrays and back, and the
path of each RPC (``METHOD_PREFIX`` + its name).

Keys and versions travel as little-endian ``uint64``, vectors as little-endian
``float32`` or ``float16`` laid out row-major, found masks as one byte a key.
Decoding never copies: arrays are read-only views over the message's bytes.
Every length check lives here, so a malformed field fails the same way
wherever it arrives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from google.protobuf.message import Message

from monolith_ps.v1 import ps_pb2

__all__ = [
    "METHOD_PREFIX",
    "KEY_DTYPE",
    "LookupAnswer",
    "WireFormatError",
    "decode_found",
    "decode_keys",
    "decode_lookup_response",
    "decode_values",
    "decode_versions",
    "dtype_from_wire",
    "dtype_to_wire",
    "encode_found",
    "encode_keys",
    "encode_lookup_request",
    "encode_lookup_response",
    "encode_push_request",
    "encode_values",
    "encode_versions",
    "serialized",
]

METHOD_PREFIX = f"/{ps_pb2.DESCRIPTOR.services_by_name['ParameterServer'].full_name}/"
KEY_DTYPE = np.dtype("<u8")
_VERSION_DTYPE = np.dtype("<u8")
_FLOAT_DTYPES: dict[int, np.dtype] = {
    ps_pb2.DTYPE_UNSPECIFIED: np.dtype("<f4"),
    ps_pb2.DTYPE_FLOAT32: np.dtype("<f4"),
    ps_pb2.DTYPE_FLOAT16: np.dtype("<f2"),
}
_WIRE_DTYPES: dict[np.dtype, ps_pb2.DType] = {
    np.dtype("<f4"): ps_pb2.DTYPE_FLOAT32,
    np.dtype("<f2"): ps_pb2.DTYPE_FLOAT16,
}


class WireFormatError(ValueError):
    """A bytes field whose length or type does not fit what the message declares."""


def dtype_from_wire(dtype: int) -> np.dtype:
    """The numpy dtype of a ``DType`` enum value (``DTYPE_UNSPECIFIED`` reads as float32)."""
    try:
        return _FLOAT_DTYPES[dtype]
    except KeyError:
        raise WireFormatError(f"unknown dtype enum value {dtype}") from None


def dtype_to_wire(dtype: np.dtype | type) -> ps_pb2.DType:
    """The ``DType`` enum value of a numpy float dtype (float32 or float16)."""
    dtype = np.dtype(dtype).newbyteorder("<")
    try:
        return _WIRE_DTYPES[dtype]
    except KeyError:
        raise WireFormatError(f"dtype {dtype} cannot travel on the wire") from None


def decode_keys(buf: bytes, field: str = "keys") -> np.ndarray:
    """``uint64`` keys (read-only view) from little-endian bytes."""
    if len(buf) % KEY_DTYPE.itemsize:
        raise WireFormatError(
            f"{field}: {len(buf)} bytes is not a whole number of 8-byte uint64 keys"
        )
    return np.frombuffer(buf, dtype=KEY_DTYPE)


def encode_keys(keys: np.ndarray) -> bytes:
    """Little-endian bytes of ``uint64`` keys."""
    return np.ascontiguousarray(keys, dtype=KEY_DTYPE).tobytes()


def decode_versions(buf: bytes, n: int, field: str = "versions") -> np.ndarray:
    """``n`` ``uint64`` versions (read-only view) from little-endian bytes."""
    if len(buf) != n * _VERSION_DTYPE.itemsize:
        raise WireFormatError(
            f"{field}: expected {n} uint64 versions ({n * 8} bytes), got {len(buf)} bytes"
        )
    return np.frombuffer(buf, dtype=_VERSION_DTYPE)


def encode_versions(versions: np.ndarray) -> bytes:
    """Little-endian bytes of ``uint64`` versions."""
    return np.ascontiguousarray(versions, dtype=_VERSION_DTYPE).tobytes()


def decode_values(
    buf: bytes, n: int, dim: int, dtype: int = ps_pb2.DTYPE_FLOAT32, field: str = "values"
) -> np.ndarray:
    """An ``(n, dim)`` read-only array from row-major little-endian float bytes."""
    np_dtype = dtype_from_wire(dtype)
    expected = n * dim * np_dtype.itemsize
    if len(buf) != expected:
        raise WireFormatError(
            f"{field}: expected {n} x {dim} {np_dtype.name} values ({expected} bytes), "
            f"got {len(buf)} bytes"
        )
    return np.frombuffer(buf, dtype=np_dtype).reshape(n, dim)


def encode_values(values: np.ndarray) -> tuple[bytes, int]:
    """Little-endian bytes of a float32 or float16 array, and its ``DType`` enum value."""
    wire_dtype = dtype_to_wire(values.dtype)
    return np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes(), wire_dtype


def decode_found(buf: bytes, n: int, field: str = "found") -> np.ndarray:
    """A ``bool`` mask of ``n`` keys from one byte a key (any non-zero byte is found)."""
    if len(buf) != n:
        raise WireFormatError(f"{field}: expected {n} bytes (one a key), got {len(buf)} bytes")
    return np.frombuffer(buf, dtype=np.uint8) != 0


def encode_found(found: np.ndarray) -> bytes:
    """One byte a key: 1 where found."""
    return np.ascontiguousarray(found, dtype=np.bool_).tobytes()


class LookupAnswer(NamedTuple):
    """One ``TableValues`` of a ``LookupResponse``, its byte fields as views (no copies)."""

    table: str
    dim: int
    dtype: int
    values: memoryview
    found: memoryview


# TableValues field numbers (see ps.proto).
_TV_TABLE, _TV_DIM, _TV_DTYPE, _TV_VALUES, _TV_FOUND = 1, 2, 3, 4, 5
_LOOKUP_RESPONSE_TABLES = 1
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


def _varint(data: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise WireFormatError("LookupResponse: truncated or overlong varint")
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7


def _fields(data: memoryview):  # noqa: ANN202 - a generator of (number, wire type, value)
    """Protobuf fields of a message: varints as ints, length-delimited fields as views."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire_type = key >> 3, key & 7
        value: int | memoryview | None
        if wire_type == _VARINT:
            value, i = _varint(data, i)
        elif wire_type == _LEN:
            length, i = _varint(data, i)
            if i + length > len(data):
                raise WireFormatError("LookupResponse: a field runs past the end of the message")
            value, i = data[i : i + length], i + length
        elif wire_type in (_FIXED64, _FIXED32):
            i += 8 if wire_type == _FIXED64 else 4
            value = None
        else:
            raise WireFormatError(f"LookupResponse: unsupported wire type {wire_type}")
        if i > len(data):
            raise WireFormatError("LookupResponse: a field runs past the end of the message")
        yield number, wire_type, value


def decode_lookup_response(data: bytes) -> list[LookupAnswer]:
    """Parse a serialized ``LookupResponse`` without copying its value bytes.

    The generated class would copy each ``values`` field twice (into its arena, then
    into a new ``bytes``); a lookup answer is almost all values, so the client reads
    the wire bytes in place. Unknown fields are skipped, as protobuf does.
    """
    answers = []
    view = memoryview(data)
    for number, wire_type, entry in _fields(view):
        if number != _LOOKUP_RESPONSE_TABLES or wire_type != _LEN:
            continue
        table, dim, dtype = "", 0, 0
        values = found = view[0:0]
        for field, field_type, value in _fields(entry):
            if field == _TV_TABLE and field_type == _LEN:
                table = bytes(value).decode("utf-8")
            elif field == _TV_DIM and field_type == _VARINT:
                dim = value & 0xFFFFFFFF
            elif field == _TV_DTYPE and field_type == _VARINT:
                dtype = value
            elif field == _TV_VALUES and field_type == _LEN:
                values = value
            elif field == _TV_FOUND and field_type == _LEN:
                found = value
        answers.append(LookupAnswer(table, dim, dtype, values, found))
    return answers


def _varint_bytes(value: int) -> bytes:
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = [bytes((value,)) for value in range(0x80)]


def encode_lookup_response(
    answers: Sequence[tuple[str, int, np.ndarray, np.ndarray | None]],
) -> bytes:
    """A serialized ``LookupResponse`` of ``(table, dim, values, found)`` answers.

    Byte for byte what the generated class would write, with each values array copied
    once (from its own buffer into the message) instead of three times.
    """
    parts: list[bytes | memoryview] = []
    for table, dim, values, found in answers:
        wire_dtype = _WIRE_DTYPES.get(values.dtype)  # native little-endian: no conversion
        if wire_dtype is None or not values.flags.c_contiguous:
            wire_dtype = dtype_to_wire(values.dtype)
            values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
        payload = memoryview(values.reshape(-1).view(np.uint8))
        name = table.encode("utf-8")
        head = []
        if name:
            head += [b"\x0a", _varint_bytes(len(name)), name]
        if dim:
            head += [b"\x10", _varint_bytes(dim)]
        if wire_dtype:
            head += [b"\x18", _varint_bytes(wire_dtype)]
        tail: list[bytes] = []
        if payload.nbytes:
            head += [b"\x22", _varint_bytes(payload.nbytes)]
        if found is not None and found.size:
            mask = encode_found(found)
            tail = [b"\x2a", _varint_bytes(len(mask)), mask]
        size = sum(len(p) for p in head) + payload.nbytes + sum(len(p) for p in tail)
        parts += [b"\x0a", _varint_bytes(size), *head, payload, *tail]
    return b"".join(parts)


def _field(number_and_type: bytes, payload: bytes | memoryview) -> list[bytes | memoryview]:
    """A length-delimited field, or nothing for an empty one (proto3 omits it)."""
    if not len(payload):
        return []
    return [number_and_type, _varint_bytes(len(payload)), payload]


def _array_bytes(values: np.ndarray, dtype: np.dtype) -> memoryview:
    return memoryview(np.ascontiguousarray(values, dtype=dtype).reshape(-1).view(np.uint8))


def _view(number_and_type: bytes, shard_index: int, num_shards: int) -> list[bytes | memoryview]:
    """A ``ShardView`` field: present even when both numbers are 0, as the client sets it."""
    view = b""
    if shard_index:
        view += b"\x08" + _varint_bytes(shard_index)
    if num_shards:
        view += b"\x10" + _varint_bytes(num_shards)
    return [number_and_type, _varint_bytes(len(view)), view]


def _entries(fields: list[list[bytes | memoryview]]) -> list[bytes | memoryview]:
    """Repeated field 1 of a request: each entry's fields, length-prefixed."""
    parts: list[bytes | memoryview] = []
    for body in fields:
        parts += [b"\x0a", _varint_bytes(sum(len(p) for p in body)), *body]
    return parts


def encode_lookup_request(
    entries: list[tuple[str, np.ndarray]], shard_index: int, num_shards: int
) -> bytes:
    """A serialized ``LookupRequest`` of ``(table, keys)`` entries and the ``ShardView``
    ``(shard_index, num_shards)``: byte for byte what the generated class would write, the
    keys copied once (into the message) instead of three times."""
    fields = [
        _field(b"\x0a", table.encode("utf-8")) + _field(b"\x12", _array_bytes(keys, KEY_DTYPE))
        for table, keys in entries
    ]
    return b"".join(_entries(fields) + _view(b"\x12", shard_index, num_shards))


def encode_push_request(
    entries: list[tuple[str, np.ndarray, np.ndarray]],
    request_id: str,
    shard_index: int,
    num_shards: int,
) -> bytes:
    """A serialized ``PushRequest`` of ``(table, keys, float32 grads)`` entries, its
    ``request_id`` and ``ShardView``: byte for byte what the generated class would write,
    the gradients copied once instead of three times."""
    fields = [
        _field(b"\x0a", table.encode("utf-8"))
        + _field(b"\x12", _array_bytes(keys, KEY_DTYPE))
        + _field(b"\x1a", _array_bytes(grads, _FLOAT_DTYPES[ps_pb2.DTYPE_FLOAT32]))
        for table, keys, grads in entries
    ]
    parts = _entries(fields) + _field(b"\x12", request_id.encode("utf-8"))
    return b"".join(parts + _view(b"\x1a", shard_index, num_shards))


def serialized(message: bytes | Message) -> bytes:
    """A request as it goes on the wire: ``bytes`` already encoded here pass as they are."""
    return message if isinstance(message, bytes) else message.SerializeToString()
