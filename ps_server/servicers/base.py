"""What every role answers the same way, and the request checks both roles share."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import grpc
import numpy as np

from monolith_ps import __version__, wire
from monolith_ps.routing import shard_of
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from ps_server.dense import DenseStore
from ps_server.errors import (
    BadRequestError,
    BatchTooLargeError,
    NotConfiguredError,
    TopologyMismatchError,
    UnknownNameError,
    WrongRoleError,
    rpc_errors,
)
from ps_server.hooks import Snapshotter
from ps_server.metrics import ServerMetrics
from ps_server.state import ShardState
from ps_server.table import EmbeddingTable

__all__ = [
    "BaseServicer",
    "KeyBatch",
    "check_ownership",
    "check_view",
    "decode_key_batches",
    "describe",
    "refused",
]

_ROLE_ENUM = {"training": ps_pb2.ROLE_TRAINING, "serving": ps_pb2.ROLE_SERVING}

KeyBatch = tuple[str, EmbeddingTable, np.ndarray]  # (table name, table, uint64 keys)


def check_view(state: ShardState, view: ps_pb2.ShardView) -> None:
    """Refuse a request whose ShardView names another shard (``num_shards == 0`` skips)."""
    if view.num_shards == 0:
        return
    if view.shard_index != state.shard_index or view.num_shards != state.num_shards:
        raise TopologyMismatchError(
            f"shard view mismatch: the request is for shard {view.shard_index} of "
            f"{view.num_shards}, this server is shard {state.shard_index} of {state.num_shards}"
        )


def decode_key_batches(
    state: ShardState,
    entries: Sequence[ps_pb2.TableKeys | ps_pb2.TableGradients],
    answer_bytes_per_row: Callable[[EmbeddingTable], int] | None = None,
) -> list[KeyBatch]:
    """Each entry's table and keys, after every check of the whole request passed.

    Checks table names, key byte lengths, empty batches, ``server.max_batch_keys`` and,
    with ``answer_bytes_per_row``, that the answer fits ``server.max_message_bytes``.
    """
    limits = state.config.server
    if not entries:
        raise BadRequestError("empty request: it names no table")
    batches = []
    total_keys = 0
    answer_bytes = 0
    for i, entry in enumerate(entries):
        table = state.table(entry.table)
        keys = wire.decode_keys(entry.keys, field=f"tables[{i}].keys (table {entry.table!r})")
        if keys.size == 0:
            raise BadRequestError(f"empty batch: tables[{i}] (table {entry.table!r}) has no keys")
        if state.num_shards > 1:
            check_ownership(state, keys, entry.table)
        total_keys += keys.size
        if answer_bytes_per_row is not None:
            answer_bytes += keys.size * answer_bytes_per_row(table)
        batches.append((entry.table, table, keys))
    if total_keys > limits.max_batch_keys:
        raise BatchTooLargeError(
            f"batch too large: {total_keys} keys, the limit is server.max_batch_keys="
            f"{limits.max_batch_keys}; split it"
        )
    if answer_bytes > limits.max_message_bytes:
        raise BatchTooLargeError(
            f"batch too large: the answer would be {answer_bytes} bytes, the limit is "
            f"server.max_message_bytes={limits.max_message_bytes}; split it"
        )
    return batches


def check_ownership(state: ShardState, keys: np.ndarray, table: str) -> None:
    """Refuse keys another shard owns: a misrouting client must not create rows here."""
    owners = shard_of(keys, state.num_shards)
    strangers = np.flatnonzero(owners != state.shard_index)
    if strangers.size:
        first = strangers[0]
        raise TopologyMismatchError(
            f"misrouted keys: {strangers.size} keys of table {table!r} belong to other shards "
            f"(key {keys[first]} is shard {owners[first]} of {state.num_shards}, this server "
            f"is shard {state.shard_index}); route with monolith_ps.routing.shard_of"
        )


def describe(state: ShardState) -> ps_pb2.DescribeTablesResponse:
    """The server's identity and every table's config and size."""
    response = ps_pb2.DescribeTablesResponse(
        role=_ROLE_ENUM[state.role],
        shard_index=state.shard_index,
        num_shards=state.num_shards,
        epoch=state.epoch,
        server_version=__version__,
        max_message_bytes=state.config.server.max_message_bytes,
        max_batch_keys=state.config.server.max_batch_keys,
    )
    for name, table in state.tables.items():
        cfg = table.config
        response.tables.append(
            ps_pb2.TableInfo(
                name=name,
                dim=cfg.dim,
                optimizer=cfg.optimizer,
                optimizer_args_json=json.dumps(dict(cfg.optimizer_args or {}), sort_keys=True),
                initializer=cfg.initializer,
                admit_after=cfg.admit_after,
                ttl_seconds=float(cfg.ttl_seconds or 0.0),
                max_rows=int(cfg.max_rows or 0),
                eviction=cfg.eviction or "",
                dtype=wire.dtype_to_wire(table.dtype),
                num_rows=len(table),
                version=table.version,
                load_factor=float(table.load_factor()),
                memory_bytes=int(table.memory_bytes()),
            )
        )
    if state.dense is not None:
        for info in state.dense.describe():
            response.dense.append(
                ps_pb2.DenseInfo(name=info.name, size=info.size, optimizer=info.optimizer)
            )
    return response


def refused(rpc: str, reason: str, *, stream: bool = False) -> Callable[..., Any]:
    """The servicer method of an RPC this role does not serve: it answers
    FAILED_PRECONDITION with ``reason`` (``{rpc}`` in it names the RPC). ``stream`` for an
    RPC that answers with a stream."""
    message = reason.format(rpc=rpc)

    def refuse(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        raise WrongRoleError(message)

    def refuse_stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        raise WrongRoleError(message)
        yield  # a generator, as every streaming servicer method

    method = refuse_stream if stream else refuse
    method.__name__ = method.__qualname__ = rpc
    return rpc_errors(method)


class BaseServicer(ps_pb2_grpc.ParameterServerServicer):
    """The RPCs both roles answer alike; each RPC is thin: decode, call, encode.

    Role classes add their own RPCs as methods decorated with ``rpc_errors``; an RPC
    a role does not define answers UNIMPLEMENTED (the generated base class).
    """

    role: ClassVar[str]

    def __init__(
        self,
        state: ShardState,
        metrics: ServerMetrics,
        snapshotter: Snapshotter | None = None,
    ) -> None:
        if state.role != self.role:
            raise ValueError(f"{type(self).__name__} serves role {self.role}, not {state.role}")
        self.state = state
        self.metrics = metrics
        self.snapshotter = snapshotter

    @rpc_errors
    def DescribeTables(
        self, request: ps_pb2.DescribeTablesRequest, context: grpc.ServicerContext
    ) -> ps_pb2.DescribeTablesResponse:
        return describe(self.state)

    @rpc_errors
    def Snapshot(
        self, request: ps_pb2.SnapshotRequest, context: grpc.ServicerContext
    ) -> ps_pb2.SnapshotResponse:
        if self.snapshotter is None:
            raise NotConfiguredError("no --snapshot-dir configured: this server keeps no snapshots")
        result = self.snapshotter.snapshot(full=request.full)
        return ps_pb2.SnapshotResponse(path=result.path, bytes=result.bytes, seconds=result.seconds)

    @rpc_errors
    def PullDense(
        self, request: ps_pb2.PullDenseRequest, context: grpc.ServicerContext
    ) -> ps_pb2.PullDenseResponse:
        dense = self._dense()
        arrays, version = dense.pull(list(request.names))
        return ps_pb2.PullDenseResponse(
            arrays=[
                ps_pb2.DenseArray(name=name, values=values.tobytes())
                for name, values in arrays.items()
            ],
            version=version,
        )

    def _dense(self) -> DenseStore:
        """The dense store, or the reason this server has none."""
        if self.state.dense is not None:
            return self.state.dense
        if self.state.role == "training" and self.state.shard_index != 0:
            raise WrongRoleError(
                f"dense arrays live on training shard 0; this is shard {self.state.shard_index}"
            )
        raise UnknownNameError("this cluster's config declares no dense arrays")
