"""The client's row calls on the wire: routed keys into one serialized ``LookupRequest``
or ``PushRequest`` per shard and message, and ``Lookup`` answers back into row spans."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from monolith_ps import wire
from monolith_ps.v1 import ps_pb2
from ps_client.errors import ServerError
from ps_client.planning import Routed

__all__ = ["lookup_answers", "lookup_calls", "push_calls"]

Chunks = Callable[[list[int], list[int]], list[list[tuple[int, int, int]]]]
Span = tuple[int, int, int]  # (table, start, stop) in the routed unique keys of that table


def lookup_calls(
    tables: Sequence[str],
    routed: Sequence[Routed],
    row_bytes: list[int],
    chunks: Chunks,
    views: Sequence[ps_pb2.ShardView],
) -> tuple[list[tuple[int, bytes]], list[list[Span]]]:
    """``(shard, request)`` calls, each request a serialized ``LookupRequest``, and for
    each the spans of keys it asks for."""
    calls, pieces = [], []
    bounds = [r.bounds.tolist() for r in routed]
    for shard, view in enumerate(views):
        sizes = [b[shard + 1] - b[shard] for b in bounds]
        for message in chunks(sizes, row_bytes):
            spans = [(t, bounds[t][shard] + a, bounds[t][shard] + b) for t, a, b in message]
            entries = [(tables[t], routed[t].keys[a:b]) for t, a, b in spans]
            request = wire.encode_lookup_request(entries, view.shard_index, view.num_shards)
            calls.append((shard, request))
            pieces.append(spans)
    return calls, pieces


def lookup_answers(
    calls: Sequence[tuple[int, Any]],
    responses: Sequence[Any],
    pieces: Sequence[Sequence[Span]],
    tables: Sequence[str],
    dims: Sequence[int],
    addresses: Sequence[str],
) -> list[list[tuple[int, np.ndarray, np.ndarray | None]]]:
    """Per table, the ``(start, rows, found)`` of each answer (``found`` None from
    training), read where the bytes arrived; an answer that is not what was asked for
    raises ``ServerError``."""
    parts: list[list[tuple[int, np.ndarray, np.ndarray | None]]] = [[] for _ in tables]
    for (shard, _), answers, message in zip(calls, responses, pieces, strict=True):
        if len(answers) != len(message):
            raise ServerError(
                f"Lookup on {addresses[shard]}: {len(answers)} tables "
                f"answered, {len(message)} asked"
            )
        for answer, (t, start, stop) in zip(answers, message, strict=True):
            if answer.table != tables[t]:
                raise ServerError(
                    f"Lookup on {addresses[shard]}: answered table {answer.table!r} "
                    f"where {tables[t]!r} was asked"
                )
            n = stop - start
            rows = wire.decode_values(
                answer.values, n, dims[t], answer.dtype, field=f"values of {tables[t]}"
            )
            mask = wire.decode_found(answer.found, n) if len(answer.found) else None
            parts[t].append((start, rows, mask))
    return parts


def push_calls(
    tables: Sequence[str],
    routed: Sequence[Routed],
    summed: Sequence[np.ndarray],
    row_bytes: list[int],
    chunks: Chunks,
    views: Sequence[ps_pb2.ShardView],
    push_id: str,
) -> list[tuple[int, bytes]]:
    """``(shard, request)`` calls carrying each shard's summed gradients, each request a
    serialized ``PushRequest``; each message gets its own request id under ``push_id``, so
    a retried one is applied once."""
    calls = []
    bounds = [r.bounds.tolist() for r in routed]
    for shard, view in enumerate(views):
        sizes = [b[shard + 1] - b[shard] for b in bounds]
        for part, message in enumerate(chunks(sizes, row_bytes)):
            entries = []
            for t, start, stop in message:
                a, b = bounds[t][shard] + start, bounds[t][shard] + stop
                entries.append((tables[t], routed[t].keys[a:b], summed[t][a:b]))
            request = wire.encode_push_request(
                entries, f"{push_id}/{shard}.{part}", view.shard_index, view.num_shards
            )
            calls.append((shard, request))
    return calls
