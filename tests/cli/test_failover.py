"""Failover between real `dualwrite run` processes sharing a PostgreSQL state store: the
active applier is frozen (SIGSTOP past its lease) or killed (-9), a standby takes over, the
frozen one wakes up a zombie and commits nothing; every change lands exactly once on the
other side (audit triggers count the committed writes per key), `status` names the applier.
Small by default; ``--long`` runs 10 rounds of each fault."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from capture_fixtures import Items, make_items
from dualwrite.cli import main

from conftest import Backend, BackendFactory, fresh_state_url
from faultproxy import FaultProxy, Mode

LEASE = 2.0


def _audit(b: Backend) -> None:
    """Count every committed insert and update of ``items`` per key."""
    b.app_sql("DROP TABLE IF EXISTS items_audit")
    b.app_sql("CREATE TABLE items_audit (id INT NOT NULL, op CHAR(1) NOT NULL)")
    if b.kind == "postgresql":
        b.app_sql("DROP FUNCTION IF EXISTS items_audit() CASCADE")
        b.app_sql("CREATE FUNCTION items_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                  "INSERT INTO items_audit VALUES (NEW.id, left(TG_OP, 1)); RETURN NULL; END $$")
        b.app_sql("CREATE TRIGGER items_audit AFTER INSERT OR UPDATE ON items FOR EACH ROW "
                  "EXECUTE FUNCTION items_audit()")
    else:
        for op in ("INSERT", "UPDATE"):
            b.app_sql(f"CREATE TRIGGER items_audit_{op[0]} AFTER {op} ON items FOR EACH ROW "
                      f"INSERT INTO items_audit VALUES (NEW.id, '{op[0]}')")


class Runs:
    """`dualwrite run` processes of one config; a thread per process reads its stderr."""

    def __init__(self, cfg: str) -> None:
        self.cfg = cfg
        self.procs: list[subprocess.Popen[str]] = []
        self.out: dict[int, list[str]] = {}
        self.read: dict[int, int] = {}  # per pid: lines looked at already
        self.readers: list[threading.Thread] = []

    def start(self, cfg: str | None = None) -> subprocess.Popen[str]:
        p = subprocess.Popen([sys.executable, "-m", "dualwrite", "-c", cfg or self.cfg, "run"],
                             stderr=subprocess.PIPE, text=True, env={**os.environ})
        self.procs.append(p)
        lines = self.out[p.pid] = []
        self.read[p.pid] = 0

        def reader() -> None:
            assert p.stderr is not None
            for line in p.stderr:
                lines.append(line)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        self.readers.append(t)
        return p

    def lines(self, p: subprocess.Popen[str], until: str, timeout: float = 90) -> str:
        """The lines ``p`` printed since the last call, up to one holding ``until``."""
        out = self.out[p.pid]
        deadline = time.monotonic() + timeout
        while True:
            for i in range(self.read[p.pid], len(out)):
                if until in out[i]:
                    text = "".join(out[self.read[p.pid]:i + 1])
                    self.read[p.pid] = i + 1
                    return text
            assert time.monotonic() < deadline and p.poll() is None, \
                f"{until!r} not printed by pid {p.pid}:\n{''.join(out)}"
            time.sleep(0.02)  # polling a condition, with a deadline

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for t in self.readers:
            t.join(10)
        for p in self.procs:
            if p.stderr:
                p.stderr.close()


def _status(cfg: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["-c", cfg, "status", "--json"]) == 0
    return dict(json.loads(capsys.readouterr().out))


class Writer(threading.Thread):
    """The applications, writing all along: a new key at a time, odd keys on the left, even
    ones on the right, each its own transaction."""

    def __init__(self, it: Items) -> None:
        super().__init__(daemon=True)
        self.it = it
        self.keys: list[int] = []
        self.stop = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            k = 0
            while not self.stop.wait(0.01):  # paced: about 100 writes a second at most
                k += 1
                (self.it.left if k % 2 else self.it.right).app_sql(
                    f"INSERT INTO items (id, name, qty) VALUES ({k}, 'w{k}', {k})")
                self.keys.append(k)
        except BaseException as exc:  # handed to the test
            self.failure = exc

    def wrote(self, more: int) -> None:
        """Wait until ``more`` further keys are written (the moment of the next fault)."""
        want = len(self.keys) + more
        deadline = time.monotonic() + 60
        while len(self.keys) < want:
            assert self.failure is None and time.monotonic() < deadline, self.failure
            time.sleep(0.005)  # polling a condition, with a deadline

    def finish(self) -> list[int]:
        self.stop.set()
        self.join(30)
        assert self.failure is None, self.failure
        return self.keys


def _arrived(it: Items, keys: list[int]) -> None:
    deadline = time.monotonic() + 120
    while not (len(it.rows("left")) == len(it.rows("right")) == len(keys)):
        assert time.monotonic() < deadline, (len(it.rows("left")), len(it.rows("right")),
                                             len(keys))
        time.sleep(0.05)  # polling a condition, with a deadline


def _applied_once(it: Items, keys: list[int]) -> None:
    """Every key written once by its application and applied exactly once on the other side:
    one committed insert per key on each side, no update."""
    for name, b in (("left", it.left), ("right", it.right)):
        audit = sorted(b.sql("SELECT id, op FROM items_audit ORDER BY id"))
        assert audit == sorted((k, "I") for k in keys), name
    assert it.rows("left") == it.rows("right")


def _running_link(make_backend: BackendFactory, tmp_path: Path,
                  capsys: pytest.CaptureFixture[str]) -> tuple[Items, str]:
    """PostgreSQL <-> MariaDB items, a PostgreSQL state store (its URL returned), a short
    lease, the map started, audit triggers on both sides."""
    state = fresh_state_url("postgresql", tmp_path)

    def config(cfg: dict[str, Any]) -> None:
        cfg["state"] = state
        cfg["capture"] = {"lease_seconds": LEASE}

    it = make_items(make_backend, tmp_path, "postgresql", "mariadb", extra=config)
    assert main(["-c", str(it.config), "maps", "start", "--yes"]) == 0
    capsys.readouterr()
    _audit(it.left)
    _audit(it.right)
    return it, state


def test_a_standby_takes_over_a_frozen_or_killed_applier_and_the_zombie_commits_nothing(
        make_backend: BackendFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        long_run: bool) -> None:
    it, _state = _running_link(make_backend, tmp_path, capsys)
    cfg = str(it.config)
    runs = Runs(cfg)
    writer = Writer(it)
    rng = random.Random(1)
    try:
        active = runs.start()
        runs.lines(active, "applying captured changes")
        standby = runs.start()
        runs.lines(standby, "standing by")
        writer.start()
        for _round in range(10 if long_run else 1):
            # frozen past its lease, at a random point of the writes: the standby takes over
            writer.wrote(rng.randint(1, 20))
            active.send_signal(signal.SIGSTOP)
            assert "lease epoch" in runs.lines(standby, "failover", timeout=LEASE + 60)
            # A process frozen inside a transaction holds that transaction's row locks (the
            # fence row among them) until it thaws or the database ends its session: the
            # new holder applies once they are released. Thawed, the zombie finishes what
            # it had passed the fence with, then commits nothing more; one of the two ends
            # up holding the lease and applying, named by `status`.
            active.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 90
            while True:
                st = _status(cfg, capsys)
                lease = st["lease"] or {}
                appliers = [p["pid"] for p in st["processes"]
                            if p["role"] == "applier" and p["alive"]]
                if len(appliers) == 1 and lease.get("pid") == appliers[0]:
                    break
                assert time.monotonic() < deadline, st
                time.sleep(0.1)  # polling a condition, with a deadline
            assert lease["epoch"] >= 2
            holder = active if appliers[0] == active.pid else standby
            other = standby if holder is active else active
            # killed at a random point: the other one, on this host, sees its pid gone and
            # takes over at once
            writer.wrote(rng.randint(1, 20))
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=30)
            runs.lines(other, "failover", timeout=LEASE + 60)
            active, standby = other, runs.start()
            runs.lines(standby, "standing by")
        keys = writer.finish()
        _arrived(it, keys)
    finally:
        writer.stop.set()
        runs.close()
    _applied_once(it, keys)
    with it.link() as link:
        assert all(v.ok for v in link.verify())


def test_an_applier_cut_off_from_the_state_store_is_replaced_and_stands_by_after(
        make_backend: BackendFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """A partition: the active applier reaches both databases but not the (PostgreSQL) state
    store. It keeps running (no exit), cannot renew its lease, a standby that reaches the
    store takes over; when the partition heals the cut-off one finds the lease gone and
    stands by. Every change is applied once."""
    it, state = _running_link(make_backend, tmp_path, capsys)
    cfg = str(it.config)
    with FaultProxy(5432) as proxy:
        cut_off = it.config.parent / "through-proxy.yaml"  # the same link, its state via proxy
        cut_off.write_text(it.config.read_text().replace(state, proxy.url(state)))
        runs = Runs(cfg)
        keys = iter(range(1, 1000))
        written: list[int] = []

        def write(n: int) -> None:
            for _ in range(n):
                k = next(keys)
                (it.left if k % 2 else it.right).app_sql(
                    f"INSERT INTO items (id, name, qty) VALUES ({k}, 'w{k}', {k})")
                written.append(k)

        def arrived() -> None:
            deadline = time.monotonic() + 120
            while not (len(it.rows("left")) == len(it.rows("right")) == len(written)):
                assert time.monotonic() < deadline, (len(it.rows("left")),
                                                     len(it.rows("right")))
                time.sleep(0.05)  # polling a condition, with a deadline

        try:
            active = runs.start(str(cut_off))
            runs.lines(active, "applying captured changes")
            standby = runs.start()
            runs.lines(standby, "standing by")
            write(4)
            arrived()
            proxy.set_mode(Mode.REFUSE)  # the partition
            runs.lines(active, "the state store cannot be reached")
            write(4)
            runs.lines(standby, "failover", timeout=LEASE + 60)
            arrived()  # through the standby
            assert active.poll() is None  # the cut-off applier did not exit
            proxy.set_mode(Mode.PASS)  # healed: it finds the lease taken and stands by
            runs.lines(active, "standing by")
            write(4)
            arrived()
        finally:
            runs.close()
    _applied_once(it, written)
