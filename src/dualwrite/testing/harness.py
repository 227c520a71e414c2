"""What the compliance suite needs of a backend besides its connector."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import sqlalchemy as sa

from dualwrite.connectors.base import Branch, Connector


class Harness(ABC):
    """One backend under test: its connector, and the means to set up the suite's tables.

    ``enforces`` names what the database itself refuses beyond NOT NULL, unique keys and
    foreign keys, which every backend must refuse: ``"length"`` (a text longer than its
    column) and ``"check"`` (CHECK constraints)."""

    enforces: frozenset[str] = frozenset({"length", "check"})

    def __init__(self, connector: Connector) -> None:
        self.connector = connector

    @abstractmethod
    def guid_default(self) -> Any:
        """A server default (``sa.Column(server_default=...)``) that fills a text column
        with a new GUID, as CRM primary keys have."""

    @abstractmethod
    def create(self, metadata: sa.MetaData) -> None:
        """Create the tables of ``metadata`` in the backend, dropping same-named ones first,
        and make the connector forget what it learnt of them."""

    def reopen(self) -> Connector:
        """A second connector on the same database, as another process would open it (the
        suite uses it to finish two-phase branches a first one left prepared). The default
        makes one of the same class from the connector's name and URL."""
        return type(self.connector)(self.connector.name, self.connector.url)

    def abandon(self, branch: Branch) -> None:
        """Drop a branch's session as a dying process would (its socket closed, nothing
        said). The default closes the driver connection of a branch that has one."""
        conn = getattr(branch, "conn", None)
        if isinstance(conn, sa.Connection):
            conn.invalidate()

    def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` (dicts with the same keys) in one transaction."""
        if not rows:
            return
        cols = list(rows[0])
        with self.connector.transaction() as tx:
            tx.insert(table, cols, [tuple(r.get(c) for c in cols) for r in rows])

    def rows(self, table: str, key: list[str], columns: list[str] | None = None
             ) -> list[dict[str, Any]]:
        """Every row of ``table`` as dicts, in key order."""
        cols = columns or list(self.connector.describe(table).columns)
        out: list[dict[str, Any]] = []
        for batch in self.connector.read(table, cols, key=key, batch_size=10_000):
            out.extend(dict(zip(cols, r, strict=True)) for r in batch)
        return out
