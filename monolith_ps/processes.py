"""Child processes of ``mps``: one subprocess each, its JSON log teed to a file, its events
waited on, signalled and reaped; used by the local launcher and by the tests.

Every child runs through :func:`_run_child`, which asks Linux to SIGTERM it when the
process that started it dies, so no child outlives its launcher.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from monolith_ps.cli import main

__all__ = ["LocalClusterError", "ManagedProcess", "rss_bytes", "tee_json_log", "wait_http"]

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
        env: dict[str, str] | None = None,
        follow_launcher: bool = True,
    ) -> None:
        self.name = name
        self.env = env
        # Linux delivers the parent-death signal when the *thread* that started the child
        # ends: a caller starting processes from short-lived threads turns it off.
        self.follow_launcher = follow_launcher
        self.args = list(args)
        self.log_path = log_path
        self.port = port
        self.metrics_port = metrics_port
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self._events: dict[str, dict[str, Any]] = {}
        self.lines: list[dict[str, Any]] = []  # every JSON log line since the last start
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
        runner = ["monolith_ps.processes", str(os.getpid())]
        if not self.follow_launcher:
            runner = ["monolith_ps.cli"]
        cmd = [self.python, "-m", *runner, *self.args, *extra]
        with self._event:
            self._events = {}
            self.lines = []
        env = {**os.environ, **(self.env or {})}
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
        if isinstance(line, dict):
            self.lines.append(line)
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


def wait_http(url: str, timeout: float, proc: ManagedProcess) -> None:
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


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """The resident memory of process ``pid`` in bytes: all of it (``VmRSS``), or one of
    its parts (``RssAnon``: its own memory; ``RssFile``, ``RssShmem``: mapped files)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for process {pid}")


if __name__ == "__main__":
    sys.exit(_run_child(sys.argv[1:]))
