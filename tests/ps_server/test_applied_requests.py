"""Apply-once memory of request ids: concurrency, failures and its bound."""

from __future__ import annotations

import threading

import pytest

from ps_server.applied_requests import AppliedRequests


def test_a_retry_during_the_first_attempt_waits_and_gets_its_answer():
    applied = AppliedRequests(10)
    entered, release = threading.Event(), threading.Event()
    calls = []

    def slow_apply():
        calls.append(1)
        entered.set()
        release.wait(10)
        return "applied"

    results = []
    first = threading.Thread(target=lambda: results.append(applied.run("r1", slow_apply)))
    first.start()
    entered.wait(10)
    second = threading.Thread(target=lambda: results.append(applied.run("r1", slow_apply)))
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert len(calls) == 1
    assert sorted(results) == [("applied", False), ("applied", True)]


def test_a_failed_apply_is_forgotten_so_a_retry_applies():
    applied = AppliedRequests(10)

    def fail():
        raise ValueError("bad")

    with pytest.raises(ValueError):
        applied.run("r1", fail)
    assert applied.run("r1", lambda: 7) == (7, False)
    assert applied.run("r1", lambda: 8) == (7, True)


def test_memory_is_bounded_oldest_first():
    applied = AppliedRequests(3)
    for i in range(5):
        applied.run(f"r{i}", lambda i=i: i)
    assert len(applied) == 3
    assert applied.run("r4", lambda: -1) == (4, True)
    assert applied.run("r0", lambda: -1) == (-1, False)  # forgotten, applied again


def test_empty_ids_and_a_zero_window_always_apply():
    assert AppliedRequests(10).run("", lambda: 1) == (1, False)
    assert AppliedRequests(0).run("r", lambda: 2) == (2, False)
    with pytest.raises(ValueError, match="request_id is 200 bytes"):
        AppliedRequests(10).run("x" * 200, lambda: 3)
