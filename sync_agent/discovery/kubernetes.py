"""Discovery from the Kubernetes API: watch the pods of each role, keep the ready ones.

Each role has one background thread running the usual list-then-watch loop: list the
pods matching the role's label selector, then watch from the list's resourceVersion
until the server ends the stream (``timeoutSeconds``), the watch expires (410 Gone) or
the connection fails; then list again. Lists happen only at those points, never on a
timer, so the API server sees one long watch per role.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch.watch import iter_resp_lines

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

    A pod serves when it is Running, it is not being deleted, it has an IP, and one of its
    containers declares the port ``grpc_port_name``; a training pod must also be Ready. A
    serving pod becomes Ready only once it holds rows from every training shard, which
    the agent gives it, so the agent takes serving pods before they are Ready and asks
    each whether it accepts deltas (its startup health).
    """
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if metadata.get("deletionTimestamp") or status.get("phase") != "Running":
        return None
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    if role is Role.TRAINING and not ready:
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


def _interrupt(response: urllib3.BaseHTTPResponse) -> None:
    """Unblock a thread reading ``response``: shut its socket down (closing alone would not)."""
    connection = getattr(response, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


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
        self._responses: dict[Role, urllib3.BaseHTTPResponse] = {}
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
            responses = list(self._responses.values())
        for response in responses:
            _interrupt(response)
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

    def _pods_response(self, role: Role, **params: Any) -> urllib3.BaseHTTPResponse:
        """The role's pods as the API server's raw response (``_preload_content=False``),
        read as JSON here, not through the client's models."""
        response = self._api.list_namespaced_pod(
            self._namespace,
            label_selector=self._selectors[role],
            _preload_content=False,
            **params,
        )
        # the client annotates the parsed V1PodList, which it returns only when it preloads
        return response  # type: ignore[return-value]

    def _list(self, role: Role) -> str:
        """Replace the role's pods with a fresh list; returns the list's resourceVersion."""
        response = self._pods_response(role, _request_timeout=self._request_timeout)
        try:
            pod_list = json.loads(response.data)
        finally:
            response.release_conn()
        snapshot = {
            pod["metadata"]["name"]: (
                pod["metadata"].get("uid", ""),
                pod_endpoint(pod, role, self._grpc_port_name),
            )
            for pod in pod_list.get("items") or []
        }
        with self._lock:
            self._pods[role] = snapshot
        self._synced[role].set()
        _LOGGER.debug("%s pods listed: %d", role.value, len(snapshot))
        return (pod_list.get("metadata") or {}).get("resourceVersion", "")

    def _watch(self, role: Role, resource_version: str) -> None:
        """Apply watch events from ``resource_version`` until the server ends the stream."""
        response = self._pods_response(
            role,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout,
            watch=True,
            _request_timeout=(self._request_timeout, self._watch_timeout + self._request_timeout),
        )
        with self._lock:  # close() either sees this response or we see the stop flag
            self._responses[role] = response
            stopped = self._stop.is_set()
        try:
            if stopped:
                raise _ClosedError
            for line in iter_resp_lines(response):
                if not line.strip():
                    continue
                event = json.loads(line)
                if event["type"] == "ERROR":
                    status = event.get("object") or {}
                    raise ApiException(status=status.get("code"), reason=status.get("message"))
                self._apply(role, event["type"], event["object"])
        except Exception:
            if self._stop.is_set():
                raise _ClosedError from None
            raise
        finally:
            with self._lock:
                self._responses.pop(role, None)
            response.release_conn()
        if self._stop.is_set():
            raise _ClosedError

    def _apply(self, role: Role, event_type: str, pod: Mapping[str, Any]) -> None:
        if event_type not in ("ADDED", "MODIFIED", "DELETED"):
            return  # BOOKMARK: nothing changed (a re-list follows the stream's end anyway)
        name = pod["metadata"]["name"]
        uid = pod["metadata"].get("uid", "")
        with self._lock:
            pods = self._pods[role]
            if event_type == "DELETED":
                if name in pods and pods[name][0] == uid:
                    del pods[name]
            else:
                pods[name] = (uid, pod_endpoint(pod, role, self._grpc_port_name))
