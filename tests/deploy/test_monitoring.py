"""The chart's alert rules and Grafana dashboard: off by default, the operator's shapes,
rules that ``promtool check rules`` accepts, a dashboard the Grafana sidecar picks up."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import yaml
from chart_render import CHART_DIR, Rendering, operator_resource_schema

from tests.tooling import require_tool, run_tool

_RULE = {
    "type": "object",
    "required": ["alert", "expr", "labels", "annotations"],
    "additionalProperties": False,
    "properties": {
        "alert": {"type": "string", "pattern": "^MonolithPS[A-Za-z]+$"},
        "expr": {"type": "string"},
        "for": {"type": "string", "pattern": "^[0-9]+[smh]$"},
        "labels": {
            "type": "object",
            "required": ["severity"],
            "properties": {"severity": {"enum": ["info", "warning", "critical"]}},
        },
        "annotations": {
            "type": "object",
            "required": ["summary", "description"],
            "additionalProperties": {"type": "string"},
        },
    },
}
# The subset of monitoring.coreos.com/v1 PrometheusRule the chart renders, closed.
_PROMETHEUS_RULE = operator_resource_schema(
    "PrometheusRule",
    {
        "type": "object",
        "required": ["groups"],
        "additionalProperties": False,
        "properties": {
            "groups": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "rules"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "rules": {"type": "array", "minItems": 1, "items": _RULE},
                    },
                },
            },
        },
    },
    metadata_required=("name", "namespace", "labels"),
)
# What the issue asks the alerts to cover, by the metric each one reads.
_COVERED = (
    "monolith_ps_sync_lag_seconds",
    "monolith_ps_snapshot_age_seconds",
    "monolith_ps_snapshots_total",
    "monolith_ps_rpc_requests_total",
    "monolith_ps_rows_not_found_total",
    "monolith_ps_restore_skipped_snapshots",
    "monolith_ps_memory_limit_bytes",
)


def _monitored(renderings: dict[str, Rendering]) -> Rendering:
    return renderings["03-monitoring"]


def _is_dashboard(manifest: dict[str, Any]) -> bool:
    return manifest["metadata"]["labels"].get("app.kubernetes.io/component") == "dashboard"


def rule_groups(rendering: Rendering) -> list[dict[str, Any]]:
    return rendering.one("PrometheusRule")["spec"]["groups"]


def test_rules_and_dashboard_are_off_by_default(renderings: dict[str, Rendering]) -> None:
    default = renderings["default"]
    assert not default.of_kind("PrometheusRule")
    assert not [
        m for m in default.of_kind("ConfigMap") if m["metadata"]["name"].endswith("-dashboard")
    ]


def test_prometheus_rule_has_the_operator_shape_and_covers_every_signal(
    renderings: dict[str, Rendering],
) -> None:
    rule = _monitored(renderings).one("PrometheusRule")
    jsonschema.validate(rule, _PROMETHEUS_RULE)
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    exprs = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    for metric in _COVERED:
        assert any(metric in expr for expr in exprs), f"no alert reads {metric}"
    assert all('namespace="ml"' in expr for expr in exprs)  # scoped to the release
    assert any("> 600" in expr for expr in exprs)  # syncLagSeconds from the values


def test_promtool_accepts_the_rules(renderings: dict[str, Rendering], tmp_path) -> None:
    promtool = require_tool("promtool")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups(_monitored(renderings))}))
    result = run_tool([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"alert": "X", "expr": "sum by (a (monolith_ps_table_rows)"}
    ]}]}))  # fmt: skip
    assert run_tool([promtool, "check", "rules", str(broken)]).returncode != 0


def test_dashboard_config_map_is_labelled_for_the_sidecar(renderings: dict[str, Rendering]) -> None:
    rendering = _monitored(renderings)
    config_map = rendering.one("ConfigMap", "dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "ML"}
    dashboard = json.loads(config_map["data"]["monolith-ps.json"])
    assert dashboard == json.loads((CHART_DIR / "dashboards" / "monolith-ps.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in panels)


def test_alerts_fire_on_the_signals_they_watch_and_only_there(
    renderings: dict[str, Rendering], tmp_path
) -> None:
    """``promtool test rules``: series in, each alert's expression out. The not-found ratio
    counts serving lookups only; a training shard's lookups must not dilute it."""
    promtool = require_tool("promtool")
    groups = rule_groups(_monitored(renderings))
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    exprs = {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}
    ns = 'namespace="ml"'
    series = {
        f'process_resident_memory_bytes{{{ns},instance="s"}}': "950x30",
        f'monolith_ps_memory_limit_bytes{{{ns},instance="s"}}': "1000x30",
        f'process_resident_memory_bytes{{{ns},instance="t"}}': "100x30",
        f'monolith_ps_memory_limit_bytes{{{ns},instance="t"}}': "1000x30",
        f'monolith_ps_rows_looked_up_total{{{ns},instance="s",table="emb"}}': "0+100x30",
        f'monolith_ps_rows_not_found_total{{{ns},instance="s",table="emb"}}': "0+75x30",
        f'monolith_ps_server_info{{{ns},instance="s",role="serving"}}': "1x30",
        f'monolith_ps_rows_looked_up_total{{{ns},instance="t",table="emb"}}': "0+1000x30",
        f'monolith_ps_rows_not_found_total{{{ns},instance="t",table="emb"}}': "0x30",
        f'monolith_ps_server_info{{{ns},instance="t",role="training"}}': "1x30",
        f'monolith_ps_sync_lag_seconds{{{ns},replica="r0",table="emb"}}': "700x30",
        f'monolith_ps_sync_lag_seconds{{{ns},replica="r1",table="emb"}}': "5x30",
        f'monolith_ps_restore_skipped_snapshots{{{ns},instance="t"}}': "2x30",
        f'monolith_ps_restore_skipped_snapshots{{{ns},instance="s"}}': "0x30",
    }
    expected = {
        "MonolithPSMemoryNearLimit": [('{namespace="ml",instance="s"}', 0.95)],
        "MonolithPSServingNotFoundRatioHigh": [('{namespace="ml",table="emb"}', 0.75)],
        "MonolithPSSyncLagHigh": [('{namespace="ml",replica="r0",table="emb"}', 700)],
        "MonolithPSRestoreSkippedSnapshots": [
            ('{__name__="monolith_ps_restore_skipped_snapshots",namespace="ml",instance="t"}', 2)
        ],
    }
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "promql_expr_test": [
                    {
                        "expr": exprs[alert],
                        "eval_time": "20m",
                        "exp_samples": [
                            {"labels": labels, "value": value} for labels, value in want
                        ],
                    }
                    for alert, want in expected.items()
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    result = run_tool([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
