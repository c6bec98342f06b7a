"""The fault eval's plan: snapshots counted from the stream's first event, the kill at a
batch boundary, and intervals that would change nothing known before any run."""

from __future__ import annotations

import numpy as np
import pytest

from evals import fault_snapshot
from evals.fault_schedule import batch_ends, plan
from examples.movielens.data import Events

DAY = 86400


def stream(timestamps: list[int]) -> Events:
    n = len(timestamps)
    return Events(keys={}, labels=np.zeros(n, np.float32), timestamps=np.array(timestamps))


def test_batches_restart_at_every_window():
    windows = stream(list(range(10))).windows(2)
    counts, times = batch_ends(windows, 4)
    assert counts.tolist() == [4, 5, 9, 10] and times.tolist() == [3, 4, 8, 9]


def test_snapshots_count_periods_from_the_first_event_not_from_1970():
    # A stream that starts late in a 364-day period of the epoch: counted from 1970, the
    # first batch would already cross a period boundary.
    start = 10_000 * DAY + 363 * DAY
    windows = [stream([start + d * DAY for d in range(0, 800, 10)])]
    planned = plan(windows, 4, 364 * DAY, crash_event=70)
    # Batches end every 40 days (at days 30, 70, ...): the first boundary after day 364
    # is the end of the batch holding day 390 (event 40), the next after day 728 (event 76
    # is past the kill at 72).
    assert planned.snapshots == (40,)
    assert planned.kill == 72  # the first batch boundary at or after event 70


def test_an_interval_longer_than_the_stream_before_the_kill_snapshots_nothing():
    windows = [stream([d * DAY for d in range(100)])]
    assert plan(windows, 10, 60 * DAY, crash_event=50).snapshots == ()
    assert plan(windows, 10, 30 * DAY, crash_event=50).snapshots == (40,)
    # A snapshot due at the kill's boundary is never written: the kill comes first.
    assert plan(windows, 10, 10 * DAY, crash_event=50).snapshots == (20, 30, 40)


def test_no_kill_without_a_crash_point_and_none_past_the_end():
    windows = [stream(list(range(100)))]
    assert plan(windows, 10, 0, None).kill is None
    with pytest.raises(ValueError, match="ends before the kill"):
        plan(windows, 10, 0, crash_event=95)


def test_intervals_that_would_snapshot_alike_or_never_are_not_run():
    windows = [stream([d * DAY for d in range(100)])]
    args = fault_snapshot.parser().parse_args(
        ["--intervals", "1/1000,1/99,1/10,0.9,0", "--batch-size", "10"]
    )
    to_run, no_effect = fault_snapshot.variants(windows, args, 99 * DAY, crash_event=50)
    # 1/1000 and 1/99 of 99 days (about 2 hours, 1 day) both snapshot after every batch.
    assert [fault_snapshot.variant_name(t) for t, _ in to_run] == [
        "uninterrupted",
        "killed, snapshot every 1/1000 of the span (0.099 days)",
        "killed, snapshot every 1/10 of the span (9.9 days)",
        "killed, no snapshot",
    ]
    assert [p.snapshots for _, p in to_run] == [(), (10, 20, 30, 40), (20, 30, 40), ()]
    assert no_effect == [
        {"variant": "killed, snapshot every 1/99 of the span (1 day)",
         "why": "the same snapshots before the kill as every 1/1000 of the span (0.099 days)"},
        {"variant": "killed, snapshot every 0.9 of the span (89.1 days)",
         "why": "no snapshot falls before the kill: the same as a kill without snapshots"},
    ]  # fmt: skip
