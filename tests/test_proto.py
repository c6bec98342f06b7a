"""The committed generated code, and the copy of the .proto the wheel ships, match
``make proto`` run on the committed .proto."""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from tests.tooling import require_tool, run_tool

REPO_ROOT = Path(__file__).resolve().parents[1]
GENERATED = ("ps_pb2.py", "ps_pb2.pyi", "ps_pb2_grpc.py")


def test_generated_code_is_fresh(tmp_path):
    # The same command as the Makefile's `proto` target, writing into a temp dir.
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Iproto", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
         "proto/monolith_ps/v1/ps.proto"],
        cwd=REPO_ROOT, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    stale = [
        name
        for name in GENERATED
        if (tmp_path / "monolith_ps/v1" / name).read_bytes()
        != (REPO_ROOT / "monolith_ps/v1" / name).read_bytes()
    ]
    assert not stale, f"generated code is stale, run `make proto`: {', '.join(stale)}"


def test_the_comparison_runs_the_makefile_command():
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=." in makefile


def test_the_packaged_proto_is_the_source():
    """The package's ps.proto is a link to the one source, so no second copy can drift."""
    packaged = REPO_ROOT / "monolith_ps/v1/ps.proto"
    assert packaged.is_symlink()
    assert packaged.resolve() == (REPO_ROOT / "proto/monolith_ps/v1/ps.proto").resolve()


def _docs_command(marker: str) -> list[str]:
    """The one ``grpcurl`` command of docs/api.md whose line contains ``marker``."""
    text = (REPO_ROOT / "docs/api.md").read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("grpcurl ") and marker in ln]
    return shlex.split(line)


def test_the_documented_grpcurl_lookup_works_against_reflection(server_factory):
    """docs/api.md's grpcurl Lookup, run as written against a server on loopback."""
    grpcurl = require_tool("grpcurl")
    movielens = yaml.safe_load((REPO_ROOT / "examples/movielens/tables.yaml").read_text())
    user = [t for t in movielens["tables"] if t["name"] == "user"]  # the one the docs read
    server = server_factory("training", config={"tables": user})
    argv = _docs_command("/Lookup")
    argv = [grpcurl, *(server.address if a == "localhost:50051" else a for a in argv[1:])]
    result = run_tool(argv)
    assert result.returncode == 0, result.stderr
    (table,) = json.loads(result.stdout)["tables"]
    assert table["table"] == "user" and table["dim"] == 9
    row = np.frombuffer(base64.b64decode(table["values"]), "<f4")
    assert row.shape == (9,) and np.isfinite(row).all() and row.any()
    listed = run_tool([grpcurl, "-plaintext", server.address, "list"])
    assert "monolith_ps.v1.ParameterServer" in listed.stdout.split()
