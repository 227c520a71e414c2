"""`dualwrite follow`: the command line of the follower, CAP ↔ PostgreSQL, in real processes
(`--start` before the initial sync, `--once` to catch up, and the long-running form stopped by
SIGTERM)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cap_process import Cap, cap_client, cap_rows, fresh_crm, running_cap, write_config

from conftest import Backend, BackendFactory


@pytest.fixture
def cap(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cap]:
    yield from running_cap(monkeypatch)


@pytest.fixture
def crm(make_backend: BackendFactory) -> Backend:
    return fresh_crm(make_backend)


def dualwrite(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dualwrite", "-c", str(config), *args],
                          capture_output=True, text=True, timeout=300, env={**os.environ},
                          check=False)


def test_follow_from_the_command_line(cap: Cap, crm: Backend, tmp_path: Path) -> None:
    config = write_config(tmp_path, cap.env_url(), crm)  # modified: modifiedAt
    with cap_client(cap) as c:
        assert c.post("Customers", json={"ID": 1, "name": "before"}).status_code == 201
    r = dualwrite(config, "follow", "--start")
    assert r.returncode == 0 and "position taken" in r.stderr + r.stdout, r.stderr
    r = dualwrite(config, "sync", "--initial")
    assert r.returncode == 0, r.stderr
    with crm.app().begin() as conn:
        conn.execute(sa.text("UPDATE customers SET name = 'changed in PG' WHERE id = 1"))
    r = dualwrite(config, "follow", "--once")
    assert r.returncode == 0, r.stderr
    assert cap_rows(cap)[1]["name"] == "changed in PG"

    proc = subprocess.Popen([sys.executable, "-m", "dualwrite", "-c", str(config), "follow",
                             "--interval", "0.1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ})
    try:
        with cap_client(cap) as c:
            assert c.post("Customers", json={"ID": 2, "name": "made in CAP"}).status_code \
                == 201
        deadline = time.monotonic() + 60
        while not any(r["id"] == 2 for r in crm.rows("customers", ["id"], ["id"])):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)  # polling the target for the condition, with a deadline
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "following link" in out and "stopped" in out
    r = dualwrite(config, "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    r = dualwrite(config, "status", "--json")
    assert r.returncode == 0, r.stderr
    [row] = [m for m in json.loads(r.stdout)["maps"] if m["map"] == "customers"]
    assert row["note"].startswith("followed by `dualwrite follow`: polling modifiedAt, "
                                  "changes up to 20"), row


def test_a_map_whose_changes_cannot_be_read_is_refused_by_validate_follow_and_run(
        cap: Cap, crm: Backend, tmp_path: Path) -> None:
    """No `modified:` named and CAP applies no change tracking: validate fails (DW136, the
    hint naming `modified:` per environment and per map), `follow` and `run` refuse the map
    with the same message, and `sync --initial` and `verify` still work."""
    config = write_config(tmp_path, cap.env_url(), crm, modified=None)
    with cap_client(cap) as c:
        assert c.post("Customers", json={"ID": 1, "name": "in CAP"}).status_code == 201
    r = dualwrite(config, "validate", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    [issue] = [i for i in doc["issues"] if i["code"] == "DW136"]
    assert not doc["ok"] and issue["severity"] == "error" and issue["map"] == "customers"
    assert "no change tracking" in issue["message"]
    assert "`erp: {url: ..., modified: modifiedAt}`" in issue["hint"]
    assert "`modified: {left: modifiedAt}`" in issue["hint"]
    for command in (["follow", "--start"], ["follow", "--once"], ["run"]):
        r = dualwrite(config, *command)
        said = r.stdout + r.stderr
        assert r.returncode != 0, (command, said)
        assert "DW136" in said and issue["message"] in " ".join(said.split()), (command, said)
    r = dualwrite(config, "sync", "--initial")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [row["id"] for row in crm.rows("customers", ["id"], ["id"])] == [1]
    r = dualwrite(config, "verify")
    assert r.returncode == 0, r.stdout + r.stderr
