"""Property-based fuzzing of every RPC through the generated stubs, on a training and a
serving server on loopback.

Requests are drawn from malformed and borderline content: random bytes for keys,
gradients, values and versions, wrong lengths, huge dims and shard counts, unknown
tables and dense arrays, NaN and Inf, empty batches, oversized messages, bad ShardViews,
ApplyDelta streams of garbage chunks, ExportDelta with random versions and epochs, and
raw bytes that are not a protobuf at all. Every call must end OK or with a precise status
(never UNKNOWN or INTERNAL), health must stay SERVING, and a refused call must change
nothing: every table's version and row count, the dense version, the sync cursors, and
the values of a known key set on serving. The number of cases run is printed at the end.

``make fuzz`` sets ``MPS_FUZZ_RAW_CASES`` (raw-bytes cases per server role) for the long
run outside ``make test``: 50,000 a role, 100,000 in all.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monolith_ps import wire
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc

MAX_MESSAGE_BYTES = 1 << 16
MAX_BATCH_KEYS = 256
CONFIG = {
    "tables": [
        {"name": "emb", "dim": 4, "optimizer": "sgd", "optimizer_args": {"lr": 0.1}},
        {"name": "ada", "dim": 8, "optimizer": "adagrad", "serving_dtype": "float16"},
        {"name": "gated", "dim": 2, "admit_after": 3},
    ],
    "dense": [{"name": "mlp", "size": 6, "optimizer": "sgd"}],
    "server": {"max_message_bytes": MAX_MESSAGE_BYTES, "max_batch_keys": MAX_BATCH_KEYS},
}
DIMS = {t["name"]: t["dim"] for t in CONFIG["tables"]}
KNOWN_KEYS = np.arange(1, 33, dtype=np.uint64)  # on serving, loaded by a valid full resync
SERVICE = "/monolith_ps.v1.ParameterServer/"
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,  # a second ApplyDelta stream of the same table and source
    grpc.StatusCode.OUT_OF_RANGE,
}
EXAMPLES = 120  # per test function; 6 functions
RAW_CASES = int(os.environ.get("MPS_FUZZ_RAW_CASES", EXAMPLES // 2))  # per role
CASES: collections.Counter[str] = collections.Counter()

# ---------------------------------------------------------------- strategies

u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
names = st.one_of(st.sampled_from([*DIMS, "mlp", ""]), st.text(max_size=12))
floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
small_floats = st.floats(-10, 10, width=32)


def _keys(values: list[int]) -> bytes:
    return np.array(values, dtype=np.uint64).tobytes()


key_bytes = st.one_of(
    st.binary(max_size=70),
    st.lists(u64, max_size=12).map(_keys),
    st.lists(st.integers(1, 40), min_size=1, max_size=12).map(_keys),
    st.integers(MAX_BATCH_KEYS + 1, MAX_BATCH_KEYS + 40).map(lambda n: _keys(list(range(1, n)))),
)
float_bytes = st.one_of(
    st.binary(max_size=200),
    st.lists(floats32, max_size=40).map(lambda v: np.array(v, np.float32).tobytes()),
)
views = st.one_of(
    st.none(),
    st.builds(ps_pb2.ShardView, shard_index=u32, num_shards=u32),
    st.builds(ps_pb2.ShardView, shard_index=st.integers(0, 3), num_shards=st.integers(0, 3)),
)


@st.composite
def gradients(draw: st.DrawFn) -> ps_pb2.TableGradients:
    """Keys and grads that often fit the table (to reach the NaN, Inf and limit checks)."""
    table = draw(names)
    if table in DIMS and draw(st.booleans()):
        n = draw(st.integers(1, 6))
        keys = _keys(draw(st.lists(st.integers(1, 60), min_size=n, max_size=n)))
        dim = DIMS[table] + draw(st.sampled_from([0, 0, 0, 1, -1]))
        values = draw(st.lists(st.one_of(small_floats, floats32), min_size=n * dim,
                               max_size=n * dim))  # fmt: skip
        grads = np.array(values, np.float32).tobytes()
    else:
        keys, grads = draw(key_bytes), draw(float_bytes)
    return ps_pb2.TableGradients(table=table, keys=keys, grads=grads)


def _view(view: ps_pb2.ShardView | None) -> dict:
    return {} if view is None else {"view": view}


lookups = st.builds(
    lambda tables, view: ps_pb2.LookupRequest(tables=tables, **_view(view)),
    st.lists(st.builds(ps_pb2.TableKeys, table=names, keys=key_bytes), max_size=3),
    views,
)
pushes = st.builds(
    lambda tables, rid, view: ps_pb2.PushRequest(tables=tables, request_id=rid, **_view(view)),
    st.lists(gradients(), max_size=3),
    st.one_of(st.just(""), st.text(max_size=140)),
    views,
)
dense_arrays = st.builds(ps_pb2.DenseArray, name=names, values=float_bytes)
push_dense = st.builds(
    ps_pb2.PushDenseRequest,
    grads=st.lists(dense_arrays, max_size=3),
    request_id=st.text(max_size=140),
)
pull_dense = st.builds(ps_pb2.PullDenseRequest, names=st.lists(names, max_size=3))
exports = st.builds(
    ps_pb2.ExportDeltaRequest,
    table=names,
    since_version=st.one_of(u64, st.integers(0, 50)),
    epoch=u64,
    max_chunk_rows=st.one_of(u32, st.integers(0, 4)),
    route_num_shards=st.one_of(u32, st.integers(0, 4)),
)
expires = st.builds(ps_pb2.ExpireRequest, now=st.floats(allow_nan=True, allow_infinity=True))
chunks = st.builds(
    ps_pb2.DeltaChunk,
    table=names,
    source_shard=st.one_of(u32, st.integers(0, 2)),
    source_num_shards=st.one_of(u32, st.integers(0, 2)),
    epoch=st.one_of(u64, st.just(7)),
    full_resync=st.booleans(),
    since_version=st.one_of(u64, st.integers(0, 50)),
    dim=st.one_of(u32, st.sampled_from([0, 2, 4, 8])),
    dtype=st.integers(0, 5),
    keys=key_bytes,
    values=float_bytes,
    versions=st.one_of(st.binary(max_size=40), st.lists(u64, max_size=8).map(_keys)),
    tombstone_keys=key_bytes,
    tombstone_versions=st.one_of(st.binary(max_size=40), st.lists(u64, max_size=8).map(_keys)),
    last=st.booleans(),
    complete_version=st.one_of(u64, st.integers(0, 50)),
    dense=st.lists(dense_arrays, max_size=2),
    dense_version=u64,
    default_value=float_bytes,
    default_version=u64,
)
# (method, request) pairs any role may get
any_call = st.one_of(
    st.tuples(st.just("Lookup"), lookups),
    st.tuples(st.just("Push"), pushes),
    st.tuples(st.just("PushDense"), push_dense),
    st.tuples(st.just("PullDense"), pull_dense),
    st.tuples(st.just("ExportDelta"), exports),
    st.tuples(st.just("Expire"), expires),
    st.tuples(st.just("ApplyDelta"), st.lists(chunks, max_size=3)),
    st.tuples(st.just("GetSyncState"), st.just(ps_pb2.GetSyncStateRequest())),
    st.tuples(st.just("Snapshot"), st.builds(ps_pb2.SnapshotRequest, full=st.booleans())),
)
raw_methods = st.sampled_from(
    ["Lookup", "Push", "PushDense", "PullDense", "ExportDelta", "Expire", "ApplyDelta"]
)

# ---------------------------------------------------------------- servers


class Target:
    """A started server, a channel that may send oversized messages, and its stubs."""

    def __init__(self, server) -> None:  # noqa: ANN001
        self.server = server
        self.channel = grpc.insecure_channel(
            server.address,
            options=[
                ("grpc.max_send_message_length", 8 * MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", 8 * MAX_MESSAGE_BYTES),
            ],
        )
        self.stub = ps_pb2_grpc.ParameterServerStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def call(self, method: str, request: object) -> grpc.StatusCode:
        """Send one request; its status code (the stream is drained for ExportDelta)."""
        try:
            if method == "ApplyDelta":
                self.stub.ApplyDelta(iter(request), timeout=20)
            elif method == "ExportDelta":
                for _ in zip(
                    range(10_000), self.stub.ExportDelta(request, timeout=20), strict=False
                ):
                    pass
            else:
                getattr(self.stub, method)(request, timeout=20)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    def call_raw(self, method: str, payload: bytes) -> grpc.StatusCode:
        """Send bytes that need not parse as the method's request message."""
        try:
            if method == "ApplyDelta":
                send = self.channel.stream_unary(SERVICE + method)
                send(iter([payload]), timeout=20)
            elif method == "ExportDelta":
                answers = self.channel.unary_stream(SERVICE + method)(payload, timeout=20)
                for _ in zip(range(10_000), answers, strict=False):
                    pass
            else:
                self.channel.unary_unary(SERVICE + method)(payload, timeout=20)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    def fingerprint(self) -> tuple:
        """What a refused request must leave as it was."""
        described = self.stub.DescribeTables(ps_pb2.DescribeTablesRequest(), timeout=20)
        tables = tuple((t.name, t.version, t.num_rows) for t in described.tables)
        dense = self.stub.PullDense(ps_pb2.PullDenseRequest(), timeout=20)
        dense_state = (dense.version, tuple((a.name, a.values) for a in dense.arrays))
        if described.role == ps_pb2.ROLE_TRAINING:
            return described.epoch, tables, dense_state
        sync = self.stub.GetSyncState(ps_pb2.GetSyncStateRequest(), timeout=20)
        values = self.stub.Lookup(
            ps_pb2.LookupRequest(
                tables=[ps_pb2.TableKeys(table=t, keys=wire.encode_keys(KNOWN_KEYS)) for t in DIMS]
            ),
            timeout=20,
        )
        return tables, dense_state, sync.SerializeToString(), values.SerializeToString()

    def serving(self) -> bool:
        reply = self.health.Check(health_pb2.HealthCheckRequest(), timeout=20)
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def _load_known_rows(target: Target) -> None:
    """A valid full resync of every table and the dense arrays on the serving server."""
    for name, dim in DIMS.items():
        rows = np.arange(KNOWN_KEYS.size * dim, dtype=np.float32).reshape(-1, dim)
        chunk = ps_pb2.DeltaChunk(
            table=name,
            source_shard=0,
            source_num_shards=1,
            epoch=7,
            full_resync=True,
            dim=dim,
            dtype=ps_pb2.DTYPE_FLOAT32,
            keys=wire.encode_keys(KNOWN_KEYS),
            values=rows.tobytes(),
            versions=wire.encode_keys(np.arange(1, KNOWN_KEYS.size + 1, dtype=np.uint64)),
            last=True,
            complete_version=KNOWN_KEYS.size,
        )
        target.stub.ApplyDelta(iter([chunk]), timeout=20)
    dense = ps_pb2.DeltaChunk(
        epoch=7,
        source_num_shards=1,
        dense=[ps_pb2.DenseArray(name="mlp", values=np.ones(6, np.float32).tobytes())],
        dense_version=3,
        last=True,
    )
    target.stub.ApplyDelta(iter([dense]), timeout=20)


@pytest.fixture(scope="module")
def targets(server_factory, pytestconfig) -> Iterator[dict[str, Target]]:
    training = Target(server_factory("training", shard_index=0, num_shards=2, config=CONFIG))
    serving = Target(server_factory("serving", config=CONFIG))
    # Rows on training (keys of shard 0 only), a dense step, rows on serving.
    keys = np.arange(1, 200, dtype=np.uint64)
    from monolith_ps.routing import shard_of

    own = keys[shard_of(keys, 2) == 0]
    training.stub.Lookup(
        ps_pb2.LookupRequest(tables=[ps_pb2.TableKeys(table="emb", keys=wire.encode_keys(own))])
    )
    _load_known_rows(serving)
    assert serving.fingerprint()[0][0][2] == KNOWN_KEYS.size
    yield {"training": training, "serving": serving}
    for target in (training, serving):
        target.channel.close()
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(CASES.items()))
    line = f"fuzz: {sum(CASES.values())} malformed-request cases ran ({summary})"
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + line, flush=True)


def _check(target: Target, method: str, send) -> None:  # noqa: ANN001
    """Send, then: a precise code, SERVING, and nothing changed unless the call was OK."""
    before = target.fingerprint()
    code = send()
    outcome = "ok" if code is grpc.StatusCode.OK else "refused"
    CASES[f"{method} {outcome}"] += 1
    assert code in ALLOWED, f"{method}: {code}"
    assert target.serving()
    if code is not grpc.StatusCode.OK:
        assert target.fingerprint() == before, f"{method} was refused ({code}) but changed state"


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
    derandomize=True,  # the same cases every run: a failure is reproducible, never a flake
)


@pytest.mark.parametrize("role", ["training", "serving"])
@FUZZ
@given(call=any_call)
def test_malformed_request_gets_a_precise_status_and_changes_nothing(targets, role, call):
    method, request = call
    target = targets[role]
    _check(target, method, lambda: target.call(method, request))


@pytest.mark.parametrize("role", ["training", "serving"])
@FUZZ
@given(stream=st.lists(chunks, min_size=1, max_size=4))
def test_apply_delta_garbage_is_refused_whole(targets, role, stream):
    target = targets[role]
    _check(target, "ApplyDelta", lambda: target.call("ApplyDelta", stream))


@pytest.mark.parametrize("role", ["training", "serving"])
@settings(FUZZ, max_examples=RAW_CASES)
@given(method=raw_methods, payload=st.binary(max_size=300))
def test_bytes_that_are_not_a_request_are_refused(targets, role, method, payload):
    target = targets[role]
    _check(target, method + " raw", lambda: target.call_raw(method, payload))


@pytest.mark.parametrize("role", ["training", "serving"])
def test_oversized_messages_are_refused(targets, role):
    target = targets[role]
    huge = b"\x01" * (MAX_MESSAGE_BYTES + 64)
    requests = {
        "Lookup": ps_pb2.LookupRequest(tables=[ps_pb2.TableKeys(table="emb", keys=huge)]),
        "Push": ps_pb2.PushRequest(tables=[ps_pb2.TableGradients(table="emb", grads=huge)]),
        "PushDense": ps_pb2.PushDenseRequest(grads=[ps_pb2.DenseArray(name="mlp", values=huge)]),
        "ApplyDelta": [ps_pb2.DeltaChunk(table="emb", keys=huge)],
    }
    for method, request in requests.items():
        _check(target, method + " oversized", lambda m=method, r=request: target.call(m, r))
        assert CASES[method + " oversized ok"] == 0
