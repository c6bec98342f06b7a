"""The serving role: read-only rows, filled by the sync agent."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from monolith_ps import wire
from monolith_ps.v1 import ps_pb2
from ps_server.errors import WrongRoleError, rpc_errors
from ps_server.hooks import Snapshotter
from ps_server.metrics import ServerMetrics
from ps_server.servicers.base import BaseServicer, check_view, decode_key_batches
from ps_server.state import ShardState
from ps_server.sync import DeltaReceiver, SyncMetrics

__all__ = ["ServingServicer"]

_WRITES_REFUSED = (
    "{rpc} refused: this is a serving server; gradients go to the training servers "
    "and reach serving through the sync agent"
)


class ServingServicer(BaseServicer):
    """Lookup = find only, with a found mask; every write RPC is refused."""

    role = "serving"

    def __init__(
        self, state: ShardState, metrics: ServerMetrics, snapshotter: Snapshotter | None = None
    ) -> None:
        super().__init__(state, metrics, snapshotter)
        self.delta_receiver = DeltaReceiver(state, SyncMetrics(metrics.registry))

    @rpc_errors
    def Lookup(
        self, request: ps_pb2.LookupRequest, context: grpc.ServicerContext
    ) -> ps_pb2.LookupResponse:
        check_view(self.state, request.view)
        # value bytes plus one found byte a row
        row_bytes = {name: t.dim * t.dtype.itemsize + 1 for name, t in self.state.tables.items()}
        batches = decode_key_batches(self.state, request.tables, row_bytes)
        response = ps_pb2.LookupResponse()
        for name, table, keys in batches:
            values, found = table.find(keys)
            payload, dtype = wire.encode_values(values)
            response.tables.append(
                ps_pb2.TableValues(
                    table=name,
                    dim=table.dim,
                    dtype=dtype,
                    values=payload,
                    found=wire.encode_found(found),
                )
            )
        return response

    @rpc_errors
    def Push(
        self, request: ps_pb2.PushRequest, context: grpc.ServicerContext
    ) -> ps_pb2.PushResponse:
        raise WrongRoleError(_WRITES_REFUSED.format(rpc="Push"))

    @rpc_errors
    def PushDense(
        self, request: ps_pb2.PushDenseRequest, context: grpc.ServicerContext
    ) -> ps_pb2.PushDenseResponse:
        raise WrongRoleError(_WRITES_REFUSED.format(rpc="PushDense"))

    @rpc_errors
    def ExportDelta(
        self, request: ps_pb2.ExportDeltaRequest, context: grpc.ServicerContext
    ) -> Iterator[ps_pb2.DeltaChunk]:
        raise WrongRoleError(
            "ExportDelta refused: this is a serving server; deltas are exported by training servers"
        )
        yield  # a generator, as every streaming servicer method

    @rpc_errors
    def ApplyDelta(
        self, request_iterator: Iterator[ps_pb2.DeltaChunk], context: grpc.ServicerContext
    ) -> ps_pb2.ApplyDeltaResponse:
        return self.delta_receiver.apply_stream(request_iterator)

    @rpc_errors
    def GetSyncState(
        self, request: ps_pb2.GetSyncStateRequest, context: grpc.ServicerContext
    ) -> ps_pb2.GetSyncStateResponse:
        return self.delta_receiver.sync_state()
