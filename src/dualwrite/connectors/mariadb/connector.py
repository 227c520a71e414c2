"""MariaDB / MySQL through PyMySQL: multi-row INSERTs for batches, ``LOAD DATA LOCAL INFILE``
for initial sync's bulk path, XA two-phase commit; capture by triggers (their SQL in
``dialect.py``)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from pymysql import converters
from pymysql.constants import FIELD_TYPE
from sqlalchemy import event
from sqlalchemy.dialects import mysql

from dualwrite.connectors.base import BulkField, Capabilities, Row
from dualwrite.connectors.capture import (
    Dialect,
)
from dualwrite.connectors.sql import Fault, SqlConnector, qualified, raw, split_table
from dualwrite.errors import ConstraintViolation
from dualwrite.model.codec import parse_duration
from dualwrite.model.schema import END_OF_DAY, Column, Facets, Kind
from dualwrite.model.values import JsonText, TemporalText

#: MariaDB / MySQL error number (PyMySQL's ``exc.args[0]``) -> what it means to dualwrite
#: (docs/operations.md, "How errors are classified"). A rejected row is known by its number,
#: whatever exception class PyMySQL raises for it. 0 (PyMySQL's closed connection) is no
#: code: such an error is read by its words (see sql.fault_by_text).
MY_ERROR_CLASSES: dict[int, Fault] = {
    2002: Fault.TRANSIENT,    # can't connect through the socket
    2003: Fault.TRANSIENT,    # can't connect (refused, unreachable)
    2006: Fault.TRANSIENT,    # server has gone away
    2013: Fault.TRANSIENT,    # lost connection during a query
    1927: Fault.TRANSIENT,    # connection was killed
    4031: Fault.TRANSIENT,    # disconnected by the server (inactivity)
    1205: Fault.TRANSIENT,    # lock wait timeout
    1213: Fault.TRANSIENT,    # deadlock
    1062: Fault.UNIQUE,       # duplicate entry
    1451: Fault.FOREIGN_KEY,  # a child row references it
    1452: Fault.FOREIGN_KEY,  # no parent row
    1216: Fault.FOREIGN_KEY,  # (the same, older servers)
    1217: Fault.FOREIGN_KEY,
    1048: Fault.NOT_NULL,     # column cannot be null
    3819: Fault.CHECK,        # check constraint violated (MySQL)
    4025: Fault.CHECK,        # check constraint failed (MariaDB)
    1264: Fault.VALUE,        # out of range
    1265: Fault.VALUE,        # data truncated
    1292: Fault.VALUE,        # incorrect date/time value
    1366: Fault.VALUE,        # incorrect value for the column
    1406: Fault.VALUE,        # data too long
    1045: Fault.CREDENTIALS,  # access denied (user or password)
    1698: Fault.CREDENTIALS,  # access denied (an auth plugin)
    1044: Fault.GRANTS,       # access denied to the database
    1049: Fault.DATABASE,     # unknown database
    1142: Fault.PRIVILEGE,    # command denied on a table
}


def _escape_datetime(value: dt.datetime, mapping: Any = None) -> str:
    """A datetime as a literal for a DATETIME column: one with a zone is first put in UTC.
    PyMySQL's own escape drops the zone, so 12:00 UTC read from a PostgreSQL session in
    Paris (13:00+01:00) was stored as 13:00; dualwrite takes a value without a zone as UTC
    everywhere else."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return str(converters.escape_datetime(value, mapping))


def _read_time(text: Any) -> Any:
    """MariaDB's TIME: a time of day when it is one, END_OF_DAY at 24:00:00, else a duration
    (``timedelta``); PyMySQL's own gives a timedelta, which SQLAlchemy then wrapped round
    midnight (24:00:00 became 00:00:00)."""
    try:
        return parse_duration(text.decode() if isinstance(text, bytes) else text)
    except ValueError:
        return TemporalText(str(text))


def _temporal(read: Callable[[Any], Any], cls: type) -> Callable[[Any], Any]:
    """PyMySQL's date reader, with a value it cannot read ('0000-00-00') as TemporalText
    instead of a bare string."""
    def load(text: Any) -> Any:
        v = read(text)
        if isinstance(v, cls):
            return v
        return TemporalText(v.decode() if isinstance(v, bytes) else str(v))

    return load


#: PyMySQL's conversions, datetimes with a zone written in UTC, times read as they are
_CONVERSIONS: dict[Any, Any] = {
    **converters.conversions, dt.datetime: _escape_datetime,
    FIELD_TYPE.TIME: _read_time,
    FIELD_TYPE.DATE: _temporal(converters.convert_date, dt.date),
    FIELD_TYPE.NEWDATE: _temporal(converters.convert_date, dt.date),
    FIELD_TYPE.DATETIME: _temporal(converters.convert_datetime, dt.datetime),
    FIELD_TYPE.TIMESTAMP: _temporal(converters.convert_datetime, dt.datetime),
}
_JSON_CHECK = re.compile(r"json_valid\(`((?:[^`]|``)+)`\)", re.IGNORECASE)


class MySqlConnector(SqlConnector):
    capabilities = Capabilities(two_phase=True, capture=True,
                                bulk_import=frozenset({"copy-text-portable"}),
                                bulk_export=frozenset({"copy-text", "copy-text-portable"}),
                                bulk_load_checks=True, supports_json_log=True)
    database_name = "MariaDB"
    error_classes = MY_ERROR_CLASSES

    def _error_code(self, orig: BaseException) -> int | None:
        code = next(iter(getattr(orig, "args", ())), None)  # PyMySQL: (errno, message)
        return code if isinstance(code, int) and code else None

    def _unmark_origin(self, conn: sa.Connection) -> None:
        conn.exec_driver_sql("SET @dualwrite_origin = NULL")
        # the pool's checkin hook restores the mark (see _create_engine)
        conn.connection._connection_record.info["dw_unmarked"] = True

    def capture_dialect(self) -> Dialect:
        from dualwrite.connectors.mariadb.dialect import MariaDbDialect

        return MariaDbDialect()

    def __init__(self, name: str, url: str, *, engine: sa.Engine | None = None,
                 schema: str | None = None) -> None:
        #: (table, column) -> character set, learnt when checking a key's collation
        self._charsets: dict[tuple[str, str], str] = {}
        #: the engine of bulk loads (LOAD DATA LOCAL INFILE), made at the first one
        self._loader: sa.Engine | None = None
        super().__init__(name, url, engine=engine, schema=schema)

    def _create_engine(self, url: str, *, local_infile: bool = False) -> sa.Engine:
        if self.default_schema:
            # MariaDB's schemas are databases: the environment's `schema:` is the database
            # the connection uses (its unqualified tables, and dualwrite's own)
            url = sa.engine.make_url(url).set(database=self.default_schema).render_as_string(
                hide_password=False)
        if "charset=" not in url:
            url += ("&" if "?" in url else "?") + "charset=utf8mb4"
        # No pre-ping, as for PostgreSQL (see PostgresConnector._create_engine). No reset on
        # return either: PyMySQL's rollback() is a round trip even with nothing to undo, and
        # every connection dualwrite returns has already committed or rolled back (the
        # Connection object ends its own transaction before it returns to the pool).
        # @dualwrite_origin marks dualwrite's own sessions: the capture triggers skip what
        # dualwrite writes itself (no echo). The sessions run in UTC (TIMESTAMP columns read
        # and written as UTC), and datetimes with a zone are written in UTC (_CONVERSIONS).
        # They read committed, as PostgreSQL's do: the applier locks a target row, then looks
        # at the change log for changes the application committed to it meanwhile, and under
        # REPEATABLE READ that look would read an older snapshot and miss them (a lost
        # update); a locking read of a missing key would also lock the gap around it, holding
        # up the application's inserts there.
        # A server that stops answering is not waited for without end: a connection attempt
        # gives up after 10 s, a read or write (PyMySQL reads the server's greeting under
        # this one too) after 60 s, above the 50 s a statement may wait for a lock by
        # default. The URL may set these.
        args: dict[str, Any] = {"connect_timeout": 10, "read_timeout": 60,
                                "write_timeout": 60}
        for name in sa.engine.make_url(url).query:
            args.pop(name, None)
        if local_infile:
            # only bulk loads' connections let the server ask for a client file: the file
            # is always the one their own LOAD DATA names
            args["local_infile"] = True
        engine = sa.create_engine(url, pool_size=10, max_overflow=20, pool_recycle=3600,
                                  pool_reset_on_return=None, isolation_level="READ COMMITTED",
                                  connect_args={**args,
                                                "init_command": "SET @dualwrite_origin = 1, "
                                                                "time_zone = '+00:00'",
                                                "conv": _CONVERSIONS})

        @event.listens_for(engine, "checkin")
        def _remark(dbapi_conn: Any, record: Any) -> None:
            # a session that let its own writes be captured gets its mark back
            if record.info.pop("dw_unmarked", False) and dbapi_conn is not None:
                with dbapi_conn.cursor() as cur:
                    cur.execute("SET @dualwrite_origin = 1")

        return engine

    # -- types -------------------------------------------------------------------------------
    def _catalog(self, table: str) -> dict[str, str]:
        """COLUMN_TYPE of each column, and JSON for a LONGTEXT that a ``json_valid`` check
        makes a JSON column (MariaDB's JSON is such a LONGTEXT)."""
        with self.engine.connect() as conn:
            schema, name = split_table(table)
            rows = conn.execute(sa.text(
                "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = COALESCE(:s, DATABASE()) AND TABLE_NAME = :t"),
                {"s": schema, "t": name}).all()
            checks = conn.execute(sa.text(
                "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
                "WHERE CONSTRAINT_SCHEMA = COALESCE(:s, DATABASE()) AND TABLE_NAME = :t"),
                {"s": schema, "t": name}).all()
        out = {str(r[0]): _upper_name(str(r[1])) for r in rows}
        for (clause,) in checks:
            for m in _JSON_CHECK.finditer(str(clause)):
                name = m.group(1).replace("``", "`")
                if out.get(name, "").endswith("TEXT"):
                    out[name] = "JSON"
        return out

    def _collations(self, table: str) -> dict[str, tuple[str | None, bool]]:
        schema, name = split_table(table)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = COALESCE(:s, DATABASE()) AND TABLE_NAME = :t "
                "AND COLLATION_NAME IS NOT NULL"), {"s": schema, "t": name}).all()
        # utf8mb4_general_ci, utf8mb4_uca1400_ai_ci: case-insensitive; *_bin, *_cs: not
        return {str(r[0]): (str(r[1]), "_ci" in str(r[1]).lower()) for r in rows}

    def column_type(self, column: sa.Column[Any], catalog: str) -> tuple[Kind, Facets]:
        kind, f = super().column_type(column, catalog)
        t = column.type
        base = catalog.split("(")[0].split()[0] if catalog else ""
        if base == "JSON":
            return Kind.JSON, f
        if base == "INET6":
            return Kind.NETWORK, replace(f, network="inet6")
        if base in ("YEAR", "BIT"):
            return Kind.OTHER, f
        if kind is Kind.FLOAT:
            return kind, replace(f, precision=24 if base == "FLOAT" else 53,
                                 unsigned=bool(getattr(t, "unsigned", False)))
        if kind is Kind.DECIMAL:
            return kind, replace(f, unsigned=bool(getattr(t, "unsigned", False)))
        if kind is Kind.DATETIME:
            years = (1970, 2038) if base == "TIMESTAMP" else None
            return kind, replace(f, fraction=getattr(t, "fsp", None) or 0, years=years)
        if kind is Kind.TIME:
            return kind, replace(f, fraction=getattr(t, "fsp", None) or 0, duration=True,
                                 specials=frozenset({END_OF_DAY}))
        return kind, f

    def _select_expr(self, t: sa.Table, column: str) -> sa.ColumnElement[Any]:
        col = t.c[column]
        if isinstance(col.type, mysql.FLOAT):
            # the text protocol prints a FLOAT with 6 digits (16777216 as 16777200): read it
            # as the DOUBLE holding its exact value
            return raw(sa.cast(col, mysql.DOUBLE()).label(column))
        return raw(col)

    def _value_loader(self, column: Column) -> Callable[[Any], Any] | None:
        if column.kind is Kind.JSON:
            return JsonText
        if column.kind is Kind.UUID:
            return _uuid
        if column.kind is Kind.NETWORK:
            return _address
        return None

    def _bulk_insert(self, conn: sa.Connection, table: sa.Table, columns: list[str],
                     rows: Sequence[Row]) -> None:
        # Tuples straight to the driver: PyMySQL folds an executemany of one INSERT ... VALUES
        # into multi-row INSERTs; the Core path would first build a dict per row.
        quote = self.engine.dialect.identifier_preparer.quote
        marks = ", ".join("%s" for _ in columns)
        target = f"{quote(table.schema)}.{quote(table.name)}" if table.schema else \
            quote(table.name)
        conn.exec_driver_sql(
            f"INSERT INTO {target} ({', '.join(quote(c) for c in columns)}) "
            f"VALUES ({marks})", list(rows))

    def _bulk_match(self, c: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        # compared as bytes; the pairs' values still bound as text
        return sa.type_coerce(sa.cast(c, sa.BINARY), c.type) if isinstance(c.type, sa.String) \
            else c

    @contextmanager
    def bulk_export(self, table: str, fields: Sequence[BulkField], *, key: Sequence[str],
                    where: Any, after: Row | None, upto: Row | None,
                    fmt: str) -> Iterator[Iterator[bytes]]:
        """MariaDB has no bulk export to a client: the server writes each row as one line of
        COPY text (``CONCAT`` of the escaped values, ``\\N`` for NULL), and the driver
        streams one text column per row instead of decoding every value."""
        t = self.table(table)
        exprs, exact = self._bulk_select(t, fields, fmt)
        parts: list[Any] = []
        for i, e in enumerate(exprs):
            text: Any = sa.cast(e, sa.CHAR)
            # COPY text escapes: the backslash first, then what would end a field or a line
            for char, escaped in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"),
                                  ("\r", "\\r")):
                text = sa.func.replace(text, char, escaped)
            parts += ([sa.literal("\t")] if i else []) + [sa.func.ifnull(text, "\\N")]
        stmt = sa.select(sa.func.concat(*parts)).select_from(t).where(
            *self._range(t, key, after, upto), *self._where(t, where), *exact)
        with self.translating(f"read {table}"):
            conn = self.engine.connect()
        try:
            def blocks() -> Iterator[bytes]:
                with self.translating(f"read {table}"):
                    result = conn.execution_options(stream_results=True).execute(stmt)
                    while True:
                        lines = result.scalars().fetchmany(2000)
                        if not lines:
                            return
                        yield ("\n".join(lines) + "\n").encode()

            yield blocks()
        finally:
            conn.close()

    def bulk_load(self, table: str, columns: Sequence[str], blocks: Iterable[bytes], *,
                  fmt: str) -> int:
        """``LOAD DATA LOCAL INFILE`` of the blocks, spooled to a temporary file first (the
        driver sends a file). A local load turns rejected rows into warnings and goes on
        (the server cannot stop the client's stream), so any warning, or a row count other
        than the lines sent, rolls the load back as a ConstraintViolation."""
        t = self.table(table)
        quote = self.engine.dialect.identifier_preparer.quote
        target = f"{quote(t.schema)}.{quote(t.name)}" if t.schema else quote(t.name)
        with tempfile.NamedTemporaryFile(prefix="dualwrite-load-", suffix=".tsv") as f:
            lines = 0
            for block in blocks:
                f.write(block)
                lines += block.count(b"\n")
            f.flush()
            if self._loader is None:
                self._loader = self._create_engine(self.url, local_infile=True)
            with self.translating("begin"):
                conn = self._loader.connect()
            try:
                with self.transactional(conn), self.translating(f"insert into {table}"):
                    loaded = conn.exec_driver_sql(
                        f"LOAD DATA LOCAL INFILE %s INTO TABLE {target} CHARACTER SET utf8mb4 "
                        "FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' "
                        f"LINES TERMINATED BY '\\n' ({', '.join(quote(c) for c in columns)})",
                        (f.name,)).rowcount
                    warned = conn.exec_driver_sql("SHOW WARNINGS LIMIT 1").all()
                    if warned or loaded != lines:
                        first = warned[0][2] if warned else "no warning"
                        raise ConstraintViolation(
                            f"bulk load into {table} loaded {loaded} of {lines} rows "
                            f"({first})", environment=self.name, kind="value",
                            hint="the rows are written one by one instead")
            finally:
                conn.close()
        return int(loaded)

    def close(self) -> None:
        if self._loader is not None:
            self._loader.dispose()
            self._loader = None
        super().close()

    def recover(self, prefix: str) -> list[str]:
        with self.translating("XA RECOVER"), self._autocommit() as cur:
            cur.execute("XA RECOVER")
            rows = cur.fetchall()
        # columns: formatID, gtrid_length, bqual_length, data (gtrid + bqual)
        xids = [(r[3].decode() if isinstance(r[3], bytes) else str(r[3]))[:int(r[1])]
                for r in rows]
        return sorted(x for x in xids if x.startswith(prefix))

    def finish_prepared(self, xid: str, *, commit: bool) -> None:
        verb = "COMMIT" if commit else "ROLLBACK"
        with self.translating(f"XA {verb} {xid}"), self._autocommit() as cur:
            cur.execute(f"XA {verb} %s", (xid,))

    @contextmanager
    def _autocommit(self) -> Iterator[Any]:
        """A raw cursor on a fresh autocommit connection: XA COMMIT of a branch prepared by
        another (dead) session fails inside any local transaction."""
        raw = self.engine.raw_connection()
        try:
            driver: Any = raw.driver_connection
            driver.autocommit(True)
            cur = driver.cursor()
            try:
                yield cur
            finally:
                cur.close()
                driver.autocommit(False)
        finally:
            raw.close()

    def _column_is_binary_ordered(self, table: str, column: str) -> bool:
        schema, name = split_table(table)
        with self.engine.connect() as conn:
            row = conn.execute(sa.text(
                "SELECT COLLATION_NAME, CHARACTER_SET_NAME FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = COALESCE(:s, DATABASE()) AND TABLE_NAME = :t "
                "AND COLUMN_NAME = :c"), {"s": schema, "t": name, "c": column}).first()
        if row is None or row[0] is None:
            return True
        self._charsets[(table, column)] = row[1]
        return str(row[0]).endswith("_bin") or row[0] == "binary"

    def _binary_order_expr(self, col: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        table = getattr(col, "table", None)
        charset = self._charsets.get((qualified(table) if isinstance(table, sa.Table) else "",
                                      getattr(col, "name", "")))
        if charset == "utf8mb4":
            return sa.collate(col, "utf8mb4_bin")
        if charset in ("utf8mb3", "utf8"):
            return sa.collate(col, "utf8mb3_bin")
        return sa.cast(col, mysql.BINARY())


def _uuid(v: Any) -> Any:
    return v if isinstance(v, uuid.UUID) else uuid.UUID(v.decode() if isinstance(v, bytes)
                                                        else str(v))


def _address(v: Any) -> Any:
    return ipaddress.ip_address(v.decode() if isinstance(v, bytes) else str(v))


def _upper_name(column_type: str) -> str:
    """``decimal(10,2) unsigned`` -> ``DECIMAL(10,2) UNSIGNED``; ``enum('a','b')`` keeps its
    values as they are."""
    head, paren, rest = column_type.partition("(")
    if not paren:
        return column_type.upper()
    inner, close, tail = rest.rpartition(")")
    if head.upper() in _INTEGERS and column_type.lower() != "tinyint(1)":
        return f"{head.upper()}{tail.upper()}"  # the display width says nothing of values
    return f"{head.upper()}({inner}){tail.upper()}" if close else column_type.upper()


_INTEGERS = {"TINYINT", "SMALLINT", "MEDIUMINT", "INT", "INTEGER", "BIGINT"}
