"""``mps check`` (the chart's test hook): passes on a healthy cluster, names what fails."""

from __future__ import annotations

from monolith_ps.cli import main


def test_check_passes_on_answering_servers_and_names_a_misplaced_one(server_factory, capsys):
    training = server_factory("training")
    serving = server_factory("serving")
    assert main(["check", "--training", training.address, "--serving", serving.address]) == 0
    out = capsys.readouterr().out
    assert f"ok   training {training.address} health: SERVING" in out
    assert "ok   serving lookup user_id: 1 shard(s) answered" in out
    assert out.rstrip().endswith("all checks passed")

    # A serving server listed as training: its health is fine, its role is not.
    assert main(["check", "--training", serving.address, "--timeout", "5"]) == 1
    out = capsys.readouterr().out
    assert "FAIL training topology" in out and "serving" in out


def test_check_reports_an_unreachable_server(capsys):
    assert main(["check", "--serving", "127.0.0.1:1", "--timeout", "1"]) == 1
    assert "FAIL serving 127.0.0.1:1 health: DEADLINE_EXCEEDED" in capsys.readouterr().out
