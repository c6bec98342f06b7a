"""MovieLens releases in each layout GroupLens ships (tiny copies written by the tests),
found by their files, read into the same stream; and the errors when no release is
where the examples were told to look."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from movielens_layouts import LAYOUTS, write_release

from examples.movielens import data, releases
from ps_client import make_fid

# Out of time order on purpose; two ratings share a timestamp (file order is kept).
RATINGS = [
    (2, 20, 4.0, 900_000_300),
    (1, 10, 5.0, 900_000_100),
    (1, 30, 2.0, 900_000_200),
    (3, 10, 3.0, 900_000_200),
    (2, 40, 4.0, 900_086_500),
]
MOVIES = [
    (10, "Toy Story (1995)", ["Animation", "Comedy"], "01-Jan-1995"),
    (20, "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)", ["Comedy", "Romance"], ""),
    (30, "Black Mirror", ["Drama"], ""),  # no year anywhere
    (40, "Death Note (2006-2007)", ["Drama"], "01-Jan-2006"),  # a series
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_reads_into_the_same_stream(tmp_path, layout):
    folder = write_release(tmp_path / f"ml-{layout}", layout, RATINGS, MOVIES)
    assert releases.layout_of(folder).name == layout
    events, dataset = data.load_dataset(folder)
    np.testing.assert_array_equal(
        events.timestamps, [900_000_100, 900_000_200, 900_000_200, 900_000_300, 900_086_500]
    )
    np.testing.assert_array_equal(events.keys["user"], make_fid(1, np.array([1, 1, 3, 2, 2])))
    np.testing.assert_array_equal(events.keys["movie"], make_fid(2, np.array([10, 30, 10, 20, 40])))
    np.testing.assert_array_equal(events.labels, [1, 0, 0, 1, 1])
    decade = events.keys["context"][:, -1]
    np.testing.assert_array_equal(
        decade, make_fid(8, np.array([199, data.UNKNOWN_DECADE, 199, 200, 200]))
    )
    assert make_fid(8, data.UNKNOWN_DECADE) != make_fid(8, 0)
    genres = events.keys["genre"]
    assert (genres[:, 0] != data.PAD_KEY).all() and (genres[1, 1:] == data.PAD_KEY).all()
    assert dataset.as_dict() == {
        "name": f"ml-{layout}",
        "path": str(folder.resolve()),
        "layout": {"csv": "ratings.csv", "dat": "ratings.dat", "100k": "u.data"}[layout],
        "ratings": 5,
        "ratings_in_release": 5,
        "first": "1998-07-09",
        "last": "1998-07-10",
        "span_days": 1.0,
    }


@pytest.mark.parametrize("layout", LAYOUTS)
def test_titles_keep_their_latin1_and_years_are_explicit(tmp_path, layout):
    folder = write_release(tmp_path / layout, layout, RATINGS, MOVIES)
    movies = releases.load_movies(folder)
    years = dict(zip(movies.movie.tolist(), movies.year.tolist(), strict=True))
    assert years == {10: 1995, 20: 2001, 30: releases.UNKNOWN_YEAR, 40: 2006}
    row = movies.genres[movies.movie.tolist().index(20)]
    names = {movies.genre_names[g] for g in row if g >= 0}
    assert names == {"Comedy", "Romance"}


def test_a_series_counts_from_its_first_year_with_either_dash():
    assert releases._year("Death Note: Desu nôto (2006–2007)", "") == 2006
    assert releases._year("Babylon 5", "") == releases.UNKNOWN_YEAR


def test_ml100k_takes_the_year_from_the_release_date_when_the_title_has_none(tmp_path):
    movies = [(10, "Toy Story", ["Comedy"], "01-Jan-1995"), *MOVIES[1:]]
    folder = write_release(tmp_path / "ml-100k", "100k", RATINGS, movies)
    assert releases.load_movies(folder).year[0] == 1995


def test_limit_keeps_the_first_ratings_in_time_and_says_so(tmp_path):
    folder = write_release(tmp_path / "ml-1m", "dat", RATINGS, MOVIES)
    events, dataset = data.load_dataset(folder, limit=2)
    assert len(events) == 2 and (dataset.ratings, dataset.ratings_in_release) == (2, 5)
    assert "the first 2 of its 5 ratings" in dataset.describe()


def test_a_folder_that_is_no_release_says_what_was_looked_for(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")  # no movies.csv
    with pytest.raises(releases.DatasetNotFoundError) as info:
        data.load_dataset(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and str(tmp_path / releases.DEFAULT_DATASET) in message
    for name in ("ratings.csv + movies.csv", "ratings.dat + movies.dat", "u.data + u.item"):
        assert name in message
    assert "grouplens.org" in message and "README.txt" in message and "--data" in message


def test_a_mistyped_env_var_is_an_error_not_the_default_data(tmp_path, monkeypatch):
    monkeypatch.setenv(releases.DATA_ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(releases.DatasetNotFoundError) as info:
        releases.find_dataset()
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and releases.DATA_ENV_VAR in message
    assert str(releases.REPO_ROOT / "data") not in message


def test_without_env_var_the_repository_and_shared_folders_are_searched(tmp_path, monkeypatch):
    monkeypatch.delenv(releases.DATA_ENV_VAR, raising=False)
    with pytest.raises(releases.DatasetNotFoundError) as info:
        releases.find_dataset(repo_root=tmp_path / "repo")
    message = str(info.value)
    assert str(tmp_path / "repo" / "data" / "ml-latest-small") in message
    assert str(tmp_path / "shared" / "data" / "ml-latest-small") in message


def test_env_var_points_at_a_copy_or_its_parent(tmp_path, monkeypatch):
    source = releases.find_dataset()
    copy = tmp_path / "ml-latest-small"
    copy.mkdir()
    for name in ("ratings.csv", "movies.csv", "README.txt"):
        shutil.copy(source / name, copy / name)
    monkeypatch.setenv(releases.DATA_ENV_VAR, str(tmp_path))
    assert releases.find_dataset(repo_root=tmp_path / "repo") == copy


def test_the_shipped_release_spans_22_years(tmp_path):
    _, dataset = data.load_dataset()
    assert dataset.name == releases.DEFAULT_DATASET and dataset.ratings == 100_836
    assert (dataset.as_dict()["first"], dataset.as_dict()["last"]) == ("1996-03-29", "2018-09-24")
    assert "22.5 years" in dataset.describe()
