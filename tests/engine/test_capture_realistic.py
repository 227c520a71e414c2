"""A realistic map (a lookup by natural key, an option-set value map, defaults, a one-way
field, a filter) through the set-based capture path and through the row path: both must
leave both sides byte for byte the same, and the same inbox.

The set-based path hands the log's JSON to the target database, which computes value maps
(a join with the map's pairs), defaults (literals) and lookups (a join with the related table
on the target; resolved on the source beforehand for a lookup there). A change whose value it
cannot compute (a lookup that finds nothing, a value the map lacks, a spelling of a mapped
value the map only matches ignoring case) is left to the row path, which applies it or parks
it with its own error: the results must not tell the two paths apart."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from capture_fixtures import drain, fresh_tables, link_config
from dualwrite.connectors.mariadb import MySqlConnector
from dualwrite.connectors.postgresql import PostgresConnector
from dualwrite.engine.capture import Applier
from dualwrite.engine.link import Link

from conftest import Backend, BackendFactory

MAP = """
name: customers
left: customers
right: accounts
key: {left: [id], right: [id]}
filter:
  left: "partytype eq 'Organization'"
fields:
  - id = id
  - name = name
  - grp = group_id.code: {lookup: {right: cust_groups}}
  - status >< statuscode:
      values: {Active: 1, OnHold: 2, Closed: 3}
  - credit = credit
  - lat > lat
  - none >> accounttype: {default: 3}
  - partytype << none: {default: Organization}
"""
LEFT_COLS = ["id", "name", "grp", "status", "credit", "lat", "partytype", "note"]
RIGHT_COLS = ["id", "name", "group_id", "statuscode", "credit", "lat", "accounttype"]
N = 60  # above the old set-based threshold (50): one run of many rows


def _metadata() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("customers", md,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("name", sa.String(60), nullable=False),
             sa.Column("grp", sa.String(10)),
             sa.Column("status", sa.String(10)),
             sa.Column("credit", sa.Numeric(12, 2)),
             sa.Column("lat", sa.Numeric(9, 6)),
             sa.Column("partytype", sa.String(20)),
             sa.Column("note", sa.String(40)))  # unmapped
    sa.Table("cust_groups", md,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("code", sa.String(10), nullable=False))
    sa.Table("accounts", md,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("name", sa.String(60), nullable=False),
             # no foreign key: the map names the related table, and an id without a group
             # can be written (a lookup on the source that does not resolve)
             sa.Column("group_id", sa.Integer),
             sa.Column("statuscode", sa.Integer),
             sa.Column("credit", sa.Numeric(12, 2)),
             sa.Column("lat", sa.Numeric(9, 6)),
             sa.Column("accounttype", sa.Integer))
    return md


def _customer(i: int, version: int) -> dict[str, Any]:
    """NULLs on every seventh row; statuses in the map's spelling, and in another one every
    eleventh row (the map matches it ignoring case: the set-based statement leaves it)."""
    empty = i % 7 == 0
    status = ["Active", "OnHold", "Closed"][(i + version) % 3]
    return {"id": i, "name": f"Customer {i} 'v{version}' \"quoted\" ünï",
            "grp": None if empty else ["G1", "G2"][(i + version) % 2],
            "status": None if empty else status.lower() if i % 11 == 0 else status,
            "credit": None if empty else Decimal(f"{i * 100 + version}.{i % 100:02d}"),
            "lat": None if empty else Decimal(f"{(i % 90)}.{version:06d}"),
            "partytype": "Organization", "note": f"n{version}"}


INSERT_LEFT = ("INSERT INTO customers (id, name, grp, status, credit, lat, partytype, note) "
               "VALUES (:id, :name, :grp, :status, :credit, :lat, :partytype, :note)")
UPDATE_LEFT = ("UPDATE customers SET name = :name, grp = :grp, status = :status, "
               "credit = :credit, lat = :lat, partytype = :partytype, note = :note "
               "WHERE id = :id")
UPDATE_RIGHT = ("UPDATE accounts SET name = :name, group_id = :group_id, "
                "statuscode = :statuscode, credit = :credit WHERE id = :id")


def _write(b: Backend, statement: str, rows: list[dict[str, Any]]) -> None:
    """One application transaction (captured)."""
    with b.app().begin() as conn:
        conn.execute(sa.text(statement), rows)


def _scenario(left: Backend, right: Backend, applier: Applier) -> None:
    """Application writes on both sides, each drained before the next (the same order of
    apply transactions on either path)."""
    steps: list[Callable[[], None]] = [
        # many rows in one transaction, then single-row transactions
        lambda: _write(left, INSERT_LEFT, [_customer(i, 0) for i in range(1, N + 1)]),
        lambda: _write(left, INSERT_LEFT, [_customer(N + 1, 0)]),
        lambda: _write(left, INSERT_LEFT, [_customer(N + 2, 0)]),
        # a group the right side does not have: the lookup does not resolve
        lambda: _write(left, INSERT_LEFT, [{**_customer(N + 3, 0), "grp": "G9"}]),
        # a status the value map lacks
        lambda: _write(left, INSERT_LEFT, [{**_customer(N + 4, 0), "status": "Gone"}]),
        # a person: outside the map's filter, in a transaction with an organization
        lambda: _write(left, INSERT_LEFT, [{**_customer(N + 5, 0), "partytype": "Person"},
                                           _customer(N + 6, 0)]),
        # many updates in one transaction (one of them leaving the filter: a delete)
        lambda: _write(left, UPDATE_LEFT,
                       [{**_customer(i, 1), "partytype": "Person" if i == 5 else
                         "Organization"} for i in range(1, N + 1)]),
        # single-row updates: a plain one, an unresolved group, a status the map lacks
        lambda: _write(left, UPDATE_LEFT, [_customer(N + 1, 1)]),
        lambda: _write(left, UPDATE_LEFT, [{**_customer(N + 2, 1), "grp": "G8"}]),
        lambda: _write(left, UPDATE_LEFT, [{**_customer(N + 6, 1), "status": "Nope"}]),
        # the person becomes an organization: a create
        lambda: _write(left, UPDATE_LEFT, [_customer(N + 5, 1)]),
        # the other way: the lookup on the source (resolved there), the value map backwards
        lambda: _write(right, UPDATE_RIGHT, [
            {"id": i, "name": f"Account {i} v2", "group_id": [10, 20, None][i % 3],
             "statuscode": [1, 2, 3, None][i % 4], "credit": Decimal(f"{i}.5")}
            for i in range(10, N + 1)]),
        lambda: _write(right, UPDATE_RIGHT, [
            {"id": 1, "name": "Account 1 v3", "group_id": 20, "statuscode": 3,
             "credit": None}]),
        # a group id the right side has no group for; a status code the map lacks
        lambda: _write(right, UPDATE_RIGHT, [
            {"id": 2, "name": "Account 2 v3", "group_id": 99, "statuscode": 1,
             "credit": Decimal("2.25")}]),
        lambda: _write(right, UPDATE_RIGHT, [
            {"id": 3, "name": "Account 3 v3", "group_id": 10, "statuscode": 7,
             "credit": Decimal("3.25")}]),
    ]
    for step in steps:
        step()
        drain(applier)


def _text(b: Backend, table: str, cols: list[str]) -> list[tuple[Any, ...]]:
    """Every row as the database prints it: byte for byte."""
    if b.kind == "mariadb":
        sel = ", ".join(f"CAST({c} AS CHAR)" for c in cols)
    else:
        sel = ", ".join(f"{c}::text" for c in cols)
    return [tuple(r) for r in b.sql(f"SELECT {sel} FROM {table} ORDER BY id")]


def _run(make_backend: BackendFactory, tmp_path: Path, right_kind: str,
         set_based: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    left = make_backend("postgresql", "dualwrite_test_a")
    right = make_backend(right_kind, "dualwrite_test_b")
    fresh_tables(_metadata(), left, right)
    right.sql("INSERT INTO cust_groups (id, code) VALUES (10, 'G1'), (20, 'G2'), (30, 'G3')")
    config = link_config(tmp_path, left, right, {"customers": MAP})
    with monkeypatch.context() as mp:
        if not set_based:
            mp.setattr(Applier, "_json_plan", lambda self, m, s: None)
        with Link.open(config) as link:
            link.start_maps()
            _scenario(left, right, link.applier())
            inbox = sorted((e.side, e.key, e.operation, e.reason)
                           for e in link.state.errors(status=None))
            conflicts = len(link.state.conflicts())
    return (_text(left, "customers", LEFT_COLS), _text(right, "accounts", RIGHT_COLS),
            inbox, conflicts)


@pytest.mark.parametrize("right_kind", ["postgresql", "mariadb"])
def test_a_realistic_map_leaves_the_same_rows_and_inbox_on_either_path(
        make_backend: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        right_kind: str) -> None:
    calls: list[tuple[str, str, int, int]] = []
    for cls in (PostgresConnector, MySqlConnector):
        def spies(cls: Any = cls) -> None:
            insert, update = cls._json_insert, cls._json_update_if
            target = "mariadb" if cls is MySqlConnector else "postgresql"

            def spy_insert(connector: Any, *args: Any) -> Any:
                done = insert(connector, *args)
                calls.append((target, "insert", len(args[4]),
                              -1 if done is None else len(done)))
                return done

            def spy_update(connector: Any, *args: Any) -> Any:
                done = update(connector, *args)
                calls.append((target, "update", len(args[6]),
                              -1 if done is None else len(done)))
                return done

            monkeypatch.setattr(cls, "_json_insert", spy_insert)
            monkeypatch.setattr(cls, "_json_update_if", spy_update)

        spies()
    fast = _run(make_backend, tmp_path / "fast", right_kind, True, monkeypatch)
    used = list(calls)
    calls.clear()
    rows = _run(make_backend, tmp_path / "rows", right_kind, False, monkeypatch)
    assert calls == []  # the row path wrote nothing set-based
    # the set-based path did the work it can do, into either database: the run of many
    # rows in one statement (left out: the rows with a spelling the map only matches
    # ignoring case), single rows too, and runs of updates both ways
    into_right = [(op, n, done) for kind, op, n, done in used if kind == right_kind]
    into_left = [(op, n, done) for kind, op, n, done in used if kind == "postgresql"]
    assert ("insert", N, N - len([i for i in range(1, N + 1)
                                  if i % 11 == 0 and i % 7])) in into_right
    assert ("insert", 1, 1) in into_right
    assert ("insert", 1, 0) in into_right  # the unresolved group, the status the map lacks
    assert any(op == "update" and n > 1 and done > 0 for op, n, done in into_right)
    assert any(op == "update" and n > 1 and done > 0 for op, n, done in into_left)
    assert all(done >= 0 for _op, _n, done in into_right + into_left)  # never declined
    left_fast, right_fast, inbox_fast, conflicts_fast = fast
    left_rows, right_rows, inbox_rows, conflicts_rows = rows
    assert right_fast == right_rows
    assert left_fast == left_rows
    assert inbox_fast == inbox_rows
    assert conflicts_fast == conflicts_rows == 0
    # the scenario's failures are there, named as the row path names them
    reasons = " | ".join(r for _s, _k, _o, r in inbox_fast)
    assert "does not resolve" in reasons and "value map" in reasons
    assert len(inbox_fast) >= 6
    # and what was written is what the map says, not merely the same both ways
    by_id = {int(r[0]): r for r in right_fast}
    assert by_id[N + 1][2:4] == ("10" if (N + 2) % 2 == 0 else "20",
                                 str({"Active": 1, "OnHold": 2, "Closed": 3}[
                                     ["Active", "OnHold", "Closed"][(N + 2) % 3]]))
    assert by_id[N + 1][6] == "3"  # the default
    assert N + 5 in by_id  # the person that became an organization
    assert 5 not in by_id  # the organization that became a person
    assert {int(r[0]): r for r in left_fast}[1][2:4] == ("G2", "Closed")
