"""Shared pieces of the evals: the MovieLens stream, cluster configs, a local cluster that
the sync agent syncs on demand, training and serving-side scoring, and result files.

Every eval trains through the training PS of a real local cluster (``mps server``
subprocesses on 127.0.0.1) and scores through its serving PS after the sync agent
(``mps sync-agent --once``) has moved the rows: the production path, with the moments
of sync chosen by the experiment instead of a timer, so runs are repeatable.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import copy
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml

from examples.movielens.data import PAD_KEY, Events, load_events
from examples.movielens.metrics import log_loss, roc_auc
from examples.movielens.model import FactorizationMachine
from examples.movielens.stream import DEFAULT_CONFIG, ServingScorer, SyncWaiter, build_model
from monolith_ps.config import parse_config
from monolith_ps.local import LocalCluster
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from ps_client import PSClient
from ps_client.fid import SLOT_BITS, make_fid
from ps_client.routing import shard_of
from ps_client.trainer import StepResult, Trainer, TrainerStats

__all__ = [
    "AUC_SERIES",
    "REPO_ROOT",
    "EvalCluster",
    "StreamClock",
    "SyncFailedError",
    "TrainResult",
    "add_common_arguments",
    "add_seed_arguments",
    "base_config",
    "compare_with_first",
    "document",
    "eval_parser",
    "finish_axes",
    "found_fraction",
    "hash_keys",
    "load_stream",
    "log_loss",
    "machine",
    "markdown_table",
    "mean_and_spread",
    "roc_auc",
    "run_eval",
    "run_info",
    "save_figure",
    "say",
    "seeded_runs",
    "time_split",
    "train",
    "train_and_score",
    "write_results",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
_U64_MASK = (1 << 64) - 1
# A restarted server is noticed within a second, as PSClient does.
_RECONNECT_QUICKLY = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


# ---------------------------------------------------------------------- data


@functools.cache
def _all_events() -> Events:
    return load_events()


def load_stream(limit: int | None = None) -> Events:
    """The MovieLens stream in timestamp order (its first ``limit`` events), loaded once."""
    events = _all_events()
    if limit is None or limit >= len(events):
        return events
    return events.slice(0, limit)


def time_split(events: Events, test_fraction: float) -> tuple[Events, Events]:
    """The first ``1 - test_fraction`` of the stream to train on, the rest to test on."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    cut = int(round(len(events) * (1.0 - test_fraction)))
    return events.slice(0, cut), events.slice(cut, len(events))


def hash_keys(keys: np.ndarray, num_buckets: int, salt: int) -> np.ndarray:
    """Feature IDs hashed into ``num_buckets`` buckets per slot, the way a fixed-size
    embedding table indexes them: bucket = mix64(key ^ salt) % num_buckets, returned as
    the feature ID of that bucket in the key's slot (so different slots never share)."""
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    flat = np.ascontiguousarray(keys, dtype=np.uint64).ravel()
    buckets = shard_of(flat ^ np.uint64(salt & _U64_MASK), num_buckets)
    slots = (flat >> np.uint64(64 - SLOT_BITS)).astype(np.int64)
    return make_fid(slots, buckets).reshape(np.shape(keys))


def distinct_keys(events: Events, table: str) -> int:
    """How many different (non-pad) feature IDs ``table`` sees in ``events``."""
    keys = np.unique(np.asarray(events.keys[table]).ravel())
    return int(np.count_nonzero(keys != np.uint64(PAD_KEY)))


# ---------------------------------------------------------------------- configs


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


# ---------------------------------------------------------------------- training


class StreamClock:
    """Maps the stream's time to the servers' wall clock, batch by batch.

    Servers stamp a row's last update with their own clock (this machine's). Training
    runs batch after batch, so both the stream time of a batch (its last event) and the
    wall time at which it began increase: the rows last updated in batches that ended
    before stream time ``T`` were all stamped before the wall time at which the first
    batch ending at or after ``T`` began. ``wall_time_at(T)`` is that moment, so the
    servers' "last update before wall time w" is "last update before stream time T",
    at the granularity of a batch. Wrap the batches with ``batches``.
    """

    def __init__(self) -> None:
        self._wall: list[float] = []
        self._stream: list[int] = []

    def batches(self, events: Events, batch_size: int) -> Iterable[Events]:
        for batch in events.batches(batch_size):
            self._wall.append(time.time())
            self._stream.append(int(batch.timestamps[-1]))
            yield batch

    def wall_time_at(self, stream_time: float) -> float:
        """The wall time at which training reached ``stream_time`` (now, if not yet)."""
        j = bisect.bisect_left(self._stream, stream_time)
        return self._wall[j] if j < len(self._wall) else time.time()


@dataclasses.dataclass
class TrainResult:
    """Progressive-validation predictions of the trained events and the trainer's counters."""

    predictions: np.ndarray
    stats: TrainerStats

    def auc(self, labels: np.ndarray) -> float:
        return roc_auc(labels, self.predictions)


def train(
    cluster: EvalCluster,
    events: Events,
    batch_size: int = 256,
    batches: Callable[[Events, int], Iterable[Events]] | None = None,
) -> TrainResult:
    """Train the model on ``events`` in stream order through the training PS; each batch
    is predicted before its own update (progressive validation). ``batches`` may wrap
    ``events.batches`` (e.g. to act between batches)."""
    predictions: list[np.ndarray] = []

    def keep(batch: Events, result: StepResult) -> None:
        predictions.append(result.predictions)

    trainer = Trainer(
        cluster.training,
        cluster.model.train_step,
        dense_store=cluster.training,
        pad_key=PAD_KEY,
        progress=False,
        on_step=keep,
    )
    stream = batches(events, batch_size) if batches is not None else events.batches(batch_size)
    stats = trainer.run(stream)
    if stats.interrupted:
        raise KeyboardInterrupt
    merged = np.concatenate(predictions) if predictions else np.zeros(0, np.float32)
    return TrainResult(merged, stats)


def seen_users(train_events: Events, test_events: Events) -> np.ndarray:
    """Mask of the test events whose user rated something in the training part."""
    return np.isin(test_events.keys["user"], np.unique(train_events.keys["user"]))


def time_split_run(
    cluster: EvalCluster,
    train_events: Events,
    test_events: Events,
    seen: np.ndarray,
    batch_size: int = 256,
    windows: int = 1,
    after_window: Callable[[int, Events], None] | None = None,
    batches: Callable[[Events, int], Iterable[Events]] | None = None,
) -> dict[str, Any]:
    """Train on ``train_events`` (in ``windows`` parts, calling ``after_window`` after each),
    sync serving, score ``test_events`` through serving. ``seen`` marks the test events
    whose user was in the training part; ``batches`` as for ``train``. Returns AUCs, log
    loss, rows and memory."""
    parts = train_events.windows(windows) if windows > 1 else [train_events]
    trained = []
    train_seconds = 0.0
    for i, part in enumerate(parts):
        result = train(cluster, part, batch_size, batches)
        trained.append(result.predictions)
        train_seconds += result.stats.seconds
        if after_window is not None:
            after_window(i, part)
    cluster.sync()
    scored = cluster.score(test_events)
    labels, predictions = test_events.labels, scored.predictions
    training_rows = cluster.rows("training")
    return {
        "test_auc": roc_auc(labels, predictions),
        "test_auc_seen_users": roc_auc(labels[seen], predictions[seen]),
        "test_auc_new_users": roc_auc(labels[~seen], predictions[~seen]),
        "test_logloss": log_loss(labels, predictions),
        "train_auc": roc_auc(train_events.labels, np.concatenate(trained)),
        "found": found_fraction(scored),
        "training_rows": training_rows,
        "rows": sum(training_rows.values()),
        "serving_rows": sum(cluster.rows("serving").values()),
        "memory_bytes": cluster.memory_bytes(),
        "train_seconds": train_seconds,
    }


def found_fraction(scored: Any) -> float:
    """The share of the looked-up keys that serving had a row for."""
    return scored.keys_found / max(scored.keys_asked, 1)


def train_and_score(
    args: argparse.Namespace,
    config: Mapping[str, Any],
    folder: Path,
    train_events: Events,
    test_events: Events,
    seen: np.ndarray,
) -> dict[str, Any]:
    """``time_split_run`` on a cluster of its own, made for this one run."""
    with EvalCluster(config, folder, args.training_shards) as cluster:
        return time_split_run(cluster, train_events, test_events, seen, args.batch_size)


def seeded_runs(
    args: argparse.Namespace,
    name: str,
    variants: Sequence[Any],
    run_one: Callable[[int, Any, Path], dict[str, Any]],
    describe: Callable[[dict[str, Any]], str],
) -> list[dict[str, Any]]:
    """``run_one(seed, variant, workdir)`` for every seed of ``--seeds`` and every variant,
    in that order, saying ``describe(result)`` after each; returns the results."""
    runs = []
    with workdir(args, name) as work:
        for seed in range(args.seeds):
            for variant in variants:
                result = run_one(seed, variant, work)
                runs.append(result)
                say(args, f"seed {seed} {describe(result)}")
    return runs


def summarize_runs(
    runs: Sequence[Mapping[str, Any]], key: str, metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Per value of ``runs[i][key]`` (in first-seen order): mean and sd of each metric."""
    out = []
    for value in dict.fromkeys(r[key] for r in runs):
        mine = [r for r in runs if r[key] == value]
        entry: dict[str, Any] = {key: value, "seeds": len(mine)}
        for metric in metrics:
            mean, sd = mean_and_spread([float(r[metric]) for r in mine])
            entry[f"{metric}_mean"], entry[f"{metric}_sd"] = mean, sd
        out.append(entry)
    return out


def compare_with_first(
    summary: Sequence[dict[str, Any]], runs: Sequence[Mapping[str, Any]], key: str
) -> None:
    """Add to each summary entry its rows and test AUC against the first entry's, and its
    mean rows per table."""
    base = summary[0]
    for entry in summary:
        mine = [r for r in runs if r[key] == entry[key]]
        entry["rows_vs_first"] = entry["rows_mean"] / base["rows_mean"]
        entry["delta_auc_vs_first"] = entry["test_auc_mean"] - base["test_auc_mean"]
        entry["rows_per_table"] = {
            table: sum(r["training_rows"][table] for r in mine) / len(mine)
            for table in mine[0]["training_rows"]
        }


def pm(entry: Mapping[str, Any], metric: str, digits: int = 4) -> str:
    """``mean ± sd`` of a summarized metric."""
    return f"{entry[metric + '_mean']:.{digits}f} ± {entry[metric + '_sd']:.{digits}f}"


# ---------------------------------------------------------------------- results


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """OS, CPUs available to this process, Python, and the load when it ran."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.1f}"
    return (
        f"{platform.system()} {platform.machine()}, {cpus} CPUs, "
        f"Python {platform.python_version()}{load}"
    )


def utc_date(timestamp: float) -> str:
    """``YYYY-MM-DD`` of a unix time, in UTC."""
    return datetime.datetime.fromtimestamp(float(timestamp), datetime.UTC).strftime("%Y-%m-%d")


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def command_line(module: str, argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m", module, *args])


def write_results(
    out: Path, name: str, doc: Mapping[str, Any], markdown: str, plot: Callable[[Path], None]
) -> list[Path]:
    """``<out>/<name>.json``, ``.md`` and ``.png``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.json", out / f"{name}.md", out / f"{name}.png"]
    paths[0].write_text(json.dumps(_jsonable(doc), indent=2) + "\n")
    paths[1].write_text(markdown.rstrip() + "\n")
    plot(paths[2])
    return paths


def run_info(name: str, args: argparse.Namespace, started: float) -> dict[str, Any]:
    """The fields every result starts with: the eval, its command line, date, machine, and
    the seconds since ``started`` (a ``time.monotonic()``)."""
    return {
        "experiment": name,
        "command": command_line(f"evals.{name}", args.argv),
        "date": now_iso(),
        "machine": machine(),
        "seconds": time.monotonic() - started,
    }


def document(
    title: str,
    doc: Mapping[str, Any],
    description: str,
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
) -> str:
    """A result's Markdown: its header, what was run, and its table."""
    return "\n".join(
        [document_header(title, doc), "", description, "", markdown_table(header, rows)]
    )


def document_header(title: str, doc: Mapping[str, Any]) -> str:
    """The title line and how a result was made (command, date, machine, seconds)."""
    return (
        f"## {title}\n\n`{doc['command']}` on {doc['date']} ({doc['machine']}), "
        f"{doc['seconds']:.0f} s."
    )


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# What the AUC plots show: metric, label, colour.
AUC_SERIES = (
    ("test_auc", "test, all events", "tab:red"),
    ("test_auc_seen_users", "test, users seen in training", "tab:blue"),
    ("train_auc", "progressive, training part", "tab:green"),
)


def finish_axes(ax: Any, title: str, legend: str) -> None:
    """Title, light grid and a small legend at ``legend`` (a matplotlib location)."""
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend, fontsize=8)


def save_figure(fig: Any, path: Path) -> None:
    """Lay out ``fig``, write it to ``path`` as a PNG and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------- command line


def add_common_arguments(parser: argparse.ArgumentParser, limit: int | None) -> None:
    """Flags every eval takes: the stream size, batch size, output and work folders."""
    parser.add_argument(
        "--limit",
        type=int,
        default=limit,
        help=f"use the first N ratings of the stream (default {limit or 'all'})",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="training batch (256)")
    parser.add_argument(
        "--training-shards", type=int, default=2, help="training PS shards (default 2)"
    )
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "results")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="cluster configs and logs (default: temp)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def add_seed_arguments(parser: argparse.ArgumentParser, seeds: int, per: str) -> None:
    """``--seeds`` (runs per ``per``) and ``--test-fraction``, for the evals that train on
    the first part of the stream and test on the rest."""
    parser.add_argument(
        "--seeds", type=int, default=seeds, help=f"seeds per {per} (default {seeds})"
    )
    parser.add_argument("--test-fraction", type=float, default=0.2)


def eval_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The parser of eval ``name`` (described by the first line of ``doc``), with the flags
    every eval takes."""
    parser = argparse.ArgumentParser(prog=f"python -m evals.{name}", description=doc.split("\n")[0])
    add_common_arguments(parser, limit=None)
    return parser


def run_eval(
    name: str,
    argv: Sequence[str] | None,
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
    plot: Callable[[dict[str, Any], Path], None],
    check: Callable[[argparse.Namespace], None] | None = None,
) -> int:
    """An eval's ``main``: parse ``argv``, ``check`` the flags (it raises ``SystemExit``),
    run, write ``<name>.json``, ``.md`` and ``.png`` under ``--results``, print the table."""
    args = parser.parse_args(argv)
    if check is not None:
        check(args)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    doc = run(args)
    text = markdown(doc)
    write_results(args.results, name, doc, text, lambda path: plot(doc, path))
    print(text)
    return 0


@contextlib.contextmanager
def workdir(args: argparse.Namespace, name: str, in_memory: bool = False) -> Iterator[Path]:
    """Where an eval's clusters keep their configs, logs and snapshots: ``--workdir/<name>``,
    or a temporary folder, removed when the eval succeeds and kept (with a message saying
    where) when it fails. ``in_memory`` puts a temporary folder on ``/dev/shm`` when there is
    one, so that snapshots' fsyncs cost nothing."""
    if args.workdir is not None:
        path = Path(args.workdir) / name
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    base = "/dev/shm" if in_memory and os.path.isdir("/dev/shm") else None
    path = Path(tempfile.mkdtemp(prefix=f"mps-eval-{name}-", dir=base))
    try:
        yield path
    except BaseException:
        print(f"{name}: failed; cluster logs kept in {path}", file=sys.stderr, flush=True)
        raise
    shutil.rmtree(path, ignore_errors=True)


def say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)
