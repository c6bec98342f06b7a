"""Command-line flags shared by the snapshot tools (``mps bundle``, ``mps snapshot reshard``)."""

from __future__ import annotations

import argparse

__all__ = ["add_sources_flag"]


def add_sources_flag(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--from SNAPSHOT_DIR``, repeated once per training shard, into ``args.sources``."""
    parser.add_argument(
        "--from",
        dest="sources",
        metavar="SNAPSHOT_DIR",
        action="append",
        required=True,
        help=help_text,
    )
