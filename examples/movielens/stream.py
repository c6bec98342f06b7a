"""Online training on the MovieLens stream, window by window, served through the PS.

For each window of the time-ordered stream, ``OnlineLoop`` trains on it through the
training PS (recording each batch's predictions before its update: progressive
validation), waits until the serving PS has the update (``SyncWaiter``, which reads
the same cursors the sync agent writes), then scores the NEXT window through the
serving PS only (``ServingScorer``: find-only lookups and the synced dense arrays).
The pieces take plain clients, so other experiments can swap how and when serving
gets synced, which keys go to the PS, or the config the cluster runs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from examples.movielens.data import CONTEXT_FIELDS, PAD_KEY, Events
from examples.movielens.metrics import log_loss, roc_auc
from examples.movielens.model import FactorizationMachine, Field
from ps_client.client import PSClient
from ps_client.trainer import ProgressBar, StepResult, Trainer
from ps_client.unique_keys import keys_for, unique_per_table
from sync_agent.router import can_share_keys

__all__ = [
    "DEFAULT_CONFIG",
    "FIELDS",
    "OnlineLoop",
    "ServingScorer",
    "SyncReport",
    "SyncTimeoutError",
    "SyncWaiter",
    "WindowReport",
    "build_model",
]

DEFAULT_CONFIG = Path(__file__).resolve().parent / "tables.yaml"

FIELDS: tuple[Field, ...] = (
    Field("user", "user"),
    Field("movie", "movie"),
    Field("genre", "genre", pooled=True),
    *(Field(name, "context", column=i) for i, (name, _) in enumerate(CONTEXT_FIELDS)),
)


def build_model(config: Any, fields: Sequence[Field] = FIELDS) -> FactorizationMachine:
    """The FM that a cluster config describes: factor size from the tables' ``dim`` (minus
    the first-order column), MLP width from the size of the dense array ``mlp_b1``."""
    tables = {field.table for field in fields}
    dims = {t.dim for t in config.tables if t.name in tables}
    missing = tables - {t.name for t in config.tables}
    if missing:
        raise ValueError(f"the config has no table {sorted(missing)[0]!r} that the model reads")
    if len(dims) != 1 or min(dims) < 2:
        raise ValueError(f"the model's tables must share one dim >= 2, got {sorted(dims)}")
    dense = {d.name: d.size for d in config.dense}
    model = FactorizationMachine(fields, factor_dim=dims.pop() - 1, hidden=dense.get("mlp_b1", 0))
    for name, size in model.dense_sizes().items():
        if dense.get(name) != size:
            raise ValueError(f"the config's dense array {name!r} must have size {size}")
    return model


# ---------------------------------------------------------------------- serving


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """Predictions for a slice of events and how many of their keys serving had rows for."""

    predictions: np.ndarray
    keys_asked: int  # unique keys per batch, all tables
    keys_found: int


@dataclasses.dataclass
class ServingScorer:
    """Scores events with rows and dense arrays read from a serving cluster, never training."""

    client: Any
    model: FactorizationMachine
    batch_size: int = 4096
    pad_key: int = PAD_KEY
    # unique keys per batch sent to serving, all tables, all calls
    keys_asked: int = dataclasses.field(default=0, init=False)

    def score(self, events: Events) -> ScoreResult:
        dense = self.client.pull_dense() if self.model.dense_sizes() else {}
        predictions, asked, found = [], 0, 0
        for batch in events.batches(self.batch_size):
            unique = unique_per_table(batch.keys, self.pad_key, self.client)
            answers = self.client.lookup_many(
                {t: keys_for(self.client, u) for t, u in unique.items()}, with_found=True
            )
            rows = {t: u.gather(answers[t][0]) for t, u in unique.items()}
            asked += sum(int(u.unique.size) for u in unique.values())
            found += sum(int(mask.sum()) for _, mask in answers.values())
            predictions.append(self.model.predict(batch, rows, dense))
        self.keys_asked += asked
        return ScoreResult(np.concatenate(predictions), asked, found)


# ---------------------------------------------------------------------- sync


class SyncTimeoutError(TimeoutError):
    """Serving did not catch up with training in time; the message says what lagged."""


@dataclasses.dataclass(frozen=True)
class SyncReport:
    """How far serving was behind training when asked, and how long it took to catch up."""

    versions_behind: int  # sum over tables, source shards and replicas, when the wait began
    dense_versions_behind: int
    seconds: float  # from the start of the wait until every replica had everything


class SyncWaiter:
    """Waits until every serving replica has applied what training holds now.

    Training tells its epoch and table versions (``DescribeTables``) and the dense
    version (``PullDense``); each serving replica tells what it applied per table and
    training shard (``GetSyncState``). Caught up = every cursor of a training shard whose
    keys can route to the replica has the shard's epoch and at least its version, and
    the dense version is reached.
    """

    def __init__(
        self,
        training: Any,
        serving_addresses: Sequence[str],
        tables: Sequence[str],
        with_dense: bool = True,
        poll_interval: float = 0.05,
    ) -> None:
        self.training = training
        self.tables = tuple(tables)
        self.with_dense = with_dense
        self.poll_interval = poll_interval
        self._training_shards = 0
        # One client per replica: replicas of one shard all say "shard i of n".
        self._serving = [PSClient([a]) for a in serving_addresses]

    def close(self) -> None:
        for client in self._serving:
            client.close()

    def _targets(self) -> tuple[dict[tuple[str, int], tuple[int, int]], int]:
        """(table, training shard) -> (epoch, version), and the training dense version."""
        targets = {}
        shards = self.training.describe()
        self._training_shards = len(shards)
        for shard in shards:
            for name in self.tables:
                targets[(name, shard.shard_index)] = (shard.epoch, shard.tables[name].version)
        dense_version = 0
        if self.with_dense:
            _, dense_version = self.training.pull_dense(["bias"], with_version=True, timeout=10)
        return targets, dense_version

    def _behind(
        self, targets: Mapping[tuple[str, int], tuple[int, int]], dense_version: int
    ) -> tuple[int, int, str]:
        """Versions still missing (sparse, dense) over all replicas, and the first gap."""
        sparse = dense = 0
        first = ""
        for replica, client in enumerate(self._serving):
            (state,) = client.sync_state(timeout=10)
            cursors = {(c.table, c.source_shard): c for c in state.cursors}
            for key, (epoch, version) in targets.items():
                if version == 0 or not can_share_keys(
                    key[1], self._training_shards, state.shard_index, state.num_shards
                ):
                    continue
                cursor = cursors.get(key)
                have = cursor.version if cursor is not None and cursor.epoch == epoch else 0
                if have < version:
                    sparse += version - have
                    first = first or (
                        f"replica {replica}: table {key[0]!r} of training shard {key[1]} "
                        f"at version {have} < {version}"
                    )
            if state.dense_version < dense_version:
                dense += dense_version - state.dense_version
                first = (
                    first or f"replica {replica}: dense at {state.dense_version} < {dense_version}"
                )
        return sparse, dense, first

    def wait(self, timeout: float = 60.0) -> SyncReport:
        """Block until serving has everything training holds at the call; ``SyncTimeoutError``
        after ``timeout`` seconds."""
        start = time.monotonic()
        targets, dense_version = self._targets()
        sparse0, dense0, gap = self._behind(targets, dense_version)
        sparse, dense = sparse0, dense0
        while sparse or dense:
            if time.monotonic() - start > timeout:
                raise SyncTimeoutError(f"serving did not catch up within {timeout:g}s: {gap}")
            time.sleep(self.poll_interval)
            sparse, dense, gap = self._behind(targets, dense_version)
        return SyncReport(sparse0, dense0, time.monotonic() - start)


# ---------------------------------------------------------------------- the loop


@dataclasses.dataclass(frozen=True)
class WindowReport:
    """One row of the demo's table."""

    window: int
    first_timestamp: int  # Unix seconds of the window's first event
    train_events: int
    train_auc: float  # progressive validation: each batch scored before its own update
    train_logloss: float
    train_seconds: float
    serve_events: int  # events of the next window, scored through serving
    serve_first_timestamp: int
    serving_auc: float
    serving_logloss: float
    serving_found: float  # fraction of scoring keys that serving had a row for
    sync_seconds: float  # wait until serving had this window's updates
    sync_versions_behind: int
    training_rows: int
    serving_rows: int

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in dataclasses.asdict(self).items()
        }


class OnlineLoop:
    """Train window i through ``training``; sync; score window i+1 through ``scorer``.

    ``sync`` is called after each window's training and returns a ``SyncReport`` (the
    demo waits for the agent; an experiment may sync on its own schedule). ``rows``
    returns (training rows, serving rows) for the report.
    """

    def __init__(
        self,
        training: Any,
        model: FactorizationMachine,
        scorer: ServingScorer,
        sync: Callable[[], SyncReport],
        rows: Callable[[], tuple[int, int]] | None = None,
        batch_size: int = 256,
        prefetch: bool = False,
        progress: bool = True,
    ) -> None:
        self.model = model
        self.scorer = scorer
        self.sync = sync
        self.rows = rows
        self.batch_size = batch_size
        self.progress = progress
        self._predictions: list[np.ndarray] = []
        self.trainer = Trainer(
            training,
            model.train_step,
            dense_store=training if model.dense_sizes() else None,
            pad_key=PAD_KEY,
            prefetch=prefetch,
            progress=False,
            on_step=self._on_step,
        )
        self._bar: ProgressBar | None = None
        self.interrupted = False
        self._trained: list[tuple[np.ndarray, np.ndarray]] = []  # (labels, predictions)
        self._scored: list[tuple[np.ndarray, np.ndarray]] = []

    def trained_labels_and_predictions(self) -> tuple[np.ndarray, np.ndarray]:
        """Every trained event's label and its prediction before the update, in order."""
        return _concat(self._trained)

    def scored_labels_and_predictions(self) -> tuple[np.ndarray, np.ndarray]:
        """Every event scored through serving, with its label, in order."""
        return _concat(self._scored)

    def _on_step(self, batch: Events, result: StepResult) -> None:
        self._predictions.append(result.predictions)
        if self._bar is not None:
            self._bar.update(len(batch))

    def run(
        self,
        windows: Sequence[Events],
        on_window: Callable[[WindowReport], None] | None = None,
    ) -> list[WindowReport]:
        """Reports for windows 0..len-2 (the last window is only scored, not trained)."""
        total = sum(len(w) for w in windows[:-1])
        reports: list[WindowReport] = []
        self._bar = ProgressBar(total, "stream", enabled=self.progress)
        try:
            for i, (window, following) in enumerate(zip(windows[:-1], windows[1:], strict=True)):
                self._predictions.clear()
                stats = self.trainer.run(window.batches(self.batch_size))
                if stats.interrupted:
                    self.interrupted = True
                    break
                trained = np.concatenate(self._predictions)
                synced = self.sync()
                scored = self.scorer.score(following)
                self._trained.append((window.labels, trained))
                self._scored.append((following.labels, scored.predictions))
                training_rows, serving_rows = self.rows() if self.rows else (-1, -1)
                report = WindowReport(
                    window=i,
                    first_timestamp=int(window.timestamps[0]),
                    train_events=len(window),
                    train_auc=roc_auc(window.labels, trained),
                    train_logloss=log_loss(window.labels, trained),
                    train_seconds=stats.seconds,
                    serve_events=len(following),
                    serve_first_timestamp=int(following.timestamps[0]),
                    serving_auc=roc_auc(following.labels, scored.predictions),
                    serving_logloss=log_loss(following.labels, scored.predictions),
                    serving_found=scored.keys_found / max(scored.keys_asked, 1),
                    sync_seconds=synced.seconds,
                    sync_versions_behind=synced.versions_behind,
                    training_rows=training_rows,
                    serving_rows=serving_rows,
                )
                reports.append(report)
                self._bar.update(0, window=i, serving_auc=round(report.serving_auc, 4))
                if on_window is not None:
                    on_window(report)
        finally:
            self._bar.close()
            self._bar = None
        return reports


def _concat(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not pairs:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs])
