"""`capture: logical`: PostgreSQL's logical decoding fills the change log (see
dualwrite.connectors.postgresql.logical). The compliance suite's change-log tests run against
it; then what only this mode has: the decoder's exactly-once hand-over, echo suppression by
the marking trigger's messages, schema changes, set-up refusals and a clean uninstall."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from capture_fixtures import make_items
from dualwrite.connectors import connect
from dualwrite.connectors.changelog import MARKER, CaptureSpec
from dualwrite.connectors.postgresql.logical import (
    LogicalCaptureLog,
    PgOutput,
    decoding,
    full_xid,
)
from dualwrite.engine.link import Link
from dualwrite.errors import ConfigError, TerminalConnectorError
from dualwrite.model.maps import Side
from dualwrite.testing.backends import spec
from dualwrite.testing.connector_suite import (  # noqa: F401 - the suite's change-log tests
    change_log,
    db,
    test_a_fence_holds_out_older_epochs,
    test_applied_positions_commit_and_roll_back_with_their_session,
    test_change_log_reads_captured_changes_in_commit_order,
    test_pending_finds_queued_changes_by_key_inside_a_session,
    test_wait_returns_on_a_new_change,
)

from conftest import Backend, BackendFactory, drop_logical_capture


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Backend]:
    """A PostgreSQL test database whose connector captures by logical decoding."""
    url = spec("postgresql").url("dualwrite_test_lg", tmp_path)
    b = Backend("postgresql", url, connect("suite", url, capture="logical"))
    yield b
    b.connector.close()
    drop_logical_capture(url)


@pytest.fixture
def items(harness: Backend) -> Iterator[tuple[Backend, LogicalCaptureLog, CaptureSpec]]:
    """A table ``lg_items`` captured for a map of a new name each time."""
    harness.sql("DROP TABLE IF EXISTS lg_items")
    harness.sql("CREATE TABLE lg_items (id int PRIMARY KEY, name text NOT NULL, qty int, "
                "note text)")
    log = harness.connector.change_log()
    assert isinstance(log, LogicalCaptureLog)
    log.uninstall()  # nothing left of an earlier run
    s = CaptureSpec(f"lg_{uuid.uuid4().hex[:8]}", "lg_items", ("id",), ("id", "name", "qty"),
                    "v1")
    log.install(s)
    yield harness, log, s
    log.uninstall()


def app(b: Backend, sql: str) -> None:
    """An application's statement (its own session: captured), autocommit."""
    b.app_sql(sql)


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def log_rows(b: Backend) -> list[tuple[str, str]]:
    return [(str(r[0]), str(r[1])) for r in
            b.sql("SELECT op, k FROM dualwrite_changes ORDER BY seq")]


def test_a_transaction_logged_then_redelivered_after_a_crash_is_logged_once(
        items: tuple[Backend, LogicalCaptureLog, CaptureSpec]) -> None:
    """The decoder commits the log rows with the LSN reached, then confirms the slot. A crash
    between the two delivers the transaction again; it is recognised by its LSN and skipped."""
    b, log, s = items
    crashes: list[int] = []

    def crash() -> None:
        if not crashes:
            crashes.append(1)
            raise ConnectionError("injected: the decoder dies before confirming the slot")

    log.decoder.after_commit = crash
    with decoding(log):
        app(b, "INSERT INTO lg_items (id, name, qty) VALUES (1, 'a', 1), (2, 'b', 2)")
        wait_for(lambda: bool(crashes), 30, "the injected crash")
        app(b, "UPDATE lg_items SET qty = 3 WHERE id = 2")
        log.catch_up()
    assert log_rows(b) == [("I", "[1]"), ("I", "[2]"), ("U", "[2]")]
    assert [c.key for c in log.read([s.map], 100)] == [(1,), (2,), (2,)]


def test_dualwrite_own_writes_are_not_captured_and_queued_ones_are(
        items: tuple[Backend, LogicalCaptureLog, CaptureSpec]) -> None:
    """No echo: what dualwrite writes (a plain transaction, a two-phase branch) carries its
    marking into the WAL and is not logged; a write through dualwrite that must queue
    (``capture_own_writes``) is logged from that statement on, in the same transaction."""
    b, log, s = items
    c = b.connector
    with c.transaction() as tx:
        tx.insert("lg_items", ["id", "name", "qty"], [(1, "own", 1)])
    branch = c.begin_branch(f"dwlg-{uuid.uuid4().hex[:8]}")
    branch.session.insert("lg_items", ["id", "name", "qty"], [(2, "two-phase", 2)])
    branch.prepare()
    branch.commit()
    with c.transaction() as tx:
        tx.update("lg_items", ["id"], ["qty"], [((1,), (10,))])  # own: not logged
        tx.capture_own_writes()
        tx.update("lg_items", ["id"], ["qty"], [((2,), (20,))])  # queued: logged
    app(b, "UPDATE lg_items SET name = 'app' WHERE id = 1")
    got = log.read([s.map], 100)
    assert [(ch.op, ch.key, (ch.new or {}).get("qty")) for ch in got] == [
        ("U", (2,), 20), ("U", (1,), 10)]


def test_schema_changes_keep_capturing_or_log_a_marker(
        items: tuple[Backend, LogicalCaptureLog, CaptureSpec]) -> None:
    """A column added to a captured table changes nothing; a mapped column renamed makes
    the decoder log a marker (as the triggers do), and the application's write succeeds."""
    b, log, s = items
    app(b, "ALTER TABLE lg_items ADD COLUMN extra text")
    app(b, "INSERT INTO lg_items (id, name, qty, extra) VALUES (1, 'a', 1, 'x')")
    app(b, "ALTER TABLE lg_items RENAME COLUMN qty TO quantity")
    app(b, "INSERT INTO lg_items (id, name, quantity) VALUES (2, 'b', 2)")
    got = log.read([s.map], 100)
    assert [ch.op for ch in got] == ["I", MARKER]
    assert got[0].new == {"id": 1, "name": "a", "qty": 1}
    assert "qty" in (got[1].reason or "")
    assert any("qty" in p for p in log.check(s))


def test_check_names_what_is_missing(
        items: tuple[Backend, LogicalCaptureLog, CaptureSpec]) -> None:
    b, log, s = items
    assert log.check(s) == []
    app(b, "ALTER TABLE lg_items REPLICA IDENTITY DEFAULT")
    app(b, f"ALTER PUBLICATION {log.slot} DROP TABLE lg_items")
    problems = log.check(s)
    assert any("REPLICA IDENTITY" in p for p in problems)
    assert any("publication" in p for p in problems)
    log.install(s)  # installing again repairs it
    assert log.check(s) == []


def test_uninstall_leaves_no_slot_publication_or_table(harness: Backend) -> None:
    b = harness
    b.sql("DROP TABLE IF EXISTS lg_items")
    b.sql("CREATE TABLE lg_items (id int PRIMARY KEY, name text NOT NULL, qty int)")
    log = b.connector.change_log()
    assert isinstance(log, LogicalCaptureLog)
    s = CaptureSpec("lg_gone", "lg_items", ("id",), ("id", "name", "qty"), "v1")
    log.install(s)
    with decoding(log):  # uninstall stops a running decoder first
        removed = log.uninstall()
    assert f"replication slot {log.slot}" in removed and f"publication {log.slot}" in removed
    assert b.sql("SELECT count(*) FROM pg_replication_slots WHERE database = "
                 "current_database()") == [(0,)]
    assert b.sql("SELECT count(*) FROM pg_publication") == [(0,)]
    assert b.sql("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'dualwrite\\_%' "
                 "AND tablename <> 'dualwrite_link'") == [(0,)]
    assert b.sql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'dw\\_%'") == [(0,)]
    app(b, "INSERT INTO lg_items (id, name) VALUES (1, 'after')")  # the app still writes


def test_logical_mode_is_refused_where_it_cannot_work(harness: Backend) -> None:
    """A role that may not replicate gets an error naming the grant (and the other mode);
    a backend that has no logical decoding is refused in the config."""
    b = harness
    role = f"dwlg_{uuid.uuid4().hex[:6]}"
    b.sql(f"CREATE ROLE {role} LOGIN NOREPLICATION")
    try:
        b.sql(f"GRANT ALL ON SCHEMA public TO {role}")
        url = sa.engine.make_url(b.url).set(username=role)
        c = connect("crm", url.render_as_string(hide_password=False), capture="logical")
        try:
            with pytest.raises(TerminalConnectorError) as err:
                c.change_log().ensure()
            assert "REPLICATION" in str(err.value) and "capture: triggers" in str(err.value)
        finally:
            c.close()
    finally:
        b.sql(f"REVOKE ALL ON SCHEMA public FROM {role}")
        b.sql(f"DROP ROLE {role}")
    with pytest.raises(ConfigError, match="logical decoding"):
        connect("crm", "sqlite:///x.db", capture="logical")


def test_pgoutput_messages_decode_and_xids_widen() -> None:
    import struct

    p = PgOutput()
    rel = (b"R" + struct.pack("!I", 7) + b"public\0t\0f" + struct.pack("!h", 2)
           + b"\x01id\0" + struct.pack("!Ii", 23, -1) + b"\x00name\0" + struct.pack("!Ii", 25, -1))
    assert p.feed(rel) is None
    p.feed(b"B" + struct.pack("!QqI", 100, 0, 42))

    def tup(*vals: bytes | None) -> bytes:
        out = struct.pack("!h", len(vals))
        for v in vals:
            out += b"n" if v is None else b"t" + struct.pack("!i", len(v)) + v
        return out

    p.feed(b"M" + struct.pack("!BQ", 1, 100) + b"dualwrite\0" + struct.pack("!i", 2) + b"on")
    p.feed(b"I" + struct.pack("!I", 7) + b"N" + tup(b"1", b"own"))
    p.feed(b"M" + struct.pack("!BQ", 1, 100) + b"dualwrite\0" + struct.pack("!i", 5) + b"queue")
    p.feed(b"U" + struct.pack("!I", 7) + b"O" + tup(b"1", b"own") + b"N" + tup(b"1", None))
    tx = p.feed(b"C" + struct.pack("!BQQq", 0, 100, 120, 0))
    assert tx is not None and tx.xid == 42 and tx.end_lsn == 120
    assert [(c.op, c.own, c.old, c.new) for c in tx.changes] == [
        ("I", True, None, {"id": "1", "name": "own"}),
        ("U", False, {"id": "1", "name": "own"}, {"id": "1", "name": None})]
    assert full_xid(42, (5 << 32) | 100) == (5 << 32) | 42
    assert full_xid(0xFFFFFFF0, (5 << 32) | 3) == (4 << 32) | 0xFFFFFFF0


def test_validate_reports_an_environment_that_cannot_decode(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    """`dualwrite validate` names the environment, what it lacks and the way out (DW137);
    `maps start` refuses with the same message; the other side is not concerned."""
    from capture_fixtures import make_items
    from dualwrite.engine.link import Link

    role = f"dwlg_{uuid.uuid4().hex[:6]}"
    it = make_items(make_backend, tmp_path, "postgresql", "postgresql", "logical")
    it.left.sql(f"CREATE ROLE {role} LOGIN NOREPLICATION")
    try:
        it.left.sql(f"GRANT ALL ON SCHEMA public TO {role}")
        it.left.sql(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        url = sa.engine.make_url(it.left.url).set(username=role)
        text = it.config.read_text().replace(it.left.url,
                                             url.render_as_string(hide_password=False))
        it.config.write_text(text)
        with Link.open(it.config) as link:
            _bound, issues = link.validate()
            [issue] = [i for i in issues if i.code == "DW137"]
            assert "'erp'" in issue.message and "REPLICATION" in issue.message
            assert "capture: triggers" in issue.hint and issue.is_error
            with pytest.raises(Exception, match="REPLICATION"):
                link.start_maps()
    finally:
        it.left.sql(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
        it.left.sql(f"REVOKE ALL ON SCHEMA public FROM {role}")
        it.left.sql(f"DROP OWNED BY {role}")
        it.left.sql(f"DROP ROLE {role}")


def test_status_and_check_warn_about_a_slot_far_behind(
        make_backend: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slot that holds back WAL (nobody reads it) is named in `status`'s note of every
    running map and in `check`, with what to do."""
    from dualwrite.connectors.postgresql import logical

    it = make_items(make_backend, tmp_path, "postgresql", "postgresql", "logical")
    with Link.open(it.config) as link:
        link.start_maps()
        [row] = link.status()
        assert row["note"] is None or "WAL behind" not in row["note"]
        it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'a', 1)")
        monkeypatch.setattr(logical, "SLOT_BEHIND_WARN", 0)  # any WAL held back counts
        [row] = link.status()
        assert "erp: replication slot" in row["note"] and "WAL behind" in row["note"]
        assert "dualwrite uninstall" in row["note"]
        log = link.connectors[Side.LEFT].change_log()
        assert isinstance(log, LogicalCaptureLog)
        spec = CaptureSpec("items", "items", ("id",), ("id", "name", "qty"))
        assert any("WAL behind" in p for p in log.check(spec))


def test_validate_warns_about_the_slot_only_once_there_is_one(
        make_backend: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the first `maps start` there is no slot yet, and `validate` says nothing of
    it; once there is one holding back WAL, `validate` warns (DW138, not an error)."""
    from dualwrite.connectors.postgresql import logical

    it = make_items(make_backend, tmp_path, "postgresql", "postgresql", "logical")
    monkeypatch.setattr(logical, "SLOT_BEHIND_WARN", 0)  # any WAL held back counts
    with Link.open(it.config) as link:
        _bound, issues = link.validate()
        assert [i for i in issues if i.code in ("DW137", "DW138")] == []
        link.start_maps()
        it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'a', 1)")
        link.forget_validation()  # validate again, as a new process would
        _bound, issues = link.validate()
        [warning] = [i for i in issues if i.code == "DW138" and "'erp'" in i.message]
        assert "WAL behind" in warning.message and not warning.is_error
