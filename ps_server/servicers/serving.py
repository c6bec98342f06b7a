"""The serving role: read-only rows, filled by the sync agent."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from monolith_ps import wire
from monolith_ps.v1 import ps_pb2
from ps_server.delta_receiver import DeltaReceiver
from ps_server.errors import rpc_errors
from ps_server.hooks import Snapshotter
from ps_server.metrics import ServerMetrics
from ps_server.servicers.base import BaseServicer, check_view, decode_key_batches, refused
from ps_server.state import ShardState
from ps_server.table import EmbeddingTable

__all__ = ["ServingServicer"]

_WRITES_REFUSED = (
    "{rpc} refused: this is a serving server; gradients go to the training servers "
    "and reach serving through the sync agent"
)


def _answer_row_bytes(table: EmbeddingTable) -> int:
    """Bytes a row takes in a Lookup answer: values in the table's storage dtype and one
    found byte."""
    return table.dim * table.dtype.itemsize + 1


class ServingServicer(BaseServicer):
    """Lookup = find only, with a found mask; every write RPC is refused."""

    role = "serving"

    def __init__(
        self,
        state: ShardState,
        metrics: ServerMetrics,
        receiver: DeltaReceiver,
        snapshotter: Snapshotter | None = None,
    ) -> None:
        super().__init__(state, metrics, snapshotter)
        self.delta_receiver = receiver

    @rpc_errors
    def Lookup(self, request: ps_pb2.LookupRequest, context: grpc.ServicerContext) -> bytes:
        """A serialized LookupResponse with found masks (the server sends bytes as they are)."""
        check_view(self.state, request.view)
        batches = decode_key_batches(self.state, request.tables, _answer_row_bytes)
        answers = []
        for name, table, keys in batches:
            values, found = table.find(keys)
            if values.dtype != table.dtype:  # float16 tables answer in float16: half the bytes
                values = values.astype(table.dtype)
            answers.append((name, table.dim, values, found))
        return wire.encode_lookup_response(answers)

    Push = refused("Push", _WRITES_REFUSED)
    PushDense = refused("PushDense", _WRITES_REFUSED)
    ExportDelta = refused(
        "ExportDelta",
        "{rpc} refused: this is a serving server; deltas are exported by training servers",
        stream=True,
    )
    Expire = refused(
        "Expire",
        "{rpc} refused: this is a serving server; rows expire on the training servers "
        "and their tombstones reach serving through the sync agent",
    )

    @rpc_errors
    def ApplyDelta(
        self, request_iterator: Iterator[ps_pb2.DeltaChunk], context: grpc.ServicerContext
    ) -> ps_pb2.ApplyDeltaResponse:
        return self.delta_receiver.apply_stream(request_iterator)

    @rpc_errors
    def ResetSyncCursors(
        self, request: ps_pb2.ResetSyncCursorsRequest, context: grpc.ServicerContext
    ) -> ps_pb2.ResetSyncCursorsResponse:
        dropped = self.delta_receiver.reset_cursors(request.table, request.source_shards)
        return ps_pb2.ResetSyncCursorsResponse(cursors_reset=dropped)

    @rpc_errors
    def GetSyncState(
        self, request: ps_pb2.GetSyncStateRequest, context: grpc.ServicerContext
    ) -> ps_pb2.GetSyncStateResponse:
        return self.delta_receiver.sync_state()
