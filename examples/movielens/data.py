"""MovieLens ml-latest-small as a time-ordered stream of sparse feature IDs.

Every rating is one event: label 1 when the rating is >= 4. Its features are
sparse IDs made with ``make_fid(slot, value)`` and grouped by the PS table that
holds their rows:

- ``user`` and ``movie``: one ID each;
- ``genre``: the movie's genres, multi-hot, padded with ``PAD_KEY``;
- ``context``: one column per small-vocabulary field sharing one table (the slot
  in the high bits keeps their IDs apart): hour of day, day of week (UTC), the
  user's and the movie's number of earlier ratings (log2 buckets, counted causally
  along the stream) and the movie's release decade.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from ps_client import make_fid

__all__ = [
    "CONTEXT_FIELDS",
    "DATASET_NAME",
    "DATA_ENV_VAR",
    "PAD_KEY",
    "DatasetNotFoundError",
    "Events",
    "Ratings",
    "encode_events",
    "find_dataset",
    "load_events",
    "load_movies",
    "load_ratings",
]

DATASET_NAME = "ml-latest-small"
DATA_ENV_VAR = "MONOLITH_PS_DATA"
PAD_KEY = 0  # an absent multi-hot entry; make_fid never returns it for slot >= 1

REPO_ROOT = Path(__file__).resolve().parents[2]

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

_YEAR_RE = re.compile(r"\((\d{4})\)\s*$")
_HOW_TO_GET = (
    "MovieLens {name} was not found. Looked in:\n{looked}\n"
    "Get it from GroupLens (https://grouplens.org/datasets/movielens/, file {name}.zip), "
    "unzip it so that {name}/ratings.csv, movies.csv and README.txt (its license) sit "
    "together, and put that folder in data/ of the repository, or in ../shared/data/ "
    "beside the repository, or point ${env} at it."
)


class DatasetNotFoundError(FileNotFoundError):
    """ml-latest-small is in none of the places the examples look."""


def _candidate_dirs(repo_root: Path) -> list[Path]:
    candidates = []
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        candidates += [Path(env), Path(env) / DATASET_NAME]
    candidates += [
        repo_root / "data" / DATASET_NAME,
        repo_root.parent / "shared" / "data" / DATASET_NAME,
    ]
    return candidates


def find_dataset(repo_root: Path | None = None, path: Path | None = None) -> Path:
    """The ml-latest-small folder: ``path`` if given, else ``$MONOLITH_PS_DATA``, ``data/``
    in the repository or ``../shared/data`` beside it."""
    if path is not None:
        candidates = [Path(path), Path(path) / DATASET_NAME]
    else:
        candidates = _candidate_dirs(REPO_ROOT if repo_root is None else Path(repo_root))
    for path in candidates:
        if (path / "ratings.csv").is_file() and (path / "movies.csv").is_file():
            return path
    looked = "\n".join(f"  {path}" for path in candidates)
    raise DatasetNotFoundError(
        _HOW_TO_GET.format(name=DATASET_NAME, looked=looked, env=DATA_ENV_VAR)
    )


@dataclasses.dataclass(frozen=True)
class Ratings:
    """All ratings as columns, in timestamp order (ties keep file order)."""

    user: np.ndarray  # int64
    movie: np.ndarray  # int64
    rating: np.ndarray  # float32
    timestamp: np.ndarray  # int64, Unix seconds

    def __len__(self) -> int:
        return int(self.user.shape[0])


@dataclasses.dataclass(frozen=True)
class Movies:
    """Per movie: its genres as indices into ``genre_names`` (-1 padded) and release year."""

    movie: np.ndarray  # int64, sorted
    genres: np.ndarray  # int64 (num_movies, max_genres), -1 = none
    year: np.ndarray  # int64, 0 = unknown
    genre_names: tuple[str, ...]


def load_ratings(dataset_dir: Path) -> Ratings:
    """Parse ``ratings.csv`` (CRLF lines, header) and sort it by timestamp."""
    raw = (Path(dataset_dir) / "ratings.csv").read_bytes()
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    order = np.argsort(table[:, 3], kind="stable")
    table = table[order]
    return Ratings(
        user=table[:, 0].astype(np.int64),
        movie=table[:, 1].astype(np.int64),
        rating=table[:, 2].astype(np.float32),
        timestamp=table[:, 3].astype(np.int64),
    )


def load_movies(dataset_dir: Path) -> Movies:
    """Parse ``movies.csv``: genres split on ``|`` and the year from the title's ``(YYYY)``."""
    with open(Path(dataset_dir) / "movies.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:]
    genre_lists = [row[2].split("|") for row in rows]
    genre_names = tuple(sorted({g for genres in genre_lists for g in genres}))
    genre_index = {name: i for i, name in enumerate(genre_names)}
    width = max(len(genres) for genres in genre_lists)
    genres = np.full((len(rows), width), -1, dtype=np.int64)
    for i, names in enumerate(genre_lists):
        genres[i, : len(names)] = [genre_index[name] for name in names]
    years = [_YEAR_RE.search(row[1].strip()) for row in rows]
    movie = np.array([int(row[0]) for row in rows], dtype=np.int64)
    year = np.array([int(m.group(1)) if m else 0 for m in years], dtype=np.int64)
    order = np.argsort(movie)
    return Movies(movie[order], genres[order], year[order], genre_names)


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
    year = np.where(known, movies.year[movie_row], 0)

    ts = ratings.timestamp
    context_values = {
        "hour": (ts // 3600) % 24,
        "weekday": (ts // 86400 + 3) % 7,  # 1970-01-01 was a Thursday; Monday = 0
        "user_activity": _log2_bucket(_earlier_count(ratings.user)),
        "movie_popularity": _log2_bucket(_earlier_count(ratings.movie)),
        "decade": year // 10,
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


def load_events(dataset_dir: Path | None = None, limit: int | None = None) -> Events:
    """The whole stream (or its first ``limit`` events), ready to train on."""
    dataset_dir = find_dataset() if dataset_dir is None else Path(dataset_dir)
    ratings = load_ratings(dataset_dir)
    if limit is not None:
        ratings = Ratings(*(getattr(ratings, f.name)[:limit] for f in dataclasses.fields(Ratings)))
    return encode_events(ratings, load_movies(dataset_dir))
