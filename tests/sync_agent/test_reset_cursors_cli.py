"""``mps reset-cursors`` against real in-process servers: cursors a sync left on serving
are dropped as narrowed by table and source shard; a refused call exits 1 naming why."""

from __future__ import annotations

import grpc
import numpy as np

from monolith_ps.cli import main
from monolith_ps.v1 import ps_pb2, ps_pb2_grpc


def _sync(training, serving, table: str) -> None:
    """One full export of ``table`` from training applied to serving: a cursor there."""
    training.state.table(table).find_or_insert(np.arange(1, 33, dtype=np.uint64))
    with grpc.insecure_channel(training.address) as t, grpc.insecure_channel(serving.address) as s:
        request = ps_pb2.ExportDeltaRequest(table=table)
        chunks = list(ps_pb2_grpc.ParameterServerStub(t).ExportDelta(request, timeout=30))
        ps_pb2_grpc.ParameterServerStub(s).ApplyDelta(iter(chunks), timeout=30)


def _cursors(serving) -> list[str]:
    with grpc.insecure_channel(serving.address) as channel:
        stub = ps_pb2_grpc.ParameterServerStub(channel)
        state = stub.GetSyncState(ps_pb2.GetSyncStateRequest(), timeout=10)
    return sorted(c.table for c in state.cursors)


def test_reset_cursors_drops_the_named_tables_cursors_then_all(server_factory, capsys):
    training = server_factory("training")
    serving = server_factory("serving")
    for table in ("user_id", "item_id"):
        _sync(training, serving, table)
    assert _cursors(serving) == ["item_id", "user_id"]

    assert main(["reset-cursors", "--serving", serving.address, "--table", "item_id"]) == 0
    assert "1 cursor(s) reset on 1 serving server(s)" in capsys.readouterr().out
    assert _cursors(serving) == ["user_id"]

    other_source = ["--source-shard", "3"]
    assert main(["reset-cursors", "--serving", serving.address, *other_source]) == 0
    assert "0 cursor(s) reset" in capsys.readouterr().out
    assert _cursors(serving) == ["user_id"]

    assert main(["reset-cursors", "--serving", serving.address]) == 0
    assert "1 cursor(s) reset" in capsys.readouterr().out
    assert _cursors(serving) == []


def test_reset_cursors_of_an_unknown_table_or_on_training_is_refused(server_factory, capsys):
    training = server_factory("training")
    serving = server_factory("serving")
    _sync(training, serving, "user_id")
    assert main(["reset-cursors", "--serving", serving.address, "--table", "nope"]) == 1
    assert "nope" in capsys.readouterr().err
    assert main(["reset-cursors", "--serving", training.address, "--timeout", "5"]) == 1
    assert "training" in capsys.readouterr().err
    assert _cursors(serving) == ["user_id"]
