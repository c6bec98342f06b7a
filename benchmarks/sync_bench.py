"""Sync throughput and freshness: one full round against the bare gRPC transport.

Ours: a training server holding ``--rows`` changed rows (dim ``--dim``) and two empty
serving servers (subprocesses); the agent (this process) runs one sparse round: export,
route every row to its serving shard, apply. Rows per second of that round, best of
``--repeats`` (the serving servers are restarted empty between repeats).

Reference, in the same run and on the same machine: the same bytes over the same two
hops with no table work at all. A source process streams pre-built DeltaChunks of the
same size and count, this process relays each chunk unchanged to one of two sink
processes that drop them; best of ``--repeats``. Ratio = ours / reference.

Freshness: with the agent looping at ``--sparse-interval`` (1 s), the time from a push
acknowledged by training until a lookup on serving returns the new value, p50/p99.

    python benchmarks/sync_bench.py --rows 1000000 --dim 64 --json results/sync_bench.json
"""

from __future__ import annotations

import argparse
import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
from report import benchmark_parser, markdown_table, publish

from monolith_ps import wire
from monolith_ps.local import LocalCluster
from monolith_ps.routing import shard_of
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from sync_agent.agent import SyncAgent
from sync_agent.discovery.static import StaticDiscovery
from sync_agent.settings import AgentSettings

_MAX_MESSAGE = 256 * 1024 * 1024
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
]
_TABLE = "bench"


# ---------------------------------------------------------------- reference servers


class _Source(ps_pb2_grpc.ParameterServerServicer):
    """Streams ``chunks`` copies of one pre-built chunk: transport work only."""

    def __init__(self, chunks: int, chunk_rows: int, dim: int) -> None:
        rng = np.random.default_rng(0)
        keys = rng.integers(1, 2**63, size=chunk_rows, dtype=np.uint64)
        self._chunk = ps_pb2.DeltaChunk(
            table=_TABLE,
            source_num_shards=1,
            dim=dim,
            dtype=ps_pb2.DTYPE_FLOAT32,
            keys=wire.encode_keys(keys),
            values=rng.standard_normal((chunk_rows, dim), dtype=np.float32).tobytes(),
            versions=wire.encode_versions(np.arange(1, chunk_rows + 1, dtype=np.uint64)),
        )
        self._chunks = chunks

    def ExportDelta(self, request, context):  # noqa: ANN001, ANN201
        for i in range(self._chunks):
            if i == self._chunks - 1:
                last = ps_pb2.DeltaChunk()
                last.CopyFrom(self._chunk)
                last.last = True
                yield last
            else:
                yield self._chunk


class _Sink(ps_pb2_grpc.ParameterServerServicer):
    """Reads every chunk of a stream and drops it."""

    def ApplyDelta(self, request_iterator, context):  # noqa: ANN001, ANN201
        rows = 0
        for chunk in request_iterator:
            rows += len(chunk.keys) // 8
        return ps_pb2.ApplyDeltaResponse(rows_applied=rows)


def _serve_reference(role: str, chunks: int, chunk_rows: int, dim: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=_CHANNEL_OPTIONS)
    servicer = _Source(chunks, chunk_rows, dim) if role == "source" else _Sink()
    ps_pb2_grpc.add_ParameterServerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.stop(0)


def _start_reference(role: str, chunks: int, chunk_rows: int, dim: int):  # noqa: ANN202
    proc = subprocess.Popen(
        [sys.executable, __file__, "--reference-role", role, "--reference-chunks", str(chunks),
         "--chunk-rows", str(chunk_rows), "--dim", str(dim)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    port = int(proc.stdout.readline())
    return proc, f"127.0.0.1:{port}"


def measure_transport(rows: int, chunk_rows: int, dim: int) -> dict:
    """Rows/s of source -> relay (this process) -> two sinks, no table work."""
    chunks = -(-rows // chunk_rows)
    procs = [_start_reference("source", chunks, chunk_rows, dim)]
    procs += [_start_reference("sink", 0, chunk_rows, dim) for _ in range(2)]
    try:
        source = ps_pb2_grpc.ParameterServerStub(
            grpc.insecure_channel(procs[0][1], options=_CHANNEL_OPTIONS)
        )
        sinks = [
            ps_pb2_grpc.ParameterServerStub(grpc.insecure_channel(a, options=_CHANNEL_OPTIONS))
            for _, a in procs[1:]
        ]
        # warm up every connection with an empty stream
        for sink in sinks:
            sink.ApplyDelta(iter([ps_pb2.DeltaChunk()]), timeout=30)
        feeds = [queue.Queue(maxsize=4) for _ in sinks]

        def requests(feed):  # noqa: ANN001, ANN202
            while (chunk := feed.get()) is not None:
                yield chunk

        started = time.perf_counter()
        calls = [
            s.ApplyDelta.future(requests(f), timeout=600) for s, f in zip(sinks, feeds, strict=True)
        ]
        sent_bytes = 0
        for i, chunk in enumerate(source.ExportDelta(ps_pb2.ExportDeltaRequest(), timeout=600)):
            sent_bytes += chunk.ByteSize()
            feeds[i % 2].put(chunk)
        for feed in feeds:
            feed.put(None)
        delivered = sum(call.result().rows_applied for call in calls)
        seconds = time.perf_counter() - started
    finally:
        for proc, _ in procs:
            proc.stdin.close()
            proc.wait(30)
    return {
        "rows": delivered,
        "seconds": seconds,
        "rows_per_second": delivered / seconds,
        "bytes": sent_bytes,
    }


# ---------------------------------------------------------------- ours


def fill_training(address: str, rows: int, dim: int, batch: int = 100_000) -> np.ndarray:
    """Insert ``rows`` rows through Lookup (each insert is a change with a version)."""
    stub = ps_pb2_grpc.ParameterServerStub(grpc.insecure_channel(address, options=_CHANNEL_OPTIONS))
    keys = np.random.default_rng(1).permutation(
        np.arange(1, rows + 1, dtype=np.uint64) * np.uint64(2654435761)
    )
    for start in range(0, rows, batch):
        part = keys[start : start + batch]
        stub.Lookup(
            ps_pb2.LookupRequest(
                tables=[ps_pb2.TableKeys(table=_TABLE, keys=wire.encode_keys(part))]
            ),
            timeout=300,
        )
    return keys


def _agent(cluster: LocalCluster, chunk_rows: int, sparse_interval: float) -> SyncAgent:
    serving = tuple(a for replicas in cluster.serving_addresses for a in replicas)
    settings = AgentSettings(
        training=tuple(cluster.training_addresses),
        serving=serving,
        chunk_rows=chunk_rows,
        sparse_interval=sparse_interval,
        dense_interval=3600.0,
        max_message_bytes=_MAX_MESSAGE,
        stream_timeout=1200.0,
        stall_timeout=120.0,
        rpc_timeout=30.0,
    )
    return SyncAgent(settings, StaticDiscovery(settings.training, settings.serving))


def measure_round(cluster: LocalCluster, rows: int, chunk_rows: int) -> dict:
    """One full round into empty serving servers (a full resync of every row)."""
    with _agent(cluster, chunk_rows, 1.0) as agent:
        started = time.perf_counter()
        report = agent.sync_sparse()
        seconds = time.perf_counter() - started
    if report.outcome != "ok" or report.full_resyncs != 2:
        raise RuntimeError(f"the sync round failed: {report}")
    held = 0
    for address in (a for replicas in cluster.serving_addresses for a in replicas):
        stub = ps_pb2_grpc.ParameterServerStub(grpc.insecure_channel(address))
        described = stub.DescribeTables(ps_pb2.DescribeTablesRequest(), timeout=30)
        held += sum(t.num_rows for t in described.tables if t.name == _TABLE)
    if held != rows:
        raise RuntimeError(f"serving holds {held} rows after the round, training {rows}")
    return {"rows": rows, "seconds": seconds, "rows_per_second": rows / seconds}


def measure_freshness(
    cluster: LocalCluster, keys: np.ndarray, dim: int, samples: int, sparse_interval: float
) -> dict:
    """Push one row, then poll its serving shard until the new value shows."""
    training = ps_pb2_grpc.ParameterServerStub(grpc.insecure_channel(cluster.training_addresses[0]))
    serving = [
        ps_pb2_grpc.ParameterServerStub(grpc.insecure_channel(replicas[0]))
        for replicas in cluster.serving_addresses
    ]
    rng = np.random.default_rng(2)
    latencies = []
    with _agent(cluster, 65536, sparse_interval) as agent:
        loop = threading.Thread(target=agent.run, daemon=True)
        loop.start()
        time.sleep(2 * sparse_interval)
        for i in range(samples):
            key = keys[rng.integers(len(keys))].reshape(1)
            owner = serving[int(shard_of(key, len(serving))[0])]
            request = ps_pb2.LookupRequest(
                tables=[ps_pb2.TableKeys(table=_TABLE, keys=wire.encode_keys(key))]
            )
            before = owner.Lookup(request, timeout=10).tables[0].values
            time.sleep(rng.uniform(0, sparse_interval))  # land anywhere in the interval
            training.Push(
                ps_pb2.PushRequest(
                    tables=[ps_pb2.TableGradients(
                        table=_TABLE, keys=wire.encode_keys(key),
                        grads=np.full((1, dim), 0.5, np.float32).tobytes())],
                    request_id=f"fresh-{i}",
                ),
                timeout=10,
            )  # fmt: skip
            pushed = time.perf_counter()
            deadline = pushed + 30 * sparse_interval
            while owner.Lookup(request, timeout=10).tables[0].values == before:
                if time.perf_counter() > deadline:
                    raise RuntimeError("a pushed row never became visible on serving")
                time.sleep(0.002)
            latencies.append(time.perf_counter() - pushed)
        agent.stop()
        loop.join(30)
    ms = np.array(latencies) * 1000
    return {
        "samples": samples,
        "sparse_interval_seconds": sparse_interval,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


def main() -> int:
    parser = benchmark_parser(__doc__, rows=1_000_000, dim=64)
    parser.add_argument("--chunk-rows", type=int, default=65536)
    parser.add_argument("--sparse-interval", type=float, default=1.0)
    parser.add_argument("--latency-samples", type=int, default=40)
    parser.add_argument(
        "--repeats", type=int, default=2, help="full rounds and reference runs; best of each"
    )
    parser.add_argument("--reference-role", choices=("source", "sink"), help=argparse.SUPPRESS)
    parser.add_argument("--reference-chunks", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_role:
        _serve_reference(args.reference_role, args.reference_chunks, args.chunk_rows, args.dim)
        return 0

    with tempfile.TemporaryDirectory(prefix="sync-bench-") as workdir:
        config = Path(workdir) / "tables.json"
        config.write_text(json.dumps({
            "tables": [{"name": _TABLE, "dim": args.dim, "optimizer": "sgd",
                        "optimizer_args": {"lr": 1.0}, "initializer": "normal"}],
            "server": {"max_message_bytes": _MAX_MESSAGE, "max_batch_keys": 1 << 21},
        }))  # fmt: skip
        with LocalCluster(
            config, training_shards=1, serving_shards=2, agent=False, log_dir=Path(workdir) / "logs"
        ) as cluster:
            keys = fill_training(cluster.training_addresses[0], args.rows, args.dim)
            time.sleep(1.0)  # let the fill's tail (responses, frees) finish before timing
            rounds, references = [], []
            for repeat in range(args.repeats):
                if repeat:  # empty serving servers again, so the round is a full one
                    for shard in range(2):
                        cluster.restart("serving", shard)
                rounds.append(measure_round(cluster, args.rows, args.chunk_rows))
                references.append(measure_transport(args.rows, args.chunk_rows, args.dim))
            ours = max(rounds, key=lambda r: r["rows_per_second"])
            reference = max(references, key=lambda r: r["rows_per_second"])
            freshness = measure_freshness(
                cluster, keys, args.dim, args.latency_samples, args.sparse_interval
            )
    ratio = ours["rows_per_second"] / reference["rows_per_second"]
    result = {
        "benchmark": "sync",
        "rows": args.rows,
        "dim": args.dim,
        "chunk_rows": args.chunk_rows,
        "topology": "1 training shard -> agent -> 2 serving shards, one process each",
        "repeats": args.repeats,
        "full_round": ours,
        "transport_reference": reference,
        "all_rounds": rounds,
        "all_references": references,
        "ratio": ratio,
        "freshness": freshness,
    }
    throughput = markdown_table(
        ["measure", "ours (full round)", "reference (bare gRPC, 2 hops)", "ratio"],
        [
            [f"rows/s, {args.rows:,} rows x dim {args.dim}", f"{ours['rows_per_second']:,.0f}",
             f"{reference['rows_per_second']:,.0f}", f"{ratio:.2f}"],
            ["seconds", f"{ours['seconds']:.2f}", f"{reference['seconds']:.2f}", ""],
        ],
    )  # fmt: skip
    latency = markdown_table(
        [f"push -> visible on serving (sparse interval {args.sparse_interval:g} s, "
         f"{freshness['samples']} samples)", "p50", "p99", "max"],
        [["latency", *(f"{freshness[k]:.0f} ms" for k in ("p50_ms", "p99_ms", "max_ms"))]],
    )  # fmt: skip
    publish(result, f"{throughput}\n\n{latency}", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
