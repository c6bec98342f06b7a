"""``mps snapshot reshard``: route old training shards' snapshots to a new shard count."""

from __future__ import annotations

import argparse
import sys

from ps_server.snapshot.flags import add_sources_flag


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_sources_flag(parser, "an old training shard's --snapshot-dir (repeat for every old shard)")
    parser.add_argument(
        "--shards", type=int, required=True, metavar="N", help="the new number of shards"
    )
    parser.add_argument(
        "--to",
        dest="dest",
        metavar="OUT",
        required=True,
        help="writes OUT/shard-<i>/ for i < N (each must hold no snapshot yet)",
    )
    parser.add_argument(
        "--chunk-mb",
        type=int,
        default=64,
        metavar="MB",
        help="rows are read and routed this many MB at a time (default 64)",
    )


def run(args: argparse.Namespace) -> int:
    from ps_server.snapshot.files import CorruptSnapshotError
    from ps_server.snapshot.reshard import reshard

    if args.chunk_mb < 1:
        print("mps snapshot reshard: error: --chunk-mb must be >= 1", file=sys.stderr)
        return 2
    try:
        result = reshard(args.sources, args.shards, args.dest, chunk_bytes=args.chunk_mb << 20)
    except (OSError, ValueError, CorruptSnapshotError) as exc:
        print(f"mps snapshot reshard: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"resharded {result.old_shards} -> {result.new_shards} shards into {result.dest}: "
        f"{result.tables} table(s), {sum(result.rows)} rows (per shard {result.rows}), "
        f"{result.bytes} bytes in {result.seconds:.2f} s"
    )
    for i in range(result.new_shards):
        print(
            f"  mps server --role training --shard-index {i} --num-shards {result.new_shards} "
            f"--snapshot-dir {result.dest}/shard-{i}"
        )
    return 0
