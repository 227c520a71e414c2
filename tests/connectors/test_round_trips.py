"""Reads that need no transaction take none where that spares round trips (PostgreSQL: no
BEGIN and no ROLLBACK around a lookup or a fetch by key, the applier's resolution of a source
lookup on every batch); reads inside a write session stay in its transaction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import event

from capture_values import fresh
from dualwrite.connectors.capture import CHANGES, CaptureLog
from dualwrite.connectors.sql import SqlConnector, SqlWriteSession
from dualwrite.errors import LeaseLost

from conftest import Backend, BackendFactory


@contextmanager
def _statuses(engine: sa.Engine) -> Iterator[list[tuple[str, psycopg.pq.TransactionStatus]]]:
    """(statement, the session's transaction status right after it) for each statement run
    through ``engine`` inside the block: IDLE means no transaction was open around it."""
    seen: list[tuple[str, psycopg.pq.TransactionStatus]] = []

    def after(conn: sa.Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        dbapi = conn.connection.dbapi_connection
        assert isinstance(dbapi, psycopg.Connection)
        seen.append((statement, dbapi.info.transaction_status))

    event.listen(engine, "after_cursor_execute", after)
    try:
        yield seen
    finally:
        event.remove(engine, "after_cursor_execute", after)


def _groups(make_backend: BackendFactory, kind: str, columns: str
            ) -> tuple[Backend, SqlConnector]:
    """A test database of ``kind`` with a fresh ``rt_groups`` table (``columns``) holding
    groups 1-3 (codes G1-G3), and its connector."""
    b = make_backend(kind, "dualwrite_test_a")
    fresh(b, ["rt_groups"], [f"CREATE TABLE rt_groups ({columns})"])
    b.app_sql("INSERT INTO rt_groups VALUES (1, 'G1'), (2, 'G2'), (3, 'G3')")
    c = b.connector
    assert isinstance(c, SqlConnector)
    return b, c


def test_postgresql_lookups_and_fetches_run_outside_a_transaction(
        make_backend: BackendFactory) -> None:
    _pg, c = _groups(make_backend, "postgresql", "id integer PRIMARY KEY, code text NOT NULL")
    with _statuses(c.engine) as seen:
        assert c.lookup("rt_groups", "id", [2, 3, 9], "code") == {2: "G2", 3: "G3"}
        assert sorted(c.fetch("rt_groups", ["id", "code"], key=["id"], keys=[(1,), (3,)])) \
            == [(1, "G1"), (3, "G3")]
    reads = [(s, st) for s, st in seen if "rt_groups" in s]
    assert len(reads) == 2, seen
    assert all(st == psycopg.pq.TransactionStatus.IDLE for _s, st in reads), reads
    # inside a write session the same reads see its transaction (and its own writes)
    with _statuses(c.engine) as seen, c.transaction() as sess:
        sess.insert("rt_groups", ["id", "code"], [(4, "G4")])
        assert sess.lookup("rt_groups", "id", [4], "code") == {4: "G4"}
    reads = [(s, st) for s, st in seen if "rt_groups" in s and s.lstrip().startswith("SELECT")]
    assert reads and all(st == psycopg.pq.TransactionStatus.INTRANS for _s, st in reads), reads


def _mariadb_log(make_backend: BackendFactory) -> tuple[Backend, SqlConnector, CaptureLog]:
    """A MariaDB test database with an empty change log and no applied positions."""
    my = make_backend("mariadb", "dualwrite_test_a")
    fresh(my, [], [])
    c = my.connector
    assert isinstance(c, SqlConnector)
    log = c.change_log()
    assert isinstance(log, CaptureLog)
    log.ensure()
    return my, c, log


def test_mariadb_prunes_applied_positions_in_one_statement_per_map(
        make_backend: BackendFactory) -> None:
    """Dropping applied positions (the prune that closes an apply transaction on MariaDB,
    one position per source transaction) is one DELETE per map, not one per position: a
    step of single-row transactions at 1,000/s prunes about six, and PyMySQL runs an
    executemany of a DELETE as that many statements, a round trip each. Only the positions
    named go."""
    my, c, log = _mariadb_log(make_backend)
    with c.transaction() as sess:
        log.mark_applied(sess, "src", [("m1", f"t{i}", i) for i in range(7)]
                         + [("m2", "u1", 1), ("m2", "u2", 2), ("m3", "v1", 1)])
    with c.transaction() as sess:
        assert isinstance(sess, SqlWriteSession)

        def deletes() -> int:
            return int(sess.conn.exec_driver_sql(
                "SHOW SESSION STATUS LIKE 'Com_delete'").one()[1])

        before = deletes()
        log.unmark(sess, "src", [("m1", f"t{i}") for i in range(6)]
                   + [("m2", "u1"), ("m2", "u2")])
        assert deletes() - before == 2
    assert sorted(my.sql("SELECT map, txid FROM dualwrite_applied WHERE source = 'src'")) == [
        ("m1", "t6"), ("m3", "v1")]


def test_mariadb_closes_an_apply_transaction_in_one_request(
        make_backend: BackendFactory) -> None:
    """The bookkeeping that closes an apply transaction on MariaDB (raise the fence, record
    the positions, drop the pruned ones, look for queued changes of the maps written) is one
    request of several statements, not four round trips; it does what the four did: an
    older applier's epoch is refused (LeaseLost) and leaves nothing recorded."""
    my, c, log = _mariadb_log(make_backend)
    with c.transaction() as sess:  # the link's first fence here
        assert log.finish_apply(sess, "src", [("m1", "t0", 1)], [], ("lk", 1)) == set()
    my.sql(f"INSERT INTO {CHANGES} (map, op, k, at) VALUES ('m2', 'I', '[1]', NOW(6))")
    requests: list[int] = []
    with c.transaction() as sess:
        assert isinstance(sess, SqlWriteSession)
        raw: Any = sess.conn.connection.driver_connection
        send = raw._execute_command

        def counted(command: int, sql: Any) -> Any:
            requests.append(command)
            return send(command, sql)

        raw._execute_command = counted
        try:
            queued = log.finish_apply(sess, "src", [("m1", "t1", 2), ("m1", "t2", 3)],
                                      [("m1", "t0")], ("lk", 2), ("m1", "m2"))
        finally:
            del raw._execute_command
        assert len(requests) == 1, requests
        assert queued == {"m2"}
    positions = "SELECT map, txid, seq FROM dualwrite_applied WHERE source = 'src'"
    assert sorted(my.sql(positions)) == [("m1", "t1", 2), ("m1", "t2", 3)]
    with pytest.raises(LeaseLost), c.transaction() as sess:
        log.finish_apply(sess, "src", [("m1", "t3", 4)], [], ("lk", 1))
    assert sorted(my.sql(positions)) == [("m1", "t1", 2), ("m1", "t2", 3)]
    with c.transaction() as sess:
        assert log.fence_epoch(sess, "lk") == 2


def _count_requests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every request PyMySQL sends from now until ``monkeypatch.undo()``, as text, in order
    (each one is a round trip)."""
    import pymysql

    sent: list[str] = []
    original = pymysql.connections.Connection._execute_command

    def counted(self: Any, command: int, sql: Any) -> Any:
        sent.append(sql.decode() if isinstance(sql, bytes) else str(sql))
        return original(self, command, sql)

    monkeypatch.setattr(pymysql.connections.Connection, "_execute_command", counted)
    return sent


def test_mariadb_lookups_fetches_and_log_reads_are_one_request_each_in_autocommit(
        make_backend: BackendFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """On MariaDB the reads that need no transaction (a lookup, a fetch by key, a read of the
    change log: the applier's on every step) run on sessions in autocommit: one request
    each, no ROLLBACK after it (PyMySQL sends one even with nothing to undo), no switching
    autocommit on and off; and they leave no transaction open, whose metadata lock would
    hold up a change to the table's definition."""
    my, c = _groups(make_backend, "mariadb", "id int PRIMARY KEY, code varchar(10) NOT NULL")
    log = c.change_log()
    assert isinstance(log, CaptureLog)
    log.ensure()
    assert c.lookup("rt_groups", "id", [1], "code") == {1: "G1"}  # a session made already
    sent = _count_requests(monkeypatch)
    assert c.lookup("rt_groups", "id", [2, 3, 9], "code") == {2: "G2", 3: "G3"}
    assert sorted(c.fetch("rt_groups", ["id", "code"], key=["id"], keys=[(1,), (3,)])) \
        == [(1, "G1"), (3, "G3")]
    assert log.read_start(["m1"], 10) == ([], None)
    monkeypatch.undo()
    assert len(sent) == 3, sent
    assert all(s.lstrip().upper().startswith("SELECT") for s in sent), sent
    # nothing left open on those sessions: the table's definition can change at once
    my.app_sql("SET STATEMENT lock_wait_timeout = 5 FOR "
               "ALTER TABLE rt_groups ADD COLUMN extra int")
    assert c.lookup("rt_groups", "id", [2], "code") == {2: "G2"}


def test_mariadb_forgets_applied_changes_behind_the_fence_in_one_request(
        make_backend: BackendFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deleting applied changes from a MariaDB log (after every apply from it) raises the
    applier's fence and deletes in one request, a transaction of its own, where it took three
    round trips; an older applier's epoch deletes nothing (LeaseLost), and nothing is left
    open on the session (the log's definition can change at once)."""
    my, c, log = _mariadb_log(make_backend)
    for i in range(6):
        my.sql(f"INSERT INTO {CHANGES} (map, op, k, at) VALUES ('m1', 'I', '[{i}]', NOW(6))")
    seqs = sorted(int(r[0]) for r in my.sql(f"SELECT seq FROM {CHANGES}"))
    log.forget(seqs[:1], fence=("lk", 1))  # the link's first fence here: the plain way
    sent = _count_requests(monkeypatch)
    log.forget(seqs[1:4], fence=("lk", 2))
    monkeypatch.undo()
    assert len(sent) == 1, sent
    assert sorted(int(r[0]) for r in my.sql(f"SELECT seq FROM {CHANGES}")) == seqs[4:]
    with pytest.raises(LeaseLost):
        log.forget(seqs[4:], fence=("lk", 1))
    assert sorted(int(r[0]) for r in my.sql(f"SELECT seq FROM {CHANGES}")) == seqs[4:]
    with c.transaction() as sess:
        assert log.fence_epoch(sess, "lk") == 2
    my.app_sql(f"SET STATEMENT lock_wait_timeout = 5, system_versioning_alter_history = KEEP "
               f"FOR ALTER TABLE {CHANGES} ADD COLUMN extra int")
