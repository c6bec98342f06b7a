"""Rewrite constraints.txt, the image's pinned runtime dependencies, from a fresh
resolution of ``monolith-ps[cluster]`` by pip (``make constraints``).

Keeps the file's leading comment; lists every distribution pip would install, except
monolith-ps itself, as ``name==version``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(path: Path = REPO / "constraints.txt") -> int:
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
             "--report", str(report), f"{REPO}[cluster]"],
            check=True,
        )  # fmt: skip
        installs = json.loads(report.read_text())["install"]
    versions = {
        re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower(): item["metadata"]["version"]
        for item in installs
        if item["metadata"]["name"].lower() != "monolith-ps"
    }
    pins = [f"{name}=={versions[name]}" for name in sorted(versions)]
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    path.write_text("\n".join([*header, *pins]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "constraints.txt"))
