"""`dualwrite run` and `dualwrite status`: a real process applies captured changes, stops on
SIGTERM, and `status` shows state, queue and errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from capture_fixtures import make_items
from dualwrite.cli import main

from conftest import BackendFactory


def _status(cfg: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["-c", cfg, "status", "--json"]) == 0
    return {m["map"]: m for m in json.loads(capsys.readouterr().out)["maps"]}


def test_run_applies_until_sigterm_and_status_reports(make_backend: BackendFactory,
                                                      tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    it = make_items(make_backend, tmp_path, "postgresql", "mariadb")
    cfg = str(it.config)
    assert main(["-c", cfg, "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["maps"][0]["state"] == "not running"
    assert main(["-c", cfg, "maps", "start", "--yes"]) == 0
    assert main(["-c", cfg, "maps", "pause", "items"]) == 0
    capsys.readouterr()
    it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'queued', 1)")
    st = _status(cfg, capsys)["items"]
    assert st["state"] == "paused" and st["queued"] == 1 and st["lag_changes"] == 0
    assert main(["-c", cfg, "maps", "resume", "items"]) == 0
    capsys.readouterr()

    proc = subprocess.Popen([sys.executable, "-m", "dualwrite", "-c", cfg, "run"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert proc.stderr is not None
        assert "applying captured changes" in proc.stderr.readline()
        it.right.app_sql("INSERT INTO items (id, name, qty) VALUES (2, 'from crm', 2)")
        # deadlines for a busy machine (13 s went by here with both cores loaded): what is
        # asserted is that it happens, not how fast
        deadline = time.monotonic() + 90
        while it.rows("left") != it.rows("right") or len(it.rows("left")) != 2:
            assert time.monotonic() < deadline, "the running applier did not apply in 90 s"
            time.sleep(0.02)  # polling a condition, with a deadline
        # one applier per link: the lease is held, by that process
        with it.link() as link:
            lease = link.applier_lease()
            assert not lease.acquire() and lease.holder() == proc.pid
        deadline = time.monotonic() + 60
        while (st := _status(cfg, capsys)["items"])["state"] != "running":
            assert time.monotonic() < deadline, f"map still {st['state']}"
            time.sleep(0.05)
        assert st["queued"] == 0 and st["errors"] == 0 and st["last_applied_at"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        if proc.stderr:
            proc.stderr.close()
    assert code == 0
    assert main(["-c", cfg, "status"]) == 0
    table = capsys.readouterr().out
    assert "items" in table and "running" in table
