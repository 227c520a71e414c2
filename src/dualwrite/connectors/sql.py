"""SQL connectors on SQLAlchemy Core: the behaviour shared by SQLite, PostgreSQL and MariaDB.

Each backend's package (``connectors/<database>/connector.py``) overrides a few hooks (bulk
insert, binary ordering of string keys, the no-echo mark, locking reads) and holds its
driver's table of error codes (error classes: see :class:`Fault`). Everything a driver
raises passes through :meth:`SqlConnector.translating`, the one translation point.
"""

from __future__ import annotations

import contextlib
import copy
import re
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.sql import sqltypes

from dualwrite.connectors.base import (
    Branch,
    BulkField,
    Capabilities,
    Connector,
    FoldedLookup,
    JsonSource,
    LinkRecord,
    Row,
    WriteSession,
)
from dualwrite.connectors.sqlfilter import compile_filter
from dualwrite.errors import (
    ConnectorError,
    ConstraintViolation,
    TerminalConnectorError,
    TransientConnectorError,
    ViolationKind,
)
from dualwrite.model.filters import Expr
from dualwrite.model.schema import Column, Facets, ForeignKey, Kind, TableSchema
from dualwrite.model.values import canonical

if TYPE_CHECKING:
    from dualwrite.connectors.capture import CaptureLog, Dialect
    from dualwrite.connectors.delta import DeltaJournal

LINK_TABLE = "dualwrite_link"
#: the decision rows of live transactions this database was the last resource of (see
#: :meth:`Branch.commit_deciding`)
DECISIONS_TABLE = "dualwrite_decisions"
#: the tables that keep the link rather than capture (Connector.link_storage)
LINK_STORAGE = (LINK_TABLE, DECISIONS_TABLE)
#: an abort row fences a commit that might still arrive from a coordinator taken for dead;
#: it is kept this long, then pruned
ABORT_ROWS_KEPT_SECONDS = 3600.0
OWN_TABLE_PREFIX = "dualwrite_"
LOOKUP_CHUNK = 1000
#: connections kept aside for the next two-phase branch, per connector, and how long one may
#: wait unused before it goes back to the pool (see SqlConnector.branch_connection)
SPARES = 10
SPARE_IDLE_SECONDS = 30.0


class Fault(Enum):
    """What a database error means to dualwrite: each dialect module maps its driver's codes
    to these in a table (``PG_ERROR_CLASSES``, ``MY_ERROR_CLASSES``, ``SQLITE_ERROR_CLASSES``),
    and :meth:`SqlConnector._error_for` turns each into the error of the hierarchy."""

    TRANSIENT = "transient"      # connection lost or refused, deadlock, lock timeout: retry
    UNIQUE = "unique"            # the row's fault (ConstraintViolation, kind as named) ...
    FOREIGN_KEY = "foreign_key"
    NOT_NULL = "not_null"
    CHECK = "check"
    CONSTRAINT = "other"         # ... another constraint (exclusion, a trigger's abort)
    VALUE = "value"              # a value of the wrong type, too long or out of range
    UNWRITABLE = "unwritable"    # a value the driver cannot send (ConstraintViolation "value")
    CREDENTIALS = "credentials"  # terminal: the server refused the user or password
    GRANTS = "grants"            # terminal: the user may not use the database
    DATABASE = "database"        # terminal: no such database
    PRIVILEGE = "privilege"      # terminal: the user lacks a privilege on an object
    TERMINAL = "terminal"        # anything else: retrying will not help


_VIOLATIONS: dict[Fault, ViolationKind] = {
    Fault.UNIQUE: "unique", Fault.FOREIGN_KEY: "foreign_key", Fault.NOT_NULL: "not_null",
    Fault.CHECK: "check", Fault.CONSTRAINT: "other"}

# The fallback, for errors that carry no code: the words below are all that tells them apart.
# It is needed where the driver raises before any server answer: libpq's connection failures
# (psycopg gives them no SQLSTATE: refused, unknown role or database, server starting up or
# shutting down), a closed connection, and a value the driver cannot adapt. An error with a
# code is never classified by its words.
#: driver messages that mean "this value cannot be sent", whatever the exception class
_VALUE_ERRORS = ("cannot adapt", "can not be used with mysql", "error binding parameter",
                 "unsupported type", "is not json serializable")
#: libpq's words for a session the server refused: (pattern, what to fix)
_REFUSALS = (
    (re.compile(r'password authentication failed|role "[^"]*" does not exist|'
                r"no pg_hba\.conf entry|authentication failed"), Fault.CREDENTIALS),
    (re.compile(r'FATAL:\s+database "[^"]*" does not exist'), Fault.DATABASE),
    (re.compile(r"permission denied for database"), Fault.GRANTS),
)
#: words of an OperationalError without a code that mean "unreachable or busy, retry"
_TRANSIENT_WORDS = (
    "connection refused", "could not connect", "server closed", "lost connection",
    "deadlock", "lock wait timeout", "database is locked", "serialization",
    "can't connect", "connection reset", "terminating connection", "gone away",
    "not currently accepting connections", "the database system is starting up",
    "the database system is shutting down", "connection failed",
    "connection is closed", "closed the connection")


def fault_by_text(exc: BaseException) -> Fault:
    """What an error that carries no driver code means, read from its message: the
    fallback of :meth:`SqlConnector.classify` (only there, and only for such errors)."""
    text = str(getattr(exc, "orig", None) or exc)
    low = text.lower()
    if any(w in low for w in _VALUE_ERRORS):
        return Fault.UNWRITABLE
    if not isinstance(exc, sa_exc.DBAPIError):
        return Fault.TERMINAL
    for pattern, fault in _REFUSALS:
        if pattern.search(text):
            return fault
    if isinstance(exc, sa_exc.OperationalError) and any(w in low for w in _TRANSIENT_WORDS):
        return Fault.TRANSIENT
    return Fault.TERMINAL


#: (SQLAlchemy type, kind), most specific first
_KINDS: list[tuple[type[Any], Kind]] = [
    (sqltypes.Boolean, Kind.BOOLEAN),
    (sqltypes.Uuid, Kind.UUID),
    (sqltypes.Float, Kind.FLOAT),
    (sqltypes.Numeric, Kind.DECIMAL),
    (sqltypes.Integer, Kind.INTEGER),
    (sqltypes.DateTime, Kind.DATETIME),
    (sqltypes.Date, Kind.DATE),
    (sqltypes.Time, Kind.TIME),
    (sqltypes.Interval, Kind.INTERVAL),
    (sqltypes.JSON, Kind.JSON),
    (sqltypes.ARRAY, Kind.ARRAY),
    (sqltypes.LargeBinary, Kind.BINARY),
    (sqltypes._Binary, Kind.BINARY),
    (sqltypes.String, Kind.STRING),
]


_COLLATE = re.compile(r"\s+COLLATE\s+(?:\"(?:[^\"]|\"\")*\"|\S+)", re.IGNORECASE)


def without_collation(sql_type: str) -> str:
    """A column's SQL type without its COLLATE clause: ``VARCHAR(20) COLLATE "C"`` is a
    column's type, but not one a CAST, an array type or a column definition list takes."""
    return _COLLATE.sub("", sql_type)


def plain_type(t: sa.types.TypeEngine[Any]) -> sa.types.TypeEngine[Any]:
    """``t`` without its collation (see :func:`without_collation`), for casts and arrays."""
    if getattr(t, "collation", None):
        t = copy.copy(t)
        t.collation = None  # type: ignore[attr-defined]
    return t


def split_table(name: str) -> tuple[str | None, str]:
    """``fin.currency`` -> ("fin", "currency"); ``currency`` -> (None, "currency"). A table in
    another PostgreSQL schema, or in another MariaDB database on the same server, is named
    ``schema.table`` in maps and everywhere in dualwrite."""
    schema, dot, table = name.partition(".")
    return (schema, table) if dot and schema and table else (None, name)


def qualified(t: sa.Table) -> str:
    """The name dualwrite uses for a reflected table: ``schema.table`` when it was reflected
    from a schema named explicitly, else the plain name."""
    return f"{t.schema}.{t.name}" if t.schema else t.name


def kind_of(t: sa.types.TypeEngine[Any]) -> Kind:
    """The portable kind of a reflected SQLAlchemy type (without the database's own rules:
    see :meth:`SqlConnector.column_type`)."""
    for cls, kind in _KINDS:
        if isinstance(t, cls):
            return kind
    if type(t).__name__ == "INTERVAL":  # PostgreSQL's INTERVAL is not sqltypes.Interval
        return Kind.INTERVAL
    return Kind.OTHER


#: integer types by name -> bits (SMALLINT, MEDIUMINT... as SQLAlchemy names them)
INTEGER_BITS = {"TINYINT": 8, "SMALLINT": 16, "MEDIUMINT": 24, "INTEGER": 32, "INT": 32,
                "BIGINT": 64}

#: a row's values from the driver -> the values of each kind (None: the driver's are those)
RowLoader = Callable[[Sequence[Any]], tuple[Any, ...]]


def raw(col: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """``col`` selected as the driver hands it back: SQLAlchemy's own result conversions
    (some lossy: DOUBLE read as a 10-digit Decimal, TIME wrapped round midnight) are left
    out; the connector's loaders make each kind's values (see :meth:`SqlConnector._loaders`)."""
    return sa.type_coerce(col, sqltypes.NullType()).label(getattr(col, "name", None))


class Passthrough(sa.types.UserDefinedType[Any]):
    """A type SQLAlchemy neither converts nor casts (a NullType parameter would take its
    column's type, and with it that type's conversions)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:  # never used in DDL
        return ""


def untyped(name: str) -> sa.BindParameter[Any]:
    """A bound parameter handed to the driver as it is: dualwrite's values are already in
    their column's kind, and the drivers' adapters (registered by each connector) write
    them; SQLAlchemy's own conversions would, for instance, write a JSON document's text as
    a JSON string."""
    return sa.bindparam(name, type_=Passthrough())


class SqlWriteSession(WriteSession):
    def __init__(self, connector: SqlConnector, conn: sa.Connection) -> None:
        self.connector = connector
        self.conn = conn

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        if not rows:
            return
        t = self.connector.table(table)
        with self.connector.translating(f"insert into {table}"):
            self.connector._bulk_insert(self.conn, t, list(columns), rows)

    def insert_returning(self, table: str, values: dict[str, Any]) -> dict[str, Any]:
        # one round trip instead of an INSERT and a SELECT (PostgreSQL, SQLite >= 3.35 and
        # MariaDB >= 10.5 all have RETURNING)
        with self.connector.translating(f"insert into {table}"):
            return self.connector._insert_returning(self.conn, table, values)

    def update(self, table: str, key: Sequence[str], columns: Sequence[str],
               rows: Sequence[tuple[Row, Row]]) -> int:
        if not rows:
            return 0
        t = self.connector.table(table)
        with self.connector.translating(f"update {table}"):
            bulk = self.connector._bulk_update(self.conn, t, list(key), list(columns), rows)
        if bulk is not None:
            return bulk
        kcols = [t.c[k] for k in key]
        stmt = sa.update(t).where(*[c == untyped(f"k_{i}") for i, c in enumerate(kcols)])
        stmt = stmt.values({c: untyped(f"v_{i}") for i, c in enumerate(columns)})
        params = [
            {**{f"k_{i}": v for i, v in enumerate(k)}, **{f"v_{i}": v for i, v in enumerate(vals)}}
            for k, vals in rows
        ]
        with self.connector.translating(f"update {table}"):
            result = self.conn.execute(stmt, params)
        return max(result.rowcount, 0)

    def delete(self, table: str, key: Sequence[str], keys: Sequence[Row]) -> int:
        if not keys:
            return 0
        t = self.connector.table(table)
        kcols = [t.c[k] for k in key]
        stmt = sa.delete(t).where(*[c == untyped(f"k_{i}") for i, c in enumerate(kcols)])
        params = [{f"k_{i}": v for i, v in enumerate(k)} for k in keys]
        with self.connector.translating(f"delete from {table}"):
            result = self.conn.execute(stmt, params)
        return max(result.rowcount, 0)

    def fetch(self, table: str, columns: Sequence[str], *, key: Sequence[str],
              keys: Sequence[Row]) -> list[Row]:
        return self.connector._fetch(self.conn, table, columns, key, keys)

    def lookup(self, table: str, match: str, values: Iterable[Any], returning: str
               ) -> dict[Any, Any]:
        return self.connector._lookup(self.conn, table, match, values, returning)

    def insert_resolving(self, table: str, columns: Sequence[str], row: Row,
                         lookups: Sequence[FoldedLookup]) -> bool | None:
        with self.connector.translating(f"insert into {table}"):
            return self.connector._insert_resolving(self.conn, table, tuple(columns), row,
                                                    lookups)

    def lock(self, table: str, columns: Sequence[str], *, key: Sequence[str],
             keys: Sequence[Row]) -> list[Row]:
        return self.connector._fetch(self.conn, table, columns, key, keys, lock=True)

    def update_if(self, table: str, key: Sequence[str], columns: Sequence[str],
                  rows: Sequence[tuple[Row, Row, Row]]) -> set[Row] | None:
        with self.connector.translating(f"update {table}"):
            return self.connector._bulk_update_if(self.conn, self.connector.table(table),
                                                  list(key), list(columns), rows)

    def update_if_json(self, table: str, key: Sequence[str], columns: Sequence[str],
                       key_sources: Sequence[str], sources: Sequence[JsonSource],
                       new: Sequence[str], old: Sequence[str], *,
                       mappings: Sequence[Sequence[tuple[str, Any]]] = ()) -> set[Row] | None:
        with self.connector.translating(f"update {table}"):
            return self.connector._json_update_if(
                self.conn, self.connector.table(table), list(key), list(columns),
                list(key_sources), list(sources), new, old, mappings)

    def insert_json(self, table: str, key: Sequence[str], columns: Sequence[str],
                    sources: Sequence[JsonSource], rows: Sequence[str], *,
                    mappings: Sequence[Sequence[tuple[str, Any]]] = ()) -> set[Row] | None:
        with self.connector.translating(f"insert into {table}"):
            return self.connector._json_insert(self.conn, self.connector.table(table),
                                               list(columns), list(sources), rows, list(key),
                                               mappings)

    def capture_own_writes(self) -> None:
        with self.connector.translating("let capture see this transaction"):
            self.connector._unmark_origin(self.conn)


class SqlBranch(Branch):
    """A two-phase branch on one pooled connection (SQLAlchemy's two-phase transaction:
    ``PREPARE TRANSACTION`` on PostgreSQL, ``XA`` on MariaDB). A branch that commits leaves
    its connection to the connector's spares (:meth:`SqlConnector.branch_connection`)."""

    def __init__(self, connector: SqlConnector, xid: str) -> None:
        self.connector = connector
        self.xid = xid
        for attempt in (1, 2):
            self.conn = connector.branch_connection()
            try:
                with connector.translating("begin a two-phase transaction"):
                    self.tx = self.conn.begin_twophase(xid)
                break
            except TransientConnectorError:
                # a kept connection the server closed meanwhile (the first statement
                # finds out): nothing was done on it, so a new one takes its place, once
                self.conn.invalidate()
                self.conn.close()
                connector.drop_spares()
                if attempt == 2:
                    raise
            except BaseException:
                self.conn.close()
                raise
        self.session = SqlWriteSession(connector, self.conn)
        self.prepared = False

    def release(self) -> None:
        # invalidated, not returned to the pool: a pool's reset must not touch what the
        # branch left prepared
        with contextlib.suppress(Exception):
            self.conn.invalidate()
            self.conn.close()

    def prepare(self) -> None:
        with self.connector.translating(f"prepare {self.xid}"):
            self.tx.prepare()
        self.prepared = True

    def commit(self) -> None:
        try:
            with self.connector.translating(f"commit {self.xid}"):
                self.tx.commit()
        except BaseException:
            self.conn.close()
            raise
        self.connector.keep_spare(self.conn)

    def commit_deciding(self, transaction: str, record: str) -> None:
        try:
            with self.connector.translating(f"commit {self.xid} as the last resource"):
                self.connector._commit_deciding(self.conn, self.tx, transaction, record)
        except BaseException:
            self.conn.invalidate()
            self.conn.close()
            raise
        self.connector.keep_spare(self.conn)

    def rollback(self) -> None:
        def undo() -> None:
            with self.connector.translating(f"roll back {self.xid}"):
                if self.tx.is_active or self.prepared:
                    self.tx.rollback()

        end_rollback(self.conn, undo, lambda: self.prepared)


def end_rollback(conn: sa.Connection, undo: Callable[[], None],
                 prepared: Callable[[], bool]) -> None:
    """Roll a two-phase branch back with ``undo``, then release its connection. If the
    connection is gone, it leaves the pool: an unprepared branch died with it (done), a
    prepared one is ended later by recovery (the error is raised)."""
    try:
        undo()
    except ConnectorError:
        conn.invalidate()
        if not prepared():
            return
        raise
    finally:
        conn.close()


class SqlConnector(Connector):
    """A database reached through a SQLAlchemy URL."""

    capabilities = Capabilities()
    #: whether a long-running read may stay open while another connection writes the table
    stream_reads_while_writing = True

    def __init__(self, name: str, url: str, *, engine: sa.Engine | None = None,
                 schema: str | None = None) -> None:
        super().__init__(name, url)
        #: the environment's `schema:` (PostgreSQL: the search path; MariaDB: the database),
        #: where unqualified table names and dualwrite's own tables are
        self.default_schema = schema
        self.engine = engine or self._create_engine(url)
        #: connections that ended a committed branch, with when: see branch_connection
        self._spares: deque[tuple[float, sa.Connection]] = deque()
        self._closed = False
        self._tables: dict[str, sa.Table] = {}
        self._schemas: dict[str, TableSchema] = {}
        self._binary_order: dict[tuple[str, str], bool] = {}
        self._statements: dict[tuple[Any, ...], Any] = {}
        self._capture: CaptureLog | None = None
        self._delta: DeltaJournal | None = None
        self._decisions_ready = False  # the decision table is known to exist
        self._pruned_at = float("-inf")  # when abort rows were last pruned

    # -- hooks for dialects -----------------------------------------------------------------
    def _create_engine(self, url: str) -> sa.Engine:
        return sa.create_engine(url, pool_pre_ping=True)

    @contextmanager
    def catalog_connection(self) -> Iterator[sa.Connection]:
        """A connection to read the database's catalog with (SQLAlchemy's reflection).
        Dialects whose connections read values dualwrite's way override it to read the
        catalog the driver's way (SQLAlchemy's own queries expect that)."""
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def single_statements(self) -> Iterator[sa.Connection]:
        """A pooled connection for statements each atomic on its own (a read of the change
        log, a fenced delete): no transaction around them where the driver takes that at no
        cost (PostgreSQL: no BEGIN and no ROLLBACK, two round trips fewer per use; MariaDB:
        sessions of their own, in autocommit from the start); elsewhere a transaction, rolled
        back at the end. Nothing written through it may depend on a later statement: each
        commits as it runs where there is no transaction."""
        with self.engine.connect() as conn:
            yield conn
            conn.rollback()

    def _bulk_insert(self, conn: sa.Connection, table: sa.Table, columns: list[str],
                     rows: Sequence[Row]) -> None:
        stmt = sa.insert(table)
        conn.execute(stmt, [dict(zip(columns, r, strict=True)) for r in rows])

    def _insert_returning(self, conn: sa.Connection, table: str, values: dict[str, Any]
                          ) -> dict[str, Any]:
        """Insert one row and return it as stored, in one round trip."""
        t = self.table(table)
        stmt = self.statement(("insert-returning", table, tuple(values)), lambda: (
            sa.insert(t).values({t.c[c]: untyped(c) for c in values})
            .returning(*[self._select_expr(t, c.name) for c in t.c])))
        row = tuple(conn.execute(stmt, values).one())
        load = self._loaders(table, [c.name for c in t.c])
        return dict(zip([c.name for c in t.c], load(row) if load else row, strict=True))

    def _insert_resolving(self, conn: sa.Connection, table: str, columns: tuple[str, ...],
                          row: Row, lookups: Sequence[FoldedLookup]) -> bool | None:
        """See :meth:`WriteSession.insert_resolving`; None where the dialect has no such
        statement."""
        return None

    def _bulk_update(self, conn: sa.Connection, table: sa.Table, key: list[str],
                     columns: list[str], rows: Sequence[tuple[Row, Row]]) -> int | None:
        """Update many rows in one statement where the dialect can; None: use executemany."""
        return None

    def _bulk_update_if(self, conn: sa.Connection, table: sa.Table, key: list[str],
                        columns: list[str], rows: Sequence[tuple[Row, Row, Row]]
                        ) -> set[Row] | None:
        """See :meth:`WriteSession.update_if`; None where the dialect has no bulk form."""
        return None

    def _json_update_if(self, conn: sa.Connection, table: sa.Table, key: list[str],
                        columns: list[str], key_sources: list[str], sources: list[JsonSource],
                        new: Sequence[str], old: Sequence[str],
                        mappings: Sequence[Sequence[tuple[str, Any]]]) -> set[Row] | None:
        """See :meth:`WriteSession.update_if_json`; None where the dialect has no such
        statement."""
        return None

    def _json_insert(self, conn: sa.Connection, table: sa.Table, columns: list[str],
                     sources: list[JsonSource], rows: Sequence[str], key: list[str],
                     mappings: Sequence[Sequence[tuple[str, Any]]]) -> set[Row] | None:
        """See :meth:`WriteSession.insert_json`; None where the dialect has no such
        statement."""
        return None

    def _column_is_binary_ordered(self, table: str, column: str) -> bool:
        """True when the database already orders this column by code point."""
        return True

    def _binary_order_expr(self, col: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """``col`` ordered by code point, for a column whose collation does not do that."""
        return col

    def _unmark_origin(self, conn: sa.Connection) -> None:
        """Make this session's writes visible to change capture until its transaction ends
        (see :mod:`dualwrite.connectors.capture`, "No echo"): each backend's own way."""
        raise TerminalConnectorError(
            f"change capture is not available for {self.engine.dialect.name}",
            environment=self.name, hint="use a backend with change capture")

    #: whether a locking read takes row locks (``SELECT ... FOR UPDATE``); False where the
    #: write transaction's lock already covers the whole database
    locks_rows = True

    def _key_in(self, column: sa.ColumnElement[Any], values: list[Any]
                ) -> sa.ColumnElement[bool]:
        """``column`` is one of ``values`` (a chunk of single-column keys), as the database
        takes it fastest."""
        return column.in_(values)

    def capture_dialect(self) -> Dialect:
        """The SQL of change capture for this database (its package's Dialect); the default
        refuses."""
        raise TerminalConnectorError(
            f"change capture is not available for {self.engine.dialect.name}",
            environment=self.name, hint="use PostgreSQL, MariaDB or SQLite")

    def change_log(self) -> CaptureLog:
        if self._capture is None:
            from dualwrite.connectors.capture import CaptureLog

            self._capture = CaptureLog(self)
        return self._capture

    def delta_journal(self) -> DeltaJournal | None:
        if not self.capabilities.capture:
            return None
        if self._delta is None:
            from dualwrite.connectors.delta import DeltaJournal

            self._delta = DeltaJournal(self)
        return self._delta

    # -- error translation: the one choke point ----------------------------------------------
    def translating(self, doing: str) -> _Translating:
        """A context in which every database error becomes a :class:`ConnectorError` naming
        ``doing``: a rejected row is a ConstraintViolation, an unreachable database a
        TransientConnectorError, anything else a TerminalConnectorError."""
        return _Translating(self, doing)

    #: driver error code -> Fault; each dialect module holds and documents its own table
    #: (see docs/operations.md, "How errors are classified")
    error_classes: Mapping[Any, Fault] = {}

    def _error_code(self, orig: BaseException) -> str | int | None:
        """The driver's code for ``orig`` (SQLSTATE, error number, result code name), or None
        where the driver gave none (an error raised before the server answered)."""
        return None

    def _classify_code(self, code: str | int) -> Fault | None:
        """``code``'s class in :attr:`error_classes`; None for a code it does not list."""
        return self.error_classes.get(code)

    def _violated(self, orig: BaseException) -> tuple[str | None, str | None]:
        """(the column, the value as printed) that the database's report of a rejected write
        names, where it names them; read from the backend's own report, so each backend
        says how (see :class:`~dualwrite.errors.ConstraintViolation`)."""
        return None, None

    def classify(self, exc: BaseException) -> tuple[Fault, str | int | None]:
        """(what ``exc`` means, the driver's code) for a SQLAlchemy error. By the driver's
        code first, then by the exception's type; the message's words only for an error that
        carries no code at all (see :func:`fault_by_text`). Runs only on errors, never on
        the hot path."""
        orig = getattr(exc, "orig", None)
        code = self._error_code(orig) if isinstance(orig, BaseException) else None
        if code is not None:
            fault = self._classify_code(code)
            if fault is not None:
                return fault, code
        if isinstance(exc, sa_exc.IntegrityError):
            return Fault.CONSTRAINT, code
        if isinstance(exc, sa_exc.DataError):
            return Fault.VALUE, code
        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            return Fault.TRANSIENT, code
        if code is None:
            return fault_by_text(exc), None
        return Fault.TERMINAL, code

    def _translated(self, doing: str, exc: BaseException) -> BaseException | None:
        """The ConnectorError that stands for ``exc``; None when ``exc`` is to propagate as
        it is (already translated, or not a database error)."""
        if isinstance(exc, ConnectorError):
            return None
        if isinstance(exc, sa_exc.DBAPIError | sa_exc.StatementError):
            fault, code = self.classify(exc)
            if fault is Fault.TERMINAL and not isinstance(exc, sa_exc.DBAPIError):
                return TerminalConnectorError(f"{doing}: {exc}", environment=self.name)
            return self._error_for(doing, exc, fault, code)
        if isinstance(exc, sa_exc.TimeoutError):
            # the pool had no connection free in time: load, not a fault of the database
            return TransientConnectorError(
                f"{doing}: every connection of {self.name}'s pool is in use ({exc})",
                hint="dualwrite retries; if it lasts, fewer concurrent clients, or a larger "
                "pool (the URL's pool_size / max_overflow)", environment=self.name)
        if isinstance(exc, sa_exc.SQLAlchemyError):
            return TerminalConnectorError(f"{doing}: {exc}", environment=self.name)
        dbapi = self.engine.dialect.loaded_dbapi
        if isinstance(exc, Exception) and isinstance(exc, dbapi.Error):
            # Raw driver errors, from paths that bypass SQLAlchemy (COPY, the PostgreSQL
            # branch): wrapped the way SQLAlchemy would, and classified like the rest.
            wrapped = sa_exc.DBAPIError.instance(doing, None, exc, dbapi.Error)
            wrapped.__cause__ = exc
            out = self._translated(doing, wrapped)
            if out is not None:
                out.__cause__ = wrapped
            return out
        return None

    def _error_for(self, doing: str, exc: sa_exc.StatementError, fault: Fault,
                   code: str | int | None) -> ConnectorError:
        """The error of the hierarchy for ``fault``, with the message and hint it names."""
        said = self._driver_message(exc)
        kind = _VIOLATIONS.get(fault)
        if kind is not None or fault is Fault.VALUE:
            orig = getattr(exc, "orig", None)
            column, value = (self._violated(orig) if isinstance(orig, BaseException)
                             else (None, None))
        if kind is not None:
            return ConstraintViolation(
                f"{doing}: the database rejected the row: {said}",
                hint="fix the row's value or the constraint; the error names the column",
                environment=self.name, code=code, kind=kind, column=column, value=value)
        if fault is Fault.VALUE:
            return ConstraintViolation(
                f"{doing}: a value does not fit its column: {said}",
                hint="check the column's type and length on this side",
                environment=self.name, code=code, kind="value", column=column, value=value)
        if fault is Fault.UNWRITABLE:
            # the driver could not write a value (a type it cannot adapt): the row's fault,
            # found and sent to the inbox like a rejected row, never the whole table's
            return ConstraintViolation(
                f"{doing}: a value cannot be written: {said}",
                hint="check the value against the column's type on this side",
                environment=self.name, code=code, kind="value")
        if fault is Fault.TRANSIENT:
            return TransientConnectorError(
                f"{doing}: {said}",
                hint=f"the database at {self._shown_url()} is unreachable or busy: check that "
                "it is running and reachable (`run` and `serve` keep retrying; other "
                "commands stop here)", environment=self.name, code=code)
        if fault in (Fault.CREDENTIALS, Fault.GRANTS, Fault.DATABASE):
            return self._refused_connection(doing, said, fault, code)
        if fault is Fault.PRIVILEGE:
            user = sa.engine.make_url(self.url).username
            return TerminalConnectorError(
                f"{doing}: user {user!r} lacks a privilege this needs: {said}",
                hint="grant the user the privilege on the object the error names (or use "
                "another user): dualwrite does not retry this, as retrying cannot help",
                environment=self.name, code=code)
        return TerminalConnectorError(
            f"{doing}: {said}",
            hint="check the table and column names and the database permissions",
            environment=self.name, code=code)

    def _shown_url(self) -> str:
        """The environment's URL without its password, for messages."""
        try:
            return sa.engine.make_url(self.url).render_as_string(hide_password=True)
        except sa_exc.ArgumentError:
            return "its URL"

    def _refused_connection(self, doing: str, said: str, why: Fault, code: str | int | None
                            ) -> TerminalConnectorError:
        """A session the server would not open, as what to fix: the credentials, the grants
        or the database name. Never transient: retrying the same URL gets the same answer,
        so nothing retries it."""
        url = sa.engine.make_url(self.url)
        where = self._shown_url()
        if why is Fault.CREDENTIALS:
            return TerminalConnectorError(
                f"{doing}: the database refused the credentials of user {url.username!r} "
                f"({where}): {said}",
                hint="correct the user name or password in the URL of environment "
                f"{self.name!r} (or the ${{VAR}} it takes them from), or create that user on "
                "the server: dualwrite does not retry this, as retrying cannot help",
                environment=self.name, code=code)
        if why is Fault.GRANTS:
            return TerminalConnectorError(
                f"{doing}: user {url.username!r} may not use database {url.database!r} "
                f"({where}): {said}",
                hint=f"grant the user access to the database (e.g. GRANT ALL ON "
                f"{url.database}.* TO ...), or use another user: dualwrite does not retry this, "
                "as retrying cannot help",
                environment=self.name, code=code)
        return TerminalConnectorError(
            f"{doing}: database {url.database!r} does not exist on the server ({where}): "
            f"{said}",
            hint=f"create it (CREATE DATABASE {url.database}), or correct the database name "
            f"in the URL of environment {self.name!r}: dualwrite does not retry this, as "
            "retrying cannot help",
            environment=self.name, code=code)

    @staticmethod
    def _driver_message(exc: sa_exc.DBAPIError | sa_exc.StatementError) -> str:
        orig = getattr(exc, "orig", None)
        text = str(orig) if orig is not None else str(exc)
        return " ".join(text.split())[:500]

    # -- schema ------------------------------------------------------------------------------
    def tables(self, schema: str | None = None) -> list[str]:
        """The tables of the connection's default schema, or of ``schema`` (then named
        ``schema.table``)."""
        with self.translating(f"list tables{f' of schema {schema}' if schema else ''}"), \
                self.catalog_connection() as conn:
            names = sa.inspect(conn).get_table_names(schema=schema)
        return sorted(f"{schema}.{n}" if schema else n for n in names
                      if not n.startswith(OWN_TABLE_PREFIX))

    def schema_tables(self, schema: str) -> list[str]:
        return self.tables(schema)

    def schemas(self) -> list[str]:
        """The schemas (MariaDB: databases) this connection can see."""
        with self.translating("list schemas"), self.catalog_connection() as conn:
            return sorted(sa.inspect(conn).get_schema_names())

    def table(self, name: str) -> sa.Table:
        t = self._tables.get(name)
        if t is None:
            self.describe(name)
            t = self._tables[name]
        return t

    def describe(self, table: str) -> TableSchema:
        cached = self._schemas.get(table)
        if cached is not None:
            return cached
        try:
            with self.translating(f"describe {table}"), warnings.catch_warnings():
                # a type SQLAlchemy does not know (inet6, xml, point) is still a column: its
                # kind is OTHER, named by the database's catalog (column_type)
                warnings.filterwarnings("ignore", "Did not recognize type", sa_exc.SAWarning)
                schema_name, name = split_table(table)
                with self.catalog_connection() as conn:
                    t = sa.Table(name, sa.MetaData(), schema=schema_name, autoload_with=conn)
        except TerminalConnectorError as exc:
            if isinstance(exc.__cause__, sa_exc.NoSuchTableError):
                raise TerminalConnectorError(
                    f"table {table!r} does not exist", environment=self.name,
                    hint="create it, or correct the table name in the map") from exc
            raise
        self._tables[table] = t
        pk = tuple(c.name for c in t.primary_key.columns)
        with self.translating(f"describe {table}"):
            catalog = self._catalog(table)
            collations = self._collations(table)
        cols: dict[str, Column] = {}
        for c in t.columns:
            kind, facets = self.column_type(c, catalog.get(c.name, ""))
            if kind is Kind.STRING:
                named = getattr(c.type, "collation", None)
                collation, folds = collations.get(c.name, (named, bool(
                    named and named.casefold() == "nocase")))
                facets = _replace(facets, collation=collation, folds_case=folds)
            auto = (c.autoincrement is True or (
                c.autoincrement == "auto" and len(pk) == 1 and c.name == pk[0]
                and kind is Kind.INTEGER))
            cols[c.name] = Column(
                name=c.name, kind=kind, nullable=bool(c.nullable),
                has_default=c.server_default is not None or auto,
                primary_key=c.primary_key, length=getattr(c.type, "length", None),
                sql_type=_compiled(c.type, self.engine.dialect), facets=facets)
        fks = [ForeignKey(tuple(e.parent.name for e in fk.elements), qualified(fk.referred_table),
                          tuple(e.column.name for e in fk.elements))
               for fk in t.foreign_key_constraints]
        uniques: list[tuple[str, ...]] = []
        with self.translating(f"describe {table}"), warnings.catch_warnings(), \
                self.catalog_connection() as conn:
            warnings.filterwarnings("ignore", "Did not recognize type", sa_exc.SAWarning)
            insp = sa.inspect(conn)
            for u in insp.get_unique_constraints(t.name, schema=t.schema):
                uniques.append(tuple(c for c in u["column_names"] if c))
            for ix in insp.get_indexes(t.name, schema=t.schema):
                if ix.get("unique"):
                    uniques.append(tuple(c for c in ix["column_names"] if c))
        schema = TableSchema(table, cols, pk, fks, uniques)
        self._schemas[table] = schema
        return schema

    # -- types and values (hooks for dialects) ---------------------------------------------
    #: the database's name in messages ("timetz (PostgreSQL)")
    database_name = "SQL"

    def _catalog(self, table: str) -> dict[str, str]:
        """Column -> the type as the database's catalog names it, where reflection needs it
        (types SQLAlchemy does not know; MariaDB's JSON columns)."""
        return {}

    def _collations(self, table: str) -> dict[str, tuple[str | None, bool]]:
        """Column -> (its collation's name, whether it folds case), where the dialect reads
        them from its catalog (else the reflected type's COLLATE clause is used)."""
        return {}

    def column_type(self, column: sa.Column[Any], catalog: str) -> tuple[Kind, Facets]:
        """The kind and facets of a reflected column. ``catalog``: the type as
        :meth:`_catalog` names it (or "")."""
        t = column.type
        name = catalog or _compiled(t, self.engine.dialect)
        return type_facets(t, Facets(database=self.database_name, type_name=name))

    def _select_expr(self, t: sa.Table, column: str) -> sa.ColumnElement[Any]:
        """How ``column`` is selected: as the driver gives it (see :func:`raw`)."""
        return raw(t.c[column])

    def _value_loader(self, column: Column) -> Callable[[Any], Any] | None:
        """The conversion of the driver's value for ``column`` into its kind's value, where
        the driver's adapters (registered at connect) do not make it; None: nothing to do."""
        return None

    def _loaders(self, table: str, columns: Sequence[str]) -> RowLoader | None:
        """A function converting one row of ``columns`` read from ``table`` (None when every
        column's driver value is already its kind's value: the common case costs nothing)."""
        key = ("loaders", table, tuple(columns))
        got = self._statements.get(key, _UNSET)
        if got is not _UNSET:
            return got  # type: ignore[no-any-return]
        schema = self.describe(table)
        fix = [(i, fn) for i, c in enumerate(columns)
               if (fn := self._value_loader(schema.columns[c])) is not None]
        out: RowLoader | None = None
        if fix:
            def load(row: Sequence[Any]) -> tuple[Any, ...]:
                values = list(row)
                for i, fn in fix:
                    v = values[i]
                    if v is not None:
                        values[i] = fn(v)
                return tuple(values)

            out = load
        self._statements[key] = out
        return out

    def _selected(self, t: sa.Table, columns: Sequence[str]) -> list[sa.ColumnElement[Any]]:
        return [self._select_expr(t, c) for c in columns]

    def _rows(self, result: Iterable[Any], load: RowLoader | None) -> list[Row]:
        if load is None:
            return [tuple(r) for r in result]
        return [load(r) for r in result]

    def statement(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        """A Core statement built once per key: live writes run the same few statements
        thousands of times, and building one costs more than running it on loopback."""
        stmt = self._statements.get(key)
        if stmt is None:
            stmt = self._statements[key] = build()
        return stmt

    def forget_schema(self) -> None:
        """Drop cached reflections (after DDL)."""
        self._tables.clear()
        self._schemas.clear()
        self._statements.clear()
        self._binary_order.clear()

    # -- reads -------------------------------------------------------------------------------
    def _order_cols(self, t: sa.Table, key: Sequence[str]) -> list[sa.ColumnElement[Any]]:
        out: list[sa.ColumnElement[Any]] = []
        for k in key:
            c = t.c[k]
            if isinstance(c.type, sqltypes.String) and not self._binary_ordered(qualified(t), k):
                out.append(self._binary_order_expr(c))
            else:
                out.append(c)
        return out

    def _binary_ordered(self, table: str, column: str) -> bool:
        cached = self._binary_order.get((table, column))
        if cached is None:
            cached = self._column_is_binary_ordered(table, column)
            self._binary_order[(table, column)] = cached
        return cached

    def _where(self, t: sa.Table, where: Expr | None) -> list[sa.ColumnElement[bool]]:
        if where is None:
            return []

        def column(name: str) -> sa.ColumnElement[Any]:
            if name in t.c:
                return t.c[name]
            for c in t.c:
                if c.name.casefold() == name.casefold():
                    return c
            raise TerminalConnectorError(
                f"filter names column {name!r}, which table {t.name!r} does not have",
                hint="correct the filter in the map", environment=self.name)

        return [compile_filter(where, column)]

    @staticmethod
    def _after(cols: list[sa.ColumnElement[Any]], after: Row) -> sa.ColumnElement[bool]:
        """Keyset predicate ``key > after`` expanded so that every database can use an index:
        k1 > a OR (k1 = a AND k2 > b) ..."""
        clauses: list[sa.ColumnElement[bool]] = []
        for i, c in enumerate(cols):
            eqs = [cols[j] == sa.literal(after[j]) for j in range(i)]
            clauses.append(sa.and_(*eqs, c > sa.literal(after[i])))
        return sa.or_(*clauses)

    def read(self, table: str, columns: Sequence[str], *, key: Sequence[str],
             where: Expr | None = None, after: Row | None = None,
             batch_size: int = 5000) -> Iterator[list[Row]]:
        t = self.table(table)
        order = self._order_cols(t, key)
        base_filters = [t.c[k].isnot(None) for k in key] + self._where(t, where)
        select_cols = self._selected(t, columns)
        load = self._loaders(table, columns)
        index_friendly = all(o is t.c[k] for o, k in zip(order, key, strict=True))
        if index_friendly or not self.stream_reads_while_writing:
            # Keyset pagination: each batch is one short query, so no lock or snapshot is held
            # between batches, and the key index serves both the WHERE and the ORDER BY.
            last = after
            while True:
                filters = list(base_filters)
                if last is not None:
                    filters.append(self._after(order, last))
                stmt = sa.select(*select_cols).where(*filters).order_by(*order).limit(batch_size)
                with self.translating(f"read {table}"), self.engine.connect() as conn:
                    rows = self._rows(conn.execute(stmt), load)
                if not rows:
                    return
                yield rows
                if len(rows) < batch_size:
                    return
                kidx = [list(columns).index(k) for k in key]
                last = tuple(rows[-1][i] for i in kidx)
        else:
            # The key's collation is not binary: ordering needs a sort that no index serves, so
            # sort once on the server and stream the result instead of re-sorting per batch.
            filters = list(base_filters)
            if after is not None:
                filters.append(self._after(order, after))
            stmt = sa.select(*select_cols).where(*filters).order_by(*order)
            with self.translating(f"read {table}"), self.engine.connect() as conn:
                result = conn.execution_options(stream_results=True,
                                                yield_per=batch_size).execute(stmt)
                while True:
                    chunk = result.fetchmany(batch_size)
                    if not chunk:
                        return
                    yield self._rows(chunk, load)

    # -- bulk (initial sync's bulk path; the formats are the dialects') -----------------------
    def _range(self, t: sa.Table, key: Sequence[str], after: Row | None, upto: Row | None
               ) -> list[sa.ColumnElement[bool]]:
        """(after, upto] in :meth:`read` order, null keys left out."""
        order = self._order_cols(t, key)
        out: list[sa.ColumnElement[bool]] = [t.c[k].isnot(None) for k in key]
        if after is not None:
            out.append(self._after(order, after))
        if upto is not None:
            out.append(sa.not_(self._after(order, upto)))
        return out

    def bulk_boundary(self, table: str, key: Sequence[str], *, where: Expr | None,
                      after: Row | None, limit: int) -> Row | None:
        t = self.table(table)
        stmt = (sa.select(*self._selected(t, key))
                .where(*self._range(t, key, after, None), *self._where(t, where))
                .order_by(*self._order_cols(t, key)).offset(limit - 1).limit(1))
        with self.translating(f"read {table}"), self.engine.connect() as conn:
            rows = self._rows(conn.execute(stmt), self._loaders(table, key))
        return rows[0] if rows else None

    def has_rows(self, table: str, key: Sequence[str], *, after: Row | None,
                 upto: Row | None) -> bool:
        t = self.table(table)
        stmt = sa.select(sa.literal(1)).select_from(t).where(
            *self._range(t, key, after, upto)).limit(1)
        with self.translating(f"read {table}"), self.engine.connect() as conn:
            return conn.execute(stmt).first() is not None

    def _bulk_select(self, t: sa.Table, fields: Sequence[BulkField], fmt: str
                     ) -> tuple[list[sa.ColumnElement[Any]], list[sa.ColumnElement[bool]]]:
        """The exported expressions, and the conditions a row meets when every one of them
        is written exactly (the others are misses)."""
        exprs: list[sa.ColumnElement[Any]] = []
        exact: list[sa.ColumnElement[bool]] = []
        for f in fields:
            if f.column is None:
                exprs.append(sa.null() if f.constant is None else sa.literal(f.constant))
                continue
            c = t.c[f.column]
            if f.pairs is not None:
                keys = [k for k, _v in f.pairs]
                # matched byte for byte, as the engine matches the pairs' values: a value a
                # collation calls equal to a pair's is a miss, which the row path decides
                m = self._bulk_match(c)
                exprs.append(sa.case({k: sa.literal(v) if v is not None else sa.null()
                                      for k, v in f.pairs}, value=m) if keys else sa.null())
                exact.append(sa.or_(c.is_(None), m.in_(keys)) if keys else c.is_(None))
                continue
            exprs.append(c)
            if isinstance(c.type, sqltypes.String):
                # NULL is written exactly; a condition on NULL would be unknown, leaving the
                # row out of both the export and the misses
                exact.extend(sa.or_(c.is_(None), cond)
                             for cond in self._bulk_text_exact(c, fmt))
        return exprs, exact

    def _bulk_match(self, c: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """``c`` as compared byte for byte (text under a binary collation)."""
        return c

    def _bulk_text_exact(self, c: sa.ColumnElement[Any], fmt: str
                         ) -> list[sa.ColumnElement[bool]]:
        """Conditions on a copied text column for its value to be written exactly in
        ``fmt`` (none by default)."""
        return []

    def bulk_misses(self, table: str, columns: Sequence[str], fields: Sequence[BulkField], *,
                    key: Sequence[str], where: Expr | None, after: Row | None,
                    upto: Row | None, fmt: str) -> list[Row]:
        t = self.table(table)
        _exprs, exact = self._bulk_select(t, fields, fmt)
        if not exact:
            return []
        stmt = (sa.select(*self._selected(t, columns))
                .where(*self._range(t, key, after, upto), *self._where(t, where),
                       sa.not_(sa.and_(*exact)))
                .order_by(*self._order_cols(t, key)))
        with self.translating(f"read {table}"), self.engine.connect() as conn:
            return self._rows(conn.execute(stmt), self._loaders(table, columns))

    def _bulk_export_sql(self, table: str, fields: Sequence[BulkField], *,
                         key: Sequence[str], where: Expr | None, after: Row | None,
                         upto: Row | None, fmt: str) -> str:
        """The export's SELECT as SQL text with its values inline (a bulk export such as COPY
        takes no parameters; every value is rendered by the dialect's literal quoting)."""
        t = self.table(table)
        exprs, exact = self._bulk_select(t, fields, fmt)
        stmt = sa.select(*exprs).where(*self._range(t, key, after, upto),
                                       *self._where(t, where), *exact)
        return str(stmt.compile(self.engine, compile_kwargs={"literal_binds": True}))

    def query(self, table: str, columns: Sequence[str], *, where: Expr | None = None,
              order_by: Sequence[tuple[str, bool]] = (), limit: int | None = None,
              offset: int = 0) -> list[Row]:
        t = self.table(table)
        stmt = sa.select(*self._selected(t, columns)).where(*self._where(t, where))
        order: list[sa.ColumnElement[Any]] = [
            t.c[c].desc() if desc else t.c[c].asc() for c, desc in order_by]
        # a stable order for paging: the primary key breaks ties
        order += [c.asc() for c in t.primary_key.columns
                  if c.name not in {o for o, _ in order_by}]
        stmt = stmt.order_by(*order).offset(offset or None)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.translating(f"query {table}"), self.engine.connect() as conn:
            return self._rows(conn.execute(stmt), self._loaders(table, columns))

    def count(self, table: str, *, where: Expr | None = None) -> int:
        t = self.table(table)
        stmt = sa.select(sa.func.count()).select_from(t).where(*self._where(t, where))
        with self.translating(f"count {table}"), self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def fetch(self, table: str, columns: Sequence[str], *, key: Sequence[str],
              keys: Sequence[Row]) -> list[Row]:
        if not keys:
            return []
        # each chunk's statement reads on its own (READ COMMITTED takes a snapshot per
        # statement in a transaction as well): no transaction where it costs round trips
        with self.single_statements() as conn:
            return self._fetch(conn, table, columns, key, keys)

    def _fetch(self, conn: sa.Connection, table: str, columns: Sequence[str],
               key: Sequence[str], keys: Sequence[Row], *, lock: bool = False) -> list[Row]:
        t = self.table(table)
        out: list[Row] = []
        kcols = [t.c[k] for k in key]
        load = self._loaders(table, columns)
        with self.translating(f"fetch from {table}"):
            for start in range(0, len(keys), LOOKUP_CHUNK):
                chunk = keys[start:start + LOOKUP_CHUNK]
                if len(kcols) == 1:
                    cond = self._key_in(kcols[0], [k[0] for k in chunk])
                else:
                    cond = sa.tuple_(*kcols).in_([tuple(k) for k in chunk])
                stmt = sa.select(*self._selected(t, columns)).where(cond)
                if lock and self.locks_rows:
                    stmt = stmt.with_for_update()
                out.extend(self._rows(conn.execute(stmt), load))
        return out

    def lookup(self, table: str, match: str, values: Iterable[Any], returning: str
               ) -> dict[Any, Any]:
        with self.single_statements() as conn:  # as fetch
            return self._lookup(conn, table, match, values, returning)

    def _lookup(self, conn: sa.Connection, table: str, match: str, values: Iterable[Any],
                returning: str) -> dict[Any, Any]:
        t = self.table(table)
        wanted = list({canonical(v): v for v in values if v is not None}.values())
        found: dict[Any, Any] = {}
        load = self._loaders(table, [match, returning])
        # built once per (table, match, returning): building it cost about a third of a
        # lookup's Python, and live writes and the applier run the same few lookups
        stmt = self.statement(("lookup", table, match, returning), lambda: (
            sa.select(*self._selected(t, [match, returning]))
            .where(t.c[match].in_(sa.bindparam("values", expanding=True)))
            .order_by(t.c[returning])))
        with self.translating(f"lookup in {table}"):
            for start in range(0, len(wanted), LOOKUP_CHUNK):
                chunk = wanted[start:start + LOOKUP_CHUNK]
                for m, r in self._rows(conn.execute(stmt, {"values": chunk}), load):
                    found.setdefault(canonical(m), r)
        return found

    # -- writes ------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[WriteSession]:
        with self.translating("begin"):
            conn = self.engine.connect()
        try:
            with self.transactional(conn):
                yield SqlWriteSession(self, conn)
        finally:
            conn.close()

    @contextmanager
    def transactional(self, conn: sa.Connection) -> Iterator[None]:
        """One transaction on ``conn``: committed when the block ends, rolled back (and the
        error re-raised) when it raises."""
        with self.translating("begin"):
            tx = conn.begin()
        try:
            yield
        except BaseException:
            tx.rollback()
            raise
        with self.translating("commit"):
            tx.commit()

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        """Run one statement in its own transaction (tests, demo set-up, DDL)."""
        with self.translating("execute"), self.engine.begin() as conn:
            result = conn.execute(sa.text(sql), params or {})
            return [tuple(r) for r in result] if result.returns_rows else []

    # -- two-phase commit --------------------------------------------------------------------
    def branch_connection(self) -> sa.Connection:
        """A connection for a two-phase branch: a spare when there is one, else the pool's.

        Taking a connection from the pool and giving it back costs about 0.15 ms of Python
        per live transaction and side (SQLAlchemy's checkout, reset and checkin; on
        PostgreSQL a tenth of dualwrite's own CPU in a one-row create). So a branch that
        commits keeps its connection aside (:meth:`keep_spare`), checked out, for the next
        branch: at most :data:`SPARES` of them (one per concurrent live transaction), none
        used after :data:`SPARE_IDLE_SECONDS` unused (it goes back to the pool, whose own
        rules then apply), all given back when a branch finds its connection gone
        (:meth:`drop_spares`) and when the connector closes."""
        now = time.monotonic()
        while True:
            try:
                at, conn = self._spares.pop()  # the most recent: the least likely stale
            except IndexError:
                break
            if now - at < SPARE_IDLE_SECONDS:
                return conn
            self._release(conn)
        with self.translating("begin a two-phase transaction"):
            return self.engine.connect()

    def keep_spare(self, conn: sa.Connection) -> None:
        """Keep ``conn``, whose branch has just committed, for the next branch, unless its
        session holds something of the branch's (see :meth:`_reusable`): then it goes back
        to the pool, whose reset and checkin hooks clear it."""
        if not self._reusable(conn):
            self._release(conn)
            return
        if conn.in_transaction():
            # SQLAlchemy's own record of a transaction the branch's commit ended on the
            # server: no round trip, the driver is idle
            conn.rollback()
        if self._closed or len(self._spares) >= SPARES:
            self._release(conn)
            return
        self._spares.append((time.monotonic(), conn))
        if self._closed:  # closed meanwhile: close() may have run before the append
            self.drop_spares()

    def drop_spares(self) -> None:
        """Give every spare back to the pool."""
        while True:
            try:
                _at, conn = self._spares.pop()
            except IndexError:
                return
            self._release(conn)

    @staticmethod
    def _release(conn: sa.Connection) -> None:
        with contextlib.suppress(Exception):
            conn.close()

    def _reusable(self, conn: sa.Connection) -> bool:
        """Whether a committed branch's session is as fresh as the pool would give it."""
        return True

    def begin_branch(self, xid: str) -> Branch:
        if not self.capabilities.two_phase:
            return super().begin_branch(xid)
        return SqlBranch(self, xid)

    # -- link bookkeeping --------------------------------------------------------------------
    def _link_table(self) -> sa.Table:
        md = sa.MetaData()
        return sa.Table(
            LINK_TABLE, md,
            sa.Column("environment", sa.String(200), primary_key=True),
            sa.Column("link_id", sa.String(64), nullable=False),
            sa.Column("link_name", sa.String(200), nullable=False),
            sa.Column("created_at", sa.String(40), nullable=False),
        )

    def get_link(self) -> LinkRecord | None:
        t = self._link_table()
        with self.translating("read link record"), self.engine.begin() as conn:
            if not sa.inspect(conn).has_table(LINK_TABLE):
                return None
            row = conn.execute(sa.select(t)).first()
        if row is None:
            return None
        return LinkRecord(row.link_id, row.link_name, row.environment, row.created_at)

    def set_link(self, record: LinkRecord) -> None:
        t = self._link_table()
        try:
            with self.translating("record link"), self.engine.begin() as conn:
                t.metadata.create_all(conn)
        except ConnectorError:
            # Another process made the table at the same moment (PostgreSQL's CREATE TABLE
            # then fails on the catalog's unique name): it is there, which is all we need.
            if f"table {LINK_TABLE}" not in self.link_storage():
                raise
        try:
            with self.translating("record link"), self.engine.begin() as conn:
                conn.execute(sa.delete(t))
                conn.execute(sa.insert(t).values(
                    environment=record.environment, link_id=record.link_id,
                    link_name=record.link_name, created_at=record.created_at))
        except ConstraintViolation:
            # Another process recorded this environment meanwhile (our insert met its row on
            # the environment's name): that record stands; the caller reads it back.
            if self.get_link() is None:
                raise

    def clear_link(self) -> None:
        t = self._link_table()
        with self.translating("remove link record"), self.engine.begin() as conn:
            if sa.inspect(conn).has_table(LINK_TABLE):
                conn.execute(sa.delete(t))

    def link_storage(self) -> list[str]:
        with self.translating("look for the link record"), self.engine.connect() as conn:
            inspector = sa.inspect(conn)
            return [f"table {t}" for t in LINK_STORAGE if inspector.has_table(t)]

    def drop_link_storage(self) -> None:
        self.execute(f"DROP TABLE IF EXISTS {LINK_TABLE}")
        self.execute(f"DROP TABLE IF EXISTS {DECISIONS_TABLE}")

    # -- the decision table (capabilities.last_resource) ------------------------------------
    def _long_text(self) -> sa.types.TypeEngine[str]:
        """A text column with no practical limit (a decision row's record)."""
        return sa.Text()

    def _decisions_table(self) -> sa.Table:
        return sa.Table(
            DECISIONS_TABLE, sa.MetaData(),
            sa.Column("xid", sa.String(190), primary_key=True),
            sa.Column("outcome", sa.String(8), nullable=False),
            # a transaction's audit rows
            sa.Column("record", self._long_text()),
            # set on abort rows only (commit rows live a fraction of a second)
            sa.Column("at", sa.String(40)),
        )

    def ensure_decisions(self) -> None:
        if self._decisions_ready:
            return
        t = self._decisions_table()
        try:
            with self.translating("create the decision table"), self.engine.begin() as conn:
                t.create(conn, checkfirst=True)
        except ConnectorError:
            # another process made it at the same moment (PostgreSQL's CREATE TABLE then
            # fails on the catalog's unique name): it is there, which is all we need
            with self.translating("look for the decision table"), \
                    self.engine.connect() as conn:
                if not sa.inspect(conn).has_table(DECISIONS_TABLE):
                    raise
        self._decisions_ready = True

    def _commit_deciding(self, conn: sa.Connection, tx: sa.TwoPhaseTransaction,
                         transaction: str, record: str) -> None:
        """Insert ``transaction``'s commit row on the branch's connection ``conn``, then
        commit its two-phase transaction ``tx`` unprepared (one phase)."""
        raw: Any = conn.connection.driver_connection
        with raw.cursor() as cur:
            cur.execute(self.decision_insert_sql(), (transaction, record))
        tx.commit()

    def decision_insert_sql(self) -> str:
        """The INSERT of a commit row, for a branch's driver (``%s`` placeholders: the
        transaction, the record)."""
        return (f"INSERT INTO {DECISIONS_TABLE} (xid, outcome, record) "
                "VALUES (%s, 'commit', %s)")

    def _delete_decision_rows(self, conn: sa.Connection, xids: Sequence[str]) -> None:
        """Delete the commit rows of ``xids``. The driver's own placeholders: SQLAlchemy's
        compilation of an IN of a few hundred values costs more than the deletion, five
        times a second."""
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        conn.exec_driver_sql(f"DELETE FROM {DECISIONS_TABLE} WHERE outcome = 'commit' AND "
                             f"xid IN ({', '.join([mark] * len(xids))})", tuple(xids))

    def decisions(self, prefix: str) -> list[tuple[str, str, str | None]]:
        t = self._decisions_table()
        with self.translating("read the decision table"), self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(DECISIONS_TABLE):
                return []
            rows = conn.execute(sa.select(t.c.xid, t.c.outcome, t.c.record).where(
                t.c.xid.startswith(prefix, autoescape=True)).order_by(t.c.xid)).all()
        return [(str(r[0]), str(r[1]), r[2]) for r in rows]

    def settle_decision(self, transaction: str) -> tuple[str, str | None]:
        import datetime as dt

        self.ensure_decisions()
        t = self._decisions_table()
        at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        for attempt in (1, 2):
            try:
                with self.translating(f"settle transaction {transaction}"), \
                        self.engine.begin() as conn:
                    # waits for a commit under way that inserted this key: its outcome
                    # decides
                    conn.execute(sa.insert(t).values(xid=transaction, outcome="abort", at=at))
                return "abort", None
            except ConstraintViolation:
                break
            except TransientConnectorError:
                # typically a pooled session lost with the commit's own (the pool is
                # emptied then): once more on a new one
                if attempt == 2:
                    raise
        with self.translating(f"read the decision of {transaction}"), \
                self.engine.connect() as conn:
            row = conn.execute(sa.select(t.c.outcome, t.c.record).where(
                t.c.xid == transaction)).first()
        if row is None:  # an abort row pruned in between: it was aborted all the same
            return "abort", None
        return str(row[0]), row[1]

    def forget_decisions(self, transactions: Sequence[str]) -> None:
        import datetime as dt

        if self._closed:
            # a drain after the link closed: the rows stay, and the next recovery, finding
            # their decisions in the state store already, deletes them
            return
        t = self._decisions_table()
        prune = time.monotonic() - self._pruned_at > ABORT_ROWS_KEPT_SECONDS / 6
        with self.translating("forget decided transactions"), self.engine.begin() as conn:
            for i in range(0, len(transactions), LOOKUP_CHUNK):
                self._delete_decision_rows(conn, transactions[i:i + LOOKUP_CHUNK])
            if prune:
                before = (dt.datetime.now(dt.UTC)
                          - dt.timedelta(seconds=ABORT_ROWS_KEPT_SECONDS)).isoformat(
                              timespec="seconds")
                conn.execute(sa.delete(t).where(t.c.outcome == "abort", t.c.at < before))
        if prune:
            self._pruned_at = time.monotonic()

    def close(self) -> None:
        self._closed = True
        self.drop_spares()
        if self._capture is not None:
            self._capture.close()
        self.engine.dispose()


def type_facets(t: sa.types.TypeEngine[Any], f: Facets) -> tuple[Kind, Facets]:
    """The kind of a SQLAlchemy type and the facets its attributes say (``f`` holds the
    database and the type's name); dialects add their database's rules."""
    kind = kind_of(t)
    if kind is Kind.DECIMAL:
        f = _replace(f, precision=getattr(t, "precision", None),
                     scale=getattr(t, "scale", None))
    elif kind is Kind.INTEGER:
        f = _replace(f, precision=INTEGER_BITS.get(type(t).__name__.upper(), 64),
                     unsigned=bool(getattr(t, "unsigned", False)))
    elif kind is Kind.FLOAT:
        f = _replace(f, precision=53)
    elif kind is Kind.STRING:
        f = _replace(f, fixed=isinstance(t, sqltypes.CHAR) and not isinstance(
            t, sqltypes.NCHAR | sqltypes.VARCHAR))
    elif kind is Kind.BINARY:
        f = _replace(f, fixed=isinstance(t, sqltypes.BINARY))
    elif kind in (Kind.DATETIME, Kind.TIME):
        f = _replace(f, time_zone=bool(getattr(t, "timezone", False)))
    return kind, f


_UNSET: Any = object()
def _replace(f: Facets, **changes: Any) -> Facets:
    from dataclasses import replace

    return replace(f, **changes)


def _compiled(t: sa.types.TypeEngine[Any], dialect: sa.Dialect) -> str:
    """The SQL text of a type, or its repr for one SQLAlchemy cannot compile."""
    try:
        return str(t.compile(dialect=dialect))
    except sa_exc.CompileError:
        return repr(t)


class _Translating:
    """The context manager of :meth:`SqlConnector.translating` (a class, not a generator:
    it wraps every statement of the live-sync hot path)."""

    __slots__ = ("connector", "doing")

    def __init__(self, connector: SqlConnector, doing: str) -> None:
        self.connector = connector
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> None:
        if exc is None:
            return
        new = self.connector._translated(self.doing, exc)
        if new is None:
            return  # not ours to translate: it propagates unchanged
        if new.__cause__ is None:
            new.__cause__ = exc
        raise new
