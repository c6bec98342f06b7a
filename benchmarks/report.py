"""Where a benchmark's result goes: JSON for machines and, beside it, Markdown for people;
and the command-line options every benchmark of a table's size shares."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def benchmark_parser(
    doc: str, rows: int | None = None, dim: int | None = None
) -> argparse.ArgumentParser:
    """A benchmark's parser, described by the first line of ``doc``: ``--json`` and, where
    defaults are given, ``--rows`` and ``--dim`` of the table it measures."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if rows is not None:
        parser.add_argument("--rows", type=int, default=rows, help=f"rows (default {rows:,})")
    if dim is not None:
        parser.add_argument("--dim", type=int, default=dim, help=f"row width (default {dim})")
    parser.add_argument(
        "--json", metavar="PATH", help="write the result here as JSON, and a .md beside it"
    )
    return parser


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table: the first column (what is measured) left-aligned, the others
    (numbers) right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(path: str | Path, result: dict[str, Any], markdown: str | None = None) -> None:
    """Write ``result`` as JSON to ``path`` and ``markdown``, if given, to ``path`` with .md."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    if markdown is not None:
        path.with_suffix(".md").write_text(markdown.rstrip("\n") + "\n")


def publish(result: dict[str, Any], markdown: str, path: str | Path | None) -> None:
    """Print ``result`` as JSON and its Markdown table; write both when ``path`` is given."""
    print(json.dumps(result, indent=1))
    print(markdown)
    if path:
        write_result(path, result, markdown)
