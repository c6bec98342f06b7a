"""The ``mps`` entry point."""

import subprocess
import sys

from monolith_ps import __version__
from monolith_ps.cli import build_parser, main


def test_version_flag_prints_the_package_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"mps {__version__}"


def test_help_runs_as_a_console_script():
    out = subprocess.run(
        [sys.executable, "-m", "monolith_ps.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "usage: mps" in out


def test_parser_builds():
    assert build_parser().prog == "mps"
