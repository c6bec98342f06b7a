"""The /metrics page of every role, scraped from live processes, passes the strict
OpenMetrics parser and ``promtool check metrics``: a name made twice, a clash or a bad
sample fails here. Every metric the chart's alert rules and dashboard read is one of the
names these pages export."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import numpy as np
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as text_families

from ps_client import PSClient
from tests.deploy.chart_render import CHART_DIR, load_values, render
from tests.tooling import require_tool, run_tool

CONFIG = {
    "tables": [{"name": "emb", "dim": 4, "optimizer": "adagrad", "initializer": "normal"}],
    "dense": [{"name": "mlp", "size": 8, "optimizer": "sgd"}],
}
ROLES = ("training-0", "serving-0-0", "agent")
_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _scrape(url: str, accept: str | None = None) -> str:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


@pytest.fixture(scope="module")
def pages(local_cluster):
    """The text and OpenMetrics pages of each role after a training step and a sync."""
    cluster = local_cluster(
        CONFIG,
        snapshots=True,
        training_shards=1,
        serving_shards=1,
        sparse_interval="0.3s",
    )
    keys = np.arange(1, 65, dtype=np.uint64)
    with cluster:
        with PSClient(cluster.training_addresses, role="training") as training:
            training.push("emb", keys, np.ones((len(keys), 4), np.float32))
            training.snapshot(full=True)
        with PSClient(cluster.serving_addresses[0], role="serving") as serving:
            deadline = time.monotonic() + 30
            while not serving.lookup("emb", keys, with_found=True)[1].all():
                assert time.monotonic() < deadline, "serving never received the rows"
                time.sleep(0.1)
            serving.lookup("emb", keys + np.uint64(1000), with_found=True)  # misses
        urls = cluster.metrics_urls
        yield {role: (_scrape(urls[role]), _scrape(urls[role], _OPENMETRICS)) for role in ROLES}


@pytest.mark.parametrize("role", ROLES)
def test_page_passes_the_strict_openmetrics_parser(pages, role):
    _, openmetrics = pages[role]
    families = list(text_string_to_metric_families(openmetrics))
    names = [family.name for family in families]
    assert len(names) == len(set(names))
    samples = {sample.name for family in families for sample in family.samples}
    assert "process_resident_memory_bytes" in samples
    assert "process_start_time_seconds" in samples
    assert not [name for name in samples if name.endswith("_created")]
    if role != "agent":
        assert "monolith_ps_delta_rows_applied_total" in samples


@pytest.mark.parametrize("role", ROLES)
def test_page_passes_promtool_check_metrics(pages, role):
    promtool = require_tool("promtool")
    text, _ = pages[role]
    result = run_tool([promtool, "check", "metrics"], stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


# Parts of a PromQL expression that are not metric names: strings, label matchers, ranges,
# grouping clauses, dashboard variables; then any word followed by "(" is a function.
_NOT_NAMES = re.compile(
    r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]|\$\{?\w+\}?'
    r"|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
)
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    stripped = _NOT_NAMES.sub(" ", expr)
    words = re.findall(r"([A-Za-z_:][\w:]*)(\s*\()?", stripped)
    return {word for word, call in words if not call and word.lower() not in _KEYWORDS}


def test_promql_metric_names_finds_names_and_only_names():
    expr = (
        'sum by (le, method) (rate(monolith_ps_rpc_duration_seconds_bucket{namespace="$ns"}'
        "[$__rate_interval])) / on (instance) group_left (role) monolith_ps_nope > 0.5 and bool x"
    )
    assert promql_metric_names(expr) == {
        "monolith_ps_rpc_duration_seconds_bucket",
        "monolith_ps_nope",
        "x",
    }


def _chart_queries() -> dict[str, str]:
    """Every PromQL expression of the chart's alert rules and dashboard, by where it is."""
    rendering = render(load_values("03-monitoring"))
    queries = {
        f"rule {rule['alert']}": rule["expr"]
        for group in rendering.one("PrometheusRule")["spec"]["groups"]
        for rule in group["rules"]
    }
    dashboard = json.loads((CHART_DIR / "dashboards" / "monolith-ps.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query["query"])
            assert match, f"variable {variable['name']}: unexpected query {query['query']}"
            queries[f"variable {variable['name']}"] = match.group(1)
    return queries


_SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
}


def test_every_metric_the_rules_and_dashboard_read_is_exported(pages):
    exported = set()
    for text, _ in pages.values():
        for family in text_families(text):
            # A family without samples yet (no label set seen) still names its series.
            suffixes = _SERIES_SUFFIXES.get(family.type, ("",))
            exported |= {family.name + suffix for suffix in suffixes}
            exported |= {sample.name for sample in family.samples}
    missing = {
        where: sorted(promql_metric_names(expr) - exported)
        for where, expr in _chart_queries().items()
        if promql_metric_names(expr) - exported
    }
    assert missing == {}
