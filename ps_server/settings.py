"""What a PS server is started with: the ``mps server`` flags and the config file."""

from __future__ import annotations

import dataclasses

import grpc

from monolith_ps.config import ClusterConfig

__all__ = ["ServerSettings", "ServerTLS"]


@dataclasses.dataclass(frozen=True)
class ServerTLS:
    """PEM file paths: the server's certificate and key, and a CA to require client certs."""

    cert_path: str
    key_path: str
    client_ca_path: str | None = None

    def credentials(self) -> grpc.ServerCredentials:
        def read(path: str) -> bytes:
            with open(path, "rb") as f:
                return f.read()

        client_ca = read(self.client_ca_path) if self.client_ca_path else None
        return grpc.ssl_server_credentials(
            [(read(self.key_path), read(self.cert_path))],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Everything a server is started with (the ``mps server`` flags and the config file)."""

    role: str
    shard_index: int
    num_shards: int
    config: ClusterConfig
    host: str = "0.0.0.0"
    port: int = 0
    metrics_port: int = 0
    snapshot_dir: str | None = None
    bootstrap_from: str | None = None
    tls: ServerTLS | None = None
    grace_seconds: float = 10.0
    # Per-RPC authorization by caller role (config ``auth``); off only when asked.
    authorization: bool = True
    # Serving: report ready only once every table holds a state from every training shard
    # (ps_server.readiness). False makes a serving server ready as soon as it started,
    # for one fed by hand (an embedded server, a test), never for one behind the agent.
    await_first_sync: bool = True
