"""Shared fixtures: seeded data, a fresh metrics registry, and PS servers on loopback.

``server_factory`` starts in-process servers (module-scoped: one set per test module);
``process_factory`` starts ``mps server`` subprocesses and waits for gRPC health SERVING.
Both bind 127.0.0.1 port 0 and stop everything they started. ``local_cluster`` builds a
whole local cluster in a fresh directory; ``metric_value`` reads one metric off a live
process's /metrics page.
"""

from __future__ import annotations

import copy
import json
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from monolith_ps import kernel_cache
from monolith_ps.local import LocalCluster
from monolith_ps.processes import ManagedProcess

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO_ROOT / ".numba_cache"))
kernel_cache.refresh()  # a kernel edited since the cache was built is compiled afresh

# A small cluster config for service tests: one table per behaviour worth testing.
SERVICE_CONFIG: dict[str, Any] = {
    "tables": [
        {"name": "user_id", "dim": 8, "optimizer": "adagrad", "optimizer_args": {"lr": 0.05},
         "initializer": "normal", "serving_dtype": "float16"},
        {"name": "item_id", "dim": 4, "optimizer": "sgd", "optimizer_args": {"lr": 0.1},
         "initializer": "uniform"},
        {"name": "gated", "dim": 4, "optimizer": "sgd", "admit_after": 2},
    ],
    "dense": [{"name": "mlp", "size": 16, "optimizer": "sgd", "optimizer_args": {"lr": 0.1}}],
    "server": {"expiry_sweep_interval": "1s"},
}  # fmt: skip


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator: every test draws the same data on every run."""
    return np.random.default_rng(20240611)


@pytest.fixture
def service_config() -> dict[str, Any]:
    """A fresh copy of ``SERVICE_CONFIG`` to change in a test."""
    return copy.deepcopy(SERVICE_CONFIG)


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh Prometheus registry (never the global one)."""
    return CollectorRegistry()


def write_config(path: Path, config: dict[str, Any] | None = None) -> Path:
    """Write a cluster config (default ``SERVICE_CONFIG``) as JSON and return its path."""
    path.write_text(json.dumps(SERVICE_CONFIG if config is None else config))
    return path


@pytest.fixture(scope="module")
def local_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., LocalCluster]:
    """Build (not start) local clusters, each in a fresh directory named after the module.

    ``local_cluster(config, *shape, snapshots=False, **options)`` writes ``config`` there
    as ``tables.json`` and returns ``LocalCluster(that file, *shape, log_dir=<dir>/logs,
    **options)``; ``shape`` is training shards, serving shards and serving replicas;
    ``snapshots`` gives the training shards ``<dir>/snapshots``.
    """

    def build(
        config: dict[str, Any], *shape: int, snapshots: bool = False, **options: Any
    ) -> LocalCluster:
        workdir = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
        if snapshots:
            options["snapshot_dir"] = workdir / "snapshots"
        config_path = write_config(workdir / "tables.json", config)
        return LocalCluster(config_path, *shape, log_dir=workdir / "logs", **options)

    return build


def read_metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` on the /metrics page at ``url`` whose labels
    include ``labels``; 0 when there are none."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


@pytest.fixture(scope="session")
def metric_value() -> Callable[..., float]:
    """``metric_value(url, name, **labels)``: see :func:`read_metric`."""
    return read_metric


def wait_for_serving(address: str, timeout: float = 120.0, service: str = "") -> None:
    """Block until the gRPC health service at ``address`` answers SERVING for ``service``
    ("": ready; ``STARTUP_SERVICE``: restored, a serving server then waits for sync)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{address} did not become SERVING within {timeout}s")
            try:
                reply = stub.Check(
                    health_pb2.HealthCheckRequest(service=service),
                    timeout=min(2.0, remaining),
                    wait_for_ready=True,
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)


@pytest.fixture(scope="module")
def server_factory() -> Iterator[Callable[..., Any]]:
    """Start in-process PS servers on 127.0.0.1:0; all are stopped when the module ends.

    ``server_factory(role="training", shard_index=0, num_shards=1, config=None,
    registry=None, start=True, **settings)`` returns a started ``PSServer``. Serving
    servers are ready at once (``await_first_sync=False``) unless a test asks otherwise:
    most tests feed them by hand.
    """
    from monolith_ps.config import parse_config
    from ps_server.server import create_server
    from ps_server.settings import ServerSettings

    made = []

    def start_server(
        role: str = "training",
        shard_index: int = 0,
        num_shards: int = 1,
        config: dict[str, Any] | None = None,
        registry: CollectorRegistry | None = None,
        start: bool = True,
        snapshotter_factory: Any = None,
        **settings: Any,
    ) -> Any:
        if role == "serving":
            settings.setdefault("await_first_sync", False)
        settings = ServerSettings(
            role=role,
            shard_index=shard_index,
            num_shards=num_shards,
            config=parse_config(SERVICE_CONFIG if config is None else config),
            host="127.0.0.1",
            port=0,
            metrics_port=0,
            **{"authorization": False, **settings},
        )
        server, _ = create_server(
            settings,
            registry=registry if registry is not None else CollectorRegistry(),
            snapshotter_factory=snapshotter_factory,
        )
        made.append(server)
        if start:
            server.start()
        return server

    yield start_server
    for server in made:
        server.stop(grace=0, final_snapshot=False)


class ServerProcess(ManagedProcess):
    """An ``mps server`` subprocess on loopback; ``port`` is learned from its start-up log."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        wait_service: str = "",
    ) -> None:
        super().__init__(
            "server",
            ["server", *args, "--log-format", "json"],
            log_path,
            env=env,
            follow_launcher=False,  # tests restart servers from helper threads
        )
        self.wait_service = wait_service
        self.port: int | None = None  # type: ignore[assignment]
        self.metrics_port: int | None = None  # type: ignore[assignment]

    @property
    def events(self) -> list[str]:
        return [line.get("event", "") for line in self.lines]

    def start(self, port: int | None = None, wait: bool = True, timeout: float = 120.0) -> None:  # type: ignore[override]
        """Start (on ``port``, or the last one, or a free one) and wait for SERVING of
        ``wait_service``."""
        port = port if port is not None else (self.port or 0)
        super().start(["--port", str(port)])
        started = self.wait_event("server_started", timeout)
        self.port = int(started["port"])
        self.metrics_port = int(started["metrics_port"])
        if wait:
            wait_for_serving(self.address, timeout, self.wait_service)

    def signal(self, signum: int) -> None:
        self.send(signum)

    def wait(self, timeout: float = 30.0) -> int:  # type: ignore[override]
        """Reap the process and read its log to the end."""
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return code


@pytest.fixture(scope="module")
def process_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    """Start ``mps server`` subprocesses; all are killed when the module ends.

    ``process_factory(role="training", shard_index=0, num_shards=1, config=None,
    extra_args=(), wait=True, env=None)`` returns a started ``ServerProcess``. A serving
    server is waited for until it has started (its startup health): without a sync agent
    it does not become ready.
    """
    from ps_server.server import STARTUP_SERVICE

    made: list[ServerProcess] = []
    workdir = tmp_path_factory.mktemp("servers")

    def start_process(
        role: str = "training",
        shard_index: int | str = 0,
        num_shards: int = 1,
        config: dict[str, Any] | None = None,
        extra_args: tuple[str, ...] = (),
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> ServerProcess:
        n = len(made)
        config_path = write_config(workdir / f"config-{n}.json", config)
        args = [
            "--role", role, "--shard-index", str(shard_index), "--num-shards", str(num_shards),
            "--config", str(config_path), "--host", "127.0.0.1", "--metrics-port", "0",
            "--grace-seconds", "2", *extra_args,
        ]  # fmt: skip
        if "--auth" not in extra_args:
            args += ["--auth", "off"]
        wait_service = STARTUP_SERVICE if role == "serving" else ""
        server = ServerProcess(args, workdir / f"server-{n}.log", env, wait_service)
        made.append(server)
        server.start(wait=wait)
        return server

    yield start_process
    for server in made:
        server.kill()
