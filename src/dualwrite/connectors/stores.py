"""Databases dualwrite keeps its own state in: what the engine's state store needs to know of
the database behind a URL, so that the engine names none (an embedded file database, a
server).

The state store (:mod:`dualwrite.engine.state`) lives in any SQLAlchemy database: a SQLite
file by default, PostgreSQL for several hosts. Which one a URL names decides how it is opened
(a file made private first, write-ahead logging; or connection timeouts and keepalives),
how relative paths in a config resolve, and how commit decisions are written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlalchemy as sa

#: the state store's URL where a config names none: a file beside the config
DEFAULT_STATE_URL = "sqlite:///dualwrite-state.db"
_FILE_PREFIX = "sqlite:///"


def resolve_file_url(url: str, base: Path) -> str:
    """``url`` with a relative database file path made absolute against ``base`` (a URL of
    another kind, an absolute path or an in-memory database as it is)."""
    if url.startswith(_FILE_PREFIX) and not url.startswith(_FILE_PREFIX + "/"):
        rest = url[len(_FILE_PREFIX):]
        if rest and rest != ":memory:" and not rest.startswith(":"):
            return _FILE_PREFIX + str((base / rest).resolve())
    return url


def database_file(url: str) -> Path | None:
    """The file of a database that lives in one file (SQLite), or None (a server, or an
    in-memory or URI-named database)."""
    if not url.startswith("sqlite"):
        return None
    import sqlalchemy as sa

    database = sa.engine.make_url(url).database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def store_engine(url: str) -> sa.Engine:
    """An engine for a state store at ``url``. A file database: foreign keys enforced, a busy
    timeout, write-ahead log with full sync (each commit durable with one fsync, readers do
    not block the writer). A server: pre-pinged connections, and a server that stops
    answering is not waited for without end (the connectors' timeouts and keepalives; the
    URL's query wins)."""
    import sqlalchemy as sa

    if url.startswith("sqlite"):
        from dualwrite.connectors.sqlite.connector import create_sqlite_engine

        return create_sqlite_engine(url, wal=True)
    args: dict[str, Any] = {}
    if sa.engine.make_url(url).get_backend_name() == "postgresql":
        from dualwrite.connectors.postgresql.connector import CONNECT_DEFAULTS

        args = {k: v for k, v in CONNECT_DEFAULTS.items()
                if k not in sa.engine.make_url(url).query}
    return sa.create_engine(url, pool_pre_ping=True, connect_args=args)


def is_embedded(engine: sa.Engine) -> bool:
    """Whether the database runs inside this process, one writer at a time (SQLite): a batch
    of writes is then cheapest as plain DB-API calls in one transaction."""
    return engine.dialect.name == "sqlite"


def batch_decisions_sql(engine: sa.Engine, decisions: str, audit: str,
                        audit_columns: Sequence[str]) -> str | None:
    """One statement that writes, in autocommit, a batch of commit decisions into the table
    ``decisions`` (xid, decision, participants, decided_at, completed_at), their audit rows
    into ``audit`` (at, then ``audit_columns``, in the order given) and the completions noted
    since the last batch: one round trip and one flush. Its parameters: ``now``, ``xids``
    and ``parts`` (the decisions' xids and participants), ``a_<column>`` for each audit
    column (lists of equal length), ``done`` (the xids completed). Arrays, so that a batch
    of any size has the same parameters. None where the database has no such statement (a
    transaction of several statements then)."""
    if engine.dialect.name != "postgresql":
        return None
    cols = ", ".join(audit_columns)
    arrays = ", ".join(f"%(a_{c})s::text[]" for c in audit_columns)
    return (
        f"WITH d AS (INSERT INTO {decisions} (xid, decision, participants, decided_at) "
        "SELECT x, 'commit', p, %(now)s FROM unnest(%(xids)s::text[], %(parts)s::text[]) "
        f"AS t(x, p)), a AS (INSERT INTO {audit} (at, {cols}) SELECT %(now)s, {cols} FROM "
        f"unnest({arrays}) WITH ORDINALITY AS t({cols}, n) ORDER BY n) "
        f"UPDATE {decisions} SET completed_at = %(now)s WHERE xid = ANY(%(done)s::text[])")


__all__ = ["DEFAULT_STATE_URL", "batch_decisions_sql", "database_file", "is_embedded",
           "resolve_file_url", "store_engine"]
