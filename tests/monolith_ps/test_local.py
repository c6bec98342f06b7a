"""``mps local up`` and ``LocalCluster``: start, sync, stop cleanly, leave no process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from monolith_ps import wire
from monolith_ps.local import LocalCluster
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = {"tables": [{"name": "emb", "dim": 4, "optimizer": "sgd", "initializer": "uniform"}]}


@pytest.fixture
def config_path(tmp_path):
    path = tmp_path / "tables.json"
    path.write_text(json.dumps(CONFIG))
    return path


def _children_of_config(config_path: Path) -> list[int]:
    """Pids of live processes started with this config file (our cluster's processes)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        role = b"server" in cmdline or b"sync-agent" in cmdline  # not the launcher itself
        mine = str(config_path).encode() in cmdline and role
        if mine and "State:\tZ" not in status:
            pids.append(int(entry.name))
    return pids


def _wait_gone(config_path: Path, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _children_of_config(config_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _lookup(address: str, keys: np.ndarray):
    stub = ps_pb2_grpc.ParameterServerStub(grpc.insecure_channel(address))
    response = stub.Lookup(
        ps_pb2.LookupRequest(tables=[ps_pb2.TableKeys(table="emb", keys=wire.encode_keys(keys))]),
        timeout=30,
    )
    tv = response.tables[0]
    values = wire.decode_values(tv.values, len(keys), tv.dim, tv.dtype)
    return values, (wire.decode_found(tv.found, len(keys)) if tv.found else None)


def _start_cli(config_path: Path, tmp_path: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "monolith_ps.cli", "local", "up", "--config", str(config_path),
         "--training-shards", "1", "--serving-shards", "1", "--sparse-interval", "0.5s",
         "--log-dir", str(tmp_path / "logs")],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    lines = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if match := re.match(r"\s+(training|serving):\s+(\S+)", line):
            lines[match.group(1)] = match.group(2)
        if "Ctrl-C" in line:
            break
    return proc, lines


def test_local_up_syncs_and_stops_every_process_on_ctrl_c(config_path, tmp_path):
    proc, addresses = _start_cli(config_path, tmp_path)
    try:
        assert set(addresses) == {"training", "serving"}, addresses
        assert len(_children_of_config(config_path)) == 3  # training, serving, agent
        keys = np.arange(1, 101, dtype=np.uint64)
        want, _ = _lookup(addresses["training"], keys)  # training inserts the rows
        deadline = time.monotonic() + 30
        while True:
            values, found = _lookup(addresses["serving"], keys)
            if found.all():
                break
            assert time.monotonic() < deadline, "rows never reached serving"
            time.sleep(0.1)
        np.testing.assert_array_equal(values, want)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert _wait_gone(config_path, 5) == []


def test_children_stop_when_the_launcher_is_killed(config_path, tmp_path):
    proc, _ = _start_cli(config_path, tmp_path)
    try:
        assert len(_children_of_config(config_path)) == 3
        proc.kill()  # SIGKILL: no chance to clean up, the kernel tells the children
        proc.wait()
        assert _wait_gone(config_path, 30) == []
    finally:
        proc.stdout.close()
        for pid in _children_of_config(config_path):
            os.kill(pid, signal.SIGKILL)


def test_base_port_lays_out_ports_without_starting_anything(config_path):
    cluster = LocalCluster(
        config_path, training_shards=2, serving_shards=2, serving_replicas=2, base_port=20000
    )
    assert cluster.training_addresses == ["127.0.0.1:20000", "127.0.0.1:20001"]
    assert cluster.serving_addresses == [
        ["127.0.0.1:20002", "127.0.0.1:20003"],
        ["127.0.0.1:20004", "127.0.0.1:20005"],
    ]
    assert cluster.metrics_urls["training-0"] == "http://127.0.0.1:20006/metrics"
    assert cluster.agent_metrics_url == "http://127.0.0.1:20012/metrics"
    assert _children_of_config(config_path) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"training_shards": 0}, "training_shards"),
        ({"serving_replicas": 0}, "serving_replicas"),
        ({"base_port": 70000}, "base_port"),
    ],
)
def test_bad_cluster_arguments_are_named(config_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        LocalCluster(config_path, **kwargs)


def test_missing_config_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        LocalCluster(tmp_path / "nope.yaml")
