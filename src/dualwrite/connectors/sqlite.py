"""SQLite: the embedded default for the demo and for dualwrite's own state."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from dualwrite.connectors.base import Capabilities, Row, WriteSession
from dualwrite.connectors.sql import SqlConnector, SqlWriteSession
from dualwrite.errors import ConfigError

# SQLite has no decimal type: hand Decimals to it as text, which NUMERIC affinity stores as an
# exact integer or a REAL, instead of letting the driver refuse them.
sqlite3.register_adapter(Decimal, str)


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


class SqliteConnector(SqlConnector):
    capabilities = Capabilities(two_phase=False, bulk_copy=False, attach=True, capture=True)
    # A reader holding a SHARED lock would block the writer's COMMIT: read in short batches.
    stream_reads_while_writing = False

    def _create_engine(self, url: str) -> sa.Engine:
        return create_sqlite_engine(url)

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
    def attached_transaction(self, right: SqliteConnector
                             ) -> Iterator[tuple[WriteSession, WriteSession]]:
        """One transaction over two SQLite files: ``right``'s file ATTACHed to this one's
        connection, so one COMMIT covers both. SQLite makes that commit atomic across the
        files with a super-journal, which exists only in rollback-journal modes: a database in
        WAL mode is refused."""
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

    def _bulk_insert(self, conn: sa.Connection, table: sa.Table, columns: list[str],
                     rows: Sequence[Row]) -> None:
        conn.execute(sa.insert(table), [dict(zip(columns, r, strict=True)) for r in rows])


def _adapt(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)
    return v
