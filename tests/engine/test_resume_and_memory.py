"""Initial sync killed with SIGKILL at random points resumes with no duplicate and no loss;
its memory does not grow with the table."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import sqlalchemy as sa

from conftest import BackendFactory
from sync_fixtures import erp_customer, make_pair, seed_groups


def _created_so_far(state_db: Path) -> int:
    """Rows created on the right according to the checkpoint (0 when none yet)."""
    engine = sa.create_engine(f"sqlite:///{state_db}", connect_args={"timeout": 30})
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("checkpoints"):
                return 0
            row = conn.execute(sa.text(
                "SELECT stats FROM checkpoints WHERE map = 'customers'")).first()
    finally:
        engine.dispose()
    return int(json.loads(row[0])["created"]["right"]) if row else 0


def _sync(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "dualwrite.cli", "-c", str(config), "sync", "--initial",
             "--json"], stdout=subprocess.DEVNULL, stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_sigkill_at_random_points_then_resume(make_backend: BackendFactory, tmp_path: Path,
                                              long_run: bool) -> None:
    rows = 60_000 if long_run else 12_000
    kills = 6 if long_run else 3
    pair = make_pair(make_backend, tmp_path, "postgresql", "postgresql", batch_size=400)
    seed_groups(pair)
    pair.erp.insert("Customers", [erp_customer(i) for i in range(rows)])
    rng = random.Random(7)
    state_db = tmp_path / "state.db"
    marks = sorted(rng.sample(range(rows // 10, rows - rows // 10), kills))
    for mark in marks:
        log = tmp_path / f"sync-{mark}.log"
        proc = _sync(pair.config, log)
        deadline = time.monotonic() + 120
        while _created_so_far(state_db) < mark:
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "sync made no progress within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    final = subprocess.run(
        [sys.executable, "-m", "dualwrite.cli", "-c", str(pair.config), "sync", "--initial",
         "--json"], capture_output=True, timeout=600, check=False)
    assert final.returncode == 0, final.stderr.decode()[-2000:]
    report = {m["map"]: m for m in json.loads(final.stdout)["maps"]}
    assert report["customers"]["resumed"] is True
    # Totals carry across the kills. A chunk written just before a kill but not yet
    # checkpointed is read again, compares equal, and counts as unchanged: never twice.
    created = report["customers"]["created"]["right"]
    assert created + report["customers"]["unchanged"] == rows
    assert created >= rows - kills * 400
    accounts = pair.crm.sql("SELECT company, accountnumber, count(*) FROM accounts "
                            "GROUP BY company, accountnumber HAVING count(*) > 1")
    assert accounts == []  # no duplicate
    assert pair.crm.sql("SELECT count(*) FROM accounts")[0][0] == rows  # no loss
    with pair.link() as link:
        assert all(v.ok for v in link.verify())


def _peak_sync_memory(make_backend: BackendFactory, tmp_path: Path, rows: int) -> int:
    pair = make_pair(make_backend, tmp_path, "sqlite", "sqlite", batch_size=500)
    seed_groups(pair)
    pair.erp.insert("Customers", [erp_customer(i) for i in range(rows)])
    with pair.link() as link:
        link.sync_initial(["groups"])
        tracemalloc.start()
        try:
            [res] = link.sync_initial(["customers"])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert res.created["right"] == rows
    return peak


def test_memory_does_not_grow_with_the_table(make_backend: BackendFactory,
                                             tmp_path: Path) -> None:
    (tmp_path / "small").mkdir()
    (tmp_path / "large").mkdir()
    small = _peak_sync_memory(make_backend, tmp_path / "small", 3_000)
    large = _peak_sync_memory(make_backend, tmp_path / "large", 15_000)
    # five times the rows must not need anything like five times the memory
    assert large < small * 1.5, (small, large)
