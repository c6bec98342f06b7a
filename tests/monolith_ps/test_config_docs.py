"""docs/config.md against the config code: every section and field documented with its
real default, every optimizer with its arguments, and the example loads."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from monolith_ps.config import ClusterConfig, load_config, parse_duration
from monolith_ps.optimizer_specs import INITIALIZERS, OPTIMIZERS

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"
_ROW = re.compile(r"^\| `(\w+)` \|(.*)$", re.MULTILINE)
_FIELD_TABLE = "| field | type | default | accepted | what it does |"


def _sections() -> dict[str, type]:
    """Config file section -> the dataclass of one of its entries."""
    hints = typing.get_type_hints(ClusterConfig)
    sections = {}
    for field in dataclasses.fields(ClusterConfig):
        hint = hints[field.name]
        if typing.get_origin(hint) is tuple:
            hint = typing.get_args(hint)[0]
        sections[field.name] = hint
    return sections


def _doc_section(name: str) -> str:
    """The text under ``## `name` `` up to the next ``## `` heading."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"^## `{name}`\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"docs/config.md has no section '## `{name}`'"
    return match.group(1)


def _field_rows(name: str) -> dict[str, list[str]]:
    """Field -> its cells (type, default, accepted, what) in the section's field table."""
    section = _doc_section(name)
    start = section.find(_FIELD_TABLE)
    assert start >= 0, f"docs/config.md, section `{name}`: no table headed {_FIELD_TABLE!r}"
    table = re.match(r"(?:\|.*\n)+", section[start:])
    assert table
    return {
        field: [cell.strip() for cell in rest.strip().strip("|").split("|")]
        for field, rest in _ROW.findall(table.group(0))
    }


def _documented_default(cell: str) -> str:
    match = re.match(r"`([^`]*)`|required", cell)
    assert match, f"default cell {cell!r} starts with neither `value` nor required"
    return "required" if match.group(1) is None else match.group(1)


def _default_matches(field: dataclasses.Field, documented: str, hint: Any) -> bool:
    if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
        return documented == "required"
    if field.default_factory is not dataclasses.MISSING:
        return documented == "{}" and field.default_factory() == {}
    default = field.default
    if default is None:
        return documented == "null"
    if isinstance(default, str):
        return documented == default
    if isinstance(default, float) and hint is float and field.name != "lr_frequency_power":
        return parse_duration(documented) == default  # section floats are durations
    return float(documented) == default


@pytest.mark.parametrize("section", list(_sections()))
def test_every_field_is_documented_with_its_default(section: str) -> None:
    cls = _sections()[section]
    hints = typing.get_type_hints(cls)
    rows = _field_rows(section)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(rows) == set(fields), (
        f"docs/config.md, section `{section}`: missing {sorted(set(fields) - set(rows))}, "
        f"not in {cls.__name__}: {sorted(set(rows) - set(fields))}"
    )
    for name, field in fields.items():
        documented = _documented_default(rows[name][1])
        assert _default_matches(field, documented, hints[name]), (
            f"{section}.{name}: the doc says {documented!r}, the code "
            f"{field.default if field.default is not dataclasses.MISSING else 'a factory'!r}"
        )


def test_every_optimizer_and_initializer_is_documented_with_its_arguments() -> None:
    text = _doc_section("tables")
    for specs in (OPTIMIZERS, INITIALIZERS):
        for name, spec in specs.items():
            row = re.search(rf"^\| `{name}` \|(.*)$", text, re.MULTILINE)
            assert row, f"docs/config.md documents no {name!r}"
            documented = dict(re.findall(r"`(\w+)` \(([^)]*)\)", row.group(1)))
            assert set(documented) == {arg for arg, _ in spec.args}, f"{name}: {documented}"
            for arg, default in spec.args:
                value = {"false": 0.0, "true": 1.0}.get(documented[arg], documented[arg])
                assert float(value) == default, f"{name}.{arg}: {documented[arg]} vs {default}"


def test_the_example_loads_and_shows_every_section(tmp_path: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"^```yaml\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert match, "docs/config.md has no yaml example"
    path = tmp_path / "cluster.yaml"
    path.write_text(match.group(1), encoding="utf-8")
    config = load_config(path)
    assert set(yaml.safe_load(match.group(1))) == set(_sections())
    shown = {key for entry in yaml.safe_load(match.group(1))["tables"] for key in entry}
    assert shown == {f.name for f in dataclasses.fields(config.tables[0])}


def test_the_doc_links_only_to_its_own_headings() -> None:
    text = DOC.read_text(encoding="utf-8")
    headings = re.findall(r"^#+ (.*)$", text, re.MULTILINE)
    slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
    anchors = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert anchors and anchors <= slugs, sorted(anchors - slugs)
