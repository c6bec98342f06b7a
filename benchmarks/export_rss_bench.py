"""Training's memory while delta exports are paused: what a reader that stops reading costs.

One training ``mps server`` subprocess with a table of ``--rows`` rows. ``--exports``
ExportDelta streams of the whole table are opened, each reader takes one chunk and then
stops (its channel keeps HTTP/2's initial flow-control window, so the server cannot hand
the rest to the client's buffers). Reported: training's RSS before (the reference, same
process) and its peak while the exports are paused (from /proc), the growth per export,
and the bytes the exports hold against ``server.stream_memory_bytes``.

    python benchmarks/export_rss_bench.py --json results/export_rss_bench.json
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from hostile_bench import BenchServer, until_started
from report import benchmark_parser, markdown_table, write_result

from monolith_ps import wire
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc

_TABLE = "emb"
_BATCH = 50_000


def _fill(server: BenchServer, rows: int) -> None:
    """``rows`` rows on training: lookups insert."""
    options = [("grpc.max_receive_message_length", 256 << 20)]
    with grpc.insecure_channel(server.address, options) as channel:
        stub = ps_pb2_grpc.ParameterServerStub(channel)
        for start in range(1, rows + 1, _BATCH):
            keys = np.arange(start, min(rows + 1, start + _BATCH), dtype=np.uint64)
            table = ps_pb2.TableKeys(table=_TABLE, keys=wire.encode_keys(keys))
            until_started(stub.Lookup, ps_pb2.LookupRequest(tables=[table]), timeout=120)


def _settled_rss(server: BenchServer, seconds: float) -> int:
    """The largest RSS seen over ``seconds`` (bounded sampling every 0.1 s)."""
    server.peak_rss = 0
    for _ in range(int(seconds / 0.1) + 1):
        server.sample_rss()
        time.sleep(0.1)
    return server.peak_rss


def _paused_exports(server: BenchServer, exports: int, hold: float) -> tuple[int, float]:
    """Peak RSS while ``exports`` readers each hold a whole-table export after one chunk,
    and the stream-memory gauge then."""
    options = [("grpc.http2.bdp_probe", 0)]
    with grpc.insecure_channel(server.address, options) as channel:
        stub = ps_pb2_grpc.ParameterServerStub(channel)
        calls = []
        for _ in range(exports):
            request = ps_pb2.ExportDeltaRequest(table=_TABLE, max_chunk_rows=8192)
            call = stub.ExportDelta(request, timeout=120)
            next(call)
            calls.append(call)
        try:
            peak = _settled_rss(server, hold)
            held = server.metric("monolith_ps_stream_memory_bytes")
        finally:
            for call in calls:
                call.cancel()
    return peak, held


def main() -> None:
    parser = benchmark_parser(__doc__, rows=1_000_000, dim=32)
    parser.add_argument("--exports", type=int, default=4, help="paused exports at once")
    parser.add_argument("--hold", type=float, default=3.0, help="seconds they stay paused")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "config.json"
        config.write_text(json.dumps({
            "tables": [{"name": _TABLE, "dim": args.dim}],
            "server": {"stream_idle_timeout": "120s", "stream_max_duration": "600s"},
        }))  # fmt: skip
        server = BenchServer("training", config, work / "training.log")
        try:
            _fill(server, args.rows)
            before = _settled_rss(server, 2.0)
            peak, held = _paused_exports(server, args.exports, args.hold)
        finally:
            server.stop()
    growth = peak - before
    result = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "rss_before_mb": before >> 20,
        "rss_peak_paused_mb": peak >> 20,
        "growth_mb": round(growth / (1 << 20), 1),
        "growth_per_export_mb": round(growth / (1 << 20) / args.exports, 1),
        "stream_memory_bytes_held": int(held),
        "row_bytes_per_export_mb": round(args.rows * (16 + 4 * args.dim) / (1 << 20), 1),
        "note": "2-core machine shared with other work; RSS from /proc of the server",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        write_result(args.json, result, _markdown(result))


def _markdown(result: dict) -> str:
    rows = [
        ("RSS before, MB", result["rss_before_mb"]),
        (f"peak RSS, {result['config']['exports']} exports paused, MB",
         result["rss_peak_paused_mb"]),
        ("growth per paused export, MB", result["growth_per_export_mb"]),
        ("held against server.stream_memory_bytes, bytes", result["stream_memory_bytes_held"]),
        ("the table's rows (key, version, values), MB", result["row_bytes_per_export_mb"]),
    ]  # fmt: skip
    return markdown_table(["measure", "value"], rows) + "\n"


if __name__ == "__main__":
    main()
