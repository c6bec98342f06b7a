"""What ``mps check`` does once its flags are parsed (``monolith_ps.check_cli``): health,
topology and a lookup of a key each serving shard owns, printed a line per check."""

from __future__ import annotations

import argparse
import sys

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from monolith_ps.routing import shard_of
from monolith_ps.transport.channels import ClientTLS, open_channel
from monolith_ps.transport.cluster import client_view_problems
from monolith_ps.transport.flags import address_list, credentials_from
from ps_client import PSClient, PSError

__all__ = ["run_checks"]


def run_checks(args: argparse.Namespace) -> int:
    """Check every server ``mps check``'s flags list; 0 when all answered as they should."""
    groups = []
    if args.training:
        groups.append(("training", address_list(args.training)))
    groups += [("serving", address_list(serving)) for serving in args.serving]
    if not groups:
        print("mps check: give --training and/or --serving addresses", file=sys.stderr)
        return 2
    tls, token = credentials_from(args)
    failed = 0
    for role, addresses in groups:
        failed += _check_group(role, addresses, tls, args.timeout, token)
    print("all checks passed" if not failed else f"{failed} check(s) failed")
    return 1 if failed else 0


def _check_group(
    role: str, addresses: list[str], tls: ClientTLS | None, timeout: float, token: str | None
) -> int:
    """Health of each server, then topology and (serving) lookups; returns failures."""
    failures = 0
    for address in addresses:
        with open_channel(address, [], tls) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=timeout, wait_for_ready=True
                )
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                status = f"{exc.code().name}: {exc.details()}"
        failures += _report(status == "SERVING", f"{role} {address} health", status)
    try:
        with PSClient(addresses, role=role, tls=tls, timeout=timeout, token=token) as client:
            shards = client.describe(timeout=timeout)
            if problems := client_view_problems(shards, role):
                return failures + _report(False, f"{role} topology", "; ".join(problems))
            _report(True, f"{role} topology", f"{len(shards)} shard(s) in address order")
            if role == "serving":
                n = len(addresses)
                candidates = np.arange(1, 64 * n + 1, dtype=np.uint64)
                owners = shard_of(candidates, n)
                keys = np.array([candidates[owners == s][0] for s in range(n)], np.uint64)
                for table in shards[0].tables:
                    rows, _ = client.lookup(table, keys, with_found=True, timeout=timeout)
                    _report(True, f"{role} lookup {table}", f"{len(rows)} shard(s) answered")
    except PSError as exc:
        failures += _report(False, f"{role} {','.join(addresses)}", str(exc))
    return failures


def _report(ok: bool, what: str, detail: str) -> int:
    print(f"{'ok  ' if ok else 'FAIL'} {what}: {detail}")
    return 0 if ok else 1
