"""Planning exports from the replicas' cursors."""

from __future__ import annotations

from monolith_ps.transport.cluster import ShardInfo, SyncCursor, SyncState, TableInfo
from sync_agent.cursors import ReplicaState, TrainingShard, plan_exports
from sync_agent.discovery.base import Endpoint, Role

EPOCH = 0xABCDEF


def _source(index=0, num=2, version=100):
    table = TableInfo("emb", 8, version=version)
    info = ShardInfo(f"t{index}", "training", index, num, EPOCH, {"emb": table}, {})
    return TrainingShard(Endpoint(Role.TRAINING, f"t{index}:1", f"t{index}"), info), table


def _replica(name, index, num, cursor=None, source=0, source_num=2):
    cursors = ()
    if cursor is not None:
        epoch, version = cursor
        cursors = (SyncCursor("emb", source, source_num, epoch, version, 1.0),)
    sync = SyncState(name, index, num, cursors)
    return ReplicaState(Endpoint(Role.SERVING, f"{name}:1", name), sync)


def _by_kind(plans):
    return {p.full: p for p in plans}


def test_new_restarted_and_stale_replicas_share_one_full_export():
    shard, table = _source()
    replicas = [
        _replica("fresh", 0, 1),
        _replica("old-epoch", 0, 1, cursor=(EPOCH + 1, 50)),
        _replica("rewound", 0, 1, cursor=(EPOCH, 150)),
        _replica("resharded", 0, 1, cursor=(EPOCH, 50), source_num=3),
        _replica("behind", 0, 1, cursor=(EPOCH, 40)),
        _replica("current", 0, 1, cursor=(EPOCH, 100)),
    ]
    plans = _by_kind(plan_exports(shard, table, replicas))
    full, incremental = plans[True], plans[False]
    assert sorted(r.name for r, _ in full.replicas) == [
        "fresh",
        "old-epoch",
        "resharded",
        "rewound",
    ]
    assert full.epoch == 0 and full.since_version == 0
    assert all(dest.floor == 0 for _, dest in full.replicas)
    assert [r.name for r, _ in incremental.replicas] == ["behind"]
    assert incremental.epoch == EPOCH and incremental.since_version == 40


def test_incremental_export_starts_at_the_lowest_cursor_and_keeps_each_floor():
    shard, table = _source()
    replicas = [_replica("a", 0, 3, cursor=(EPOCH, 70)), _replica("b", 1, 3, cursor=(EPOCH, 30))]
    (plan,) = plan_exports(shard, table, replicas)
    assert not plan.full and plan.since_version == 30
    floors = {r.name: dest.floor for r, dest in plan.replicas}
    assert floors == {"a": 70, "b": 30}


def test_up_to_date_replicas_get_nothing():
    shard, table = _source()
    assert plan_exports(shard, table, [_replica("a", 0, 3, cursor=(EPOCH, 100))]) == []


def test_replicas_that_cannot_own_the_shards_keys_are_skipped():
    shard, table = _source(index=1, num=4)
    replicas = [_replica("even", 0, 2), _replica("odd", 1, 2)]
    (plan,) = plan_exports(shard, table, replicas)
    assert [r.name for r, _ in plan.replicas] == ["odd"]


def test_isolated_replica_gets_an_export_of_its_own():
    shard, table = _source()
    replicas = [
        _replica("a", 0, 3, cursor=(EPOCH, 10)),
        _replica("slow", 0, 3, cursor=(EPOCH, 10)),
        _replica("b", 1, 3, cursor=(EPOCH, 10)),
    ]
    plans = plan_exports(shard, table, replicas, isolated=("slow",))
    members = sorted(sorted(r.name for r, _ in p.replicas) for p in plans)
    assert members == [["a", "b"], ["slow"]]
