"""Stopping a real ``mps server`` never hangs: a final snapshot that cannot be written is
logged and counted and the process exits 1 within its grace period; a second SIGTERM
ends a stop that is still draining."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from ps_client import PSClient

_GRACE = 2.0


@contextlib.contextmanager
def _small_disk(path: Path) -> Iterator[bool]:
    """A 2 MiB tmpfs at ``path`` when this machine lets us mount one (True), else a plain
    directory (False)."""
    path.mkdir()
    mounted = (
        os.geteuid() == 0
        and shutil.which("mount") is not None
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def _break_disk(snapshots: Path, mounted: bool) -> str:
    """Make writing a snapshot under ``snapshots`` fail; returns the errno name expected."""
    if mounted:
        filler = snapshots.parent / "filler"
        with open(filler, "wb", buffering=0) as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * (64 << 10))
        return "ENOSPC"
    # No tmpfs: the snapshot directory becomes a file, which no user can write under.
    snapshots.rename(snapshots.with_name("moved"))
    snapshots.write_text("not a directory")
    return "ENOTDIR"


def test_a_final_snapshot_on_a_full_disk_is_logged_and_exits_1_in_time(process_factory, tmp_path):
    with _small_disk(tmp_path / "disk") as mounted:
        snapshots = tmp_path / "disk" / "snapshots"
        server = process_factory("training", extra_args=("--snapshot-dir", str(snapshots)))
        with PSClient([server.address]) as client:
            keys = np.arange(1, 2001, dtype=np.uint64)
            client.push("user_id", keys, np.ones((len(keys), 8), np.float32))
        expected = _break_disk(snapshots, mounted)
        server.signal(signal.SIGTERM)
        sent = time.monotonic()
        status = server.wait(timeout=30)
        took = time.monotonic() - sent
    assert status == 1
    assert took < _GRACE + 10, took
    failed = [line for line in server.lines if line.get("event") == "stop_step_failed"]
    assert [line["step"] for line in failed] == ["final_snapshot"], failed
    assert os.strerror(getattr(errno, expected)) in failed[0]["error"], failed[0]
    assert "snapshot_failed" in server.events
    stopped = [line for line in server.lines if line.get("event") == "server_stopped"]
    assert stopped and stopped[0]["exit_code"] == 1


def test_a_second_sigterm_ends_a_stop_that_is_still_draining(process_factory, metric_value):
    server = process_factory("serving", extra_args=("--grace-seconds", "60"))
    channel = grpc.insecure_channel(server.address)
    stub = ps_pb2_grpc.ParameterServerStub(channel)
    chunk = ps_pb2.DeltaChunk(
        table="user_id", source_shard=0, source_num_shards=1, epoch=7, full_resync=True, dim=8
    )
    release = threading.Event()

    def hold() -> Iterator[ps_pb2.DeltaChunk]:
        yield chunk  # then nothing, so the stream stays open on the server
        release.wait(60)

    call = stub.ApplyDelta.future(hold(), timeout=90)
    try:
        server.wait_event("server_waiting_for_sync", 30)
        deadline = time.monotonic() + 30
        while not metric_value(
            server.metrics_url, "monolith_ps_delta_bytes_received_total", table="user_id"
        ):
            assert time.monotonic() < deadline, "the server never took the stream's first chunk"
            time.sleep(0.02)
        server.signal(signal.SIGTERM)  # the stream is open on the server
        server.wait_event("server_stopping", 30)
        assert server.proc.poll() is None  # still draining the open stream
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 1
        assert "forced_exit" in server.events
    finally:
        release.set()
        call.cancel()
        channel.close()
