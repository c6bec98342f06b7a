"""Structured logs: one line per event, JSON or ``key=value``.

Code logs an event name as the message and its fields through ``extra``::

    _LOGGER.info("server_started", extra=fields(port=50051, role="training"))

``configure_logging`` is called once by each entry point, never at import.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["configure_logging", "fields"]

_FIELDS_ATTR = "mps_fields"


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """The ``extra=`` argument that attaches ``values`` to a log event."""
    return {_FIELDS_ATTR: values}


class _EventFormatter(logging.Formatter):
    def __init__(self, json_lines: bool) -> None:
        super().__init__()
        self._json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        event.update(getattr(record, _FIELDS_ATTR, {}))
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        if self._json_lines:
            return json.dumps(event, default=str, separators=(",", ":"))
        return " ".join(f"{key}={_text_value(value)}" for key, value in event.items())


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when an event is logged, not as it was when the
    handler was made: an entry point run in-process (by a test runner, a notebook) may have
    it replaced and closed since."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:
        return sys.stderr


def _text_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return json.dumps(text)
    return text


def configure_logging(log_format: str = "text", level: int | str = logging.INFO) -> None:
    """Send every log event to stderr as one JSON object or ``key=value`` line."""
    if log_format not in ("json", "text"):
        raise ValueError(f"log format must be 'json' or 'text', got {log_format!r}")
    handler = _CurrentStderrHandler()
    handler.setFormatter(_EventFormatter(json_lines=log_format == "json"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
