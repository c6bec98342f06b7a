"""The typed view of DescribeTables and GetSyncState answers, and the topology checks."""

from __future__ import annotations

from monolith_ps.transport.cluster import (
    ShardInfo,
    SyncCursor,
    TableInfo,
    client_view_problems,
    consistent_shards,
    shard_info_from_proto,
    sync_state_from_proto,
)
from monolith_ps.v1 import ps_pb2

EPOCH = 0xABCDEF


def _shard(address: str, index: int, num: int, role: str = "training", dim: int = 8) -> ShardInfo:
    return ShardInfo(address, role, index, num, EPOCH, {"emb": TableInfo("emb", dim)}, {})


def test_sync_state_from_proto():
    response = ps_pb2.GetSyncStateResponse(
        shard_index=1,
        num_shards=3,
        cursors=[
            ps_pb2.SyncCursor(
                table="emb",
                source_shard=1,
                source_num_shards=2,
                epoch=EPOCH,
                version=9,
                applied_at_unix=5.0,
            )
        ],
        dense_version=4,
        dense_epoch=EPOCH,
    )
    state = sync_state_from_proto("s", response)
    assert (state.shard_index, state.num_shards, state.dense_version) == (1, 3, 4)
    assert state.cursor("emb", 1) == SyncCursor("emb", 1, 2, EPOCH, 9, 5.0)
    assert state.cursor("emb", 0) is None
    assert state.cursor("emb", 1).to_proto() == response.cursors[0]


def test_shard_info_from_proto_fills_unset_limits_with_defaults():
    response = ps_pb2.DescribeTablesResponse(
        role=ps_pb2.ROLE_SERVING,
        shard_index=0,
        num_shards=2,
        epoch=EPOCH,
        tables=[ps_pb2.TableInfo(name="emb", dim=4, optimizer_args_json='{"lr": 0.1}', version=7)],
        dense=[ps_pb2.DenseInfo(name="w", size=3)],
    )
    info = shard_info_from_proto("a:1", response)
    assert (info.role, info.shard_index, info.num_shards) == ("serving", 0, 2)
    assert info.tables["emb"].optimizer_args == {"lr": 0.1} and info.tables["emb"].version == 7
    assert info.dense == {"w": 3}
    assert info.max_message_bytes == 64 * 1024 * 1024 and info.max_batch_keys == 1 << 20


def test_client_view_names_each_mismatch():
    assert client_view_problems([_shard("a", 0, 2), _shard("b", 1, 2)], "training") == []
    problems = client_view_problems(
        [_shard("a", 1, 2), _shard("b", 0, 2, role="serving", dim=4)], "training"
    )
    assert any("a says it is shard 1 of 2, but it is address 0 of 2" in p for p in problems)
    assert any("mix roles" in p for p in problems)
    assert any("b holds other tables or dims than a" in p for p in problems)


def test_consistent_shards_keeps_the_common_count_and_unclaimed_indices():
    shards = [_shard("a", 0, 2), _shard("b", 1, 2), _shard("c", 1, 2), _shard("d", 0, 3)]
    kept, refused = consistent_shards(shards, lambda s: s)
    assert [s.address for s in kept] == ["a"]
    why = {s.address: reason for s, reason in refused}
    assert why["b"] == why["c"] == "shard 1: b, c"
    assert why["d"] == "reports 3 training shards, the others 2"
    assert consistent_shards([], lambda s: s) == ([], [])
