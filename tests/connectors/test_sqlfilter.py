"""compile_filter: the SQL selects exactly the rows evaluate() accepts, on every backend.

Each backend gets the same table and rows; for every filter below the set of ids the database
returns must equal the set Python's evaluate() accepts. PostgreSQL and MariaDB must be running:
an unreachable database fails the test (with how to start it) rather than skipping it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from dualwrite.connectors.sqlfilter import compile_filter, like_escape
from dualwrite.errors import ConfigError
from dualwrite.model.filters import evaluate, parse_filter
from dualwrite.testing.backends import backends, spec

TABLE = "filt_rows"



def _text(length: int) -> sa.types.TypeEngine[str]:
    # Binary collations, so that the databases order and match strings by code point as
    # Python does (MariaDB's default collations ignore case; its *_bin ones pad spaces).
    return (sa.String(length)
            .with_variant(sa.String(length, collation="C"), "postgresql")
            .with_variant(sa.String(length, collation="utf8mb4_nopad_bin"), "mysql"))


def make_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        TABLE, metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", _text(100)),
        sa.Column("code", _text(20)),
        sa.Column("qty", sa.Integer),
        sa.Column("amount", sa.Numeric(12, 2)),
        sa.Column("active", sa.Boolean),
        sa.Column("born", sa.Date),
        sa.Column("seen", sa.DateTime),
        sa.Column("ref", _text(36)),
    )


G1 = "01234567-89ab-cdef-0123-456789abcdef"
G2 = "fedcba98-7654-3210-fedc-ba9876543210"


def _row(id: int, name: str | None = None, code: str | None = None, qty: int | None = None,
         amount: str | None = None, active: bool | None = None, born: dt.date | None = None,
         seen: dt.datetime | None = None, ref: str | None = None) -> dict[str, Any]:
    return {"id": id, "name": name, "code": code, "qty": qty,
            "amount": Decimal(amount) if amount is not None else None, "active": active,
            "born": born, "seen": seen, "ref": ref}


D = dt.date
T = dt.datetime
ROWS = [
    _row(1, "alpha", "A", 3, "12.50", True, D(1990, 12, 31), T(2024, 1, 31, 9, 59, 59), G1),
    _row(2, "ALPHA beta", "B", 5, "0.00", False, D(1985, 6, 15), T(2024, 1, 31, 10, 0, 0)),
    _row(3, "O'Brien", "c", 7, "100.25", None, D(2000, 1, 1), T(2024, 1, 31, 10, 0, 1)),
    _row(4, "o'brien", "C", -7, "-3.75", True, D(1999, 12, 31), T(2024, 6, 1, 12, 0, 0)),
    _row(5, "100% pure", "0%", 10, "99.99", False, D(2010, 2, 28), T(2023, 12, 31, 23, 59, 58)),
    _row(6, "a_b", "_", 12, "7.00", True, D(1970, 1, 1), T(2024, 3, 1, 0, 0, 0), G2.upper()),
    _row(7, "axb", "_", 0, "2.50", None, None, None),
    _row(8, None, "A", None, None, None, None, None),
    _row(9, "", "", 1, "1.00", False, D(2024, 2, 29), T(2024, 2, 29, 23, 0, 0)),
    _row(10, "x", "X", 2, "3.00", True, D(1990, 1, 1), T(2024, 1, 1, 0, 0, 0)),
    _row(11, "x' or 1=1", "Y", 4, "4.00", True, None, T(2024, 1, 31, 10, 0, 0)),
    _row(12, "back\\slash", "\\", 6, "6.00", False, D(1990, 7, 4), T(2022, 7, 4, 18, 30, 0)),
    _row(13, "pad ", "  x  ", 8, "8.00", None, D(1990, 12, 1), T(2024, 12, 24, 23, 59, 59)),
    _row(14, "pad", " x", 9, "9.00", True, D(1991, 1, 1), T(2024, 1, 31, 11, 0, 0)),
    _row(15, "Zoë", "Ë", 11, "11.11", False, D(1992, 3, 3), T(2021, 5, 5, 5, 5, 5)),
    _row(16, "50%_off/now", "/", 15, "15.00", True, D(1993, 4, 4), T(2020, 4, 4, 4, 4, 4)),
    _row(17, "slash/path", "h/p", 16, "16.00", None, D(1994, 5, 5), T(2019, 1, 1, 1, 1, 1)),
    _row(18, "Mango", "M", 20, "20.00", False, D(1995, 6, 6), T(2018, 8, 8, 8, 8, 8)),
    _row(19, "banana", "b", 21, "21.21", True, D(1996, 7, 7), T(2017, 9, 9, 9, 9, 9)),
    _row(20, "Banana", "B", 22, "22.22", None, D(1997, 8, 8), T(2016, 10, 10, 10, 10, 10)),
    _row(21, "alphabet", "Aa", 3, "12.50", True, D(1998, 9, 9), T(2015, 11, 11, 11, 11, 11)),
    _row(22, "beta", None, -1, "-1.00", False, D(1999, 10, 10), T(2014, 12, 12, 12, 12, 12)),
    _row(23, "gamma", "g", None, "0.01", True, None, T(2024, 1, 31, 10, 0, 0), G1.upper()),
    _row(24, "delta", "d", 100, None, False, D(2001, 1, 31), None),
    _row(25, "epsilon", "e", -100, "1000.00", None, D(2002, 2, 2), T(2024, 1, 30, 23, 59, 59)),
    _row(26, "zeta%", "%", 33, "33.33", True, D(2003, 3, 3), T(2013, 3, 3, 3, 3, 3)),
    _row(27, "eta_", "a_", 44, "44.44", False, D(2004, 4, 4), T(2012, 4, 4, 4, 4, 4)),
    _row(28, "theta", "th", 55, "55.55", True, D(2005, 5, 5), T(2011, 5, 5, 5, 5, 5)),
    _row(29, "iota", "IO", 66, "66.66", None, D(2006, 6, 6), T(2010, 6, 6, 6, 6, 6)),
    _row(30, "kappa", "ka", 77, "77.77", True, D(2007, 7, 7), T(2009, 7, 7, 7, 7, 7)),
    _row(31, "lambda", "LA", 88, "0.50", False, D(2008, 8, 8), T(2008, 8, 8, 8, 8, 8)),
    _row(32, "NULL", "null", None, None, None, None, None),
]

INJECTION = "name eq 'x'' or 1=1 --'"

FILTERS = [
    # comparison, null semantics
    "name eq 'O''Brien'",
    "name ne 'alpha'",
    "name eq null",
    "name ne null",
    "null eq name",
    "name eq 'pad'",
    "name gt 'M' and name lt 'b'",
    "name ge 'Zoë'",
    "qty gt 5",
    "qty ge 5 and qty le 10",
    "qty lt 0 or amount gt 100",
    "not (qty gt 5)",
    "not (qty gt 5 and active)",
    "Qty eq AMOUNT",
    "amount eq 12.5",
    "amount ge 1.5e1",
    "amount lt -1",
    "amount gt null",
    "1 eq 1",
    "1 eq 2 or qty eq 3",
    "qty gt 2 add 3",
    # in
    "code in ('A', 'B', 'c')",
    "code in ('A', null)",
    "qty in (3, 5, -7)",
    "amount in (12.5, 0, -3.75)",
    # booleans
    "active",
    "not active",
    "active eq true",
    "active eq false",
    "active ne true",
    "active eq null",
    "active eq 1",
    "active ne 0",
    # LIKE functions, escaping and case
    "contains(name, '%')",
    "contains(name, '_')",
    "contains(name, '/')",
    "contains(name, '\\')",
    "startswith(name, 'a_')",
    "startswith(name, '50%_')",
    "endswith(name, '%')",
    "endswith(name, '_')",
    "contains(name, 'o''b')",
    "contains(name, 'ALPHA')",
    "contains(name, '')",
    "endswith(name, '')",
    "contains(name, code)",
    "startswith(name, code)",
    "endswith(name, code)",
    "not contains(name, 'a')",
    "contains(name, 'a') eq false",
    "contains(name, 'a') eq null",
    "contains(name, null)",
    # other string functions
    "tolower(name) eq 'o''brien'",
    "toupper(code) eq 'B'",
    "length(name) gt 5",
    "length(name) eq 3",
    "trim(code) eq 'x'",
    "concat(code, name) eq 'Aalpha'",
    "concat(name, '!') eq 'alpha!'",
    "indexof(name, 'a') eq 0",
    "indexof(name, 'a') eq -1",
    "substring(name, 1, 2) eq 'lp'",
    "substring(name, 2) eq 'pha'",
    "substring(name, qty) eq 'ta'",
    # arithmetic
    "qty add 1 eq 6",
    "(qty add 1) mul 2 eq 16",
    "qty sub 2 mul 3 gt 0",
    "-qty gt -3",
    "qty div 2 eq 2",
    "qty div 2 eq -3",
    "qty mod 3 eq 1",
    "qty mod 3 eq -1",
    "qty divby 2 eq 3.5",
    "amount divby 4 ge 2.5",
    "amount mul 2 gt 50",
    "amount div 2 eq 6.25",
    "qty div 0 eq null",
    "amount mod 0 eq null",
    "qty div qty eq 1",
    # dates and times
    "born lt 2000-01-01",
    "born eq 1990-12-31",
    "year(born) eq 1990",
    "month(seen) ge 6",
    "day(born) eq 31",
    "hour(seen) eq 23",
    "minute(seen) eq 59 and second(seen) eq 58",
    "seen gt 2024-01-31T10:00:00Z",
    "seen lt 2024-01-31T12:00:00+02:00",
    "seen ge 2024-01-31",
    "seen eq 2024-01-31T10:00:00Z",
    # GUIDs held as text, any case
    f"ref eq {G1}",
    f"ref eq {G2.upper()}",
    f"ref ne {G1}",
    f"ref in ({G1}, {G2})",
    f"ref in ({G2}, null)",
    # injection attempts: all literals are bound, none is SQL
    INJECTION,
    "contains(name, ''' or ''1''=''1')",
    "name eq '''; drop table filt_rows; --'",
]


def _resolver(table: sa.Table) -> Callable[[str], sa.ColumnElement[Any]]:
    by_name = {c.name.casefold(): c for c in table.c}

    def column(name: str) -> sa.ColumnElement[Any]:
        return by_name[name.casefold()]

    return column


# --------------------------------------------------------------------------------------------
# fixtures: one table per backend, set up once per module


def _connect(backend: str, tmp: Path) -> sa.Engine:
    # this process's test database (its own under pytest-xdist; a file's in ``tmp``); a server
    # that is down fails the test with how to start it, never a skip: a filter that only
    # works on SQLite must not pass unnoticed
    return sa.create_engine(spec(backend).url("dualwrite_test_a", tmp))


@pytest.fixture(scope="module", params=backends(needs=("sql",)))
def loaded(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[sa.Engine, sa.Table]]:
    backend: str = request.param
    engine = _connect(backend, tmp_path_factory.mktemp(backend))
    metadata = sa.MetaData()
    table = make_table(metadata)
    try:
        with engine.begin() as conn:
            table.drop(conn, checkfirst=True)
            table.create(conn)
            conn.execute(table.insert(), ROWS)
        yield engine, table
    finally:
        with engine.begin() as conn:
            table.drop(conn, checkfirst=True)
        engine.dispose()


def _sql_ids(engine: sa.Engine, table: sa.Table, text: str) -> set[int]:
    where = compile_filter(parse_filter(text), _resolver(table))
    with engine.connect() as conn:
        return set(conn.execute(sa.select(table.c.id).where(where)).scalars())


def _python_ids(text: str) -> set[int]:
    expr = parse_filter(text)
    return {row["id"] for row in ROWS if evaluate(expr, row)}


# --------------------------------------------------------------------------------------------
# database == Python


@pytest.mark.parametrize("text", FILTERS)
def test_sql_selects_what_evaluate_accepts(loaded: tuple[sa.Engine, sa.Table],
                                           text: str) -> None:
    engine, table = loaded
    assert _sql_ids(engine, table, text) == _python_ids(text)


def test_the_filters_discriminate() -> None:
    # guard against a vacuous comparison: most filters select some rows but not all of them
    all_ids = {row["id"] for row in ROWS}
    proper = [f for f in FILTERS if _python_ids(f) not in (set(), all_ids)]
    assert len(proper) >= len(FILTERS) * 3 // 4


@pytest.mark.parametrize(("text", "ids"), [
    (INJECTION, set()),
    ("name eq 'x'", {10}),
    ("name eq 'x'' or 1=1 --'", set()),
    ("name eq 'x'' or 1=1 --' or name eq 'x' or 1 eq 2", {10}),
    ("contains(name, '%')", {5, 16, 26}),
    ("contains(name, '_')", {6, 16, 27}),
    ("startswith(name, 'a_')", {6}),
    ("contains(name, 'o''b')", {4}),
    ("name eq 'pad'", {14}),
    ("not (qty gt 5)", {1, 2, 4, 7, 8, 9, 10, 11, 21, 22, 23, 25, 32}),
    ("qty div 2 eq -3", {4}),
    ("qty mod 3 eq -1", {4, 22, 25}),
    ("length(name) eq 3", {6, 7, 14, 15}),
    ("seen gt 2024-01-31T10:00:00Z", {3, 4, 6, 9, 13, 14}),
    (f"ref eq {G1}", {1, 23}),
])
def test_known_results(loaded: tuple[sa.Engine, sa.Table], text: str, ids: set[int]) -> None:
    engine, table = loaded
    assert _python_ids(text) == ids
    assert _sql_ids(engine, table, text) == ids


def test_the_injection_row_is_only_found_by_its_exact_name(
        loaded: tuple[sa.Engine, sa.Table]) -> None:
    engine, table = loaded
    assert _sql_ids(engine, table, "name eq 'x'' or 1=1 --'") == set()
    assert _sql_ids(engine, table, "name eq 'x'' or 1=1 --'") == set()
    assert _sql_ids(engine, table, "startswith(name, 'x'' or 1=1')") == {11}


# --------------------------------------------------------------------------------------------
# what the SQL looks like (no database needed)

DIALECTS = {"sqlite": sqlite.dialect(), "postgresql": postgresql.dialect(),
            "mariadb": mysql.dialect()}


def _sql(text: str, dialect: sa.Dialect) -> str:
    table = make_table(sa.MetaData())
    stmt = sa.select(table.c.id).where(compile_filter(parse_filter(text), _resolver(table)))
    return str(stmt.compile(dialect=dialect))


@pytest.mark.parametrize("dialect", DIALECTS.values(), ids=DIALECTS.keys())
def test_no_literal_reaches_the_sql_text(dialect: sa.Dialect) -> None:
    for text in (INJECTION, "contains(name, 'drop table')", "name eq 'O''Brien'",
                 "code in ('zz1', 'zz2')", "amount eq 12345.67", "qty eq 987654",
                 "born eq 1990-12-31", f"ref eq {G1}"):
        sql = _sql(text, dialect)
        for fragment in ("1=1", "drop table", "Brien", "zz1", "12345", "987654", "1990",
                         "0123"):
            assert fragment not in sql, (text, sql)


def test_null_comparisons_compile_to_is_null() -> None:
    pg = DIALECTS["postgresql"]
    assert "name IS NULL" in _sql("name eq null", pg)
    assert "name IS NOT NULL" in _sql("name ne null", pg)
    assert "false" in _sql("name gt null", pg).lower()


def test_like_uses_an_escape_clause() -> None:
    for name in ("postgresql", "mariadb"):
        sql = _sql("contains(name, '50%')", DIALECTS[name])
        assert "LIKE" in sql and "ESCAPE '/'" in sql, sql
    # SQLite's LIKE ignores case, so it gets exact instr/substr tests instead
    assert "instr(" in _sql("contains(name, 'a')", DIALECTS["sqlite"])


def test_dialect_specific_functions() -> None:
    assert "char_length(" in _sql("length(name) eq 1", DIALECTS["mariadb"])
    assert "length(" in _sql("length(name) eq 1", DIALECTS["sqlite"])
    assert "strpos(" in _sql("indexof(name, 'a') eq 1", DIALECTS["postgresql"])
    assert " DIV " in _sql("qty div 2 eq 1", DIALECTS["mariadb"])
    assert "nullif(" in _sql("qty div qty eq 1", DIALECTS["postgresql"]).lower()


def test_like_escape() -> None:
    assert like_escape("50%_a/b") == "50/%/_a//b"
    assert like_escape("plain") == "plain"


def test_unknown_column_comes_from_the_resolver() -> None:
    table = make_table(sa.MetaData())
    with pytest.raises(KeyError):
        compile_filter(parse_filter("nope eq 1"), _resolver(table))


def test_column_free_parts_that_cannot_be_computed_are_config_errors() -> None:
    table = make_table(sa.MetaData())
    with pytest.raises(ConfigError, match="cannot be computed"):
        compile_filter(parse_filter("qty eq 1 add 'a'"), _resolver(table))


def test_statement_cache_keys_differ_by_function_kind() -> None:
    # the custom constructs take part in SQLAlchemy's statement cache; two different
    # functions with the same arguments must not share a cache entry
    table = make_table(sa.MetaData())
    a = compile_filter(parse_filter("contains(name, 'x')"), _resolver(table))
    b = compile_filter(parse_filter("startswith(name, 'x')"), _resolver(table))
    key_a = a._generate_cache_key()
    key_b = b._generate_cache_key()
    assert key_a is not None and key_b is not None
    assert key_a.key != key_b.key


def test_uuid_binds_natively_against_a_uuid_column() -> None:
    table = sa.Table("u", sa.MetaData(), sa.Column("ref", sa.Uuid))
    where = compile_filter(parse_filter(f"ref eq {G1}"), _resolver(table))
    params = where.compile(dialect=DIALECTS["postgresql"]).params
    assert uuid.UUID(G1) in params.values()
