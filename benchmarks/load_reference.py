"""The load test's reference cluster: servers that answer every RPC with canned bytes, so
the reference run measures the clients, gRPC and the machine without the table engine.

Run by ``load_test.py`` as ``python load_reference.py ROLE:SHARD:COUNT``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from concurrent import futures

import grpc
import numpy as np

from monolith_ps import wire
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from ps_server.server import PreEncodedResponses

__all__ = ["TABLES", "reference_cluster"]

TABLES = {"user": 16, "item": 8}  # name -> dim, of the load test's cluster too


class _CannedServicer(ps_pb2_grpc.ParameterServerServicer):
    """Answers DescribeTables truthfully and Lookup/Push with zeros: transport only."""

    def __init__(self, role: str, shard_index: int, num_shards: int) -> None:
        self.role = role
        self.shard_index = shard_index
        self.num_shards = num_shards

    def DescribeTables(self, request, context):  # noqa: ANN001, ANN201
        role = ps_pb2.ROLE_TRAINING if self.role == "training" else ps_pb2.ROLE_SERVING
        return ps_pb2.DescribeTablesResponse(
            role=role,
            shard_index=self.shard_index,
            num_shards=self.num_shards,
            tables=[ps_pb2.TableInfo(name=n, dim=d) for n, d in TABLES.items()],
            max_message_bytes=64 << 20,
            max_batch_keys=1 << 20,
        )

    def Lookup(self, request, context):  # noqa: ANN001, ANN201
        """Serialized, as the real server answers (``PreEncodedResponses``)."""
        answers = []
        for entry in request.tables:
            n, dim = len(entry.keys) // 8, TABLES[entry.table]
            found = np.ones(n, bool) if self.role == "serving" else None
            answers.append((entry.table, dim, np.zeros((n, dim), np.float32), found))
        return wire.encode_lookup_response(answers)

    def Push(self, request, context):  # noqa: ANN001, ANN201
        rows = sum(len(entry.keys) // 8 for entry in request.tables)
        return ps_pb2.PushResponse(rows_updated=rows)


def reference_server_main(role: str, shard_index: int, num_shards: int) -> int:
    """A canned server on 127.0.0.1:0; prints its port, serves until stdin closes."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8), interceptors=[PreEncodedResponses()]
    )
    ps_pb2_grpc.add_ParameterServerServicer_to_server(
        _CannedServicer(role, shard_index, num_shards), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)
    return 0


@contextlib.contextmanager
def reference_cluster(num_training: int):  # noqa: ANN201
    """Canned training shards and one canned serving shard, as subprocesses."""
    procs = []
    try:
        addresses: dict[str, list[str]] = {"training": [], "serving": []}
        for role, shard, count in [("training", i, num_training) for i in range(num_training)] + [
            ("serving", 0, 1)
        ]:
            proc = subprocess.Popen(
                [sys.executable, __file__, f"{role}:{shard}:{count}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            assert proc.stdout is not None
            addresses[role].append(f"127.0.0.1:{int(proc.stdout.readline())}")
        yield addresses
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------- checks and main


if __name__ == "__main__":
    _role, _shard, _count = sys.argv[1].split(":")
    sys.exit(reference_server_main(_role, int(_shard), int(_count)))
