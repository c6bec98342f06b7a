"""The numpy training loop: batch -> lookup -> forward/backward -> push.

A ``Trainer`` works with any store that has ``lookup_many`` and ``push_many``
(``PSClient``, or an in-process ``LocalStore`` in tests) and a model given as a
step function. Per batch it deduplicates each table's keys once (pad keys skipped,
grouped by the store's shards: a ``PSClient`` sends them without deduplicating them
again), looks them up, hands the step the rows laid out like the keys, sums the step's
row gradients per unique key, and pushes them. Dense arrays, when the model has
any, are pulled before the step and their gradients pushed after it. The step returns
gradients of the batch's summed loss (the scale ``PSClient.push`` expects), not of its mean.

Usage::

    trainer = Trainer(client, model.train_step, dense_store=client, pad_key=0)
    stats = trainer.run(stream.batches(256), total=num_batches)
    print(stats.mean_loss, stats.examples_per_second)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol, TextIO

import numpy as np

from ps_client.unique_keys import UniqueKeys, keys_for, unique_per_table

__all__ = [
    "Batch",
    "DenseParameterStore",
    "ProgressBar",
    "SparseStore",
    "StepResult",
    "Trainer",
    "TrainerStats",
    "UniqueKeys",
]


class Batch(Protocol):
    """What the trainer needs of a batch: uint64 keys per table, any shape, row = example."""

    @property
    def keys(self) -> Mapping[str, np.ndarray]: ...


class SparseStore(Protocol):
    """Embedding rows by key: ``PSClient`` or a ``LocalStore``."""

    def lookup_many(self, keys_by_table: Mapping[str, Any]) -> dict[str, np.ndarray]: ...

    def push_many(self, grads_by_table: Mapping[str, tuple[Any, np.ndarray]]) -> Any: ...


class DenseParameterStore(Protocol):
    """Named dense float32 arrays with a server-side optimizer."""

    def pull_dense(self) -> dict[str, np.ndarray]: ...

    def push_dense(self, grads: Mapping[str, np.ndarray]) -> Any: ...


@dataclasses.dataclass
class StepResult:
    """What a step function returns for one batch."""

    loss: float
    row_grads: Mapping[str, np.ndarray]  # per table, shaped like the rows the step was given
    dense_grads: Mapping[str, np.ndarray] | None = None
    predictions: np.ndarray | None = None  # (n,), before this batch's update


StepFn = Callable[[Any, Mapping[str, np.ndarray], Mapping[str, np.ndarray]], StepResult]


@dataclasses.dataclass
class TrainerStats:
    """Counters of one ``Trainer.run``."""

    batches: int = 0
    examples: int = 0
    loss_sum: float = 0.0  # sum over batches of loss * batch size
    keys_looked_up: int = 0  # unique keys sent, all tables
    keys_pushed: int = 0
    seconds: float = 0.0
    lookup_seconds: float = 0.0  # time spent waiting for rows
    push_seconds: float = 0.0
    interrupted: bool = False

    @property
    def mean_loss(self) -> float:
        """Example-weighted mean loss (NaN before the first batch)."""
        return self.loss_sum / self.examples if self.examples else math.nan

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else math.nan

    def as_dict(self) -> dict[str, float | int | bool]:
        return dataclasses.asdict(self) | {
            "mean_loss": self.mean_loss,
            "examples_per_second": self.examples_per_second,
        }


class ProgressBar:
    """Progress of a loop, drawn by ``tqdm.auto`` (a terminal bar, a widget in notebooks);
    ``update`` also sets the values shown after it. Needs tqdm (the ``trainer`` extra);
    ``enabled=None`` draws only when tqdm is installed. Outside a terminal it redraws at
    most every ``log_every`` seconds.

    Usage::

        with ProgressBar(total=100, desc="train") as bar:
            bar.update(1, loss=0.5)
    """

    def __init__(
        self,
        total: int | None,
        desc: str = "",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        log_every: float = 10.0,
    ) -> None:
        stream = sys.stderr if stream is None else stream
        self._bar = None
        if enabled is False:
            return
        try:
            from tqdm.auto import tqdm
        except ModuleNotFoundError:
            if enabled:
                raise ModuleNotFoundError(
                    "the progress bar needs tqdm: pip install 'monolith-ps[trainer]' "
                    "(or pass progress=False)",
                    name="tqdm",
                ) from None
            return
        tty = bool(getattr(stream, "isatty", lambda: False)())
        self._bar = tqdm(
            total=total, desc=desc, file=stream, mininterval=0.1 if tty else log_every,
            dynamic_ncols=True,
        )  # fmt: skip

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n`` and set the values shown after the bar."""
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class _StopOnInterrupt:
    """While active (main thread only), the first Ctrl-C asks the loop to stop after the
    current batch; a second one raises ``KeyboardInterrupt`` at once."""

    def __init__(self, stream: TextIO) -> None:
        self.requested = False
        self._stream = stream
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._stream.write("\nstopping after this batch (Ctrl-C again to abort)\n")
        self._stream.flush()

    def __enter__(self) -> _StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


@dataclasses.dataclass(eq=False)
class Trainer:
    """Runs ``step`` over batches, with rows from ``store`` and gradients pushed back to it.

    ``pad_key``: keys equal to it get zero rows and no updates (multi-hot padding).
    ``prefetch``: look up the next batch's rows while the current one computes; rows
    read that way may miss the current batch's update (one step of staleness).
    ``dense_store``: where dense arrays are pulled from and pushed to (None: no dense).
    ``stream``: where the progress bar and the stop notice go (None: stderr).
    """

    store: SparseStore
    step: StepFn
    _: dataclasses.KW_ONLY
    dense_store: DenseParameterStore | None = None
    pad_key: int | None = None
    prefetch: bool = False
    progress: bool | None = None
    desc: str = "train"
    stream: TextIO | None = None
    on_step: Callable[[Any, StepResult], None] | None = None

    def __post_init__(self) -> None:
        if self.stream is None:
            self.stream = sys.stderr

    def _dedup(self, batch: Batch) -> dict[str, UniqueKeys]:
        return unique_per_table(batch.keys, self.pad_key, self.store)

    def _lookup(self, batch: Batch) -> tuple[dict[str, UniqueKeys], dict[str, np.ndarray]]:
        unique = self._dedup(batch)
        rows = self.store.lookup_many({t: keys_for(self.store, u) for t, u in unique.items()})
        return unique, rows

    def run(self, batches: Iterable[Batch], total: int | None = None) -> TrainerStats:
        """Train on every batch (or until Ctrl-C); returns the run's counters."""
        stats = TrainerStats()
        start = time.monotonic()
        assert self.stream is not None  # set by __post_init__
        bar = ProgressBar(total, self.desc, self.stream, enabled=self.progress)
        pool = concurrent.futures.ThreadPoolExecutor(1) if self.prefetch else None
        try:
            with _StopOnInterrupt(self.stream) as stop:
                for batch, looked_up in self._with_rows(iter(batches), pool):
                    t0 = time.monotonic()
                    unique, unique_rows = looked_up.result() if pool else self._lookup(batch)
                    stats.lookup_seconds += time.monotonic() - t0
                    self._train_batch(batch, unique, unique_rows, stats)
                    bar.update(1, loss=stats.mean_loss)
                    if stop.requested:
                        stats.interrupted = True
                        break
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            stats.seconds = time.monotonic() - start
            bar.close()
        return stats

    def _with_rows(
        self, batches: Iterator[Batch], pool: concurrent.futures.ThreadPoolExecutor | None
    ) -> Iterator[tuple[Batch, Any]]:
        """Each batch with a future of its rows when prefetching (else None)."""
        if pool is None:
            for batch in batches:
                yield batch, None
            return
        current = next(batches, None)
        pending = pool.submit(self._lookup, current) if current is not None else None
        while current is not None:
            following = next(batches, None)
            # The next lookup runs while the caller computes and pushes the current batch.
            upcoming = pool.submit(self._lookup, following) if following is not None else None
            yield current, pending
            current, pending = following, upcoming

    def _train_batch(
        self,
        batch: Batch,
        unique: Mapping[str, UniqueKeys],
        unique_rows: Mapping[str, np.ndarray],
        stats: TrainerStats,
    ) -> None:
        rows = {table: u.gather(unique_rows[table]) for table, u in unique.items()}
        dense = self.dense_store.pull_dense() if self.dense_store is not None else {}
        result = self.step(batch, rows, dense)
        grads = {
            table: (keys_for(self.store, unique[table]), unique[table].sum_per_key(g))
            for table, g in result.row_grads.items()
            if unique[table].unique.size
        }
        t0 = time.monotonic()
        if grads:
            self.store.push_many(grads)
        if self.dense_store is not None and result.dense_grads:
            self.dense_store.push_dense(result.dense_grads)
        stats.push_seconds += time.monotonic() - t0
        n = _batch_size(batch)
        stats.batches += 1
        stats.examples += n
        stats.loss_sum += float(result.loss) * n
        stats.keys_looked_up += sum(int(u.unique.size) for u in unique.values())
        stats.keys_pushed += sum(int(unique[table].unique.size) for table in grads)
        if self.on_step is not None:
            self.on_step(batch, result)


def _batch_size(batch: Batch) -> int:
    for keys in batch.keys.values():
        return int(np.shape(keys)[0])
    return 0
