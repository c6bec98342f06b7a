"""Where a benchmark's result goes: JSON for machines and, beside it, Markdown for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_result(path: str | Path, result: dict[str, Any], markdown: str | None = None) -> None:
    """Write ``result`` as JSON to ``path`` and ``markdown``, if given, to ``path`` with .md."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    if markdown is not None:
        path.with_suffix(".md").write_text(markdown.rstrip("\n") + "\n")
