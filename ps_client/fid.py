"""Feature IDs: a slot number in the high bits, a hash of the raw value in the rest."""

from __future__ import annotations

from typing import Any

import numpy as np

from ps_client.batch_ops import fids_of_bytes, fids_of_ints

__all__ = ["SLOT_BITS", "make_fid"]

SLOT_BITS = 16


def make_fid(slot: int | np.ndarray, value: Any, slot_bits: int = SLOT_BITS) -> Any:
    """Feature IDs (``uint64``) of raw values, as Monolith builds them.

    The top ``slot_bits`` bits hold ``slot`` (one per feature, e.g. 1 = user id), the
    rest a hash of the value, so IDs of different features never collide and any
    integer, string or bytes value becomes a 64-bit key. Vectorized: ``value`` may be a
    scalar or an array (any shape, integers, ``str`` or ``bytes``), ``slot`` a scalar or
    an array broadcastable to it. Returns ``np.uint64`` for a scalar value, else an array
    of ``value``'s shape. A slot >= 1 never gives the ID 0.

    >>> make_fid(1, 42) == make_fid(1, np.array([42]))[0]
    True
    """
    if not 1 <= slot_bits <= 63:
        raise ValueError(f"slot_bits must be in [1, 63], got {slot_bits}")
    scalar = np.ndim(value) == 0
    values = np.asarray(value)
    slots = np.asarray(slot)
    if slots.dtype.kind not in "iu":
        raise TypeError(f"slot must be an integer, got dtype {slots.dtype}")
    if slots.size and (slots.min() < 0 or int(slots.max()) >= 1 << slot_bits):
        raise ValueError(f"slot must be in [0, {1 << slot_bits}) with {slot_bits} slot bits")
    shape = np.broadcast_shapes(values.shape, slots.shape)
    flat_slots = np.ascontiguousarray(np.broadcast_to(slots, shape).reshape(-1), dtype=np.uint64)
    out = np.empty(flat_slots.shape[0], dtype=np.uint64)
    value_bits = 64 - slot_bits
    flat = np.broadcast_to(values, shape).reshape(-1)
    if values.dtype.kind in "iu":
        # Signed values map through two's complement, so -1 and 2**64 - 1 agree.
        fids_of_ints(flat_slots, flat.astype(np.uint64, casting="unsafe"), value_bits, out)
    elif values.dtype.kind in "USO":
        encoded = [_as_bytes(v) for v in flat.tolist()]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        fids_of_bytes(flat_slots, buffer, offsets, value_bits, out)
    else:
        raise TypeError(f"make_fid takes integers, str or bytes, got dtype {values.dtype}")
    return out[0] if scalar and np.ndim(slot) == 0 else out.reshape(shape)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, int | np.integer):
        raise TypeError("mixing integers with str/bytes in one make_fid call is ambiguous")
    raise TypeError(f"make_fid takes integers, str or bytes, got {type(value).__name__}")
