"""Change capture inside an environment's own database: triggers into a change log.

Each environment that has a running map carries these tables of dualwrite's own:

``dualwrite_changes``
    The change log (the queue). Triggers on a mapped table append one row per changed row, in
    the writer's own transaction: the map, the source transaction id, the operation, the key,
    and the old and new values of the map's columns (as JSON objects). An update that leaves
    every mapped column as it was appends nothing. ``seq`` grows in the order changes are
    made; a transaction becomes visible in the log when it commits, all of it at once.
``dualwrite_applied``
    Applied positions: one row per (source environment, map, source transaction) applied
    into this environment, written in the same transaction as the applied rows. A change
    delivered twice (after a crash between applying it and deleting it from the source log)
    is recognised and skipped: each change takes effect once.
``dualwrite_origin`` (SQLite only)
    The echo guard, see below.
``dualwrite_wake`` (PostgreSQL only)
    The wake-up, see below. Always empty to everyone but the transaction writing to it.

**No echo.** dualwrite marks its own connections so that the triggers ignore what it writes:
a session setting on PostgreSQL (``dualwrite.origin``, given as a connection option) and a
session variable on MariaDB (``@dualwrite_origin``, set by the connection's init command).
SQLite has neither, so dualwrite inserts a row into ``dualwrite_origin`` at the start of each
of its write transactions and deletes it before commit: the row never commits, and since
SQLite admits one writer at a time, only dualwrite's own transaction ever sees it.

**Transaction ids.** PostgreSQL: ``pg_current_xact_id()`` (64-bit, never reused). MariaDB: the
InnoDB transaction id of the writing transaction (the log is versioned by transaction id; XA
transactions get one like any other). SQLite exposes none; as it serialises writers, ``seq``
order is commit order there and the applied position is a high-water mark.

**Any column name.** Everything the triggers declare is quoted and qualified (``t."n"``,
``NEW.`old```); PostgreSQL's whole-row values are ``alias.*``, which no column can shadow, and
the subqueries' own columns (``k``, ``j``) are read through aliases no table column reaches.

**The log's values.** ``old``/``new`` hold one JSON member per map column, named as the
column, in one encoding for all three databases, so that every value a column holds comes
back exactly (:func:`dualwrite.model.codec.from_log` turns a member into the Python
value the connector reads; docs/capture.md has the table):

* numbers as JSON numbers in the shortest form that reads back exactly (MariaDB ``FLOAT``
  widened to ``DOUBLE`` first: its own JSON keeps 6 digits); ``-0`` as ``-0``; what JSON has no
  number for as a string: ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (SQLite: ``"Inf"``);
* binary values as the string ``"\\x<lower-case hex>"``: PostgreSQL's own text for ``bytea``;
* text as text, converted to UTF-8 whatever the column's character set;
* dates, times and timestamps as ISO text (``timestamptz`` in UTC); the values Python has
  none for (``infinity``, ``-infinity``, ``24:00:00``, MariaDB times beyond a day) as the
  database's text;
* JSON documents (``json``/``jsonb``, MariaDB ``JSON``) as a string holding the document's
  text, so that JSON ``null`` (``"null"``) stays apart from SQL NULL (``null``);
* anything else as PostgreSQL prints it (intervals in the ``postgres`` style: months, days
  and time apart). PostgreSQL's trigger functions pin the settings this depends on
  (``bytea_output``, ``extra_float_digits``, ``IntervalStyle``, ``TimeZone``), whatever the
  writing session uses.

It is also the contract of the applier's set-based path: a PostgreSQL target reads these
texts with its own input functions (``json_to_recordset``), as an INSERT of them would.

**Schema changes never break the application's writes.** When a trigger can no longer record
a map's columns (a mapped column renamed or dropped), it records a *marker* instead of failing:
a change with op ``X`` (:data:`MARKER`) for that map, whose :attr:`Change.reason` names the
missing columns (PostgreSQL, which checks the table's columns once per statement before
reading them) or the database's error (MariaDB, whose row triggers catch it with a handler;
errors that concern the transaction, such as a deadlock, still reach the application), and
whose key is the row's where it can still be read (else empty). :meth:`CaptureLog.read`
returns markers among the other changes; :meth:`CaptureLog.check` says what is wrong with the
installed capture of a map (triggers missing or out of date, columns gone), so that it can be
shown and reinstalled. SQLite rewrites triggers itself when a column is renamed, and refuses
to drop a column a trigger uses.

**Wake-up (PostgreSQL), and applications' own two-phase commit.** A transaction that has
executed NOTIFY cannot ``PREPARE TRANSACTION``, so the triggers never notify. Instead, the first
capturing statement of a transaction inserts one row into ``dualwrite_wake``, whose deferred
constraint trigger runs at the end of the transaction: at COMMIT it notifies (the applier wakes
at once) and deletes the row; at PREPARE TRANSACTION it only deletes the row, and the applier's
poll finds the changes once they are committed. Once per transaction, not per row: the
statement triggers remember the transaction they woke for in a session setting
(``dualwrite.wake``).

**Tables in other schemas.** A map's table may be in another PostgreSQL schema or another
MariaDB database (``fin.currency``). The log and the applied positions always live in the
*connection's* schema (PostgreSQL: the first schema of dualwrite's search path, which an
environment's ``schema:`` sets; MariaDB: the URL's database, or ``schema:``): one log per
environment, read by one applier. The triggers on a table elsewhere write into it by its
qualified name: PostgreSQL's trigger functions (created in the log's schema) run with their
search path pinned to it, whatever the writing session's search path; MariaDB's triggers,
created in the table's own database as MariaDB requires, name the log's database.

Trigger and function names are derived from the map name (``dw_<hash>_<op>``), so that a map
with any name can be installed and removed, and two maps on one table each have their own.
"""

from __future__ import annotations

import datetime as dt
import re
import selectors
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa

from dualwrite.connectors.changelog import (
    _UNDECODED,
    FENCE_SOURCE,
    MARKER,
    WATERMARK,
    CaptureSpec,
    Change,
    ChangeSignal,
    columns_of_filter,
    decode_json,
    parse_time,
)
from dualwrite.connectors.sql import LINK_STORAGE, SqlWriteSession, split_table
from dualwrite.errors import LeaseLost, TerminalConnectorError
from dualwrite.model.codec import from_log
from dualwrite.model.schema import Column

if TYPE_CHECKING:
    from dualwrite.connectors.base import WriteSession
    from dualwrite.connectors.sql import SqlConnector

CHANGES = "dualwrite_changes"
#: seconds a CaptureLog trusts that its log table exists once it has seen it
EXISTS_TRUST = 5.0
#: the log's column of the map version a change was captured under
VERSION = "v"
APPLIED = "dualwrite_applied"
#: dropping applied positions of one map (see CaptureLog._unmark), at most _PRUNE_CHUNK at once
_PRUNE = sa.text(f"DELETE FROM {APPLIED} WHERE source = :s AND map = :m AND txid IN :ts"
                 ).bindparams(sa.bindparam("ts", expanding=True))
_PRUNE_CHUNK = 500
ORIGIN = "dualwrite_origin"
WAKE = "dualwrite_wake"
NOTIFY_CHANNEL = "dualwrite_changes"


# -- SQL text helpers ------------------------------------------------------------------------------
def _sql_string(text: str) -> str:
    """A standard SQL string literal (quotes doubled): PostgreSQL with
    standard_conforming_strings, SQLite."""
    return "'" + text.replace("'", "''") + "'"


def _pg_string(text: str) -> str:
    """A PostgreSQL string literal that reads the same whatever the session's
    standard_conforming_strings (trigger bodies are parsed in the writing session)."""
    if "\\" in text:
        return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
    return _sql_string(text)


def _my_string(text: str) -> str:
    """A MariaDB string literal that reads the same whatever the sql_mode (with or without
    NO_BACKSLASH_ESCAPES): a backslash is spelled CHAR(92). (Triggers are created on
    dualwrite's utf8mb4 connections, so literals are utf8mb4; an introducer would be dropped
    from the trigger's text as MariaDB keeps it.)"""
    parts = ["'" + p.replace("'", "''") + "'" for p in text.split("\\")]
    if len(parts) == 1:
        return parts[0]
    return "CONCAT(" + ", CHAR(92 USING utf8mb4), ".join(parts) + ")"


def _dq(name: str) -> str:
    """A double-quoted identifier (PostgreSQL, SQLite), whatever it holds."""
    return '"' + name.replace('"', '""') + '"'


def _bq(name: str) -> str:
    """A backquoted identifier (MariaDB), whatever it holds."""
    return "`" + name.replace("`", "``") + "`"


# -- the dialects ------------------------------------------------------------------------------
#: how a column is logged, by what its type needs (see each dialect's ``encodings``)
PLAIN, TEXT, BINARY, FLOAT32, BIT, JSON_DOC = "plain", "text", "binary", "float32", "bit", "json"


#: a named parameter (``:name``, not a ``::`` cast) of a statement given to Dialect.rows
_NAMED = re.compile(r"(?<!:):([a-z]\w*)")


def driver_rows(conn: sa.Connection, text: str, params: dict[str, Any]) -> list[Any]:
    """The rows of one query (named ``:parameters``) run through the DB-API driver itself,
    for drivers that take pyformat parameters (psycopg, PyMySQL): the change log's reads
    and bookkeeping run on every step and every poll, and spent much of their CPU in
    SQLAlchemy's statement machinery. A literal ``%`` is doubled for the driver."""
    raw: Any = conn.connection.driver_connection
    with raw.cursor() as cur:
        cur.execute(_NAMED.sub(r"%(\1)s", text.replace("%", "%%")), params)
        return list(cur.fetchall())


class Dialect(ABC):
    """The SQL of change capture (and of the delta journal) for one database. Each backend's
    package holds its own (``connectors/<backend>/dialect.py``) and hands it out from
    ``SqlConnector.capture_dialect``; the logic they share is :class:`CaptureLog`'s and
    :class:`dualwrite.connectors.delta.DeltaJournal`'s, which never ask which database
    this is."""

    #: the database's name, for messages and logs only (no code branches on it)
    name: ClassVar[str] = ""

    #: whether the log records a real source transaction id
    has_txid = True
    #: the schema (MariaDB: database) the log lives in, the connection's own; "" until
    #: :meth:`CaptureLog.locate` has asked the database
    home = ""

    def split(self, table: str) -> tuple[str | None, str]:
        """``table``'s schema (None: the log's own) and name."""
        schema, name = split_table(table)
        return (None if schema == self.home else schema), name

    def add_version_ddl(self) -> str:
        """Add the map-version column to a log made before map versions."""
        return f"ALTER TABLE {CHANGES} ADD COLUMN {VERSION} TEXT"

    @abstractmethod
    def log_ddl(self) -> list[str]:
        """Create the log and applied-position tables (idempotent)."""

    @abstractmethod
    def encodings(self, conn: sa.Connection, table: str) -> dict[str, str] | None:
        """``table``'s columns now, each with how the triggers log it (PLAIN, TEXT, ...); None
        when the table does not exist."""

    @abstractmethod
    def definitions(self, spec: CaptureSpec, encodings: dict[str, str]) -> dict[str, str]:
        """Per trigger of ``spec``, the text of its definition as the database keeps it (the
        function body on PostgreSQL, the trigger body on MariaDB, the statement on SQLite):
        what :meth:`installed` reads back after :meth:`install_ddl`."""

    @abstractmethod
    def install_ddl(self, spec: CaptureSpec, encodings: dict[str, str]) -> list[str]:
        """Create (or replace) the triggers of one map on one table."""

    @abstractmethod
    def installed(self, conn: sa.Connection, spec: CaptureSpec) -> dict[str, tuple[str, str]]:
        """Per trigger of ``spec`` present in the database: (the table it is on, its
        definition as :meth:`definitions` gives it); a disabled trigger's table is
        prefixed with ``disabled:``."""

    @abstractmethod
    def remove_ddl(self, spec_tag: str, table: str) -> list[str]:
        """Drop the triggers of one map (idempotent, even if the table is gone)."""

    @abstractmethod
    def key_text(self, params: Sequence[str], columns: Sequence[Column]) -> str:
        """An SQL expression giving the log's key text for bound parameters (values of
        ``columns``), formatted by the database exactly as the triggers format it."""

    # -- hooks of the shared log logic (CaptureLog): the defaults are plain SQL -----------------
    #: the query that names the schema (database) the log lives in; None: the database has
    #: no schemas (the log is where the connection is)
    home_query: str | None = None
    #: every dualwrite trigger and function: rows of (kind, name, DROP statement) (no % in
    #: it: a driver could take it for a placeholder)
    own_objects = ""
    #: the SQL function giving a text's size in bytes, and the type a JSON column is cast to
    #: for it
    length_function = "length"
    text_type = "TEXT"
    #: whether deleting from the log (or pruning applied positions) leaves something behind
    #: that :meth:`purge` clears: MariaDB's history rows, PostgreSQL's dead row versions
    needs_purge = False
    #: whether :meth:`purge` runs inside a transaction (read committed); False: outside any
    #: (PostgreSQL's VACUUM cannot run inside one)
    purge_in_transaction: ClassVar[bool] = True

    def log_columns(self) -> str:
        """The log's columns as :meth:`CaptureLog._changes` reads them (JSON as text,
        decoded there with exact decimals: a driver would give floats)."""
        return "seq, map, txid, op, k, old, new, at, v"

    def lock_ddl(self, conn: sa.Connection) -> None:  # noqa: B027 - no lock by default
        """Serialise dualwrite's own DDL in this database, inside ``conn``'s transaction."""

    def rows(self, conn: sa.Connection, text: str, params: dict[str, Any]) -> list[Any]:
        """The rows of one query (named ``:parameters``). Dialects whose driver takes
        pyformat parameters return :func:`driver_rows` instead."""
        return list(conn.execute(sa.text(text), params).all())

    def pending_rows(self, conn: sa.Connection, map_name: str,
                     keys: Sequence[tuple[Any, ...]], columns: Sequence[Column]) -> list[Any]:
        """Log rows of ``map_name`` whose key is one of ``keys`` (see CaptureLog.pending):
        the keys formatted by the database, a chunk of them per statement."""
        width = len(columns)
        rows: list[Any] = []
        for i in range(0, len(keys), 200):
            chunk = list(keys[i:i + 200])
            params: dict[str, Any] = {"m": map_name}
            exprs = []
            for j, k in enumerate(chunk):
                names_j = [f"k{j}_{n}" for n in range(width)]
                params.update(zip(names_j, k, strict=True))
                exprs.append(self.key_text(names_j, columns))
            rows += conn.execute(sa.text(
                f"SELECT {self.log_columns()} FROM {CHANGES} WHERE map = :m "
                f"AND k IN ({', '.join(exprs)}) ORDER BY seq"), params).all()
        return rows

    def finish_apply(self, conn: sa.Connection, source: str,
                     positions: Sequence[tuple[str, str, int]],
                     prune: Sequence[tuple[str, str]], fence: tuple[str, int] | None,
                     probe: Sequence[str]) -> tuple[bool, set[str]] | None:
        """:meth:`CaptureLog.finish_apply` in one round trip where the database can: whether
        the fence was raised (False: the first fence here, or a newer applier's; the caller
        raises it the plain way), and which of the ``probe`` maps the log holds changes of;
        None where there is no such statement (nothing done)."""
        return None

    #: whether :meth:`forget_range` has a statement here (the common forget, one round trip)
    has_forget_range: ClassVar[bool] = False

    def forget_range(self, conn: sa.Connection, lo: int, hi: int, fence: tuple[str, int]
                     ) -> bool | None:
        """Raise ``fence`` where it is there already and no later, and only then delete log
        rows ``lo``..``hi``, in one statement atomic by itself (it may run outside any
        transaction): True when both were done; False or None (no such statement here) when
        nothing was, and the caller raises the fence the plain way and deletes."""
        return None

    def purge(self, conn: sa.Connection) -> None:  # noqa: B027 - nothing left behind
        """Clear what deleting log rows and pruning applied positions left behind (see
        :attr:`needs_purge`)."""

    def listen(self, connector: SqlConnector) -> ChangeSignal | None:
        """A signal of committed changes (see :meth:`CaptureLog.listen`); None: polled."""
        return None

    # -- the delta journal's SQL (dualwrite.connectors.delta, which names the tables) ------
    #: the isolation level the journal's transactions run at; None: the connection's own
    journal_isolation: str | None = None

    @abstractmethod
    def journal_ddl(self, journal: str, state: str, tracked: str) -> list[str]:
        """Create the journal, its state row's table and the tracked-tables table, with the
        columns :mod:`dualwrite.connectors.delta` describes (idempotent)."""

    @abstractmethod
    def journal_trigger_ddl(self, conn: sa.Connection, journal: str, table: str,
                            key: Sequence[str], tag: str) -> list[str]:
        """Create (or replace) the three triggers ``<tag>i``/``d``/``u`` that insert
        ``(table, key as a JSON array)`` into ``journal`` for every changed row of ``table``
        (an update of the key: both the new and the old key), in the writer's transaction."""

    @abstractmethod
    def journal_drop_ddl(self, table: str, tag: str) -> list[str]:
        """Drop ``table``'s journal triggers (and functions) of ``tag`` (idempotent)."""

    @abstractmethod
    def journal_triggers_query(self, table: str, names: dict[str, str]
                               ) -> tuple[str, dict[str, Any]]:
        """A query counting which of the enabled triggers ``names`` (bound as ``:i``, ``:d``,
        ``:u``) are on ``table``, and its parameters (``names`` included)."""

    def journal_time(self, at: dt.datetime) -> Any:
        """``at`` (UTC) as the journal's ``at`` column holds it."""
        return at


def dialect_for(connector: SqlConnector) -> Dialect:
    """The capture SQL of ``connector``'s database (its package's :class:`Dialect`)."""
    return connector.capture_dialect()


def capturable(dialect: Dialect, conn: sa.Connection, spec: CaptureSpec, env: str
               ) -> dict[str, str]:
    """The encodings of ``spec``'s table (see :meth:`Dialect.encodings`), after making sure
    the table and every column the map reads are there: a map that cannot be captured is
    refused at install, naming what is missing, rather than failing the application's
    writes later."""
    encodings = dialect.encodings(conn, spec.table)
    if encodings is None:
        raise TerminalConnectorError(
            f"cannot capture map {spec.map!r}: table {spec.table!r} does not exist",
            environment=env, hint="create it, or correct the table name in the map")
    gone = [col for col in spec.needed if col not in encodings]
    if gone:
        raise TerminalConnectorError(
            f"cannot capture map {spec.map!r}: table {spec.table!r} has no column(s) "
            f"{', '.join(repr(g) for g in gone)}", environment=env,
            hint="correct the map's field lines, or the table, and start the map again")
    return encodings


class CaptureLog:
    """The change log of one SQL environment: install and remove capture, read and forget
    changes, and the applied positions written inside an apply transaction."""

    def __init__(self, connector: SqlConnector) -> None:
        self.connector = connector
        self.dialect = dialect_for(connector)
        self._ready = False
        #: until when (monotonic) :meth:`_exists` trusts that the log table exists
        self._exists_until = 0.0
        #: whether rows were deleted since the last purge (at first: perhaps, by another run)
        self._forgotten = True
        #: what :meth:`wait` watches: its signal (False: polled; None: not watching yet),
        #: and the highest seq it has seen (polled)
        self._signal: ChangeSignal | bool | None = None
        self._seen = 0

    def locate(self) -> None:
        """Learn the log's schema: the connection's own (see the module doc), once."""
        query = self.dialect.home_query
        if self.dialect.home or query is None:
            return
        c = self.connector
        with c.translating("find the change log's schema"), c.engine.connect() as conn:
            home = conn.exec_driver_sql(query).scalar()
        if not home:
            raise TerminalConnectorError(
                "the connection has no schema to keep dualwrite's change log in",
                environment=c.name, hint="name a database in the URL, or set the "
                "environment's `schema:` (PostgreSQL: a schema on the search path)")
        self.dialect.home = str(home)

    @property
    def has_txid(self) -> bool:
        return self.dialect.has_txid

    def _ddl(self, statements: Iterable[str], doing: str) -> None:
        self.locate()
        c = self.connector
        with c.translating(doing), c.engine.begin() as conn:
            self.dialect.lock_ddl(conn)
            for s in statements:
                conn.exec_driver_sql(s)

    def ensure(self) -> None:
        """Create the log tables if they are missing (idempotent)."""
        if not self._ready:
            self.locate()
            self._ddl(self.dialect.log_ddl(), "create the change log")
            c = self.connector
            with c.translating("look at the change log"), c.engine.connect() as conn:
                # the columns of the log, from a query's description (reflection warns about
                # MariaDB's PERIOD FOR SYSTEM_TIME)
                columns = set(conn.exec_driver_sql(
                    f"SELECT * FROM {CHANGES} WHERE 1 = 0").keys())
            if VERSION not in columns:  # a log made before map versions
                self._ddl([self.dialect.add_version_ddl()], "add map versions to the log")
            self._ready = True

    def install(self, spec: CaptureSpec) -> None:
        """Install (or refresh) the capture triggers of one map, for the table's columns as
        they are now. Idempotent."""
        self.ensure()
        self.locate()
        c = self.connector
        with c.translating(f"install capture on {spec.table}"), c.engine.begin() as conn:
            encodings = capturable(self.dialect, conn, spec, c.name)
            for statement in self.dialect.install_ddl(spec, encodings):
                conn.exec_driver_sql(statement)
        # what an earlier version installed under the map's name alone, removed once the new
        # triggers are in (a change meanwhile is logged twice, and applied once)
        self._ddl(self.dialect.remove_ddl(spec.legacy_tag, spec.table),
                  f"remove older capture from {spec.table}")

    def capture_requirements(self) -> list[str]:
        return []  # the triggers need their tables only (made by ensure)

    def capture_warnings(self, *, before_install: bool = False) -> list[str]:
        return []

    def check(self, spec: CaptureSpec) -> list[str]:
        """What is wrong with the installed capture of one map: the change log or the table
        missing, columns the map reads gone from the table (renamed or dropped), triggers
        missing, disabled, on another table, or out of date (the table's columns changed
        type since they were installed). Empty when capture is as :meth:`install` would
        make it; otherwise fix the table or the map, and install again."""
        self.locate()
        c = self.connector
        where = f"map {spec.map!r}, table {spec.table!r}"
        with c.translating(f"check capture on {spec.table}"), c.engine.connect() as conn:
            problems, encodings = self._check_table(conn, spec)
            if encodings is None:
                return problems
            gone = [col for col in spec.needed if col not in encodings]
            expected = self.dialect.definitions(spec, encodings)
            installed = self.dialect.installed(conn, spec)
            conn.rollback()
        for name, definition in expected.items():
            table, text = installed.get(name, ("", ""))
            if not table:
                problems.append(f"{where}: capture trigger {name} is missing")
            elif table.startswith("disabled:"):
                problems.append(f"{where}: capture trigger {name} is disabled")
            elif table != self._local(spec.table):
                problems.append(f"{where}: capture trigger {name} is on table {table!r}")
            elif not gone and text.strip() != definition.strip():
                problems.append(f"{where}: capture trigger {name} is out of date (the table "
                                "changed since it was installed)")
        return problems

    def _check_table(self, conn: sa.Connection, spec: CaptureSpec
                     ) -> tuple[list[str], dict[str, str] | None]:
        """What :meth:`check` finds wrong in every capture mode (the change log missing, the
        table missing, columns the map reads gone), and the table's encodings (None: no
        table, nothing more to check)."""
        where = f"map {spec.map!r}, table {spec.table!r}"
        problems: list[str] = []
        if not sa.inspect(conn).has_table(CHANGES):
            problems.append(f"{where}: the change log ({CHANGES}) is missing")
        encodings = self.dialect.encodings(conn, spec.table)
        if encodings is None:
            return [*problems, f"{where}: the table does not exist"], None
        gone = [col for col in spec.needed if col not in encodings]
        if gone:
            problems.append(f"{where}: column(s) {', '.join(repr(g) for g in gone)} gone "
                            "from the table (renamed or dropped)")
        return problems, encodings

    def _local(self, table: str) -> str:
        """``table`` as the catalog names it: without the schema when that is the log's."""
        schema, name = self.dialect.split(table)
        return f"{schema}.{name}" if schema else name

    def remove(self, spec: CaptureSpec) -> None:
        """Remove the capture triggers of one map and forget its queued changes."""
        self.locate()
        self._ddl(self.dialect.remove_ddl(spec.tag, spec.table) +
                  self.dialect.remove_ddl(spec.legacy_tag, spec.table),
                  f"remove capture from {spec.table}")
        if self._exists():
            c = self.connector
            with c.translating("forget queued changes"), c.engine.begin() as conn:
                conn.execute(sa.text(f"DELETE FROM {CHANGES} WHERE map = :m"), {"m": spec.map})

    @staticmethod
    def decode(values: dict[str, Any] | None, columns: dict[str, Column]
               ) -> dict[str, Any] | None:
        """A change's ``old`` or ``new`` with every value decoded into what the connector
        reads for its column (:func:`dualwrite.model.codec.from_log`: one decoding for
        the applier and everyone); members of columns not in ``columns`` as they are."""
        if values is None:
            return None
        out = dict(values)
        for name, v in out.items():
            fn = from_log(columns[name]) if name in columns else None
            if fn is not None and v is not None:
                out[name] = fn(v)
        return out

    #: what dualwrite's trigger and function names look like (see CaptureSpec.tag)
    OWN_OBJECT = re.compile(r"^(dw_[0-9a-f]{10}_[a-z]+|dualwrite_wake|dualwrite_mark)$")
    def uninstall(self, *, dry_run: bool = False) -> list[str]:
        """Remove every dualwrite trigger and function and every ``dualwrite_*`` table but
        the link's own (its record, its decision rows: :data:`LINK_STORAGE`; ``maps stop
        --purge``, ``uninstall``), found in the catalog by
        name, so that those of maps no longer in the config go too. Returns what was removed
        (with ``dry_run``, what would be)."""
        c = self.connector
        with c.translating("list dualwrite's triggers and tables"), c.engine.connect() as conn:
            objects = [(str(k), str(n), str(d)) for k, n, d in
                       conn.exec_driver_sql(self.dialect.own_objects).all()
                       if self.OWN_OBJECT.match(str(n))]
            tables = sorted(t for t in sa.inspect(conn).get_table_names()
                            if t.startswith("dualwrite_") and t not in LINK_STORAGE)
        found = [f"{kind} {name}" for kind, name, _ in objects] + [f"table {t}" for t in tables]
        if not dry_run and found:
            q = c.engine.dialect.identifier_preparer.quote
            # triggers, then tables (the wake table's trigger goes with it), then the
            # functions they used (PostgreSQL)
            self._ddl([d for k, _, d in objects if k == "trigger"] +
                      [f"DROP TABLE IF EXISTS {q(t)}" for t in tables] +
                      [d for k, _, d in objects if k == "function"],
                      "remove dualwrite's triggers and tables")
            self._ready = False
            self._exists_until = 0.0
        return found

    def _exists(self) -> bool:
        """Whether the log table exists. A yes is trusted for EXISTS_TRUST seconds (the
        applier asks every second, and the log, once made, stays until an uninstall); a no
        is asked again each time."""
        now = time.monotonic()
        if now < self._exists_until:
            return True
        with self.connector.translating("look for the change log"), \
                self.connector.engine.connect() as conn:
            found = sa.inspect(conn).has_table(CHANGES)
        self._exists_until = now + EXISTS_TRUST if found else 0.0
        return found

    # -- reading -------------------------------------------------------------------------------
    def read(self, maps: Sequence[str], limit: int) -> list[Change]:
        """Up to about ``limit`` committed changes of ``maps``, oldest first, always whole
        transactions: every other change of a transaction that shows up is read too (on
        SQLite, where there are no transaction ids, a read is one snapshot, which always ends
        at a commit)."""
        first, rest = self.read_start(maps, limit)
        return first + rest.result() if rest is not None else first

    def read_start(self, maps: Sequence[str], limit: int
                   ) -> tuple[list[Change], Future[list[Change]] | None]:
        """:meth:`read`, in two parts when the read is the start of one large transaction:
        up to ``limit`` changes now, and the rest of that transaction (its changes after
        them, in seq order) read meanwhile on another connection, so that the caller can
        apply the first part while the rest arrives. The second part is None when the first
        is the whole read."""
        if not maps:
            return [], None
        self.ensure()
        c = self.connector
        params: dict[str, Any] = {f"m{i}": m for i, m in enumerate(maps)}
        marks = ", ".join(f":m{i}" for i in range(len(maps)))
        more = None
        with c.translating("read the change log"), c.single_statements() as conn:
            if not self.has_txid:
                rows = self._log_rows(conn, f"map IN ({marks})", params, "ORDER BY seq")
            else:
                rows = self._log_rows(conn, f"map IN ({marks})", params,
                                      f"ORDER BY seq LIMIT {int(limit)}")
                if len(rows) >= limit:
                    # The last transactions may be cut by the limit: read the rest of them
                    # (their changes after the last one read).
                    txids = sorted({r[2] for r in rows})
                    tmarks = ", ".join(f":t{i}" for i in range(len(txids)))
                    more = (f"map IN ({marks}) AND seq > :after AND txid IN ({tmarks})",
                            {**params, "after": rows[-1][0],
                             **{f"t{i}": t for i, t in enumerate(txids)}})
                    if len(txids) > 1:  # which commits first is known only with the rest
                        # (committed transactions do not grow: a second snapshot finds
                        # the same changes of theirs as the first would)
                        rows += self._log_rows(conn, *more)
                        more = None
        if more is None:
            return self._changes(rows), None
        rest: Future[list[Change]] = Future()
        query = more

        def read_rest() -> None:
            try:
                with c.translating("read the change log"), c.single_statements() as cx:
                    got = self._log_rows(cx, *query)
                rest.set_result(sorted(self._changes(got), key=lambda ch: ch.seq))
            except BaseException as exc:  # handed to the caller, raised where it waits
                rest.set_exception(exc)

        threading.Thread(target=read_rest, name="dualwrite-log-read", daemon=True).start()
        return self._changes(rows), rest

    def transactions(self, maps: Sequence[str], after: int, limit: int
                     ) -> list[tuple[int, str]]:
        """(seq, txid) of up to ``limit`` committed changes of ``maps`` past ``after``, in
        seq order, without their values: how a JetStream reader finds the transactions it
        has not published yet (the log keeps published ones until they are applied)."""
        if not maps:
            return []
        self.ensure()
        params: dict[str, Any] = {f"m{i}": m for i, m in enumerate(maps)}
        marks = ", ".join(f":m{i}" for i in range(len(maps)))
        with self.connector.translating("read the change log"), \
                self.connector.single_statements() as conn:
            rows = self._rows(conn, f"SELECT seq, txid FROM {CHANGES} WHERE map IN ({marks}) "
                              f"AND seq > :after ORDER BY seq LIMIT {int(limit)}",
                              {**params, "after": after})
        return [(int(r[0]), WATERMARK if r[1] is None else str(r[1])) for r in rows]

    def read_transactions(self, maps: Sequence[str], txids: Sequence[str]) -> list[Change]:
        """Every change of ``maps`` of the given (committed) transactions, in seq order."""
        if not maps or not txids:
            return []
        self.ensure()
        params: dict[str, Any] = {f"m{i}": m for i, m in enumerate(maps)}
        marks = ", ".join(f":m{i}" for i in range(len(maps)))
        out: list[Any] = []
        with self.connector.translating("read the change log"), \
                self.connector.engine.connect() as conn:
            for i in range(0, len(txids), 500):
                chunk = list(txids[i:i + 500])
                tparams = {f"t{j}": int(t) for j, t in enumerate(chunk)}
                tmarks = ", ".join(f":t{j}" for j in range(len(chunk)))
                out += self._log_rows(conn, f"map IN ({marks}) AND txid IN ({tmarks})",
                                      {**params, **tparams}, "ORDER BY seq")
            conn.rollback()
        return sorted(self._changes(out), key=lambda c: c.seq)

    def _log_rows(self, conn: sa.Connection, where: str, params: dict[str, Any],
                  tail: str = "") -> list[Any]:
        """Log rows (``_columns``) matching ``where`` (named ``:parameters``), ``tail``
        (ORDER BY, LIMIT) applied."""
        return self._rows(conn, f"SELECT {self._columns()} FROM {CHANGES} WHERE {where} {tail}",
                          params)

    def _rows(self, conn: sa.Connection, text: str, params: dict[str, Any]) -> list[Any]:
        """The rows of one query (named ``:parameters``), as the dialect reads them fastest."""
        return self.dialect.rows(conn, text, params)

    def _changes(self, rows: Sequence[Any]) -> list[Change]:
        """Changes from log rows (``_columns``), their keys decoded in one call of the JSON
        decoder. The hot loop of a large read: slots are set directly, and each conversion is
        made only where the driver did not give the type already."""
        keys = decode_json("[" + ",".join(str(r[4]) for r in rows) + "]")
        out = []
        make = Change.__new__
        for r, k in zip(rows, keys, strict=True):
            c = make(Change)
            seq, name, txid, op, key_text, old, new, at, version = r
            c.seq = seq if type(seq) is int else int(seq)
            c.map = name if type(name) is str else str(name)
            c.txid = WATERMARK if txid is None else str(txid)
            c.op = op if len(op) == 1 else str(op).strip()
            c.key_text = key_text if type(key_text) is str else str(key_text)
            c._key = tuple(k)
            c.at = at if type(at) is dt.datetime and at.tzinfo is not None else parse_time(at)
            c.version = version or ""
            if isinstance(old, dict) or isinstance(new, dict):  # a driver that decodes JSON
                c.old_json = c.new_json = None
                c._old, c._new = old, new
            else:
                c.old_json, c.new_json = old, new
                c._old = None if old is None else _UNDECODED
                c._new = None if new is None else _UNDECODED
            out.append(c)
        return out

    def _columns(self) -> str:
        return self.dialect.log_columns()

    def pending(self, sess: WriteSession, map_name: str, keys: Sequence[tuple[Any, ...]],
                columns: Sequence[Column]) -> list[Change]:
        """Committed changes of ``map_name`` still queued in this log for the given keys
        (values of the key ``columns`` of this side's table), oldest first, inside the
        caller's transaction. The database formats the asked keys itself, exactly as its
        triggers did."""
        if not keys:
            return []
        rows = self.dialect.pending_rows(_sql(sess), map_name, keys, columns)
        return sorted(self._changes(rows), key=lambda c: c.seq)

    def peek(self, map_name: str, *, key_contains: str | None = None, limit: int = 50,
             offset: int = 0) -> tuple[list[Change], int]:
        """One page of the committed changes of ``map_name`` queued in this log, oldest
        first, and how many there are; only those whose key (as the log writes it, a JSON
        array) contains ``key_contains``, if given. Reads only (the console's queue view)."""
        if not self._exists():
            return [], 0
        where, params = "map = :m", {"m": map_name}
        if key_contains:
            escaped = "".join("!" + ch if ch in "!%_" else ch for ch in key_contains)
            where += " AND k LIKE :k ESCAPE '!'"
            params["k"] = f"%{escaped}%"
        c = self.connector
        with c.translating("read the change log"), c.engine.connect() as conn:
            total = conn.execute(sa.text(f"SELECT COUNT(*) FROM {CHANGES} WHERE {where}"),
                                 params).scalar()
            rows = self._log_rows(conn, where, params,
                                  f"ORDER BY seq LIMIT {int(limit)} OFFSET {int(offset)}")
            conn.rollback()
        return self._changes(rows), int(total or 0)

    def queued(self, sess: WriteSession, maps: Sequence[str]) -> set[str]:
        """Which of ``maps`` this log holds changes of, as ``sess``'s transaction sees it
        now: :meth:`queues` for many maps in one round trip."""
        if len(maps) == 1:
            return set(maps) if self.queues(sess, maps[0]) else set()
        conn = _sql(sess)
        self.ensure()
        params = {f"m{i}": m for i, m in enumerate(maps)}
        union = " UNION ALL ".join(
            f"SELECT map FROM (SELECT map FROM {CHANGES} WHERE map = :m{i} LIMIT 1) q{i}"
            for i in range(len(maps)))
        return {str(r[0]) for r in conn.execute(sa.text(union), params)}

    def queues(self, sess: WriteSession, map_name: str) -> bool:
        """Whether this log holds any committed change of ``map_name``, inside the caller's
        transaction (one index probe)."""
        return _sql(sess).execute(sa.text(f"SELECT 1 FROM {CHANGES} WHERE map = :m LIMIT 1"),
                            {"m": map_name}).first() is not None

    def stats(self) -> dict[str, tuple[int, int, dt.datetime | None]]:
        """Per map: queued changes, their size in bytes, and the time of the oldest."""
        if not self._exists():
            return {}
        c = self.connector
        length, text = self.dialect.length_function, self.dialect.text_type
        # (every few seconds on a quiet link: one statement, the dialect's fastest way)
        with c.translating("measure the change log"), c.single_statements() as conn:
            rows = self._rows(
                conn, f"SELECT map, COUNT(*), SUM({length}(k) + COALESCE({length}(CAST(old AS "
                f"{text})), 0) + COALESCE({length}(CAST(new AS {text})), 0)), "
                f"MIN(at) FROM {CHANGES} GROUP BY map", {})
        return {str(r[0]): (int(r[1]), int(r[2] or 0), parse_time(r[3]) if r[3] else None)
                for r in rows}

    # -- fencing -------------------------------------------------------------------------------
    def fence(self, sess: WriteSession, link: str, epoch: int) -> None:
        """Raise the link's fence in this database to ``epoch`` inside the transaction of
        ``sess``, or raise :class:`LeaseLost` when it holds a later epoch already (a newer
        applier took the lease over): that transaction must then roll back. The fence is a
        row of the applied-positions table (source ``#fence``, map = the link's name); its
        row lock orders an old and a new applier's transactions, and the later epoch wins."""
        self._fence(_sql(sess), link, epoch)

    def _fence(self, conn: sa.Connection, link: str, epoch: int) -> None:
        self.ensure()
        params = {"s": FENCE_SOURCE, "m": link, "e": epoch}
        n = conn.execute(sa.text(
            f"UPDATE {APPLIED} SET seq = :e WHERE source = :s AND map = :m AND txid = '' "
            "AND seq <= :e"), params).rowcount
        if n == 1:
            return
        held = conn.execute(sa.text(
            f"SELECT seq FROM {APPLIED} WHERE source = :s AND map = :m AND txid = ''"),
            params).scalar()
        if held is None:
            # the first fence of this link here; two first appliers at once: the unique key
            # lets one insert, the other fails its transaction (and retries it, then fenced)
            conn.execute(sa.text(f"INSERT INTO {APPLIED} (source, map, txid, seq) "
                                 "VALUES (:s, :m, '', :e)"), params)
            return
        raise LeaseLost(
            f"link {link!r}: a newer applier (lease epoch {held}) applies in "
            f"{self.connector.name}; this one (epoch {epoch}) lost its lease and commits "
            "nothing more", hint="nothing to do: this process stands by again")

    def finish_apply(self, sess: WriteSession, source: str,
                     positions: Sequence[tuple[str, str, int]],
                     prune: Sequence[tuple[str, str]], fence: tuple[str, int] | None,
                     probe: Sequence[str] = ()) -> set[str]:
        """The bookkeeping that closes an apply transaction, inside it, last before its
        commit: raise the fence (``(link, epoch)``, if given: :meth:`fence`), record
        ``positions`` (:meth:`mark_applied`) and drop ``prune`` (:meth:`unmark`); then which
        of the ``probe`` maps this log holds changes of (:meth:`queued`). In one round trip
        where the dialect has such a statement (PostgreSQL) and the fence is there already
        (the common case): a single-row transaction would otherwise pay four."""
        self.ensure()
        conn = _sql(sess)
        if prune:
            self._forgotten = True  # pruned positions: dead rows to purge here too
        if all(t != WATERMARK for _m, t, _s in positions):
            done = self.dialect.finish_apply(conn, source, positions, prune, fence, probe)
            if done is not None:
                raised, queued = done
                if not raised and fence is not None:
                    self._fence(conn, *fence)  # the first fence here, or a newer applier's
                return queued
        if fence is not None:
            self._fence(conn, *fence)
        self._mark_applied(conn, source, positions)
        if prune:
            self._unmark(conn, source, prune)
        return self.queued(sess, probe) if probe else set()

    def fence_epoch(self, sess: WriteSession, link: str) -> int:
        """The epoch the link's fence holds in this database (0: none yet)."""
        self.ensure()
        held = _sql(sess).execute(sa.text(
            f"SELECT seq FROM {APPLIED} WHERE source = :s AND map = :m AND txid = ''"),
            {"s": FENCE_SOURCE, "m": link}).scalar()
        return int(held or 0)

    # -- forgetting ----------------------------------------------------------------------------
    def forget(self, seqs: Sequence[int], sess: WriteSession | None = None, *,
               fence: tuple[str, int] | None = None) -> None:
        """Delete applied (or superseded, or parked) changes from the log, inside ``sess``
        if given, else in a transaction of its own (behind the fence ``(link, epoch)``, if
        given: see :meth:`fence`)."""
        if not seqs:
            return
        # the log's tables made (or known) before any transaction below holds a lock on them:
        # a fence raised for the first time here would otherwise run ensure()'s DDL on another
        # connection, waiting for this transaction's own lock (a JetStream worker's first
        # write to a partition's fence)
        self.ensure()
        self._forgotten = True
        c = self.connector
        ordered = sorted(seqs)

        # the fence and a contiguous run in one statement (the common case), where the
        # dialect has such a statement: it deletes only behind a fence it raised
        ranged = (self.dialect.has_forget_range and fence is not None
                  and ordered[-1] - ordered[0] + 1 == len(ordered) <= 1000)

        def run(cx: sa.Connection) -> None:
            if ranged:
                assert fence is not None
                if self.dialect.forget_range(cx, ordered[0], ordered[-1], fence):
                    return
            if fence is not None:
                self._fence(cx, *fence)  # the first fence here, or a newer applier's
            for i in range(0, len(ordered), 1000):
                chunk = ordered[i:i + 1000]
                lo, hi = chunk[0], chunk[-1]
                if hi - lo + 1 == len(chunk):  # a contiguous run: a range is cheaper
                    cx.execute(sa.text(f"DELETE FROM {CHANGES} WHERE seq BETWEEN :a AND :b"),
                               {"a": lo, "b": hi})
                else:
                    cx.exec_driver_sql(f"DELETE FROM {CHANGES} WHERE seq IN "
                                       f"({', '.join(str(int(s)) for s in chunk)})")

        if sess is not None:
            run(_sql(sess))
            return
        if ranged:
            assert fence is not None
            # one statement, atomic by itself: no transaction around it where that is free
            with c.translating("forget applied changes"), c.single_statements() as cx:
                if self.dialect.forget_range(cx, ordered[0], ordered[-1], fence):
                    return
            # nothing deleted: the fence is raised (or refused) the plain way, below
        with c.translating("forget applied changes"), c.engine.begin() as cx:
            run(cx)

    # -- applied positions (inside the apply transaction) -------------------------------------
    def applied(self, sess: WriteSession, source: str, pairs: Sequence[tuple[str, str]]
                ) -> tuple[set[tuple[str, str]], dict[str, int]]:
        """Which (map, txid) of ``source`` were applied here already, and the high-water mark
        per map for sources without transaction ids."""
        self.ensure()
        conn = _sql(sess)
        done: set[tuple[str, str]] = set()
        marks: dict[str, int] = {}
        txids = sorted({t for _m, t in pairs if t != WATERMARK})
        for i in range(0, len(txids), 500):
            chunk = txids[i:i + 500]
            params: dict[str, Any] = {"s": source, **{f"t{j}": t for j, t in enumerate(chunk)}}
            # (the dialect's fastest read: once per apply transaction, on the hot path)
            rows = self._rows(
                conn, f"SELECT map, txid FROM {APPLIED} WHERE source = :s AND txid IN "
                f"({', '.join(f':t{j}' for j in range(len(chunk)))})", params)
            done |= {(str(r[0]), str(r[1])) for r in rows}
        if any(t == WATERMARK for _m, t in pairs):
            rows = self._rows(
                conn, f"SELECT map, seq FROM {APPLIED} WHERE source = :s AND txid = ''",
                {"s": source})
            marks = {str(r[0]): int(r[1]) for r in rows}
        return done, marks

    def mark_applied(self, sess: WriteSession, source: str,
                     positions: Sequence[tuple[str, str, int]]) -> None:
        """Record applied (map, txid, max seq) of ``source``; for sources without
        transaction ids, move the map's high-water mark."""
        self._mark_applied(_sql(sess), source, positions)

    def _mark_applied(self, conn: sa.Connection, source: str,
                      positions: Sequence[tuple[str, str, int]]) -> None:
        plain = [(m, t, s) for m, t, s in positions if t != WATERMARK]
        if plain:
            conn.execute(sa.text(f"INSERT INTO {APPLIED} (source, map, txid, seq) "
                                 "VALUES (:s, :m, :t, :q)"),
                         [{"s": source, "m": m, "t": t, "q": s} for m, t, s in plain])
        for m, _t, s in positions:
            if _t != WATERMARK:
                continue
            n = conn.execute(sa.text(f"UPDATE {APPLIED} SET seq = :q WHERE source = :s AND "
                                     "map = :m AND txid = ''"), {"s": source, "m": m, "q": s})
            if n.rowcount == 0:
                conn.execute(sa.text(f"INSERT INTO {APPLIED} (source, map, txid, seq) "
                                     "VALUES (:s, :m, '', :q)"), {"s": source, "m": m, "q": s})

    def unmark(self, sess: WriteSession, source: str, pairs: Sequence[tuple[str, str]]
               ) -> None:
        """Drop applied positions whose changes are gone from the source log (they can
        never be delivered again)."""
        self._unmark(_sql(sess), source, pairs)

    def _unmark(self, conn: sa.Connection, source: str, pairs: Sequence[tuple[str, str]]
                ) -> None:
        by_map: dict[str, list[str]] = {}
        for m, t in pairs:
            if t != WATERMARK:
                by_map.setdefault(m, []).append(t)
        if by_map:
            self._forgotten = True
        # one statement per map, not one per position: a driver runs an executemany of a
        # DELETE as that many statements (PyMySQL), a round trip each, and a step of
        # single-row transactions prunes one position per transaction
        for m, txids in by_map.items():
            for start in range(0, len(txids), _PRUNE_CHUNK):
                conn.execute(_PRUNE, {"s": source, "m": m,
                                      "ts": txids[start:start + _PRUNE_CHUNK]})

    def all_marks(self) -> list[tuple[str, str, str]]:
        """Every (source, map, txid) applied position (for pruning at start-up)."""
        if not self._exists():
            return []
        with self.connector.engine.connect() as conn:
            if not sa.inspect(conn).has_table(APPLIED):
                return []
            return [(str(r[0]), str(r[1]), str(r[2])) for r in conn.execute(sa.text(
                f"SELECT source, map, txid FROM {APPLIED} WHERE txid <> ''"))]

    def forget_transactions(self, pairs: Sequence[tuple[str, str]], *,
                            fence: tuple[str, int] | None = None) -> None:
        """Delete the changes of the given (map, txid) from the log (behind the fence
        ``(link, epoch)``, if given): those the other side marked applied, when a process
        that applied them stopped before it deleted them."""
        if not pairs or not self.has_txid:
            return
        self._forgotten = True
        c = self.connector
        with c.translating("forget applied changes"), c.engine.begin() as conn:
            if fence is not None:
                self._fence(conn, *fence)
            conn.execute(sa.text(f"DELETE FROM {CHANGES} WHERE map = :m AND txid = :t"),
                         [{"m": m, "t": int(t)} for m, t in pairs])

    def txids_present(self, txids: Sequence[str]) -> set[str]:
        """Which of ``txids`` still have changes in this log."""
        if not txids or not self._exists():
            return set()
        out: set[str] = set()
        with self.connector.engine.connect() as conn:
            for i in range(0, len(txids), 500):
                chunk = list(txids[i:i + 500])
                rows = conn.execute(sa.text(
                    f"SELECT DISTINCT txid FROM {CHANGES} WHERE txid IN "
                    f"({', '.join(f':t{j}' for j in range(len(chunk)))})"),
                    {f"t{j}": int(t) for j, t in enumerate(chunk)}).all()
                out |= {str(r[0]) for r in rows}
        return out

    @property
    def needs_purge(self) -> bool:
        """Whether deleting changes leaves something behind to purge (MariaDB's history,
        PostgreSQL's dead row versions)."""
        return self.dialect.needs_purge

    def purge(self) -> None:
        """Clear what deleting applied changes and pruning applied positions left behind
        (the dialect's :meth:`Dialect.purge`: MariaDB's history rows, PostgreSQL's dead row
        versions). MariaDB's runs read committed: the scan then locks only the history rows
        it deletes, not every row and gap it passes, so applications' captured writes (new
        log rows) do not wait for it."""
        # nothing deleted since the last purge: nothing to purge (a quiet link costs nothing)
        if not self.needs_purge or not self._forgotten or not self._exists():
            return
        self._forgotten = False
        c = self.connector
        if not self.dialect.purge_in_transaction:
            with c.translating("purge the change log"), c.single_statements() as conn:
                self.dialect.purge(conn)
            return
        with c.translating("purge the change log's history"), \
                c.engine.connect().execution_options(isolation_level="READ COMMITTED") as conn, \
                conn.begin():
            self.dialect.purge(conn)

    def catch_up(self, sess: WriteSession | None = None) -> bool:
        """See :meth:`ChangeLog.catch_up`: the triggers write in the writer's transaction,
        so a committed change is in the log already."""
        return False

    # -- waiting -------------------------------------------------------------------------------
    def listen(self) -> ChangeSignal | None:
        """A signal of committed changes where the database notifies (PostgreSQL: LISTEN on
        a session of its own), else None: the log is polled. Raises a ConnectorError when
        the database cannot be reached now."""
        with self.connector.translating("listen for changes"):
            return self.dialect.listen(self.connector)

    def wait(self, timeout: float) -> bool:
        """See :meth:`ChangeLog.wait`: on the log's signal where it has one, else polling the
        log's highest seq (a change committed since the last call has a higher one)."""
        deadline = time.monotonic() + timeout
        if self._signal is None:  # the first call: start watching
            self.ensure()
            self._signal = self.listen() or False
            self._seen = self._top()
        signal = self._signal
        if signal:
            assert not isinstance(signal, bool)
            with selectors.DefaultSelector() as sel:
                sel.register(signal.fileno(), selectors.EVENT_READ)
                woken = bool(sel.select(max(timeout, 0.0)))
            if woken:
                signal.drain()
            return woken
        while True:
            top = self._top()
            if top > self._seen:
                self._seen = top
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(_POLL, left))

    def _top(self) -> int:
        """The highest seq in the log now (0: empty)."""
        c = self.connector
        with c.translating("read the change log"), c.engine.connect() as conn:
            top = conn.execute(sa.text(f"SELECT MAX(seq) FROM {CHANGES}")).scalar()
            conn.rollback()
        return int(top or 0)

    def close(self) -> None:
        """Stop watching (see :meth:`wait`)."""
        signal = self._signal
        self._signal = None
        if signal is not None and not isinstance(signal, bool):
            signal.close()


#: seconds between two looks of a polled :meth:`CaptureLog.wait`
_POLL = 0.05


def _sql(sess: WriteSession) -> sa.Connection:
    """The SQL connection under a write session of a SQL connector: the log's statements
    inside an apply transaction run on it."""
    if not isinstance(sess, SqlWriteSession):
        raise TypeError(f"a SQL change log was handed a {type(sess).__name__}, not a session "
                        "of its own connector")
    return sess.conn


__all__ = [
    "APPLIED", "CHANGES", "FENCE_SOURCE", "MARKER", "WATERMARK", "CaptureLog", "CaptureSpec",
    "Change", "Dialect", "columns_of_filter", "decode_json", "dialect_for", "parse_time",
]
