"""`selfplay judge-serve` and `selfplay judge-eval`, as a user runs them.

The server runs as its own process (the real command, on an ephemeral loopback port); judge-eval
with the GPT judge against it must score the oracle behind it at 100% precision and recall on
every row. Bad input ends in one line naming the option; an open judge (not loopback, no key) is
warned about.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from selfplay.cli import main


@pytest.fixture()
def served_oracle():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JUDGE_TEST_KEY": "k3y"}
    proc = subprocess.Popen([sys.executable, "-m", "selfplay.cli", "judge-serve", "--judge", "oracle", "--port", "0",
                             "--api-key-env", "JUDGE_TEST_KEY"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        assert m, line
        yield m.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_judge_eval_of_the_oracle_behind_the_server_is_perfect(served_oracle, capsys, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "k3y")
    t0 = time.perf_counter()
    assert main(["judge-eval", "--judge", "gpt", "--base-url", served_oracle, "--model", "strokes-oracle",
                 "--api-key-env", "JUDGE_TEST_KEY", "--n", "120", "--concurrency", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == 120 and report["negatives"] == 60 and report["unjudged"] == 0
    for row in report["rows"]:
        if row["reference"]:
            assert row["precision"] == row["recall"] == 1.0, row
        else:
            assert row["judged"] == 0, row
    assert report["correction_match"] == report["missing_match"] == 1.0
    assert report["stats"]["requests"] == 120
    assert time.perf_counter() - t0 < 60
    # The table form names every row.
    assert main(["judge-eval", "--judge", "gpt", "--base-url", served_oracle, "--model", "strokes-oracle",
                 "--api-key-env", "JUDGE_TEST_KEY", "--n", "10"]) == 0
    table = capsys.readouterr().out
    assert "conflict (any)" in table and "kind: wrong_relation" in table and "100.0" in table
    assert table.rstrip().endswith("unjudged: none")


def test_judge_eval_oracle_and_bad_input(capsys):
    assert main(["judge-eval", "--judge", "oracle", "--n", "20"]) == 0
    assert "conflict (any)" in capsys.readouterr().out
    assert main(["judge-eval", "--judge", "self", "--n", "20"]) == 2
    assert "--checkpoint is required" in capsys.readouterr().err
    assert main(["judge-eval", "--n", "1"]) == 2
    assert "--n must be at least 2" in capsys.readouterr().err
    assert main(["judge-eval", "--judge", "self", "--checkpoint", "/nonexistent/ckpt", "--n", "4"]) == 2
    assert "not a checkpoint" in capsys.readouterr().err


def test_judge_serve_reports_a_busy_port(capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["judge-serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1" in err and "warning" not in err  # loopback without a key is fine


def test_judge_serve_port_out_of_range_is_one_line(capsys):
    assert main(["judge-serve", "--port", "99999"]) == 2
    err = capsys.readouterr().err
    assert err == "selfplay judge-serve: error: --port must be between 0 and 65535, got 99999\n"


def test_judge_serve_warns_when_open_to_the_network_without_a_key(capsys):
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the warning comes, then the bind fails,
    # so nothing is ever exposed.
    assert main(["judge-serve", "--host", "192.0.2.1", "--port", "0"]) == 2
    warning, error = capsys.readouterr().err.splitlines()
    assert warning.startswith("selfplay judge-serve: warning: --host 192.0.2.1 is not loopback and no API key")
    assert "cannot listen on 192.0.2.1" in error
    assert main(["judge-serve", "--host", "192.0.2.1", "--port", "0", "--api-key", "k"]) == 2
    assert "warning" not in capsys.readouterr().err


def test_judge_serve_ray_options_need_the_ray_backend(capsys):
    assert main(["judge-serve", "--replicas", "2"]) == 2
    assert capsys.readouterr().err == "selfplay judge-serve: error: --replicas needs --backend ray\n"
    assert main(["judge-serve", "--backend", "ray", "--replicas", "0"]) == 2
    assert "--replicas must be at least 1, got 0" in capsys.readouterr().err
    import socket

    with socket.socket() as s:  # a busy port is one line before any Ray starts
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["judge-serve", "--backend", "ray", "--port", str(s.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


@pytest.mark.slow
def test_judge_serve_on_ray_serve_judges_perfectly_and_listens_on_loopback_only(tmp_path, capsys, monkeypatch):
    """Two replicas of the oracle on Ray Serve (a local cluster of 2 CPUs, its own HOME), judged
    through the real `openai` client by judge-eval: perfect, and Serve's proxy binds 127.0.0.1 only."""
    import psutil

    env = {**os.environ, "OMP_NUM_THREADS": "1", "JUDGE_TEST_KEY": "k3y", "HOME": str(tmp_path)}
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "selfplay.cli", "judge-serve", "--backend", "ray", "--replicas", "2",
                                 "--replica-cpus", "0.5", "--ray-cpus", "2", "--port", "0",
                                 "--api-key-env", "JUDGE_TEST_KEY"],
                                stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:(\d+)/v1) on Ray Serve \(2 replicas\) as model strokes-oracle", line)
        assert m, (line, (tmp_path / "serve.log").read_text()[-2000:])
        port = int(m.group(2))
        listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"}
        assert listening == {"127.0.0.1"}
        monkeypatch.setenv("JUDGE_TEST_KEY", "k3y")
        assert main(["judge-eval", "--judge", "gpt", "--base-url", m.group(1), "--model", "strokes-oracle",
                     "--api-key-env", "JUDGE_TEST_KEY", "--n", "60", "--concurrency", "8", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["steps"] == 60 and report["unjudged"] == 0
        assert all(row["precision"] == row["recall"] == 1.0 for row in report["rows"] if row["reference"])
    finally:
        proc.terminate()
        proc.wait(timeout=60)
