"""``mps server``: run one training or serving PS shard."""

from __future__ import annotations

import argparse

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The ``mps server`` flags (the Helm chart passes exactly these)."""
    parser.add_argument("--role", required=True, choices=("training", "serving"))
    parser.add_argument(
        "--shard-index",
        required=True,
        help="this server's shard, or 'auto': the trailing ordinal of $POD_NAME "
        "(else the hostname) modulo --num-shards",
    )
    parser.add_argument("--num-shards", required=True, type=int)
    parser.add_argument("--config", required=True, help="tables config, YAML or JSON")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    parser.add_argument(
        "--port", type=int, default=50051, help="gRPC port (default 50051; 0 picks a free one)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9090,
        help="Prometheus /metrics port (default 9090; 0 picks a free one)",
    )
    parser.add_argument(
        "--snapshot-dir",
        help="write snapshots here and restore from it; '{shard}' in it is replaced by the "
        "shard index (one shared volume, a directory per shard)",
    )
    parser.add_argument("--bootstrap-from", help="start from this snapshot directory")
    parser.add_argument("--tls-cert", help="PEM certificate; with --tls-key serves TLS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--tls-client-ca", help="PEM CA bundle; clients must present a cert")
    parser.add_argument(
        "--auth",
        choices=("on", "off"),
        default="on",
        help="per-RPC authorization by caller role from the config's auth section "
        "(default on; off only for a trusted network, e.g. a local cluster)",
    )
    parser.add_argument(
        "--log-format", choices=("json", "text"), default="text", help="one event a line"
    )
    parser.add_argument(
        "--serve-before-sync",
        action="store_true",
        help="serving: report ready and answer lookups as soon as started, before holding a "
        "state from every training shard (for servers fed by hand or experiments on "
        "staleness; never behind a load balancer)",
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=10.0,
        help="on SIGTERM, how long in-flight RPCs may finish (default 10)",
    )


def run(args: argparse.Namespace) -> int:
    """Load the config, build the server and serve until SIGTERM/SIGINT."""
    from ps_server.main import main

    return main(args)
