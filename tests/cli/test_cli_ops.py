"""Operating dualwrite from the command line: the no-applier alert and alert states
(`status`, `alerts list/ack`), status's throughput, JSON logs of a real `run` with the
inbox's names and values, a standby `run` that says so."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from capture_fixtures import make_items
from dualwrite.cli import main
from dualwrite.engine.capture import run_applier

from conftest import BackendFactory


def run_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    assert main(args) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_no_applier_is_an_alert_that_is_acknowledged_and_clears(
        make_backend: BackendFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
        ) -> None:
    it = make_items(make_backend, tmp_path, "sqlite", "sqlite")
    cfg = str(it.config)
    assert main(["-c", cfg, "maps", "start", "--yes"]) == 0
    capsys.readouterr()
    status = run_json(["-c", cfg, "status", "--json"], capsys)
    [alert] = status["alerts"]
    assert alert["kind"] == "no-applier" and alert["state"] == "firing"
    assert "no applier" in alert["message"] and "dualwrite run" in alert["message"]
    dt.datetime.fromisoformat(alert["first_at"])  # ISO times
    # asked again, the same alert: not a new one each time
    assert run_json(["-c", cfg, "status", "--json"], capsys)["alerts"][0]["id"] == alert["id"]
    assert main(["-c", cfg, "alerts", "ack", str(alert["id"]), "--by", "ops"]) == 0
    assert "acknowledged alert" in capsys.readouterr().out
    [acked] = run_json(["-c", cfg, "alerts", "list", "--json"], capsys)["alerts"]
    assert acked["state"] == "acknowledged" and acked["acknowledged_by"] == "ops"
    dt.datetime.fromisoformat(acked["acknowledged_at"])

    stop = threading.Event()
    with it.link() as link:
        worker = threading.Thread(target=run_applier, args=(link, stop))
        worker.start()
        try:
            it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'a', 1)")
            deadline = time.monotonic() + 30
            while run_json(["-c", cfg, "status", "--json"], capsys)["alerts"]:
                assert time.monotonic() < deadline, "the alert did not clear"
                time.sleep(0.1)  # polling a condition, with a deadline
            rows = run_json(["-c", cfg, "status", "--json"], capsys)
            assert rows["maps"][0]["note"] is None
            assert {p["role"] for p in rows["processes"]} == {"applier"}
            assert "throughput" in rows["maps"][0] and "version" in rows["maps"][0]
        finally:
            stop.set()
            worker.join(timeout=30)
    every = run_json(["-c", cfg, "alerts", "list", "--all", "--json"], capsys)["alerts"]
    assert [a["state"] for a in every] == ["cleared"]
    dt.datetime.fromisoformat(every[0]["cleared_at"])
    # a cleared alert cannot be acknowledged
    assert main(["-c", cfg, "alerts", "ack", str(alert["id"])]) == 2
    assert "cleared already" in capsys.readouterr().err


def _lines(proc: subprocess.Popen[str], until: str, timeout: float = 60) -> list[str]:
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while not any(until in line for line in seen):
        assert time.monotonic() < deadline and proc.poll() is None, "".join(seen)
        seen.append(proc.stderr.readline())
    return seen


def test_run_logs_json_with_the_inbox_names_and_values(
        make_backend: BackendFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
        ) -> None:
    it = make_items(make_backend, tmp_path, "sqlite", "sqlite")
    cfg = str(it.config)
    it.right.app_sql("CREATE TRIGGER no_big BEFORE INSERT ON items WHEN NEW.qty > 100 "
                     "BEGIN SELECT RAISE(ABORT, 'qty too big'); END")
    assert main(["-c", cfg, "maps", "start", "--yes"]) == 0
    capsys.readouterr()
    proc = subprocess.Popen([sys.executable, "-m", "dualwrite", "--log-format", "json",
                             "--log-level", "debug", "-c", cfg, "run"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        _lines(proc, "applying captured changes")
        it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'fine', 1)")
        it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (2, 'big', 101)")
        got = _lines(proc, '"event": "rejected"')
        # a pause and a resume made by another process, as the applier sees them
        assert main(["-c", cfg, "maps", "pause", "items"]) == 0
        got += _lines(proc, '"event": "paused"')
        assert main(["-c", cfg, "maps", "resume", "items"]) == 0
        got += _lines(proc, '"event": "resumed"')
        capsys.readouterr()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None
        got += proc.stderr.read().splitlines(keepends=True)
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stderr:
            proc.stderr.close()
    records = [json.loads(line) for line in got if line.strip()]  # every line is JSON
    for r in records:
        assert {"time", "level", "event", "link", "message"} <= set(r)
        dt.datetime.fromisoformat(r["time"])
    applied = [r for r in records if r["event"] == "applied"]
    assert applied and applied[0]["level"] == "debug" and applied[0]["keys"] >= 1
    # SQLite's log has no transaction ids: no txid field (PostgreSQL's and MariaDB's have)
    assert applied[0]["side"] == "crm" and applied[0]["map"] == "items"
    [rejected] = [r for r in records if r["event"] == "rejected"]
    [entry] = run_json(["-c", cfg, "errors", "list", "--json"], capsys)["errors"]
    assert rejected["level"] == "warning" and rejected["map"] == entry["map"]
    assert rejected["side"] == entry["side"] and rejected["from"] == entry["from"]
    assert rejected["key"] == entry["key"] and rejected["inbox_id"] == entry["id"]
    assert "qty too big" in rejected["message"]
    [paused] = [r for r in records if r["event"] == "paused"]
    assert paused["map"] == "items" and paused["was"] == "running" and paused["level"] == "info"
    assert any(r["event"] == "resumed" and r["map"] == "items" for r in records)
    assert records[-1]["event"] == "stopped"


def test_a_standby_run_says_what_it_waits_for(make_backend: BackendFactory, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    it = make_items(make_backend, tmp_path, "sqlite", "sqlite")
    cfg = str(it.config)
    assert main(["-c", cfg, "maps", "start", "--yes"]) == 0
    capsys.readouterr()
    procs = []
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "dualwrite", "-c", cfg, "run"],
                                          stderr=subprocess.PIPE, text=True,
                                          env={**os.environ}))
            if len(procs) == 1:
                _lines(procs[0], "applying captured changes")
        standby = "".join(_lines(procs[1], "standing by"))
        assert f"pid {procs[0].pid} applies" in standby
        roles = {p["pid"]: p["role"] for p in
                 run_json(["-c", cfg, "status", "--json"], capsys)["processes"]}
        assert roles == {procs[0].pid: "applier", procs[1].pid: "standby"}
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(timeout=30) == 0
        takeover = "".join(_lines(procs[1], "applying captured changes"))
        assert "failover" in takeover
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=30)
            if p.stderr:
                p.stderr.close()
