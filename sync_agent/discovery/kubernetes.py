"""Discovery from the Kubernetes API: watch the pods of each role, keep the ready ones.

Each role has one background thread running the usual list-then-watch loop: list the
pods matching the role's label selector, then watch from the list's resourceVersion
until the server ends the stream (``timeoutSeconds``), the watch expires (410 Gone) or
the connection fails; then list again. Lists happen only at those points, never on a
timer, so the API server sees one long watch per role.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from sync_agent.discovery.base import Endpoint, Role

_LOGGER = logging.getLogger(__name__)

_HTTP_GONE = 410
_MAX_BACKOFF_SECONDS = 30.0


def load_kube_client() -> client.ApiClient:
    """An API client for the pod's service account, or for the kubeconfig outside a pod.

    Outside a pod, ``$KUBECONFIG`` (read now, not at import) or ``~/.kube/config`` is used.
    """
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except ConfigException:
        config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
        )
    return client.ApiClient(configuration)


def pod_endpoint(pod: Mapping[str, Any], role: Role, grpc_port_name: str) -> Endpoint | None:
    """The endpoint of a pod (a watch event's raw object), or None unless it can serve now.

    A pod serves when it is Running, its Ready condition is True, it is not being deleted,
    it has an IP, and one of its containers declares the port ``grpc_port_name``.
    """
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if metadata.get("deletionTimestamp") or status.get("phase") != "Running":
        return None
    conditions = status.get("conditions") or []
    if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
        return None
    pod_ip = status.get("podIP")
    port = _container_port(pod, grpc_port_name)
    if not pod_ip or port is None:
        return None
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    return Endpoint(role, f"{host}:{port}", name=metadata["name"], instance=metadata.get("uid", ""))


def _container_port(pod: Mapping[str, Any], port_name: str) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == port_name:
                return int(port["containerPort"])
    return None


class _ClosedError(Exception):
    """The discovery was closed while a role's loop was working."""


class KubernetesDiscovery:
    """Ready training and serving pods of one release, kept current by a watch per role.

    >>> release = "app.kubernetes.io/instance=demo"
    >>> discovery = KubernetesDiscovery(
    ...     "ml",
    ...     training_selector=f"{release},app.kubernetes.io/component=training",
    ...     serving_selector=f"{release},app.kubernetes.io/component=serving",
    ... )  # doctest: +SKIP
    >>> discovery.wait_synced(timeout=30)  # doctest: +SKIP
    >>> [e.address for e in discovery.endpoints(Role.TRAINING)]  # doctest: +SKIP
    ['10.1.0.7:50051', '10.1.3.2:50051']
    """

    def __init__(
        self,
        namespace: str,
        training_selector: str,
        serving_selector: str,
        grpc_port_name: str = "grpc",
        api_client: client.ApiClient | None = None,
        *,
        watch_timeout_seconds: int = 300,
        request_timeout_seconds: float = 15.0,
    ) -> None:
        if watch_timeout_seconds < 1:
            raise ValueError(f"watch_timeout_seconds must be >= 1, got {watch_timeout_seconds}")
        self._namespace = namespace
        self._selectors = {Role.TRAINING: training_selector, Role.SERVING: serving_selector}
        self._grpc_port_name = grpc_port_name
        self._api = client.CoreV1Api(api_client if api_client is not None else load_kube_client())
        self._watch_timeout = watch_timeout_seconds
        self._request_timeout = request_timeout_seconds
        self._lock = threading.Lock()
        # role -> pod name -> (pod uid, endpoint when the pod serves, else None)
        self._pods: dict[Role, dict[str, tuple[str, Endpoint | None]]] = {r: {} for r in Role}
        self._synced = {role: threading.Event() for role in Role}
        self._watches: dict[Role, watch.Watch] = {}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._run, args=(role,), name=f"k8s-discovery-{role.value}", daemon=True
            )
            for role in Role
        ]
        for thread in self._threads:
            thread.start()

    def endpoints(self, role: Role) -> list[Endpoint]:
        """The ready endpoints of ``role`` now, sorted by pod name."""
        with self._lock:
            pods = list(self._pods[role].items())
        return [endpoint for _, (_, endpoint) in sorted(pods) if endpoint is not None]

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Block until both roles have been listed once; False if ``timeout`` ran out first."""
        return all(self._synced[role].wait(timeout) for role in Role)

    def close(self) -> None:
        """Stop both watches and their threads; idempotent."""
        self._stop.set()
        with self._lock:
            watches = list(self._watches.values())
        for active in watches:
            active.stop()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=self._request_timeout + 5)

    def __enter__(self) -> KubernetesDiscovery:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, role: Role) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                resource_version = self._list(role)
                failures = 0
                self._watch(role, resource_version)
            except _ClosedError:
                return
            except ApiException as exc:
                if exc.status == _HTTP_GONE:
                    _LOGGER.info("%s pod watch expired; listing again", role.value)
                    continue
                failures += 1
                _LOGGER.warning(
                    "%s pod discovery: API error %s %s", role.value, exc.status, exc.reason
                )
            except Exception as exc:  # keep discovering through network faults
                failures += 1
                _LOGGER.warning("%s pod discovery failed: %r", role.value, exc)
            if failures:
                self._stop.wait(min(_MAX_BACKOFF_SECONDS, 0.5 * 2 ** (failures - 1)))

    def _list(self, role: Role) -> str:
        """Replace the role's pods with a fresh list; returns the list's resourceVersion."""
        pod_list = self._api.list_namespaced_pod(
            self._namespace,
            label_selector=self._selectors[role],
            _request_timeout=self._request_timeout,
        )
        pods = self._api.api_client.sanitize_for_serialization(pod_list.items)
        snapshot = {
            pod["metadata"]["name"]: (
                pod["metadata"].get("uid", ""),
                pod_endpoint(pod, role, self._grpc_port_name),
            )
            for pod in pods
        }
        with self._lock:
            self._pods[role] = snapshot
        self._synced[role].set()
        _LOGGER.debug("%s pods listed: %d", role.value, len(snapshot))
        return pod_list.metadata.resource_version or ""

    def _watch(self, role: Role, resource_version: str) -> None:
        """Apply watch events from ``resource_version`` until the stream ends."""
        stream = watch.Watch()
        with self._lock:
            if self._stop.is_set():
                raise _ClosedError
            self._watches[role] = stream
        try:
            for event in stream.stream(
                self._api.list_namespaced_pod,
                self._namespace,
                label_selector=self._selectors[role],
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=self._watch_timeout,
                _request_timeout=(
                    self._request_timeout,
                    self._watch_timeout + self._request_timeout,
                ),
            ):
                if self._stop.is_set():
                    raise _ClosedError
                self._apply(role, event["type"], event["raw_object"])
        finally:
            with self._lock:
                self._watches.pop(role, None)
        if self._stop.is_set():
            raise _ClosedError

    def _apply(self, role: Role, event_type: str, pod: Mapping[str, Any]) -> None:
        if event_type not in ("ADDED", "MODIFIED", "DELETED"):
            return  # BOOKMARK: only moves the stream's resourceVersion
        name = pod["metadata"]["name"]
        uid = pod["metadata"].get("uid", "")
        with self._lock:
            pods = self._pods[role]
            if event_type == "DELETED":
                if name in pods and pods[name][0] == uid:
                    del pods[name]
            else:
                pods[name] = (uid, pod_endpoint(pod, role, self._grpc_port_name))
