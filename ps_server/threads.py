"""A bounded pool of daemon threads: work that must never keep a stopping process alive."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any

__all__ = ["DaemonThreadPool"]


class DaemonThreadPool(futures.Executor):
    """A bounded pool of daemon threads for gRPC handlers.

    ``concurrent.futures.ThreadPoolExecutor`` joins its threads at interpreter exit, so a
    handler still busy (a peer that never reads, a long export) would keep a stopped server's
    process alive past its grace period. These threads never hold up the exit.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str = "ps-rpc") -> None:
        self._max = max_workers
        self._prefix = thread_name_prefix
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future:
        future: futures.Future = futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new work after shutdown")
            self._work.put((future, fn, args, kwargs))
            if self._work.qsize() > self._idle and len(self._threads) < self._max:
                thread = threading.Thread(
                    target=self._run, name=f"{self._prefix}_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return future

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._work.get()
            with self._lock:
                self._idle -= 1
            if item is None:
                return
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # noqa: BLE001 - handed to the future
                    future.set_exception(exc)
            del future, fn, args, kwargs, item

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        for _ in threads:
            self._work.put(None)
        if wait:
            for thread in threads:
                thread.join()
