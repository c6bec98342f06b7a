"""gRPC channels to PS servers, plain or TLS, built one way for the client and the agent."""

from __future__ import annotations

import dataclasses

import grpc

from monolith_ps.transport.bearer import with_token

__all__ = ["ClientTLS", "channel_options", "open_channel"]


@dataclasses.dataclass(frozen=True)
class ClientTLS:
    """PEM file paths for TLS: the CA that signed the servers (None = system roots) and,
    for mutual TLS, the client's certificate and key."""

    ca_path: str | None = None
    cert_path: str | None = None
    key_path: str | None = None
    server_name: str | None = None  # expected name in the server certificate, if not the host

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_path),
            private_key=read(self.key_path),
            certificate_chain=read(self.cert_path),
        )


def channel_options(
    max_message_bytes: int,
    reconnect_backoff_ms: tuple[int, int],
    tls: ClientTLS | None = None,
    keepalive: bool = False,
) -> list[tuple[str, int | str]]:
    """Channel options: message size limits both ways, a reconnect backoff of
    ``(min, max)`` milliseconds (a restarted server is reached again quickly, not after
    gRPC's default two minutes), keepalive pings for long-lived channels, and the
    expected certificate name."""
    low, high = reconnect_backoff_ms
    options: list[tuple[str, int | str]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", low),
        ("grpc.min_reconnect_backoff_ms", low),
        ("grpc.max_reconnect_backoff_ms", high),
    ]
    if keepalive:
        options += [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000)]
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return options


def open_channel(
    address: str,
    options: list[tuple[str, int | str]],
    tls: ClientTLS | None = None,
    token: str | None = None,
) -> grpc.Channel:
    """A channel to ``address``: TLS with ``tls``, plaintext without; every call carries
    ``token`` as a bearer token when one is given (the caller's role for authorization)."""
    if tls is None:
        channel = grpc.insecure_channel(address, options=options)
    else:
        channel = grpc.secure_channel(address, tls.credentials(), options=options)
    return with_token(channel, token)
