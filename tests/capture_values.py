"""Raw tables for capture tests, and edge values of every kind with what the log must give back
for each (imported by tests).

A case is (column, SQL type, SQL literal the application writes, expected decoded value). The
expected value is what the connector reads for that value, or, where the connector cannot read
it exactly (the values Python has no type for, and the reads another branch is fixing: MariaDB
FLOAT and DOUBLE), the value the column holds, as docs/capture.md says the log gives it back.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from dualwrite.connectors.sql import SqlConnector

from conftest import Backend

#: dualwrite's own tables, dropped before a test creates its tables
OWN_TABLES = ("dualwrite_changes", "dualwrite_applied", "dualwrite_origin", "dualwrite_wake")
#: read the value through the connector (the common case)
CONNECTOR: Any = object()

U1 = uuid.UUID("0b7e4d3c-1f2a-4c5d-9e8f-0123456789ab")


def ident(b: Backend, name: str) -> str:
    """``name`` quoted for ``b``'s SQL, whatever it holds."""
    return b.quote(name)


def fresh(b: Backend, tables: list[str], ddl: list[str]) -> None:
    """Drop ``tables`` and dualwrite's own tables on ``b``, then run ``ddl``; caches reset."""
    c = b.connector
    assert isinstance(c, SqlConnector)
    # (no clear_prepared here: MariaDB's XA RECOVER lists every database's branches, other
    # checkouts' in-flight ones too; these tests end the branches they prepare themselves)
    cascade = " CASCADE" if b.kind == "postgresql" else ""
    with c.engine.begin() as conn:
        for t in [*tables, *OWN_TABLES]:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {ident(b, t)}{cascade}")
        for statement in ddl:
            conn.exec_driver_sql(statement)
    c.forget_schema()
    if c._capture is not None:
        c._capture._ready = False


def app_exec(b: Backend, *statements: str) -> None:
    """One application transaction (captured), on a connection of the application's own."""
    with b.app().begin() as conn:
        for s in statements:
            conn.exec_driver_sql(s)


PG_CASES: list[tuple[str, str, str, Any]] = [
    # floats: signed zero, special values, subnormals, the largest
    ("f8", "double precision", "'-0'", CONNECTOR),
    ("f8", "double precision", "'NaN'", CONNECTOR),
    ("f8", "double precision", "'Infinity'", CONNECTOR),
    ("f8", "double precision", "'-Infinity'", CONNECTOR),
    ("f8", "double precision", "'5e-324'", CONNECTOR),
    ("f8", "double precision", "'2.2250738585072014e-308'", CONNECTOR),
    ("f8", "double precision", "'1.7976931348623157e308'", CONNECTOR),
    ("f8", "double precision", "'-1e-300'", CONNECTOR),
    ("f8", "double precision", "'0.1'", CONNECTOR),
    ("f4", "real", "'-0'", CONNECTOR),
    ("f4", "real", "'NaN'", CONNECTOR),
    ("f4", "real", "'-Infinity'", CONNECTOR),
    ("f4", "real", "'1e-45'", CONNECTOR),
    ("f4", "real", "'3.4028235e38'", CONNECTOR),
    ("f4", "real", "'16777216'", CONNECTOR),
    ("num", "numeric", "'NaN'", CONNECTOR),
    ("num", "numeric", "'Infinity'", CONNECTOR),
    ("num", "numeric", "'-Infinity'", CONNECTOR),
    ("num", "numeric", "'1.50'", CONNECTOR),
    ("num", "numeric", "'-123456789012345678901234567890.123456789'", CONNECTOR),
    # dates and times, the values Python has no type for as dualwrite's own values
    ("d", "date", "'2026-02-28'", CONNECTOR),
    ("d", "date", "'infinity'", CONNECTOR),
    ("d", "date", "'-infinity'", CONNECTOR),
    ("ts", "timestamp", "'2026-01-01 10:00:00.123456'", CONNECTOR),
    ("ts", "timestamp", "'infinity'", CONNECTOR),
    ("tstz", "timestamptz", "'2026-01-01 10:00:00.5+05:30'", CONNECTOR),
    ("tstz", "timestamptz", "'-infinity'", CONNECTOR),
    ("t", "time", "'23:59:59.999999'", CONNECTOR),
    ("t", "time", "'24:00:00'", CONNECTOR),
    ("ttz", "timetz", "'12:00:00+05:30'", CONNECTOR),
    ("ttz", "timetz", "'23:59:59-08'", CONNECTOR),
    # intervals with months, days and time apart
    ("iv", "interval", "'1 year 2 mons 3 days 04:05:06.789'", CONNECTOR),
    ("iv", "interval", "'1 mon'", CONNECTOR),
    ("iv", "interval", "'178000000 years'", CONNECTOR),
    ("u", "uuid", f"'{U1}'", CONNECTOR),
    # JSON documents as their text: JSON null is not SQL NULL
    ("j", "jsonb", "'null'", CONNECTOR),
    ("j", "jsonb", "'{\"b\": [1, \"x\"], \"a\": 1.50}'", CONNECTOR),
    ("j", "jsonb", "'\"str\"'", CONNECTOR),
    ("js", "json", "' {\"b\": 2,  \"a\" : 1} '", CONNECTOR),
    ("js", "json", "'null'", CONNECTOR),
    ("b", "bytea", "'\\x00ff00'", CONNECTOR),
    ("b", "bytea", "'\\x'", CONNECTOR),
    ("b", "bytea", "'\\xdeadbeef5c78'", CONNECTOR),
    ("txt", "text", "'ñandú café Größe ☃ 😀'", CONNECTOR),
    ("txt", "text", "'quote \" backslash \\ \"\\x00\"'", CONNECTOR),
    ("txt", "text", "''", CONNECTOR),
    ("ok", "boolean", "true", CONNECTOR),
    ("i8", "bigint", "-9223372036854775808", CONNECTOR),
]

MY_CASES: list[tuple[str, str, str, Any]] = [
    ("d", "DOUBLE", "5e-324", CONNECTOR),
    ("d", "DOUBLE", "2.2250738585072014e-308", CONNECTOR),
    ("d", "DOUBLE", "1.7976931348623157e308", CONNECTOR),
    ("d", "DOUBLE", "-1e-300", CONNECTOR),
    ("d", "DOUBLE", "0.1", CONNECTOR),
    ("f", "FLOAT", "16777216", CONNECTOR),
    ("f", "FLOAT", "0.1", CONNECTOR),
    ("f", "FLOAT", "3.4028234663852886e38", CONNECTOR),
    ("f", "FLOAT", "1.401298464324817e-45", CONNECTOR),
    ("dec", "DECIMAL(30,10)", "'12345678901234567890.0123456789'", CONNECTOR),
    ("dec", "DECIMAL(30,10)", "'-0.0000000001'", CONNECTOR),
    ("t", "TIME(6)", "'12:34:56.5'", CONNECTOR),
    ("t", "TIME(6)", "'24:00:00'", CONNECTOR),
    ("t", "TIME(6)", "'-838:59:59'", CONNECTOR),
    ("dt", "DATETIME(6)", "'2026-01-01 10:00:00.123456'", CONNECTOR),
    ("da", "DATE", "'2026-02-28'", CONNECTOR),
    ("b", "LONGBLOB", "x'00ff00'", CONNECTOR),
    ("b", "LONGBLOB", "x'c328ffa0'", CONNECTOR),  # not UTF-8
    ("b", "LONGBLOB", "x''", CONNECTOR),
    ("vb", "VARBINARY(16)", "x'deadbeef5c78'", CONNECTOR),
    ("bi", "BINARY(4)", "x'0102'", CONNECTOR),
    ("l1", "VARCHAR(40) CHARACTER SET latin1", "'ñandú café Größe'", CONNECTOR),
    ("u8", "VARCHAR(40) CHARACTER SET utf8mb4", "'ñandú café Größe ☃ 😀'", CONNECTOR),
    ("c4", "CHAR(4) CHARACTER SET utf8mb4", "'😀'", CONNECTOR),
    ("tx", "TEXT CHARACTER SET latin1", "'quote \" backslash \\\\ end'", CONNECTOR),
    ("j", "JSON", "'null'", CONNECTOR),
    ("j", "JSON", "'{\"a\": 1.50, \"b\": [1, \"x\"]}'", CONNECTOR),
    ("u", "UUID", f"'{U1}'", CONNECTOR),
    ("bt", "BIT(3)", "b'101'", CONNECTOR),
    ("e", "ENUM('a','ñ')", "'ñ'", CONNECTOR),
    ("y", "YEAR", "2026", CONNECTOR),
    ("ub", "BIGINT UNSIGNED", "18446744073709551615", CONNECTOR),
]

SQLITE_CASES: list[tuple[str, str, str, Any]] = [
    ("r", "REAL", "0.1 + 0.2", CONNECTOR),
    ("r", "REAL", "1e300", CONNECTOR),
    ("r", "REAL", "5e-324", CONNECTOR),
    ("r", "REAL", "1.7976931348623157e308", CONNECTOR),
    ("r", "REAL", "9e999", CONNECTOR),
    ("r", "REAL", "-9e999", CONNECTOR),
    ("b", "BLOB", "x'00ff00'", CONNECTOR),
    ("b", "BLOB", "x'c328ffa0'", CONNECTOR),
    ("t", "TEXT", "'ñandú café Größe ☃ 😀'", CONNECTOR),
    ("n", "NUMERIC(12, 2)", "12.34", CONNECTOR),
    ("i", "BIGINT", "-9223372036854775808", CONNECTOR),
    ("d", "DATE", "'2026-02-28'", CONNECTOR),
    ("dt", "DATETIME", "'2026-01-01 10:00:00.123456'", CONNECTOR),
    ("ok", "BOOLEAN", "1", CONNECTOR),
]

CASES = {"postgresql": PG_CASES, "mariadb": MY_CASES, "sqlite": SQLITE_CASES}


def same(a: Any, b: Any) -> bool:
    """Exact equality: floats and decimals by their repr (-0.0 is not 0.0, NaN is NaN), the
    rest by type and ==."""
    if isinstance(a, float | Decimal) or isinstance(b, float | Decimal):
        return type(a) is type(b) and repr(a) == repr(b)
    return type(a) is type(b) and a == b


def value_table(b: Backend, table: str = "vals"
                ) -> tuple[list[str], list[tuple[int, str, str, Any]]]:
    """Create ``table`` on ``b`` with one column per kind of its cases (and a key ``id``);
    returns the columns and, per case, (row id, column, literal, expected)."""
    cases = CASES[b.kind]
    columns: dict[str, str] = {}
    for col, typ, _lit, _exp in cases:
        columns.setdefault(col, typ)
    ddl = (f"CREATE TABLE {ident(b, table)} ({ident(b, 'id')} INTEGER PRIMARY KEY, "
           + ", ".join(f"{ident(b, c)} {t}" for c, t in columns.items()) + ")")
    if b.kind == "mariadb":
        ddl += " DEFAULT CHARSET=utf8mb4"
    fresh(b, [table], [ddl])
    rows = [(i + 1, col, lit, exp) for i, (col, _t, lit, exp) in enumerate(cases)]
    return ["id", *columns], rows


def expected_value(b: Backend, table: str, row_id: int, column: str, expected: Any) -> Any:
    """The value a case's log entry must decode to."""
    if expected is not CONNECTOR:
        return expected
    [got] = b.connector.fetch(table, [column], key=["id"], keys=[(row_id,)])
    return got[0]


def insert_sql(b: Backend, table: str, row_id: int, column: str, literal: str) -> str:
    return (f"INSERT INTO {ident(b, table)} ({ident(b, 'id')}, {ident(b, column)}) "
            f"VALUES ({row_id}, {literal})")

