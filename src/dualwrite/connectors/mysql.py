"""MariaDB / MySQL through PyMySQL: multi-row INSERT for bulk loads, XA two-phase commit."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from pymysql import converters
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql

from dualwrite.connectors.base import Capabilities, Row
from dualwrite.connectors.sql import SqlConnector

#: server error codes that mean "this row was rejected", whatever exception class PyMySQL uses:
#: check constraint, NOT NULL, duplicate key, too long, out of range, bad value, foreign key
CONSTRAINT_CODES = {4025, 1048, 1062, 1406, 1264, 1366, 1292, 1451, 1452, 1216, 1217, 1265}


def _escape_datetime(value: dt.datetime, mapping: Any = None) -> str:
    """A datetime as a literal for a DATETIME column: one with a zone is first put in UTC.
    PyMySQL's own escape drops the zone, so 12:00 UTC read from a PostgreSQL session in
    Paris (13:00+01:00) was stored as 13:00; dualwrite takes a value without a zone as UTC
    everywhere else."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return str(converters.escape_datetime(value, mapping))


#: PyMySQL's conversions, datetimes with a zone written in UTC
_CONVERSIONS = {**converters.conversions, dt.datetime: _escape_datetime}


class MySqlConnector(SqlConnector):
    capabilities = Capabilities(two_phase=True, bulk_copy=False, transactional_ddl=False,
                                capture=True)

    def __init__(self, name: str, url: str, *, engine: sa.Engine | None = None) -> None:
        #: (table, column) -> character set, learnt when checking a key's collation
        self._charsets: dict[tuple[str, str], str] = {}
        super().__init__(name, url, engine=engine)

    def _create_engine(self, url: str) -> sa.Engine:
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

    def _bulk_insert(self, conn: sa.Connection, table: sa.Table, columns: list[str],
                     rows: Sequence[Row]) -> None:
        # Tuples straight to the driver: PyMySQL folds an executemany of one INSERT ... VALUES
        # into multi-row INSERTs; the Core path would first build a dict per row.
        quote = self.engine.dialect.identifier_preparer.quote
        marks = ", ".join("%s" for _ in columns)
        conn.exec_driver_sql(
            f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
            f"VALUES ({marks})", list(rows))

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

    def _is_constraint(self, exc: sa_exc.DBAPIError) -> bool:
        args: tuple[Any, ...] = tuple(getattr(exc.orig, "args", ()))
        return bool(args) and args[0] in CONSTRAINT_CODES

    def _column_is_binary_ordered(self, table: str, column: str) -> bool:
        with self.engine.connect() as conn:
            row = conn.execute(sa.text(
                "SELECT COLLATION_NAME, CHARACTER_SET_NAME FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t AND COLUMN_NAME = :c"),
                {"t": table, "c": column}).first()
        if row is None or row[0] is None:
            return True
        self._charsets[(table, column)] = row[1]
        return str(row[0]).endswith("_bin") or row[0] == "binary"

    def _binary_order_expr(self, col: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        table = getattr(col, "table", None)
        charset = self._charsets.get((getattr(table, "name", ""), getattr(col, "name", "")))
        if charset == "utf8mb4":
            return sa.collate(col, "utf8mb4_bin")
        if charset in ("utf8mb3", "utf8"):
            return sa.collate(col, "utf8mb3_bin")
        return sa.cast(col, mysql.BINARY())
