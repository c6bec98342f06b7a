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

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from monolith_ps.logs import fields

__all__ = ["LocalCluster", "LocalClusterError", "ManagedProcess", "tee_json_log"]

_LOGGER = logging.getLogger(__name__)
_ROLES = ("training", "serving", "agent")
_PR_SET_PDEATHSIG = 1


class LocalClusterError(RuntimeError):
    """A process of the local cluster failed to start or become ready; names its log."""


def tee_json_log(
    stream: IO[bytes], log_path: str | os.PathLike[str], on_line: Callable[[Any], None]
) -> None:
    """Append a process's JSON-lines output (its stderr) to ``log_path`` line by line as it
    comes, handing each line that parses as JSON to ``on_line``; closes ``stream`` at its
    end. Lines that are not JSON are logged all the same."""
    with stream, open(log_path, "ab") as log:
        for raw in stream:
            log.write(raw)
            log.flush()
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            on_line(line)


def _run_child(argv: list[str]) -> int:
    """Entry point of every cluster process: ``<launcher pid> <mps arguments...>``.

    Asks Linux to SIGTERM this process when the launcher dies, then runs ``mps``. Done
    here, after exec, because code run between fork and exec (``preexec_fn``) is not safe
    in a launcher whose gRPC threads are running.
    """
    launcher, mps_args = int(argv[0]), argv[1:]
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != launcher:
        return 1  # the launcher died before we could ask to follow it
    from monolith_ps.cli import main

    return main(mps_args)


class ManagedProcess:
    """One ``mps`` subprocess: its command, log file and the ports it reported."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        port: int = 0,
        metrics_port: int = 0,
        python: str = sys.executable,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self.port = port
        self.metrics_port = metrics_port
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self._events: dict[str, dict[str, Any]] = {}
        self._event = threading.Condition()
        self._reader: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, extra: Sequence[str] = ()) -> None:
        """Start the process; its stderr goes to the log file, line by line."""
        if self.running():
            raise LocalClusterError(f"{self.name} is already running (pid {self.pid})")
        cmd = [self.python, "-m", "monolith_ps.local", str(os.getpid()), *self.args, *extra]
        with self._event:
            self._events = {}
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # Ctrl-C reaches only the launcher, which stops us in order
        )
        self._reader = threading.Thread(
            target=self._read_log, args=(self.proc,), name=f"log-{self.name}", daemon=True
        )
        self._reader.start()

    def _read_log(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        tee_json_log(proc.stderr, self.log_path, self._note_event)
        with self._event:
            self._event.notify_all()

    def _note_event(self, line: Any) -> None:
        if isinstance(line, dict) and "event" in line:
            with self._event:
                self._events.setdefault(line["event"], line)
                self._event.notify_all()

    def wait_event(self, event: str, timeout: float) -> dict[str, Any]:
        """The first log line of ``event`` since the last start (raises if the process dies)."""
        return self.wait_event_any((event,), timeout)

    def wait_event_any(self, events: Sequence[str], timeout: float) -> dict[str, Any]:
        """The first log line of the first of ``events`` seen since the last start."""
        deadline = time.monotonic() + timeout
        event = " or ".join(events)
        with self._event:
            while not any(e in self._events for e in events):
                if not self.running():
                    status = self.proc.returncode if self.proc is not None else "?"
                    raise LocalClusterError(
                        f"{self.name} exited with status {status} before logging {event}; "
                        f"see {self.log_path}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LocalClusterError(
                        f"{self.name} did not log {event} within {timeout:g}s; see {self.log_path}"
                    )
                self._event.wait(min(remaining, 0.5))
            return next(self._events[e] for e in events if e in self._events)

    def send(self, signum: int) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int | None:
        """Reap the process; None if it is still running after ``timeout``."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)


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
            _wait_http(self._agent.metrics_url, self.startup_timeout, self._agent)

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


def _wait_http(url: str, timeout: float, proc: ManagedProcess) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if not proc.running():
            raise LocalClusterError(f"{proc.name} exited; see {proc.log_path}")
        if time.monotonic() > deadline:
            raise LocalClusterError(f"{url} did not answer within {timeout:g}s")
        time.sleep(0.1)


def run_until_signalled(args: Any) -> int:
    """``mps local up``: start the cluster, print where it listens, stop it on SIGINT/SIGTERM."""
    from monolith_ps.logs import configure_logging

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


if __name__ == "__main__":
    sys.exit(_run_child(sys.argv[1:]))
