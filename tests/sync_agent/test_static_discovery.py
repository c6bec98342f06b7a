"""Static discovery and agent settings from flags."""

from __future__ import annotations

import pytest

from monolith_ps.cli import build_parser
from sync_agent.discovery import Discovery, Role
from sync_agent.discovery.static import InvalidAddressError, StaticDiscovery, parse_address_list
from sync_agent.settings import AgentSettings, SettingsError


def test_static_discovery_lists_each_role_sorted_and_deduplicated():
    d = StaticDiscovery(
        training=["127.0.0.1:7001", "127.0.0.1:7000"], serving=["h:2", "h:1", "h:2"]
    )
    source: Discovery = d  # the agent takes any Discovery
    assert [e.address for e in d.endpoints(Role.TRAINING)] == ["127.0.0.1:7000", "127.0.0.1:7001"]
    assert [e.name for e in d.endpoints(Role.SERVING)] == ["h:1", "h:2"]
    assert all(e.role is Role.SERVING for e in d.endpoints(Role.SERVING))
    source.close()


@pytest.mark.parametrize("bad", ["nohost", "h:", ":80", "h:0", "h:70000", "h:x"])
def test_bad_addresses_are_named(bad):
    with pytest.raises(InvalidAddressError, match=bad.replace(":", ":")):
        parse_address_list(f"127.0.0.1:1,{bad}")


def _settings(*argv):
    args = build_parser().parse_args(["sync-agent", *argv])
    return AgentSettings.from_args(args)


def test_flags_build_settings(tmp_path):
    config = tmp_path / "tables.yaml"
    config.write_text(
        "tables:\n  - {name: emb, dim: 8}\nsync: {sparse_interval: 7s, chunk_rows: 128}\n"
    )
    s = _settings(
        "--config",
        str(config),
        "--training",
        "a:1,b:2",
        "--serving",
        "c:3",
        "--dense-interval",
        "1h",
        "--once",
    )
    assert s.training == ("a:1", "b:2") and s.serving == ("c:3",)
    assert s.sparse_interval == 7.0  # from the config
    assert s.dense_interval == 3600.0  # flag over config
    assert s.chunk_rows == 128 and s.once
    assert (
        _settings(
            "--training", "a:1", "--serving", "c:3", "--sparse-interval", "2s"
        ).sparse_interval
        == 2.0
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--training and --serving"),
        (["--training", "a:1", "--serving", "b:1", "--sparse-interval", "0s"], "--sparse-interval"),
        (
            ["--training", "a:1", "--serving", "b:1", "--sparse-interval", "soon"],
            "--sparse-interval",
        ),
        (["--discovery", "kubernetes", "--namespace", "ns"], "--training-selector"),
        (["--training", "a:1", "--serving", "b:1", "--tls-cert", "c.pem"], "--tls-key"),
        (
            ["--training", "a:1", "--serving", "b:1", "--tls-cert", "c.pem", "--tls-key", "k.pem"],
            "--tls-ca",
        ),
        (["--training", "a", "--serving", "b:1"], "--training"),
    ],
)
def test_bad_flags_are_refused_with_the_flag_named(argv, message):
    with pytest.raises(SettingsError, match=message):
        _settings(*argv)
