"""The client's one retry policy: which failures are retried, how often, how far apart.

Retries are not left to the channel's service-config ``retryPolicy``: gRPC buffers at
most ``grpc.per_rpc_retry_buffer_size`` (256 KiB) of a call for replay and silently
stops retrying bigger ones, and a 4k-key push is about 1 MiB. A push is retried only
because it carries a ``request_id`` the server applies once.
"""

from __future__ import annotations

import dataclasses
import random

import grpc

__all__ = ["RetryPolicy"]


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter over a bounded number of attempts.

    >>> RetryPolicy(max_attempts=3).backoff(1)  # doctest: +SKIP
    0.048...
    """

    max_attempts: int = 30  # with the 2 s cap, about a minute: the call's timeout binds first
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2  # +-20 % of each pause
    # CANCELLED: this client never cancels a call it retries, so the status came from the
    # server side: gRPC answers it to a call that races a server's graceful stop. Pushes
    # carry a request id, so a retry of one that was applied is not applied twice.
    retryable: frozenset[grpc.StatusCode] = frozenset(
        {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
    )

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("need 0 <= initial_backoff <= max_backoff")
        if self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError("need multiplier >= 1 and 0 <= jitter < 1")

    def should_retry(self, code: grpc.StatusCode, attempt: int) -> bool:
        """Whether a call that failed with ``code`` on attempt ``attempt`` (1-based) goes again."""
        return code in self.retryable and attempt < self.max_attempts

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        pause = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return pause * (1.0 + self.jitter * (2.0 * random.random() - 1.0))
