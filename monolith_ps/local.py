"""A whole cluster on this machine: training and serving servers and the sync agent as
subprocesses on 127.0.0.1, from the same tables config file as a Kubernetes install.

>>> from monolith_ps.local import LocalCluster
>>> with LocalCluster("tables.yaml", training_shards=2, serving_shards=2,
...                   serving_replicas=2, sparse_interval="2s") as cluster:
...     cluster.training_addresses       # ["127.0.0.1:41233", "127.0.0.1:41235"]
...     cluster.serving_addresses        # [["127.0.0.1:4..", "127.0.0.1:4.."], [...]]: per shard
...     cluster.metrics_urls             # {"training-0": "http://127.0.0.1:4../metrics", ...}
...     cluster.agent_metrics_url        # "http://127.0.0.1:4../metrics"
...     cluster.kill("serving", 1, replica=0)      # SIGKILL one replica
...     cluster.restart("serving", 1, replica=0)   # same port, empty tables; waits for health
...     cluster.kill("agent"); cluster.restart("agent")

Process names are ``training-<i>``, ``serving-<shard>-<replica>`` and ``agent``; each
writes its JSON log lines to ``<log_dir>/<name>.log``. ``base_port=0`` lets every server
pick a free port (learned from its start-up log line and kept across restarts);
``base_port=P`` gives the gRPC ports ``P, P+1, ...`` (training shards, then serving
shard by shard, replicas together), the metrics ports right after them, and the agent's
metrics port last. Stopping sends SIGTERM to the agent, then the servers, waits
``stop_timeout`` seconds and SIGKILLs whatever is left, so no process outlives the
cluster; children also receive SIGTERM if the process that started them dies (Linux).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monolith_ps import kernel_cache
from monolith_ps.logs import configure_logging, fields
from monolith_ps.processes import LocalClusterError, ManagedProcess, wait_http

__all__ = ["LocalCluster", "LocalClusterError", "ManagedProcess", "run_until_signalled"]

_LOGGER = logging.getLogger(__name__)
_ROLES = ("training", "serving", "agent")


class LocalCluster:
    """N training shards, M serving shards of R replicas each, and one sync agent.

    Every argument maps to an ``mps local up`` flag (``sparse_interval=None`` or
    ``dense_interval=None``: the config's ``sync`` section); ``agent=False`` starts the servers only
    and ``agent_args`` adds ``mps sync-agent`` flags (e.g. ``["--stall-timeout", "2s"]``).
    ``start()`` (or entering the context) returns once every server is ready (serving
    servers: synced from every training shard by the agent) and the agent serves its
    metrics; ``stop()`` (or leaving it) ends them all. ``serve_before_sync`` (default: when
    there is no agent) makes serving servers ready before their first sync.
    """

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        training_shards: int = 2,
        serving_shards: int = 2,
        serving_replicas: int = 1,
        sparse_interval: str | float | None = "2s",
        dense_interval: str | float | None = "60s",
        base_port: int = 0,
        snapshot_dir: str | os.PathLike[str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        agent: bool = True,
        agent_args: Sequence[str] = (),
        serve_before_sync: bool | None = None,
        startup_timeout: float = 120.0,
        log_level: str = "info",
        stop_timeout: float = 15.0,
        python: str = sys.executable,
    ) -> None:
        for name, value in (
            ("training_shards", training_shards),
            ("serving_shards", serving_shards),
            ("serving_replicas", serving_replicas),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0 <= base_port < 65536:
            raise ValueError(f"base_port must be in 0..65535, got {base_port}")
        self.config_path = Path(config_path).resolve()
        if not self.config_path.is_file():
            raise FileNotFoundError(f"config file {self.config_path} does not exist")
        self.training_shards = training_shards
        self.serving_shards = serving_shards
        self.serving_replicas = serving_replicas
        self.sparse_interval = None if sparse_interval is None else str(sparse_interval)
        self.dense_interval = None if dense_interval is None else str(dense_interval)
        self.snapshot_dir = Path(snapshot_dir).resolve() if snapshot_dir else None
        # Without an agent nothing syncs serving; it then answers from what it holds.
        self.serve_before_sync = (not agent) if serve_before_sync is None else serve_before_sync
        self.startup_timeout = startup_timeout
        self.log_level = log_level
        self.stop_timeout = stop_timeout
        self._own_log_dir = log_dir is None
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="mps-local-")).resolve()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._training: list[ManagedProcess] = []
        self._serving: list[list[ManagedProcess]] = []
        num_servers = training_shards + serving_shards * serving_replicas

        def ports(k: int) -> tuple[int, int]:
            return (base_port + k, base_port + num_servers + k) if base_port else (0, 0)

        for i in range(training_shards):
            port, metrics_port = ports(i)
            self._training.append(
                self._server(
                    f"training-{i}", "training", i, training_shards, port, metrics_port, python
                )
            )
        for s in range(serving_shards):
            replicas = []
            for r in range(serving_replicas):
                port, metrics_port = ports(training_shards + s * serving_replicas + r)
                replicas.append(
                    self._server(
                        f"serving-{s}-{r}", "serving", s, serving_shards, port, metrics_port, python
                    )
                )
            self._serving.append(replicas)
        self._agent_args = list(agent_args)
        self._agent: ManagedProcess | None = None
        if agent:
            self._agent = ManagedProcess(
                "agent",
                [],
                self.log_dir / "agent.log",
                metrics_port=base_port + 2 * num_servers if base_port else 0,
                python=python,
            )
        self._started = False

    # ------------------------------------------------------------------ addresses

    @property
    def training_addresses(self) -> list[str]:
        """``host:port`` of each training shard, by shard index."""
        return [p.address for p in self._training]

    @property
    def serving_addresses(self) -> list[list[str]]:
        """``host:port`` of each serving replica, grouped by shard: ``[shard][replica]``."""
        return [[p.address for p in replicas] for replicas in self._serving]

    @property
    def metrics_urls(self) -> dict[str, str]:
        """``/metrics`` URL of every process by name (the agent's included)."""
        urls = {p.name: p.metrics_url for p in self._servers()}
        if self._agent is not None:
            urls[self._agent.name] = self._agent.metrics_url
        return urls

    @property
    def agent_metrics_url(self) -> str | None:
        return self._agent.metrics_url if self._agent is not None else None

    def processes(self) -> list[ManagedProcess]:
        """Every process: training shards, serving replicas, then the agent."""
        return [*self._servers(), *([self._agent] if self._agent is not None else [])]

    def process(self, role: str, index: int = 0, replica: int = 0) -> ManagedProcess:
        """The process of a training shard, a serving replica (shard ``index``) or the agent."""
        if role == "training":
            return self._training[index]
        if role == "serving":
            return self._serving[index][replica]
        if role == "agent":
            if self._agent is None:
                raise LocalClusterError("this cluster was started without an agent")
            return self._agent
        raise ValueError(f"role must be one of {', '.join(_ROLES)}, got {role!r}")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LocalCluster:
        """Start every server, wait for health SERVING, then the agent; returns self."""
        if self._started:
            return self
        self._started = True
        kernel_cache.refresh()  # before any of its processes loads a kernel
        try:
            for proc in self._servers():
                self._start_server(proc, wait=False)
            for proc in self._servers():
                self._wait_started(proc)
            if self._agent is not None:
                self._start_agent()
            for proc in self._serving_flat():
                self._wait_ready(proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM the agent, then every server; SIGKILL whatever has not exited in time."""
        groups = [[self._agent] if self._agent is not None else [], list(self._servers())]
        for group in groups:
            for proc in group:
                proc.send(signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            for proc in group:
                if proc.wait(max(0.0, deadline - time.monotonic())) is None:
                    _LOGGER.warning("local_process_killed", extra=fields(process=proc.name))
                proc.kill()
        self._started = False

    def kill(self, role: str, index: int = 0, replica: int = 0, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default SIGKILL) to one process; SIGKILL also reaps it."""
        proc = self.process(role, index, replica)
        if sig == signal.SIGKILL:
            proc.kill()
        else:
            proc.send(sig)

    def restart(self, role: str, index: int = 0, replica: int = 0, wait: bool = True) -> None:
        """Start a stopped process again on its old ports (kills it first if it still runs).

        A serving replica comes back empty and is rebuilt by the agent (``wait`` waits
        until it is ready: synced; while the agent is down, until it started); a training
        shard restores from ``snapshot_dir`` when one was given, with a new epoch either way.
        """
        proc = self.process(role, index, replica)
        proc.kill()
        if role == "agent":
            self._start_agent(wait=wait)
        else:
            self._start_server(proc, wait=wait)
            if wait and role == "serving" and not (self._agent and self._agent.running()):
                self._wait_started(proc)  # no agent runs to sync it now
            elif wait:
                self._wait_ready(proc)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    def _servers(self) -> list[ManagedProcess]:
        return [*self._training, *(p for replicas in self._serving for p in replicas)]

    def _server(
        self,
        name: str,
        role: str,
        shard: int,
        num_shards: int,
        port: int,
        metrics_port: int,
        python: str,
    ) -> ManagedProcess:
        args = [
            "server",
            "--role", role,
            "--shard-index", str(shard),
            "--num-shards", str(num_shards),
            "--config", str(self.config_path),
            "--host", "127.0.0.1",
            "--log-format", "json",
            "--log-level", self.log_level,
            "--auth", "off",  # one machine, loopback only, no TLS: see docs/deploy.md
        ]  # fmt: skip
        if role == "training" and self.snapshot_dir is not None:
            args += ["--snapshot-dir", str(self.snapshot_dir / name)]
        if role == "serving" and self.serve_before_sync:
            args.append("--serve-before-sync")
        return ManagedProcess(
            name, args, self.log_dir / f"{name}.log", port, metrics_port, python=python
        )

    def _start_server(self, proc: ManagedProcess, wait: bool) -> None:
        proc.start(["--port", str(proc.port), "--metrics-port", str(proc.metrics_port)])
        if wait:
            self._learn_ports(proc)

    def _learn_ports(self, proc: ManagedProcess) -> None:
        line = proc.wait_event("server_started", self.startup_timeout)
        proc.port = int(line["port"])
        proc.metrics_port = int(line["metrics_port"])

    def _wait_started(self, proc: ManagedProcess) -> None:
        """Until the server is ready, or, for a serving server behind the agent, restored
        and waiting for its first sync."""
        self._learn_ports(proc)
        if proc.args[proc.args.index("--role") + 1] == "training" or self.serve_before_sync:
            proc.wait_event("server_ready", self.startup_timeout)
        else:
            proc.wait_event_any(("server_waiting_for_sync", "server_ready"), self.startup_timeout)

    def _wait_ready(self, proc: ManagedProcess) -> None:
        self._learn_ports(proc)
        proc.wait_event("server_ready", self.startup_timeout)

    def _start_agent(self, wait: bool = True) -> None:
        assert self._agent is not None
        self._agent.args = self.agent_argv()
        self._agent.start()
        if wait:
            line = self._agent.wait_event("agent_started", self.startup_timeout)
            self._agent.metrics_port = int(line["metrics_port"])
            wait_http(self._agent.metrics_url, self.startup_timeout, self._agent)

    def agent_argv(self) -> list[str]:
        """The agent's ``mps`` arguments: interval flags only where this cluster was given
        intervals, else the agent takes the config's ``sync`` section."""
        assert self._agent is not None
        serving = [p.address for p in self._serving_flat()]
        argv = [
            "sync-agent",
            "--config", str(self.config_path),
            "--training", ",".join(self.training_addresses),
            "--serving", ",".join(serving),
            "--metrics-port", str(self._agent.metrics_port),
            "--log-format", "json",
            "--log-level", self.log_level,
        ]  # fmt: skip
        for flag, value in (
            ("--sparse-interval", self.sparse_interval),
            ("--dense-interval", self.dense_interval),
        ):
            if value is not None:
                argv += [flag, value]
        return argv + self._agent_args

    def _serving_flat(self) -> list[ManagedProcess]:
        return [p for replicas in self._serving for p in replicas]


def run_until_signalled(args: Any) -> int:
    """``mps local up``: start the cluster, print where it listens, stop it on SIGINT/SIGTERM."""
    configure_logging("text", getattr(args, "log_level", "info").upper())
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        cluster = LocalCluster(
            args.config,
            training_shards=args.training_shards,
            serving_shards=args.serving_shards,
            serving_replicas=args.serving_replicas,
            sparse_interval=args.sparse_interval,
            dense_interval=args.dense_interval,
            base_port=args.base_port,
            snapshot_dir=args.snapshot_dir,
            log_dir=args.log_dir,
            log_level=getattr(args, "log_level", "info"),
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"mps local up: {exc}", file=sys.stderr)
        return 2
    try:
        cluster.start()
    except LocalClusterError as exc:
        print(f"mps local up: {exc}", file=sys.stderr)
        return 1
    try:
        print(_describe(cluster), flush=True)
        while not stop.wait(1.0):
            for proc in cluster.processes():
                if proc.proc is not None and proc.proc.poll() is not None and not stop.is_set():
                    print(
                        f"{proc.name} exited with status {proc.proc.returncode}; "
                        f"see {proc.log_path}",
                        file=sys.stderr,
                        flush=True,
                    )
                    proc.proc = None
    finally:
        print("stopping...", file=sys.stderr, flush=True)
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _describe(cluster: LocalCluster) -> str:
    lines = [f"monolith-ps local cluster is up; logs in {cluster.log_dir}"]
    for i, address in enumerate(cluster.training_addresses):
        name = f"training-{i}"
        lines.append(f"  {name:<14} {address:<18} {cluster.metrics_urls[name]}")
    for s, replicas in enumerate(cluster.serving_addresses):
        for r, address in enumerate(replicas):
            name = f"serving-{s}-{r}"
            lines.append(f"  {name:<14} {address:<18} {cluster.metrics_urls[name]}")
    if cluster.agent_metrics_url:
        lines.append(f"  {'agent':<14} {'':<18} {cluster.agent_metrics_url}")
    lines.append(f"  training: {','.join(cluster.training_addresses)}")
    lines.append(
        "  serving:  " + ",".join(a for replicas in cluster.serving_addresses for a in replicas)
    )
    lines.append("Ctrl-C stops every process.")
    return "\n".join(lines)
