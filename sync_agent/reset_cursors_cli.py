"""``mps reset-cursors``: drop a serving replica's sync cursors, so the agent's next round
sends those tables whole (after a bad stream, or to rebuild a replica's rows in place).

An admin's call (``ResetSyncCursors``, the ``admin`` role where servers check roles) on
every serving server listed; the rows held keep serving until the full resync replaces
them. Prints how many cursors were dropped.
"""

from __future__ import annotations

import argparse
import sys

from monolith_ps.transport.flags import add_credential_flags, address_list, credentials_from

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The ``mps reset-cursors`` flags."""
    parser.add_argument(
        "--serving",
        metavar="ADDR,ADDR",
        required=True,
        type=address_list,
        help="serving servers of one replica, host:port in shard order",
    )
    parser.add_argument("--table", default="", help="only this table's cursors (default: all)")
    parser.add_argument(
        "--source-shard",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="only cursors from this training shard; repeat for more (default: all)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for the call")
    add_credential_flags(parser, token_help="bearer token (first line) of the admin role")


def run(args: argparse.Namespace) -> int:
    """Reset the cursors; 0 when every server answered, 1 (and the reason) otherwise."""
    from ps_client.client import PSClient
    from ps_client.errors import PSError

    if any(shard < 0 for shard in args.source_shard):
        print("mps reset-cursors: --source-shard must be >= 0", file=sys.stderr)
        return 2
    tls, token = credentials_from(args)
    try:
        with PSClient(
            args.serving, role="serving", tls=tls, token=token, timeout=args.timeout
        ) as client:
            dropped = client.reset_sync_cursors(args.table, args.source_shard)
    except PSError as exc:
        print(f"mps reset-cursors: {exc}", file=sys.stderr)
        return 1
    print(f"{dropped} cursor(s) reset on {len(args.serving)} serving server(s)")
    return 0
