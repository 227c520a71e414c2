"""A PostgreSQL two-phase branch sends its BEGIN when it opens and, once committed, leaves its
connection for the next branch (no pool checkout per live transaction). A connection kept so
must come back as a fresh session: no transaction left open, and a spare the server closed
meanwhile is replaced instead of failing the transaction."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import psycopg
import pytest
import sqlalchemy as sa

from capture_values import fresh
from dualwrite.connectors.base import Branch
from dualwrite.connectors.postgresql.connector import PgBranch, PostgresConnector
from dualwrite.connectors.sql import SqlBranch, SqlConnector
from dualwrite.errors import TransientConnectorError

from conftest import Backend, BackendFactory


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.05)


def _with_rows(make_backend: BackendFactory, kind: str, database: str) -> Backend:
    """``kind``'s backend on ``database``, with an empty table ``bc_rows``."""
    b = make_backend(kind, database)
    fresh(b, ["bc_rows"], ["CREATE TABLE bc_rows (id integer PRIMARY KEY, note text)"])
    return b


@pytest.fixture
def pg(make_backend: BackendFactory) -> PostgresConnector:
    c = _with_rows(make_backend, "postgresql", "dualwrite_test_a").connector
    assert isinstance(c, PostgresConnector)
    return c


def _branch(c: PostgresConnector) -> PgBranch:
    b = c.begin_branch(f"dw-test-{uuid.uuid4().hex[:12]}")
    assert isinstance(b, PgBranch)
    return b


def _pid(b: PgBranch) -> int:
    return int(b.raw.info.backend_pid)


def _ids(c: SqlConnector) -> list[int]:
    with c.engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.text("SELECT id FROM bc_rows ORDER BY id"))]


def _session_open(c: PostgresConnector, pid: int) -> bool:
    # a connection per look: pg_stat_activity is read once per transaction
    with c.engine.connect() as conn:
        return conn.execute(sa.text("SELECT 1 FROM pg_stat_activity WHERE pid = :p"),
                            {"p": pid}).first() is not None


def _server_now(c: PostgresConnector) -> object:
    with c.engine.connect() as conn:
        return conn.execute(sa.text("SELECT clock_timestamp()")).scalar_one()


def _dead_spare(pg: PostgresConnector) -> int:
    """Commit row 1 through a branch, then have the server end the session its connection
    was kept with; returns that session's pid."""
    first = _branch(pg)
    first.session.insert("bc_rows", ["id", "note"], [(1, "one")])
    _commit(first)
    gone = _pid(first)
    with pg.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": gone}).scalar()
    wait_for(lambda: not _session_open(pg, gone), 30, f"session {gone} did not end")
    return gone


def _commit(b: Branch) -> None:
    b.prepare()
    b.commit()


def test_a_committed_branch_leaves_its_connection_to_the_next(pg: PostgresConnector) -> None:
    first = _branch(pg)
    # the BEGIN was sent when the branch opened: answered, before any statement of its own
    first.ready()
    assert first.raw.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    first.session.insert("bc_rows", ["id", "note"], [(1, "one")])
    assert _ids(pg) == []  # inside the branch's transaction: the BEGIN went out first
    _commit(first)
    second = _branch(pg)
    assert _pid(second) == _pid(first)
    second.session.insert("bc_rows", ["id", "note"], [(2, "two")])
    _commit(second)
    assert _ids(pg) == [1, 2]


def test_a_branch_that_rolls_back_goes_back_to_the_pool(pg: PostgresConnector) -> None:
    first = _branch(pg)
    first.session.insert("bc_rows", ["id", "note"], [(1, "one")])
    first.rollback()
    assert _ids(pg) == []
    second = _branch(pg)
    second.session.insert("bc_rows", ["id", "note"], [(2, "two")])
    _commit(second)
    assert _ids(pg) == [2]


def test_an_empty_branch_leaves_no_transaction_open_for_the_next(
        pg: PostgresConnector) -> None:
    empty = _branch(pg)
    _commit(empty)  # nothing written: not prepared, its BEGIN only answered
    after = _server_now(pg)
    nxt = _branch(pg)
    started = nxt.ready().exec_driver_sql("SELECT now()").scalar_one()
    # now() is the transaction's start: a session still in the empty branch's transaction
    # (its BEGIN answered, never ended) would give a time before the empty branch ended
    assert started >= after
    nxt.session.insert("bc_rows", ["id", "note"], [(1, "one")])
    _commit(nxt)
    assert _ids(pg) == [1]


def test_a_spare_the_server_closed_is_replaced_not_failed(pg: PostgresConnector) -> None:
    gone = _dead_spare(pg)
    nxt = _branch(pg)
    nxt.session.insert("bc_rows", ["id", "note"], [(2, "two")])
    _commit(nxt)
    assert _pid(nxt) != gone
    assert _ids(pg) == [1, 2]


def test_closing_the_connector_closes_its_spares(make_backend: BackendFactory) -> None:
    b = _with_rows(make_backend, "postgresql", "dualwrite_test_a")
    c = b.reopen()
    assert isinstance(c, PostgresConnector)
    branch = _branch(c)
    branch.session.insert("bc_rows", ["id", "note"], [(1, "one")])
    _commit(branch)
    pid = _pid(branch)
    c.close()
    other = b.connector
    assert isinstance(other, PostgresConnector)
    assert other is not c
    wait_for(lambda: not _session_open(other, pid), 30,
             f"the spare's session {pid} is still open after close()")



# -- MariaDB (XA through SQLAlchemy's two-phase transaction) ---------------------------------
@pytest.fixture
def maria(make_backend: BackendFactory) -> SqlConnector:
    c = _with_rows(make_backend, "mariadb", "dualwrite_test_b").connector
    assert isinstance(c, SqlConnector)
    return c


def _session_id(b: Branch) -> int:
    assert isinstance(b, SqlBranch)
    return int(b.conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one())


def _maria_branch(c: SqlConnector, row: int) -> Branch:
    b = c.begin_branch(f"dw-test-{uuid.uuid4().hex[:12]}")
    b.session.insert("bc_rows", ["id", "note"], [(row, "x")])
    return b


def test_mariadb_a_committed_branch_leaves_its_connection_to_the_next(
        maria: SqlConnector) -> None:
    first = _maria_branch(maria, 1)
    sid = _session_id(first)
    _commit(first)
    second = _maria_branch(maria, 2)
    assert _session_id(second) == sid
    _commit(second)
    assert _ids(maria) == [1, 2]


def test_mariadb_a_session_that_let_capture_see_its_writes_is_not_kept(
        maria: SqlConnector) -> None:
    first = _maria_branch(maria, 1)
    first.session.capture_own_writes()  # @dualwrite_origin = NULL for this session
    _commit(first)
    second = _maria_branch(maria, 2)
    assert isinstance(second, SqlBranch)
    # kept, the session would write without dualwrite's mark: captured back, an echo
    assert second.conn.exec_driver_sql("SELECT @dualwrite_origin").scalar_one() == 1
    _commit(second)


def test_mariadb_a_spare_the_server_closed_is_replaced_not_failed(
        maria: SqlConnector) -> None:
    first = _maria_branch(maria, 1)
    sid = _session_id(first)
    _commit(first)
    with maria.engine.connect() as conn:
        conn.exec_driver_sql(f"KILL CONNECTION {sid}")

    def gone() -> bool:
        with maria.engine.connect() as c:
            return c.exec_driver_sql(
                f"SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = {sid}").first() is None

    wait_for(gone, 30, f"session {sid} did not end")
    second = _maria_branch(maria, 2)
    assert _session_id(second) != sid
    _commit(second)
    assert _ids(maria) == [1, 2]



def test_a_dead_spare_with_the_server_unreachable_fails_cleanly(
        pg: PostgresConnector, monkeypatch: pytest.MonkeyPatch) -> None:
    """The spare is gone and no new connection can be made: the statement fails as a
    transient error, and rolling the branch back ends it without another error."""
    gone = _dead_spare(pg)
    nxt = _branch(pg)  # the dead spare: its BEGIN went out, its answer is the error
    assert _pid(nxt) == gone

    def unreachable() -> sa.Connection:
        raise sa.exc.OperationalError("connect", {}, Exception(
            "connection to server at 127.0.0.1, port 1 failed: Connection refused"))

    monkeypatch.setattr(pg.engine, "connect", unreachable)
    with pytest.raises(TransientConnectorError):
        nxt.session.insert("bc_rows", ["id", "note"], [(2, "two")])
    nxt.rollback()  # ends the branch: no error of its own
    monkeypatch.undo()
    assert _ids(pg) == [1]


# -- waiting for the server's answer -------------------------------------------------------
def test_a_branch_waiting_inside_its_commit_lets_the_other_threads_run(
        pg: PostgresConnector) -> None:
    """A branch waits for its answer in ``select``, which releases the GIL, and asks libpq
    only for results already read. Here the last-resource COMMIT waits inside the server (a
    deferred trigger wants an advisory lock the test holds) after part of its answer has
    come (the INSERT's result, flushed by the trigger's notice); another thread of this
    process releases the lock once it sees the wait. Had the branch waited inside libpq
    (``PQgetResult`` with the rest not come) it would hold the GIL: that thread could not
    run, and the COMMIT would fail on its lock_timeout instead."""
    with pg.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE OR REPLACE FUNCTION bc_wait() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE NOTICE 'waiting at commit'; PERFORM pg_advisory_xact_lock(4343); "
            "RETURN NULL; END $$")
        conn.exec_driver_sql(
            "CREATE CONSTRAINT TRIGGER bc_wait AFTER INSERT ON bc_rows DEFERRABLE INITIALLY "
            "DEFERRED FOR EACH ROW EXECUTE FUNCTION bc_wait()")
    pg.ensure_decisions()
    holder = pg.engine.connect()
    holder.exec_driver_sql("SELECT pg_advisory_lock(4343)")
    released: list[bool] = []

    def release_once_waited() -> None:
        def waiting() -> bool:
            with pg.engine.connect() as conn:
                return bool(conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND NOT granted").scalar_one())
        try:
            wait_for(waiting, 30, "the COMMIT did not wait for the advisory lock")
            released.append(True)
        finally:
            holder.exec_driver_sql("SELECT pg_advisory_unlock_all()")

    b = _branch(pg)
    b.ready().exec_driver_sql("SET LOCAL lock_timeout = '10s'")
    b.session.insert("bc_rows", ["id", "note"], [(1, "one")])
    helper = threading.Thread(target=release_once_waited, daemon=True)
    helper.start()
    try:
        b.commit_deciding(b.xid, '["a record"]')
    finally:
        helper.join(40)
        holder.close()
    assert released == [True]
    assert _ids(pg) == [1]
    assert pg.decisions(b.xid) == [(b.xid, "commit", '["a record"]')]


def test_a_decision_record_larger_than_the_socket_buffers_goes_out_whole(
        pg: PostgresConnector) -> None:
    """The connection is non-blocking: a message larger than what the socket takes at once
    is sent in parts, flushed until it is all out, before the branch waits for the answer
    (the server would otherwise wait for the rest, and the branch for the server). Run on a
    thread so that a branch stuck that way fails the test rather than hanging it."""
    pg.ensure_decisions()
    record = "[" + ", ".join(["\"x\""] * 12_000_000) + "]"  # 60 MB
    b = _branch(pg)
    b.session.insert("bc_rows", ["id", "note"], [(1, "one")])
    errors: list[BaseException] = []

    def commit() -> None:
        try:
            b.commit_deciding(b.xid, record)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=commit, daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "the commit never got its answer: its message not all sent"
    assert errors == []
    assert _ids(pg) == [1]
    [(xid, outcome, kept)] = pg.decisions(b.xid)
    assert (xid, outcome, kept == record) == (b.xid, "commit", True)


def _prepared_here(b: PgBranch) -> list[str]:
    """The statements prepared on the branch's session (pg_prepared_statements shows the
    session's own only)."""
    return [str(r[0]) for r in b.ready().exec_driver_sql(
        "SELECT statement FROM pg_prepared_statements")]


def test_a_branch_insert_is_prepared_once_and_again_after_a_rollback(
        pg: PostgresConnector) -> None:
    """A branch's INSERT runs on the protocol directly, prepared once per session in
    psycopg's own cache of the connection: the next branch on the session reuses it. When a
    branch rolls back, psycopg deallocates every statement of the session; the next branch
    prepares the INSERT again rather than name a statement that is gone."""
    first = _branch(pg)
    assert first.session.insert_returning("bc_rows", {"id": 1, "note": "one"}) == \
        {"id": 1, "note": "one"}
    [insert] = [s for s in _prepared_here(first) if "INSERT" in s]
    _commit(first)
    second = _branch(pg)
    assert _pid(second) == _pid(first)  # the spare: the same session
    second.session.insert_returning("bc_rows", {"id": 2, "note": "two"})
    assert [s for s in _prepared_here(second) if "INSERT" in s] == [insert]  # not again
    second.rollback()
    # back in the pool: branches are opened (and held) until one has that session
    held: list[PgBranch] = []
    while _pid(third := _branch(pg)) != _pid(first):
        held.append(third)
        assert len(held) < 10, "the rolled-back session never came back from the pool"
    for b in held:
        b.rollback()
    assert [s for s in _prepared_here(third) if "INSERT" in s] == []  # deallocated
    third.session.insert_returning("bc_rows", {"id": 3, "note": "three"})
    assert [s for s in _prepared_here(third) if "INSERT" in s] == [insert]
    _commit(third)
    assert _ids(pg) == [1, 3]


@pytest.mark.parametrize("end", ["rollback", "commit"])
def test_a_branch_that_wrote_nothing_keeps_its_session_and_its_statements(
        pg: PostgresConnector, end: str) -> None:
    """The side a one-sided transaction did not write: its branch sent only BEGIN, and is
    ended with a plain ROLLBACK (committed or rolled back alike). Its session is kept for
    the next branch with its prepared statements: psycopg's own rollback would deallocate
    them all (a round trip, and each prepared again) and the session would go back to the
    pool."""
    first = _branch(pg)
    first.session.insert_returning("bc_rows", {"id": 1, "note": "one"})
    [insert] = [s for s in _prepared_here(first) if "INSERT" in s]
    _commit(first)
    idle = _branch(pg)
    assert _pid(idle) == _pid(first)
    if end == "rollback":
        idle.rollback()
    else:
        _commit(idle)
    after = _server_now(pg)
    nxt = _branch(pg)
    assert _pid(nxt) == _pid(first)  # kept, not given back to the pool
    # a transaction of its own (now() is its start): the idle branch's was ended
    assert nxt.ready().exec_driver_sql("SELECT now()").scalar_one() >= after
    assert [s for s in _prepared_here(nxt) if "INSERT" in s] == [insert]
    nxt.session.insert_returning("bc_rows", {"id": 2, "note": "two"})
    _commit(nxt)
    assert _ids(pg) == [1, 2]
