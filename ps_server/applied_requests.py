"""Apply-once pushes: remember the answers of the last N request ids.

A client retries a push with the same ``request_id`` when it could not tell whether the
first attempt landed. ``AppliedRequests.run(request_id, apply)`` runs ``apply`` at
most once per id among the last ``window`` ids, even when the retry arrives while the
first attempt is still running (it waits for it and returns its answer).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["MAX_REQUEST_ID_BYTES", "AppliedRequests"]

MAX_REQUEST_ID_BYTES = 128

_Result = TypeVar("_Result")


class AppliedRequests(Generic[_Result]):
    """Bounded memory of applied request ids (oldest forgotten first)."""

    def __init__(self, window: int) -> None:
        if window < 0:
            raise ValueError(f"the request id window must be >= 0, got {window}")
        self._window = window
        self._lock = threading.Lock()
        self._applied: OrderedDict[str, _Result] = OrderedDict()
        self._in_flight: dict[str, threading.Event] = {}

    def __len__(self) -> int:
        return len(self._applied)

    def run(self, request_id: str, apply: Callable[[], _Result]) -> tuple[_Result, bool]:
        """``(result, duplicate)``: ``apply()``'s result, or the remembered one of this id.

        An empty id, or a window of 0, always applies. If ``apply`` raises, the id is not
        remembered, so a retry applies it.
        """
        if not request_id or self._window == 0:
            return apply(), False
        if len(request_id.encode()) > MAX_REQUEST_ID_BYTES:
            raise ValueError(
                f"request_id is {len(request_id.encode())} bytes; at most "
                f"{MAX_REQUEST_ID_BYTES} are allowed"
            )
        while True:
            with self._lock:
                if request_id in self._applied:
                    self._applied.move_to_end(request_id)
                    return self._applied[request_id], True
                waiting = self._in_flight.get(request_id)
                if waiting is None:
                    mine = self._in_flight[request_id] = threading.Event()
                    break
            waiting.wait()
        try:
            result = apply()
        except BaseException:
            with self._lock:
                del self._in_flight[request_id]
            mine.set()
            raise
        with self._lock:
            del self._in_flight[request_id]
            self._applied[request_id] = result
            while len(self._applied) > self._window:
                self._applied.popitem(last=False)
        mine.set()
        return result, False
