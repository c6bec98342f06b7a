"""``mps local up``: a whole cluster on this machine until Ctrl-C (see ``monolith_ps.local``)."""

from __future__ import annotations

import argparse

from monolith_ps.local import run_until_signalled

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="local_command", metavar="ACTION", required=True)
    up = actions.add_parser(
        "up",
        help="start training and serving servers and the sync agent on 127.0.0.1",
        description="Start N training shards, M serving shards x R replicas and the sync "
        "agent as subprocesses on 127.0.0.1; stop them all on Ctrl-C or SIGTERM.",
    )
    up.add_argument("--config", required=True, metavar="PATH", help="tables config (YAML/JSON)")
    up.add_argument("--training-shards", type=int, default=2, metavar="N")
    up.add_argument("--serving-shards", type=int, default=2, metavar="M")
    up.add_argument("--serving-replicas", type=int, default=1, metavar="R")
    up.add_argument(
        "--sparse-interval",
        metavar="DURATION",
        help="agent sparse interval (default: the config's sync.sparse_interval)",
    )
    up.add_argument(
        "--dense-interval",
        metavar="DURATION",
        help="agent dense interval (default: the config's sync.dense_interval)",
    )
    up.add_argument(
        "--base-port",
        type=int,
        default=0,
        metavar="P",
        help="gRPC ports P, P+1, ... then metrics ports; 0 (default) picks free ports",
    )
    up.add_argument(
        "--snapshot-dir", metavar="DIR", help="training shards snapshot to DIR/training-<i>"
    )
    up.add_argument("--log-dir", metavar="DIR", help="process logs (default: a new temp dir)")


def run(args: argparse.Namespace) -> int:
    return run_until_signalled(args)
