"""Capture never breaks the application, end to end: a mapped column renamed or dropped fails
that map (with the reason, as an event) while the other maps keep flowing; an application's own
two-phase commit (PREPARE TRANSACTION, XA) is captured and applied once committed; keys with a
collation work in every statement (initial sync, live sync, capture both ways)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from capture_fixtures import ITEMS_MAP, drain, link_config
from capture_values import app_exec, fresh, ident
from dualwrite.engine.capture import capture_specs
from dualwrite.engine.link import Link
from dualwrite.engine.state import events
from dualwrite.model.maps import Side
from dualwrite.testing.backends import only

from conftest import Backend, BackendFactory

ITEMS = ITEMS_MAP.format(policy="left-wins")
OTHERS = """
name: others
left: others
right: others
key: {left: [id], right: [id]}
fields:
  - id = id
  - label = label
"""


def _pair(make_backend: BackendFactory, kinds: tuple[str, str]) -> tuple[Backend, Backend]:
    left = make_backend(kinds[0], "dualwrite_test_a")
    right = make_backend(kinds[1], "dualwrite_test_b" if kinds[0] == kinds[1]
                         else "dualwrite_test_a")
    for b in (left, right):
        b.connector.clear_link()
    return left, right


def _items_and_others(make_backend: BackendFactory, tmp_path: Path, kinds: tuple[str, str]
                      ) -> tuple[Backend, Backend, Path]:
    left, right = _pair(make_backend, kinds)
    for b in (left, right):
        fresh(b, ["items", "others"], [
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(40), qty INTEGER, "
            "note VARCHAR(10))",
            "CREATE TABLE others (id INTEGER PRIMARY KEY, label VARCHAR(40))"])

    def alert(cfg: dict[str, Any]) -> None:
        cfg["alerts"] = [{"kind": "capture_broken", "count": 1, "within_minutes": 10,
                          "action": "log"}]

    return left, right, link_config(tmp_path, left, right, {"items": ITEMS, "others": OTHERS},
                                    extra=alert)


def _rows(b: Backend, table: str) -> dict[int, tuple[Any, ...]]:
    return {int(r[0]): tuple(r[1:]) for r in b.sql(f"SELECT * FROM {table} ORDER BY id")}


def _events(link: Link, kind: str) -> list[tuple[str, str]]:
    with link.state.engine.connect() as conn:
        return [(str(r.map), str(r.message)) for r in conn.execute(
            sa.select(events).where(events.c.kind == kind).order_by(events.c.at))]


@pytest.mark.parametrize("change", ["rename", "drop"])
@pytest.mark.parametrize("source", only("postgresql", "mariadb", why="each one's own DDL"))
def test_a_map_whose_column_is_gone_fails_and_the_other_maps_flow(
        make_backend: BackendFactory, tmp_path: Path, source: str, change: str) -> None:
    """The application renames or drops a mapped column on the source side (PostgreSQL on
    the left, MariaDB on the right), then writes both tables in one transaction: the writes
    succeed; the applier marks the map failed with the reason (a capture_broken event) and
    applies the other map's changes, then and after."""
    kinds = ("postgresql", "postgresql") if source == "postgresql" else ("postgresql", "mariadb")
    left, right, config = _items_and_others(make_backend, tmp_path, kinds)
    src, dst = (left, right) if source == "postgresql" else (right, left)
    with Link.open(config) as link:
        link.start_maps()
        applier = link.applier()
        side = Side.LEFT if source == "postgresql" else Side.RIGHT
        # what capture records for the map on the side that changes (it stops binding there)
        spec = capture_specs(link.bound_maps(["items"])[0])[side]
        app_exec(src, "INSERT INTO items VALUES (1, 'a', 1, NULL)",
                 "INSERT INTO others VALUES (1, 'one')")
        drain(applier)
        assert _rows(dst, "items") == {1: ("a", 1, None)}
        if change == "rename":
            app_exec(src, "ALTER TABLE items CHANGE qty quantity INT" if source == "mariadb"
                     else "ALTER TABLE items RENAME COLUMN qty TO quantity")
        else:
            app_exec(src, "ALTER TABLE items DROP COLUMN qty")
        app_exec(src, "INSERT INTO items (id, name) VALUES (2, 'b')",
                 "UPDATE items SET name = 'renamed' WHERE id = 1",
                 "INSERT INTO others VALUES (2, 'two')")
        drain(applier)
        states = {m: st["state"] for m, st in link.state.map_states().items()}
        assert states == {"items": "failed", "others": "running"}
        [(name, reason)] = _events(link, "capture_broken")
        assert name == "items" and "qty" in reason and "'items'" in reason
        [fired] = link.state.alerts()
        assert fired["map"] == "items" and reason in fired["message"]
        assert _rows(dst, "items") == {1: ("a", 1, None)}  # nothing of the broken map
        assert _rows(dst, "others") == {1: ("one",), 2: ("two",)}
        app_exec(src, "INSERT INTO others VALUES (3, 'three')",
                 "UPDATE items SET name = 'later' WHERE id = 2")
        drain(applier)
        assert _rows(dst, "others")[3] == ("three",)
        status = {r["map"]: r["state"] for r in link.status()}
        assert status == {"items": "failed", "others": "running"}
        # what check() says of the broken map's capture on the side that changed
        assert link.connectors[side].change_log().check(spec) == [
            "map 'items', table 'items': column(s) 'qty' gone from the table (renamed or "
            "dropped)"]
        # recovery, as docs/capture.md says: the column back, the map stopped and started
        # (its initial sync runs again), and capture flows again
        if change == "rename":
            app_exec(src, "ALTER TABLE items CHANGE quantity qty INT" if source == "mariadb"
                     else "ALTER TABLE items RENAME COLUMN quantity TO qty")
        else:
            app_exec(src, "ALTER TABLE items ADD COLUMN qty INTEGER")
        link.stop_maps(["items"])
        link.start_maps(["items"])
        assert link.connectors[side].change_log().check(spec) == []
        app_exec(src, "UPDATE items SET qty = 9 WHERE id = 2")
        drain(link.applier())
        assert _rows(dst, "items")[2][1] == 9
        assert all(v.ok for v in link.verify())


@pytest.mark.parametrize("kinds", [("postgresql", "postgresql"), ("postgresql", "mariadb")],
                         ids="-".join)
def test_application_two_phase_commit_is_captured_and_applied(
        make_backend: BackendFactory, tmp_path: Path, kinds: tuple[str, str]) -> None:
    """The application commits its own distributed transaction on the source: PostgreSQL's
    PREPARE TRANSACTION / COMMIT PREPARED (left), MariaDB's XA (right). The PREPARE
    succeeds; nothing is applied while the branch is prepared; once committed, a running
    applier finds the changes (by polling: a prepared transaction does not notify) and applies
    them, once."""
    left, right, config = _items_and_others(make_backend, tmp_path, kinds)
    src, dst = (left, right) if kinds[1] == "postgresql" else (right, left)
    gid = f"dwtest-e2e-{uuid.uuid4().hex[:12]}"  # server-wide: unique per run
    with Link.open(config) as link:
        link.start_maps()
        stop = threading.Event()
        applier = link.applier()
        passes = _count_passes(applier, Side.LEFT if src is left else Side.RIGHT)
        runner = threading.Thread(target=applier.run, args=(stop,), daemon=True)
        runner.start()
        try:
            if src.kind == "postgresql":
                dsn = src.url.replace("postgresql+psycopg://", "postgresql://")
                with psycopg.connect(dsn, autocommit=True) as app:
                    app.execute("BEGIN")
                    app.execute("INSERT INTO items VALUES (1, 'prepared', 1, NULL)")
                    app.execute("INSERT INTO others VALUES (1, 'prepared')")
                    app.execute(f"PREPARE TRANSACTION '{gid}'")
                    try:
                        seen = len(passes)
                        _wait_until(lambda: len(passes) >= seen + 3)  # it looked, thrice
                        assert _rows(dst, "items") == {}
                    finally:
                        app.execute(f"COMMIT PREPARED '{gid}'")
            else:
                with src.app().connect() as conn:
                    raw: Any = conn.connection.driver_connection
                    raw.autocommit(True)
                    with raw.cursor() as cur:
                        cur.execute(f"XA START '{gid}'")
                        try:
                            cur.execute("INSERT INTO items VALUES (1, 'prepared', 1, NULL)")
                            cur.execute("INSERT INTO others VALUES (1, 'prepared')")
                            cur.execute(f"XA END '{gid}'")
                            cur.execute(f"XA PREPARE '{gid}'")
                            seen = len(passes)
                            _wait_until(lambda: len(passes) >= seen + 3)
                            assert _rows(dst, "items") == {}
                        finally:
                            cur.execute(f"XA COMMIT '{gid}'")
            _wait_until(lambda: _rows(dst, "others") == {1: ("prepared",)})
            assert _rows(dst, "items") == {1: ("prepared", 1, None)}
        finally:
            stop.set()
            runner.join(timeout=30)
            applier.close()
        assert not runner.is_alive()
        assert link.state.errors() == []


def _count_passes(applier: Any, side: Side) -> list[int]:
    """A list that grows by one each time ``applier`` looks at ``side``'s log (a pass; a
    wake-up may read only the other side's)."""
    passes: list[int] = []
    step = applier.step

    def counted(sides: set[Side] | None = None) -> int:
        n = int(step(sides))
        if sides is None or side in sides:
            passes.append(n)
        return n

    applier.step = counted
    return passes


def _wait_until(condition: Any, seconds: float = 30) -> None:
    """Wait for ``condition()`` (checked every 20 ms); fail the test after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.02)


CODED = """
name: coded
left: coded
right: coded
key: {left: [code], right: [code]}
conflict: left-wins
fields:
  - code = code
  - name = name
  - qty = qty
"""
COLLATIONS = [
    ("postgresql", 'COLLATE "C"', "postgresql", 'COLLATE "C"'),
    ("postgresql", 'COLLATE "C"', "mariadb", "CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"),
    ("postgresql", 'COLLATE "C"', "mariadb", "CHARACTER SET latin1 COLLATE latin1_swedish_ci"),
]


@pytest.mark.parametrize("lk,lcoll,rk,rcoll", COLLATIONS,
                         ids=["pg_C-pg_C", "pg_C-utf8mb4_general_ci", "pg_C-latin1_swedish_ci"])
def test_a_key_with_a_collation_works_in_every_statement(
        make_backend: BackendFactory, tmp_path: Path, lk: str, lcoll: str, rk: str,
        rcoll: str) -> None:
    """A text key with its own collation on each side (PostgreSQL's "C", as docs/operations.md
    recommends; MariaDB's case-insensitive ones): initial sync, live writes through
    link.transaction(), and captured changes both ways, in runs large enough for the bulk
    statements and with a conflict (which looks the target's queue up by key) all work, and
    verify agrees."""
    left, right = _pair(make_backend, (lk, rk))
    for b, coll in ((left, lcoll), (right, rcoll)):
        fresh(b, ["coded"], [f"CREATE TABLE coded (code VARCHAR(20) {coll} PRIMARY KEY, "
                             "name VARCHAR(40), qty INTEGER)"])
    left.insert("coded", [{"code": f"K-{i:03}-ñ", "name": f"n{i}", "qty": i}
                          for i in range(60)])
    config = link_config(tmp_path, left, right, {"coded": CODED})
    with Link.open(config) as link:
        link.start_maps()  # initial sync
        assert len(_rows_by(right, "coded")) == 60
        with link.transaction() as tx:
            tx.create("erp", "coded", {"code": "L-1", "name": "live", "qty": 1})
            tx.update("crm", "coded", {"code": "K-001-ñ"}, {"name": "live update"})
            tx.delete("erp", "coded", {"code": "K-002-ñ"})
        applier = link.applier()
        q = ident(left, "coded")
        # captured, both ways: a large run each way, and a row both sides change (a conflict,
        # settled left-wins, found by looking the target's queue up by key)
        app_exec(left, f"UPDATE {q} SET qty = qty + 100")
        app_exec(right, "UPDATE coded SET name = 'from right' WHERE code = 'K-005-ñ'",
                 "INSERT INTO coded VALUES ('R-1', 'right', 7)")
        app_exec(left, f"UPDATE {q} SET name = 'from left' WHERE code = 'K-005-ñ'")
        drain(applier)
        app_exec(right, "UPDATE coded SET qty = qty + 1000")
        drain(applier)
        assert [e.reason for e in link.state.errors()] == []
        lrows, rrows = _rows_by(left, "coded"), _rows_by(right, "coded")
        assert lrows == rrows
        assert lrows["K-005-ñ"] == ("from left", 1105) and lrows["R-1"] == ("right", 1007)
        assert lrows["K-001-ñ"] == ("live update", 1101) and "K-002-ñ" not in lrows
        assert [c["key"] for c in link.state.conflicts()] == [["K-005-ñ"]]
        assert all(v.ok for v in link.verify())


def _rows_by(b: Backend, table: str) -> dict[str, tuple[Any, ...]]:
    return {str(r[0]): tuple(r[1:]) for r in b.sql(f"SELECT code, name, qty FROM {table}")}
