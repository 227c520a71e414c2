"""SQLite: the embedded default for the demo and for dualwrite's own state."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from dualwrite.connectors.base import Capabilities, Row
from dualwrite.connectors.sql import SqlConnector

# SQLite has no decimal type: hand Decimals to it as text, which NUMERIC affinity stores as an
# exact integer or a REAL, instead of letting the driver refuse them.
sqlite3.register_adapter(Decimal, str)


def create_sqlite_engine(url: str) -> sa.Engine:
    """An engine with foreign keys enforced and a busy timeout instead of instant 'locked'."""
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


class SqliteConnector(SqlConnector):
    capabilities = Capabilities(two_phase=False, bulk_copy=False, attach=True)
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


def _adapt(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)
    return v
