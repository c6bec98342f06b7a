"""Request planning: keys deduplicated and grouped by shard, requests cut to the message
limits, and where each answer's rows land in the caller's arrays."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from ps_client.batch_ops import route_keys
from ps_client.buffers import OutputBuffers
from ps_client.errors import RequestTooLargeError
from ps_client.unique_keys import UniqueKeys

__all__ = [
    "Routed",
    "as_keys",
    "assemble_found",
    "output_rows",
    "plan_chunks",
    "route",
    "route_table",
]


@dataclasses.dataclass(frozen=True)
class Routed:
    """One table's unique keys, grouped by shard, and where each input key's row lands."""

    keys: np.ndarray  # unique keys, shard 0's first, then shard 1's, ...
    bounds: np.ndarray  # shard s owns keys[bounds[s]:bounds[s + 1]]
    position: np.ndarray  # input key i has row position[i] of ``keys``


def route(keys: np.ndarray, num_shards: int) -> Routed:
    """Deduplicate ``keys`` and group the unique ones by shard."""
    return Routed(*route_keys(keys, num_shards))


def route_table(keys: Any, table: str, num_shards: int) -> Routed:
    """A table's keys deduplicated and grouped by shard: a ``UniqueKeys`` grouped for
    ``num_shards`` shards is taken as it is (deduplicated once, where it was made), any
    other keys are checked (:func:`as_keys`) and routed here."""
    if isinstance(keys, UniqueKeys) and keys.grouped_for(num_shards):
        assert keys.bounds is not None
        return Routed(keys.unique, keys.bounds, np.arange(keys.unique.shape[0]))
    return route(as_keys(keys, table), num_shards)


def plan_chunks(
    sizes: Sequence[int], row_bytes: Sequence[int], budget: int, max_keys: int
) -> list[list[tuple[int, int, int]]]:
    """Split entries of ``sizes[i]`` rows into messages under ``budget`` bytes and
    ``max_keys`` keys: a list of messages, each a list of ``(entry, start, stop)``."""
    messages: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    room, keys_room = budget, max_keys
    for entry, (size, cost) in enumerate(zip(sizes, row_bytes, strict=True)):
        start = 0
        while start < size:
            fit = min(size - start, room // cost, keys_room)
            if fit == 0:
                if not current:
                    raise RequestTooLargeError(
                        f"one row of {cost} bytes does not fit a {budget}-byte message"
                    )
                messages.append(current)
                current, room, keys_room = [], budget, max_keys
                continue
            current.append((entry, start, start + fit))
            start += fit
            room -= fit * cost
            keys_room -= fit
    if current:
        messages.append(current)
    return messages


def assemble_found(parts: list[tuple[int, np.ndarray, np.ndarray | None]], n: int) -> np.ndarray:
    """The found mask of ``n`` unique keys from the answers' ``(start, rows, found)``."""
    found = np.ones(n, dtype=bool)
    for start, part_rows, part_found in parts:
        if part_found is not None:
            found[start : start + part_rows.shape[0]] = part_found
    return found


def output_rows(out: Any, n: int, dim: int, table: str, buffers: OutputBuffers) -> np.ndarray:
    """``out`` as the ``(n, dim)`` float32 array the answer is decoded into (one over a
    reusable buffer when ``out`` is None); a wrong ``out`` raises ValueError naming the
    table."""
    if out is None:
        return buffers.rows(n, dim)
    if (
        not isinstance(out, np.ndarray)
        or out.dtype != np.float32
        or out.size != n * dim
        or not out.flags.c_contiguous
        or not out.flags.writeable
    ):
        got = f"{out.dtype} array of shape {out.shape}" if isinstance(out, np.ndarray) else out
        raise ValueError(
            f"out for table {table!r} must be a writeable C-contiguous float32 array of "
            f"{n} x {dim} values, got {got!r}"
        )
    return out.reshape(n, dim)


def as_keys(keys: Any, table: str) -> np.ndarray:
    """``keys`` of ``table`` flattened to ``uint64`` (``TypeError`` unless integers)."""
    keys = np.asarray(keys)
    if keys.dtype.kind not in "iu":
        raise TypeError(f"keys of table {table!r} must be integers, got dtype {keys.dtype}")
    # int64 feature IDs map to uint64 through two's complement, like everywhere else.
    return np.ascontiguousarray(keys.reshape(-1)).astype(np.uint64, copy=False)
