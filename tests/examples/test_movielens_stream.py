"""The MovieLens stream: data loading, the model built from the demo config, and learning
through the real table engine in-process (``LocalStore``)."""

from __future__ import annotations

import numpy as np
import pytest

from examples.movielens import data
from examples.movielens.metrics import roc_auc
from examples.movielens.stream import DEFAULT_CONFIG, build_model
from monolith_ps.config import load_config
from ps_client.trainer import Trainer, UniqueKeys
from ps_server.local_store import LocalStore


@pytest.fixture(scope="module")
def events() -> data.Events:
    return data.load_events(limit=50_000)


def test_events_are_time_ordered_and_keyed_per_table(events):
    assert len(events) == 50_000
    assert np.all(np.diff(events.timestamps) >= 0)
    assert 0.3 < events.labels.mean() < 0.7
    assert events.keys["user"].shape == (50_000,) and events.keys["movie"].dtype == np.uint64
    genres = events.keys["genre"]
    assert (
        genres.ndim == 2 and (genres == data.PAD_KEY).any() and (genres[:, 0] != data.PAD_KEY).all()
    )
    context = events.keys["context"]
    assert context.shape == (50_000, len(data.CONTEXT_FIELDS)) and (context != data.PAD_KEY).all()
    # Each context column is its own slot: no ID is shared between two columns.
    columns = [set(np.unique(context[:, c]).tolist()) for c in range(context.shape[1])]
    assert sum(len(c) for c in columns) == len(set().union(*columns))
    assert len(columns[0]) == 24 and len(columns[1]) == 7  # hours, weekdays


def test_activity_buckets_count_only_earlier_events():
    user = np.array([7, 7, 3, 7, 3, 7])
    np.testing.assert_array_equal(data._earlier_count(user), [0, 1, 0, 2, 1, 3])


def test_windows_cover_the_stream_in_order(events):
    windows = events.windows(7)
    assert sum(len(w) for w in windows) == len(events)
    assert all(
        w1.timestamps[-1] <= w2.timestamps[0]
        for w1, w2 in zip(windows[:-1], windows[1:], strict=True)
    )
    with pytest.raises(ValueError, match="num_windows"):
        events.windows(0)


def test_map_keys_transforms_every_table_and_keeps_pads(events):
    small = events.slice(0, 100)
    hashed = small.map_keys(lambda table, keys: keys % np.uint64(7) + np.uint64(1))
    for table, keys in hashed.keys.items():
        original = small.keys[table]
        pads = original == data.PAD_KEY
        assert np.all(keys[pads] == data.PAD_KEY) and np.all(
            (keys[~pads] >= 1) & (keys[~pads] <= 7)
        )
    with pytest.raises(ValueError, match="shape"):
        small.map_keys(lambda table, keys: keys.ravel()[:1])


def test_build_model_reads_factor_size_and_mlp_width_from_the_config():
    config = load_config(DEFAULT_CONFIG)
    model = build_model(config)
    assert model.row_dim == config.table("user").dim
    assert model.dense_sizes() == {d.name: d.size for d in config.dense}


def _score(store, model, events):
    unique = {t: UniqueKeys.from_keys(k, data.PAD_KEY) for t, k in events.keys.items()}
    rows = {t: u.gather(store.lookup_many({t: u.unique})[t]) for t, u in unique.items()}
    return roc_auc(events.labels, model.predict(events, rows, store.pull_dense()))


def test_model_learns_the_stream_through_the_table_engine(events):
    """Train on the first 40k ratings, score the next 10k: clearly better than chance, and
    than the same model before training."""
    store = LocalStore.from_config(DEFAULT_CONFIG)
    model = build_model(store.config)
    train, test = events.slice(0, 40_000), events.slice(40_000, 50_000)
    untrained_auc = _score(LocalStore.from_config(DEFAULT_CONFIG), model, test)
    stats = Trainer(
        store, model.train_step, dense_store=store, pad_key=data.PAD_KEY, progress=False
    ).run(train.batches(256))
    assert stats.examples == 40_000 and stats.mean_loss < 0.66
    auc = _score(store, model, test)
    assert auc > 0.66, auc
    assert auc > untrained_auc + 0.1
    # One row per distinct ID seen (collisionless), plus the test slice's new IDs.
    seen = {t: np.unique(k[k != data.PAD_KEY]).size for t, k in events.keys.items()}
    assert store.num_rows() == seen
