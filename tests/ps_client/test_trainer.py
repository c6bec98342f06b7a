"""The numpy training loop: gradient sums per unique key, prefetch, dense arrays, Ctrl-C."""

from __future__ import annotations

import io
import os
import signal
import threading
import types

import numpy as np
import pytest

from ps_client.trainer import ProgressBar, StepResult, Trainer

_DIM = 3


class _RecordingStore:
    """Rows are a fixed function of the key; every call is recorded."""

    def __init__(self):
        self.lookups: list[dict[str, np.ndarray]] = []
        self.pushes: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
        self.dense = {"bias": np.zeros(1, np.float32)}
        self.dense_pushes: list[dict[str, np.ndarray]] = []

    @staticmethod
    def row_of(keys):
        return (keys.astype(np.float32)[:, None] * np.arange(1, _DIM + 1, dtype=np.float32)) % 7

    def lookup_many(self, keys_by_table):
        self.lookups.append({t: k.copy() for t, k in keys_by_table.items()})
        return {t: self.row_of(k) for t, k in keys_by_table.items()}

    def push_many(self, grads_by_table):
        self.pushes.append({t: (k.copy(), g.copy()) for t, (k, g) in grads_by_table.items()})

    def pull_dense(self):
        return {k: v.copy() for k, v in self.dense.items()}

    def push_dense(self, grads):
        self.dense_pushes.append(dict(grads))
        self.dense["bias"] -= grads["bias"]


def _batches(num_batches=5, n=8, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_batches):
        multi = rng.integers(1, 6, (n, 3)).astype(np.uint64)
        multi[:, 2] = 0
        out.append(
            types.SimpleNamespace(keys={"a": rng.integers(1, 6, n).astype(np.uint64), "m": multi})
        )
    return out


def _step_echo_rows(batch, rows, dense):
    """Gradient = the row itself, so pushed sums are checkable."""
    return StepResult(
        loss=1.0,
        row_grads={t: r.copy() for t, r in rows.items()},
        dense_grads={"bias": np.ones(1, np.float32)},
    )


@pytest.mark.parametrize("prefetch", [False, True])
def test_trainer_pushes_summed_gradients_of_unique_keys(prefetch):
    store = _RecordingStore()
    batches = _batches()
    stats = Trainer(
        store, _step_echo_rows, dense_store=store, pad_key=0, prefetch=prefetch, progress=False
    ).run(batches)
    assert stats.batches == 5 and stats.examples == 40 and not stats.interrupted
    assert stats.mean_loss == pytest.approx(1.0)
    assert len(store.pushes) == 5 and len(store.dense_pushes) == 5
    assert store.dense["bias"][0] == pytest.approx(-5.0)
    for batch, lookup, push in zip(batches, store.lookups, store.pushes, strict=True):
        for table, keys in batch.keys.items():
            live = keys[keys != 0].ravel()
            in_order = live[np.sort(np.unique(live, return_index=True)[1])]
            np.testing.assert_array_equal(lookup[table], in_order)
            pushed_keys, pushed = push[table]
            np.testing.assert_array_equal(pushed_keys, in_order)
            counts = np.array([(live == k).sum() for k in pushed_keys], np.float32)
            np.testing.assert_allclose(pushed, store.row_of(pushed_keys) * counts[:, None])
    assert (
        stats.keys_pushed
        == stats.keys_looked_up
        == sum(len(np.unique(k[k != 0])) for b in batches for k in b.keys.values())
    )


def test_prefetch_looks_up_the_next_batch_before_the_current_push():
    events = []
    second_lookup = threading.Event()

    class Store(_RecordingStore):
        def lookup_many(self, keys_by_table):
            events.append("lookup")
            if events.count("lookup") == 2:
                second_lookup.set()
            return super().lookup_many(keys_by_table)

        def push_many(self, grads_by_table):
            events.append("push")
            return super().push_many(grads_by_table)

    def slow_step(batch, rows, dense):
        # The first step lasts until the next batch's lookup has started beside it (a
        # trainer without prefetch never starts it: the wait times out, the order is wrong).
        if events.count("push") == 0:
            second_lookup.wait(timeout=10)
        return _step_echo_rows(batch, rows, dense)

    Trainer(Store(), slow_step, prefetch=True, progress=False).run(_batches(3))
    assert events[:3] == ["lookup", "lookup", "push"]


def test_first_ctrl_c_stops_after_the_batch_and_restores_the_handler():
    store = _RecordingStore()
    before = signal.getsignal(signal.SIGINT)
    out = io.StringIO()

    def interrupt_on_second(batch, result):
        if len(store.pushes) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    stats = Trainer(
        store, _step_echo_rows, progress=False, stream=out, on_step=interrupt_on_second
    ).run(_batches(5))
    assert stats.interrupted and stats.batches == 2 and len(store.pushes) == 2
    assert "stopping after this batch" in out.getvalue()
    assert signal.getsignal(signal.SIGINT) is before


def test_progress_bar_is_tqdm_with_counts_and_fields():
    out = io.StringIO()
    with ProgressBar(total=4, desc="train", stream=out, log_every=0.0) as bar:
        assert type(bar._bar).__module__.startswith("tqdm")
        bar.update(2, loss=0.25)
    text = out.getvalue()
    assert "train:" in text and "2/4" in text and "loss=0.25" in text
    silent = io.StringIO()
    with ProgressBar(total=4, stream=silent, enabled=False) as bar:
        bar.update(4)
    assert silent.getvalue() == ""
