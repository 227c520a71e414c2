"""SQLite: the embedded default for the demo and for dualwrite's own state
(:func:`create_sqlite_engine`). Two files are linked live in one transaction over one
connection, the other file attached (no two-phase commit); capture by triggers (their
SQL in ``dialect.py``)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from dualwrite.connectors.base import Capabilities, Connector, Row, WriteSession
from dualwrite.connectors.capture import (
    Dialect,
)
from dualwrite.connectors.sql import Fault, SqlConnector, SqlWriteSession, untyped
from dualwrite.errors import ConfigError
from dualwrite.model.codec import decimal_of_float, parse_time, text_of
from dualwrite.model.schema import (
    END_OF_DAY,
    INF,
    NAN,
    NEG_INF,
    TEMPORAL_SPECIALS,
    Column,
    Facets,
    Kind,
    TableSchema,
)
from dualwrite.model.values import (
    INFINITY,
    MINUS_INFINITY,
    EndOfDay,
    Infinite,
    Interval,
    JsonText,
    TemporalText,
)


def _datetime_text(v: dt.datetime) -> str:
    """SQLAlchemy's storage format for SQLite DATETIME, in UTC (a value with a zone is
    converted: dualwrite takes a value without one as UTC)."""
    if v.tzinfo is not None:
        v = v.astimezone(dt.UTC).replace(tzinfo=None)
    return v.strftime("%Y-%m-%d %H:%M:%S.%f") if v.year >= 1000 else \
        f"{v.year:04d}-{v:%m-%d %H:%M:%S.%f}"


def _time_text(v: dt.time) -> str:
    return v.strftime("%H:%M:%S.%f") + (v.strftime("%z") if v.tzinfo is not None else "")


# SQLite has no decimal type: hand Decimals to it as text, which NUMERIC affinity stores as an
# exact integer or a REAL, instead of letting the driver refuse them. Dates and times go as
# SQLAlchemy stores them (so that filters, which SQLAlchemy renders, compare alike), and
# dualwrite's own value types as their text.
sqlite3.register_adapter(Decimal, str)
sqlite3.register_adapter(dt.date, lambda v: v.isoformat())
sqlite3.register_adapter(dt.datetime, _datetime_text)
sqlite3.register_adapter(dt.time, _time_text)
sqlite3.register_adapter(dt.timedelta, text_of)
sqlite3.register_adapter(uuid.UUID, str)
for _cls in (Interval, Infinite, EndOfDay, TemporalText, ipaddress.IPv4Address,
             ipaddress.IPv6Address, ipaddress.IPv4Interface, ipaddress.IPv6Interface,
             ipaddress.IPv4Network, ipaddress.IPv6Network):
    sqlite3.register_adapter(_cls, str)


def create_sqlite_engine(url: str, *, wal: bool = False) -> sa.Engine:
    """An engine with foreign keys enforced and a busy timeout instead of instant 'locked'.

    ``wal`` (dualwrite's own state store only, never an application database, whose commits
    across two files need the rollback journal): write-ahead log with full sync, so each
    commit is durable with a single fsync and readers do not block the writer."""
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        if wal:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    return engine


#: SQLite result code name (sqlite3's ``exc.sqlite_errorname``) -> what it means to dualwrite
#: (docs/operations.md, "How errors are classified"). Looked up by the extended code
#: (SQLITE_CONSTRAINT_UNIQUE), then by its primary code (SQLITE_BUSY for SQLITE_BUSY_SNAPSHOT).
#: Errors the sqlite3 module raises itself (a parameter it cannot bind) carry no code and are
#: read by their words (see sql.fault_by_text).
SQLITE_ERROR_CLASSES: dict[str, Fault] = {
    "SQLITE_BUSY": Fault.TRANSIENT,      # another connection holds the lock (past the timeout)
    "SQLITE_LOCKED": Fault.TRANSIENT,    # a table locked within the same connection
    "SQLITE_CONSTRAINT_UNIQUE": Fault.UNIQUE,
    "SQLITE_CONSTRAINT_PRIMARYKEY": Fault.UNIQUE,
    "SQLITE_CONSTRAINT_FOREIGNKEY": Fault.FOREIGN_KEY,
    "SQLITE_CONSTRAINT_NOTNULL": Fault.NOT_NULL,
    "SQLITE_CONSTRAINT_CHECK": Fault.CHECK,
    "SQLITE_CONSTRAINT": Fault.CONSTRAINT,  # another one (a trigger's RAISE(ABORT), ...)
    "SQLITE_MISMATCH": Fault.VALUE,      # a value of the wrong type for a rowid key
    "SQLITE_TOOBIG": Fault.VALUE,        # a value over SQLite's size limit
    "SQLITE_CANTOPEN": Fault.TERMINAL,   # the file or its directory cannot be opened
}


_SQLITE_COLUMN_REPORT = re.compile(r"(?:NOT NULL|UNIQUE) constraint failed: (?:\w+\.)?(\w+)")


class SqliteConnector(SqlConnector):
    capabilities = Capabilities(attach=True, capture=True)
    # A reader holding a SHARED lock would block the writer's COMMIT: read in short batches.
    stream_reads_while_writing = False
    database_name = "SQLite"
    error_classes = SQLITE_ERROR_CLASSES

    def _error_code(self, orig: BaseException) -> str | None:
        name = getattr(orig, "sqlite_errorname", None)
        return name if isinstance(name, str) and name else None

    def _classify_code(self, code: str | int) -> Fault | None:
        code = str(code)
        return SQLITE_ERROR_CLASSES.get(code) or SQLITE_ERROR_CLASSES.get(
            "_".join(code.split("_")[:2]))

    def _violated(self, orig: BaseException) -> tuple[str | None, str | None]:
        # "NOT NULL constraint failed: t.c", "UNIQUE constraint failed: t.a, t.b": the
        # message is SQLite's only report of the column (a foreign key's names none)
        m = _SQLITE_COLUMN_REPORT.search(str(orig))
        return (m.group(1), None) if m else (None, None)

    def _create_engine(self, url: str) -> sa.Engine:
        return create_sqlite_engine(url)

    # -- types: SQLite keeps what it is given; the declared type says what it means --------
    def column_type(self, column: sa.Column[Any], catalog: str) -> tuple[Kind, Facets]:
        kind, f = super().column_type(column, catalog)
        if kind is Kind.FLOAT:
            # a REAL keeps ±Infinity, stores NaN as NULL and -0.0 as 0
            return kind, replace(f, specials=frozenset({INF, NEG_INF}))
        if kind is Kind.DECIMAL:
            # NUMERIC affinity keeps a number as an integer or a REAL (15 significant
            # digits); NaN and Infinity as text
            return kind, replace(f, significant=15, specials=frozenset({NAN, INF, NEG_INF}))
        if kind is Kind.INTEGER:
            return kind, replace(f, precision=64)
        if kind is Kind.STRING:
            return kind, replace(f, fixed=False)
        if kind in (Kind.DATE, Kind.DATETIME):
            return kind, replace(f, specials=TEMPORAL_SPECIALS)
        if kind is Kind.TIME:
            return kind, replace(f, specials=frozenset({END_OF_DAY}))
        return kind, f

    def _value_loader(self, column: Column) -> Callable[[Any], Any] | None:
        return _LOADERS.get(column.kind)

    def _bulk_insert(self, conn: sa.Connection, table: sa.Table, columns: list[str],
                     rows: Sequence[Row]) -> None:
        # executemany on the raw cursor: the Core path builds a dict per row, which doubles
        # the cost of large initial syncs for no benefit here.
        quoted = ", ".join(self.engine.dialect.identifier_preparer.quote(c) for c in columns)
        name = self.engine.dialect.identifier_preparer.quote(table.name)
        marks = ", ".join("?" for _ in columns)
        conn.exec_driver_sql(f"INSERT INTO {name} ({quoted}) VALUES ({marks})",
                             [tuple(_adapt(v) for v in r) for r in rows])


    @contextmanager
    def transactional(self, conn: sa.Connection) -> Iterator[None]:
        # The echo guard (see dualwrite.connectors.capture): a row in dualwrite_origin that
        # only this transaction sees, inserted first and deleted before commit.
        with super().transactional(conn):
            schemas = self._origin_schemas(conn)
            for schema in schemas:
                conn.exec_driver_sql(f"INSERT INTO {schema}.dualwrite_origin (x) VALUES (1)")
            yield
            for schema in schemas:
                conn.exec_driver_sql(f"DELETE FROM {schema}.dualwrite_origin")

    @staticmethod
    def _origin_schemas(conn: sa.Connection) -> list[str]:
        out = []
        for (schema,) in conn.exec_driver_sql("SELECT name FROM pragma_database_list "
                                              "WHERE name <> 'temp'").all():
            found = conn.exec_driver_sql(
                f"SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' "
                "AND name = 'dualwrite_origin'").first()
            if found:
                out.append(str(schema))
        return out

    #: the write transaction's lock already covers the whole database
    locks_rows = False

    def capture_dialect(self) -> Dialect:
        from dualwrite.connectors.sqlite.dialect import SqliteDialect

        return SqliteDialect()

    def _unmark_origin(self, conn: sa.Connection) -> None:
        for schema in self._origin_schemas(conn):
            conn.exec_driver_sql(f"DELETE FROM {schema}.dualwrite_origin")

    def file_path(self) -> str:
        path = self.engine.url.database
        if not path or path == ":memory:":
            raise ConfigError(f"environment {self.name!r}: live sync needs a SQLite file, not "
                              "an in-memory database", hint="use sqlite:///path/to/file.db",
                              code="DW201")
        return path

    def journal_mode(self) -> str:
        return str(self.execute("PRAGMA journal_mode")[0][0]).lower()

    @contextmanager
    def attached_transaction(self, other: Connector
                             ) -> Iterator[tuple[WriteSession, WriteSession]]:
        """One transaction over two SQLite files: ``other``'s file ATTACHed to this one's
        connection, so one COMMIT covers both. SQLite makes that commit atomic across the
        files with a super-journal, which exists only in rollback-journal modes: a database in
        WAL mode is refused."""
        if not isinstance(other, SqliteConnector):
            raise ConfigError(
                f"environment {other.name!r} ({type(other).__name__}) cannot be attached to "
                f"SQLite environment {self.name!r}", hint="pair two SQLite files",
                code="DW204")
        right = other
        for c in (self, right):
            mode = c.journal_mode()
            if mode == "wal":
                raise ConfigError(
                    f"environment {c.name!r}: SQLite database {c.file_path()} is in WAL mode; "
                    "a commit across two SQLite files is atomic only with the rollback journal",
                    hint="switch it back: sqlite3 FILE 'PRAGMA journal_mode=DELETE'",
                    code="DW202")
        with self.translating("attach"):
            conn = self.engine.connect()
        try:
            with self.translating("attach"):
                conn.exec_driver_sql("ATTACH DATABASE ? AS dw_right", (right.file_path(),))
                conn.commit()  # ATTACH runs outside any transaction; end SQLAlchemy's autobegin
            try:
                view = _AttachedView(right, self.engine)
                with self.transactional(conn):
                    yield SqlWriteSession(self, conn), SqlWriteSession(view, conn)
            finally:
                with self.translating("detach"):
                    conn.exec_driver_sql("DETACH DATABASE dw_right")
                    conn.commit()
        finally:
            conn.close()


class _AttachedView(SqliteConnector):
    """The right-hand SQLite connector seen through the left one's connection, where its
    tables live in the schema ``dw_right``."""

    def __init__(self, right: SqliteConnector, engine: sa.Engine) -> None:
        super().__init__(right.name, right.url, engine=engine)
        self.right = right

    def table(self, name: str) -> sa.Table:
        t = self._tables.get(name)
        if t is None:
            t = self.right.table(name).to_metadata(sa.MetaData(), schema="dw_right")
            self._tables[name] = t
        return t

    def describe(self, table: str) -> TableSchema:
        return self.right.describe(table)

    def _bulk_insert(self, conn: sa.Connection, table: sa.Table, columns: list[str],
                     rows: Sequence[Row]) -> None:
        stmt = sa.insert(table).values({table.c[c]: untyped(c) for c in columns})
        conn.execute(stmt, [dict(zip(columns, r, strict=True)) for r in rows])


def _adapt(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)
    return v


# -- reading: the declared type says what the stored text or number means -------------------

def _temporal(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    def load(v: Any) -> Any:
        if not isinstance(v, str):
            return v
        special = {"infinity": INFINITY, "-infinity": MINUS_INFINITY}.get(v.strip().lower())
        if special is not None:
            return special
        try:
            return parse(v)
        except ValueError:
            return TemporalText(v)

    return load


def _date(text: str) -> dt.date:
    if len(text) == 10:
        return dt.date.fromisoformat(text)
    moment = dt.datetime.fromisoformat(text)
    if moment.time() != dt.time():
        raise ValueError(text)
    return moment.date()


def _decimal(v: Any) -> Any:
    if isinstance(v, float):
        return decimal_of_float(v) if v == v else v  # NaN: as SQLite holds it
    if isinstance(v, int) and not isinstance(v, bool):
        return Decimal(v)
    if isinstance(v, str):
        try:
            return Decimal(v.strip())
        except InvalidOperation:
            return v
    return v


def _boolean(v: Any) -> Any:
    return bool(v) if isinstance(v, int) and v in (0, 1) else v


def _json(v: Any) -> Any:
    """A column declared JSON has numeric affinity: a document that is a bare number comes
    back as an INTEGER or a REAL."""
    if isinstance(v, str):
        return JsonText(v)
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return JsonText(repr(v))
    return v


_LOADERS: dict[Kind, Callable[[Any], Any]] = {
    Kind.DATE: _temporal(_date),
    Kind.DATETIME: _temporal(dt.datetime.fromisoformat),
    Kind.TIME: _temporal(parse_time),
    Kind.DECIMAL: _decimal,
    Kind.BOOLEAN: _boolean,
    Kind.JSON: _json,
}
