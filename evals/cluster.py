"""A local cluster for the evals: training shards and serving replicas as ``mps server``
subprocesses on 127.0.0.1, synced by the real sync agent when an eval says so, and the
demo's cluster config that every eval starts from."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml

from examples.movielens.data import Events
from examples.movielens.model import FactorizationMachine
from examples.movielens.stream import DEFAULT_CONFIG, ServingScorer, SyncWaiter, build_model
from monolith_ps.config import parse_config
from monolith_ps.local import LocalCluster
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from ps_client import PSClient

__all__ = ["EvalCluster", "SyncFailedError", "base_config"]

# A restarted server is noticed within a second, as PSClient does.
_RECONNECT_QUICKLY = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def base_config(seed: int = 0, **table_fields: Any) -> dict[str, Any]:
    """The demo's cluster config (``examples/movielens/tables.yaml``) as a mapping, with
    ``table_fields`` set on every table and every initializer seed moved by ``seed``."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config = copy.deepcopy(raw)
    for entry in (*config["tables"], *config.get("dense", ())):
        entry["seed"] = int(entry.get("seed", 0)) + 1000 * seed
    for table in config["tables"]:
        table.update(table_fields)
    # Snapshots only when an eval asks for them through the Snapshot RPC.
    config["snapshot"] = {"full_interval": "1000d", "incremental_interval": "1000d", "keep": 1}
    return config


# ---------------------------------------------------------------------- the cluster


class SyncFailedError(RuntimeError):
    """The sync agent's round failed or serving did not reach training afterwards."""


class EvalCluster:
    """Training shards and serving replicas on 127.0.0.1, no background agent: ``sync``
    runs the real sync agent for one round (``mps sync-agent --once``) toward the chosen
    replicas, then checks that each of them has everything training holds.

    Every serving replica is its own server (serving shard 0 of 1), so an eval can keep
    several serving copies of one training run on different sync schedules.

    >>> with EvalCluster(base_config(), workdir) as cluster:   # doctest: +SKIP
    ...     train(cluster, events)
    ...     cluster.sync()
    ...     predictions = cluster.score(test_events).predictions
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        workdir: str | os.PathLike[str],
        training_shards: int = 2,
        serving_replicas: int = 1,
        snapshots: bool = False,
    ) -> None:
        self.config = copy.deepcopy(dict(config))
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "cluster.json"
        self.config_path.write_text(json.dumps(self.config, indent=1))
        self.model: FactorizationMachine = build_model(parse_config(self.config))
        self.snapshot_dir = self.workdir / "snapshots" if snapshots else None
        self.local = LocalCluster(
            self.config_path,
            training_shards=training_shards,
            serving_shards=1,
            serving_replicas=serving_replicas,
            snapshot_dir=self.snapshot_dir,
            log_dir=self.workdir / "logs",
            agent=False,
        )
        self.training: PSClient | None = None
        self.serving: list[PSClient] = []
        self._channels: list[grpc.Channel] = []
        self._admin: list[ps_pb2_grpc.ParameterServerStub] = []  # training shards, by index
        self.syncs = 0
        self.sync_seconds = 0.0

    @property
    def serving_addresses(self) -> list[str]:
        return [address for replicas in self.local.serving_addresses for address in replicas]

    def __enter__(self) -> EvalCluster:
        self.local.start()
        try:
            self.training = PSClient(self.local.training_addresses, role="training")
            self.serving = [PSClient([a], role="serving") for a in self.serving_addresses]
            self._channels = [
                grpc.insecure_channel(a, _RECONNECT_QUICKLY) for a in self.local.training_addresses
            ]
            self._admin = [ps_pb2_grpc.ParameterServerStub(ch) for ch in self._channels]
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for client in [self.training, *self.serving]:
            if client is not None:
                client.close()
        for channel in self._channels:
            channel.close()
        self.training, self.serving, self._channels, self._admin = None, [], [], []
        self.local.stop()

    def sync(self, replicas: Sequence[int] | None = None, timeout: float = 120.0) -> float:
        """One round of the sync agent toward ``replicas`` (default: all); returns seconds."""
        replicas = range(len(self.serving)) if replicas is None else replicas
        addresses = [self.serving_addresses[r] for r in replicas]
        if not addresses:
            return 0.0
        started = time.monotonic()
        log_path = self.workdir / "logs" / "agent.log"
        command = [
            sys.executable, "-m", "monolith_ps.cli", "sync-agent", "--once",
            "--config", str(self.config_path),
            "--training", ",".join(self.local.training_addresses),
            "--serving", ",".join(addresses),
            "--log-format", "json",
        ]  # fmt: skip
        with open(log_path, "ab") as log:
            status = subprocess.run(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=timeout
            ).returncode
        if status != 0:
            raise SyncFailedError(
                f"the sync agent's round failed (status {status}); see {log_path}"
            )
        waiter = SyncWaiter(self.training, addresses, self.model.tables, with_dense=True)
        try:
            waiter.wait(timeout=10.0)
        except TimeoutError as exc:
            raise SyncFailedError(f"serving is behind after the agent's round: {exc}") from exc
        finally:
            waiter.close()
        seconds = time.monotonic() - started
        self.syncs += 1
        self.sync_seconds += seconds
        return seconds

    def score(self, events: Events, replica: int = 0, batch_size: int = 4096) -> Any:
        """Predictions for ``events`` from serving replica ``replica`` only."""
        return ServingScorer(self.serving[replica], self.model, batch_size).score(events)

    def rows(self, role: str = "training", replica: int = 0) -> dict[str, int]:
        """Live rows per table: summed over training shards, or of one serving replica."""
        shards = (
            self.training.describe() if role == "training" else self.serving[replica].describe()
        )
        totals: dict[str, int] = {}
        for shard in shards:
            for name, table in shard.tables.items():
                totals[name] = totals.get(name, 0) + table.num_rows
        return totals

    def expire(self, now: float) -> int:
        """Run the TTL expiry of every training shard against ``now`` (unix seconds) through
        the Expire RPC; returns the rows dropped."""
        return self.training.expire(now, timeout=60)

    def snapshot(self, full: bool, shards: Sequence[int] | None = None) -> float:
        """Write a snapshot on training shards ``shards`` (default: all) through the Snapshot
        RPC; returns the seconds the servers took."""
        shards = range(len(self._admin)) if shards is None else shards
        request = ps_pb2.SnapshotRequest(full=full)
        return sum(
            self._admin[i].Snapshot(request, timeout=120, wait_for_ready=True).seconds
            for i in shards
        )

    def rows_of_shard(self, shard: int) -> int:
        """Live rows of training shard ``shard``, all tables."""
        request = ps_pb2.DescribeTablesRequest()
        reply = self._admin[shard].DescribeTables(request, timeout=60, wait_for_ready=True)
        return sum(t.num_rows for t in reply.tables)

    def memory_bytes(self) -> int:
        """Bytes the training shards' tables hold (rows, optimizer state, index)."""
        return sum(t.memory_bytes for s in self.training.describe() for t in s.tables.values())
