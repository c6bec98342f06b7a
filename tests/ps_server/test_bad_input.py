"""Every kind of bad request gets its status code and a message naming the problem, and
changes nothing: the tables, dense arrays and health are as before."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from monolith_ps.v1 import ps_pb2, ps_pb2_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
MAX_MESSAGE_BYTES = 1 << 16
MAX_BATCH_KEYS = 64


def keys_bytes(*keys: int) -> bytes:
    return np.array(keys, dtype=np.uint64).tobytes()


def grads_bytes(n: int, dim: int, fill: float = 0.5) -> bytes:
    return np.full((n, dim), fill, dtype=np.float32).tobytes()


def lookup(table: str, keys: bytes) -> ps_pb2.LookupRequest:
    return ps_pb2.LookupRequest(tables=[ps_pb2.TableKeys(table=table, keys=keys)])


def push(*entries: tuple[str, bytes, bytes], request_id: str = "") -> ps_pb2.PushRequest:
    return ps_pb2.PushRequest(
        tables=[ps_pb2.TableGradients(table=t, keys=k, grads=g) for t, k, g in entries],
        request_id=request_id,
    )


def nan_grads(n: int, dim: int, row: int, value: float) -> bytes:
    grads = np.full((n, dim), 0.5, dtype=np.float32)
    grads[row, 1] = value
    return grads.tobytes()


VALID_PUSH = ("user_id", keys_bytes(1, 2), grads_bytes(2, 8))
CASES = {
    "key bytes not a multiple of 8": (
        "Lookup", lookup("user_id", b"\x01" * 15), INVALID,
        "tables[0].keys (table 'user_id'): 15 bytes is not a whole number of 8-byte"),
    "push key bytes not a multiple of 8": (
        "Push", push(("user_id", b"\x01" * 9, grads_bytes(1, 8))), INVALID, "8-byte uint64 keys"),
    "grads size does not match dim": (
        "Push", push(("user_id", keys_bytes(1, 2), grads_bytes(2, 7))), INVALID,
        "grads of table 'user_id': expected 2 x 8 float32 values (64 bytes), got 56 bytes"),
    "unknown table in lookup": (
        "Lookup", lookup("no_such_table", keys_bytes(1)), NOT_FOUND,
        "unknown table 'no_such_table' (this server has: gated, item_id, user_id, wide)"),
    "unknown table after a valid one in push": (
        "Push", push(VALID_PUSH, ("nope", keys_bytes(3), grads_bytes(1, 8))), NOT_FOUND,
        "unknown table 'nope'"),
    "NaN gradient after a valid table": (
        "Push", push(VALID_PUSH, ("item_id", keys_bytes(5, 6, 7), nan_grads(3, 4, 2, np.nan))),
        INVALID, "grads of table 'item_id': NaN or Inf in row 2 (key 7)"),
    "Inf gradient": (
        "Push", push(("user_id", keys_bytes(1, 2), nan_grads(2, 8, 0, np.inf))), INVALID,
        "NaN or Inf in row 0 (key 1)"),
    "empty lookup": ("Lookup", ps_pb2.LookupRequest(), INVALID, "empty request: it names no table"),
    "empty push": ("Push", push(), INVALID, "empty request"),
    "empty key batch": (
        "Lookup", lookup("user_id", b""), INVALID, "empty batch: tables[0] (table 'user_id')"),
    "too many keys": (
        "Lookup", lookup("item_id", keys_bytes(*range(MAX_BATCH_KEYS + 1))), EXHAUSTED,
        f"batch too large: 65 keys, the limit is server.max_batch_keys={MAX_BATCH_KEYS}"),
    "too many keys over two tables": (
        "Push", push(("item_id", keys_bytes(*range(40)), grads_bytes(40, 4)),
                     ("gated", keys_bytes(*range(40)), grads_bytes(40, 4))),
        EXHAUSTED, "80 keys"),
    "answer over the message limit": (
        "Lookup", lookup("wide", keys_bytes(*range(60))), EXHAUSTED,
        f"the answer would be 245760 bytes, the limit is server.max_message_bytes="
        f"{MAX_MESSAGE_BYTES}"),
    "request over the message limit": (
        "Lookup", lookup("user_id", keys_bytes(*range(MAX_MESSAGE_BYTES // 8 + 8))), EXHAUSTED,
        "larger than max"),
    "shard view of another shard": (
        "Lookup", ps_pb2.LookupRequest(tables=lookup("user_id", keys_bytes(1)).tables,
                                       view=ps_pb2.ShardView(shard_index=3, num_shards=4)),
        PRECONDITION, "the request is for shard 3 of 4, this server is shard 0 of 1"),
    "request id too long": (
        "Push", push(VALID_PUSH, request_id="r" * 129), INVALID, "request_id is 129 bytes"),
    "unknown dense array": (
        "PullDense", ps_pb2.PullDenseRequest(names=["mlp", "nope"]), NOT_FOUND,
        "unknown dense array 'nope' (this server has: mlp)"),
    "dense gradient of the wrong size": (
        "PushDense", ps_pb2.PushDenseRequest(grads=[ps_pb2.DenseArray(
            name="mlp", values=np.zeros(15, np.float32).tobytes())]), INVALID,
        "grads of dense array 'mlp': expected 1 x 16 float32 values"),
    "dense NaN gradient": (
        "PushDense", ps_pb2.PushDenseRequest(grads=[ps_pb2.DenseArray(
            name="mlp", values=np.full(16, np.nan, np.float32).tobytes())]), INVALID,
        "grads of dense array 'mlp': NaN or Inf"),
    "empty dense push": ("PushDense", ps_pb2.PushDenseRequest(), INVALID, "empty PushDense"),
}  # fmt: skip


@pytest.fixture(scope="module")
def limited_server(server_factory):
    config = {
        "tables": [
            {"name": "user_id", "dim": 8},
            {"name": "item_id", "dim": 4, "optimizer": "sgd"},
            {"name": "gated", "dim": 4, "admit_after": 3},
            {"name": "wide", "dim": 1024},
        ],
        "dense": [{"name": "mlp", "size": 16}],
        "server": {"max_message_bytes": MAX_MESSAGE_BYTES, "max_batch_keys": MAX_BATCH_KEYS},
    }
    server = server_factory("training", config=config)
    channel = grpc.insecure_channel(
        server.address, options=[("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES)]
    )
    stub = ps_pb2_grpc.ParameterServerStub(channel)
    # Some rows and a dense step, so "nothing changed" compares real content.
    stub.Lookup(lookup("user_id", keys_bytes(1, 2, 3)))
    stub.Push(push(VALID_PUSH))
    stub.PushDense(
        ps_pb2.PushDenseRequest(grads=[ps_pb2.DenseArray(name="mlp", values=grads_bytes(1, 16))])
    )
    return server, stub, channel


def fingerprint(server) -> dict:
    """Everything a refused request must leave as it was."""
    tables = {}
    for name, table in server.state.tables.items():
        keys = np.sort(table.keys())
        tables[name] = (table.version, len(table), keys.tobytes(), table.find(keys)[0].tobytes())
    values, _, version = server.state.dense.export()
    return {"tables": tables, "dense": ({k: v.tobytes() for k, v in values.items()}, version)}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_is_refused_precisely_and_changes_nothing(limited_server, case):
    server, stub, channel = limited_server
    method, request, code, message = CASES[case]
    before = fingerprint(server)
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(request, timeout=10)
    assert info.value.code() == code, info.value.details()
    assert message in info.value.details()
    assert fingerprint(server) == before
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_the_server_still_answers_after_every_bad_request(limited_server):
    _, stub, _ = limited_server
    reply = stub.Lookup(lookup("user_id", keys_bytes(1, 2)), timeout=10)
    assert len(reply.tables[0].values) == 2 * 8 * 4
