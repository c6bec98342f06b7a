"""The values schema's ``config`` section refuses what the config loader refuses, and
accepts what it accepts, value by value (``helm install`` fails before any pod starts)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest
import yaml
from chart_render import CHART_DIR, NAMESPACE, RELEASE

from monolith_ps.config import ConfigError, parse_config

TABLE = {"name": "u", "dim": 8}
DENSE = {"name": "w", "size": 4}


def _table(**fields: Any) -> dict[str, Any]:
    return {"tables": [TABLE | fields]}


def _dense(**fields: Any) -> dict[str, Any]:
    return {"tables": [TABLE], "dense": [DENSE | fields]}


def _refused(section: str, path: str, case: str, **fields: Any) -> Any:
    """A config with ``fields`` in its first ``section`` entry ("tables" or "dense"), and
    the path the schema's error names: ``/config/<section>/0/<path>``."""
    config = _table(**fields) if section == "tables" else _dense(**fields)
    return pytest.param(config, f"/config/{section}/0/{path}", id=case)


# (config, the value's path in the schema's error)
REFUSED = [
    _refused("dense", "initializer", "dense-learned", initializer="learned"),
    _refused(
        "dense", "initializer_args/value", "dense-initializer-arg-bool",
        initializer="constant", initializer_args={"value": True},
    ),
    _refused(
        "tables", "initializer_args/std", "table-initializer-arg-bool",
        initializer_args={"std": False},
    ),
    _refused("dense", "optimizer_args/lr", "dense-optimizer-arg-bool", optimizer_args={"lr": True}),
    _refused(
        "tables", "optimizer_args/lr", "table-optimizer-arg-bool", optimizer_args={"lr": True}
    ),
    _refused(
        "dense", "optimizer_args/nesterov", "dense-nesterov-number",
        optimizer="momentum", optimizer_args={"nesterov": 1},
    ),
    _refused(
        "tables", "optimizer_args/nesterov", "table-nesterov-number",
        optimizer="momentum", optimizer_args={"nesterov": 0},
    ),
    _refused("tables", "sketch_width", "sketch-width-100", sketch_width=100),
    _refused("tables", "sketch_width", "sketch-width-32", sketch_width=32),
    _refused("tables", "sketch_width", "sketch-width-2**31", sketch_width=2**31),
    _refused("tables", "seed", "table-seed-2**64", seed=2**64),
    _refused("dense", "seed", "dense-seed-2**64", seed=2**64),
    _refused("dense", "seed", "dense-seed-negative", seed=-1),
]  # fmt: skip

ACCEPTED = [
    pytest.param(
        _dense(optimizer="momentum", optimizer_args={"lr": 0.1, "nesterov": True}),
        id="dense-nesterov",
    ),
    pytest.param(
        _table(optimizer="momentum", optimizer_args={"nesterov": False}), id="table-nesterov"
    ),
    pytest.param(_dense(initializer="normal", initializer_args={"std": 1}), id="dense-normal"),
    pytest.param(_table(initializer="learned"), id="table-learned"),
    pytest.param(_table(sketch_width=64), id="sketch-width-64"),
    pytest.param(_table(sketch_width=2**30), id="sketch-width-2**30"),
    pytest.param(_table(sketch_width=None), id="sketch-width-null"),
    pytest.param(_dense(seed=2**53), id="dense-seed-2**53"),
]


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.mark.parametrize(("config", "path"), REFUSED)
def test_schema_and_loader_both_refuse(chart: helm.Chart, config: dict, path: str) -> None:
    with pytest.raises(ConfigError):
        parse_config(config)
    with pytest.raises(helm.HelmValuesError, match=f"at '{re.escape(path)}'"):
        chart.validate_schema({"config": config})
    with pytest.raises(helm.HelmValuesError):
        chart.render({"config": config}, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("config", ACCEPTED)
def test_schema_and_loader_both_accept(chart: helm.Chart, config: dict) -> None:
    parse_config(config)
    chart.validate_schema({"config": config})


def test_a_seed_up_to_2_53_reaches_the_servers_unchanged(chart: helm.Chart) -> None:
    """Helm holds numbers as float64: 2**53 is the largest seed docs/config.md promises."""
    values = {"config": _table(seed=2**53)}
    files = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    config_map = yaml.safe_load(files["monolith-ps/templates/configmap.yaml"])
    assert parse_config(yaml.safe_load(config_map["data"]["tables.yaml"])).tables[0].seed == 2**53


@pytest.mark.parametrize("build", [_table, _dense])
def test_a_seed_helm_would_round_is_refused_at_install(chart: helm.Chart, build) -> None:
    """The servers take seeds up to 2**64 - 1, but Helm would hand them 2**60 rounded:
    the chart refuses it rather than change a seed without a word."""
    parse_config(build(seed=2**60))
    with pytest.raises(helm.HelmValuesError, match="seed"):
        chart.validate_schema({"config": build(seed=2**60)})
