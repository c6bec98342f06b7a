"""A MovieLens release as a time-ordered stream of sparse feature IDs.

Every rating is one event: label 1 when the rating is >= 4. Its features are
sparse IDs made with ``make_fid(slot, value)`` and grouped by the PS table that
holds their rows:

- ``user`` and ``movie``: one ID each;
- ``genre``: the movie's genres, multi-hot, padded with ``PAD_KEY``;
- ``context``: one column per small-vocabulary field sharing one table (the slot
  in the high bits keeps their IDs apart): hour of day, day of week (UTC), the
  user's and the movie's number of earlier ratings (log2 buckets, counted causally
  along the stream) and the movie's release decade (its own ID when the year is unknown).

Any release GroupLens ships can be read (``releases.py`` finds it and parses its layout).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from examples.movielens.releases import (
    REPO_ROOT,
    UNKNOWN_YEAR,
    Movies,
    Ratings,
    find_dataset,
    layout_of,
    load_movies,
    load_ratings,
)
from ps_client import make_fid

__all__ = [
    "CONTEXT_FIELDS",
    "PAD_KEY",
    "UNKNOWN_DECADE",
    "Dataset",
    "Events",
    "encode_events",
    "load_dataset",
    "load_events",
]

PAD_KEY = 0  # an absent multi-hot entry; make_fid never returns it for slot >= 1
UNKNOWN_DECADE = -1  # the decade field of a movie of unknown year: its own ID, not decade 0

SLOT_USER = 1
SLOT_MOVIE = 2
SLOT_GENRE = 3
# Column order of the ``context`` table's key matrix.
CONTEXT_FIELDS: tuple[tuple[str, int], ...] = (
    ("hour", 4),
    ("weekday", 5),
    ("user_activity", 6),
    ("movie_popularity", 7),
    ("decade", 8),
)
_DAY = 86400


def _earlier_count(ids: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same id."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    group_start = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    group_len = np.diff(np.r_[group_start, ids.size])
    rank = np.arange(ids.size) - np.repeat(group_start, group_len)
    counts = np.empty(ids.size, dtype=np.int64)
    counts[order] = rank
    return counts


def _log2_bucket(counts: np.ndarray) -> np.ndarray:
    return np.floor(np.log2(counts + 1.0)).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Events:
    """A slice of the stream: keys per PS table, labels and timestamps, row-aligned."""

    keys: Mapping[str, np.ndarray]  # table -> uint64 (n,) or (n, width)
    labels: np.ndarray  # float32 (n,)
    timestamps: np.ndarray  # int64 (n,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def slice(self, start: int, stop: int) -> Events:
        """Events ``start:stop`` (views, no copy)."""
        return Events(
            keys={table: keys[start:stop] for table, keys in self.keys.items()},
            labels=self.labels[start:stop],
            timestamps=self.timestamps[start:stop],
        )

    def batches(self, batch_size: int) -> Iterator[Events]:
        """Consecutive slices of at most ``batch_size`` events, in stream order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self.slice(start, min(start + batch_size, len(self)))

    def map_keys(self, transform: Callable[[str, np.ndarray], np.ndarray]) -> Events:
        """The same events with each table's keys replaced by ``transform(table, keys)``
        (same shape, uint64); pad keys stay pads. E.g. hashing IDs into fixed buckets."""
        keys = {}
        for table, old in self.keys.items():
            new = np.asarray(transform(table, old), dtype=np.uint64)
            if new.shape != old.shape:
                raise ValueError(f"transform changed the shape of {table!r} keys: {new.shape}")
            keys[table] = np.where(old == PAD_KEY, np.uint64(PAD_KEY), new)
        return Events(keys=keys, labels=self.labels, timestamps=self.timestamps)

    def windows(self, num_windows: int) -> list[Events]:
        """The stream cut into ``num_windows`` consecutive windows of near-equal size."""
        if not 1 <= num_windows <= len(self):
            raise ValueError(f"num_windows must be in [1, {len(self)}], got {num_windows}")
        bounds = np.linspace(0, len(self), num_windows + 1).astype(np.int64)
        return [self.slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def encode_events(ratings: Ratings, movies: Movies) -> Events:
    """Feature IDs for every rating (see the module docstring for the fields)."""
    n = len(ratings)
    movie_row = np.searchsorted(movies.movie, ratings.movie)
    movie_row = np.minimum(movie_row, movies.movie.size - 1)
    known = movies.movie[movie_row] == ratings.movie
    genre_idx = np.where(known[:, None], movies.genres[movie_row], -1)
    genre_keys = make_fid(SLOT_GENRE, np.maximum(genre_idx, 0)).reshape(genre_idx.shape)
    genre_keys[genre_idx < 0] = PAD_KEY
    year = np.where(known, movies.year[movie_row], UNKNOWN_YEAR)

    ts = ratings.timestamp
    context_values = {
        "hour": (ts // 3600) % 24,
        "weekday": (ts // 86400 + 3) % 7,  # 1970-01-01 was a Thursday; Monday = 0
        "user_activity": _log2_bucket(_earlier_count(ratings.user)),
        "movie_popularity": _log2_bucket(_earlier_count(ratings.movie)),
        "decade": np.where(year == UNKNOWN_YEAR, UNKNOWN_DECADE, year // 10),
    }
    context = np.empty((n, len(CONTEXT_FIELDS)), dtype=np.uint64)
    for column, (name, slot) in enumerate(CONTEXT_FIELDS):
        context[:, column] = make_fid(slot, context_values[name])
    return Events(
        keys={
            "user": make_fid(SLOT_USER, ratings.user),
            "movie": make_fid(SLOT_MOVIE, ratings.movie),
            "genre": genre_keys,
            "context": context,
        },
        labels=(ratings.rating >= 4.0).astype(np.float32),
        timestamps=ts,
    )


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Which data a stream came from: the release's folder and layout, how many ratings
    the stream holds (of how many in the release) and the time they span."""

    path: Path
    layout: str
    ratings: int
    ratings_in_release: int
    first_timestamp: int
    last_timestamp: int

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def span_seconds(self) -> int:
        return self.last_timestamp - self.first_timestamp

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": _shown(self.path),
            "layout": self.layout,
            "ratings": self.ratings,
            "ratings_in_release": self.ratings_in_release,
            "first": _date(self.first_timestamp),
            "last": _date(self.last_timestamp),
            "span_days": round(self.span_seconds / _DAY, 1),
        }

    def describe(self) -> str:
        """One sentence for a result's Markdown."""
        return describe_dataset(self.as_dict())


def describe_dataset(info: Mapping[str, Any]) -> str:
    """``Dataset.describe`` of a result's ``dataset`` entry (as written to JSON)."""
    days = float(info["span_days"])
    span = f"{days / 365.25:.1f} years" if days >= 730 else f"{days:g} days"
    count = f"{info['ratings']:,} ratings"
    if info["ratings_in_release"] != info["ratings"]:
        count = f"the first {info['ratings']:,} of its {info['ratings_in_release']:,} ratings"
    return (
        f"Data: {info['name']} (`{info['layout']}` layout, {info['path']}): {count}, "
        f"{info['first']} to {info['last']} ({span})."
    )


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (results name no machine)."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _date(timestamp: int) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d")


def load_dataset(path: Path | None = None, limit: int | None = None) -> tuple[Events, Dataset]:
    """The stream of the release at ``path`` (see ``find_dataset`` for the search when
    None), or its first ``limit`` events, and what it is."""
    folder = find_dataset(path).resolve()
    ratings = load_ratings(folder)
    total = len(ratings)
    if limit is not None:
        ratings = ratings.head(limit)
    if len(ratings) == 0:
        raise ValueError(f"{folder} holds no ratings")
    events = encode_events(ratings, load_movies(folder))
    layout = layout_of(folder)
    dataset = Dataset(
        path=folder,
        layout=layout.ratings_file if layout is not None else "?",
        ratings=len(events),
        ratings_in_release=total,
        first_timestamp=int(events.timestamps[0]),
        last_timestamp=int(events.timestamps[-1]),
    )
    return events, dataset


def load_events(path: Path | None = None, limit: int | None = None) -> Events:
    """The whole stream (or its first ``limit`` events), ready to train on."""
    return load_dataset(path, limit)[0]
