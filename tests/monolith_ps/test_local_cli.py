"""``mps local up`` takes the config's sync section unless its flags are given, and every
``mps`` command takes ``--log-level``."""

from __future__ import annotations

import argparse
import json
import logging

import pytest

from monolith_ps.cli import build_parser, main
from monolith_ps.local import LocalCluster
from sync_agent.settings import AgentSettings

CONFIG = {
    "tables": [{"name": "emb", "dim": 4}],
    "sync": {"sparse_interval": "7s", "dense_interval": "9m"},
}


def _agent_settings(cluster: LocalCluster) -> AgentSettings:
    return AgentSettings.from_args(build_parser().parse_args(cluster.agent_argv()))


@pytest.fixture
def config_path(tmp_path):
    path = tmp_path / "tables.json"
    path.write_text(json.dumps(CONFIG))
    return path


@pytest.mark.parametrize(
    ("flags", "intervals"), [((), (7.0, 540.0)), (("--sparse-interval", "3s"), (3.0, 540.0))]
)
def test_local_up_takes_the_config_sync_section_unless_flags_are_given(
    config_path, tmp_path, flags, intervals
):
    up = build_parser().parse_args(["local", "up", "--config", str(config_path), *flags])
    if not flags:
        assert up.sparse_interval is None and up.dense_interval is None
    cluster = LocalCluster(
        config_path, sparse_interval=up.sparse_interval, dense_interval=up.dense_interval,
        log_dir=tmp_path / "logs", base_port=40000,  # not started: ports only name servers
    )  # fmt: skip
    settings = _agent_settings(cluster)
    assert (settings.sparse_interval, settings.dense_interval) == intervals


def _leaf_parsers(parser: argparse.ArgumentParser, path=()):
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not nested:
        yield path, parser
    for action in nested:
        for name, sub in action.choices.items():
            yield from _leaf_parsers(sub, (*path, name))


def test_every_command_takes_log_level():
    leaves = list(_leaf_parsers(build_parser()))
    assert len(leaves) >= 7
    for path, parser in leaves:
        options = {o for a in parser._actions for o in a.option_strings}
        assert "--log-level" in options, " ".join(path)


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_log_level_sets_the_root_logger(restore_logging):
    assert main(["check", "--log-level", "warning"]) == 2  # no addresses: refused
    assert logging.getLogger().level == logging.WARNING
    assert main(["check", "--log-level", "debug"]) == 2
    assert logging.getLogger().level == logging.DEBUG
