"""``make bench`` runs every benchmark in ``benchmarks/``: a new one is not left out."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench_recipe() -> str:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert match, "the Makefile has no bench target"
    return match.group(1)


def test_make_bench_runs_every_benchmark_that_writes_results():
    """A benchmark is a script of ``benchmarks/`` that runs as a program and takes
    ``--json``; the others are its parts (processes, references, report helpers)."""
    scripts = [
        path
        for path in sorted((ROOT / "benchmarks").glob("*.py"))
        if "__main__" in (text := path.read_text())
        and ("--json" in text or "benchmark_parser(" in text)
    ]
    recipe = _bench_recipe()
    missing = [p.name for p in scripts if f"benchmarks/{p.name} --json" not in recipe]
    assert len(scripts) >= 10
    assert not missing, f"make bench does not run {missing}"
