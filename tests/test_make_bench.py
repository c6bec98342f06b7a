"""``make bench`` runs every benchmark in ``benchmarks/``: a new one is not left out."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _benchmarks_run() -> set[str]:
    """The scripts ``make bench`` runs: the ``BENCHMARKS`` list and the recipe's own lines."""
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    listed = re.search(r"^BENCHMARKS := (.*)$", makefile, re.MULTILINE)
    recipe = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert listed and recipe, "the Makefile has no BENCHMARKS list or no bench target"
    named = {f"{name}.py" for name in listed.group(1).split()}
    return named | set(re.findall(r"benchmarks/(\w+\.py) --json", recipe.group(1)))


def test_make_bench_runs_every_benchmark_that_writes_results():
    """A benchmark is a script of ``benchmarks/`` that runs as a program and takes
    ``--json``; the others are its parts (processes, references, report helpers)."""
    scripts = [
        path
        for path in sorted((ROOT / "benchmarks").glob("*.py"))
        if "__main__" in (text := path.read_text())
        and ("--json" in text or "benchmark_parser(" in text)
    ]
    run = _benchmarks_run()
    missing = [p.name for p in scripts if p.name not in run]
    assert len(scripts) >= 10
    assert not missing, f"make bench does not run {missing}"
