"""``mps server`` after its flags are parsed: shard index, config, settings, and the
server until it stops."""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
from collections.abc import Mapping
from typing import NoReturn

from monolith_ps.allocator import reuse_large_buffers
from monolith_ps.config import ConfigError, load_config
from monolith_ps.logs import configure_logging
from ps_server.server import serve
from ps_server.settings import ServerSettings, ServerTLS
from ps_server.snapshot.bundle import NoSnapshotError
from ps_server.snapshot.snapshotter import (
    NothingToBootstrapError,
    NoValidSnapshotError,
    make_snapshotter,
)

__all__ = ["main", "resolve_shard_index", "shard_dir"]

_TRAILING_ORDINAL = re.compile(r"(\d+)$")


def resolve_shard_index(value: str, num_shards: int, env: Mapping[str, str] = os.environ) -> int:
    """The shard index from ``--shard-index``: a number, or ``auto`` from the pod name.

    ``auto`` takes the trailing ordinal of ``$POD_NAME`` (a StatefulSet pod is
    ``name-<ordinal>``), else of the hostname, modulo ``num_shards``: a serving
    StatefulSet of shards x replicas thus gets ``shard = ordinal % num_shards``.
    """
    if num_shards < 1:
        raise ValueError(f"--num-shards must be >= 1, got {num_shards}")
    if value != "auto":
        try:
            index = int(value)
        except ValueError:
            raise ValueError(f"--shard-index must be an integer or 'auto', got {value!r}") from None
        if not 0 <= index < num_shards:
            raise ValueError(f"--shard-index {index} is outside [0, {num_shards})")
        return index
    source = "$POD_NAME" if env.get("POD_NAME") else "the hostname"
    name = env.get("POD_NAME") or socket.gethostname()
    match = _TRAILING_ORDINAL.search(name)
    if match is None:
        raise ValueError(f"--shard-index auto: {name!r} (from {source}) does not end in an ordinal")
    return int(match.group(1)) % num_shards


def shard_dir(path: str | None, shard_index: int) -> str | None:
    """``path`` with ``{shard}`` replaced by the shard index (for ``--shard-index auto``)."""
    return None if path is None else path.replace("{shard}", str(shard_index))


def main(args: argparse.Namespace) -> int:
    """Load the config, build the server and serve until SIGTERM/SIGINT."""
    configure_logging(args.log_format, getattr(args, "log_level", "info").upper())
    reuse_large_buffers()  # the server owns its process: per-call buffers stay mapped
    try:
        shard_index = resolve_shard_index(args.shard_index, args.num_shards)
        config = load_config(args.config)
        if bool(args.tls_cert) != bool(args.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if args.tls_client_ca and not args.tls_cert:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
    except (ConfigError, ValueError) as exc:
        print(f"mps server: {exc}", file=sys.stderr)
        return 2
    tls = ServerTLS(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    settings = ServerSettings(
        role=args.role,
        shard_index=shard_index,
        num_shards=args.num_shards,
        config=config,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        snapshot_dir=shard_dir(args.snapshot_dir, shard_index),
        bootstrap_from=args.bootstrap_from,
        tls=tls,
        grace_seconds=args.grace_seconds,
        authorization=args.auth == "on",
        await_first_sync=not args.serve_before_sync,
    )
    try:
        code = serve(settings, snapshotter_factory=make_snapshotter)
    except (NoSnapshotError, NothingToBootstrapError, NoValidSnapshotError) as exc:
        print(f"mps server: {exc}", file=sys.stderr)
        return 1
    _exit_now(code)


def _exit_now(code: int) -> NoReturn:
    """Leave a stopped server's process without the interpreter's teardown: collecting its
    objects at exit takes seconds a stop's grace period does not have. Logs flush first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
