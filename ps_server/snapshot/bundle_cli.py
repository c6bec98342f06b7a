"""``mps bundle``: write a serving bundle from training snapshots."""

from __future__ import annotations

import argparse
import sys

from ps_server.snapshot.flags import add_sources_flag


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Fold the newest consistent snapshot chain of each training shard into a serving "
        "bundle: keys, values and versions per table (no optimizer state), the dense "
        "values, and a checksummed manifest. A serving server starts from it with "
        "--bootstrap-from."
    )
    add_sources_flag(parser, "a training shard's --snapshot-dir (repeat for every shard)")
    parser.add_argument("--to", dest="dest", metavar="DIR", required=True, help="new directory")
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="write the bundle even when some training shard's directory is not given (its rows "
        "are then missing from the bundle); refused by default",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="value type in the bundle (float16 halves its size; default float32)",
    )


def run(args: argparse.Namespace) -> int:
    from ps_server.snapshot.bundle import write_bundle
    from ps_server.snapshot.files import CorruptSnapshotError

    try:
        info = write_bundle(args.sources, args.dest, args.dtype, args.allow_partial)
    except (OSError, ValueError, CorruptSnapshotError) as exc:
        print(f"mps bundle: error: {exc}", file=sys.stderr)
        return 1
    clipped = (
        f", {info.clipped_values} values clipped to float16 range" if info.clipped_values else ""
    )
    print(
        f"wrote {info.path}: {info.sources} shard(s), {info.tables} table(s), {info.rows} rows, "
        f"{info.bytes} bytes, {args.dtype}{clipped} in {info.seconds:.2f} s"
    )
    return 0
