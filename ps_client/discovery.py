"""Where a client's shards are: a Service name resolved to every pod, and addresses put in
the shard order the servers themselves report.

A headless Kubernetes Service (the chart's training and serving Services) has one DNS A
record per ready pod, so ``getaddrinfo`` of its name lists every shard. The servers then
say which shard each is in ``DescribeTables``; the client sorts by that and refuses, with a
message that says what it saw, a set of servers that is not exactly one cluster's shards
``0..n-1`` (a missing shard, one claimed twice, or two shard counts at once while a reshard
is under way).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

from monolith_ps.transport.cluster import ShardInfo
from ps_client.errors import NameResolutionError, TopologyError

__all__ = ["Resolver", "resolve_service", "shard_order"]

Resolver = Callable[[str, int], Sequence[str]]
"""``(host, port) -> IP addresses``: how a Service name is resolved (``getaddrinfo`` by
default; tests pass their own)."""


def resolve_service(target: str, resolver: Resolver | None = None) -> list[str]:
    """``ip:port`` for every address ``target`` (``host:port``) resolves to, in the
    resolver's order, each once."""
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"a service must be host:port, got {target!r}")
    host = host.removeprefix("[").removesuffix("]")
    port = int(port_text)
    ips = list(dict.fromkeys((resolver or _getaddrinfo)(host, port)))
    if not ips:
        raise NameResolutionError(f"{target}: the name resolves to no address")
    return [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips]


def _getaddrinfo(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NameResolutionError(f"cannot resolve {host!r}: {exc}") from None
    return [str(info[4][0]) for info in infos]


def shard_order(shards: Sequence[ShardInfo]) -> list[int]:
    """Positions of ``shards`` by the shard index each reported: ``shards[order[i]]`` is
    shard ``i``. ``TopologyError`` unless they are exactly shards ``0..n-1`` of one ``n``;
    serving replicas of one shard are allowed, the first one listed is used (resolvers
    rotate their answers, which spreads clients over the replicas)."""
    seen = ", ".join(f"{s.address} is shard {s.shard_index} of {s.num_shards}" for s in shards)
    counts = sorted({s.num_shards for s in shards})
    if len(counts) > 1:
        raise TopologyError(
            f"the servers report different shard counts {counts} (a reshard under way?): {seen}"
        )
    by_index: dict[int, int] = {}
    for position, shard in enumerate(shards):
        if shard.shard_index in by_index:
            first = shards[by_index[shard.shard_index]]
            if shard.role == first.role == "serving":
                continue
            other = first.address
            raise TopologyError(
                f"shard {shard.shard_index} is claimed by both {other} and {shard.address}: {seen}"
            )
        by_index[shard.shard_index] = position
    extra = sorted(i for i in by_index if i >= counts[0])
    if extra:
        raise TopologyError(f"shard index(es) {extra} are out of range: {seen}")
    missing = sorted(set(range(counts[0])) - set(by_index))
    if missing:
        raise TopologyError(
            f"the cluster has {counts[0]} shards but shard(s) {missing} are not among the "
            f"{len(shards)} servers this client sees (not ready yet, or not listed): {seen}"
        )
    return [by_index[i] for i in range(counts[0])]
