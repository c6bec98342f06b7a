"""The wire format of ``monolith_ps.v1``: bytes fields to numpy arrays and back.

Keys and versions travel as little-endian ``uint64``, vectors as little-endian
``float32`` or ``float16`` laid out row-major, found masks as one byte a key.
Decoding never copies: arrays are read-only views over the message's bytes.
Every length check lives here, so a malformed field fails the same way
wherever it arrives.
"""

from __future__ import annotations

import numpy as np

from monolith_ps.v1 import ps_pb2

__all__ = [
    "KEY_DTYPE",
    "WireFormatError",
    "decode_found",
    "decode_keys",
    "decode_values",
    "decode_versions",
    "dtype_from_wire",
    "dtype_to_wire",
    "encode_found",
    "encode_keys",
    "encode_values",
    "encode_versions",
]

KEY_DTYPE = np.dtype("<u8")
_VERSION_DTYPE = np.dtype("<u8")
_FLOAT_DTYPES = {
    ps_pb2.DTYPE_UNSPECIFIED: np.dtype("<f4"),
    ps_pb2.DTYPE_FLOAT32: np.dtype("<f4"),
    ps_pb2.DTYPE_FLOAT16: np.dtype("<f2"),
}
_WIRE_DTYPES = {np.dtype("<f4"): ps_pb2.DTYPE_FLOAT32, np.dtype("<f2"): ps_pb2.DTYPE_FLOAT16}


class WireFormatError(ValueError):
    """A bytes field whose length or type does not fit what the message declares."""


def dtype_from_wire(dtype: int) -> np.dtype:
    """The numpy dtype of a ``DType`` enum value (``DTYPE_UNSPECIFIED`` reads as float32)."""
    try:
        return _FLOAT_DTYPES[dtype]
    except KeyError:
        raise WireFormatError(f"unknown dtype enum value {dtype}") from None


def dtype_to_wire(dtype: np.dtype | type) -> int:
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
