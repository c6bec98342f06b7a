"""The training role: rows are created on lookup and trained by pushed gradients."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import grpc

from monolith_ps import wire
from monolith_ps.v1 import ps_pb2
from ps_server.applied_requests import AppliedRequests
from ps_server.delta_export import export_dense_chunks, export_table_chunks
from ps_server.delta_metrics import DeltaMetrics
from ps_server.errors import BadRequestError, rpc_errors
from ps_server.hooks import Snapshotter
from ps_server.metrics import ServerMetrics
from ps_server.servicers.base import (
    BaseServicer,
    check_view,
    decode_key_batches,
    refused,
)
from ps_server.state import ShardState
from ps_server.stream_guard import StreamBudget
from ps_server.table import EmbeddingTable

__all__ = ["TrainingServicer"]

_FLOAT32_BYTES = 4
_SERVING_ONLY = "{rpc} refused: this is a training server; deltas are applied on serving servers"


def _answer_row_bytes(table: EmbeddingTable) -> int:
    """Bytes a row takes in a Lookup answer (float32 values)."""
    return table.dim * _FLOAT32_BYTES


class TrainingServicer(BaseServicer):
    """Lookup = find-or-insert through admission; Push and PushDense apply gradients once."""

    role = "training"

    def __init__(
        self,
        state: ShardState,
        metrics: ServerMetrics,
        delta_metrics: DeltaMetrics,
        budget: StreamBudget,
        snapshotter: Snapshotter | None = None,
    ) -> None:
        super().__init__(state, metrics, snapshotter)
        self.budget = budget
        window = state.config.server.push_dedup_window
        self._applied_pushes: AppliedRequests[ps_pb2.PushResponse] = AppliedRequests(window)
        self._applied_dense_pushes: AppliedRequests[int] = AppliedRequests(window)
        self._delta_metrics = delta_metrics

    @rpc_errors
    def Lookup(self, request: ps_pb2.LookupRequest, context: grpc.ServicerContext) -> bytes:
        """A serialized LookupResponse (the server sends bytes as they are)."""
        check_view(self.state, request.view)
        batches = decode_key_batches(self.state, request.tables, _answer_row_bytes)
        return wire.encode_lookup_response(
            [(name, table.dim, table.find_or_insert(keys), None) for name, table, keys in batches]
        )

    @rpc_errors
    def Push(
        self, request: ps_pb2.PushRequest, context: grpc.ServicerContext
    ) -> ps_pb2.PushResponse:
        check_view(self.state, request.view)
        batches = decode_key_batches(self.state, request.tables)
        updates = []
        for (name, table, keys), entry in zip(batches, request.tables, strict=True):
            grads = wire.decode_values(
                entry.grads, keys.size, table.dim, field=f"grads of table {name!r}"
            )
            updates.append((table, table.check_push(keys, grads)))

        def apply() -> ps_pb2.PushResponse:
            updated = pending = 0
            for table, checked in updates:
                rows_updated, rows_pending = table.apply_push(checked)
                updated += int(rows_updated)
                pending += int(rows_pending)
            return ps_pb2.PushResponse(rows_updated=updated, rows_pending_admission=pending)

        result, duplicate = self._applied_pushes.run(request.request_id, apply)
        if duplicate:
            self.metrics.push_duplicates.labels("Push").inc()
            return ps_pb2.PushResponse(
                duplicate=True,
                rows_updated=result.rows_updated,
                rows_pending_admission=result.rows_pending_admission,
            )
        return result

    @rpc_errors
    def PushDense(
        self, request: ps_pb2.PushDenseRequest, context: grpc.ServicerContext
    ) -> ps_pb2.PushDenseResponse:
        dense = self._dense()
        if not request.grads:
            raise BadRequestError("empty PushDense: it carries no gradients")
        grads = {}
        for i, array in enumerate(request.grads):
            if array.name in grads:
                raise BadRequestError(f"grads[{i}]: dense array {array.name!r} appears twice")
            size = dense.size_of(array.name)
            grads[array.name] = wire.decode_values(
                array.values, 1, size, field=f"grads of dense array {array.name!r}"
            )[0]
        version, duplicate = self._applied_dense_pushes.run(
            request.request_id, lambda: dense.push(grads)
        )
        if duplicate:
            self.metrics.push_duplicates.labels("PushDense").inc()
        return ps_pb2.PushDenseResponse(duplicate=duplicate, version=version)

    @rpc_errors
    def ExportDelta(
        self, request: ps_pb2.ExportDeltaRequest, context: grpc.ServicerContext
    ) -> Iterator[ps_pb2.DeltaChunk]:
        if not request.table:
            self._dense()
            yield from export_dense_chunks(self.state, request)
            return
        yield from export_table_chunks(
            self.state,
            request,
            self.state.config.sync.chunk_rows,
            self._delta_metrics,
            self.budget,
        )

    @rpc_errors
    def Expire(
        self, request: ps_pb2.ExpireRequest, context: grpc.ServicerContext
    ) -> ps_pb2.ExpireResponse:
        if not math.isfinite(request.now) or request.now < 0:
            raise BadRequestError(
                f"now must be unix seconds >= 0 (0 = the server's clock), got {request.now}"
            )
        now = request.now or time.time()
        expired = sum(
            table.expire(now)
            for table in list(self.state.tables.values())
            if table.config.ttl_seconds
        )
        return ps_pb2.ExpireResponse(rows_expired=expired)

    ApplyDelta = refused("ApplyDelta", _SERVING_ONLY)
    GetSyncState = refused("GetSyncState", _SERVING_ONLY)
    ResetSyncCursors = refused("ResetSyncCursors", _SERVING_ONLY)
