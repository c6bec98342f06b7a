"""External command-line tools the tests run (promtool, buf, grpcurl): found or required.

A tool is looked up beside the interpreter first (pip-installed binaries land in the
virtualenv's ``bin``), then on ``PATH``. Without it a test fails: ``make test`` installs
every tool first (pip for buf and grpcurl, ``make tools`` for promtool).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

__all__ = ["find_tool", "require_tool", "run_tool"]


def find_tool(name: str) -> str | None:
    """Path of ``name`` beside the interpreter or on ``PATH``; None when absent."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def require_tool(name: str) -> str:
    """Path of ``name``; fails the test, saying how to install it, when it is absent."""
    path = find_tool(name)
    if path is None:
        pytest.fail(f"{name} is not installed: make test installs it (make tools for promtool)")
    return path


def run_tool(
    argv: Sequence[str], stdin: str | None = None, timeout: float = 60.0, **kwargs
) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion, text in and out, bounded in time."""
    return subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, **kwargs
    )
