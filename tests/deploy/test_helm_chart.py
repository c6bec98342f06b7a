"""The Helm chart: lint, strict Kubernetes schemas, the values schema, and its invariants."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from chart_render import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    VARIANTS,
    Rendering,
    load_values,
    operator_resource_schema,
    render,
)

import monolith_ps

KUBERNETES_VERSION = kubernetes_validate.latest_version()


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _pod_templates(rendering: Rendering) -> list[dict[str, Any]]:
    return [w["spec"]["template"] for w in rendering.workloads()]


# --- lint and Kubernetes schemas --------------------------------------------------------


def test_ci_variants_cover_sharding_tls_monitoring_and_network_policy() -> None:
    assert len(VARIANTS) >= 4  # the defaults and at least three variants
    loaded = {name: load_values(name) or {} for name in VARIANTS}
    assert any(v.get("training", {}).get("shards", 0) >= 8 for v in loaded.values())
    assert any(v.get("tls", {}).get("enabled") for v in loaded.values())
    assert any(
        v.get("metrics", {}).get("serviceMonitor", {}).get("enabled")
        and v.get("networkPolicy", {}).get("enabled")
        for v in loaded.values()
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_strict_passes(variant: str) -> None:
    report = helm.lint(CHART_DIR, load_values(variant), strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], problems or report["errors"]


def test_every_manifest_validates_against_strict_kubernetes_schemas(rendering: Rendering) -> None:
    for manifest in rendering.manifests:
        if manifest["kind"] in ("ServiceMonitor", "PrometheusRule"):
            continue  # CRDs: checked against their operator shapes (here, test_monitoring)
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")


def test_strict_validation_catches_a_misplaced_field(renderings: dict[str, Rendering]) -> None:
    statefulset = copy.deepcopy(renderings["default"].one("StatefulSet", "training"))
    statefulset["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSION, strict=True)


# The subset of monitoring.coreos.com/v1 ServiceMonitor the chart renders, closed so a
# misspelt field fails (field names from the prometheus-operator API reference).
_RELABEL_CONFIG = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
        "action": {
            "enum": [
                "replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                "lowercase", "uppercase", "keepequal", "dropequal",
                "Replace", "Keep", "Drop", "HashMod", "LabelMap", "LabelDrop", "LabelKeep",
                "Lowercase", "Uppercase", "KeepEqual", "DropEqual",
            ]
        },
    },
}  # fmt: skip
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
    r"(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_SERVICE_MONITOR = operator_resource_schema(
    "ServiceMonitor",
    {
        "type": "object",
        "required": ["selector", "endpoints"],
        "additionalProperties": False,
        "properties": {
            "selector": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "matchLabels": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                    }
                },
            },
            "namespaceSelector": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": {"type": "string"}},
                },
            },
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string"},
                        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                        "interval": _DURATION,
                        "scrapeTimeout": _DURATION,
                        "relabelings": {"type": "array", "items": _RELABEL_CONFIG},
                        "metricRelabelings": {"type": "array", "items": _RELABEL_CONFIG},
                    },
                },
            },
        },
    },
)


def test_service_monitor_has_the_operator_shape_and_scrapes_each_pod_once(
    renderings: dict[str, Rendering],
) -> None:
    with_monitor = [r for r in renderings.values() if r.of_kind("ServiceMonitor")]
    assert with_monitor, "no variant renders a ServiceMonitor"
    for rendering in with_monitor:
        monitor = rendering.one("ServiceMonitor")
        jsonschema.validate(monitor, _SERVICE_MONITOR)
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
        services = [
            s
            for s in rendering.of_kind("Service")
            if _selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        for template in _pod_templates(rendering):
            labels = template["metadata"]["labels"]
            behind = [s for s in services if _selects(s["spec"]["selector"], labels)]
            assert len(behind) == 1, (
                f"{labels['app.kubernetes.io/component']} scraped {len(behind)}x"
            )
            assert "metrics" in [p["name"] for p in behind[0]["spec"]["ports"]]
            assert any(
                p["name"] == "metrics" for c in template["spec"]["containers"] for p in c["ports"]
            )
    assert not renderings["default"].of_kind("ServiceMonitor")  # off by default


# --- the values schema --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"trainnig": {"shards": 2}}, "trainnig"),
        ({"training": {"shard": 3}}, "shard"),
        ({"training": {"shards": "3"}}, "/training/shards"),
        ({"serving": {"replicas": 0}}, "/serving/replicas"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"ports": {"grpc": 70000}}, "/ports/grpc"),
        ({"tls": {"enabled": True}}, "/tls/secretName"),
        ({"networkPolicy": {"enabled": "yes"}}, "/networkPolicy/enabled"),
        ({"config": {"tables": []}}, "/config/tables"),
        ({"config": {"tables": [{"name": "u", "dim": 8, "admit_afer": 2}]}}, "admit_afer"),
        ({"config": {"tables": [{"name": "u", "dim": 8, "optimizer": "adamw"}]}}, "optimizer"),
        ({"config": {"tables": [{"name": "u"}]}}, "dim"),
        ({"config": {"tables": [{"name": "u", "dim": 8}], "snapshots": {}}}, "snapshots"),
        (
            {"config": {"tables": [{"name": "u", "dim": 8}], "sync": {"sparse_interval": "5min"}}},
            "sparse_interval",
        ),  # noqa: E501
    ],
)
def test_schema_rejects_typos_and_wrong_types(values: dict[str, Any], names: str) -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        with pytest.raises(helm.HelmValuesError, match=re.escape(names)):
            chart.validate_schema(values)
        with pytest.raises(helm.HelmValuesError):
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
    report = helm.lint(CHART_DIR, values, strict=True)
    assert report["errors"], "lint accepted values the schema rejects"


def test_values_yaml_documents_every_key() -> None:
    """Every key outside pass-through blocks has a comment line right above it."""
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    undocumented = []
    passthrough_depth = None
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        depth = len(match.group(1))
        if passthrough_depth is not None and depth > passthrough_depth:
            continue
        passthrough_depth = None
        key = match.group(2)
        if key in ("config", "podSecurityContext", "containerSecurityContext"):
            passthrough_depth = depth  # documented as a whole: Kubernetes or config-file data
        above = lines[number - 1].strip() if number else ""
        opens_section = line.rstrip().endswith(":")
        if not above.startswith("#") and not opens_section:
            undocumented.append(f"line {number + 1}: {key}")
    assert undocumented == []


def test_schema_config_fields_match_what_the_servers_accept() -> None:
    """The config section of the schema names exactly the fields monolith_ps.config reads."""
    from monolith_ps import config as cluster_config
    from monolith_ps.optimizer_specs import INITIALIZERS, OPTIMIZERS
    from monolith_ps.table_config import (
        DENSE_INITIALIZERS,
        EVICTION_POLICIES,
        SERVING_DTYPES,
        TableConfig,
    )

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    definitions = schema["definitions"]
    sections = schema["properties"]["config"]["properties"]

    def fields(cls: type) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    assert set(definitions["table"]["properties"]) == fields(TableConfig)
    assert set(definitions["dense"]["properties"]) == fields(cluster_config.DenseConfig)
    assert set(sections["server"]["properties"]) == fields(cluster_config.ServerConfig)
    assert set(sections["snapshot"]["properties"]) == fields(cluster_config.SnapshotConfig)
    assert set(sections["sync"]["properties"]) == fields(cluster_config.SyncConfig)
    assert set(sections) == {f.name for f in dataclasses.fields(cluster_config.ClusterConfig)}
    for kind, initializers in (("table", INITIALIZERS), ("dense", DENSE_INITIALIZERS)):
        props = definitions[kind]["properties"]
        assert set(props["optimizer"]["enum"]) == set(OPTIMIZERS)
        assert set(props["initializer"]["enum"]) == set(initializers)
    assert set(definitions["table"]["properties"]["eviction"]["enum"]) == set(EVICTION_POLICIES)
    assert set(definitions["table"]["properties"]["serving_dtype"]["enum"]) == set(SERVING_DTYPES)


def test_config_map_holds_a_config_the_servers_load(rendering: Rendering) -> None:
    from monolith_ps.config import parse_config

    config_map = rendering.tables_config_map()
    parsed = parse_config(yaml.safe_load(config_map["data"]["tables.yaml"]))
    assert [t.name for t in parsed.tables] == [
        t["name"] for t in rendering.values["config"]["tables"]
    ]


# --- invariants of the rendered objects ---------------------------------------------------


def test_app_version_is_the_package_version(renderings: dict[str, Rendering]) -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["appVersion"] == monolith_ps.__version__
    for workload in renderings["default"].workloads():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            assert container["image"] == f"monolith-ps:{monolith_ps.__version__}"


def test_shard_counts_follow_values(rendering: Rendering) -> None:
    values = rendering.values
    training = rendering.one("StatefulSet", "training")
    serving = rendering.one("StatefulSet", "serving")
    assert training["spec"]["replicas"] == values["training"]["shards"]
    assert (
        serving["spec"]["replicas"] == values["serving"]["shards"] * values["serving"]["replicas"]
    )
    for statefulset in (training, serving):
        assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
        service = next(
            s
            for s in rendering.of_kind("Service")
            if s["metadata"]["name"] == statefulset["spec"]["serviceName"]
        )
        assert service["spec"]["clusterIP"] == "None"
        # A pod gets its DNS name only when ready: clients never reach a restoring shard.
        assert service["spec"]["publishNotReadyAddresses"] is False
        assert _selects(
            service["spec"]["selector"], statefulset["spec"]["template"]["metadata"]["labels"]
        )
    persistence = values["training"]["persistence"]
    claims = training["spec"].get("volumeClaimTemplates", [])
    per_pod = persistence["enabled"] and not persistence["shared"]["enabled"]
    assert [c["metadata"]["name"] for c in claims] == (["snapshots"] if per_pod else [])
    shared = [c for c in rendering.of_kind("PersistentVolumeClaim")]
    assert len(shared) == (persistence["enabled"] and persistence["shared"]["enabled"])
    for claim in shared:
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_pods_run_as_non_root_with_a_read_only_root_and_no_capabilities(
    rendering: Rendering,
) -> None:
    for template in _pod_templates(rendering):
        pod = template["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
        assert pod["seccompProfile"]["type"] == "RuntimeDefault"
        for container in template["spec"]["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            mounted = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounted


def test_server_probes_use_grpc_health_and_allow_a_long_restore(rendering: Rendering) -> None:
    """Startup: restore done; readiness: can answer correctly (serving: synced from every
    training shard); liveness: the process answers. Three health names, so a serving pod
    waiting for its first sync is neither restarted nor sent traffic."""
    tls = rendering.values["tls"]["enabled"]
    services = {
        "startupProbe": ("monolith_ps.v1.startup", "/healthz/startup"),
        "readinessProbe": (None, "/healthz"),
        "livenessProbe": ("monolith_ps.v1.liveness", "/healthz/live"),
    }
    for component in ("training", "serving"):
        container = rendering.one("StatefulSet", component)["spec"]["template"]["spec"][
            "containers"
        ][0]
        grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
        for probe, (service, path) in services.items():
            if tls:  # the kubelet's gRPC probe cannot do TLS: /healthz says the same
                assert "grpc" not in container[probe]
                assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}
            else:
                expected = {"port": grpc_port, **({"service": service} if service else {})}
                assert container[probe]["grpc"] == expected


def test_pods_start_from_the_kernels_built_into_the_image(rendering: Rendering) -> None:
    """The cache volume is mounted over the image's cache path, so an init container of
    the same image copies the image's kernels into it first (the agent's routing kernels
    too)."""
    for component in ("training", "serving", "sync-agent"):
        spec = rendering.one("StatefulSet", component)["spec"]["template"]["spec"]
        server = spec["containers"][0]
        cache = next(e["value"] for e in server["env"] if e["name"] == "NUMBA_CACHE_DIR")
        assert {"name": "numba-cache", "mountPath": cache} in [
            {k: m[k] for k in ("name", "mountPath")} for m in server["volumeMounts"]
        ]
        init = next(c for c in spec["initContainers"] if c["name"] == "numba-cache")
        assert init["image"] == server["image"]
        assert init["command"] == ["cp", "-a", f"{cache}/.", "/numba-cache/"]
        assert init["volumeMounts"] == [{"name": "numba-cache", "mountPath": "/numba-cache"}]
        assert init["securityContext"]["readOnlyRootFilesystem"] is True


def test_rollouts_keep_a_replica_of_every_serving_shard(rendering: Rendering) -> None:
    values = rendering.values
    for component in ("training", "serving"):
        spec = rendering.one("StatefulSet", component)["spec"]
        assert spec["updateStrategy"] == values[component]["updateStrategy"]
        assert spec["podManagementPolicy"] == values[component]["podManagementPolicy"]
    pdbs = {
        p["metadata"]["name"].rsplit("-", 1)[1]: p for p in rendering.of_kind("PodDisruptionBudget")
    }
    if "serving" in pdbs and values["serving"]["podDisruptionBudget"].get("maxUnavailable") is None:
        replicas = values["serving"]["replicas"]
        assert pdbs["serving"]["spec"]["maxUnavailable"] == max(1, replicas - 1)


def test_agent_may_only_read_pods(rendering: Rendering) -> None:
    role = rendering.one("Role")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    binding = rendering.one("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    agent = rendering.one("StatefulSet", "sync-agent")["spec"]["template"]["spec"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": agent["serviceAccountName"], "namespace": NAMESPACE}
    ]
    assert rendering.one("ServiceAccount")["metadata"]["name"] == agent["serviceAccountName"]
    assert not rendering.of_kind("ClusterRole") and not rendering.of_kind("ClusterRoleBinding")
    for component in ("training", "serving"):
        server = rendering.one("StatefulSet", component)["spec"]["template"]["spec"]
        assert server["automountServiceAccountToken"] is False


def test_disruption_budgets_cover_the_server_pods(rendering: Rendering) -> None:
    for component in ("training", "serving"):
        budgets = [
            b
            for b in rendering.of_kind("PodDisruptionBudget")
            if b["metadata"]["labels"]["app.kubernetes.io/component"] == component
        ]
        enabled = rendering.values[component]["podDisruptionBudget"]["enabled"]
        assert len(budgets) == int(enabled)
        labels = rendering.one("StatefulSet", component)["spec"]["template"]["metadata"]["labels"]
        for budget in budgets:
            assert _selects(budget["spec"]["selector"]["matchLabels"], labels)


def test_network_policies_admit_the_agent_and_never_everyone(
    renderings: dict[str, Rendering],
) -> None:
    with_policies = [r for r in renderings.values() if r.of_kind("NetworkPolicy")]
    assert len(with_policies) >= 2
    for rendering in with_policies:
        agent_labels = rendering.one("StatefulSet", "sync-agent")["spec"]["template"]["metadata"][
            "labels"
        ]
        for component in ("training", "serving"):
            policy = rendering.one("NetworkPolicy", component)
            pod_labels = rendering.one("StatefulSet", component)["spec"]["template"]["metadata"][
                "labels"
            ]
            assert _selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
            rules = policy["spec"]["ingress"]
            assert all(rule.get("from") for rule in rules), "an empty 'from' admits everyone"
            grpc_rule = next(r for r in rules if r["ports"][0]["port"] == "grpc")
            assert any(
                _selects(peer.get("podSelector", {}).get("matchLabels", {}), agent_labels)
                and "namespaceSelector" not in peer
                for peer in grpc_rule["from"]
            )
        agent_policy = rendering.one("NetworkPolicy", "sync-agent")
        assert all(rule.get("from") for rule in agent_policy["spec"]["ingress"])


def test_config_change_rolls_the_pods() -> None:
    before = render(None)
    after = render({"config": {"tables": [{"name": "user_id", "dim": 32}]}})
    for kind, component in (
        ("StatefulSet", "training"),
        ("StatefulSet", "serving"),
        ("StatefulSet", "sync-agent"),
    ):
        old = before.one(kind, component)["spec"]["template"]["metadata"]["annotations"]
        new = after.one(kind, component)["spec"]["template"]["metadata"]["annotations"]
        assert old["checksum/config"] != new["checksum/config"]


def test_notes_list_every_shard_address(renderings: dict[str, Rendering]) -> None:
    for rendering in renderings.values():
        values = rendering.values
        fullname = rendering.one("StatefulSet", "training")["metadata"]["name"].removesuffix(
            "-training"
        )
        shards, replicas = values["serving"]["shards"], values["serving"]["replicas"]
        for shard in range(values["training"]["shards"]):
            assert (
                f"{fullname}-training-{shard}.{fullname}-training.{NAMESPACE}.svc:"
                in rendering.notes
            )
        for shard in range(shards):
            line = next(
                ln
                for ln in rendering.notes.splitlines()
                if ln.strip().startswith(f"shard {shard}:")
            )
            ordinals = sorted(int(m) for m in re.findall(rf"{fullname}-serving-(\d+)\.", line))
            assert ordinals == [shard + r * shards for r in range(replicas)]


def test_readme_values_table_lists_every_key() -> None:
    """The README's values table has one row per key of values.yaml (pass-through blocks
    such as ``config`` count as one key)."""
    passthrough = {"config", "podSecurityContext", "containerSecurityContext"}

    def keys(node: dict[str, Any], prefix: str = "") -> set[str]:
        found = set()
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and path not in passthrough:
                found |= keys(value, f"{path}.")
            else:
                found.add(path)
        return found

    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    readme = (CHART_DIR / "README.md").read_text()
    documented = set(re.findall(r"^\| `([\w.]+)` \|", readme, flags=re.MULTILINE))
    assert documented == keys(values)


def test_authorization_is_on_by_default_and_the_agent_holds_only_its_token() -> None:
    from monolith_ps.config import parse_config

    rendering = render(None)
    config = parse_config(yaml.safe_load(rendering.tables_config_map()["data"]["tables.yaml"]))
    assert set(config.auth.token_files) == {"trainer", "reader", "agent", "admin"}
    secret = next(m for m in rendering.of_kind("Secret") if m["metadata"]["name"].endswith(
        "-auth-tokens"))  # fmt: skip
    assert set(secret["data"]) == {"trainer", "reader", "agent", "admin"}
    for component in ("training", "serving"):
        pod = rendering.one("StatefulSet", component)["spec"]["template"]["spec"]
        assert "--auth=on" in pod["containers"][0]["args"]
    agent = rendering.one("StatefulSet", "sync-agent")["spec"]["template"]["spec"]
    assert any(a.startswith("--token-file=") for a in agent["containers"][0]["args"])
    volume = next(v for v in agent["volumes"] if v["name"] == "auth-tokens")
    assert [item["key"] for item in volume["secret"]["items"]] == ["agent"]
    assert rendering.of_kind("NetworkPolicy")  # on by default


def test_an_agent_certificate_name_becomes_an_agent_identity() -> None:
    from monolith_ps.config import parse_config

    values = {"tls": {"enabled": True, "secretName": "ps-tls", "clientAuth": True},
              "auth": {"enabled": True, "agentIdentity": "ps.example",
                       "identities": {"trainer.ml": "trainer"}}}  # fmt: skip
    text = render(values).tables_config_map()["data"]["tables.yaml"]
    identities = parse_config(yaml.safe_load(text)).auth.identities
    assert identities == {"ps.example": "agent", "trainer.ml": "trainer"}
    off = render({"auth": {"enabled": False}})
    assert "--auth=off" in off.one("StatefulSet", "serving")["spec"]["template"]["spec"][
        "containers"][0]["args"]  # fmt: skip
    assert not [m for m in off.of_kind("Secret") if m["metadata"]["name"].endswith("-auth-tokens")]
