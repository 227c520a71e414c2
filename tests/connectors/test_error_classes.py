"""Database errors are classified by their driver's code, not their words.

Real errors, driven on real PostgreSQL, MariaDB and SQLite databases: each becomes the error
of the hierarchy (and the ``kind`` of ConstraintViolation) that the dialect module's table
names (docs/operations.md, "How errors are classified"). The message-text fallback, for errors
that carry no code, is tested on its own at the end.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
import sqlalchemy as sa

from dualwrite.connectors import connect
from dualwrite.connectors.postgresql.connector import PG_ERROR_CLASSES
from dualwrite.connectors.sql import Fault, SqlConnector, fault_by_text
from dualwrite.engine.capture import _kind_of
from dualwrite.errors import (
    ConnectorError,
    ConstraintViolation,
    RowError,
    TerminalConnectorError,
    TransientConnectorError,
)
from dualwrite.testing.backends import backends, only, spec

from conftest import Backend, BackendFactory, database_url


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metadata() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("errc_parent", md, sa.Column("id", sa.Integer, primary_key=True,
                                          autoincrement=False))
    sa.Table("errc_child", md,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("parent_id", sa.Integer, sa.ForeignKey("errc_parent.id")),
             sa.Column("name", sa.String(10), nullable=False),
             sa.Column("qty", sa.Integer),
             sa.CheckConstraint("qty IS NULL OR qty >= 0", name="ck_errc_qty"))
    return md


def _made(make_backend: BackendFactory, kind: str) -> Backend:
    b = make_backend(kind, "dualwrite_test_a")
    b.create(_metadata())
    b.insert("errc_parent", [{"id": 1}])
    b.insert("errc_child", [{"id": 1, "parent_id": 1, "name": "one", "qty": 1}])
    return b


#: the servers whose own error codes, lock and deadlock settings the tests below name
SERVER_CODES = only("postgresql", "mariadb", why="each server's own codes and settings")


@pytest.fixture(params=SERVER_CODES)
def server_db(request: pytest.FixtureRequest, make_backend: BackendFactory) -> Backend:
    return _made(make_backend, request.param)


@pytest.fixture
def lite_db(make_backend: BackendFactory) -> Backend:
    return _made(make_backend, "sqlite")


#: (row of errc_child, the kind its rejection must have)
ROW_FAULTS = {
    "duplicate key": ({"id": 1, "parent_id": 1, "name": "again", "qty": 1}, "unique"),
    "foreign key": ({"id": 2, "parent_id": 99, "name": "orphan", "qty": 1}, "foreign_key"),
    "not null": ({"id": 3, "parent_id": 1, "name": None, "qty": 1}, "not_null"),
    "check": ({"id": 4, "parent_id": 1, "name": "negative", "qty": -1}, "check"),
    "too long": ({"id": 5, "parent_id": 1, "name": "x" * 11, "qty": 1}, "value"),
}
#: the code each database gives for each, as its module's table lists it
CODES = {
    "postgresql": {"unique": "23505", "foreign_key": "23503", "not_null": "23502",
                   "check": "23514", "value": "22001"},
    "mariadb": {"unique": 1062, "foreign_key": 1452, "not_null": 1048, "check": 4025,
                "value": 1406},
    "sqlite": {"unique": "SQLITE_CONSTRAINT_PRIMARYKEY", "foreign_key":
               "SQLITE_CONSTRAINT_FOREIGNKEY", "not_null": "SQLITE_CONSTRAINT_NOTNULL",
               "check": "SQLITE_CONSTRAINT_CHECK"},
}


@pytest.mark.parametrize(("backend_kind", "case"), [
    (b, c) for b in backends(needs=("sql",)) for c in ROW_FAULTS
    # SQLite does not enforce VARCHAR lengths; its own type error: SQLITE_MISMATCH, below
    if c != "too long" or "length" in spec(b).enforces])
def test_a_rejected_row_is_a_constraint_violation_of_its_kind(
        make_backend: BackendFactory, backend_kind: str, case: str) -> None:
    db = _made(make_backend, backend_kind)
    row, kind = ROW_FAULTS[case]
    with pytest.raises(ConstraintViolation) as info:
        db.insert("errc_child", [row])
    assert info.value.kind == kind
    assert info.value.code == CODES[db.kind][kind]
    assert info.value.environment == db.connector.name
    # the column is read from the database's own report, where it names one
    assert info.value.column == COLUMNS[db.kind].get(case), info.value.message


#: the column each database's report of each rejection names (absent: it names none)
COLUMNS: dict[str, dict[str, str]] = {
    "postgresql": {"duplicate key": "id", "foreign key": "parent_id", "not null": "name"},
    "mariadb": {"foreign key": "parent_id", "not null": "name", "too long": "name"},
    "sqlite": {"duplicate key": "id", "not null": "name"},
}


@pytest.mark.parametrize("backend_kind", only("postgresql", why="its detail line's values"))
def test_a_duplicate_names_its_key_value(make_backend: BackendFactory,
                                         backend_kind: str) -> None:
    db = _made(make_backend, backend_kind)
    with pytest.raises(ConstraintViolation) as info:
        db.insert("errc_child", [ROW_FAULTS["duplicate key"][0]])
    assert (info.value.column, info.value.value) == ("id", "1")


@pytest.mark.parametrize("backend_kind", only("mariadb", why="its message's spelling"))
def test_mariadb_names_the_column_of_a_value_it_cannot_convert(
        make_backend: BackendFactory, backend_kind: str) -> None:
    """Error 1366 names the column as `db`.`table`.`column`: the column is the last part."""
    db = _made(make_backend, backend_kind)
    assert isinstance(db.connector, SqlConnector)
    with pytest.raises(ConstraintViolation) as info, db.connector.translating("insert"), \
            db.connector.engine.begin() as conn:
        conn.exec_driver_sql("SET SESSION sql_mode = 'STRICT_ALL_TABLES'")
        conn.exec_driver_sql("INSERT INTO errc_child (id, name, qty) VALUES (9, 'n', 'many')")
    assert (info.value.column, info.value.value) == ("qty", "many")


def test_sqlite_type_mismatch_is_a_value_violation(lite_db: Backend) -> None:
    db = lite_db
    assert isinstance(db.connector, SqlConnector)
    with pytest.raises(ConstraintViolation) as info:
        # a rowid key takes integers only; the connector would convert the value first
        db.connector.execute("INSERT INTO errc_parent (id) VALUES ('not a number')")
    assert (info.value.kind, info.value.code) == ("value", "SQLITE_MISMATCH")


def test_sqlite_constraint_without_its_own_code_is_of_kind_other(lite_db: Backend) -> None:
    """A trigger's RAISE(ABORT) is SQLITE_CONSTRAINT_TRIGGER: not in the table by itself,
    found by its primary code SQLITE_CONSTRAINT."""
    db = lite_db
    assert isinstance(db.connector, SqlConnector)
    db.connector.execute("CREATE TRIGGER errc_no BEFORE INSERT ON errc_parent "
                         "BEGIN SELECT RAISE(ABORT, 'not today'); END")
    with pytest.raises(ConstraintViolation) as info:
        db.insert("errc_parent", [{"id": 7}])
    assert (info.value.kind, info.value.code) == ("other", "SQLITE_CONSTRAINT_TRIGGER")


# -- transient: locks and deadlocks ---------------------------------------------------------
def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _waiting_on_a_lock(db: Backend) -> Callable[[], bool]:
    """Whether some session of this database is waiting on a row lock."""
    assert isinstance(db.connector, SqlConnector)
    if db.kind == "postgresql":
        sql = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
               "AND wait_event_type = 'Lock'")
    else:
        sql = ("SELECT count(*) FROM information_schema.INNODB_TRX "
               "WHERE trx_state = 'LOCK WAIT'")
    connector = db.connector
    return lambda: int(connector.execute(sql)[0][0]) > 0


@pytest.fixture
def holder(server_db: Backend) -> Iterator[sa.Connection]:
    """A connection holding the row lock of errc_parent 1 (its transaction open)."""
    db = server_db
    assert isinstance(db.connector, SqlConnector)
    with db.connector.engine.connect() as conn:
        conn.exec_driver_sql("UPDATE errc_parent SET id = 1 WHERE id = 1")
        yield conn
        conn.rollback()


def test_lock_timeout_is_transient(server_db: Backend, holder: sa.Connection) -> None:
    db = server_db
    assert isinstance(db.connector, SqlConnector)
    setting = {"postgresql": "SET lock_timeout = '50ms'",
               "mariadb": "SET SESSION innodb_lock_wait_timeout = 1"}[db.kind]
    with pytest.raises(TransientConnectorError) as info, \
            db.connector.translating("update a locked row"), \
            db.connector.engine.connect() as conn:
        conn.exec_driver_sql(setting)
        conn.exec_driver_sql("UPDATE errc_parent SET id = 1 WHERE id = 1")
    assert info.value.code == {"postgresql": "55P03", "mariadb": 1205}[db.kind]


def test_deadlock_is_transient(server_db: Backend) -> None:
    """Two transactions each wait for the other's row: the database breaks the cycle by
    failing one of them, with its deadlock code, which becomes a TransientConnectorError.
    (SQLite has one writer at a time: no deadlock; its busy lock is tested below.)"""
    db = server_db
    connector = db.connector
    assert isinstance(connector, SqlConnector)
    db.insert("errc_parent", [{"id": 2}])
    fast = {"postgresql": "SET deadlock_timeout = '10ms'",
            "mariadb": "SET SESSION innodb_lock_wait_timeout = 30"}[db.kind]
    slow = {"postgresql": "SET deadlock_timeout = '20s'",
            "mariadb": "SET SESSION innodb_lock_wait_timeout = 30"}[db.kind]
    failures: list[BaseException] = []

    def first() -> None:
        try:
            with connector.translating("update row 2"), connector.engine.connect() as conn:
                conn.exec_driver_sql(slow)
                conn.exec_driver_sql("UPDATE errc_parent SET id = 1 WHERE id = 1")
                a_holds.set()
                b_holds.wait(30)
                conn.exec_driver_sql("UPDATE errc_parent SET id = 2 WHERE id = 2")
                conn.rollback()
        except BaseException as exc:  # collected, asserted below
            failures.append(exc)

    a_holds, b_holds = threading.Event(), threading.Event()
    other = threading.Thread(target=first)
    other.start()
    try:
        assert a_holds.wait(30), "the first transaction did not take its lock"
        try:
            with connector.translating("update row 1"), connector.engine.connect() as conn:
                conn.exec_driver_sql(fast)
                conn.exec_driver_sql("UPDATE errc_parent SET id = 2 WHERE id = 2")
                b_holds.set()
                _wait_until(_waiting_on_a_lock(db), "the first transaction to wait")
                conn.exec_driver_sql("UPDATE errc_parent SET id = 1 WHERE id = 1")
                conn.rollback()
        except BaseException as exc:  # collected, asserted below
            failures.append(exc)
    finally:
        b_holds.set()
        other.join(60)
    assert not other.is_alive()
    assert len(failures) == 1, failures
    assert isinstance(failures[0], TransientConnectorError), failures[0]
    assert failures[0].code == {"postgresql": "40P01", "mariadb": 1213}[db.kind]


def test_sqlite_busy_is_transient(tmp_path: Path) -> None:
    """Another connection holds the write lock, and this one does not wait: SQLITE_BUSY.
    Raised by the driver itself (as on dualwrite's raw paths), translated all the same."""
    path = tmp_path / "busy.db"
    connector = connect("lite", f"sqlite:///{path}")
    assert isinstance(connector, SqlConnector)
    connector.execute("CREATE TABLE t (a INTEGER)")
    holder = sqlite3.connect(path, isolation_level=None)
    waiter = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(TransientConnectorError) as info, connector.translating("write"):
            waiter.execute("BEGIN IMMEDIATE")
        assert info.value.code == "SQLITE_BUSY"
    finally:
        holder.close()
        waiter.close()
        connector.close()


# -- connections the server refuses, or that cannot be made --------------------------------
def _fails(url: str) -> ConnectorError:
    connector = connect("env", url)
    try:
        with pytest.raises(ConnectorError) as info:
            connector.tables()
        return info.value
    finally:
        connector.close()


def _with(url: str, **parts: Any) -> str:
    return sa.engine.make_url(url).set(**parts).render_as_string(hide_password=False)


@pytest.mark.parametrize("kind", SERVER_CODES)
def test_connection_refused_is_transient(kind: str) -> None:
    url = _with(database_url(kind, "dualwrite_test_a"), host="127.0.0.1", port=closed_port())
    err = _fails(url)
    assert isinstance(err, TransientConnectorError), err
    # libpq's refusal carries no SQLSTATE: read by its words (the fallback); PyMySQL's has 2003
    assert err.code == {"postgresql": None, "mariadb": 2003}[kind]


def test_wrong_password_is_terminal() -> None:
    """MariaDB: error 1045. (The test PostgreSQL trusts local connections, so a wrong
    password passes there: an unknown role stands in for it below.)"""
    err = _fails(_with(database_url("mariadb", "dualwrite_test_a"), password="not-the-pw"))
    assert type(err) is TerminalConnectorError
    assert err.code == 1045
    assert "refused the credentials" in err.message and "user name or password" in err.hint


def test_unknown_role_is_terminal() -> None:
    err = _fails(_with(database_url("postgresql", "dualwrite_test_a"),
                       username="dwt_no_such_role"))
    assert type(err) is TerminalConnectorError
    assert "refused the credentials" in err.message


@pytest.mark.parametrize("kind", SERVER_CODES)
def test_unknown_database_is_terminal(kind: str) -> None:
    err = _fails(_with(database_url(kind, "dualwrite_test_a"), database="dwt_no_such_db"))
    assert type(err) is TerminalConnectorError
    assert "'dwt_no_such_db' does not exist on the server" in err.message
    assert err.code == {"postgresql": None, "mariadb": 1049}[kind]


def test_sqlite_file_that_cannot_be_opened_is_terminal(tmp_path: Path) -> None:
    err = _fails(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    assert type(err) is TerminalConnectorError
    assert err.code == "SQLITE_CANTOPEN"


# -- the code decides; the words only without one -------------------------------------------
def _wrapped(orig: Exception, cls: type[sa.exc.DBAPIError] = sa.exc.OperationalError
             ) -> sa.exc.DBAPIError:
    return cls("statement", None, orig)


def _connector(kind: str, tmp_path: Path) -> SqlConnector:
    url = f"sqlite:///{tmp_path / 'x.db'}" if kind == "sqlite" else \
        database_url(kind, "dualwrite_test_a")
    c = connect("env", url)
    assert isinstance(c, SqlConnector)
    return c


@pytest.mark.parametrize(("kind", "orig", "fault"), [
    # the words say deadlock, the code says duplicate key: the code wins
    ("postgresql", psycopg.errors.UniqueViolation("deadlock detected"), Fault.UNIQUE),
    ("mariadb", pymysql.err.OperationalError(1062, "Lock wait timeout"), Fault.UNIQUE),
    # and the other way round
    ("postgresql", psycopg.errors.DeadlockDetected("duplicate key value"), Fault.TRANSIENT),
    ("mariadb", pymysql.err.IntegrityError(1213, "Duplicate entry"), Fault.TRANSIENT),
    # a whole SQLSTATE class: 08 connection exception
    ("postgresql", psycopg.errors.ConnectionFailure("whatever"), Fault.TRANSIENT),
    ("postgresql", psycopg.errors.InsufficientPrivilege("permission denied for table t"),
     Fault.PRIVILEGE),
])
def test_the_code_decides_not_the_words(kind: str, orig: Exception, fault: Fault,
                                        tmp_path: Path) -> None:
    c = _connector(kind, tmp_path)
    try:
        assert c.classify(_wrapped(orig))[0] is fault
    finally:
        c.close()


def test_a_code_not_in_the_table_is_classified_by_the_exception_type(tmp_path: Path) -> None:
    c = _connector("postgresql", tmp_path)
    try:
        exclusion = psycopg.errors.ExclusionViolation("conflicting key value")
        assert "23P01" not in PG_ERROR_CLASSES
        assert c.classify(_wrapped(exclusion, sa.exc.IntegrityError)) == \
            (Fault.CONSTRAINT, "23P01")
        # a code, unlisted, on an OperationalError: terminal, whatever its words say
        undefined = psycopg.errors.UndefinedTable("connection refused")
        assert c.classify(_wrapped(undefined)) == (Fault.TERMINAL, "42P01")
    finally:
        c.close()


@pytest.mark.parametrize(("message", "cls", "fault"), [
    ('connection failed: connection to server at "127.0.0.1", port 1 failed: Connection '
     "refused", sa.exc.OperationalError, Fault.TRANSIENT),
    ("the database system is starting up", sa.exc.OperationalError, Fault.TRANSIENT),
    ("server closed the connection unexpectedly", sa.exc.OperationalError, Fault.TRANSIENT),
    ('FATAL:  password authentication failed for user "x"', sa.exc.OperationalError,
     Fault.CREDENTIALS),
    ('FATAL:  role "x" does not exist', sa.exc.OperationalError, Fault.CREDENTIALS),
    ('FATAL:  database "x" does not exist', sa.exc.OperationalError, Fault.DATABASE),
    ('FATAL:  permission denied for database "x"', sa.exc.OperationalError, Fault.GRANTS),
    ("cannot adapt type 'object' using placeholder '%s'", sa.exc.ProgrammingError,
     Fault.UNWRITABLE),
    ("Error binding parameter 2: type 'object' is not supported", sa.exc.InterfaceError,
     Fault.UNWRITABLE),
    # transient words count on an OperationalError only
    ("server closed the connection unexpectedly", sa.exc.ProgrammingError, Fault.TERMINAL),
    ("syntax error at or near", sa.exc.OperationalError, Fault.TERMINAL),
])
def test_fallback_reads_the_words_of_an_error_without_code(
        message: str, cls: type[sa.exc.DBAPIError], fault: Fault) -> None:
    assert fault_by_text(cls("statement", None, Exception(message))) is fault


def test_an_error_without_code_goes_through_the_fallback(tmp_path: Path) -> None:
    """Each dialect reads no code from a driver error that has none (libpq's connection
    failure, PyMySQL's closed connection (0), the sqlite3 module's own), so the words
    decide; and the connector turns that into the error of the hierarchy."""
    for kind, orig in [
            ("postgresql", psycopg.OperationalError("connection failed: Connection refused")),
            ("mariadb", pymysql.err.OperationalError(0, "Lost connection to server")),
            ("sqlite", sqlite3.OperationalError("database is locked"))]:
        c = _connector(kind, tmp_path)
        try:
            assert c.classify(_wrapped(orig)) == (Fault.TRANSIENT, None), kind
            with pytest.raises(TransientConnectorError), c.translating("read"):
                raise _wrapped(orig)
        finally:
            c.close()


def test_the_applier_names_a_lookup_failure_by_its_kind_not_its_words() -> None:
    assert _kind_of(RowError("no related row", kind="lookup")) == "lookup"
    # a rejected row whose column is called "lookup_code" is still a rejection
    assert _kind_of(RowError("rejected", field="lookup_code", value="value map")) == "rejected"
    assert _kind_of(ConstraintViolation("lookup failed", kind="foreign_key")) == "rejected"


@pytest.mark.parametrize("kind", backends(needs=("server",)))
def test_a_pool_with_no_connection_free_is_transient_and_says_so(
        make_backend: BackendFactory, kind: str) -> None:
    """Load is not a fault: a pool whose every connection is busy past its timeout gives a
    TransientConnectorError (retried), naming the pool and what to change."""
    b = make_backend(kind, "dualwrite_test_a")
    c = type(b.connector)(b.connector.name, b.url, engine=sa.create_engine(
        b.url, pool_size=1, max_overflow=0, pool_timeout=0.2))
    try:
        held = c.engine.connect()
        try:
            with pytest.raises(TransientConnectorError) as info:
                c.execute("SELECT 1")
            assert "pool" in str(info.value) and "pool_size" in info.value.hint
        finally:
            held.close()
        assert c.execute("SELECT 1") == [(1,)]  # free again: it works
    finally:
        c.close()
