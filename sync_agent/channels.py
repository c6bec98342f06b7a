"""One gRPC channel per server address, reused across rounds and closed when the server goes."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import NamedTuple

import grpc
from grpc_health.v1 import health_pb2_grpc

from monolith_ps.transport.channels import ClientTLS, channel_options, open_channel
from monolith_ps.v1 import ps_pb2_grpc

__all__ = ["ChannelPool"]


class _Entry(NamedTuple):
    channel: grpc.Channel
    stub: ps_pb2_grpc.ParameterServerStub
    health: health_pb2_grpc.HealthStub


class ChannelPool:
    """Stubs by address; ``retain`` closes the channels of servers discovery no longer lists."""

    def __init__(
        self, max_message_bytes: int, tls: ClientTLS | None = None, token: str | None = None
    ) -> None:
        # A replaced or restarted server must be reached again within a round or two.
        self._options = channel_options(max_message_bytes, (200, 2000), tls, keepalive=True)
        self._tls = tls
        self._token = token
        self._lock = threading.Lock()
        self._channels: dict[str, _Entry] = {}

    def stub(self, address: str) -> ps_pb2_grpc.ParameterServerStub:
        """The ParameterServer stub of ``address``."""
        return self._entry(address).stub

    def health(self, address: str) -> health_pb2_grpc.HealthStub:
        """The standard health-checking stub of ``address``."""
        return self._entry(address).health

    def _entry(self, address: str) -> _Entry:
        with self._lock:
            entry = self._channels.get(address)
            if entry is None:
                channel = open_channel(address, self._options, self._tls, self._token)
                entry = _Entry(
                    channel,
                    ps_pb2_grpc.ParameterServerStub(channel),
                    health_pb2_grpc.HealthStub(channel),
                )
                self._channels[address] = entry
            return entry

    def retain(self, addresses: Iterable[str]) -> None:
        keep = set(addresses)
        with self._lock:
            gone = [a for a in self._channels if a not in keep]
            closing = [self._channels.pop(a).channel for a in gone]
        for channel in closing:
            channel.close()

    def close(self) -> None:
        self.retain(())
