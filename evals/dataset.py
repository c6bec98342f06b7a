"""The evals' data: a MovieLens stream loaded once per release, cut in time, hashed, and
the stream's span, which time-based settings (TTLs, snapshot intervals) default to
fractions of."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from examples.movielens.data import PAD_KEY, Dataset, Events, load_dataset
from examples.movielens.releases import find_dataset
from monolith_ps.routing import shard_of
from ps_client.fid import SLOT_BITS, make_fid

__all__ = [
    "DAY",
    "StreamTime",
    "distinct_keys",
    "fraction_label",
    "hash_keys",
    "load_stream",
    "parse_fraction",
    "parse_fractions",
    "seen_users",
    "span_seconds",
    "stream_times",
    "time_split",
]

DAY = 86400.0
_U64_MASK = (1 << 64) - 1


@functools.cache
def _release(folder: Path) -> tuple[Events, Dataset]:
    return load_dataset(folder)


def load_stream(path: Path | None = None, limit: int | None = None) -> tuple[Events, Dataset]:
    """The stream of the MovieLens release at ``path`` (``find_dataset``'s search when
    None) in timestamp order, or its first ``limit`` events, and what it is; each release
    is read once per process."""
    events, dataset = _release(find_dataset(path).resolve())
    if limit is None or limit >= len(events):
        return events, dataset
    events = events.slice(0, limit)
    return events, dataclasses.replace(
        dataset, ratings=len(events), last_timestamp=int(events.timestamps[-1])
    )


def time_split(events: Events, test_fraction: float) -> tuple[Events, Events]:
    """The first ``1 - test_fraction`` of the stream to train on, the rest to test on."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    cut = int(round(len(events) * (1.0 - test_fraction)))
    return events.slice(0, cut), events.slice(cut, len(events))


def hash_keys(keys: np.ndarray, num_buckets: int, salt: int) -> np.ndarray:
    """Feature IDs hashed into ``num_buckets`` buckets per slot, the way a fixed-size
    embedding table indexes them: bucket = mix64(key ^ salt) % num_buckets, returned as
    the feature ID of that bucket in the key's slot (so different slots never share)."""
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    flat = np.ascontiguousarray(keys, dtype=np.uint64).ravel()
    buckets = shard_of(flat ^ np.uint64(salt & _U64_MASK), num_buckets)
    slots = (flat >> np.uint64(64 - SLOT_BITS)).astype(np.int64)
    return make_fid(slots, buckets).reshape(np.shape(keys))


def distinct_keys(events: Events, table: str) -> int:
    """How many different (non-pad) feature IDs ``table`` sees in ``events``."""
    keys = np.unique(np.asarray(events.keys[table]).ravel())
    return int(np.count_nonzero(keys != np.uint64(PAD_KEY)))


def seen_users(train_events: Events, test_events: Events) -> np.ndarray:
    """Mask of the test events whose user rated something in the training part."""
    return np.isin(test_events.keys["user"], np.unique(train_events.keys["user"]))


def parse_fraction(text: str) -> float:
    """``"1/4"`` or ``"0.25"`` as a float."""
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


def parse_fractions(text: str) -> list[float]:
    """A comma-separated list of ``parse_fraction``s."""
    return [parse_fraction(x) for x in text.split(",") if x.strip()]


def fraction_label(fraction: float) -> str:
    """``1/20`` for 0.05, else the shortest decimal."""
    if fraction > 0 and abs(1 / fraction - round(1 / fraction)) < 1e-9:
        return f"1/{round(1 / fraction)}"
    return f"{fraction:g}"


@dataclasses.dataclass(frozen=True)
class StreamTime:
    """A duration in the stream's time, given as a fraction of the stream's span (the
    default of the evals' time settings, so they mean the same on a short or a long
    release) or as days. Zero stands for "none"."""

    seconds: float
    fraction: float | None = None  # of the span, when given so

    @property
    def days(self) -> float:
        return self.seconds / DAY

    def label(self) -> str:
        days = self.days
        number = f"{days:,.0f}" if days >= 100 else f"{days:.3g}"
        text = f"{number} day" + ("" if number == "1" else "s")
        if self.fraction is None:
            return text
        return f"{fraction_label(self.fraction)} of the span ({text})"

    def as_dict(self) -> dict[str, float | None]:
        return {"seconds": self.seconds, "days": self.days, "fraction": self.fraction}


def stream_times(
    fractions: Sequence[float], days: Sequence[float] | None, span_seconds: float
) -> list[StreamTime]:
    """``days`` as durations when given, else ``fractions`` of ``span_seconds``."""
    if days is not None:
        return [StreamTime(d * DAY) for d in days]
    return [StreamTime(f * span_seconds, f) for f in fractions]


def span_seconds(events: Events) -> float:
    """Seconds from the first to the last event of ``events``."""
    return float(events.timestamps[-1] - events.timestamps[0]) if len(events) else 0.0
