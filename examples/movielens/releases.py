"""MovieLens releases as GroupLens ships them, recognised by their files.

Three layouts cover the releases:

- ``ratings.csv`` and ``movies.csv`` (UTF-8, header line): ml-latest-small, ml-latest,
  ml-20m, ml-25m, ml-32m;
- ``ratings.dat`` and ``movies.dat`` (``::``-separated, Latin-1, no header): ml-1m, ml-10m;
- ``u.data`` (tab-separated) and ``u.item`` (``|``-separated, Latin-1, one 0/1 flag per
  genre; the genre names from ``u.genre`` when present): ml-100k.

``find_dataset`` says where a release is (``--data``, then ``$MONOLITH_PS_DATA``, then
``data/`` of the repository or ``../shared/data`` beside it); ``load_ratings`` and
``load_movies`` read one in any layout into the same columns.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = [
    "DATA_ENV_VAR",
    "DEFAULT_DATASET",
    "LAYOUTS",
    "UNKNOWN_YEAR",
    "DatasetNotFoundError",
    "Layout",
    "Movies",
    "Ratings",
    "default_locations",
    "find_dataset",
    "layout_of",
    "load_movies",
    "load_ratings",
]

DEFAULT_DATASET = "ml-latest-small"  # the release shipped in data/ (its license allows it)
DATA_ENV_VAR = "MONOLITH_PS_DATA"
UNKNOWN_YEAR = -1  # a title without "(YYYY)" and no release date

REPO_ROOT = Path(__file__).resolve().parents[2]

# ml-100k's u.genre, for a copy without it: flag i of u.item is genre i.
_GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# "(1995)" or a series' "(2006–2007)" at the end of a title: the first year counts.
_YEAR_RE = re.compile(r"\((\d{4})(?:\s*[-–]\s*\d{4})?\s*\)\s*$")
_RELEASE_DATE_RE = re.compile(r"^\d{1,2}-[A-Za-z]{3}-(\d{4})$")  # ml-100k: 01-Jan-1995


class DatasetNotFoundError(FileNotFoundError):
    """No readable MovieLens release where the examples looked."""


@dataclasses.dataclass(frozen=True)
class Ratings:
    """All ratings as columns, in timestamp order (ties keep file order)."""

    user: np.ndarray  # int64
    movie: np.ndarray  # int64
    rating: np.ndarray  # float32
    timestamp: np.ndarray  # int64, Unix seconds

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def head(self, limit: int) -> Ratings:
        """The first ``limit`` ratings."""
        return Ratings(*(getattr(self, f.name)[:limit] for f in dataclasses.fields(Ratings)))


@dataclasses.dataclass(frozen=True)
class Movies:
    """Per movie: its genres as indices into ``genre_names`` (-1 padded) and release year."""

    movie: np.ndarray  # int64, sorted
    genres: np.ndarray  # int64 (num_movies, max_genres), -1 = none
    year: np.ndarray  # int64, UNKNOWN_YEAR when the release gives none
    genre_names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one family of releases stores its ratings and movies."""

    name: str
    ratings_file: str
    movies_file: str
    releases: str  # which GroupLens releases come this way
    read_ratings: Callable[[Path], np.ndarray]  # (n, 4) user, movie, rating, timestamp
    read_movies: Callable[[Path], tuple[list[int], list[str], list[list[str]], list[str]]]

    def files(self, folder: Path) -> tuple[Path, Path]:
        return folder / self.ratings_file, folder / self.movies_file


def _table(raw: bytes, delimiter: str, skip: int) -> np.ndarray:
    return np.loadtxt(
        io.BytesIO(raw), delimiter=delimiter, skiprows=skip, usecols=(0, 1, 2, 3),
        dtype=np.float64, ndmin=2,
    )  # fmt: skip


def _ratings_csv(path: Path) -> np.ndarray:
    return _table(path.read_bytes(), ",", 1)


def _ratings_dat(path: Path) -> np.ndarray:
    return _table(path.read_bytes().replace(b"::", b"\t"), "\t", 0)


def _ratings_100k(path: Path) -> np.ndarray:
    return _table(path.read_bytes(), "\t", 0)


_Movies = tuple[list[int], list[str], list[list[str]], list[str]]


def _movies_csv(path: Path) -> _Movies:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:]
    return (
        [int(r[0]) for r in rows],
        [r[1] for r in rows],
        [r[2].split("|") for r in rows],
        [""] * len(rows),
    )


def _movies_dat(path: Path) -> _Movies:
    ids, titles, genres = [], [], []
    for line in path.read_text(encoding="latin-1").splitlines():
        if not line.strip():
            continue
        movie, rest = line.split("::", 1)
        title, names = rest.rsplit("::", 1)
        ids.append(int(movie))
        titles.append(title)
        genres.append(names.split("|"))
    return ids, titles, genres, [""] * len(ids)


def _movies_100k(path: Path) -> _Movies:
    names = _GENRES_100K
    genre_file = path.parent / "u.genre"
    if genre_file.is_file():
        pairs = [line.rsplit("|", 1) for line in genre_file.read_text(encoding="latin-1").split()]
        listed = [name for name, _ in sorted((p for p in pairs if len(p) == 2),
                                             key=lambda p: int(p[1]))]  # fmt: skip
        names = tuple(listed) or names
    ids, titles, genres, dates = [], [], [], []
    for line in path.read_text(encoding="latin-1").splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        flags = fields[-len(names) :]
        ids.append(int(fields[0]))
        titles.append(fields[1])
        dates.append(fields[2])
        genres.append([name for name, flag in zip(names, flags, strict=True) if flag == "1"])
    return ids, titles, genres, dates


LAYOUTS: tuple[Layout, ...] = (
    Layout("csv", "ratings.csv", "movies.csv",
           "ml-latest-small, ml-latest, ml-20m, ml-25m, ml-32m", _ratings_csv, _movies_csv),
    Layout("dat", "ratings.dat", "movies.dat", "ml-1m, ml-10m", _ratings_dat, _movies_dat),
    Layout("100k", "u.data", "u.item", "ml-100k", _ratings_100k, _movies_100k),
)  # fmt: skip


def layout_of(folder: Path) -> Layout | None:
    """The layout whose two files are both in ``folder`` (None: no layout is)."""
    for layout in LAYOUTS:
        if all(f.is_file() for f in layout.files(Path(folder))):
            return layout
    return None


def _what_is_looked_for() -> str:
    return "; ".join(
        f"{layout.ratings_file} + {layout.movies_file} ({layout.releases})" for layout in LAYOUTS
    )


_HOW_TO_GET = (
    "No MovieLens release found. Looked in:\n{looked}\nfor the files of one of the layouts "
    "GroupLens ships: {layouts}.\nGet a release from GroupLens "
    "(https://grouplens.org/datasets/movielens/, e.g. {default}.zip), unzip it so that its "
    "files and README.txt (its license) sit together, and pass the folder with --data, point "
    "${env} at it, or put {default}/ in data/ of the repository or in ../shared/data/ beside "
    "it."
)


def default_locations(repo_root: Path | None = None) -> list[Path]:
    """Where the default release is looked for when neither a path nor the environment
    variable says: ``data/`` of the repository, then ``../shared/data`` beside it."""
    root = REPO_ROOT if repo_root is None else Path(repo_root)
    return [root / "data" / DEFAULT_DATASET, root.parent / "shared" / "data" / DEFAULT_DATASET]


def _candidates(path: Path | None, repo_root: Path | None) -> list[Path]:
    if path is not None:
        return [Path(path), Path(path) / DEFAULT_DATASET]
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return [Path(env), Path(env) / DEFAULT_DATASET]
    return default_locations(repo_root)


def find_dataset(path: Path | None = None, repo_root: Path | None = None) -> Path:
    """The folder of a MovieLens release: ``path`` (or ``path/ml-latest-small``) if given,
    else ``$MONOLITH_PS_DATA`` (the same two), else ``ml-latest-small`` in ``data/`` of the
    repository or ``../shared/data`` beside it. A folder counts when the two files of one
    layout are there and readable; ``DatasetNotFoundError`` says where and what was looked
    for otherwise (a path given explicitly is never swapped for the default)."""
    candidates = _candidates(path, repo_root)
    notes = []
    for folder in candidates:
        layout = layout_of(folder)
        if layout is None:
            notes.append(f"  {folder}")
            continue
        unreadable = [f for f in layout.files(folder) if not os.access(f, os.R_OK)]
        if not unreadable:
            return folder
        notes.append(f"  {folder} (cannot read {', '.join(f.name for f in unreadable)})")
    raise DatasetNotFoundError(
        _HOW_TO_GET.format(
            looked="\n".join(notes),
            layouts=_what_is_looked_for(),
            default=DEFAULT_DATASET,
            env=DATA_ENV_VAR,
        )
    )


def _layout(folder: Path) -> Layout:
    layout = layout_of(folder)
    if layout is None:
        raise DatasetNotFoundError(
            f"{folder} is not a MovieLens release: none of {_what_is_looked_for()}"
        )
    return layout


def load_ratings(folder: Path) -> Ratings:
    """Every rating of the release in ``folder``, sorted by timestamp."""
    folder = Path(folder)
    layout = _layout(folder)
    table = layout.read_ratings(folder / layout.ratings_file)
    table = table[np.argsort(table[:, 3], kind="stable")]
    return Ratings(
        user=table[:, 0].astype(np.int64),
        movie=table[:, 1].astype(np.int64),
        rating=table[:, 2].astype(np.float32),
        timestamp=table[:, 3].astype(np.int64),
    )


def _year(title: str, release_date: str) -> int:
    match = _YEAR_RE.search(title.strip())
    if match:
        return int(match.group(1))
    match = _RELEASE_DATE_RE.match(release_date.strip())
    return int(match.group(1)) if match else UNKNOWN_YEAR


def load_movies(folder: Path) -> Movies:
    """The movies of the release in ``folder``: genres, and the year from the title's
    trailing ``(YYYY)`` (the first year of ``(YYYY–YYYY)``), else from ml-100k's release
    date, else ``UNKNOWN_YEAR``."""
    folder = Path(folder)
    layout = _layout(folder)
    ids, titles, genre_lists, dates = layout.read_movies(folder / layout.movies_file)
    genre_names = tuple(sorted({g for genres in genre_lists for g in genres}))
    genre_index = {name: i for i, name in enumerate(genre_names)}
    width = max((len(genres) for genres in genre_lists), default=0) or 1
    genres = np.full((len(ids), width), -1, dtype=np.int64)
    for i, names in enumerate(genre_lists):
        genres[i, : len(names)] = [genre_index[name] for name in names]
    movie = np.array(ids, dtype=np.int64)
    year = np.array([_year(t, d) for t, d in zip(titles, dates, strict=True)], dtype=np.int64)
    order = np.argsort(movie)
    return Movies(movie[order], genres[order], year[order], genre_names)
