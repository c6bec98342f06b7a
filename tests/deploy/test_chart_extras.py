"""Values that add to the pods: global.imageRegistry, initContainers, sidecars,
extraVolumes and extraVolumeMounts on every component, and the `helm test` Job."""

from __future__ import annotations

import copy

import kubernetes_validate
from chart_render import Rendering, load_values, render

_SIDECAR = {
    "name": "log-shipper",
    "image": "fluent/fluent-bit:3.0",
    "volumeMounts": [{"name": "shipper-config", "mountPath": "/fluent-bit/etc"}],
}


def _pod(rendering: Rendering, kind: str, component: str) -> dict:
    return rendering.one(kind, component)["spec"]["template"]["spec"]


def test_extras_render_on_every_component_and_validate(renderings: dict[str, Rendering]) -> None:
    values = copy.deepcopy(load_values("05-extras"))
    for role in ("training", "serving", "agent"):
        values.setdefault(role, {})["sidecars"] = [_SIDECAR]
        values[role].setdefault("extraVolumes", []).append(
            {"name": "shipper-config", "configMap": {"name": "log-shipper"}}
        )
    rendering = render(values)
    version = kubernetes_validate.latest_version()
    for manifest in rendering.workloads() + rendering.of_kind("Job"):
        kubernetes_validate.validate(manifest, version, strict=True)
    for kind, component, main in (
        ("StatefulSet", "training", "server"),
        ("StatefulSet", "serving", "server"),
        ("StatefulSet", "sync-agent", "sync-agent"),
    ):
        pod = _pod(rendering, kind, component)
        assert [c["name"] for c in pod["containers"]] == [main, "log-shipper"]
        assert "shipper-config" in {v["name"] for v in pod["volumes"]}
    training = _pod(rendering, "StatefulSet", "training")
    # the chart's own kernel-cache copy first, then the user's
    assert [c["name"] for c in training["initContainers"]] == ["numba-cache", "fetch-certs"]
    mounts = {m["name"]: m for m in training["containers"][0]["volumeMounts"]}
    assert mounts["certs"]["mountPath"] == "/etc/extra-certs"
    agent = _pod(rendering, "StatefulSet", "sync-agent")
    assert "/var/cache/extra" in {m["mountPath"] for m in agent["containers"][0]["volumeMounts"]}
    # Nothing extra by default.
    default = _pod(renderings["default"], "StatefulSet", "serving")
    assert [c["name"] for c in default["initContainers"]] == ["numba-cache"]
    assert len(default["containers"]) == 1


def test_global_image_registry_prefixes_every_chart_image(renderings: dict[str, Rendering]) -> None:
    rendering = renderings["05-extras"]
    images = [
        c["image"]
        for w in rendering.workloads() + rendering.of_kind("Job")
        for c in w["spec"]["template"]["spec"]["containers"]
    ]
    assert images and all(i.startswith("registry.example.com/monolith-ps:") for i in images)
    override = render(
        {"global": {"imageRegistry": "a.example"}, "image": {"registry": "b.example"}}
    )
    (server,) = _pod(override, "StatefulSet", "training")["containers"]
    assert server["image"].startswith("a.example/monolith-ps:")


def test_helm_test_job_checks_every_server_of_every_replica(
    renderings: dict[str, Rendering],
) -> None:
    from monolith_ps.cli import build_parser

    for rendering in renderings.values():
        (job,) = [
            j
            for j in rendering.of_kind("Job")
            if j["metadata"]["annotations"]["helm.sh/hook"] == "test"
        ]
        (container,) = job["spec"]["template"]["spec"]["containers"]
        args = build_parser().parse_args(container["args"])
        values = rendering.values
        training = args.training.split(",")
        assert len(training) == values["training"]["shards"]
        assert [a.split(".")[0] for a in training] == [
            f"{job['metadata']['name'].removesuffix('-test')}-training-{i}"
            for i in range(values["training"]["shards"])
        ]
        assert len(args.serving) == values["serving"]["replicas"]
        ordinals = sorted(
            int(a.split(".")[0].rsplit("-", 1)[1]) for g in args.serving for a in g.split(",")
        )
        assert ordinals == list(range(values["serving"]["shards"] * values["serving"]["replicas"]))
        assert bool(args.tls_ca) == values["tls"]["enabled"]
        if values["networkPolicy"]["enabled"]:
            for policy in rendering.of_kind("NetworkPolicy"):
                if policy["metadata"]["name"].endswith(("-training", "-serving")):
                    peers = [
                        p.get("podSelector", {}).get("matchLabels", {})
                        for p in policy["spec"]["ingress"][0]["from"]
                    ]
                    assert any(p.get("app.kubernetes.io/component") == "test" for p in peers)


def test_chart_names_its_home_sources_icon_and_maintainers() -> None:
    import yaml
    from chart_render import CHART_DIR

    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["home"].startswith("https://") and chart["icon"].startswith("https://")
    assert chart["sources"] and all(s.startswith("https://") for s in chart["sources"])
    assert chart["maintainers"] and all(m["name"] for m in chart["maintainers"])
    assert chart["icon"].endswith("/main/docs/icon.svg")  # the file in this repository
    assert (CHART_DIR.parents[2] / "docs" / "icon.svg").is_file()
