"""Interceptor handlers made once per method.

gRPC runs every server interceptor on every call; an interceptor that wraps the handler it
is given would otherwise build the same closures and handler tuple for each call. The
cache keeps one wrapped handler per method, made again only when the handler below it
changes (an interceptor under it that answers differently, e.g. before and after start).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["HandlerCache"]


class HandlerCache:
    """``get(method, handler, wrap)`` is ``wrap(method, handler)``, computed once for each
    method while ``handler`` stays the same object. Safe across threads: a race wraps twice
    and keeps either."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    def get(self, method: str, handler: Any, wrap: Callable[[str, Any], Any]) -> Any:
        hit = self._wrapped.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped
