"""Training and scoring runs of the evals: the trainer over a stream through the training
PS, the time-split run (train, sync, score through serving), seeded repetitions and their
summaries, and the map from the stream's time to the servers' clocks."""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evals.cli import say, workdir
from evals.cluster import EvalCluster
from evals.results import mean_and_spread
from examples.movielens.data import PAD_KEY, Events
from examples.movielens.metrics import log_loss, roc_auc
from ps_client.trainer import StepResult, Trainer, TrainerStats

__all__ = [
    "StreamClock",
    "TrainResult",
    "compare_with_first",
    "found_fraction",
    "seeded_runs",
    "summarize_runs",
    "time_split_run",
    "train",
    "train_and_score",
]


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
    loss, rows and the tables' bytes (at the end, and empty at the start)."""
    memory_at_start = cluster.memory_bytes()  # empty tables: index, sketch, no rows
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
        "memory_bytes_at_start": memory_at_start,
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
