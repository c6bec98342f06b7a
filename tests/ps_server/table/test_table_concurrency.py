"""Threads looking up and pushing to one table at once (kernels run without the GIL)."""

from __future__ import annotations

import threading
import time

import numpy as np

from monolith_ps.table_config import TableConfig
from ps_server.table import EmbeddingTable


def test_concurrent_lookups_pushes_and_deletes_stay_consistent():
    table = EmbeddingTable(
        TableConfig(
            name="t", dim=8, optimizer="sgd", optimizer_args={"lr": 1.0}, initializer="zeros"
        )
    )
    pushes_per_thread = 150
    errors: list[BaseException] = []
    deadline = time.monotonic() + 30

    def pusher(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(pushes_per_thread):
                if time.monotonic() > deadline:
                    return
                keys = rng.integers(0, 5000, 256).astype(np.uint64)
                table.find_or_insert(keys)
                table.apply_gradients(keys, np.ones((256, 8), np.float32))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(300):
                if time.monotonic() > deadline:
                    return
                values, found = table.find(rng.integers(0, 5000, 512).astype(np.uint64))
                # every row is all zeros minus whole pushes: its coordinates stay equal
                assert (values == values[:, :1]).all()
                assert np.all(values[~found] == 0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=pusher, args=(i,)) for i in range(3)]
    threads += [threading.Thread(target=reader, args=(10 + i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    d = table.export_since(0, with_state=True)
    # each row moved by exactly one unit per push it counted
    np.testing.assert_array_equal(d.values[:, 0], -d.push_counts.astype(np.float32))
    assert int(d.push_counts.sum()) == 3 * pushes_per_thread * 256
    assert len(np.unique(d.versions)) == len(d)  # every change took its own version
    assert d.versions.max() == table.version
