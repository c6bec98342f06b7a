"""``mps check``: is a running cluster answering? The Helm chart's test hook runs it.

For every server: gRPC health says SERVING; every server's DescribeTables agrees with its
place in the address list (role, shard index, shard count); and every serving shard
answers a Lookup, in each table, of a key it owns. Training shards get no Lookup: one
would insert rows. Prints a line per check; exit status 1 when any failed.
"""

from __future__ import annotations

import argparse

from monolith_ps.transport.flags import add_credential_flags

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The ``mps check`` flags."""
    parser.add_argument(
        "--training", metavar="ADDR,ADDR", help="training servers, host:port in shard order"
    )
    parser.add_argument(
        "--serving",
        metavar="ADDR,ADDR",
        action="append",
        default=[],
        help="serving servers of one replica, host:port in shard order; repeat per replica",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per check")
    add_credential_flags(parser, token_help="bearer token (first line), where servers check roles")


def run(args: argparse.Namespace) -> int:
    """Check every listed server; 0 when all answered as they should."""
    from monolith_ps.check import run_checks

    return run_checks(args)
