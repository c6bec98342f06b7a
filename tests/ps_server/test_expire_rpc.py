"""The Expire RPC: the TTL sweep run against a given time (e.g. a replayed stream's)."""

from __future__ import annotations

import math
import time

import grpc
import numpy as np
import pytest

from monolith_ps.v1 import ps_pb2, ps_pb2_grpc

TTL = 100.0
CONFIG = {
    "tables": [
        {"name": "short_lived", "dim": 2, "optimizer": "sgd", "ttl_seconds": TTL},
        {"name": "kept", "dim": 2, "optimizer": "sgd"},
    ],
}


@pytest.fixture(scope="module")
def stubs(server_factory):
    training = server_factory("training", config=CONFIG)
    serving = server_factory("serving", config=CONFIG)
    channels = [grpc.insecure_channel(f"127.0.0.1:{s.port}") for s in (training, serving)]
    yield [ps_pb2_grpc.ParameterServerStub(ch) for ch in channels]
    for channel in channels:
        channel.close()


def rows(stub) -> dict[str, int]:
    reply = stub.DescribeTables(ps_pb2.DescribeTablesRequest(), timeout=10)
    return {t.name: t.num_rows for t in reply.tables}


def insert(stub, *keys: int) -> None:
    raw = np.array(keys, dtype=np.uint64).tobytes()
    stub.Lookup(
        ps_pb2.LookupRequest(
            tables=[ps_pb2.TableKeys(table=t, keys=raw) for t in ("short_lived", "kept")]
        ),
        timeout=10,
    )


def test_rows_expire_against_the_given_time_only_in_tables_with_a_ttl(stubs):
    training, _ = stubs
    insert(training, 1, 2, 3)
    # Against the server's clock (0) and a time within the TTL, nothing is old enough.
    for now in (0.0, time.time() + TTL / 2):
        assert training.Expire(ps_pb2.ExpireRequest(now=now), timeout=10).rows_expired == 0
    assert rows(training) == {"short_lived": 3, "kept": 3}
    reply = training.Expire(ps_pb2.ExpireRequest(now=time.time() + TTL + 1), timeout=10)
    assert reply.rows_expired == 3
    assert rows(training) == {"short_lived": 0, "kept": 3}
    # Expired rows leave tombstones, which is how serving learns of them.
    epoch = training.DescribeTables(ps_pb2.DescribeTablesRequest(), timeout=10).epoch
    request = ps_pb2.ExportDeltaRequest(table="short_lived", since_version=3, epoch=epoch)
    chunks = list(training.ExportDelta(request, timeout=10))
    assert not any(c.full_resync for c in chunks)
    tombstones = np.concatenate([np.frombuffer(c.tombstone_keys, dtype="<u8") for c in chunks])
    assert sorted(tombstones.tolist()) == [1, 2, 3]


@pytest.mark.parametrize("now", [math.nan, math.inf, -1.0])
def test_a_time_that_is_not_unix_seconds_is_refused_and_expires_nothing(stubs, now):
    training, _ = stubs
    insert(training, 7)
    before = rows(training)
    with pytest.raises(grpc.RpcError) as caught:
        training.Expire(ps_pb2.ExpireRequest(now=now), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "now must be unix seconds >= 0" in caught.value.details()
    assert rows(training) == before


def test_serving_refuses_expire(stubs):
    _, serving = stubs
    with pytest.raises(grpc.RpcError) as caught:
        serving.Expire(ps_pb2.ExpireRequest(now=time.time()), timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "training servers" in caught.value.details()
