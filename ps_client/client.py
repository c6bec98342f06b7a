"""``PSClient``: numpy in, numpy out, over a sharded cluster of PS servers.

A call deduplicates its keys, routes each unique key to ``shard_of(key, num_shards)``,
sends one request per shard (split only when it would pass the message size limit)
in parallel, and scatters the answers back into the order of the keys. Pushes sum the
gradients of duplicate keys first and carry a ``request_id`` so a retried push is
applied once.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from monolith_ps.allocator import reuse_large_buffers_by_default
from monolith_ps.config import ClusterConfig, load_config
from monolith_ps.transport.channels import ClientTLS, channel_options
from monolith_ps.transport.cluster import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ShardInfo,
    SyncState,
    TableInfo,
    client_view_problems,
    shard_info_from_proto,
    sync_state_from_proto,
)
from monolith_ps.transport.flags import address_list
from monolith_ps.v1 import ps_pb2
from ps_client import messages
from ps_client.batch_ops import HALF_TO_F32, scatter_answer, segment_sum
from ps_client.buffers import OutputBuffers
from ps_client.discovery import Resolver, resolve_service, shard_order
from ps_client.errors import (
    PreconditionError,
    ServerUnavailableError,
    TopologyError,
    UnknownTableError,
)
from ps_client.planning import assemble_found, output_rows, plan_chunks, route_table
from ps_client.results import PushResult, SnapshotInfo
from ps_client.retry import RetryPolicy
from ps_client.shard_calls import ShardCalls

__all__ = ["PSClient"]

_LOGGER = logging.getLogger(__name__)
_F = TypeVar("_F", bound=Callable[..., Any])

_MESSAGE_FILL = 0.9  # of the size limit a request or answer may use; the rest is framing


def _rediscovering(repeat: bool) -> Callable[[_F], _F]:
    """On ``TopologyError`` (or an unreachable server) a client made from a service name
    resolves it again; the call is then repeated once if ``repeat`` (lookups), else the
    error goes to the caller (a push may have been applied by some shards: the caller
    decides)."""

    def wrap(method: _F) -> _F:
        @functools.wraps(method)
        def call(self: PSClient, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except (TopologyError, ServerUnavailableError):
                if self._service is None:
                    raise
                self._rediscover()
                if not repeat:
                    raise
            return method(self, *args, **kwargs)

        return call  # type: ignore[return-value]

    return wrap


class PSClient:
    """A client of one cluster role, given its servers' addresses in any order, or one
    ``host:port`` name that resolves to all of them (a headless Service).

    >>> with PSClient(["127.0.0.1:50052", "127.0.0.1:50051"]) as c:  # doctest: +SKIP
    ...     rows = c.lookup("user_id", keys)          # (n, dim) float32, in the order of keys
    ...     c.push("user_id", keys, grads)            # duplicates summed, applied once
    ...     fut = c.lookup_async("item_id", item_keys)  # concurrent.futures.Future
    >>> PSClient("recs-monolith-ps-training.ml.svc:50051")  # doctest: +SKIP

    On first use it asks every server for its role, shard index and shard count, orders
    the addresses by shard index (``self.addresses[i]`` is then shard ``i``), and raises
    ``TopologyError`` unless they are exactly one cluster's shards (and of ``role``, if
    given); every request then names the shard it is for, so a server that changed
    place refuses it instead of answering for the wrong shard. Given a name, the client
    resolves it again when that happens or when the shards it sees are not one whole
    cluster (mid-reshard): lookups are then repeated once, pushes raise
    ``TopologyError`` (retry them, the client routes by the new cluster). Calls are retried on
    UNAVAILABLE and DEADLINE_EXCEEDED by ``retry`` within ``timeout`` seconds in all,
    except a failed TLS handshake (``TLSHandshakeError``) or an address that does not
    resolve (``NameResolutionError``): those fail at once, naming the cause.
    ``tls`` (mutual TLS: the client certificate) or ``token`` (a bearer token, see
    ``monolith_ps.transport.bearer.read_token_file``) is who the servers' authorization sees.
    ``tune_allocator`` fixes glibc's malloc thresholds of this process
    (``monolith_ps.allocator``), so the ~1 MiB receive buffers of each call are reused
    instead of mapped and faulted in anew; thresholds set in the environment stand.
    Thread-safe.
    """

    def __init__(
        self,
        addresses: Sequence[str] | str,
        *,
        role: str | None = None,
        timeout: float = 30.0,
        attempt_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tls: ClientTLS | None = None,
        max_workers: int | None = None,
        resolver: Resolver | None = None,
        token: str | None = None,
        tune_allocator: bool = True,
    ) -> None:
        if tune_allocator:
            reuse_large_buffers_by_default()
        self._service = addresses if isinstance(addresses, str) else None
        self._resolver = resolver
        if self._service is not None:
            addresses = resolve_service(self._service, resolver)
        if not addresses:
            raise ValueError("need at least one server address")
        if role not in (None, "training", "serving"):
            raise ValueError(f"role must be 'training', 'serving' or None, got {role!r}")
        if timeout <= 0 or attempt_timeout <= 0:
            raise ValueError("timeout and attempt_timeout must be > 0")
        self.role = role
        self._max_message_bytes = max_message_bytes
        # A restarted server is noticed within a second, not after minutes of backoff.
        self._calls = ShardCalls(
            channel_options(max_message_bytes, (100, 1000), tls),
            tls,
            retry if retry is not None else RetryPolicy(),
            timeout,
            attempt_timeout,
            token,
        )
        self._connect(addresses)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers or 4, thread_name_prefix="ps-client"
        )
        self._lock = threading.Lock()
        self._buffers = OutputBuffers()
        self._request_prefix = uuid.uuid4().hex[:16]
        self._request_counter = itertools.count()
        self._closed = False

    @classmethod
    def from_config(cls, config: Any, addresses: Sequence[str] | str, **options: Any) -> PSClient:
        """A client for ``addresses`` (a list, or one comma-separated string) that takes
        its message size limit from the cluster config (a ``ClusterConfig`` or a path)."""
        if not isinstance(config, ClusterConfig):
            config = load_config(os.fspath(config))
        if isinstance(addresses, str):
            addresses = address_list(addresses)
        options.setdefault("max_message_bytes", config.server.max_message_bytes)
        return cls(addresses, **options)

    # ------------------------------------------------------------------ public API

    def lookup(
        self,
        table: str,
        keys: Any,
        *,
        with_found: bool = False,
        timeout: float | None = None,
        out: np.ndarray | None = None,
    ) -> Any:
        """Rows of ``keys`` (``keys.shape + (dim,)``, float32), and with ``with_found``
        (serving only) a bool mask of the keys that have a row.

        With ``out`` (a writeable C-contiguous float32 array of ``keys.size * dim``
        values), the answer is decoded straight into it and ``out`` is returned: a
        training loop that passes the same array every step allocates no rows at all."""
        outs = None if out is None else {table: out}
        return self.lookup_many({table: keys}, with_found=with_found, timeout=timeout, out=outs)[
            table
        ]

    @_rediscovering(repeat=True)
    def lookup_many(
        self,
        keys_by_table: Mapping[str, Any],
        *,
        with_found: bool = False,
        timeout: float | None = None,
        out: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """``lookup`` of several tables in one request per shard; ``out`` maps a table to
        the array its rows are decoded into (see :meth:`lookup`). A table's keys may be a
        ``UniqueKeys`` made for this many shards (``push_many`` too): sent as they are."""
        shards = self._topology()
        if with_found and shards[0].role != "serving":
            raise PreconditionError(
                "with_found needs serving servers: training servers give every key a row"
            )
        tables = list(keys_by_table)
        specs = [self._table_info(name) for name in tables]
        shapes = [np.shape(keys_by_table[name]) for name in tables]
        routed = [route_table(keys_by_table[name], name, self.num_shards) for name in tables]
        # Answers carry float32 values (serving widens float16 storage) and a found byte.
        found_byte = 1 if shards[0].role == "serving" else 0
        row_bytes = [max(8, spec.dim * 4 + found_byte) for spec in specs]
        calls, pieces = messages.lookup_calls(
            tables, routed, row_bytes, self._chunks, self._calls.views
        )
        outs = out or {}
        unknown = sorted(set(outs) - set(tables))
        if unknown:
            raise ValueError(f"out names table {unknown[0]!r}, which is not looked up")
        rows_out = [
            output_rows(outs.get(name), routed[t].position.size, specs[t].dim, name, self._buffers)
            for t, name in enumerate(tables)
        ]
        responses = self._call_all("Lookup", calls, timeout)
        dims = [spec.dim for spec in specs]
        parts = messages.lookup_answers(calls, responses, pieces, tables, dims, self.addresses)
        result: dict[str, Any] = {}
        for t, name in enumerate(tables):
            position = routed[t].position
            # each answer is copied once, from the received bytes into the caller's rows
            for start, part_rows, _ in parts[t]:
                source = part_rows if part_rows.dtype == np.float32 else part_rows.view(np.uint16)
                scatter_answer(source, HALF_TO_F32, start, position, rows_out[t])
            given = outs.get(name)
            rows = given if given is not None else rows_out[t].reshape(shapes[t] + (specs[t].dim,))
            if with_found:
                unique_found = assemble_found(parts[t], routed[t].keys.size)
                found = np.take(unique_found, position).reshape(shapes[t])
                result[name] = (rows, found)
            else:
                result[name] = rows
        return result

    def push(
        self, table: str, keys: Any, grads: Any, *, timeout: float | None = None
    ) -> PushResult:
        """Apply ``grads`` (``keys.shape + (dim,)``) with the table's optimizer, once.

        ``grads`` are gradients of the batch's **summed** loss (not its mean) with respect
        to each looked-up row: the server applies them unscaled, duplicates of a key
        summed, and sparse optimizers such as Adagrad are tuned for that scale. Gradients
        of a mean loss shrink every key's update by the batch size (the MovieLens demo's
        model stays at loss 0.693 with means, and reaches 0.40 with sums).
        """
        return self.push_many({table: (keys, grads)}, timeout=timeout)

    @_rediscovering(repeat=False)
    def push_many(
        self, grads_by_table: Mapping[str, tuple[Any, Any]], *, timeout: float | None = None
    ) -> PushResult:
        """``push`` of several tables in one request per shard.

        Each shard applies its part on its own: retries (same ``request_id``) never
        apply a part twice, but if a shard refuses its part for good, the other shards
        may already have applied theirs.
        """
        self._topology()
        tables = list(grads_by_table)
        specs = [self._table_info(name) for name in tables]
        routed, summed = [], []
        for name, spec in zip(tables, specs, strict=True):
            raw_keys, raw_grads = grads_by_table[name]
            r = route_table(raw_keys, name, self.num_shards)
            grads = np.asarray(raw_grads)
            if grads.shape != np.shape(raw_keys) + (spec.dim,):
                raise ValueError(
                    f"grads of table {name!r} must have shape keys.shape + ({spec.dim},) = "
                    f"{np.shape(raw_keys) + (spec.dim,)}, got {grads.shape}"
                )
            total = np.zeros((r.keys.size, spec.dim), dtype=np.float32)
            segment_sum(
                r.position, np.ascontiguousarray(grads.reshape(-1, spec.dim), np.float32), total
            )
            routed.append(r)
            summed.append(total)
        row_bytes = [8 + spec.dim * 4 for spec in specs]
        push_id = f"{self._request_prefix}-{next(self._request_counter)}"
        calls = messages.push_calls(
            tables, routed, summed, row_bytes, self._chunks, self._calls.views, push_id
        )
        responses = self._call_all("Push", calls, timeout)
        return PushResult(
            rows_updated=sum(r.rows_updated for r in responses),
            rows_pending_admission=sum(r.rows_pending_admission for r in responses),
            duplicate_requests=sum(r.duplicate for r in responses),
        )

    def lookup_async(self, table: str, keys: Any, **kwargs: Any) -> concurrent.futures.Future:
        """``lookup`` in the background (overlap it with compute)."""
        return self._executor.submit(self.lookup, table, keys, **kwargs)

    def lookup_many_async(
        self, keys_by_table: Mapping[str, Any], **kwargs: Any
    ) -> concurrent.futures.Future:
        """``lookup_many`` in the background."""
        return self._executor.submit(self.lookup_many, keys_by_table, **kwargs)

    def push_async(
        self, table: str, keys: Any, grads: Any, **kwargs: Any
    ) -> concurrent.futures.Future:
        """``push`` in the background."""
        return self._executor.submit(self.push, table, keys, grads, **kwargs)

    @_rediscovering(repeat=True)
    def pull_dense(
        self,
        names: Sequence[str] | None = None,
        *,
        with_version: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """Dense arrays (all when ``names`` is None) from shard 0, and with
        ``with_version`` the version they are at: ``(arrays, version)``."""
        self._topology()
        request = ps_pb2.PullDenseRequest(names=list(names or ()))
        (response,) = self._call_all("PullDense", [(0, request)], timeout)
        arrays = {
            a.name: np.frombuffer(a.values, dtype="<f4").astype(np.float32) for a in response.arrays
        }
        return (arrays, int(response.version)) if with_version else arrays

    @_rediscovering(repeat=False)
    def push_dense(self, grads: Mapping[str, Any], *, timeout: float | None = None) -> int:
        """Apply gradients to dense arrays on shard 0, once; returns their new version."""
        self._topology()
        arrays = [
            ps_pb2.DenseArray(
                name=name, values=np.ascontiguousarray(np.asarray(g).reshape(-1), "<f4").tobytes()
            )
            for name, g in grads.items()
        ]
        request = ps_pb2.PushDenseRequest(
            grads=arrays, request_id=f"{self._request_prefix}-{next(self._request_counter)}/d"
        )
        (response,) = self._call_all("PushDense", [(0, request)], timeout)
        return int(response.version)

    def describe(self, *, timeout: float | None = None) -> list[ShardInfo]:
        """What every server says about itself now (sizes and versions included)."""
        calls = [(s, ps_pb2.DescribeTablesRequest()) for s in range(self.num_shards)]
        responses = self._call_all("DescribeTables", calls, timeout)
        return [shard_info_from_proto(a, r) for a, r in zip(self.addresses, responses, strict=True)]

    def sync_state(self, *, timeout: float | None = None) -> list[SyncState]:
        """What every (serving) server has applied: its cursors per table and training
        shard, and its dense version and epoch. Training servers refuse it."""
        calls = [(s, ps_pb2.GetSyncStateRequest()) for s in range(self.num_shards)]
        responses = self._call_all("GetSyncState", calls, timeout)
        return [sync_state_from_proto(a, r) for a, r in zip(self.addresses, responses, strict=True)]

    def reset_sync_cursors(
        self, table: str = "", source_shards: Sequence[int] = (), *, timeout: float | None = None
    ) -> int:
        """Drop sync cursors on every (serving) server (an admin's call): ``table`` and
        ``source_shards`` narrow it, empty means all. The agent's next round then sends
        those tables whole. Returns the cursors dropped in all."""
        request = ps_pb2.ResetSyncCursorsRequest(table=table, source_shards=list(source_shards))
        calls = [(s, request) for s in range(self.num_shards)]
        responses = self._call_all("ResetSyncCursors", calls, timeout)
        return sum(r.cursors_reset for r in responses)

    def expire(self, now: float = 0.0, *, timeout: float | None = None) -> int:
        """Drop the rows whose TTL has passed at ``now`` (unix seconds; 0 = each server's
        clock) on every (training) server; returns the rows dropped in all."""
        if not np.isfinite(now) or now < 0:
            raise ValueError(f"now must be unix seconds >= 0 (0 = the server's clock), got {now}")
        calls = [(s, ps_pb2.ExpireRequest(now=now)) for s in range(self.num_shards)]
        responses = self._call_all("Expire", calls, timeout)
        return sum(int(r.rows_expired) for r in responses)

    def snapshot(self, *, full: bool = False, timeout: float | None = None) -> list[SnapshotInfo]:
        """Write a snapshot on every server now (full, or incremental since each server's
        previous one), e.g. before a planned change; returns what each wrote. Servers
        without a snapshot directory refuse it (:class:`PreconditionError`)."""
        calls = [(s, ps_pb2.SnapshotRequest(full=full)) for s in range(self.num_shards)]
        responses = self._call_all("Snapshot", calls, timeout)
        return [
            SnapshotInfo(a, r.path, int(r.bytes), float(r.seconds))
            for a, r in zip(self.addresses, responses, strict=True)
        ]

    def close(self) -> None:
        """Close the channels; the client cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        self._calls.close()

    def __enter__(self) -> PSClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    @property
    def addresses(self) -> tuple[str, ...]:
        """The servers' addresses; ``addresses[i]`` is shard ``i`` once the topology is known."""
        return self._calls.addresses

    @property
    def num_shards(self) -> int:
        return self._calls.num_shards

    def _connect(self, addresses: Sequence[str]) -> None:
        self._calls.connect(addresses)
        self._shards: list[ShardInfo] | None = None
        # the message budget and key limit of ``_shards``, kept with the list they came from
        self._limits: tuple[list[ShardInfo], int, int] | None = None

    def _call_all(
        self, method: str, calls: list[tuple[int, Any]], timeout: float | None
    ) -> list[Any]:
        if self._closed:
            raise RuntimeError("the client is closed")
        return self._calls.call_all(method, calls, timeout)

    def _rediscover(self) -> None:
        """Resolve the service name again and reconnect (the cluster changed)."""
        assert self._service is not None
        with self._lock:
            addresses = resolve_service(self._service, self._resolver)
            _LOGGER.info("%s resolves to %s; reconnecting", self._service, ", ".join(addresses))
            self._connect(addresses)

    def _topology(self) -> list[ShardInfo]:
        """The servers' descriptions, in shard order, checked once."""
        if self._shards is not None:
            return self._shards
        try:
            with self._lock:
                if self._shards is None:
                    shards = self.describe()
                    order = shard_order(shards)
                    if order != list(range(len(shards))):
                        self._calls.reorder(order)
                        shards = [shards[i] for i in order]
                    if problems := client_view_problems(shards, self.role):
                        raise TopologyError("cluster topology mismatch: " + "; ".join(problems))
                    self._shards = shards
        except (TopologyError, ServerUnavailableError):
            if self._service is not None:
                self._rediscover()  # the next call sees what the name resolves to then
            raise
        return self._shards

    def _table_info(self, name: str) -> TableInfo:
        assert self._shards is not None
        try:
            return self._shards[0].tables[name]
        except KeyError:
            raise UnknownTableError(
                f"unknown table {name!r} (the cluster has: "
                f"{', '.join(sorted(self._shards[0].tables))})"
            ) from None

    def _chunks(self, sizes: list[int], row_bytes: list[int]) -> list[list[tuple[int, int, int]]]:
        shards = self._shards
        assert shards is not None
        limits = self._limits
        if limits is None or limits[0] is not shards:
            limit = min([self._max_message_bytes] + [s.max_message_bytes for s in shards])
            limits = (shards, int(limit * _MESSAGE_FILL), min(s.max_batch_keys for s in shards))
            self._limits = limits
        return plan_chunks(sizes, row_bytes, limits[1], limits[2])
