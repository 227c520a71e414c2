"""Capture triggers on the real databases: any column name, any character set, any bytes, every
value exactly; schema changes and the application's own two-phase commit never break the
application's writes."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from capture_values import (
    app_exec,
    expected_value,
    fresh,
    ident,
    insert_sql,
    same,
    value_table,
)
from dualwrite.connectors.capture import (
    MARKER,
    CaptureLog,
    CaptureSpec,
    Change,
)
from dualwrite.connectors.sql import SqlConnector
from dualwrite.model.codec import decode_json, from_log
from dualwrite.model.schema import Column, Kind
from dualwrite.model.values import END_OF_DAY, INFINITY
from dualwrite.testing.backends import backends, only

from conftest import Backend, BackendFactory

#: names that collided with what the triggers declared, or need quoting in every dialect
HOSTILE = ["n", "o", "v", "k", "j", "t", "s", "jk", "old", "new", "row", "user", "MixedCase",
           "with space", 'dq"x', "bt`x", "sq'x", "dw_tx", "TG_RELID"]


@pytest.fixture(params=backends(needs=("capture",)))
def db(request: pytest.FixtureRequest, make_backend: BackendFactory) -> Backend:
    return make_backend(request.param, "dualwrite_test_a")


def _log(b: Backend) -> CaptureLog:
    assert isinstance(b.connector, SqlConnector)
    log = b.connector.change_log()
    assert isinstance(log, CaptureLog)
    return log


def _decoded(b: Backend, table: str, change: Change) -> tuple[dict[str, Any] | None,
                                                               dict[str, Any] | None]:
    columns = dict(b.connector.describe(table).columns)
    log = _log(b)
    return log.decode(change.old, columns), log.decode(change.new, columns)


def _literal(b: Backend, text: str) -> str:
    if b.kind == "mariadb":
        return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + text.replace("'", "''") + "'"


def test_decoding_keeps_signed_zero_and_survives_the_state_store() -> None:
    """JSON's -0 is an integer token (json gives 0); values that come back from the state
    store as text decode as from the log; a marker keeps its reason there."""
    doc = decode_json('{"a":-0,"b":[-0,-0.0,1],"c":"x:-0,"}')
    to_float = from_log(Column("f", Kind.FLOAT))
    assert to_float is not None and repr(to_float(doc["a"])) == "-0.0"
    assert [repr(float(v)) for v in doc["b"]] == ["-0.0", "-0.0", "1.0"]
    assert doc["c"] == "x:-0,"
    for kind, text, value in ((Kind.FLOAT, "-Infinity", float("-inf")),
                              (Kind.DECIMAL, "1.50", Decimal("1.50")),
                              (Kind.BINARY, "\\x00ff", b"\x00\xff"),
                              (Kind.TIME, "24:00:00", END_OF_DAY),
                              (Kind.DATE, "infinity", INFINITY)):
        fn = from_log(Column("c", kind))
        assert fn is not None and same(fn(text), value)
    marker = Change(seq=1, map="m", txid="7", op=MARKER, key_text="[]",
                    new_json='{"reason": "column(s) qty gone"}')
    again = Change.from_dict(marker.as_dict())
    assert (again.op, again.reason, again.new, again.key) == (MARKER, "column(s) qty gone",
                                                             None, ())


def test_any_column_name_is_captured_exactly(db: Backend) -> None:
    """Column names equal to the triggers' own aliases and variables, reserved words, mixed
    case, spaces and every quote character: the application's writes succeed and the log
    carries each value under its column's name."""
    table = "hostile 'table'"
    cols = ", ".join(f"{ident(db, c)} VARCHAR(40)" for c in HOSTILE)
    fresh(db, [table], [f"CREATE TABLE {ident(db, table)} ({ident(db, 'id')} INTEGER "
                        f"PRIMARY KEY, {cols})"])
    log = _log(db)
    spec = CaptureSpec("hostile \"map\" 'x'", table, ("id",), ("id", *HOSTILE))
    log.install(spec)
    assert log.check(spec) == []
    names = ", ".join(ident(db, c) for c in ["id", *HOSTILE])
    values = ", ".join(_literal(db, f"{c} \\ ☃") for c in HOSTILE)
    t = ident(db, table)
    app_exec(db, f"INSERT INTO {t} ({names}) VALUES (1, {values})")
    app_exec(db, f"UPDATE {t} SET {ident(db, 'n')} = 'N2', {ident(db, 'old')} = 'OLD2'")
    app_exec(db, f"DELETE FROM {t}")
    ins, upd, dele = log.read([spec.map], 100)
    first = {"id": 1, **{c: f"{c} \\ ☃" for c in HOSTILE}}
    second = {**first, "n": "N2", "old": "OLD2"}
    assert (ins.op, ins.key, ins.old, ins.new) == ("I", (1,), None, first)
    assert (upd.op, upd.key, upd.old, upd.new) == ("U", (1,), first, second)
    assert (dele.op, dele.key, dele.old, dele.new) == ("D", (1,), second, None)


def test_every_value_comes_back_exactly_from_the_log(db: Backend) -> None:
    """Each edge value, written by the application, logged by the trigger and decoded for its
    column's kind, is what the connector reads from the table (or, where the connector cannot
    read it exactly, the value the column holds: see capture_values); as the new version of
    an insert, and as the old version of an update that clears it. SQL NULL stays None."""
    columns, rows = value_table(db)
    log = _log(db)
    spec = CaptureSpec("vals", "vals", ("id",), tuple(columns))
    log.install(spec)
    app_exec(db, *[insert_sql(db, "vals", i, col, lit) for i, col, lit, _exp in rows])
    wants = {i: expected_value(db, "vals", i, col, exp) for i, col, _lit, exp in rows}
    for i, col, _lit, _exp in rows:
        app_exec(db, f"UPDATE vals SET {ident(db, col)} = NULL WHERE id = {i}")
    changes = log.read(["vals"], 10_000)
    inserts = {c.key[0]: c for c in changes if c.op == "I"}
    updates = {c.key[0]: c for c in changes if c.op == "U"}
    assert len(inserts) == len(updates) == len(rows)
    wrong = []
    for i, col, lit, _exp in rows:
        want = wants[i]
        _old, new = _decoded(db, "vals", inserts[i])
        old, cleared = _decoded(db, "vals", updates[i])
        assert new is not None and old is not None and cleared is not None
        for what, got in (("new", new[col]), ("old", old[col])):
            if not same(got, want):
                wrong.append(f"{col} = {lit}: the log's {what} gave {got!r}, not {want!r}")
        if cleared[col] is not None:
            wrong.append(f"{col}: SQL NULL came back as {cleared[col]!r}")
    assert wrong == []


@pytest.mark.parametrize("charset", ["latin1", "utf8mb4"])
def test_mariadb_text_in_any_character_set_and_any_bytes(make_backend: BackendFactory,
                                                          charset: str) -> None:
    """A MariaDB table with blob and binary columns beside text columns, in latin1 or
    utf8mb4: the application writes non-ASCII text and bytes that are not UTF-8, and each
    write succeeds; the log carries the exact text and the exact bytes."""
    db = make_backend("mariadb", "dualwrite_test_a")
    fresh(db, ["cs"], [
        "CREATE TABLE cs (id INT PRIMARY KEY, name VARCHAR(40), note TEXT, "
        f"blob_ LONGBLOB, vb VARBINARY(8)) DEFAULT CHARSET={charset}"])
    log = _log(db)
    spec = CaptureSpec("cs", "cs", ("id",), ("id", "name", "note", "blob_", "vb"))
    log.install(spec)
    text = "ñandú café Größe"
    app_exec(db, f"INSERT INTO cs VALUES (1, '{text}', '{text}', x'c328ffa000', x'5c78ff')")
    app_exec(db, "UPDATE cs SET name = 'Ærø', blob_ = x'fffe' WHERE id = 1")
    ins, upd = log.read(["cs"], 10)
    _o, new = _decoded(db, "cs", ins)
    assert new == {"id": 1, "name": text, "note": text, "blob_": b"\xc3(\xff\xa0\x00",
                   "vb": b"\\x\xff"}
    old, new = _decoded(db, "cs", upd)
    assert old == new | {"name": text, "blob_": b"\xc3(\xff\xa0\x00"}
    assert new is not None and (new["name"], new["blob_"]) == ("Ærø", b"\xff\xfe")


def test_a_change_of_letter_case_alone_is_captured(db: Backend) -> None:
    """A column whose collation calls 'abc' and 'ABC' equal (MariaDB's _ci, SQLite's NOCASE):
    an update that only changes letter case is still a change."""
    collate = {"mariadb": "CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci",
               "sqlite": "COLLATE NOCASE", "postgresql": ""}[db.kind]
    fresh(db, ["ci"], [f"CREATE TABLE ci (id INTEGER PRIMARY KEY, name VARCHAR(20) {collate})"])
    log = _log(db)
    spec = CaptureSpec("ci", "ci", ("id",), ("id", "name"))
    log.install(spec)
    app_exec(db, "INSERT INTO ci VALUES (1, 'abc')")
    app_exec(db, "UPDATE ci SET name = 'ABC'")
    changes = log.read(["ci"], 10)
    assert [(c.op, (c.new or {}).get("name")) for c in changes] == [("I", "abc"), ("U", "ABC")]


SCHEMA_BACKENDS = only("postgresql", "mariadb", why="the application's DDL in each server's "
                       "own dialect")


@pytest.mark.parametrize("kind", SCHEMA_BACKENDS)
@pytest.mark.parametrize("change", ["rename", "drop"])
def test_a_mapped_column_renamed_or_dropped_records_a_marker(make_backend: BackendFactory,
                                                              kind: str, change: str) -> None:
    """The application's INSERT, UPDATE and DELETE keep working after a mapped column is
    renamed or dropped: the trigger logs a marker (op X) per row, with the row's key and the
    reason, and check() names the missing column. Once the column is back, capture records
    values again, by itself."""
    db = make_backend(kind, "dualwrite_test_a")
    fresh(db, ["items"], ["CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(40), "
                          "qty INTEGER, note VARCHAR(10))"])
    log = _log(db)
    spec = CaptureSpec("items", "items", ("id",), ("id", "name", "qty"))
    log.install(spec)
    app_exec(db, "INSERT INTO items VALUES (1, 'a', 1, 'x')")
    if change == "rename":
        alter = ("ALTER TABLE items CHANGE qty quantity INT" if kind == "mariadb" else
                 "ALTER TABLE items RENAME COLUMN qty TO quantity")
        app_exec(db, alter)
        app_exec(db, "INSERT INTO items (id, name, quantity) VALUES (2, 'b', 2)")
    else:
        app_exec(db, "ALTER TABLE items DROP COLUMN qty")
        app_exec(db, "INSERT INTO items (id, name) VALUES (2, 'b')")
    app_exec(db, "UPDATE items SET name = 'c' WHERE id = 1")
    app_exec(db, "UPDATE items SET note = 'y' WHERE id = 2")
    app_exec(db, "DELETE FROM items WHERE id = 1")
    assert log.check(spec) == [
        "map 'items', table 'items': column(s) 'qty' gone from the table (renamed or dropped)"]
    changes = log.read(["items"], 100)
    assert [(c.op, c.key) for c in changes] == [("I", (1,)), (MARKER, (2,)), (MARKER, (1,)),
                                                (MARKER, (2,)), (MARKER, (1,))]
    for c in changes[1:]:
        assert c.reason is not None and "qty" in c.reason and "'items'" in c.reason
        assert c.new is None and not c.has_new and c.old is None
        assert c.as_dict()["reason"] == c.reason
    # the column back: the same triggers record values again
    if change == "rename":
        back = ("ALTER TABLE items CHANGE quantity qty INT" if kind == "mariadb" else
                "ALTER TABLE items RENAME COLUMN quantity TO qty")
    else:
        back = "ALTER TABLE items ADD COLUMN qty INTEGER"
    app_exec(db, back)
    app_exec(db, "UPDATE items SET qty = 7 WHERE id = 2")
    assert log.check(spec) == []
    last = log.read(["items"], 100)[-1]
    assert (last.op, last.key, (last.new or {}).get("qty")) == ("U", (2,), 7)


def test_sqlite_follows_a_renamed_column_and_refuses_to_drop_one(
        make_backend: BackendFactory) -> None:
    """SQLite rewrites triggers when a column is renamed, so writes keep being captured;
    check() says the map's column is gone. It refuses to drop a column a trigger reads: the
    DDL fails, the application's writes do not."""
    db = make_backend("sqlite", "dualwrite_test_a")
    fresh(db, ["items"], ["CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INT)"])
    log = _log(db)
    spec = CaptureSpec("items", "items", ("id",), ("id", "name", "qty"))
    log.install(spec)
    app_exec(db, "ALTER TABLE items RENAME COLUMN qty TO quantity")
    app_exec(db, "INSERT INTO items (id, name, quantity) VALUES (1, 'a', 5)")
    assert log.check(spec) == [
        "map 'items', table 'items': column(s) 'qty' gone from the table (renamed or dropped)"]
    [c] = log.read(["items"], 10)
    assert c.new == {"id": 1, "name": "a", "qty": 5}
    with pytest.raises(sa.exc.OperationalError, match="trigger"):
        app_exec(db, "ALTER TABLE items DROP COLUMN name")
    app_exec(db, "UPDATE items SET name = 'b'")
    assert log.read(["items"], 10)[-1].new == {"id": 1, "name": "b", "qty": 5}


def test_check_names_missing_disabled_and_out_of_date_triggers(db: Backend) -> None:
    fresh(db, ["items"], ["CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(40))"])
    log = _log(db)
    spec = CaptureSpec("items", "items", ("id",), ("id", "name"))
    where = "map 'items', table 'items'"
    before = log.check(spec)
    assert before[0] == f"{where}: the change log (dualwrite_changes) is missing"
    assert before[1:] and all(p.startswith(f"{where}: capture trigger {spec.tag}_") and
                              p.endswith(" is missing") for p in before[1:])
    log.install(spec)
    assert log.check(spec) == []
    drop = (f"DROP FUNCTION {spec.tag}_d() CASCADE" if db.kind == "postgresql" else
            f"DROP TRIGGER {spec.tag}_d")
    db.sql(drop)
    assert log.check(spec) == [f"{where}: capture trigger {spec.tag}_d is missing"]
    log.install(spec)
    if db.kind == "postgresql":
        db.sql(f"ALTER TABLE items DISABLE TRIGGER {spec.tag}_i")
        assert log.check(spec) == [f"{where}: capture trigger {spec.tag}_i is disabled"]
        log.install(spec)
    if db.kind != "sqlite":  # SQLite logs every value by what it holds: no type to go stale
        retype = ("ALTER TABLE items MODIFY name VARBINARY(40)" if db.kind == "mariadb" else
                  "ALTER TABLE items ALTER name TYPE jsonb USING to_jsonb(name)")
        db.sql(retype)
        assert log.check(spec) == [
            f"{where}: capture trigger {spec.tag}_{op} is out of date (the table changed "
            "since it was installed)" for op in "idu"]
        log.install(spec)
    assert log.check(spec) == []
    db.sql("DROP TABLE items")
    assert log.check(spec) == [f"{where}: the table does not exist"]


# -- the application's own two-phase commit ----------------------------------------------------
def test_postgresql_application_two_phase_commit_on_a_captured_table(
        make_backend: BackendFactory) -> None:
    """PREPARE TRANSACTION works on a captured table (the triggers never NOTIFY; the deferred
    wake-up stays silent at PREPARE), even with the constraints set immediate; the changes are
    in the log once COMMIT PREPARED commits them, and not at all after ROLLBACK PREPARED.
    Ordinary transactions still notify, once each, at commit."""
    db = make_backend("postgresql", "dualwrite_test_a")
    fresh(db, ["items"], ["CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)"])
    log = _log(db)
    spec = CaptureSpec("items", "items", ("id",), ("id", "name"))
    log.install(spec)
    dsn = db.url.replace("postgresql+psycopg://", "postgresql://")
    run = uuid.uuid4().hex[:12]  # prepared transactions' ids are server-wide
    gids = [f"dwtest-app-{run}-{i}" for i in (1, 2, 3)]
    with psycopg.connect(dsn, autocommit=True) as listener, psycopg.connect(dsn) as app:
        listener.execute("LISTEN dualwrite_changes")
        try:
            app.execute("INSERT INTO items VALUES (1, 'a')")
            app.execute("INSERT INTO items VALUES (2, 'b')")
            app.commit()
            assert _notifications(listener, wanted=1) == 1
            app.execute("UPDATE items SET name = 'prepared' WHERE id = 1")
            app.execute("INSERT INTO items VALUES (3, 'c')")
            app.execute(f"PREPARE TRANSACTION '{gids[0]}'")
            assert [c.op for c in log.read(["items"], 100)] == ["I", "I"]  # not yet
            app.execute("SET CONSTRAINTS ALL IMMEDIATE")
            app.execute("UPDATE items SET name = 'immediate' WHERE id = 2")
            app.execute(f"PREPARE TRANSACTION '{gids[1]}'")
            app.execute("INSERT INTO items VALUES (4, 'rolled back')")
            app.execute(f"PREPARE TRANSACTION '{gids[2]}'")
            app.autocommit = True
            app.execute(f"COMMIT PREPARED '{gids[0]}'")
            app.execute(f"COMMIT PREPARED '{gids[1]}'")
            app.execute(f"ROLLBACK PREPARED '{gids[2]}'")
            assert _notifications(listener, wanted=0) == 0  # prepared: found by polling
        finally:
            app.rollback()
            app.autocommit = True
            for gid in gids:
                if app.execute("SELECT 1 FROM pg_prepared_xacts WHERE gid = %s",
                               (gid,)).fetchone():
                    app.execute(f"ROLLBACK PREPARED '{gid}'")
        changes = log.read(["items"], 100)
        assert [(c.op, c.key, (c.new or {}).get("name")) for c in changes] == [
            ("I", (1,), "a"), ("I", (2,), "b"), ("U", (1,), "prepared"), ("I", (3,), "c"),
            ("U", (2,), "immediate")]
        assert len({c.txid for c in changes[2:4]}) == 1  # one source transaction
        assert app.execute("SELECT count(*) FROM dualwrite_wake").fetchone() == (0,)


def _notifications(listener: psycopg.Connection[Any], *, wanted: int) -> int:
    """Notifications received until ``wanted`` arrived (or 10 s passed), then any more that
    come within a short while."""
    got = 0
    deadline = time.monotonic() + 10
    while got < wanted and time.monotonic() < deadline:
        got += sum(1 for _n in listener.notifies(timeout=0.2, stop_after=1))
    got += sum(1 for _n in listener.notifies(timeout=0.3))
    return got


def test_an_autocommit_statement_with_parameters_notifies(make_backend: BackendFactory
                                                           ) -> None:
    """Drivers send a statement with parameters by the extended protocol; in autocommit it
    commits at the protocol's Sync, where no query is current. The wake-up took that for
    a PREPARE and did not notify: the applier saw such changes (psycopg's, JDBC's prepared
    statements') only at its next timeout, up to a second later. Each such commit notifies
    once, as a simple-protocol one does."""
    db = make_backend("postgresql", "dualwrite_test_a")
    fresh(db, ["items"], ["CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)"])
    log = _log(db)
    log.install(CaptureSpec("items", "items", ("id",), ("id", "name")))
    dsn = db.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as listener, \
            psycopg.connect(dsn, autocommit=True) as app:
        listener.execute("LISTEN dualwrite_changes")
        app.execute("INSERT INTO items VALUES (%s, %s)", (1, "with parameters"))
        assert _notifications(listener, wanted=1) == 1
        app.execute("UPDATE items SET name = %s WHERE id = %s", ("again", 1))
        app.execute("INSERT INTO items VALUES (2, 'simple')")
        assert _notifications(listener, wanted=2) == 2
    assert [c.op for c in log.read(["items"], 100)] == ["I", "U", "I"]


def test_mariadb_application_xa_transaction_on_a_captured_table(
        make_backend: BackendFactory) -> None:
    """XA START / END / PREPARE / COMMIT on a captured table: the log (versioned by
    transaction id) records the branch's changes with its transaction id once committed; a
    rolled-back branch leaves nothing."""
    db = make_backend("mariadb", "dualwrite_test_a")
    fresh(db, ["items"], ["CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(20))"])
    log = _log(db)
    spec = CaptureSpec("items", "items", ("id",), ("id", "name"))
    log.install(spec)
    with db.app().connect() as conn:
        raw: Any = conn.connection.driver_connection
        raw.autocommit(True)
        with raw.cursor() as cur:
            cur.execute("INSERT INTO items VALUES (1, 'a')")
            run = uuid.uuid4().hex[:12]  # XA ids are server-wide
            for xid, commit, before in ((f"xa1-{run}", True, 1), (f"xa2-{run}", False, 3)):
                cur.execute(f"XA START '{xid}'")
                try:
                    cur.execute(f"UPDATE items SET name = '{xid}' WHERE id = 1")
                    cur.execute(f"INSERT INTO items VALUES ({3 if commit else 4}, 'x')")
                    cur.execute(f"XA END '{xid}'")
                    cur.execute(f"XA PREPARE '{xid}'")
                    # prepared: not in the log yet
                    assert len(log.read(["items"], 100)) == before
                finally:
                    cur.execute(f"XA {'COMMIT' if commit else 'ROLLBACK'} '{xid}'")
    changes = log.read(["items"], 100)
    assert [(c.op, c.key, (c.new or {}).get("name")) for c in changes] == [
        ("I", (1,), "a"), ("U", (1,), f"xa1-{run}"), ("I", (3,), "x")]
    assert changes[1].txid == changes[2].txid != changes[0].txid
