"""``mps server`` as a real subprocess: start-up, SIGTERM, kill -9 and restart with a
client that retries through it, ``--shard-index auto`` and CLI errors."""

from __future__ import annotations

import logging
import signal
import threading

import numpy as np
import pytest

from monolith_ps.cli import main
from ps_client import PSClient, RetryPolicy
from ps_server.main import resolve_shard_index, shard_dir


class _RetryLogged(logging.Handler):
    """Sets ``seen`` when the client logs a retry."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("rpc retry"):
            self.seen.set()


def test_client_retries_through_a_kill_and_restart_on_the_same_port(process_factory, caplog):
    server = process_factory("training")
    keys = np.arange(1, 65, dtype=np.uint64)
    retry = RetryPolicy(max_attempts=10, initial_backoff=0.1, max_backoff=1.0)
    with PSClient([server.address], retry=retry, timeout=60) as client:
        before = client.lookup("user_id", keys)
        epoch = client.describe()[0].epoch
        port = server.port
        server.kill()  # SIGKILL: no goodbye, in-memory rows are gone
        retried = _RetryLogged()
        restarter = threading.Thread(
            target=lambda: (retried.seen.wait(60), server.start(port=port))
        )
        logging.getLogger("ps_client").addHandler(retried)
        try:
            with caplog.at_level(logging.INFO, logger="ps_client"):
                restarter.start()  # once the push has failed and is being retried
                pushed = client.push("user_id", keys, np.ones((64, 8), np.float32))
        finally:
            logging.getLogger("ps_client").removeHandler(retried)
        restarter.join(60)
        assert server.port == port
        assert any("rpc retry" in r.getMessage() for r in caplog.records)
        assert pushed.rows_updated == 64
        after = client.lookup("user_id", keys)
        assert client.describe()[0].epoch != epoch
    # A restarted server starts from the same key-seeded initial rows, then one step.
    assert np.all(after < before)


def test_sigterm_drains_and_exits_cleanly(process_factory):
    server = process_factory("training")
    with PSClient([server.address]) as client:
        client.push("item_id", np.arange(10, dtype=np.uint64), np.ones((10, 4), np.float32))
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    events = server.events
    for event in ("server_started", "server_ready", "signal_received", "server_stopping",
                  "server_stopped"):  # fmt: skip
        assert event in events
    assert events.index("server_stopping") < events.index("server_stopped")


def test_shard_index_auto_comes_from_the_pod_name(process_factory):
    server = process_factory(
        "serving", shard_index="auto", num_shards=3, env={"POD_NAME": "ps-serving-4"}
    )
    with PSClient([server.address], timeout=5) as client:
        shard = client.describe()[0]
    assert (shard.role, shard.shard_index, shard.num_shards) == ("serving", 1, 3)


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("2", {}, 2),
        ("auto", {"POD_NAME": "monolith-ps-training-5"}, 2),
        ("auto", {"POD_NAME": "serving-3"}, 0),
    ],
)
def test_resolve_shard_index(value, env, expected):
    assert resolve_shard_index(value, 3, env) == expected


def test_snapshot_dir_names_the_shard():
    assert shard_dir("/snap/shards-4/shard-{shard}", 3) == "/snap/shards-4/shard-3"
    assert shard_dir("/snap", 3) == "/snap" and shard_dir(None, 1) is None


@pytest.mark.parametrize(
    ("value", "env", "message"),
    [
        ("3", {}, r"--shard-index 3 is outside \[0, 3\)"),
        ("x", {}, "must be an integer or 'auto'"),
        ("auto", {"POD_NAME": "trainer"}, "'trainer' \\(from \\$POD_NAME\\) does not end in"),
    ],
)
def test_resolve_shard_index_refuses(value, env, message):
    with pytest.raises(ValueError, match=message):
        resolve_shard_index(value, 3, env)


def test_cli_reports_a_bad_config_with_its_field(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("tables:\n  - {name: a, dim: 4}\n  - {name: b, dim: -1}\n")
    code = main(["server", "--role", "training", "--shard-index", "0", "--num-shards", "1",
                 "--config", str(config), "--port", "0", "--metrics-port", "0"])  # fmt: skip
    assert code == 2
    assert "tables[1].dim" in capsys.readouterr().err


def test_cli_refuses_half_a_tls_setup(tmp_path, capsys):
    config = tmp_path / "ok.yaml"
    config.write_text("tables:\n  - {name: a, dim: 4}\n")
    code = main(["server", "--role", "serving", "--shard-index", "0", "--num-shards", "1",
                 "--config", str(config), "--tls-cert", "cert.pem"])  # fmt: skip
    assert code == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
