"""MovieLens folders in each layout GroupLens ships, written from plain lists: tiny ones
for the loader's tests, and synthetic streams of any size (users and movies with latent
tastes, so a model can learn them) for runs on a layout other than ml-latest-small."""

from __future__ import annotations

import csv
import datetime
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from examples.movielens.releases import _GENRES_100K

Rating = tuple[int, int, float, int]  # user, movie, rating, unix seconds
Movie = tuple[int, str, Sequence[str], str]  # id, title, genres, ml-100k release date

LAYOUTS = ("csv", "dat", "100k")


def write_release(folder: Path, layout: str, ratings: Sequence[Rating], movies: Sequence[Movie]):
    """Write ``ratings`` and ``movies`` into ``folder`` as release ``layout`` stores them."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "csv":
        with open(folder / "ratings.csv", "w", newline="", encoding="utf-8") as f:
            f.write("userId,movieId,rating,timestamp\r\n")
            f.writelines(f"{u},{m},{r:g},{t}\r\n" for u, m, r, t in ratings)
        with open(folder / "movies.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\r\n")
            writer.writerow(["movieId", "title", "genres"])
            for movie, title, genres, _ in movies:
                writer.writerow([movie, title, "|".join(genres) or "(no genres listed)"])
    elif layout == "dat":
        (folder / "ratings.dat").write_bytes(
            "".join(f"{u}::{m}::{r:g}::{t}\n" for u, m, r, t in ratings).encode("latin-1")
        )
        (folder / "movies.dat").write_bytes(
            "".join(f"{m}::{title}::{'|'.join(g)}\n" for m, title, g, _ in movies).encode("latin-1")
        )
    elif layout == "100k":
        (folder / "u.data").write_text(
            "".join(f"{u}\t{m}\t{int(r)}\t{t}\n" for u, m, r, t in ratings), encoding="latin-1"
        )
        lines = []
        for movie, title, genres, date in movies:
            flags = "|".join("1" if name in genres else "0" for name in _GENRES_100K)
            lines.append(f"{movie}|{title}|{date}||http://example.invalid/|{flags}\n")
        (folder / "u.item").write_bytes("".join(lines).encode("latin-1"))
        (folder / "u.genre").write_text(
            "".join(f"{name}|{i}\n" for i, name in enumerate(_GENRES_100K)) + "\n"
        )
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return folder


def synthetic_release(
    folder: Path,
    layout: str,
    num_ratings: int,
    num_users: int = 600,
    num_movies: int = 1500,
    days: float = 365.0,
    seed: int = 0,
) -> Path:
    """A release of ``num_ratings`` ratings over ``days`` days from 1998-01-01: users arrive
    along the stream and rate in bursts, movies are popular by a power law, and a rating is
    >= 4 more often when the user's and the movie's latent tastes agree."""
    rng = np.random.default_rng(seed)
    start = int(datetime.datetime(1998, 1, 1, tzinfo=datetime.UTC).timestamp())
    taste_user = rng.normal(size=(num_users, 4))
    taste_movie = rng.normal(size=(num_movies, 4))
    bias_movie = rng.normal(scale=0.7, size=num_movies)
    arrival = np.sort(rng.uniform(0, 0.9, num_users))
    popularity = 1.0 / np.arange(1, num_movies + 1) ** 0.9
    popularity /= popularity.sum()
    when = np.sort(rng.uniform(0, 1, num_ratings))
    # Each rating goes to a user who has arrived, most likely one who arrived recently.
    arrived = np.searchsorted(arrival, when, side="right")
    back = np.floor(rng.exponential(12.0, num_ratings)).astype(np.int64)
    user = np.clip(arrived - 1 - back, 0, num_users - 1)
    movie = rng.choice(num_movies, size=num_ratings, p=popularity)
    affinity = np.einsum("ij,ij->i", taste_user[user], taste_movie[movie]) / 2 + bias_movie[movie]
    stars = np.clip(np.round(3.2 + affinity + rng.normal(scale=0.8, size=num_ratings)), 1, 5)
    seconds = start + (when * days * 86400).astype(np.int64)
    ratings = list(zip((user + 1).tolist(), (movie + 1).tolist(), stars.tolist(),
                       seconds.tolist(), strict=True))  # fmt: skip
    genre_names = _GENRES_100K[1:]
    movies = []
    for m in range(num_movies):
        year = 1930 + int(rng.integers(0, 68))
        genres = sorted({genre_names[int(g)] for g in rng.integers(0, len(genre_names), 2)})
        title = f"Movie {m + 1} ({year})" if m % 50 else f"Movie {m + 1}"  # some without year
        movies.append((m + 1, title, genres, f"01-Jan-{year}"))
    return write_release(folder, layout, ratings, movies)
