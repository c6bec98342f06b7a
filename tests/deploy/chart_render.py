"""The Helm chart rendered per values variant: the defaults and every ci/*-values.yaml."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "deploy" / "helm" / "monolith-ps"
RELEASE = "demo"
NAMESPACE = "ml"

# variant name -> values file (None: the chart's defaults)
VARIANTS: dict[str, Path | None] = {"default": None} | {
    path.name.removesuffix("-values.yaml"): path
    for path in sorted(CHART_DIR.glob("ci/*-values.yaml"))
}


def operator_resource_schema(
    kind: str, spec: dict[str, Any], metadata_required: Sequence[str] = ("name",)
) -> dict[str, Any]:
    """JSON schema of a Prometheus-operator resource (``monitoring.coreos.com/v1``) of
    ``kind``, closed: metadata of name, namespace and string labels, and ``spec``."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "required": list(metadata_required),
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "namespace": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
            "spec": spec,
        },
    }


def load_values(variant: str) -> dict[str, Any] | None:
    path = VARIANTS[variant]
    return None if path is None else yaml.safe_load(path.read_text())


class Rendering:
    """The manifests and NOTES of one ``helm template`` run."""

    def __init__(self, files: dict[str, str], values: dict[str, Any]) -> None:
        self.values = values
        self.notes = next((text for name, text in files.items() if name.endswith("NOTES.txt")), "")
        self.manifests: list[dict[str, Any]] = [
            doc
            for name, text in sorted(files.items())
            if name.endswith(".yaml")
            for doc in yaml.safe_load_all(text)
            if doc
        ]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, component: str | None = None) -> dict[str, Any]:
        found = [
            m
            for m in self.of_kind(kind)
            if component is None
            or m["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ]
        assert len(found) == 1, f"expected one {kind} {component or ''}, found {len(found)}"
        return found[0]

    def tables_config_map(self) -> dict[str, Any]:
        """The ConfigMap of the tables config (the chart may render others, e.g. dashboards)."""
        found = [m for m in self.of_kind("ConfigMap") if "tables.yaml" in m.get("data", {})]
        assert len(found) == 1, f"expected one tables ConfigMap, found {len(found)}"
        return found[0]

    def workloads(self) -> list[dict[str, Any]]:
        return self.of_kind("StatefulSet") + self.of_kind("Deployment")


def render(values: dict[str, Any] | None) -> Rendering:
    import helm_python as helm

    with helm.Chart.load(CHART_DIR) as chart:
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE)
        merged = chart.merge_values(values)
    return Rendering(files, merged)
