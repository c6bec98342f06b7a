"""The fresh-process side of ``service_bench.py``: a client that has only ever exchanged the
benchmark's batch size, as a trainer's process has. Prints one JSON line of results.

    python benchmarks/service_fresh.py lookup ADDRESS --rows N --batch B --seconds S
    python benchmarks/service_fresh.py bare ADDRESS --batch B --seconds S
    python benchmarks/service_fresh.py trainer ADDRESS --rows N --batch B --seconds S
    (any of them with --untuned: the process keeps glibc's adaptive malloc thresholds,
    ``PSClient(tune_allocator=False)``; by default the bare stub's process fixes them as a
    default ``PSClient`` does, so both sides of a ratio run in the same process state)

- ``lookup``: a new ``PSClient``; if the table is empty, it first fills it with
  ``--batch``-key lookups (no large message ever crosses), makes one untimed lookup
  (connection, topology, kernels), then times lookups of random existing keys.
- ``bare``: a raw stub against the bare servicer, ``--batch``-key requests only.
- ``trainer``: a trainer-like loop: each step looks up a batch (1 key in 16 never seen
  before, so rows keep arriving), computes gradients with some numpy (a ``dim x dim``
  layer and its backward pass), and pushes them. Lookup latencies and step times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from service_procs import MAX_MESSAGE_BYTES, TABLE

_NEW_KEY_SHARE = 16  # one key in this many is new in a trainer step


def _fill(client, rows: int, batch: int) -> None:
    if client.describe()[0].tables[TABLE].num_rows >= rows:
        return
    for start in range(0, rows, batch):
        client.lookup(TABLE, np.arange(start, min(rows, start + batch), dtype=np.uint64))


def _lookup(args) -> dict:
    from ps_client import PSClient

    rng = np.random.default_rng(args.seed)
    batches = [rng.integers(0, args.rows, args.batch).astype(np.uint64) for _ in range(64)]
    with PSClient(
        [args.address], timeout=120, attempt_timeout=120, tune_allocator=not args.untuned
    ) as client:
        _fill(client, args.rows, args.batch)
        client.lookup(TABLE, batches[-1])  # untimed: connection, topology, kernels loaded
        return {"latencies": _loop(lambda k: client.lookup(TABLE, k), batches, args.seconds)}


def _bare(args) -> dict:
    import grpc

    from monolith_ps.v1 import ps_pb2, ps_pb2_grpc

    rng = np.random.default_rng(args.seed)
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    with grpc.insecure_channel(args.address, options=options) as channel:
        stub = ps_pb2_grpc.ParameterServerStub(channel)
        requests = [
            ps_pb2.LookupRequest(
                tables=[
                    ps_pb2.TableKeys(
                        table=TABLE,
                        keys=rng.integers(0, 1 << 40, args.batch).astype(np.uint64).tobytes(),
                    )
                ]  # fmt: skip
            )
            for _ in range(64)
        ]
        stub.Lookup(requests[0], timeout=120, wait_for_ready=True)
        return {"latencies": _loop(lambda r: stub.Lookup(r, timeout=60), requests, args.seconds)}


def _trainer(args) -> dict:
    from ps_client import PSClient

    rng = np.random.default_rng(args.seed)
    weights = (rng.standard_normal((args.dim, args.dim)) * 0.1).astype(np.float32)
    next_new = args.rows + (args.seed << 32)
    lookups, steps = [], []
    with PSClient([args.address], timeout=120, attempt_timeout=120) as client:
        _fill(client, args.rows, args.batch)
        warm = rng.integers(0, args.rows, args.batch).astype(np.uint64)
        client.push(TABLE, warm, client.lookup(TABLE, warm) * np.float32(0.0))  # untimed
        deadline = time.perf_counter() + args.seconds
        while time.perf_counter() < deadline or len(steps) < 5:
            keys = rng.integers(0, args.rows, args.batch).astype(np.uint64)
            new = args.batch // _NEW_KEY_SHARE
            keys[:new] = np.arange(next_new, next_new + new, dtype=np.uint64)
            next_new += new
            start = time.perf_counter()
            rows = client.lookup(TABLE, keys)
            looked_up = time.perf_counter()
            hidden = np.tanh(rows @ weights)
            grads = ((1.0 - hidden * hidden) @ weights.T * np.float32(0.01)).astype(np.float32)
            client.push(TABLE, keys, grads)
            lookups.append(looked_up - start)
            steps.append(time.perf_counter() - start)
    return {"latencies": lookups, "steps": steps}


def _loop(call, batches: list, seconds: float) -> list[float]:
    latencies = []
    deadline = time.perf_counter() + seconds
    i = 0
    while i < 10 or (time.perf_counter() < deadline and i < 100 * len(batches)):
        start = time.perf_counter()
        call(batches[i % len(batches)])
        latencies.append(time.perf_counter() - start)
        i += 1
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("lookup", "bare", "trainer"))
    parser.add_argument("address")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--untuned", action="store_true", help="keep glibc's adaptive malloc thresholds"
    )
    args = parser.parse_args()
    if args.mode == "bare" and not args.untuned:
        from monolith_ps.allocator import reuse_large_buffers_by_default

        reuse_large_buffers_by_default()
    run = {"lookup": _lookup, "bare": _bare, "trainer": _trainer}[args.mode]
    print(json.dumps(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
