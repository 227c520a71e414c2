"""Captured values arrive exactly: PostgreSQL -> PostgreSQL, PostgreSQL -> MariaDB and
MariaDB -> PostgreSQL, through the applier (the log, its decoding, the row-by-row and bulk
writes), for the values both sides can hold; `verify` agrees where it can read them.

Each case is (column, source type, target type, what the application writes, the target's
text for it). The target's text is read exactly (PostgreSQL: ``col::text``; MariaDB:
``CAST(... AS CHAR)``, binary as hex, FLOAT widened to DOUBLE first), so that a value that
changed on the way (-0 to 0, 5e-324 to 0, bytes to their hex text) shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from capture_fixtures import drain, link_config
from capture_values import app_exec, fresh, ident
from dualwrite.engine.link import Link

from conftest import Backend, BackendFactory

Case = tuple[str, str, str, str, str | None]

#: PostgreSQL -> PostgreSQL: every value PostgreSQL holds (the target's text is the source's)
PG_PG: list[Case] = [
    ("f8", "double precision", "double precision", v, None) for v in (
        "'-0'", "'NaN'", "'Infinity'", "'-Infinity'", "'5e-324'", "'2.2250738585072014e-308'",
        "'1.7976931348623157e308'", "'-1e-300'", "'0.1'")
] + [
    ("f4", "real", "real", v, None) for v in ("'-0'", "'NaN'", "'1e-45'", "'3.4028235e38'",
                                            "'16777216'")
] + [
    ("num", "numeric", "numeric", v, None) for v in ("'NaN'", "'-Infinity'", "'1.50'",
                                                   "'123456789012345678901234567890.1234'")
] + [
    ("d", "date", "date", v, None) for v in ("'infinity'", "'-infinity'", "'2026-02-28'")
] + [
    ("ts", "timestamp", "timestamp", v, None) for v in ("'infinity'", "'2026-01-01 10:00:01.5'")
] + [
    ("tstz", "timestamptz", "timestamptz", "'-infinity'", None),
    ("tstz", "timestamptz", "timestamptz", "'2026-01-01 10:00:00.5+05:30'", None),
    ("t", "time", "time", "'24:00:00'", None),
    ("t", "time", "time", "'23:59:59.999999'", None),
    ("ttz", "timetz", "timetz", "'12:00:00+05:30'", None),
    ("iv", "interval", "interval", "'1 year 2 mons 3 days 04:05:06.789'", None),
    ("iv", "interval", "interval", "'1 mon'", None),
    ("iv", "interval", "interval", "'178000000 years'", None),
    ("u", "uuid", "uuid", "'0b7e4d3c-1f2a-4c5d-9e8f-0123456789ab'", None),
    ("b", "bytea", "bytea", "'\\x00ff00'", None),
    ("b", "bytea", "bytea", "'\\x5c78'", None),
    ("txt", "text", "text", "'ñandú café Größe ☃ 😀 \\x'", None),
    ("i8", "bigint", "bigint", "-9223372036854775808", None),
]

#: PostgreSQL -> MariaDB: what both can hold (MariaDB has no -0, NaN, infinity, and no time
#: zone), with MariaDB's text for it
PG_MY: list[Case] = [
    ("f8", "double precision", "DOUBLE", "'5e-324'", "5e-324"),
    ("f8", "double precision", "DOUBLE", "'2.2250738585072014e-308'", "2.2250738585072014e-308"),
    ("f8", "double precision", "DOUBLE", "'1.7976931348623157e308'", "1.7976931348623157e308"),
    ("f8", "double precision", "DOUBLE", "'0.1'", "0.1"),
    ("num", "numeric(38, 10)", "DECIMAL(38, 10)", "'-1234567890123.0123456789'",
     "-1234567890123.0123456789"),
    ("d", "date", "DATE", "'2026-02-28'", "2026-02-28"),
    ("ts", "timestamp(6)", "DATETIME(6)", "'2026-01-01 10:00:01.5'", "2026-01-01 10:00:01.500000"),
    ("t", "time(6)", "TIME(6)", "'24:00:00'", "24:00:00.000000"),
    ("t", "time(6)", "TIME(6)", "'12:34:56.5'", "12:34:56.500000"),
    ("u", "uuid", "UUID", "'0b7e4d3c-1f2a-4c5d-9e8f-0123456789ab'",
     "0b7e4d3c-1f2a-4c5d-9e8f-0123456789ab"),
    ("b", "bytea", "LONGBLOB", "'\\x00ff00'", "00ff00"),
    ("b", "bytea", "LONGBLOB", "'\\x5c78'", "5c78"),
    ("b", "bytea", "LONGBLOB", "'\\x'", ""),
    ("l1", "text", "VARCHAR(60) CHARACTER SET latin1", "'ñandú café Größe'", "ñandú café Größe"),
    ("u8", "text", "VARCHAR(60) CHARACTER SET utf8mb4", "'ñandú ☃ 😀'", "ñandú ☃ 😀"),
    ("i8", "bigint", "BIGINT", "-9223372036854775808", "-9223372036854775808"),
]

#: MariaDB -> PostgreSQL, with PostgreSQL's text for it
MY_PG: list[Case] = [
    ("f8", "DOUBLE", "double precision", "5e-324", "5e-324"),
    ("f8", "DOUBLE", "double precision", "2.2250738585072014e-308", "2.2250738585072014e-308"),
    ("f8", "DOUBLE", "double precision", "-1e-300", "-1e-300"),
    ("f8", "DOUBLE", "double precision", "1.7976931348623157e308", "1.7976931348623157e+308"),
    ("f4", "FLOAT", "real", "16777216", "1.6777216e+07"),
    ("f4", "FLOAT", "real", "0.1", "0.1"),
    ("f4", "FLOAT", "real", "3.4028234663852886e38", "3.4028235e+38"),
    ("num", "DECIMAL(38, 10)", "numeric(38, 10)", "'-1234567890123.0123456789'",
     "-1234567890123.0123456789"),
    ("d", "DATE", "date", "'2026-02-28'", "2026-02-28"),
    ("ts", "DATETIME(6)", "timestamp(6)", "'2026-01-01 10:00:01.5'", "2026-01-01 10:00:01.5"),
    ("t", "TIME(6)", "time(6)", "'12:34:56.5'", "12:34:56.5"),
    ("u", "UUID", "uuid", "'0b7e4d3c-1f2a-4c5d-9e8f-0123456789ab'",
     "0b7e4d3c-1f2a-4c5d-9e8f-0123456789ab"),
    ("b", "LONGBLOB", "bytea", "x'00ff00'", "\\x00ff00"),
    ("b", "LONGBLOB", "bytea", "x'c328ffa000'", "\\xc328ffa000"),  # not UTF-8, and a NUL
    ("b", "LONGBLOB", "bytea", "x''", "\\x"),
    ("l1", "VARCHAR(60) CHARACTER SET latin1", "text", "'ñandú café Größe'", "ñandú café Größe"),
    ("u8", "VARCHAR(60) CHARACTER SET utf8mb4", "text", "'ñandú ☃ 😀'", "ñandú ☃ 😀"),
    ("c4", "CHAR(4) CHARACTER SET utf8mb4", "text", "'😀'", "😀"),
    ("js", "JSON", "text", "'{\"a\": [1, 2.50]}'", '{"a": [1, 2.50]}'),
    ("js", "JSON", "text", "'null'", "null"),
    ("i8", "BIGINT", "bigint", "-9223372036854775808", "-9223372036854775808"),
]


def _exact(b: Backend, table: str, column: str, sql_type: str) -> str:
    """An SQL expression giving ``column``'s value as exact text."""
    c = ident(b, column)
    if b.kind == "postgresql":
        return f"{c}::text"
    typ = sql_type.upper()
    if "BLOB" in typ or "BINARY" in typ:
        return f"LOWER(HEX({c}))"
    if typ.startswith("FLOAT"):
        return f"CAST(CAST({c} AS DOUBLE) AS CHAR)"
    return f"CAST({c} AS CHAR)"


def _texts(b: Backend, table: str, columns: dict[str, str]) -> dict[tuple[int, str], Any]:
    exprs = ", ".join(_exact(b, table, c, t) for c, t in columns.items())
    with b.app().connect() as conn:
        if b.kind == "postgresql":  # the text settings a test compares in
            conn.exec_driver_sql("SET extra_float_digits = 1; SET intervalstyle = postgres; "
                                 "SET timezone = 'UTC'; SET bytea_output = hex")
        rows = conn.exec_driver_sql(f"SELECT id, {exprs} FROM {ident(b, table)}").all()
    return {(int(r[0]), c): r[i + 1] for r in rows for i, c in enumerate(columns)}


def _tables(left: Backend, right: Backend, cases: list[Case], table: str) -> None:
    for b, pos in ((left, 1), (right, 2)):
        cols: dict[str, str] = {}
        for case in cases:
            cols.setdefault(case[0], case[pos])
        charset = " DEFAULT CHARSET=utf8mb4" if b.kind == "mariadb" else ""
        fresh(b, [table], [f"CREATE TABLE {ident(b, table)} (id INTEGER PRIMARY KEY, "
                           + ", ".join(f"{ident(b, c)} {t}" for c, t in cols.items())
                           + f"){charset}"])


def _map(name: str, table: str, columns: list[str]) -> str:
    fields = "\n".join(f"  - {c} = {c}" for c in ["id", *columns])
    return (f"name: {name}\nleft: {table}\nright: {table}\nkey: {{left: [id], right: [id]}}\n"
            f"fields:\n{fields}\n")


def _run(make_backend: BackendFactory, tmp_path: Path, kinds: tuple[str, str],
         cases: list[Case], *, updates: bool = True, capture: str = "triggers"
         ) -> tuple[Backend, Backend, Link]:
    """Tables and a map over every case's column; the application writes each case's value
    into its own row on the left, in one transaction, and then (one transaction per row, if
    ``updates``) clears it and writes it again; the applier drains, parking nothing.
    ``capture``: the PostgreSQL sides' capture mode (``logical``: the decoder must log
    every value exactly as the triggers do).
    Returns the backends and the open link (closed by the caller)."""
    left = make_backend(kinds[0], "dualwrite_test_a")
    right = make_backend(kinds[1], "dualwrite_test_b" if kinds[0] == kinds[1]
                         else "dualwrite_test_a")
    for b in (left, right):
        b.connector.clear_link()
    _tables(left, right, cases, "vals")
    columns = list(dict.fromkeys(c[0] for c in cases))
    def mode(cfg: dict[str, Any]) -> None:
        for env, kind in zip(("erp", "crm"), kinds, strict=True):
            if kind == "postgresql":
                cfg["environments"][env]["capture"] = capture

    config = link_config(tmp_path, left, right, {"vals": _map("vals", "vals", columns)},
                         extra=mode)
    link = Link.open(config)
    link.start_maps()
    app_exec(left, *[f"INSERT INTO vals (id, {ident(left, col)}) VALUES ({i}, {lit})"
                     for i, (col, _s, _t, lit, _x) in enumerate(cases)])
    applier = link.applier()
    drain(applier)
    for i, (col, _s, _t, lit, _x) in enumerate(cases):  # through updates too
        if not updates or not _readable(lit):
            continue  # see test_an_update_of_a_value_python_has_no_type_for_is_applied
        c = ident(left, col)
        app_exec(left, f"UPDATE vals SET {c} = NULL WHERE id = {i}")
        app_exec(left, f"UPDATE vals SET {c} = {lit} WHERE id = {i}")
    drain(applier)
    assert [e.reason for e in link.state.errors()] == []
    return left, right, link


def _readable(literal: str) -> bool:
    """Whether the connector reads the value: the applier's careful path compares rows it
    reads (PostgreSQL's infinity and 24:00:00 have no Python value)."""
    return not any(s in literal for s in ("infinity", "24:00"))


def _wrong(left: Backend, right: Backend, cases: list[Case]) -> list[str]:
    lcols = {c[0]: c[1] for c in cases}
    rcols = {c[0]: c[2] for c in cases}
    source, target = _texts(left, "vals", lcols), _texts(right, "vals", rcols)
    wrong = []
    for i, (col, _s, _t, lit, want) in enumerate(cases):
        expected = source[(i, col)] if want is None else want
        got = target[(i, col)]
        if got != expected:
            wrong.append(f"{col} = {lit} arrived as {got!r}, not {expected!r}")
        others = [c for c in lcols if c != col and target[(i, c)] is not None]
        if others:
            wrong.append(f"row {i}: {others} should be NULL")
    return wrong


@pytest.mark.parametrize("capture", ["triggers", "logical"])
def test_postgresql_values_arrive_exactly_in_postgresql(make_backend: BackendFactory,
                                                        tmp_path: Path, capture: str) -> None:
    left, right, link = _run(make_backend, tmp_path, ("postgresql", "postgresql"), PG_PG,
                             capture=capture)
    with link:
        wrong = _wrong(left, right, PG_PG)
        assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize("capture", ["triggers", "logical"])
def test_json_null_and_sql_null_stay_apart_on_insert(make_backend: BackendFactory,
                                                     tmp_path: Path, capture: str) -> None:
    cases: list[Case] = [("j", "jsonb", "jsonb", "'null'", None),
                         ("j", "jsonb", "jsonb", "'{\"b\": [1, 2.50], \"a\": null}'", None),
                         ("j", "jsonb", "jsonb", "NULL", None),
                         ("js", "json", "json", "' {\"b\": 1,  \"a\" : null} '", None)]
    _left, right, link = _run(make_backend, tmp_path, ("postgresql", "postgresql"), cases,
                              updates=False, capture=capture)
    with link:
        assert right.sql("SELECT id, j::text, j IS NULL, js::text FROM vals ORDER BY id") == [
            (0, "null", False, None), (1, '{"a": null, "b": [1, 2.50]}', False, None),
            (2, None, True, None), (3, None, True, ' {"b": 1,  "a" : null} ')]


@pytest.mark.parametrize("capture", ["triggers", "logical"])
def test_postgresql_values_arrive_exactly_in_mariadb(make_backend: BackendFactory,
                                                     tmp_path: Path, capture: str) -> None:
    left, right, link = _run(make_backend, tmp_path, ("postgresql", "mariadb"), PG_MY,
                             capture=capture)
    with link:
        assert _wrong(left, right, PG_MY) == []


def test_mariadb_values_arrive_exactly_in_postgresql(make_backend: BackendFactory,
                                                     tmp_path: Path) -> None:
    left, right, link = _run(make_backend, tmp_path, ("mariadb", "postgresql"), MY_PG)
    with link:
        wrong = _wrong(left, right, MY_PG)
        assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize("kinds", [("postgresql", "postgresql"), ("postgresql", "mariadb"),
                                   ("mariadb", "postgresql")], ids="-".join)
def test_verify_agrees_on_what_capture_carried(make_backend: BackendFactory, tmp_path: Path,
                                               kinds: tuple[str, str]) -> None:
    """The values `verify` can read on both sides today (no infinity, no 24:00:00, no NaN;
    MariaDB doubles are read as ten-place decimals and FLOATs with six digits), captured:
    verify agrees."""
    cases = {("postgresql", "postgresql"): PG_PG, ("postgresql", "mariadb"): PG_MY,
             ("mariadb", "postgresql"): MY_PG}[kinds]
    readable = [c for c in cases if not any(
        s in c[3].lower() for s in ("inf", "nan", "24:00", "e-3", "e308", "e38"))
        and not (c[2] == "text" and c[1] == "JSON") and c[1] != "FLOAT"]
    _left, _right, link = _run(make_backend, tmp_path, kinds, readable)
    with link:
        results = link.verify()
        assert all(v.ok for v in results), [d for v in results for d in v.details]
        assert sum(v.compared for v in results) == len(readable)


def test_an_update_of_a_value_python_has_no_type_for_is_applied(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    """The log carries infinity and 24:00:00 (test_capture_triggers), and inserts and the
    set-based path apply them; an update of one row must too."""
    cases: list[Case] = [("d", "date", "date", "'infinity'", None),
                         ("t", "time", "time", "'24:00:00'", None)]
    left, right, link = _run(make_backend, tmp_path, ("postgresql", "postgresql"), cases,
                             updates=False)
    with link:
        app_exec(left, "UPDATE vals SET d = '-infinity' WHERE id = 0")
        drain(link.applier())
        assert [e.reason for e in link.state.errors()] == []
        assert right.sql("SELECT id, d::text, t::text FROM vals ORDER BY id") == [
            (0, "-infinity", None), (1, None, "24:00:00")]


def test_json_updates_keep_json_null_apart(make_backend: BackendFactory,
                                           tmp_path: Path) -> None:
    """The log carries JSON null apart from SQL NULL (test_capture_triggers), and inserts keep
    them apart; an update must too."""
    cases: list[Case] = [("j", "jsonb", "jsonb", "'null'", None),
                         ("j", "jsonb", "jsonb", "'{\"a\": 1}'", None)]
    left, right, link = _run(make_backend, tmp_path, ("postgresql", "postgresql"), cases)
    with link:
        applier = link.applier()
        app_exec(left, "UPDATE vals SET j = NULL WHERE id = 1")
        app_exec(left, "UPDATE vals SET j = 'null' WHERE id = 0")
        drain(applier)
        assert right.sql("SELECT id, j::text FROM vals ORDER BY id") == [(0, "null"), (1, None)]
