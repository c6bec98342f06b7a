"""Fixtures for discovery tests: pods and agent flags taken from the Helm chart's rendering."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_emulator import NAMESPACE, PodFactory

CHART_DIR = Path(__file__).resolve().parents[3] / "deploy" / "helm" / "monolith-ps"
RELEASE = "demo"


@pytest.fixture(scope="session")
def chart_workloads() -> dict[str, dict[str, Any]]:
    """The chart's default rendering: StatefulSets and the agent Deployment by component."""
    import helm_python as helm

    with helm.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(name=RELEASE, namespace=NAMESPACE)
    workloads = {}
    for path, text in rendered.items():
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc and doc["kind"] in ("StatefulSet", "Deployment"):
                workloads[doc["metadata"]["labels"]["app.kubernetes.io/component"]] = doc
    return workloads


@pytest.fixture(scope="session")
def agent_flags(chart_workloads: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The sync agent's ``--flag=value`` arguments as the chart renders them."""
    args = chart_workloads["sync-agent"]["spec"]["template"]["spec"]["containers"][0]["args"]
    return dict(arg[2:].split("=", 1) for arg in args if arg.startswith("--"))


@pytest.fixture(scope="session")
def make_pod(chart_workloads: dict[str, dict[str, Any]]) -> PodFactory:
    """``make_pod(component, ordinal)``: a Pending pod as the StatefulSet controller creates it."""

    def make(component: str, ordinal: int) -> dict[str, Any]:
        statefulset = chart_workloads[component]
        template = copy.deepcopy(statefulset["spec"]["template"])
        name = f"{statefulset['metadata']['name']}-{ordinal}"
        labels = dict(template["metadata"]["labels"])
        labels["statefulset.kubernetes.io/pod-name"] = name
        labels["apps.kubernetes.io/pod-index"] = str(ordinal)
        spec = {
            **template["spec"],
            "hostname": name,
            "subdomain": statefulset["spec"]["serviceName"],
        }
        for claim in statefulset["spec"].get("volumeClaimTemplates", []):
            claim_name = claim["metadata"]["name"]
            spec["volumes"] = [
                *spec.get("volumes", []),
                {
                    "name": claim_name,
                    "persistentVolumeClaim": {"claimName": f"{claim_name}-{name}"},
                },
            ]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "uid": str(uuid.uuid4()),
                "labels": labels,
                "annotations": template["metadata"].get("annotations", {}),
            },
            "spec": spec,
            "status": {"phase": "Pending", "conditions": []},
        }

    return make
