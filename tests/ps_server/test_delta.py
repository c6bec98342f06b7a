"""The delta protocol on in-process servers: ExportDelta on training, ApplyDelta and
GetSyncState on serving, full resync generations, dense sync and bad streams."""

from __future__ import annotations

import queue
import threading
import time

import grpc
import numpy as np
import pytest

from monolith_ps import wire
from monolith_ps.routing import MAX_SHARDS, shard_of
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc
from ps_server.delta_export import export_table_chunks

DIM = 4
CONFIG = {
    "tables": [
        {"name": "emb", "dim": DIM, "optimizer": "sgd", "optimizer_args": {"lr": 1.0},
         "initializer": "zeros", "tombstone_log_size": 64},
        {"name": "half", "dim": 8, "optimizer": "sgd", "optimizer_args": {"lr": 0.5},
         "initializer": "normal", "serving_dtype": "float16"},
    ],
    "dense": [{"name": "mlp", "size": 16, "optimizer": "sgd", "optimizer_args": {"lr": 0.1}}],
    "server": {"min_chunk_bytes": 0},  # small chunks, so streams of a few rows have many
}  # fmt: skip


def stub(server) -> ps_pb2_grpc.ParameterServerStub:
    return ps_pb2_grpc.ParameterServerStub(grpc.insecure_channel(server.address))


@pytest.fixture(scope="module")
def training(server_factory):
    return server_factory("training", config=CONFIG)


@pytest.fixture
def serving(server_factory):
    """A fresh single-shard serving server per test (it owns every key)."""
    return server_factory("serving", config=CONFIG)


def push(server, table, keys, grads=None):
    keys = np.asarray(keys, dtype=np.uint64)
    t = server.state.table(table)
    if grads is None:
        grads = -np.ones((len(keys), t.dim), dtype=np.float32)
    t.find_or_insert(keys)
    t.apply_gradients(keys, grads)


def export(server, table, since=0, epoch=None, max_chunk_rows=0):
    epoch = server.state.epoch if epoch is None else epoch
    request = ps_pb2.ExportDeltaRequest(
        table=table, since_version=since, epoch=epoch, max_chunk_rows=max_chunk_rows
    )
    return list(stub(server).ExportDelta(request, timeout=30))


def rows_of(chunks):
    keys = [wire.decode_keys(c.keys) for c in chunks]
    values = [
        wire.decode_values(c.values, len(k), c.dim, c.dtype)
        for c, k in zip(chunks, keys, strict=True)
    ]
    tombs = [wire.decode_keys(c.tombstone_keys) for c in chunks]
    return np.concatenate(keys), np.concatenate(values), np.concatenate(tombs)


def lookup(server, table, keys):
    keys = np.asarray(keys, dtype=np.uint64)
    response = stub(server).Lookup(
        ps_pb2.LookupRequest(tables=[ps_pb2.TableKeys(table=table, keys=wire.encode_keys(keys))]),
        timeout=10,
    )
    tv = response.tables[0]
    return (
        wire.decode_values(tv.values, len(keys), tv.dim, tv.dtype),
        wire.decode_found(tv.found, len(keys)),
    )


def cursors(server):
    state = stub(server).GetSyncState(ps_pb2.GetSyncStateRequest(), timeout=10)
    return {(c.table, c.source_shard): c for c in state.cursors}


def apply(server, chunks):
    return stub(server).ApplyDelta(iter(chunks), timeout=30)


def synced_view(training, serving, keys):
    """Sync ``emb`` to ``serving`` in full after pushing ``keys``; then what the replica
    answers for every training key, and its cursor."""
    push(training, "emb", keys)
    apply(serving, export(training, "emb", epoch=0))
    held = training.state.table("emb").keys()
    return held, (*lookup(serving, "emb", held), cursors(serving)[("emb", 0)])


def assert_unchanged(serving, held, view):
    values, found = lookup(serving, "emb", held)
    np.testing.assert_array_equal(values, view[0])
    np.testing.assert_array_equal(found, view[1])
    assert cursors(serving)[("emb", 0)] == view[2]


def test_export_streams_chunks_with_the_full_header_and_ends_complete(training):
    keys = np.arange(1000, 1050, dtype=np.uint64)
    push(training, "emb", keys)
    version = training.state.table("emb").version
    chunks = export(training, "emb", max_chunk_rows=7)
    assert len(chunks) == 8
    assert [c.last for c in chunks] == [False] * 7 + [True]
    assert chunks[-1].complete_version == version
    for c in chunks:
        assert (c.table, c.source_shard, c.source_num_shards, c.epoch) == (
            "emb",
            0,
            1,
            training.state.epoch,
        )
        assert c.dim == DIM and c.dtype == ps_pb2.DTYPE_FLOAT32
        assert len(wire.decode_keys(c.keys)) <= 7
    got, values, _ = rows_of(chunks)
    assert set(keys.tolist()) <= set(got.tolist())
    expected, _ = training.state.table("emb").find(got)
    np.testing.assert_array_equal(values, expected)


def test_an_export_asked_for_one_row_chunks_gets_chunks_of_the_server_floor(server_factory):
    server = server_factory("training", config={**CONFIG, "server": {"min_chunk_bytes": 4096}})
    keys = np.arange(1, 501, dtype=np.uint64)
    push(server, "emb", keys)
    chunks = export(server, "emb", max_chunk_rows=1)
    floor = -(-4096 // (8 + 8 + DIM * 4 + 16))  # rows of 4096 bytes at dim 4 float32
    sizes = [len(wire.decode_keys(c.keys)) for c in chunks]
    assert sizes == [floor] * (len(keys) // floor) + [len(keys) % floor]
    assert sorted(rows_of(chunks)[0].tolist()) == keys.tolist()


def test_export_grouped_by_serving_shard_puts_one_shard_in_each_chunk(training):
    table = training.state.table("emb")
    push(training, "emb", np.arange(1500, 1800, dtype=np.uint64))
    since = table.version
    push(training, "emb", np.arange(1500, 1700, dtype=np.uint64))
    table.delete(np.arange(1700, 1760, dtype=np.uint64))
    request = ps_pb2.ExportDeltaRequest(
        table="emb", since_version=since, epoch=training.state.epoch, max_chunk_rows=16,
        route_num_shards=3,
    )  # fmt: skip
    chunks = list(stub(training).ExportDelta(request, timeout=30))
    assert [c.last for c in chunks].count(True) == 1 and chunks[-1].last
    for c in chunks:
        owners = set(shard_of(wire.decode_keys(c.keys), 3).tolist())
        owners |= set(shard_of(wire.decode_keys(c.tombstone_keys), 3).tolist())
        assert len(owners) <= 1
        assert len(wire.decode_keys(c.keys)) <= 16
    keys, _, tombs = rows_of(chunks)
    assert sorted(keys.tolist()) == list(range(1500, 1700))
    assert sorted(tombs.tolist()) == list(range(1700, 1760))


def test_export_for_one_partition_sends_only_its_serving_shards(training):
    table = training.state.table("emb")
    since = table.version
    push(training, "emb", np.arange(1800, 1900, dtype=np.uint64))
    table.delete(np.arange(1800, 1830, dtype=np.uint64))
    request = ps_pb2.ExportDeltaRequest(
        table="emb", since_version=since, epoch=training.state.epoch, max_chunk_rows=16,
        route_num_shards=3, route_partition_count=2, route_partition_index=0,
    )  # fmt: skip
    chunks = list(stub(training).ExportDelta(request, timeout=30))
    assert [c.last for c in chunks].count(True) == 1 and chunks[-1].last
    keys, _, tombs = rows_of(chunks)
    wanted = np.arange(1800, 1900, dtype=np.uint64)
    mine = wanted[shard_of(wanted, 3) % 2 == 0]  # serving shards 0 and 2
    assert sorted(keys.tolist()) == sorted(k for k in mine.tolist() if k >= 1830)
    assert sorted(tombs.tolist()) == sorted(k for k in mine.tolist() if k < 1830)
    request.route_partition_index = 2
    with pytest.raises(grpc.RpcError) as info:
        list(stub(training).ExportDelta(request, timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "route_partition_index 2 must be below route_partition_count 2" in info.value.details()


def test_export_since_a_version_sends_only_newer_rows_and_tombstones(training):
    table = training.state.table("emb")
    push(training, "emb", np.arange(2000, 2010, dtype=np.uint64))
    since = table.version
    push(training, "emb", [2001, 2002])
    table.delete(np.array([2003], dtype=np.uint64))
    chunks = export(training, "emb", since=since)
    assert not any(c.full_resync for c in chunks)
    keys, _, tombs = rows_of(chunks)
    assert sorted(keys.tolist()) == [2001, 2002]
    assert tombs.tolist() == [2003]
    versions = wire.decode_versions(chunks[0].versions, len(keys))
    assert (versions > since).all()
    assert chunks[-1].complete_version == table.version


def test_an_export_reads_each_chunks_rows_when_it_is_taken(server_factory):
    """A row pushed after the export began goes out with its new values under the version
    it was selected at, a row deleted since is left out; the stream stays complete to its
    ``complete_version`` and the next delta brings the new version and the tombstone."""
    server = server_factory("training", config=CONFIG)
    table = server.state.table("emb")
    keys = np.arange(1, 101, dtype=np.uint64)
    push(server, "emb", keys)
    selected = table.version
    request = ps_pb2.ExportDeltaRequest(table="emb", epoch=server.state.epoch)
    chunks = export_table_chunks(server.state, request, default_chunk_rows=10)
    first = next(chunks)
    later = np.setdiff1d(keys, wire.decode_keys(first.keys))
    pushed, deleted = later[:1], later[1:2]
    push(server, "emb", pushed, grads=np.full((1, DIM), -5.0, np.float32))
    table.delete(deleted)
    stream = [first, *chunks]
    got, values, _ = rows_of(stream)
    versions = np.concatenate([wire.decode_versions(c.versions, len(c.keys) // 8) for c in stream])
    assert sorted(got.tolist()) == sorted(set(keys.tolist()) - set(deleted.tolist()))
    assert stream[-1].last and stream[-1].complete_version == selected
    assert versions.max() <= selected
    np.testing.assert_array_equal(values[got == pushed[0]], table.find(pushed)[0])
    after = ps_pb2.ExportDeltaRequest(table="emb", epoch=server.state.epoch, since_version=selected)
    got, _, tombs = rows_of(list(export_table_chunks(server.state, after, default_chunk_rows=10)))
    assert got.tolist() == pushed.tolist() and tombs.tolist() == deleted.tolist()


def test_another_epoch_or_a_lost_tombstone_log_means_full_resync(training):
    table = training.state.table("emb")
    push(training, "emb", np.arange(3000, 3100, dtype=np.uint64))
    for chunks in (
        export(training, "emb", since=table.version, epoch=training.state.epoch ^ 1),
        export(training, "emb", since=1, epoch=0),
    ):
        assert all(c.full_resync for c in chunks)
        keys, _, tombs = rows_of(chunks)
        assert sorted(keys.tolist()) == sorted(table.keys().tolist())
        assert len(tombs) == 0
    since = table.version
    table.delete(np.arange(3000, 3100, dtype=np.uint64))  # 100 tombstones > log size 64
    chunks = export(training, "emb", since=since)
    assert all(c.full_resync for c in chunks)
    assert sorted(rows_of(chunks)[0].tolist()) == sorted(table.keys().tolist())


def test_unknown_table_and_wrong_roles_are_refused(training, serving):
    with pytest.raises(grpc.RpcError) as err:
        export(training, "nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        export(serving, "emb")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        apply(training, export(training, "emb", epoch=0))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        stub(training).GetSyncState(ps_pb2.GetSyncStateRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_full_then_incremental_sync_makes_serving_equal_training(training, serving):
    for name in ("emb", "half"):
        push(training, name, np.arange(4000, 4300, dtype=np.uint64))
        response = apply(serving, export(training, name, epoch=0, max_chunk_rows=64))
        assert response.rows_applied == len(training.state.table(name))
        cursor = cursors(serving)[(name, 0)]
        assert (cursor.epoch, cursor.version) == (
            training.state.epoch,
            training.state.table(name).version,
        )
        assert cursor.applied_at_unix > 0
    table = training.state.table("emb")
    since = table.version
    push(training, "emb", np.arange(4000, 4010, dtype=np.uint64))
    table.delete(np.arange(4290, 4300, dtype=np.uint64))
    response = apply(serving, export(training, "emb", since=since))
    assert response.rows_applied == 10 and response.tombstones_applied == 10
    assert cursors(serving)[("emb", 0)].version == table.version
    keys = table.keys()
    values, found = lookup(serving, "emb", keys)
    assert found.all()
    np.testing.assert_array_equal(values, table.find(keys)[0])
    assert not lookup(serving, "emb", np.arange(4290, 4300))[1].any()
    half = training.state.table("half")
    values, found = lookup(serving, "half", half.keys())
    assert found.all() and serving.state.table("half").dtype == np.float16
    np.testing.assert_allclose(values, half.find(half.keys())[0], rtol=1e-3, atol=1e-3)
    request = ps_pb2.LookupRequest(
        tables=[ps_pb2.TableKeys(table="half", keys=wire.encode_keys(half.keys()))]
    )
    answer = stub(serving).Lookup(request, timeout=10).tables[0]
    assert answer.dtype == ps_pb2.DTYPE_FLOAT16  # float16 rows travel as stored: half the bytes
    assert len(answer.values) == len(half) * half.dim * 2
    # Replaying the same delta changes nothing: rows are only applied when newer.
    replay = apply(serving, export(training, "emb", since=since))
    assert replay.rows_applied == 0 and replay.rows_skipped == 10


def test_incremental_stream_without_a_matching_cursor_is_refused(training, serving):
    since = training.state.table("emb").version
    push(training, "emb", [5000])
    incremental = export(training, "emb", since=since)
    assert not incremental[0].full_resync
    with pytest.raises(grpc.RpcError) as err:
        apply(serving, incremental)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "full resync" in err.value.details()
    assert cursors(serving) == {}
    apply(serving, export(training, "emb", epoch=0))
    stale = export(training, "emb", since=since)
    for chunk in stale:
        chunk.epoch ^= 1  # an epoch this replica does not hold
    with pytest.raises(grpc.RpcError) as err:
        apply(serving, stale)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_stream_that_ends_before_its_last_chunk_moves_no_cursor(training, serving):
    push(training, "emb", np.arange(6000, 6100, dtype=np.uint64))
    apply(serving, export(training, "emb", epoch=0))
    before = cursors(serving)[("emb", 0)]
    since = training.state.table("emb").version
    push(training, "emb", np.arange(6000, 6100, dtype=np.uint64))
    chunks = export(training, "emb", since=since, max_chunk_rows=10)
    with pytest.raises(grpc.RpcError) as err:
        apply(serving, chunks[:-1])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "last chunk" in err.value.details()
    assert cursors(serving)[("emb", 0)].version == before.version
    apply(serving, chunks)
    assert cursors(serving)[("emb", 0)].version == training.state.table("emb").version


def test_an_incremental_stream_refused_at_a_later_chunk_changes_nothing(training, serving):
    held, view = synced_view(training, serving, np.arange(6500, 6600, dtype=np.uint64))
    since = training.state.table("emb").version
    push(training, "emb", np.arange(6500, 6600, dtype=np.uint64))
    chunks = export(training, "emb", since=since, max_chunk_rows=10)
    assert len(chunks) >= 4 and not chunks[0].full_resync
    poisoned = chunks[2]
    values = wire.decode_values(poisoned.values, len(wire.decode_keys(poisoned.keys)), DIM)
    values = values.copy()
    values[0, 0] = np.inf
    poisoned.values = wire.encode_values(values)[0]
    for broken in (chunks, chunks[:-1]):  # refused at chunk 3; cut short before the last
        with pytest.raises(grpc.RpcError) as err:
            apply(serving, broken)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert_unchanged(serving, held, view)


def test_a_broken_full_resync_changes_nothing(training, serving):
    held, view = synced_view(training, serving, np.arange(7000, 7100, dtype=np.uint64))
    push(training, "emb", np.arange(7000, 7100, dtype=np.uint64))
    chunks = export(training, "emb", epoch=0, max_chunk_rows=10)
    with pytest.raises(grpc.RpcError):
        apply(serving, chunks[:-1])
    assert_unchanged(serving, held, view)


def test_lookups_see_the_old_generation_until_a_full_resync_completes(training, serving):
    keys = np.arange(8000, 8050, dtype=np.uint64)
    push(training, "emb", keys)
    apply(serving, export(training, "emb", epoch=0))
    old, _ = lookup(serving, "emb", keys)
    push(training, "emb", keys)
    chunks = export(training, "emb", epoch=0, max_chunk_rows=5)
    feed: queue.Queue = queue.Queue()

    def requests():
        while (chunk := feed.get()) is not None:
            yield chunk

    def received() -> float:
        sample = serving.registry.get_sample_value(
            "monolith_ps_delta_bytes_received_total", {"table": "emb"}
        )
        return sample or 0.0

    expected = received() + sum(c.ByteSize() for c in chunks[:-1])
    future = stub(serving).ApplyDelta.future(requests(), timeout=30)
    for chunk in chunks[:-1]:
        feed.put(chunk)
    # Once the server has applied every chunk but the last, lookups still see old rows.
    for _ in range(500):
        if received() >= expected:
            break
        threading.Event().wait(0.01)
    assert received() == expected
    np.testing.assert_array_equal(lookup(serving, "emb", keys)[0], old)
    feed.put(chunks[-1])
    feed.put(None)
    future.result()
    np.testing.assert_array_equal(
        lookup(serving, "emb", keys)[0], training.state.table("emb").find(keys)[0]
    )


def test_full_resync_of_one_source_keeps_the_rows_of_the_others(server_factory):
    sources = [server_factory("training", i, 2, config=CONFIG) for i in range(2)]
    serving = server_factory("serving", config=CONFIG)
    keys = np.arange(10_000, 10_400, dtype=np.uint64)
    owner = shard_of(keys, 2)
    for i, source in enumerate(sources):
        push(source, "emb", keys[owner == i])
        apply(serving, export(source, "emb", epoch=0))
    assert set(cursors(serving)) == {("emb", 0), ("emb", 1)}
    # Source 0 loses half its rows; its full resync must drop them on serving and keep
    # every row of source 1.
    gone = keys[owner == 0][::2]
    sources[0].state.table("emb").delete(gone)
    apply(serving, export(sources[0], "emb", epoch=0))
    _, found = lookup(serving, "emb", keys)
    np.testing.assert_array_equal(found, ~np.isin(keys, gone))
    for source in sources:
        t = source.state.table("emb")
        np.testing.assert_array_equal(lookup(serving, "emb", t.keys())[0], t.find(t.keys())[0])


def test_rows_for_another_serving_shard_are_refused(training, server_factory):
    shard0 = server_factory("serving", 0, 2, config=CONFIG)
    push(training, "emb", np.arange(11_000, 11_100, dtype=np.uint64))
    with pytest.raises(grpc.RpcError) as err:
        apply(shard0, export(training, "emb", epoch=0))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "shard 0 of 2" in err.value.details()
    assert cursors(shard0) == {}
    assert len(shard0.state.table("emb")) == 0


def test_malformed_chunks_are_refused(training, serving):
    push(training, "emb", [12_000, 12_001])
    good = export(training, "emb", epoch=0)
    for field, value, code in (
        ("versions", b"\x01" * 3, grpc.StatusCode.INVALID_ARGUMENT),
        ("dim", DIM + 1, grpc.StatusCode.INVALID_ARGUMENT),
        ("table", "nope", grpc.StatusCode.NOT_FOUND),
        ("source_shard", 3, grpc.StatusCode.INVALID_ARGUMENT),
    ):
        bad = [ps_pb2.DeltaChunk() for _ in good]
        for b, g in zip(bad, good, strict=True):
            b.CopyFrom(g)
        setattr(bad[0], field, value)
        with pytest.raises(grpc.RpcError) as err:
            apply(serving, bad)
        assert err.value.code() == code, field
    nan = ps_pb2.DeltaChunk()
    nan.CopyFrom(good[-1])
    values = wire.decode_values(nan.values, len(wire.decode_keys(nan.keys)), DIM).copy()
    values[1, 2] = np.nan
    nan.values = wire.encode_values(values)[0]
    with pytest.raises(grpc.RpcError) as err:
        apply(serving, [nan])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        apply(serving, [])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert cursors(serving) == {} and len(serving.state.table("emb")) == 0


def test_a_second_stream_for_the_same_table_and_source_is_aborted(training, serving):
    push(training, "emb", [13_000])
    chunks = export(training, "emb", epoch=0)
    feed: queue.Queue = queue.Queue()

    def requests():
        while (chunk := feed.get()) is not None:
            yield chunk

    first_chunk = ps_pb2.DeltaChunk()
    first_chunk.CopyFrom(chunks[0])
    first_chunk.last = False
    future = stub(serving).ApplyDelta.future(requests(), timeout=30)
    feed.put(first_chunk)
    receiver = serving.servicer.delta_receiver
    try:
        deadline = time.monotonic() + 20
        while ("emb", first_chunk.source_shard) not in receiver.active_streams():
            assert time.monotonic() < deadline, "the first stream never started"
            assert not future.done(), future.exception()
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as err:
            apply(serving, chunks)
        assert err.value.code() == grpc.StatusCode.ABORTED
        assert "in progress" in err.value.details()
    finally:
        future.cancel()
        feed.put(None)


def test_an_older_export_cannot_bring_back_a_deleted_row(training, serving):
    table = training.state.table("emb")
    push(training, "emb", [15_000, 15_001])
    apply(serving, export(training, "emb", epoch=0))
    since = table.version
    push(training, "emb", [15_000])
    older = export(training, "emb", since=since)  # taken before the delete below
    table.delete(np.array([15_000], dtype=np.uint64))
    apply(serving, export(training, "emb", since=since))  # carries the tombstone
    assert not lookup(serving, "emb", [15_000])[1].any()
    # A second agent's stream from the older export arrives late: its row is not newer
    # than what the cursor already covers, so the key stays deleted.
    response = apply(serving, older)
    assert response.rows_applied == 0 and response.rows_skipped == 1
    assert not lookup(serving, "emb", [15_000])[1].any()
    assert cursors(serving)[("emb", 0)].version == table.version


def test_a_stale_full_resync_is_refused(training, serving):
    push(training, "emb", [14_000])
    old = export(training, "emb", epoch=0)
    push(training, "emb", [14_000])
    apply(serving, export(training, "emb", epoch=0))
    with pytest.raises(grpc.RpcError) as err:
        apply(serving, old)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "stale" in err.value.details()
    np.testing.assert_array_equal(
        lookup(serving, "emb", [14_000])[0],
        training.state.table("emb").find(np.array([14_000], np.uint64))[0],
    )


def test_dense_arrays_sync_on_their_own_stream(training, serving):
    dense = training.state.dense
    dense.push({"mlp": np.ones(16, dtype=np.float32)})
    chunks = export(training, "", epoch=0)
    assert chunks[-1].last and chunks[-1].dense_version == dense.version
    assert [a.name for c in chunks for a in c.dense] == ["mlp"]
    apply(serving, chunks)
    state = stub(serving).GetSyncState(ps_pb2.GetSyncStateRequest(), timeout=10)
    assert (state.dense_version, state.dense_epoch) == (dense.version, training.state.epoch)
    pulled = stub(serving).PullDense(ps_pb2.PullDenseRequest(), timeout=10)
    np.testing.assert_array_equal(
        np.frombuffer(pulled.arrays[0].values, np.float32), dense.pull()[0]["mlp"]
    )
    up_to_date = export(training, "", since=dense.version)
    assert len(up_to_date) == 1 and not up_to_date[0].dense


def test_export_routed_to_more_shards_than_a_cluster_may_have_is_refused(training):
    request = ps_pb2.ExportDeltaRequest(table="emb", route_num_shards=MAX_SHARDS + 1)
    with pytest.raises(grpc.RpcError) as info:
        list(stub(training).ExportDelta(request, timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "route_num_shards" in info.value.details()
