"""The sync agent's settings: built once from the config file's ``sync`` section and the flags."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import socket
from collections.abc import Mapping

from monolith_ps.config import ConfigError, SyncConfig, load_config, parse_duration
from monolith_ps.transport.bearer import read_token_file
from monolith_ps.transport.channels import ClientTLS
from sync_agent.discovery.static import parse_address_list

__all__ = ["AgentSettings", "SettingsError"]

_DISCOVERY_KINDS = ("static", "kubernetes")
_DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_TRAILING_ORDINAL = re.compile(r"(\d+)$")


class SettingsError(ValueError):
    """Flags or config values that cannot run an agent; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class AgentSettings:
    """Everything the agent needs, validated; flags win over the config file."""

    discovery: str = "static"
    training: tuple[str, ...] = ()
    serving: tuple[str, ...] = ()
    namespace: str = ""
    training_selector: str = ""
    serving_selector: str = ""
    grpc_port_name: str = "grpc"
    sparse_interval: float = SyncConfig.sparse_interval
    dense_interval: float = SyncConfig.dense_interval
    chunk_rows: int = SyncConfig.chunk_rows
    max_message_bytes: int = _DEFAULT_MAX_MESSAGE_BYTES
    metrics_port: int | None = None
    tls: ClientTLS | None = None  # the CA of the servers and, for mutual TLS, the agent's own
    token: str | None = None  # bearer token, when the servers' TLS ends elsewhere
    once: bool = False
    log_format: str = "text"
    rpc_timeout: float = 5.0
    stall_timeout: float = 30.0
    stream_timeout: float = 600.0
    partition: tuple[int, int] = (0, 1)
    new_replica_interval: float = 1.0

    def __post_init__(self) -> None:
        index, count = self.partition
        if not 0 <= index < count:
            raise SettingsError(f"--partition {index}/{count}: need 0 <= INDEX < COUNT")
        if self.discovery not in _DISCOVERY_KINDS:
            raise SettingsError(
                f"--discovery must be one of {', '.join(_DISCOVERY_KINDS)}, got {self.discovery!r}"
            )
        if self.discovery == "static" and not (self.training and self.serving):
            raise SettingsError(
                "static discovery needs --training and --serving address lists "
                "(or --discovery kubernetes)"
            )
        if self.discovery == "kubernetes":
            if self.training or self.serving:
                raise SettingsError("--training/--serving are for static discovery only")
            for flag, value in (
                ("--namespace", self.namespace),
                ("--training-selector", self.training_selector),
                ("--serving-selector", self.serving_selector),
            ):
                if not value:
                    raise SettingsError(f"{flag} is required with --discovery kubernetes")
        for flag, seconds in (
            ("--sparse-interval", self.sparse_interval),
            ("--dense-interval", self.dense_interval),
            ("--rpc-timeout", self.rpc_timeout),
            ("--stall-timeout", self.stall_timeout),
            ("--stream-timeout", self.stream_timeout),
            ("--new-replica-check", self.new_replica_interval),
        ):
            if seconds <= 0:
                raise SettingsError(f"{flag} must be > 0, got {seconds:g}s")
        if self.chunk_rows < 1:
            raise SettingsError(f"sync.chunk_rows must be >= 1, got {self.chunk_rows}")
        if self.metrics_port is not None and not 0 <= self.metrics_port < 65536:
            raise SettingsError(f"--metrics-port must be in 0..65535, got {self.metrics_port}")
        if self.log_format not in ("json", "text"):
            raise SettingsError(f"--log-format must be json or text, got {self.log_format!r}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AgentSettings:
        """Settings from parsed ``mps sync-agent`` flags (see ``sync_agent.cli``)."""
        sync = SyncConfig()
        max_message_bytes = _DEFAULT_MAX_MESSAGE_BYTES
        if args.config:
            try:
                config = load_config(args.config)
            except ConfigError as exc:
                raise SettingsError(f"--config: {exc}") from exc
            sync = config.sync
            max_message_bytes = config.server.max_message_bytes
        if bool(args.tls_cert) != bool(args.tls_key):
            raise SettingsError("--tls-cert and --tls-key go together")
        if args.tls_cert and not args.tls_ca:
            raise SettingsError("--tls-cert/--tls-key need --tls-ca (the CA of the servers)")
        return cls(
            discovery=args.discovery,
            training=tuple(_addresses(args.training, "--training")),
            serving=tuple(_addresses(args.serving, "--serving")),
            namespace=args.namespace or "",
            training_selector=args.training_selector or "",
            serving_selector=args.serving_selector or "",
            grpc_port_name=args.grpc_port_name,
            sparse_interval=_duration(
                args.sparse_interval, "--sparse-interval", sync.sparse_interval
            ),
            dense_interval=_duration(args.dense_interval, "--dense-interval", sync.dense_interval),
            chunk_rows=sync.chunk_rows,
            max_message_bytes=max_message_bytes,
            metrics_port=args.metrics_port,
            tls=ClientTLS(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None,
            token=_token(args.token_file),
            once=args.once,
            log_format=args.log_format,
            rpc_timeout=_duration(args.rpc_timeout, "--rpc-timeout", cls.rpc_timeout),
            stall_timeout=_duration(args.stall_timeout, "--stall-timeout", cls.stall_timeout),
            stream_timeout=_duration(args.stream_timeout, "--stream-timeout", cls.stream_timeout),
            partition=parse_partition(args.partition),
            new_replica_interval=_duration(
                args.new_replica_check, "--new-replica-check", cls.new_replica_interval
            ),
        )


def parse_partition(text: str | None, env: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """``(index, count)`` from ``INDEX/COUNT``; ``auto/COUNT`` takes the trailing ordinal of
    ``$POD_NAME`` (else the hostname) modulo COUNT, as a StatefulSet pod is ``name-<i>``."""
    if text is None:
        return (0, 1)
    index_text, sep, count_text = text.partition("/")
    try:
        count = int(count_text)
        if index_text == "auto":
            name = env.get("POD_NAME") or socket.gethostname()
            match = _TRAILING_ORDINAL.search(name)
            if match is None:
                raise SettingsError(f"--partition auto: {name!r} does not end in an ordinal")
            index = int(match.group(1)) % max(count, 1)
        else:
            index = int(index_text)
    except ValueError:
        raise SettingsError(
            f"--partition must be INDEX/COUNT or auto/COUNT, e.g. 0/2, got {text!r}"
        ) from None
    if not sep or count < 1 or not 0 <= index < count:
        raise SettingsError(f"--partition {text!r}: need 0 <= INDEX < COUNT")
    return (index, count)


def _token(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return read_token_file(path)
    except ValueError as exc:
        raise SettingsError(f"--token-file: {exc}") from exc


def _addresses(text: str | None, flag: str) -> list[str]:
    if not text:
        return []
    try:
        return parse_address_list(text)
    except ValueError as exc:
        raise SettingsError(f"{flag}: {exc}") from exc


def _duration(text: str | None, flag: str, default: float) -> float:
    if text is None:
        return default
    try:
        return parse_duration(text, flag)
    except ConfigError as exc:
        raise SettingsError(str(exc)) from exc
