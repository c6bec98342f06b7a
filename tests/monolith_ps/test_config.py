"""The cluster config loader: every section, defaults, durations and errors naming the field."""

from __future__ import annotations

import json

import pytest
import yaml

from monolith_ps.config import (
    ConfigError,
    config_to_dict,
    load_config,
    parse_config,
    parse_duration,
)

EXAMPLE_YAML = """
tables:
  - {name: user_id, dim: 64, optimizer: adagrad, optimizer_args: {lr: 0.05}, initializer: normal,
     admit_after: 2, ttl_seconds: 604800, serving_dtype: float16}
  - {name: item_id, dim: 32}
dense:
  - {name: mlp, size: 4096, optimizer: adam, optimizer_args: {lr: 0.001}, initializer: zeros}
server: {max_message_bytes: 67108864, expiry_sweep_interval: 60s, push_dedup_window: 100000}
snapshot: {full_interval: 1h, incremental_interval: 5m, keep: 3}
sync: {sparse_interval: 5m, dense_interval: 24h, chunk_rows: 65536}
"""


def test_example_yaml_loads_every_section(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(EXAMPLE_YAML)
    config = load_config(path)
    user = config.table("user_id")
    assert (user.dim, user.optimizer, user.optimizer_args, user.admit_after) == (
        64, "adagrad", {"lr": 0.05}, 2
    )  # fmt: skip
    assert user.ttl_seconds == 604800 and user.serving_dtype == "float16"
    assert config.table("item_id").dim == 32
    assert config.dense[0].name == "mlp" and config.dense[0].size == 4096
    assert config.server.expiry_sweep_interval == 60.0
    assert config.snapshot.full_interval == 3600.0
    assert config.snapshot.incremental_interval == 300.0
    assert config.sync.dense_interval == 86400.0
    assert config.sync.chunk_rows == 65536


def test_json_and_yaml_give_the_same_config(tmp_path):
    raw = yaml.safe_load(EXAMPLE_YAML)
    (tmp_path / "c.json").write_text(json.dumps(raw))
    (tmp_path / "c.yaml").write_text(EXAMPLE_YAML)
    assert load_config(tmp_path / "c.json") == load_config(tmp_path / "c.yaml")


def test_round_trips_through_a_plain_mapping():
    config = parse_config(yaml.safe_load(EXAMPLE_YAML))
    assert parse_config(json.loads(json.dumps(config_to_dict(config)))) == config


def test_sections_other_than_tables_default():
    config = parse_config({"tables": [{"name": "t", "dim": 4}]})
    assert config.dense == ()
    assert config.server.max_message_bytes == 64 * 1024 * 1024
    assert config.snapshot.keep == 3
    assert config.sync.sparse_interval == 300.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("300s", 300), ("5m", 300), ("24h", 86400), ("1.5h", 5400), ("2d", 172800),
     ("250ms", 0.25), (90, 90), (0.5, 0.5), (" 10 s ", 10)],
)  # fmt: skip
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5 minutes", "-5s", "h", "", True, None, "1e3s", float("nan")])
def test_parse_duration_refuses(bad):
    with pytest.raises(ConfigError, match="sync.sparse_interval"):
        parse_duration(bad, "sync.sparse_interval")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({}, "tables: required"),
        ({"tables": []}, "tables: expected a non-empty list"),
        ({"tables": [{"name": "a", "dim": 4}, {"name": "b", "dim": 0}]}, r"tables\[1\]\.dim"),
        ({"tables": [{"name": "a", "dim": 4, "dimm": 3}]}, r"tables\[0\]\.dimm: unknown"),
        ({"tables": [{"name": "a", "dim": 4}, {"name": "a", "dim": 4}]}, r"tables\[1\]\.name"),
        ({"tables": [{"name": "a", "dim": 4, "optimizer": "adamw"}]}, r"tables\[0\]\.optimizer"),
        ({"tables": [{"name": "a", "dim": 4}], "tabels": []}, "tabels: unknown field"),
        ({"tables": [{"name": "a", "dim": 4}], "server": {"max_mesage_bytes": 1}},
         "server.max_mesage_bytes: unknown field"),
        ({"tables": [{"name": "a", "dim": 4}], "server": {"max_message_bytes": "big"}},
         "server.max_message_bytes: expected an integer"),
        ({"tables": [{"name": "a", "dim": 4}], "server": {"max_message_bytes": 100}},
         "server.max_message_bytes: must be >= 65536"),
        ({"tables": [{"name": "a", "dim": 4}], "sync": {"sparse_interval": "soon"}},
         "sync.sparse_interval: expected a duration"),
        ({"tables": [{"name": "a", "dim": 4}], "snapshot": {"keep": 0}}, "snapshot.keep"),
        ({"tables": [{"name": "a", "dim": 4}], "dense": [{"name": "d"}]},
         r"dense\[0\]\.size: required"),
        ({"tables": [{"name": "a", "dim": 4}], "dense": [{"name": "d", "size": 0}]},
         r"dense\[0\]\.size: must be >= 1"),
        ({"tables": [{"name": "a", "dim": 4}],
          "dense": [{"name": "d", "size": 4, "optimizer": "x"}]},
         r"dense\[0\]\.optimizer"),
        ({"tables": [{"name": "a", "dim": 4}],
          "dense": [{"name": "d", "size": 4, "optimizer_args": {"lr": -1}}]},
         r"dense\[0\]\.optimizer_args\.lr"),
        ({"tables": [{"name": "a", "dim": 4}],
          "dense": [{"name": "d", "size": 4}, {"name": "d", "size": 4}]}, r"dense\[1\]\.name"),
        ({"tables": [{"name": "a", "dim": 4}], "dense": {"name": "d"}}, "dense: expected a list"),
    ],
)  # fmt: skip
def test_errors_name_the_field(raw, field):
    with pytest.raises(ConfigError, match=field):
        parse_config(raw)


def _with_entry(section: str, fields: dict) -> dict:
    """A config whose first entry of ``section`` (a table or a dense array) has ``fields``."""
    table = {"name": "t", "dim": 4}
    if section == "tables":
        return {"tables": [table | fields]}
    return {"tables": [table], "dense": [{"name": "d", "size": 4} | fields]}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"optimizer": "momentum", "optimizer_args": {"nesterov": 1}},
         "optimizer_args.nesterov: must be true or false, got 1"),
        ({"optimizer": "momentum", "optimizer_args": {"nesterov": 0.0}},
         "optimizer_args.nesterov: must be true or false, got 0.0"),
        ({"optimizer": "momentum", "optimizer_args": {"lr": True}},
         "optimizer_args.lr: must be a finite number, got True"),
        ({"initializer": "normal", "initializer_args": {"std": False}},
         "initializer_args.std: must be a finite number, got False"),
        ({"seed": 2**64}, "seed: must be an integer from 0 to 2**64 - 1, got 18446744073709551616"),
        ({"seed": -1}, "seed: must be an integer from 0 to 2**64 - 1, got -1"),
        ({"seed": True}, "seed: must be an integer from 0 to 2**64 - 1, got True"),
        ({"optimizer": 3}, "optimizer: must be one of sgd, momentum, adagrad, adam, ftrl, got 3"),
        ({"optimizer_args": [1]}, "optimizer_args: must be a mapping, got [1]"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("section", ["tables", "dense"])
def test_tables_and_dense_arrays_refuse_training_fields_alike(section, fields, message):
    with pytest.raises(ConfigError) as refused:
        parse_config(_with_entry(section, fields))
    assert str(refused.value) == f"{section}[0].{message}"


@pytest.mark.parametrize("section", ["tables", "dense"])
def test_tables_and_dense_arrays_accept_nesterov_and_the_largest_seed(section):
    fields = {"optimizer": "momentum", "optimizer_args": {"nesterov": True}, "seed": 2**64 - 1}
    config = parse_config(_with_entry(section, fields))
    entry = config.tables[0] if section == "tables" else config.dense[0]
    assert entry.optimizer_args == {"nesterov": True} and entry.seed == 2**64 - 1
    assert parse_config(json.loads(json.dumps(config_to_dict(config)))) == config


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("tables: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_config(tmp_path / "bad.json")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="config: expected a mapping"):
        load_config(tmp_path / "list.yaml")
