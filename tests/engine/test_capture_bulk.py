"""Large source transactions take the set-based path: the log's JSON text goes to the target as
it is and the target converts it (PostgreSQL: ``json_to_recordset``; MariaDB: ``JSON_TABLE``).
These tests check that path is taken, from PostgreSQL into either database, and writes exactly
what the row-by-row path would: every kind of value (a zone offset put in UTC on MariaDB),
NULLs, a guarded update meeting rows that moved on, an optimistic insert meeting rows already
there, special values MariaDB cannot hold left to the row path, which parks them."""

from __future__ import annotations

import datetime as dt
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from capture_fixtures import drain, fresh_tables, link_config
from dualwrite.connectors.capture import CaptureLog
from dualwrite.connectors.mariadb import MySqlConnector
from dualwrite.connectors.postgresql import PostgresConnector
from dualwrite.connectors.sql import SqlWriteSession
from dualwrite.engine.capture import Applier
from dualwrite.engine.link import Link
from dualwrite.errors import TransientConnectorError
from dualwrite.model.maps import Side
from dualwrite.model.values import canonical

from conftest import Backend, BackendFactory

MAP = """
name: things
left: things
right: things
key: {left: [id], right: [id]}
fields:
  - id = id
  - label = label
  - qty = qty
  - price = price
  - ok = ok
  - seen = seen
  - day = day
  - at = at
"""
COLUMNS = ["id", "label", "qty", "price", "ok", "seen", "day", "at"]
#: MariaDB has no boolean type (BOOL is a TINYINT, an integer there): a flag is no plain copy
#: between the two, and would keep the whole map on the row path; it is left out, and out of
#: the columns compared (CHECKED)
MAP_MARIADB = MAP.replace("  - ok = ok\n", "")
CHECKED = COLUMNS
N = 300  # above the set-based threshold, several hundred rows in one source transaction


def _metadata() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("things", md,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("label", sa.String(60), nullable=False),
             sa.Column("qty", sa.Integer),
             sa.Column("price", sa.Numeric(12, 2)),
             sa.Column("ok", sa.Boolean),
             # MariaDB: DATETIME(6), or it keeps whole seconds only
             sa.Column("seen", sa.DateTime(timezone=True).with_variant(
                 mysql.DATETIME(fsp=6), "mysql", "mariadb")),
             sa.Column("day", sa.Date),
             sa.Column("at", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql",
                                                          "mariadb")))
    return md


def _row(i: int, version: int) -> dict[str, Any]:
    """Every kind, NULLs on every fifth row, text that JSON must escape; every seventh row's
    timestamps in 1900 (Amsterdam's offset was +00:19:32 then: seconds in the offset)."""
    empty = i % 5 == 0
    year = 1900 if i % 7 == 0 else 2026
    return {
        "id": i, "label": f"Ünïcode \"{i}\" \\ {version} ☃",
        "qty": None if empty else i * 10 + version,
        "price": None if empty else Decimal(i) / 4 + version,
        "ok": None if empty else (i + version) % 2 == 0,
        "seen": None if empty else dt.datetime(year, 11, 25, 12, 0, 0, 123456 + i,
                                               tzinfo=dt.UTC) + dt.timedelta(hours=version),
        "day": None if empty else dt.date(2026, 1, 1) + dt.timedelta(days=i + version),
        "at": None if empty else dt.datetime(year, 3, 1, 23, 59, 59, i) +
        dt.timedelta(minutes=version),
    }


class Spy:
    """Records what the set-based statements were given and what they wrote, into either
    database (a statement that fails is retried on the careful path: only ``inserted`` /
    ``updated`` show that it worked)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.update_tried: list[int] = []
        self.updated: list[int] = []
        self.insert_tried: list[int] = []
        self.inserted: list[int] = []
        for cls in (PostgresConnector, MySqlConnector):
            self._watch(monkeypatch, cls)

    def _watch(self, monkeypatch: pytest.MonkeyPatch, cls: Any) -> None:
        update, insert = cls._json_update_if, cls._json_insert

        # (connector, conn, table, key, columns, key_sources, sources, new, old)
        def spy_update(connector: Any, *args: Any) -> Any:
            done = update(connector, *args)
            if done is not None:  # None: too few rows for the set-based statement
                self.update_tried.append(len(args[6]))
                self.updated.append(len(done))
            return done

        # (connector, conn, table, columns, sources, rows)
        def spy_insert(connector: Any, *args: Any) -> Any:
            self.insert_tried.append(len(args[4]))
            done = insert(connector, *args)
            assert done is not None, "the set-based insert declined"
            self.inserted.append(len(done))
            return done

        monkeypatch.setattr(cls, "_json_update_if", spy_update)
        monkeypatch.setattr(cls, "_json_insert", spy_insert)


@dataclass
class Started:
    left: Backend
    right: Backend
    link: Link
    applier: Applier
    spy: Spy


@contextmanager
def _started(make_backend: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             right_kind: str, map_text: str) -> Iterator[Started]:
    left = make_backend("postgresql", "dualwrite_test_a")
    right = make_backend(right_kind, "dualwrite_test_b")
    fresh_tables(_metadata(), left, right)
    config = link_config(tmp_path, left, right, {"things": map_text})
    spy = Spy(monkeypatch)
    with Link.open(config) as link:
        link.start_maps()
        applier = link.applier()
        _app_write(left, INSERT, [_row(i, 0) for i in range(1, N + 1)])
        drain(applier)
        yield Started(left, right, link, applier, spy)


@pytest.fixture(params=["postgresql", "mariadb"])
def started(make_backend: BackendFactory, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
            ) -> Iterator[Started]:
    """The map started between a PostgreSQL database (left) and a PostgreSQL or MariaDB one
    (right), rows 1..N inserted on the left and applied."""
    text = MAP if request.param == "postgresql" else MAP_MARIADB
    if request.param == "mariadb":
        monkeypatch.setattr(sys.modules[__name__], "CHECKED",
                            [c for c in COLUMNS if c != "ok"])
    with _started(make_backend, tmp_path, monkeypatch, request.param, text) as it:
        yield it


def _rows(b: Backend) -> dict[int, tuple[Any, ...]]:
    """Every row by key, its values as :func:`canonical` compares them (a DATETIME as UTC,
    a decimal by value, a boolean as 0/1): how the two databases' rows are told apart."""
    return {int(r["id"]): tuple(canonical(r[c]) for c in CHECKED)
            for r in b.rows("things", ["id"], CHECKED)}


def _expected(i: int, version: int) -> tuple[Any, ...]:
    return tuple(canonical(_row(i, version)[c]) for c in CHECKED)


def _app_write(b: Backend, statement: str, rows: list[dict[str, Any]]) -> None:
    """One application transaction (captured); on PostgreSQL in a session whose time zone
    is Amsterdam, so that the log's timestamptz text carries an offset other than zero."""
    with b.app().begin() as conn:
        if b.kind == "postgresql":
            conn.execute(sa.text("SET LOCAL TIME ZONE 'Europe/Amsterdam'"))
        conn.execute(sa.text(statement), rows)


INSERT = ("INSERT INTO things (id, label, qty, price, ok, seen, day, at) "
          "VALUES (:id, :label, :qty, :price, :ok, :seen, :day, :at)")
UPDATE = ("UPDATE things SET label = :label, qty = :qty, price = :price, ok = :ok, "
          "seen = :seen, day = :day, at = :at WHERE id = :id")


def test_large_transactions_go_set_based_and_write_every_kind_exactly(started: Started
                                                                      ) -> None:
    it = started
    assert it.spy.inserted == [N]  # the whole transaction, in one set-based statement
    assert _rows(it.right) == _rows(it.left)
    assert _rows(it.right)[7] == _expected(7, 0)

    _app_write(it.right, UPDATE, [_row(i, 1) for i in range(1, N + 1)])  # the other way
    drain(it.applier)
    assert it.spy.updated == [N]
    assert _rows(it.left) == _rows(it.right)
    assert _rows(it.left)[8] == _expected(8, 1)


def test_rows_that_moved_on_and_rows_already_there_take_the_careful_path(started: Started
                                                                         ) -> None:
    it = started
    # dualwrite's own connection: not captured, so the right side simply holds other values
    # for rows 1-10 now (neither the old nor the new version of what comes)
    it.right.connector.execute("UPDATE things SET qty = -1 WHERE id <= 10")
    _app_write(it.left, UPDATE, [_row(i, 2) for i in range(1, N + 1)])
    drain(it.applier)
    assert it.spy.update_tried == [N]  # set-based first: all but the ten that moved on ...
    assert it.spy.updated == [N - 10]
    assert _rows(it.right) == _rows(it.left)  # ... which the careful path then overwrote
    assert it.link.state.conflicts() == []  # the right side queued nothing: no conflict

    # rows the right side already has (uncaptured): the optimistic insert meets them, the
    # batch is redone comparing with each, and both sides end the same
    it.right.connector.execute(
        "INSERT INTO things (id, label) SELECT g, 'already here' "
        f"FROM generate_series({N + 1}, {N + 20}) g" if it.right.kind == "postgresql" else
        f"INSERT INTO things (id, label) SELECT seq, 'already here' FROM seq_{N + 1}_to_{N + 20}")
    _app_write(it.left, INSERT, [_row(i, 0) for i in range(N + 1, 2 * N + 1)])
    drain(it.applier)
    assert it.spy.insert_tried[-1] == N
    assert len(it.spy.inserted) == len(it.spy.insert_tried) - 1  # that attempt failed
    assert _rows(it.right) == _rows(it.left)
    assert len(_rows(it.right)) == 2 * N
    assert it.link.state.errors() == []


def test_a_large_run_meets_changes_the_target_queued_itself(started: Started) -> None:
    """The target's log holds changes of its own for five of the run's keys (captured, not
    yet applied): those five are conflicts settled by the policy (left-wins), the rest go
    set-based. The set-based statement leaves the five (they moved on); the careful path
    locks them, then finds the target's queued changes. Before commit, the rows written
    set-based are looked at: the target's log holds something for the map (the probe), so
    their keys are looked up, and none of them is queued there (no second attempt)."""
    it = started
    _app_write(it.right, UPDATE, [_row(i, 7) for i in range(1, 6)])  # queued on the right
    _app_write(it.left, UPDATE, [_row(i, 3) for i in range(1, N + 1)])
    drain(it.applier)
    assert it.spy.update_tried == [N]
    assert it.spy.updated == [N - 5]
    assert sorted(c["key"] for c in it.link.state.conflicts()) == [[i] for i in range(1, 6)]
    assert all(c["winner"] == "left" for c in it.link.state.conflicts())
    assert _rows(it.left) == _rows(it.right)
    assert _rows(it.right)[3] == _expected(3, 3)  # the left won


def test_a_change_the_target_commits_just_before_the_set_based_write_is_a_conflict(
        started: Started, monkeypatch: pytest.MonkeyPatch) -> None:
    """The target commits a change of its own to row 3 right before the set-based statement
    runs: the guarded update leaves row 3 (it moved on), and the careful path, having locked
    it, finds that change in the target's queue and settles a conflict (left-wins), instead of
    overwriting it and letting it flow back later. Both sides end the same."""
    it = started
    real = SqlWriteSession.update_if_json
    raced: list[bool] = []

    def race_then_update(sess: SqlWriteSession, *args: Any, **kw: Any) -> Any:
        if not raced:  # once: an application write on the target, committed meanwhile
            raced.append(True)
            _app_write(it.right, UPDATE, [_row(3, 9)])
        return real(sess, *args, **kw)

    monkeypatch.setattr(SqlWriteSession, "update_if_json", race_then_update)
    _app_write(it.left, UPDATE, [_row(i, 4) for i in range(1, N + 1)])
    drain(it.applier)
    assert raced
    assert it.spy.updated[0] == N - 1  # row 3 had moved on
    [c] = [c for c in it.link.state.conflicts() if c["key"] == [3]]
    assert c["winner"] == "left"
    assert _rows(it.left) == _rows(it.right)
    assert _rows(it.right)[3] == _expected(3, 4)


def test_a_change_the_target_committed_with_the_old_values_is_still_a_conflict(
        started: Started, monkeypatch: pytest.MonkeyPatch) -> None:
    """Row 5 on the target is changed and changed back by the application, committed right
    before the set-based statement: the guard finds the old version and writes it, but the
    look at the target's queue before commit finds the target's own changes, and the batch is
    applied again carefully: a conflict (left-wins), not an overwrite in silence."""
    it = started
    real = SqlWriteSession.update_if_json
    raced: list[bool] = []

    def race_then_update(sess: SqlWriteSession, *args: Any, **kw: Any) -> Any:
        if not raced:
            raced.append(True)
            _app_write(it.right, UPDATE, [_row(5, 9)])
            _app_write(it.right, UPDATE, [_row(5, 0)])  # back to the synced version
        return real(sess, *args, **kw)

    monkeypatch.setattr(SqlWriteSession, "update_if_json", race_then_update)
    _app_write(it.left, UPDATE, [_row(i, 4) for i in range(1, N + 1)])
    drain(it.applier)
    assert raced
    assert it.spy.updated[0] == N  # the guard let every row through ...
    [c] = [c for c in it.link.state.conflicts() if c["key"] == [5]]  # ... and yet
    assert c["winner"] == "left"
    assert _rows(it.left) == _rows(it.right)
    assert _rows(it.right)[5] == _expected(5, 4)


class RestSpy:
    """Records each log read that handed back a rest still being read; optionally makes the
    first such background read fail as a lost connection would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, fail_once: bool = False) -> None:
        self.split: list[int] = []
        self.failed = 0
        real_start, real_rows = CaptureLog.read_start, CaptureLog._rows

        def read_start(log: CaptureLog, maps: Any, limit: int) -> Any:
            first, rest = real_start(log, maps, limit)
            if rest is not None:
                self.split.append(len(first))
            return first, rest

        def rows(log: CaptureLog, conn: Any, text: str, params: Any) -> Any:
            if fail_once and not self.failed and \
                    threading.current_thread().name == "dualwrite-log-read":
                self.failed += 1
                raise TransientConnectorError("connection lost (injected)",
                                              environment="erp")
            return real_rows(log, conn, text, params)

        monkeypatch.setattr(CaptureLog, "read_start", read_start)
        monkeypatch.setattr(CaptureLog, "_rows", rows)


def test_a_transaction_larger_than_a_read_is_applied_while_its_rest_is_read(
        started: Started, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads of 100 changes: the 300-row transaction's first 100 are applied (one set-based
    statement) while the other 200 are read on another connection; then those. One target
    transaction, every change once."""
    it = started
    spy = RestSpy(monkeypatch)
    applier = it.link.applier(batch=100)
    _app_write(it.left, UPDATE, [_row(i, 5) for i in range(1, N + 1)])
    assert applier.step() == N  # exactly the transaction: the rest counted once
    assert spy.split == [100]
    assert it.spy.updated == [100, 100, 100]
    assert _rows(it.right) == _rows(it.left)
    assert _rows(it.right)[N] == _expected(N, 5)
    assert applier.step() == 0  # all of it forgotten from the log


def test_a_rest_that_cannot_be_read_rolls_the_whole_transaction_back(
        started: Started, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rest's read fails (a lost connection) after the first part was written in the
    target transaction: that transaction rolls back, the changes stay queued, and the retry
    applies all of them, once."""
    it = started
    spy = RestSpy(monkeypatch, fail_once=True)
    applier = it.link.applier(batch=100)
    before = _rows(it.right)
    _app_write(it.left, UPDATE, [_row(i, 6) for i in range(1, N + 1)])
    assert applier.step() == 0  # the source's error: backing off
    assert spy.failed == 1 and it.spy.updated == [100]  # the first part had been written...
    assert _rows(it.right) == before  # ... and rolled back
    assert applier.last_error[Side.LEFT] is not None
    deadline = time.monotonic() + 30
    handled = 0
    while handled == 0:  # the retry, once the backoff has passed
        assert time.monotonic() < deadline, "the queued transaction was not retried"
        handled = applier.step()
    assert handled == N
    assert _rows(it.right) == _rows(it.left)
    assert _rows(it.right)[1] == _expected(1, 6)


def test_large_transactions_from_mariadb_go_set_based_into_postgresql(
        make_backend: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MariaDB's log holds JSON_OBJECT text: numbers as numbers, DATETIME and DATE as ISO text
    without a zone. PostgreSQL reads it with json_to_recordset exactly as the row-by-row path
    would write it (the boolean column is left out of the map: MariaDB's BOOL is an integer
    there, so that field is not a plain copy and would keep the whole map on the Python
    path)."""
    monkeypatch.setattr(sys.modules[__name__], "CHECKED", [c for c in COLUMNS if c != "ok"])
    with _started(make_backend, tmp_path, monkeypatch, "mariadb", MAP_MARIADB) as it:
        assert it.spy.inserted == [N]  # PostgreSQL -> MariaDB: JSON_TABLE
        _app_write(it.right, UPDATE, [_row(i, 1) for i in range(1, N + 1)])
        drain(it.applier)
        assert it.spy.updated == [N]
        _app_write(it.right, INSERT, [_row(i, 2) for i in range(N + 1, 2 * N + 1)])
        drain(it.applier)
        assert it.spy.inserted == [N, N]
        assert all(v.ok for v in it.link.verify())
        left, right = _rows(it.left), _rows(it.right)
        assert len(left) == 2 * N
        for i in (5, 7, 8, N + 3):  # every value as MariaDB holds it
            assert left[i] == right[i] == _expected(i, 1 if i <= N else 2)
        assert left[5][2] is None and left[8][1] == _row(8, 1)["label"]


def test_mariadb_history_is_purged_off_the_apply_loop(
        make_backend: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deleting applied changes from MariaDB's system-versioned log leaves history rows; the
    applier's housekeeping hands their purge to a thread of its own, which empties the history
    within a second or two, and stops with the applier."""
    text = MAP.replace("  - ok = ok\n", "")
    with _started(make_backend, tmp_path, monkeypatch, "mariadb", text) as it:
        _app_write(it.right, UPDATE, [_row(i, 1) for i in range(1, N + 1)])
        drain(it.applier)

        def history() -> int:
            return int(it.right.sql("SELECT COUNT(*) FROM dualwrite_changes "
                                    "FOR SYSTEM_TIME ALL")[0][0])

        assert history() >= N  # the applied transaction, deleted, kept as history
        it.applier.housekeeping()  # returns at once: the purge is not done inline
        assert it.applier._purger is not None and it.applier._purger.is_alive()
        deadline = time.monotonic() + 15
        while history() > 0:
            assert time.monotonic() < deadline, f"{history()} history rows left after 15 s"
            time.sleep(0.05)
        purger = it.applier._purger
        it.applier.close()
        assert not purger.is_alive()


def test_postgresql_logs_are_vacuumed_off_the_apply_loop(
        make_backend: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deleting applied changes (and pruning applied positions) leaves dead row versions that
    every later read of the log steps over until a vacuum, and autovacuum comes about once a
    minute: the applier's purger vacuums the source's log and the target's positions within
    a second or two of a transaction applied, and stops with the applier. A quiet applier
    that deleted nothing since does not vacuum again."""

    def vacuums(b: Backend) -> dict[str, int]:
        # vacuum_count counts VACUUM commands (autovacuum has a counter of its own)
        return {str(r[0]): int(r[1]) for r in b.sql(
            "SELECT relname, vacuum_count FROM pg_stat_user_tables WHERE relname IN "
            "('dualwrite_changes', 'dualwrite_applied', 'dualwrite_wake')")}

    with _started(make_backend, tmp_path, monkeypatch, "postgresql", MAP) as it:
        before = {"left": vacuums(it.left), "right": vacuums(it.right)}
        _app_write(it.left, UPDATE, [_row(i, 1) for i in range(1, N + 1)])
        drain(it.applier)
        assert it.left.sql("SELECT COUNT(*) FROM dualwrite_changes")[0][0] == 0
        it.applier.housekeeping()  # returns at once: the vacuum is not done inline
        purger = it.applier._purger
        assert purger is not None and purger.is_alive()

        def done() -> bool:
            # every table of both sides: one VACUUM statement a side, its tables counted
            # one after the other
            now = {"left": vacuums(it.left), "right": vacuums(it.right)}
            return all(now[side].get(t, 0) > before[side].get(t, 0) for side in now
                       for t in ("dualwrite_changes", "dualwrite_applied", "dualwrite_wake"))

        deadline = time.monotonic() + 15
        while not done():
            assert time.monotonic() < deadline, (
                f"not vacuumed within 15 s: before {before}, now "
                f"{ {'left': vacuums(it.left), 'right': vacuums(it.right)} }")
            time.sleep(0.05)
        # nothing deleted since: the next rounds leave the tables alone
        settled = {"left": vacuums(it.left), "right": vacuums(it.right)}
        assert not it.applier.logs[Side.LEFT]._forgotten
        assert not it.applier.logs[Side.RIGHT]._forgotten
        it.applier.close()
        assert not purger.is_alive()
        assert {"left": vacuums(it.left), "right": vacuums(it.right)} == settled


def _special_rows(version: int) -> list[dict[str, Any]]:
    """Rows 1..N of ``version``, three of them holding a value MariaDB cannot hold."""
    rows = [_row(i, version) for i in range(1, N + 1)]
    rows[1]["price"] = Decimal("NaN")
    rows[2]["day"] = "infinity"
    rows[3]["seen"] = "-infinity"
    return rows


def _special_run(make_backend: BackendFactory, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch, set_based: bool) -> tuple[Any, ...]:
    """Updates of rows 1..N, then inserts of rows N+1..2N, each one PostgreSQL transaction
    holding three values MariaDB cannot hold: what the right side and the inbox hold after,
    and what the set-based statements wrote on their first attempt."""
    with monkeypatch.context() as mp:
        if not set_based:
            mp.setattr(Applier, "_json_plan", lambda self, m, s: None)
        with _started(make_backend, tmp_path, mp, "mariadb", MAP_MARIADB) as it:
            _app_write(it.left, UPDATE, _special_rows(1))
            drain(it.applier)
            more = _special_rows(2)
            for r in more:
                r["id"] += N
            _app_write(it.left, INSERT, more)
            drain(it.applier)
            inbox = sorted((tuple(e.key), e.operation, e.reason)
                           for e in it.link.state.errors(status=None))
            return (_rows(it.right), inbox, it.link.state.parked_count(),
                    list(it.spy.inserted), list(it.spy.updated))


def test_values_mariadb_cannot_hold_are_left_to_the_row_path_which_parks_them(
        make_backend: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """PostgreSQL's NaN and ±infinity have no MariaDB value. The set-based statements leave
    those rows out (their text is of no plain shape: not written) and the row path takes
    them, and parks them with its own error (with the rest of their source transaction,
    as it does): the same rows and the same inbox as the row path alone leaves."""
    monkeypatch.setattr(sys.modules[__name__], "CHECKED", [c for c in COLUMNS if c != "ok"])
    fast = _special_run(make_backend, tmp_path / "fast", monkeypatch, True)
    rows = _special_run(make_backend, tmp_path / "rows", monkeypatch, False)
    right_fast, inbox_fast, parked_fast, inserted, updated = fast
    right_rows, inbox_rows, parked_rows, inserted_rows, updated_rows = rows
    # set-based: every row but the three, on the first attempt of each transaction
    assert inserted[:2] == [N, N - 3] and updated[:1] == [N - 3]
    assert inserted_rows == updated_rows == []  # the row path alone, from the start
    assert right_fast == right_rows
    assert inbox_fast == inbox_rows
    assert parked_fast == parked_rows
    reasons = " | ".join(r for _k, _o, r in inbox_fast)
    assert "NaN cannot be held" in reasons, reasons
    assert right_fast[1] == _expected(1, 0)  # the failed transaction left nothing behind


CODED = """
name: coded
left: coded
right: coded
key: {left: [code], right: [code]}
fields:
  - code = code
  - label = label
"""


@pytest.mark.parametrize("set_based", [True, False])
def test_text_keys_go_set_based_into_mariadb_and_match_byte_for_byte(
        make_backend: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        set_based: bool) -> None:
    """A text key: the statements find the target row by the key column's index, then compare
    byte for byte. MariaDB's key column is case-insensitive (utf8mb4_general_ci): the row the
    right side holds under 'KEY-7' (renamed there directly, uncaptured) is not the twin of the
    left's 'key-7', so the set-based update leaves it, and the row path decides that change
    as it does alone: the same rows and the same inbox either way."""
    md = sa.MetaData()
    sa.Table("coded", md, sa.Column("code", sa.String(20), primary_key=True),
             sa.Column("label", sa.String(60)))
    left = make_backend("postgresql", "dualwrite_test_a")
    right = make_backend("mariadb", "dualwrite_test_b")
    fresh_tables(md, left, right)
    right.sql("ALTER TABLE coded MODIFY code varchar(20) CHARACTER SET utf8mb4 "
              "COLLATE utf8mb4_general_ci NOT NULL")
    config = link_config(tmp_path, left, right, {"coded": CODED})
    spy = Spy(monkeypatch)
    if not set_based:
        monkeypatch.setattr(Applier, "_json_plan", lambda self, m, s: None)
    codes = [f"key-{i} ☃ \"q\" \\" for i in range(N)] + ["key-7"]
    with Link.open(config) as link:
        link.start_maps()
        applier = link.applier()
        with left.app().begin() as conn:
            conn.execute(sa.text("INSERT INTO coded (code, label) VALUES (:c, :l)"),
                         [{"c": c, "l": f"v0 {c}"} for c in codes])
        drain(applier)
        got = {r["code"]: r["label"] for r in right.rows("coded", ["code"], ["code", "label"])}
        assert got == {c: f"v0 {c}" for c in codes}
        right.connector.execute("UPDATE coded SET code = 'KEY-7' WHERE code = 'key-7'")
        with left.app().begin() as conn:  # one transaction of N + 1 updates
            conn.execute(sa.text("UPDATE coded SET label = 'v1 ' || code"))
        drain(applier)
        if set_based:
            assert spy.inserted == [N + 1]
            assert spy.update_tried[0] == N + 1 and spy.updated[0] == N  # not 'KEY-7'
        else:
            assert spy.inserted == spy.update_tried == []
        got = {r["code"]: r["label"] for r in right.rows("coded", ["code"], ["code", "label"])}
        # the change of 'key-7' has no twin to update: parked, with its whole source
        # transaction (the rest of it waits behind it), nothing of it written
        assert got["KEY-7"] == "v0 key-7" and "key-7" not in got
        assert all(got[c] == f"v0 {c}" for c in codes[:-1])
        assert [tuple(e.key) for e in link.state.errors("coded")] == [("key-7",)]
        assert link.state.parked_count() == {"coded": N + 1}
