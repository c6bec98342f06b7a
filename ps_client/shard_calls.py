"""The client's transport: one channel per shard, requests run in parallel, failures
retried by the client's ``RetryPolicy`` within the call's deadline, and mapped to
``PSError`` classes."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import grpc

from monolith_ps import wire
from monolith_ps.transport.channels import ClientTLS, open_channel
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from ps_client.errors import (
    DeadlineExceededError,
    ServerUnavailableError,
    connect_error,
    error_from_rpc,
)
from ps_client.retry import RetryPolicy

__all__ = ["ShardCalls"]

_LOGGER = logging.getLogger(__name__)
# Row calls whose requests the client encodes itself (``wire.encode_*_request``); Lookup
# answers are read in place (``wire.decode_lookup_response``), not through the generated
# class, which would copy every row twice.
_ENCODED_CALLS = {
    "Lookup": wire.decode_lookup_response,
    "Push": ps_pb2.PushResponse.FromString,
}


class ShardCalls:
    """Channels to the shards of a cluster, ``addresses[i]`` being shard ``i`` once the
    topology is known, and the parallel, retried calls over them."""

    def __init__(
        self,
        options: list[tuple[str, int | str]],
        tls: ClientTLS | None,
        retry: RetryPolicy,
        timeout: float,
        attempt_timeout: float,
        token: str | None = None,
    ) -> None:
        self._options = options
        self._tls = tls
        self._token = token
        self._retry = retry
        self._timeout = timeout
        self._attempt_timeout = attempt_timeout
        self._channels: list[grpc.Channel] = []
        self.addresses: tuple[str, ...] = ()
        self.num_shards = 0
        self.views: list[ps_pb2.ShardView] = []

    def connect(self, addresses: Sequence[str]) -> None:
        """Channels to ``addresses`` (in the order given until the topology is known)."""
        old = self._channels
        self.addresses = tuple(addresses)
        self.num_shards = len(self.addresses)
        self._channels = [
            open_channel(a, self._options, self._tls, self._token) for a in self.addresses
        ]
        self._stubs = [ps_pb2_grpc.ParameterServerStub(ch) for ch in self._channels]
        self._encoded = [
            {
                method: ch.unary_unary(
                    wire.METHOD_PREFIX + method,
                    request_serializer=wire.serialized,
                    response_deserializer=decode,
                    # as the generated stubs do; types-grpcio leaves the argument out
                    _registered_method=True,  # type: ignore[call-arg]
                )
                for method, decode in _ENCODED_CALLS.items()
            }
            for ch in self._channels
        ]
        self._set_views()
        for channel in old:
            channel.close()

    def _set_views(self) -> None:
        self.views = [
            ps_pb2.ShardView(shard_index=i, num_shards=self.num_shards)
            for i in range(self.num_shards)
        ]

    def reorder(self, order: list[int]) -> None:
        """Put the channels in shard order: position ``i`` becomes ``order[i]``; channels
        not in ``order`` (other replicas of a serving shard) are closed."""
        for i in set(range(self.num_shards)) - set(order):
            self._channels[i].close()
        self.addresses = tuple(self.addresses[i] for i in order)
        self.num_shards = len(order)
        self._channels = [self._channels[i] for i in order]
        self._stubs = [self._stubs[i] for i in order]
        self._encoded = [self._encoded[i] for i in order]
        self._set_views()

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def call_all(
        self, method: str, calls: list[tuple[int, Any]], timeout: float | None
    ) -> list[Any]:
        """Run ``(shard, request)`` calls in parallel, retrying the failed ones per policy."""
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        unreachable: set[int] = set()  # calls that have met UNAVAILABLE
        attempt = 1
        while pending:
            started = []
            for i in pending:
                shard, request = calls[i]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceededError(
                        f"{method} on {self.addresses[shard]}: deadline passed after "
                        f"{attempt - 1} attempts"
                    )
                rpc = self._encoded[shard].get(method) or getattr(self._stubs[shard], method)
                timeout = min(remaining, self._attempt_timeout)
                wait_for_ready = attempt > 1
                future: _Completed | grpc.Future[Any]
                if len(pending) == 1:
                    # A lone call blocks in this thread: no hand-off from gRPC's poller.
                    future = _Completed.call(rpc, request, timeout, wait_for_ready)
                else:
                    future = rpc.future(request, timeout=timeout, wait_for_ready=wait_for_ready)
                started.append((i, future))
            failed = []
            for i, future in started:
                shard = calls[i][0]
                try:
                    results[i] = future.result()
                except grpc.RpcError as err:
                    if (fatal := connect_error(err, self.addresses[shard], method)) is not None:
                        raise fatal from err
                    code = err.code()
                    if code is grpc.StatusCode.UNAVAILABLE:
                        unreachable.add(i)
                    pause = self._retry.backoff(attempt)
                    if (
                        self._retry.should_retry(code, attempt)
                        and time.monotonic() + pause < deadline
                    ):
                        failed.append((i, pause, err))
                        continue
                    if i in unreachable and code in self._retry.retryable:
                        # Later attempts wait for the connection, so they end in
                        # DEADLINE_EXCEEDED; the cause is still an unreachable server.
                        raise ServerUnavailableError(
                            f"{method} on {self.addresses[shard]}: unreachable through "
                            f"{attempt} attempts (last: {code.name}: {err.details()})"
                        ) from err
                    raise error_from_rpc(err, self.addresses[shard], method) from err
            if failed:
                pause = max(p for _, p, _ in failed)
                _LOGGER.info(
                    "rpc retry: %s to %s failed with %s (attempt %d), again in %.2fs",
                    method,
                    ",".join(self.addresses[calls[i][0]] for i, _, _ in failed),
                    failed[0][2].code().name,
                    attempt,
                    pause,
                )
                time.sleep(pause)
            pending = [i for i, _, _ in failed]
            attempt += 1
        return results


class _Completed:
    """A finished call with the interface of a gRPC future (``result()``)."""

    __slots__ = ("_error", "_response")

    def __init__(self, response: Any, error: grpc.RpcError | None) -> None:
        self._response = response
        self._error = error

    @classmethod
    def call(cls, rpc: Any, request: Any, timeout: float, wait_for_ready: bool) -> _Completed:
        try:
            return cls(rpc(request, timeout=timeout, wait_for_ready=wait_for_ready), None)
        except grpc.RpcError as err:
            return cls(None, err)

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._response
