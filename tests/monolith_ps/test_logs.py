"""Structured log lines and where they go."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from monolith_ps.logs import configure_logging, fields


@pytest.fixture
def root_logger_restored():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_line_carries_event_and_fields(root_logger_restored, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("json")
    logging.getLogger("mps.test").info("server_started", extra=fields(port=50051))
    event = json.loads(stream.getvalue())
    assert (event["event"], event["port"], event["level"]) == ("server_started", 50051, "info")


def test_events_follow_stderr_after_it_is_replaced(root_logger_restored, monkeypatch):
    """An entry point run in-process configures logging on the stderr of that moment; when
    its caller closes and replaces that stream, later events go to the new one instead of
    failing on the closed one."""
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging("text")
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("mps.test").warning("server_stopping", extra=fields(grace_seconds=0))
    assert "event=server_stopping grace_seconds=0" in second.getvalue()


def test_unknown_format_is_refused(root_logger_restored):
    with pytest.raises(ValueError, match="'yaml'"):
        configure_logging("yaml")
