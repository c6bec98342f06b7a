"""Pod discovery against a Kubernetes API emulator serving list and watch over HTTP on loopback.

The pods are built from the Helm chart's rendered StatefulSets and the selectors are the
ones the chart passes to the agent, so chart and discovery cannot drift apart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from k8s_emulator import NAMESPACE, PodApiEmulator, PodFactory, api_client_for
from kmock import action
from kubernetes import client

from sync_agent.discovery import Endpoint, Role
from sync_agent.discovery.kubernetes import KubernetesDiscovery, load_kube_client, pod_endpoint

pytestmark = pytest.mark.kmock(cls=PodApiEmulator)

_WAIT_SECONDS = 10.0


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    deadline = time.monotonic() + _WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {_WAIT_SECONDS}s waiting for {what}")
        await asyncio.sleep(0.02)


def ready_status(ip: str) -> dict[str, Any]:
    return {
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
                {"type": "Ready", "status": "True"},
            ],
        }
    }


def not_ready_status(ip: str) -> dict[str, Any]:
    status = ready_status(ip)
    status["status"]["conditions"][1:] = [
        {"type": "ContainersReady", "status": "False"},
        {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
    ]
    return status


class Cluster:
    """Pod operations through the real client, run off the event loop that serves the API."""

    def __init__(self, url: Any, make_pod: PodFactory) -> None:
        self.api = api_client_for(url)
        self.core = client.CoreV1Api(self.api)
        self.make_pod = make_pod

    async def create(self, component: str, ordinal: int) -> dict[str, Any]:
        pod = self.make_pod(component, ordinal)
        await asyncio.to_thread(self.core.create_namespaced_pod, NAMESPACE, pod)
        return pod

    async def set_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        await asyncio.to_thread(self.core.patch_namespaced_pod_status, name, NAMESPACE, status)

    async def delete(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        await asyncio.to_thread(self.core.delete_namespaced_pod, name, NAMESPACE)


def addresses(discovery: KubernetesDiscovery, role: Role) -> list[str]:
    return [e.address for e in discovery.endpoints(role)]


@pytest.fixture
def cluster(kmock: PodApiEmulator, make_pod: PodFactory) -> Cluster:
    return Cluster(kmock.url, make_pod)


@pytest.fixture
def grpc_port(chart_workloads: dict[str, dict[str, Any]]) -> int:
    ports = chart_workloads["training"]["spec"]["template"]["spec"]["containers"][0]["ports"]
    return next(p["containerPort"] for p in ports if p["name"] == "grpc")


def start_discovery(url: Any, agent_flags: dict[str, str], **kwargs: Any) -> KubernetesDiscovery:
    return KubernetesDiscovery(
        agent_flags["namespace"],
        training_selector=agent_flags["training-selector"],
        serving_selector=agent_flags["serving-selector"],
        grpc_port_name=agent_flags["grpc-port-name"],
        api_client=api_client_for(url),
        **kwargs,
    )


@pytest.mark.asyncio
async def test_follows_pods_as_they_start_fail_and_are_replaced(
    kmock: PodApiEmulator, cluster: Cluster, agent_flags: dict[str, str], grpc_port: int
) -> None:
    training = [await cluster.create("training", i) for i in range(2)]
    serving = [await cluster.create("serving", i) for i in range(4)]
    # Another release's pod in the same namespace: its labels differ only in the instance.
    stranger = cluster.make_pod("training", 0)
    stranger["metadata"]["name"] = "other-monolith-ps-training-0"
    stranger["metadata"]["labels"]["app.kubernetes.io/instance"] = "other"
    await asyncio.to_thread(cluster.core.create_namespaced_pod, NAMESPACE, stranger)
    await cluster.set_status(stranger, ready_status("10.9.9.9"))

    discovery = start_discovery(kmock.url, agent_flags)
    try:
        await until(lambda: discovery.wait_synced(timeout=0), "the first list")
        assert discovery.endpoints(Role.TRAINING) == []  # Pending pods do not serve
        assert discovery.endpoints(Role.SERVING) == []

        for i, pod in enumerate(training):
            await cluster.set_status(pod, ready_status(f"10.0.0.{i + 1}"))
        for i, pod in enumerate(serving):
            await cluster.set_status(pod, ready_status(f"10.0.1.{i + 1}"))
        await until(lambda: len(discovery.endpoints(Role.SERVING)) == 4, "4 serving endpoints")
        await until(lambda: len(discovery.endpoints(Role.TRAINING)) == 2, "2 training endpoints")
        assert discovery.endpoints(Role.TRAINING) == [
            Endpoint(
                Role.TRAINING,
                f"10.0.0.{i + 1}:{grpc_port}",
                name=pod["metadata"]["name"],
                instance=pod["metadata"]["uid"],
            )
            for i, pod in enumerate(training)
        ]
        assert addresses(discovery, Role.SERVING) == [
            f"10.0.1.{i}:{grpc_port}" for i in (1, 2, 3, 4)
        ]

        # Shard 1 fails its readiness probe: it leaves, the others stay.
        await cluster.set_status(training[1], not_ready_status("10.0.0.2"))
        await until(
            lambda: addresses(discovery, Role.TRAINING) == [f"10.0.0.1:{grpc_port}"],
            "training-1 to leave",
        )

        # The StatefulSet replaces it: same name, new UID, new IP, Pending first.
        await cluster.delete(training[1])
        replacement = await cluster.create("training", 1)
        # A pod made ready after it comes later through the same watch: once discovery
        # lists that one, it has seen the Pending replacement too.
        marker = await cluster.create("training", 2)
        await cluster.set_status(marker, ready_status("10.0.0.3"))
        await until(lambda: len(discovery.endpoints(Role.TRAINING)) > 1, "training-2")
        assert addresses(discovery, Role.TRAINING) == [
            f"10.0.0.1:{grpc_port}",
            f"10.0.0.3:{grpc_port}",
        ]
        await cluster.delete(marker)
        await until(lambda: len(discovery.endpoints(Role.TRAINING)) == 1, "training-2 to leave")
        await cluster.set_status(replacement, ready_status("10.0.0.42"))
        await until(
            lambda: (
                addresses(discovery, Role.TRAINING)
                == [f"10.0.0.1:{grpc_port}", f"10.0.0.42:{grpc_port}"]
            ),
            "the replacement pod",
        )
        new = discovery.endpoints(Role.TRAINING)[1]
        assert new.instance == replacement["metadata"]["uid"] != training[1]["metadata"]["uid"]

        # A serving replica is deleted: it leaves while terminating.
        await cluster.delete(serving[3])
        await until(lambda: len(discovery.endpoints(Role.SERVING)) == 3, "serving-3 to leave")

        # All of it came through one list and one watch per role: no polling.
        for role in ("training", "serving"):
            selector = agent_flags[f"{role}-selector"]
            assert kmock.count(action.LIST, selector) == 1
            assert kmock.count(action.WATCH, selector) == 1
    finally:
        await asyncio.to_thread(discovery.close)


async def _relists_then_follows(
    kmock: PodApiEmulator,
    cluster: Cluster,
    discovery: KubernetesDiscovery,
    agent_flags: dict[str, str],
    role: Role,
    ordinal: int,
    ip: str,
    want: list[str],
) -> None:
    """The watch of ``role`` ends and is started again after a fresh list; a pod made
    ready after that is followed: discovery then lists ``want``."""
    selector = agent_flags[f"{role.value}-selector"]
    await until(lambda: kmock.count(action.WATCH, selector) >= 2, "a second watch")
    assert kmock.count(action.LIST, selector) >= 2
    pod = await cluster.create(role.value, ordinal)
    await cluster.set_status(pod, ready_status(ip))
    await until(lambda: addresses(discovery, role) == want, f"{want} after the re-list")


@pytest.mark.asyncio
async def test_expired_watch_relists_and_keeps_following(
    kmock: PodApiEmulator, cluster: Cluster, agent_flags: dict[str, str], grpc_port: int
) -> None:
    first = await cluster.create("serving", 0)
    await cluster.set_status(first, ready_status("10.0.1.1"))
    kmock.expire_next_watches = 2  # the first watch of each role answers 410 Gone
    discovery = start_discovery(kmock.url, agent_flags)
    try:
        await _relists_then_follows(
            kmock, cluster, discovery, agent_flags, Role.SERVING, 1, "10.0.1.2",
            [f"10.0.1.1:{grpc_port}", f"10.0.1.2:{grpc_port}"],
        )  # fmt: skip
    finally:
        await asyncio.to_thread(discovery.close)


@pytest.mark.asyncio
async def test_watch_ended_by_the_server_is_resumed_with_a_fresh_list(
    kmock: PodApiEmulator, cluster: Cluster, agent_flags: dict[str, str], grpc_port: int
) -> None:
    discovery = start_discovery(kmock.url, agent_flags, watch_timeout_seconds=1)
    try:
        await _relists_then_follows(
            kmock, cluster, discovery, agent_flags, Role.TRAINING, 0, "10.0.0.7",
            [f"10.0.0.7:{grpc_port}"],
        )  # fmt: skip
    finally:
        await asyncio.to_thread(discovery.close)


@pytest.mark.asyncio
async def test_close_stops_both_watch_threads_promptly(
    kmock: PodApiEmulator, agent_flags: dict[str, str]
) -> None:
    discovery = start_discovery(kmock.url, agent_flags)
    await until(lambda: discovery.wait_synced(timeout=0), "the first list")
    await until(lambda: len(discovery._responses) == 2, "both watches to open")
    started = time.monotonic()
    await asyncio.to_thread(discovery.close)
    assert time.monotonic() - started < 5
    assert not any(thread.is_alive() for thread in discovery._threads)
    await asyncio.to_thread(discovery.close)  # idempotent


@pytest.mark.asyncio
async def test_close_right_after_start_does_not_wait_for_the_watch(
    kmock: PodApiEmulator, agent_flags: dict[str, str]
) -> None:
    for _ in range(5):  # close lands at different points of list-then-watch
        discovery = start_discovery(kmock.url, agent_flags)
        started = time.monotonic()
        await asyncio.to_thread(discovery.close)
        assert time.monotonic() - started < 5
        assert not any(thread.is_alive() for thread in discovery._threads)


@pytest.mark.asyncio
async def test_load_kube_client_reads_kubeconfig_outside_a_pod(
    kmock: PodApiEmulator,
    cluster: Cluster,
    agent_flags: dict[str, str],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "tester", "user": {"token": "not-checked"}}],
        "contexts": [{"name": "emu", "context": {"cluster": "emulator", "user": "tester"}}],
        "current-context": "emu",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(path))
    pod = await cluster.create("training", 0)
    await cluster.set_status(pod, ready_status("10.0.0.3"))

    api = await asyncio.to_thread(load_kube_client)
    assert api.configuration.host == str(kmock.url).rstrip("/")
    discovery = KubernetesDiscovery(
        NAMESPACE,
        training_selector=agent_flags["training-selector"],
        serving_selector=agent_flags["serving-selector"],
        api_client=api,
    )
    try:
        await until(lambda: len(discovery.endpoints(Role.TRAINING)) == 1, "the training pod")
        requests = [r for r in list(kmock) if r.action == action.LIST]
        assert requests[0].headers.get("Authorization") == "Bearer not-checked"
    finally:
        await asyncio.to_thread(discovery.close)


@pytest.mark.parametrize(
    ("change", "serves"),
    [
        (lambda pod: None, True),
        (lambda pod: pod["metadata"].update(deletionTimestamp="2030-01-01T00:00:00Z"), False),
        (lambda pod: pod["status"].update(phase="Succeeded"), False),
        (lambda pod: pod["status"].pop("podIP"), False),
        (lambda pod: pod["status"]["conditions"].pop(), False),
        (lambda pod: pod["spec"]["containers"][0]["ports"].pop(0), False),
    ],
    ids=["ready", "terminating", "not-running", "no-ip", "no-ready-condition", "no-grpc-port"],
)
def test_a_training_pod_endpoint_needs_a_running_ready_pod_with_ip_and_port(
    make_pod: PodFactory, change: Callable[[dict[str, Any]], None], serves: bool
) -> None:
    pod = make_pod("training", 3)
    pod.update(ready_status("10.0.1.4"))
    change(pod)
    endpoint = pod_endpoint(pod, Role.TRAINING, "grpc")
    assert (endpoint is not None) is serves


def test_a_serving_pod_is_found_before_it_is_ready(make_pod: PodFactory) -> None:
    """It becomes Ready only after the agent synced it, so the agent must see it first."""
    pod = make_pod("serving", 3)
    pod.update(not_ready_status("10.0.1.4"))
    endpoint = pod_endpoint(pod, Role.SERVING, "grpc")
    assert endpoint is not None and endpoint.address.startswith("10.0.1.4:")


def test_pod_endpoint_brackets_ipv6_addresses(make_pod: PodFactory) -> None:
    pod = make_pod("training", 0)
    pod.update(ready_status("fd00::17"))
    endpoint = pod_endpoint(pod, Role.TRAINING, "grpc")
    assert endpoint is not None and endpoint.address.startswith("[fd00::17]:")


def test_rejects_a_watch_timeout_below_one_second() -> None:
    with pytest.raises(ValueError, match="watch_timeout_seconds"):
        KubernetesDiscovery(
            "ns", "a=b", "a=c", api_client=client.ApiClient(), watch_timeout_seconds=0
        )
