"""Re-routing delta chunks from training shards to serving shards."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_ps import wire
from monolith_ps.routing import shard_of, split_by_shard
from monolith_ps.v1 import ps_pb2
from sync_agent.router import ChunkRouter, Destination, can_share_keys, chunk_rows, is_empty

DIM = 4


def _chunk(rng, source_shard, source_num_shards, n=500, n_tomb=50, full=False, since=0):
    """A chunk of keys owned by ``source_shard``, versions above ``since``."""
    keys = rng.integers(1, 2**63, size=8 * (n + n_tomb) * source_num_shards, dtype=np.uint64)
    keys = np.unique(keys[shard_of(keys, source_num_shards) == source_shard])
    rng.shuffle(keys)
    rows, tombs = keys[:n], keys[n : n + n_tomb]
    values = rng.standard_normal((len(rows), DIM)).astype(np.float32)
    return ps_pb2.DeltaChunk(
        table="t",
        source_shard=source_shard,
        source_num_shards=source_num_shards,
        epoch=7,
        full_resync=full,
        since_version=since,
        dim=DIM,
        dtype=ps_pb2.DTYPE_FLOAT32,
        keys=wire.encode_keys(rows),
        values=wire.encode_values(values)[0],
        versions=wire.encode_versions(rng.integers(since + 1, since + 1000, len(rows))),
        tombstone_keys=wire.encode_keys(tombs),
        tombstone_versions=wire.encode_versions(rng.integers(since + 1, since + 1000, len(tombs))),
        last=True,
        complete_version=since + 1000,
    )


def _decode(chunk):
    keys = wire.decode_keys(chunk.keys)
    values = wire.decode_values(chunk.values, len(keys), chunk.dim, chunk.dtype)
    versions = wire.decode_versions(chunk.versions, len(keys))
    tombs = wire.decode_keys(chunk.tombstone_keys)
    tomb_versions = wire.decode_versions(chunk.tombstone_versions, len(tombs))
    return keys, values, versions, tombs, tomb_versions


@pytest.mark.parametrize(("n_train", "n_serve"), [(1, 2), (2, 3), (3, 2), (4, 2), (2, 4)])
def test_every_row_reaches_exactly_the_shard_that_owns_it(n_train, n_serve):
    rng = np.random.default_rng(n_train * 10 + n_serve)
    for source in range(n_train):
        chunk = _chunk(rng, source, n_train)
        keys, values, versions, tombs, tomb_versions = _decode(chunk)
        dests = [Destination(n_serve, j) for j in range(n_serve)]
        routed = ChunkRouter(dests).route(chunk)
        seen_rows, seen_tombs = [], []
        for dest in dests:
            out = routed[dest]
            assert (out.table, out.epoch, out.last, out.complete_version) == (
                "t",
                7,
                True,
                1000 + 0,
            )
            k, v, ver, tk, tv = _decode(out)
            assert (shard_of(k, n_serve) == dest.shard_index).all()
            assert (shard_of(tk, n_serve) == dest.shard_index).all()
            if not can_share_keys(source, n_train, dest.shard_index, n_serve):
                assert len(k) == 0 and len(tk) == 0
            position = {int(key): i for i, key in enumerate(keys)}
            idx = np.array([position[int(key)] for key in k], dtype=np.int64)
            np.testing.assert_array_equal(v, values[idx])
            np.testing.assert_array_equal(ver, versions[idx])
            tomb_position = {int(key): i for i, key in enumerate(tombs)}
            tidx = np.array([tomb_position[int(key)] for key in tk], dtype=np.int64)
            np.testing.assert_array_equal(tv, tomb_versions[tidx])
            seen_rows.extend(k.tolist())
            seen_tombs.extend(tk.tolist())
        assert sorted(seen_rows) == sorted(keys.tolist())
        assert sorted(seen_tombs) == sorted(tombs.tolist())


def test_can_share_keys_matches_the_hash():
    keys = np.random.default_rng(1).integers(0, 2**64 - 1, 50_000, dtype=np.uint64)
    for n_train, n_serve in [(2, 3), (4, 2), (2, 4), (6, 4), (3, 3)]:
        pairs = set(
            zip(shard_of(keys, n_train).tolist(), shard_of(keys, n_serve).tolist(), strict=True)
        )
        for i in range(n_train):
            for j in range(n_serve):
                assert can_share_keys(i, n_train, j, n_serve) == ((i, j) in pairs)


def test_floor_leaves_out_what_a_replica_already_applied():
    rng = np.random.default_rng(3)
    chunk = _chunk(rng, 0, 1, since=100)
    keys, _, versions, tombs, tomb_versions = _decode(chunk)
    low, high = Destination(1, 0, floor=100), Destination(1, 0, floor=600)
    routed = ChunkRouter([low, high]).route(chunk)
    assert routed[low] is chunk  # nothing to filter: the whole chunk passes untouched
    k, _, ver, tk, tv = _decode(routed[high])
    assert sorted(k.tolist()) == sorted(keys[versions > 600].tolist())
    assert (ver > 600).all() and (tv > 600).all()
    assert sorted(tk.tolist()) == sorted(tombs[tomb_versions > 600].tolist())


def test_full_resync_chunks_are_never_filtered():
    chunk = _chunk(np.random.default_rng(4), 0, 1, full=True, since=0)
    dest = Destination(2, 1, floor=10**6)
    out = ChunkRouter([dest]).route(chunk)[dest]
    keys = wire.decode_keys(chunk.keys)
    assert chunk_rows(out) == int((shard_of(keys, 2) == 1).sum())
    assert out.full_resync


def test_replicas_of_a_shard_share_one_routed_chunk():
    chunk = _chunk(np.random.default_rng(5), 1, 2)
    a, b = Destination(3, 1, floor=5), Destination(3, 1, floor=5)
    c = Destination(3, 2)
    routed = ChunkRouter([a, b, c]).route(chunk)
    assert routed[a] is routed[b]
    assert routed[a] is not routed[c]


def test_when_serving_count_divides_training_count_chunks_pass_untouched():
    chunk = _chunk(np.random.default_rng(6), 3, 4)
    dests = [Destination(2, 0), Destination(2, 1)]
    routed = ChunkRouter(dests).route(chunk)
    assert routed[dests[1]] is chunk
    assert is_empty(routed[dests[0]]) and routed[dests[0]].last


def test_float16_rows_keep_their_dtype():
    rng = np.random.default_rng(7)
    chunk = _chunk(rng, 0, 1)
    keys = wire.decode_keys(chunk.keys)
    half = rng.standard_normal((len(keys), DIM)).astype(np.float16)
    chunk.values, chunk.dtype = wire.encode_values(half)
    dest = Destination(2, 0)
    out = ChunkRouter([dest]).route(chunk)[dest]
    k, v, *_ = _decode(out)
    assert out.dtype == ps_pb2.DTYPE_FLOAT16 and v.dtype == np.float16
    np.testing.assert_array_equal(v, half[shard_of(keys, 2) == 0])


def test_malformed_chunk_is_refused():
    chunk = _chunk(np.random.default_rng(8), 0, 1)
    chunk.versions = chunk.versions[:-8]
    with pytest.raises(wire.WireFormatError, match="versions"):
        ChunkRouter([Destination(2, 0)]).route(chunk)


@pytest.mark.parametrize("num_shards", [1, 2, 3, 7])
def test_split_by_shard_groups_indices_by_owner_in_input_order(num_shards):
    keys = np.random.default_rng(num_shards).integers(0, 2**64 - 1, 10_000, dtype=np.uint64)
    owner = shard_of(keys, num_shards)
    parts = split_by_shard(keys, num_shards)
    assert len(parts) == num_shards
    for shard, idx in enumerate(parts):
        np.testing.assert_array_equal(idx, np.flatnonzero(owner == shard))
    assert [len(p) for p in split_by_shard(keys[:0], num_shards)] == [0] * num_shards


def test_chunks_of_one_serving_shard_travel_untouched():
    rng = np.random.default_rng(9)
    chunk = _chunk(rng, 0, 1)
    keys = wire.decode_keys(chunk.keys)
    tombs = wire.decode_keys(chunk.tombstone_keys)
    mine = shard_of(keys, 3) == 2
    chunk.keys = wire.encode_keys(keys[mine])
    chunk.values = wire.encode_values(wire.decode_values(chunk.values, len(keys), DIM)[mine])[0]
    chunk.versions = wire.encode_versions(wire.decode_versions(chunk.versions, len(keys))[mine])
    tomb_mine = shard_of(tombs, 3) == 2
    chunk.tombstone_keys = wire.encode_keys(tombs[tomb_mine])
    chunk.tombstone_versions = wire.encode_versions(
        wire.decode_versions(chunk.tombstone_versions, len(tombs))[tomb_mine]
    )
    dests = [Destination(3, j) for j in range(3)]
    routed = ChunkRouter(dests).route(chunk)
    assert routed[dests[2]] is chunk
    assert is_empty(routed[dests[0]]) and is_empty(routed[dests[1]])
