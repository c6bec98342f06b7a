"""``mps warmup``: compile the kernels into the Numba cache before any server starts."""

from __future__ import annotations

import argparse
import os
import sys


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        help="warm the kernels of this cluster config (default: a built-in config that "
        "covers every kernel signature a server can use)",
    )


def run(args: argparse.Namespace) -> int:
    from monolith_ps.config import ConfigError, load_config
    from ps_server.warmup import warm_kernels

    try:
        config = load_config(args.config) if args.config else None
    except ConfigError as exc:
        print(f"mps warmup: {exc}", file=sys.stderr)
        return 2
    seconds = warm_kernels(config)
    where = os.environ.get("NUMBA_CACHE_DIR", "Numba's default cache directory")
    cpu = os.environ.get("NUMBA_CPU_NAME", "this machine's CPU")
    print(f"kernels warm in {where} (built for {cpu}) in {seconds:.1f} s")
    return 0
