"""TableConfig validation and its JSON round trip."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monolith_ps.errors import ConfigError
from monolith_ps.table_config import TableConfig

FULL = {
    "name": "user_id", "dim": 64, "optimizer": "adagrad", "optimizer_args": {"lr": 0.05},
    "initializer": "normal", "initializer_args": {"std": 0.01}, "admit_after": 3,
    "ttl_seconds": 86400.0, "max_rows": 1000, "eviction": "lfu", "serving_dtype": "float16",
    "lr_frequency_power": 0.5, "seed": 2**64 - 1, "tombstone_log_size": 1000,
    "sketch_width": 1024, "memory_budget_bytes": 1 << 30, "cold_dir": "/var/lib/mps/cold",
}  # fmt: skip


def test_round_trip_through_json():
    cfg = TableConfig.from_dict(FULL)
    again = TableConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.to_dict() == FULL


def test_defaults():
    cfg = TableConfig.from_dict({"name": "x", "dim": 8})
    assert (cfg.optimizer, cfg.initializer, cfg.admit_after, cfg.max_rows) == (
        "adagrad", "normal", 1, None,
    )  # fmt: skip


LR_RANGE = r"\.optimizer_args\.lr: must be in \(0\.0, inf\)"
BAD = [
    ({"dim": -3}, r"tables\[user_id\]\.dim: must be a positive integer.*got -3"),
    ({"dim": 4.0}, r"\.dim: must be a positive integer"),
    ({"dim": True}, r"\.dim: "),
    ({"optimizer": "rmsprop"}, r"\.optimizer: must be one of sgd, momentum, adagrad, adam, ftrl"),
    ({"optimizer_args": {"lr": -1}}, LR_RANGE),
    ({"optimizer_args": {"learning_rate": 1}}, r"learning_rate: unknown argument"),
    ({"optimizer": "adam", "optimizer_args": {"beta1": 1.0}}, r"beta1: must be in \[0\.0, 1\.0\)"),
    ({"optimizer": "momentum", "optimizer_args": {"nesterov": 1}}, r"nesterov: must be true"),
    ({"optimizer": "ftrl", "optimizer_args": {"lr_power": 0.5}}, r"lr_power"),
    ({"optimizer_args": {"lr": "0.1"}}, r"\.lr: must be a finite number"),
    ({"optimizer_args": {"lr": float("nan")}}, r"\.lr: must be a finite number"),
    ({"initializer": "xavier"}, r"\.initializer: must be one of"),
    ({"initializer": "uniform", "initializer_args": {"low": 1, "high": 1}}, r"low < high"),
    ({"initializer_args": {"std": -1.0}}, r"std: must be >= 0"),
    ({"initializer": "zeros", "initializer_args": {"std": 1.0}}, r"std: unknown argument"),
    ({"admit_after": 0}, r"\.admit_after: must be an integer from 1"),
    ({"ttl_seconds": 0}, r"\.ttl_seconds: must be null or a positive number"),
    ({"max_rows": 0}, r"\.max_rows: must be null or a positive integer"),
    ({"eviction": "fifo"}, r"\.eviction: must be one of lru, lfu"),
    ({"serving_dtype": "bfloat16"}, r"\.serving_dtype: must be one of float32, float16"),
    ({"lr_frequency_power": -0.5}, r"\.lr_frequency_power: must be a number >= 0"),
    ({"seed": 2**64}, r"\.seed: must be an integer from 0 to 2\*\*64 - 1"),
    ({"tombstone_log_size": 0}, r"\.tombstone_log_size: must be a positive integer"),
    ({"sketch_width": 1000}, r"\.sketch_width: must be null or a power of two"),
    ({"memory_budget_bytes": 0}, r"\.memory_budget_bytes: must be null or a positive integer"),
    ({"cold_dir": ""}, r"\.cold_dir: must be null or a non-empty directory path"),
    ({"cold_dir": None}, r"\.cold_dir: is required with memory_budget_bytes"),
    ({"memory_budget_bytes": None}, r"\.memory_budget_bytes: is required with cold_dir"),
    ({"colour": "red"}, r"tables\[user_id\]\.colour: unknown field"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "message"), BAD)
def test_bad_fields_raise_naming_the_field(change, message):
    with pytest.raises(ConfigError, match=message):
        TableConfig.from_dict(FULL | change)


@pytest.mark.parametrize("missing", ["name", "dim"])
def test_missing_required_fields(missing):
    d = {k: v for k, v in FULL.items() if k != missing}
    with pytest.raises(ConfigError, match=rf"\.{missing}: missing required field"):
        TableConfig.from_dict(d)


def test_bad_name_and_non_mapping():
    with pytest.raises(ConfigError, match=r"tables\[\?\]\.name"):
        TableConfig.from_dict(FULL | {"name": ""})
    with pytest.raises(ConfigError, match="must be a mapping"):
        TableConfig.from_dict(["user_id"])  # type: ignore[arg-type]
    assert issubclass(ConfigError, ValueError)


@settings(max_examples=50, deadline=None)
@given(
    dim=st.integers(1, 4096),
    lr=st.floats(1e-6, 10),
    ttl=st.none() | st.floats(0.001, 1e9),
    admit=st.integers(1, 100),
    seed=st.integers(0, 2**64 - 1),
)
def test_valid_configs_round_trip(dim, lr, ttl, admit, seed):
    cfg = TableConfig(
        name="t", dim=dim, optimizer_args={"lr": lr}, ttl_seconds=ttl, admit_after=admit, seed=seed
    )
    assert TableConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
