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


# (config, the value's path in the schema's error)
REFUSED = [
    pytest.param(_dense(initializer="learned"), "/config/dense/0/initializer", id="dense-learned"),
    pytest.param(
        _dense(initializer="constant", initializer_args={"value": True}),
        "/config/dense/0/initializer_args/value",
        id="dense-initializer-arg-bool",
    ),
    pytest.param(
        _table(initializer_args={"std": False}),
        "/config/tables/0/initializer_args/std",
        id="table-initializer-arg-bool",
    ),
    pytest.param(
        _dense(optimizer_args={"lr": True}),
        "/config/dense/0/optimizer_args/lr",
        id="dense-optimizer-arg-bool",
    ),
    pytest.param(
        _table(optimizer_args={"lr": True}),
        "/config/tables/0/optimizer_args/lr",
        id="table-optimizer-arg-bool",
    ),
    pytest.param(
        _dense(optimizer="momentum", optimizer_args={"nesterov": 1}),
        "/config/dense/0/optimizer_args/nesterov",
        id="dense-nesterov-number",
    ),
    pytest.param(
        _table(optimizer="momentum", optimizer_args={"nesterov": 0}),
        "/config/tables/0/optimizer_args/nesterov",
        id="table-nesterov-number",
    ),
    pytest.param(_table(sketch_width=100), "/config/tables/0/sketch_width", id="sketch-width-100"),
    pytest.param(_table(sketch_width=32), "/config/tables/0/sketch_width", id="sketch-width-32"),
    pytest.param(
        _table(sketch_width=2**31), "/config/tables/0/sketch_width", id="sketch-width-2**31"
    ),
    pytest.param(_table(seed=2**64), "/config/tables/0/seed", id="table-seed-2**64"),
    pytest.param(_dense(seed=2**64), "/config/dense/0/seed", id="dense-seed-2**64"),
    pytest.param(_dense(seed=-1), "/config/dense/0/seed", id="dense-seed-negative"),
]

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
