"""One gRPC channel per server address, reused across rounds and closed when the server goes."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import NamedTuple

import grpc
from grpc_health.v1 import health_pb2_grpc

from monolith_ps.v1 import ps_pb2_grpc
from sync_agent.settings import TlsFiles

__all__ = ["ChannelPool"]

# A replaced or restarted server must be reached again within a round or two, so the
# reconnect backoff stays short instead of growing to gRPC's default two minutes.
_RECONNECT_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)


class _Entry(NamedTuple):
    channel: grpc.Channel
    stub: ps_pb2_grpc.ParameterServerStub
    health: health_pb2_grpc.HealthStub


class ChannelPool:
    """Stubs by address; ``retain`` closes the channels of servers discovery no longer lists."""

    def __init__(self, max_message_bytes: int, tls: TlsFiles | None = None) -> None:
        self._options = (
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            *_RECONNECT_OPTIONS,
        )
        self._credentials = _credentials(tls) if tls else None
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
                if self._credentials is None:
                    channel = grpc.insecure_channel(address, options=self._options)
                else:
                    channel = grpc.secure_channel(address, self._credentials, options=self._options)
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


def _credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    return grpc.ssl_channel_credentials(
        root_certificates=read(tls.ca),
        private_key=read(tls.key) if tls.key else None,
        certificate_chain=read(tls.cert) if tls.cert else None,
    )
