"""A Kubernetes API emulator for discovery tests: kmock plus the pod-watch semantics we use.

kmock's ``KubernetesEmulator`` stores objects and serves list, watch, create, patch and
delete over HTTP. A real API server also filters by label selector, stamps every change
with a resourceVersion, resumes a watch from a resourceVersion without losing the changes
made since, ends a watch after ``timeoutSeconds``, and answers 410 Gone for a watch that
is too old. ``PodApiEmulator`` adds exactly those, so discovery is tested against the
behaviour it relies on.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import kmock
from kubernetes import client

NAMESPACE = "ml"

# make_pod(component, ordinal) -> a Pod object as the chart's StatefulSet creates it
PodFactory = Callable[[str, int], dict[str, Any]]

_EXPIRED_EVENT = {
    "type": "ERROR",
    "object": {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": 410,
        "reason": "Expired",
        "message": "too old resource version",
    },
}


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based label selector semantics (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class _VersionedBus(kmock.Bus):
    """The emulator's event bus, stamping each event with the next resourceVersion and
    keeping the history a watch resumes from."""

    def __init__(self, versions: itertools.count) -> None:
        super().__init__()
        self.versions = versions
        self.history: list[tuple[int, dict[str, Any]]] = []

    async def put(self, *items: Any) -> None:
        stamped = []
        for item in items:
            event = copy.deepcopy(item)
            version = next(self.versions)
            event["object"]["metadata"]["resourceVersion"] = str(version)
            self.history.append((version, event))
            stamped.append(event)
        await super().put(*stamped)


def _version(event: dict[str, Any]) -> int:
    return int(event["object"]["metadata"]["resourceVersion"])


class PodApiEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with selectors, resourceVersions, resumable watches,
    watch timeouts and on-demand 410 Gone (``expire_next_watches``)."""

    expire_next_watches = 0

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._versions = itertools.count(1)
        self._buses = collections.defaultdict(lambda: _VersionedBus(self._versions))
        # A real API server serves pods before any exists.
        self.resources["v1/pods"] = kmock.ResourceInfo(
            kind="Pod",
            namespaced=True,
            verbs={"get", "list", "watch", "create", "patch", "delete"},
            subresources={"status"},
        )

    def _current_version(self) -> int:
        histories = [bus.history for bus in self._buses.values() if bus.history]
        return max((h[-1][0] for h in histories), default=0)

    def _selected(self, request: kmock.Request, obj: dict[str, Any]) -> bool:
        metadata = obj.get("metadata") or {}
        if request.namespace is not None and metadata.get("namespace") != request.namespace:
            return False
        return selector_matches(
            request.params.get("labelSelector", ""), metadata.get("labels") or {}
        )

    async def _serve_list(self, request: kmock.Request) -> Any:
        listing = await super()._serve_list(request)
        # No await between the snapshot above and reading the version: they agree.
        listing["metadata"]["resourceVersion"] = str(self._current_version())
        listing["items"] = [i for i in listing["items"] if self._selected(request, i)]
        return listing

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        yield b""  # send the headers now, as the API server does
        if self.expire_next_watches > 0:
            self.expire_next_watches -= 1
            yield _EXPIRED_EVENT
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(request.params.get("timeoutSeconds", "1800"))
        bus = self._buses[request.resource]
        marker = await bus.mark()  # before reading history: no change falls in between
        try:
            since = request.params.get("resourceVersion", "")
            if since.isdigit() and int(since) > 0:
                backlog = [event for version, event in bus.history if version > int(since)]
                last = _version(backlog[-1]) if backlog else int(since)
            else:  # no resourceVersion: the current objects, as synthetic ADDED events
                async with self._lock:
                    backlog = [
                        {"type": "ADDED", "object": copy.deepcopy(obj.raw)}
                        for (resource, _, _), obj in self.objects.items()
                        if resource == request.resource and not obj.deleted
                    ]
                    last = self._current_version()
            for event in backlog:
                if self._selected(request, event["object"]):
                    yield event
            events = bus.stream(since=marker)
            while (remaining := deadline - loop.time()) > 0:
                try:
                    async with asyncio.timeout(remaining):
                        event = await anext(events)
                except TimeoutError:
                    return  # timeoutSeconds reached: the server ends the stream
                if _version(event) > last and self._selected(request, event["object"]):
                    yield event
        finally:
            await bus.unmark(marker)

    def count(self, action: kmock.action, selector: str) -> int:
        """Requests of ``action`` on pods with this label selector so far."""
        return sum(
            1
            for request in list(self)
            if request.action == action
            and request.resource is not None
            and request.resource.plural == "pods"
            and request.params.get("labelSelector") == selector
        )


def api_client_for(url: Any) -> client.ApiClient:
    """A client of the emulator at ``url``."""
    configuration = client.Configuration()
    configuration.host = str(url).rstrip("/")
    return client.ApiClient(configuration)
