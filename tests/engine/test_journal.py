"""The decision journal: decisions are durable on return, survive the death of their process,
reach the state store's tables exactly once, and a torn record is never taken for one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dualwrite.engine import journal as journal_module
from dualwrite.engine.journal import DRAIN_SECONDS, HEADER, DecisionJournal, read_records
from dualwrite.engine.state import AuditEntry, StateStore
from dualwrite.engine.state.decisions import audit_rows

CHILD = textwrap.dedent("""
    import os, signal, sys
    from dualwrite.engine.state import AuditEntry, StateStore
    store = StateStore(sys.argv[1])
    for i in range(int(sys.argv[2])):
        store.log_commit_decision(f"dw-x-{i}", ["erp", "crm"], "child",
                                  [AuditEntry("erp", "Customers", ("C-%d" % i,), "create",
                                              "customers")])
    print("logged", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no close(), no drain: only the journal has them
""")


def _store(tmp_path: Path) -> StateStore:
    return StateStore(f"sqlite:///{tmp_path / 'state.db'}")


def _audit(i: int) -> list[AuditEntry]:
    return [AuditEntry("erp", "Customers", (f"C-{i}",), "create", "customers")]


def test_decisions_of_a_killed_process_are_adopted(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD, f"sqlite:///{tmp_path / 'state.db'}",
                           "25"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "logged" in proc.stdout
    journal_dir = tmp_path / "state.db.decisions"
    assert [p.suffix for p in journal_dir.iterdir()] == [".journal"]

    store = _store(tmp_path)  # opening adopts the dead process's journal
    try:
        assert list(journal_dir.iterdir()) == []
        assert all(store.decision(f"dw-x-{i}") == "commit" for i in range(25))
        assert store.decision("dw-x-25") is None  # never logged: presumed abort
        audit = store.audit()
        assert sorted(r["xid"] for r in audit) == sorted(f"dw-x-{i}" for i in range(25))
        assert {r["principal"] for r in audit} == {"child"}
    finally:
        store.close()


def test_a_live_process_journal_is_left_alone(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # The background drain (every DRAIN_SECONDS) would move the decision into the tables,
    # and swap in a spare file, before the checks below on a busy machine: here only
    # close() drains, whatever the machine's speed.
    monkeypatch.setattr(journal_module._Drainer, "watch", lambda self, journal: None)
    owner, other = _store(tmp_path), None
    try:
        owner.log_commit_decision("dw-live-1", ["erp", "crm"], "alice", _audit(1))
        other = _store(tmp_path)
        # owner holds its file locked: the other store must not import (or delete) it
        assert other.decision("dw-live-1") is None
        assert [p.suffix for p in (tmp_path / "state.db.decisions").iterdir()] == [".journal"]
        owner.close()  # drains into the tables and deletes the file
        assert other.decision("dw-live-1") == "commit"
        assert list((tmp_path / "state.db.decisions").iterdir()) == []
    finally:
        if other is not None:
            other.close()


def test_a_torn_record_ends_the_journal(tmp_path: Path) -> None:
    sunk: list[list[object]] = []
    journal = DecisionJournal(tmp_path / "j", sunk.append)
    journal.append({"n": 1})
    journal.append({"n": 2})
    path = next((tmp_path / "j").iterdir())
    data = path.read_bytes()
    first_len = HEADER.unpack_from(data, 0)[0]
    second = HEADER.size + first_len
    # tear the second record: its last payload byte never reached the disk
    second_len = HEADER.unpack_from(data, second)[0]
    torn = bytearray(data)
    torn[second + HEADER.size + second_len - 1] ^= 0xFF
    path.write_bytes(bytes(torn))
    with open(path, "rb") as f:
        assert read_records(f) == [{"n": 1}]
    journal.close()
    assert sunk == [[{"n": 1}, {"n": 2}]]  # what it wrote, from memory


def test_importing_twice_writes_each_decision_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        store.log_commit_decision("dw-twice-1", ["erp", "crm"], "alice", _audit(1))
        payloads = [{"at": "2026-01-01T00:00:00", "decisions": [
            ["dw-twice-1", ["erp", "crm"], "alice", [["erp", "Customers", '["C-1"]',
                                                      "create", "customers"]]]]}]
        store.settle()
        store._import_journalled(payloads)  # what a crash between import and delete repeats
        assert [r["xid"] for r in store.audit()] == ["dw-twice-1"]
    finally:
        store.close()


def test_a_transaction_bigger_than_a_journal_file(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        big = [AuditEntry("erp", "Customers", (f"C-{i:06d}",), "create", "customers")
               for i in range(20_000)]
        store.log_commit_decision("dw-big-1", ["erp", "crm"], "alice", big)
        store.log_commit_decision("dw-small-1", ["erp", "crm"], "alice", _audit(2))
        assert store.decision("dw-big-1") == "commit"
        assert store.decision("dw-small-1") == "commit"
        assert len(store.audit(limit=30_000)) == 20_001
    finally:
        store.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_a_store_without_a_file_commits_decisions_directly(url: str) -> None:
    store = StateStore(url)
    try:
        assert store._journal is None
        store.log_commit_decision("dw-mem-1", ["erp", "crm"], "alice", _audit(1))
        assert store.decision("dw-mem-1") == "commit"
    finally:
        store.close()


def test_the_background_drain_moves_decisions_without_a_reader(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        store.log_commit_decision("dw-bg-1", ["erp", "crm"], "alice", _audit(1))
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
        deadline = time.monotonic() + 20 * DRAIN_SECONDS + 5
        found = 0
        while time.monotonic() < deadline and not found:
            with engine.connect() as conn:
                found = conn.execute(sa.text(
                    "SELECT count(*) FROM coordinator_log WHERE xid = 'dw-bg-1'")).scalar() or 0
            if not found:
                time.sleep(0.05)
        engine.dispose()
        assert found == 1
    finally:
        store.close()
    assert os.listdir(tmp_path / "state.db.decisions") == []


def test_a_reused_file_never_yields_the_records_of_an_earlier_round(tmp_path: Path) -> None:
    sunk: list[list[object]] = []
    journal = DecisionJournal(tmp_path / "j", sunk.append)
    for n in range(3):
        journal.append({"round": 0, "n": n, "pad": "x" * 50})
    first = journal._current
    assert first is not None
    journal.drain()  # round 0 imported; the file becomes the spare, its next round epoch 1
    assert journal._current is not first  # appends went on in the other file
    journal.append({"round": 1, "n": 0})
    journal.drain()  # that one becomes the spare in turn, and the first file takes over
    journal.append({"round": 2, "n": 0})  # ... from its start
    assert journal._current is first and first.epoch == 1
    with open(first.path, "rb") as f:
        # round 0's records lie beyond the new one, intact, but are of an older epoch
        assert read_records(f) == [{"round": 2, "n": 0}]
    journal.close()
    assert [r["round"] for batch in sunk for r in batch] == [0, 0, 0, 1, 2]  # type: ignore[index]
    assert list((tmp_path / "j").iterdir()) == []


def test_a_reader_waits_for_the_background_drain_under_way(tmp_path: Path) -> None:
    """A decision noted from a last resource, taken by the background drain and not yet
    written when a reader settles: ``pending`` no longer counts it, and the reader must
    wait for that drain to see its audit rows (it read nothing, once in a run with both
    cores busy)."""
    store = _store(tmp_path)
    main = threading.get_ident()
    taken, go = threading.Event(), threading.Event()
    decided = store._decided
    write, drain = decided._sink, decided.drain

    def slow_write(items: list[Any]) -> None:
        if threading.get_ident() != main:  # the background drain: held until the reader
            taken.set()                    # has come
            go.wait(30)
        write(items)

    def drain_seen() -> None:
        if threading.get_ident() == main:
            go.set()
        drain()

    decided._sink = slow_write  # type: ignore[method-assign]
    decided.drain = drain_seen  # type: ignore[method-assign]
    try:
        store.note_decision("dw-lr-1", ["erp", "crm"], "alice", audit_rows(_audit(1)),
                            completed=True, forget=None)
        assert taken.wait(30), "the background drain did not start"
        assert not decided.pending  # taken: on its way into the state store
        assert [(a["xid"], a["principal"]) for a in store.audit()] == [("dw-lr-1", "alice")]
    finally:
        go.set()
        store.close()
