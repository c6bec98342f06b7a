"""The committed generated code, and the copy of the .proto the wheel ships, match
``make proto`` run on the committed .proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    source = (REPO_ROOT / "proto/monolith_ps/v1/ps.proto").read_bytes()
    assert (REPO_ROOT / "monolith_ps/v1/ps.proto").read_bytes() == source, "run `make proto`"
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "cp proto/monolith_ps/v1/ps.proto monolith_ps/v1/ps.proto" in makefile
