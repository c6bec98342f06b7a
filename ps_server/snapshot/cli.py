"""``mps snapshot``: look into snapshot directories and serving bundles, reshard them."""

from __future__ import annotations

import argparse
import json
import sys

from ps_server.snapshot import reshard_cli


def configure_parser(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="snapshot_command", metavar="ACTION", required=True)
    inspect = actions.add_parser(
        "inspect",
        help="print what each snapshot holds and whether it verifies",
        description=(
            "Print each snapshot in DIR (tables, rows, versions, sizes), whether its files "
            "match their checksums, and the chain a server would restore. Exits 1 when the "
            "newest chain does not verify. DIR may also be a serving bundle from `mps bundle`."
        ),
    )
    inspect.add_argument("dir", metavar="DIR", help="a --snapshot-dir, or a serving bundle")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.add_argument(
        "--quick", action="store_true", help="check manifests and file sizes, not checksums"
    )
    reshard = actions.add_parser(
        "reshard",
        help="route every row of N old training shards to a new shard count",
        description=(
            "Read the newest verified chain of every old training shard and write a full "
            "snapshot per new shard: every row with its optimizer state goes to the shard "
            "that owns it under the new count. Stop training first. The new shards take new "
            "epochs, so the sync agent resyncs serving in full."
        ),
    )
    reshard_cli.configure_parser(reshard)


def run(args: argparse.Namespace) -> int:
    if args.snapshot_command == "reshard":
        return reshard_cli.run(args)
    from ps_server.snapshot.inspect import inspect_path, render

    try:
        report = inspect_path(args.dir, checksums=not args.quick)
    except OSError as exc:
        print(f"mps snapshot inspect: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=1) if args.json else render(report))
    return 0 if report.ok else 1
