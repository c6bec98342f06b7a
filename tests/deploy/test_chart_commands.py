"""The commands the chart runs are commands ``mps`` accepts, wired to the pods' ports,
environment and volumes. Every container's args go through the real ``mps`` parser, so
the chart and the code cannot drift apart."""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import PurePosixPath
from typing import Any

import pytest
from chart_render import NAMESPACE, RELEASE, Rendering, render

from monolith_ps.cli import build_parser
from sync_agent.settings import parse_partition


def parse(args: list[str]) -> argparse.Namespace:
    """``args`` parsed by the real ``mps`` parser; a rejected flag fails with argparse's words."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"mps rejects the chart's command line {args}:\n{stderr.getvalue()}")


def flags(args: list[str]) -> dict[str, str]:
    """``--name=value`` arguments by name (the chart always uses that form)."""
    out = {}
    for arg in args[1:]:
        assert arg.startswith("--") and "=" in arg, f"chart argument {arg!r} is not --flag=value"
        name, value = arg[2:].split("=", 1)
        out[name] = value
    return out


def mounted_source(
    pod_spec: dict[str, Any], container: dict[str, Any], path: str
) -> dict[str, Any]:
    """The volume (or claim template) holding ``path`` in ``container``, with the mount."""
    best = None
    for mount in container["volumeMounts"]:
        if PurePosixPath(path).is_relative_to(mount["mountPath"]) and (
            best is None or len(mount["mountPath"]) > len(best["mountPath"])
        ):
            best = mount
    assert best is not None, f"{path} is on no mounted volume (the root filesystem is read-only)"
    volume = next((v for v in pod_spec.get("volumes", []) if v["name"] == best["name"]), None)
    return {"mount": best, "volume": volume}


def container_port(container: dict[str, Any], name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def selector_labels(selector: str) -> dict[str, str]:
    assert "!" not in selector and " in " not in selector, "the chart uses equality selectors"
    return dict(term.split("=", 1) for term in selector.split(","))


def test_mps_has_the_subcommands_the_chart_runs() -> None:
    parser = build_parser()
    choices = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"server", "sync-agent"} <= set(choices)


@pytest.mark.parametrize("component", ["training", "serving"])
def test_server_command_matches_mps_server(rendering: Rendering, component: str) -> None:
    statefulset = rendering.one("StatefulSet", component)
    pod_spec = statefulset["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    args = container["args"]
    parsed = parse(args)
    given = flags(args)
    values = rendering.values

    assert parsed.command == "server" and args[0] == "server"
    assert parsed.role == component
    assert parsed.num_shards == values[component]["shards"]
    replicas = statefulset["spec"]["replicas"]
    assert replicas % parsed.num_shards == 0  # every shard has the same number of replicas
    assert parsed.port == container_port(container, "grpc")
    assert parsed.metrics_port == container_port(container, "metrics")
    assert parsed.host == "0.0.0.0"

    # --shard-index auto reads the StatefulSet ordinal from POD_NAME.
    assert given["shard-index"] == "auto"
    assert env_of(container)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"

    # The config file is the ConfigMap's tables.yaml.
    config = mounted_source(pod_spec, container, parsed.config)
    assert (
        config["volume"]["configMap"]["name"] == rendering.tables_config_map()["metadata"]["name"]
    )
    assert config["mount"]["subPath"] in rendering.tables_config_map()["data"]

    # Training snapshots live on the claim (or an emptyDir without persistence).
    if component == "training":
        snapshots = mounted_source(pod_spec, container, parsed.snapshot_dir)
        claims = [
            c["metadata"]["name"] for c in statefulset["spec"].get("volumeClaimTemplates", [])
        ]
        persistence = values["training"]["persistence"]
        if persistence["enabled"] and persistence["shared"]["enabled"]:
            claim = snapshots["volume"]["persistentVolumeClaim"]["claimName"]
            assert claim == f"{RELEASE}-monolith-ps-training-snapshots"
            assert parsed.snapshot_dir.endswith(f"/shards-{parsed.num_shards}/shard-{{shard}}")
        elif persistence["enabled"]:
            assert snapshots["volume"] is None and snapshots["mount"]["name"] in claims
            assert "{shard}" not in parsed.snapshot_dir
        else:
            assert "emptyDir" in snapshots["volume"]
    else:
        assert parsed.snapshot_dir is None

    # TLS files come from the Secret.
    tls = values["tls"]
    assert (parsed.tls_cert is not None) == tls["enabled"] == (parsed.tls_key is not None)
    assert (parsed.tls_client_ca is not None) == (tls["enabled"] and tls["clientAuth"])
    for path in filter(None, (parsed.tls_cert, parsed.tls_key, parsed.tls_client_ca)):
        source = mounted_source(pod_spec, container, path)
        assert source["volume"]["secret"]["secretName"] == tls["secretName"]
        assert PurePosixPath(path).name in ("tls.crt", "tls.key", "ca.crt")

    assert parsed.log_format == values["logFormat"]
    _check_numba_cache(pod_spec, container)


def test_agent_command_matches_mps_sync_agent(rendering: Rendering) -> None:
    deployment = rendering.one("StatefulSet", "sync-agent")
    pod_spec = deployment["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    parsed = parse(container["args"])
    values = rendering.values

    assert parsed.command == "sync-agent"
    # Each agent pod takes its own share of the serving shards, by its ordinal.
    replicas = values["agent"]["replicas"]
    assert deployment["spec"]["replicas"] == replicas
    if replicas > 1:
        pods = [f"{deployment['metadata']['name']}-{i}" for i in range(replicas)]
        shares = {parse_partition(parsed.partition, {"POD_NAME": pod}) for pod in pods}
        assert shares == {(i, replicas) for i in range(replicas)}
    else:
        assert parsed.partition is None
    assert parsed.discovery == "kubernetes"
    assert parsed.namespace == NAMESPACE
    assert parsed.metrics_port == container_port(container, "metrics")
    # Each selector picks exactly its role's pods, and the named port exists on them.
    templates = {
        c: rendering.one("StatefulSet", c)["spec"]["template"] for c in ("training", "serving")
    }
    for role, selector in (
        ("training", parsed.training_selector),
        ("serving", parsed.serving_selector),
    ):
        wanted = selector_labels(selector)
        for component, template in templates.items():
            labels = template["metadata"]["labels"]
            assert all(labels.get(k) == v for k, v in wanted.items()) == (component == role)
        ports = templates[role]["spec"]["containers"][0]["ports"]
        assert parsed.grpc_port_name in [p["name"] for p in ports]
    config = mounted_source(pod_spec, container, parsed.config)
    assert (
        config["volume"]["configMap"]["name"] == rendering.tables_config_map()["metadata"]["name"]
    )

    tls = values["tls"]
    assert (parsed.tls_ca is not None) == tls["enabled"]
    assert (
        (parsed.tls_cert is not None)
        == (parsed.tls_key is not None)
        == (tls["enabled"] and tls["clientAuth"])
    )
    for path in filter(None, (parsed.tls_ca, parsed.tls_cert, parsed.tls_key)):
        source = mounted_source(pod_spec, container, path)
        assert source["volume"]["secret"]["secretName"] == tls["secretName"]
    assert parsed.log_format == values["logFormat"]
    _check_numba_cache(pod_spec, container)


def _check_numba_cache(pod_spec: dict[str, Any], container: dict[str, Any]) -> None:
    """NUMBA_CACHE_DIR points at a writable emptyDir (the root filesystem is read-only)."""
    cache_dir = env_of(container)["NUMBA_CACHE_DIR"]["value"]
    source = mounted_source(pod_spec, container, cache_dir)
    assert "emptyDir" in source["volume"] and not source["mount"].get("readOnly")


@pytest.mark.parametrize("component", ["training", "serving"])
def test_services_expose_the_ports_the_servers_listen_on(
    rendering: Rendering, component: str
) -> None:
    statefulset = rendering.one("StatefulSet", component)
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    parsed = parse(container["args"])
    service = next(
        s
        for s in rendering.of_kind("Service")
        if s["metadata"]["name"] == statefulset["spec"]["serviceName"]
    )
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert by_name["grpc"]["targetPort"] == "grpc" and by_name["grpc"]["port"] == parsed.port
    assert by_name["metrics"]["targetPort"] == "metrics"
    annotations = statefulset["spec"]["template"]["metadata"]["annotations"]
    if rendering.values["metrics"]["podAnnotations"]:
        assert annotations["prometheus.io/port"] == str(parsed.metrics_port)


def test_reshard_job_reads_every_old_shard_and_writes_where_the_new_shards_restore(
    rendering: Rendering,
) -> None:
    jobs = [
        j
        for j in rendering.of_kind("Job")
        if j["metadata"]["annotations"]["helm.sh/hook"] != "test"
    ]
    if not rendering.values["reshard"]["enabled"]:
        assert jobs == []
        return
    (job,) = jobs
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-upgrade"
    pod_spec = job["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    parsed = parse(container["args"])
    assert (parsed.command, parsed.snapshot_command) == ("snapshot", "reshard")
    old = rendering.values["reshard"]["fromShards"]
    training = rendering.one("StatefulSet", "training")
    (server,) = training["spec"]["template"]["spec"]["containers"]
    new = parse(server["args"])
    assert parsed.shards == new.num_shards == training["spec"]["replicas"] != old
    # The Job reads shard i of the old cluster where an old server wrote it, and writes
    # OUT/shard-<i>, where shard i of the new cluster restores from.
    assert parsed.sources == [
        new.snapshot_dir.replace(f"shards-{new.num_shards}", f"shards-{old}").format(shard=i)
        for i in range(old)
    ]
    for i in range(new.num_shards):
        assert f"{parsed.dest}/shard-{i}" == new.snapshot_dir.format(shard=i)
    source = mounted_source(pod_spec, container, parsed.dest)
    server_source = mounted_source(training["spec"]["template"]["spec"], server, new.snapshot_dir)
    assert source["volume"] == server_source["volume"]
    assert not source["mount"].get("readOnly")
    _check_numba_cache(pod_spec, container)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"reshard": {"enabled": True, "fromShards": 1}}, "needs training.persistence"),
        (
            {
                "training": {"shards": 2, "persistence": {"shared": {"enabled": True}}},
                "reshard": {"enabled": True, "fromShards": 2},
            },
            "nothing to reshard",
        ),
    ],
)
def test_reshard_job_refuses_values_it_cannot_serve(values: dict, message: str) -> None:
    with pytest.raises(Exception, match=message):
        render(values)
