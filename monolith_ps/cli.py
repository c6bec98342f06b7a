"""The ``mps`` command: parses arguments and hands each subcommand to its component.

Each subcommand lives in its component's ``cli`` module, which exposes
``configure_parser(parser)`` (flags only, cheap to import) and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from monolith_ps import __version__
from monolith_ps.logs import configure_logging

# name -> (module, one-line help). Order is the order of `mps --help`.
_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "server": ("ps_server.cli", "run one training or serving parameter-server shard"),
    "sync-agent": ("sync_agent.cli", "stream row deltas from training to serving servers"),
    "local": ("monolith_ps.local_cli", "run a whole cluster on this machine (mps local up)"),
    "snapshot": ("ps_server.snapshot.cli", "inspect and reshard snapshots, inspect bundles"),
    "bundle": ("ps_server.snapshot.bundle_cli", "write a serving bundle from training snapshots"),
    "warmup": ("ps_server.warmup_cli", "compile the kernels into NUMBA_CACHE_DIR ahead of time"),
    "check": (
        "monolith_ps.check_cli",
        "check that a running cluster answers (health, topology, lookups)",
    ),
    "reset-cursors": (
        "sync_agent.reset_cursors_cli",
        "drop a serving replica's sync cursors, so the agent resends those tables whole",
    ),
}


# Modules of the `cluster` extra: a client-only install lacks them.
_CLUSTER_MODULES = frozenset(
    {
        "numba",
        "llvmlite",
        "prometheus_client",
        "kubernetes",
        "yaml",
        "grpc_health",
        "grpc_reflection",
    }
)


def build_parser() -> argparse.ArgumentParser:
    """The full ``mps`` parser; tests use it to check that the Helm chart's flags exist."""
    parser = argparse.ArgumentParser(
        prog="mps",
        description="monolith-ps: a parameter-server cluster for recommendation embeddings.",
    )
    parser.add_argument("--version", action="version", version=f"mps {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in _SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.configure_parser(sub)
        _add_log_level(sub)
        sub.set_defaults(_run=module.run)
    return parser


LOG_LEVELS = ("debug", "info", "warning", "error")


def _add_log_level(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` on a subcommand, or on each of its own subcommands (a parent's
    default would be overwritten by its subcommand's)."""
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not nested:
        parser.add_argument(
            "--log-level", choices=LOG_LEVELS, default="info", help="least severe event logged"
        )
    for action in nested:
        for sub in action.choices.values():
            _add_log_level(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    configure_logging(getattr(args, "log_format", "text"), args.log_level.upper())
    try:
        return int(args._run(args) or 0)
    except ModuleNotFoundError as missing:
        if (missing.name or "").split(".")[0] not in _CLUSTER_MODULES:
            raise
        print(
            f"mps {args.command}: needs {missing.name}, which comes with the cluster extra: "
            "pip install 'monolith-ps[cluster]'",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
