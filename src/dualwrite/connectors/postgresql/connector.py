"""PostgreSQL through psycopg 3: COPY for large batches and initial sync's bulk path,
two-phase commit on psycopg directly (:class:`PgBranch`); capture by triggers (their SQL
in ``dialect.py``)."""

from __future__ import annotations

import contextlib
import json
import re
import select
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from dualwrite.connectors.base import (
    Branch,
    BulkField,
    Capabilities,
    FoldedLookup,
    JsonSource,
    Row,
)
from dualwrite.connectors.capture import (
    CaptureLog,
    Dialect,
)
from dualwrite.connectors.sql import (
    DECISIONS_TABLE,
    Fault,
    SqlConnector,
    SqlWriteSession,
    end_rollback,
    plain_type,
    split_table,
    without_collation,
)
from dualwrite.errors import ConnectorError, TerminalConnectorError, TransientConnectorError
from dualwrite.model.codec import parse_money, parse_time, single
from dualwrite.model.schema import (
    END_OF_DAY,
    FLOAT_SPECIALS,
    INF,
    NAN,
    NEG_INF,
    TEMPORAL_SPECIALS,
    Facets,
    Kind,
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

_SAFE_XID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
#: below this many rows a plain INSERT beats COPY (live sync writes one row at a time)
COPY_THRESHOLD = 50
BINARY_COLLATIONS = {"c", "posix", "ucs_basic", "c.utf8", "c.utf-8"}
#: libpq connection settings dualwrite uses unless the URL sets them (seconds; the user
#: timeout in ms): see PostgresConnector._create_engine
CONNECT_DEFAULTS = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
                    "keepalives_interval": 10, "keepalives_count": 3,
                    "tcp_user_timeout": 60_000}


def regclass_text(table: str) -> str:
    """``fin.currency`` as ``"fin"."currency"``, for CAST(... AS regclass): any name, quoted."""
    schema, name = split_table(table)
    parts = [schema, name] if schema else [name]
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def _ident(table: sa.Table | str) -> Any:
    """The psycopg identifier of a table, schema-qualified where it has a schema."""
    from psycopg import sql

    if isinstance(table, str):
        schema, name = split_table(table)
    else:
        schema, name = table.schema, table.name
    return sql.Identifier(schema, name) if schema else sql.Identifier(name)


def _option_value(value: str) -> str:
    """A value for libpq's ``options`` (``-c name=value``): spaces and backslashes escaped."""
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def _flush(pgconn: Any) -> None:
    """Send what libpq holds of the message in flight. psycopg's connections are
    non-blocking: a message larger than the socket's buffer (a decision record with many
    audit rows) is only partly sent until flushed, and the server would wait for the rest
    while we waited for its answer."""
    while pgconn.flush():
        select.select([], [pgconn.socket], [])


def _answer(pgconn: Any) -> list[Any]:
    """The results of the statement (or simple-query message) in flight, failed ones
    included (:func:`_raise_first_error`).

    Every wait is in ``select``, which releases the GIL: libpq's ``PQgetResult`` is asked
    only for a result already read (``is_busy`` false), because when it must wait for the
    server it waits holding the GIL, stopping every other thread of the process for a round
    trip (and for ever if the bytes it waits for pass through one of them, as a test's fault
    proxy does)."""
    results: list[Any] = []
    while True:
        pgconn.consume_input()
        while not pgconn.is_busy():
            got = pgconn.get_result()
            if got is None:
                return results
            results.append(got)
        select.select([pgconn.socket], [], [])


def _raise_first_error(results: list[Any]) -> None:
    import psycopg

    for r in results:
        if r.status == psycopg.pq.ExecStatus.FATAL_ERROR:
            raise psycopg.errors.error_from_result(r)


def _run_prepared(raw: Any, text: str, params: Sequence[Any]) -> Any:
    """Run ``text`` (psycopg's ``%s`` placeholders) with ``params`` on the psycopg
    connection ``raw``, inside the transaction it has open, and return the result, whose
    rows :func:`_transformer` loads; raises psycopg's error for the statement.

    The live-sync hot path's INSERTs, on the protocol directly: psycopg's cursor spends
    some 35 us of CPU per statement on top of this (its generators and result objects). All
    else is psycopg's own work, as its cursor does it, so values and statements are the
    cursor's: the parameters dumped by the connection's adapters, and the statement prepared
    once per session in the connection's own cache of prepared statements (which psycopg
    empties, on the server too, when the connection rolls back: a cache of our own would
    then name statements that are gone)."""
    from psycopg._preparing import Prepare  # psycopg's own machinery (pinned below 3.4)
    from psycopg._queries import PostgresQuery

    query = PostgresQuery(_transformer(raw))
    query.convert(text, params)
    pgconn = raw.pgconn
    cache = raw._prepared
    prep, name = cache.get(query, True)
    if prep is Prepare.NO:  # the connection prepares nothing
        pgconn.send_query_params(query.query, query.params, param_types=query.types,
                                 param_formats=query.formats)
    else:
        if prep is Prepare.SHOULD:
            pgconn.send_prepare(name, query.query, param_types=query.types)
            _flush(pgconn)
            _raise_first_error(_answer(pgconn))
        pgconn.send_query_prepared(name, query.params, param_formats=query.formats)
    key = cache.maybe_add_to_cache(query, prep, name)
    _flush(pgconn)
    results = _answer(pgconn)
    if key is not None:
        cache.validate(key, prep, name, results)  # a failed statement is not kept
    _raise_first_error(results)
    return results[-1]


def _transformer(raw: Any) -> Any:
    """A psycopg Transformer on the connection's adapters, kept with the connection."""
    tx = getattr(raw, "_dw_transformer", None)
    if tx is None:
        from psycopg.adapt import Transformer

        tx = raw._dw_transformer = Transformer(raw)
    return tx


def _in_transaction(raw: Any) -> bool:
    import psycopg

    return bool(raw.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS)


class PgBranch(Branch):
    """A two-phase branch driven on psycopg directly, the live-sync hot path.

    ``BEGIN`` goes out when the branch opens, without waiting for its answer: it travels
    while the caller maps its row, and the two branches' BEGINs travel together, instead of
    psycopg sending it (and waiting) before the first statement. The session collects the
    answer before it sends anything. ``PREPARE TRANSACTION`` and ``COMMIT PREPARED`` go out
    the same way (``start_*``), so the coordinator has both branches' WAL flushes under way
    at once; ``finish_*`` collects the answer. A branch whose session was never used is not
    prepared at all: there is nothing to commit.

    Contract as :class:`~dualwrite.connectors.base.Branch`: after ``prepare`` a branch named
    ``xid`` is in ``pg_prepared_xacts`` (or, if it is empty, nothing is), ``commit`` commits
    it, ``rollback`` undoes it from any state.

    A branch that commits leaves its connection to the connector's spares, for the next
    branch (see :meth:`~dualwrite.connectors.sql.SqlConnector.branch_connection`).
    """

    def __init__(self, connector: PostgresConnector, xid: str) -> None:
        if not _SAFE_XID.match(xid):  # PREPARE TRANSACTION takes a literal
            raise TerminalConnectorError(f"refusing unexpected xid {xid!r}",
                                         environment=connector.name)
        self.connector = connector
        self.xid = xid
        self.prepared = False
        self.empty = False
        self.used = False  # the session has sent a statement (or is about to)
        self._in_flight: str | None = None  # what the statement sent and not answered does
        for attempt in (1, 2):
            self.conn = connector.branch_connection()
            self.raw: Any = self.conn.connection.driver_connection
            try:
                self._send(f"begin {xid}", "BEGIN")
                break
            except BaseException as exc:
                self.conn.invalidate()
                self.conn.close()
                if not isinstance(exc, TransientConnectorError) or attempt == 2:
                    raise
                connector.drop_spares()  # a kept one the server closed: once more
        self.session = _BranchSession(self)

    def _send(self, doing: str, sql: str) -> None:
        pgconn = self.raw.pgconn
        with self.connector.translating(doing):
            pgconn.send_query(sql.encode())
            _flush(pgconn)
        self._in_flight = doing

    def _collect(self) -> None:
        """Wait for the answer to the statement in flight (see :func:`_answer`); raise its
        error, if any."""
        doing, self._in_flight = self._in_flight, None
        if doing is None:
            return
        with self.connector.translating(doing):
            _raise_first_error(_answer(self.raw.pgconn))

    def ready(self) -> sa.Connection:
        """The connection, its BEGIN answered: for the session's statements. A spare the
        server closed while it waited (a restart, an idle timeout) is replaced here, once:
        nothing but the BEGIN was sent on it."""
        if self._in_flight is not None:
            if self.used:
                self._collect()
            else:
                try:
                    self._collect()
                except TransientConnectorError:
                    self.conn.invalidate()
                    self.connector.drop_spares()
                    # the dead one is closed only once another is had: if none can be, the
                    # branch still holds a connection for its rollback to end
                    fresh = self.connector.branch_connection()
                    self.conn.close()
                    self.conn, self.raw = fresh, fresh.connection.driver_connection
                    self._send(f"begin {self.xid}", "BEGIN")
                    self._collect()
        self.used = True
        return self.conn

    def touched(self) -> bool:
        return self.used

    def start_prepare(self) -> None:
        if not self.used:
            self.empty = True  # the BEGIN is answered and rolled back when the branch ends
            return
        self._send(f"prepare {self.xid}", f"PREPARE TRANSACTION '{self.xid}'")

    def finish_prepare(self) -> None:
        if self.empty:
            return
        self._collect()
        self.prepared = True

    def release(self) -> None:
        # invalidated, not returned to the pool: a pool's reset must not touch what the
        # branch left prepared
        with contextlib.suppress(Exception):
            self.conn.invalidate()
            self.conn.close()

    def prepare(self) -> None:
        self.start_prepare()
        self.finish_prepare()

    def start_commit(self) -> None:
        if self.empty:
            return
        try:
            self._send(f"commit {self.xid}", f"COMMIT PREPARED '{self.xid}'")
        except BaseException:
            self.conn.invalidate()
            self.conn.close()
            raise

    def finish_commit(self) -> None:
        if self.empty:  # nothing to commit: its BEGIN is ended
            self._end_unused()
            return
        try:
            self._collect()
        except BaseException:
            self.conn.invalidate()
            self.conn.close()
            self.connector.drop_spares()
            raise
        self.connector.keep_spare(self.conn)

    def commit(self) -> None:
        self.start_commit()
        self.finish_commit()

    def commit_deciding(self, transaction: str, record: str) -> None:
        # The decision row and the COMMIT in one simple-protocol message: one round trip.
        # An error in the INSERT skips the COMMIT (the server ignores the rest of the
        # message); either way a failure discards the session, which ends its transaction.
        import psycopg

        if not _SAFE_XID.match(transaction):
            raise TerminalConnectorError(f"refusing unexpected xid {transaction!r}",
                                         environment=self.connector.name)
        self.ready()
        try:
            with self.connector.translating(f"commit {self.xid} as the last resource"):
                literal = psycopg.pq.Escaping(self.raw.pgconn).escape_literal(
                    record.encode()).decode()
            self._send(f"commit {self.xid} as the last resource",
                       self.connector.decision_insert_sql() % (f"'{transaction}'", literal)
                       + "; COMMIT")
        except BaseException:
            self.conn.invalidate()
            self.conn.close()
            raise
        self.finish_commit()

    def rollback(self) -> None:
        if not self.used and not self.prepared:
            self._end_unused()
            return

        def undo() -> None:
            if self._in_flight is not None:
                # a prepare we sent: once it is answered, the branch is prepared or not
                doing = self._in_flight
                with contextlib.suppress(ConnectorError):
                    self._collect()
                    self.prepared = doing.startswith("prepare") or self.prepared
            try:
                with self.connector.translating(f"roll back {self.xid}"):
                    if self.prepared:
                        self.raw.tpc_rollback(self.xid)
                    else:
                        self.raw.rollback()
            except ConnectorError:
                # the connection is gone: so, likely, are the spares made before it (a
                # server restart); they would each fail a transaction's first statement
                self.connector.drop_spares()
                raise

        end_rollback(self.conn, undo, lambda: self.prepared)

    def _end_unused(self) -> None:
        """End a branch that sent nothing but its BEGIN (the side a one-sided transaction
        did not write) with a plain ROLLBACK, and keep its connection for the next branch.
        psycopg's own rollback would also deallocate every statement prepared on the
        session, a round trip, and each would be prepared again by the next branch: nothing
        of a transaction that ran no statement can have touched them. A session that is gone
        ends its transaction itself: its connection is dropped, nothing is raised."""
        try:
            self._collect()  # the BEGIN's answer, if still on its way
            self._send(f"roll back {self.xid}", "ROLLBACK")
            self._collect()
        except ConnectorError:
            self.release()
            self.connector.drop_spares()
            return
        self.connector.keep_spare(self.conn)


class _BranchSession(SqlWriteSession):
    """A branch's write session: every statement waits for the branch's BEGIN first."""

    def __init__(self, branch: PgBranch) -> None:
        super().__init__(branch.connector, branch.conn)
        self._branch = branch

    @property
    def conn(self) -> sa.Connection:
        return self._branch.ready()

    @conn.setter
    def conn(self, value: sa.Connection) -> None:
        pass  # always the branch's


#: SQLSTATE -> what it means to dualwrite (docs/operations.md, "How errors are classified").
#: Looked up by the whole code, then by its class (the first two characters). libpq's
#: connection failures reach psycopg without a SQLSTATE and are read by their words instead
#: (see sql.fault_by_text).
PG_ERROR_CLASSES: dict[str, Fault] = {
    "08": Fault.TRANSIENT,         # connection exception
    "53": Fault.TRANSIENT,         # insufficient resources (too many connections, disk full)
    "57P01": Fault.TRANSIENT,      # admin shutdown (terminating connection)
    "57P02": Fault.TRANSIENT,      # crash shutdown
    "57P03": Fault.TRANSIENT,      # cannot connect now (starting up)
    "40001": Fault.TRANSIENT,      # serialization failure
    "40P01": Fault.TRANSIENT,      # deadlock detected
    "55P03": Fault.TRANSIENT,      # lock not available (lock_timeout)
    "23505": Fault.UNIQUE,
    "23503": Fault.FOREIGN_KEY,
    "23502": Fault.NOT_NULL,
    "23514": Fault.CHECK,
    "23": Fault.CONSTRAINT,        # any other integrity constraint (exclusion, ...)
    "22": Fault.VALUE,             # data exception: too long, out of range, bad text
    "28": Fault.CREDENTIALS,       # invalid authorization (password, unknown role)
    "3D000": Fault.DATABASE,       # invalid catalog name: no such database
    "42501": Fault.PRIVILEGE,      # insufficient privilege
}


#: the detail line of a unique or foreign key violation: "Key (a, b)=(1, 2) already exists."
_KEY_DETAIL = re.compile(r"Key \((.+?)\)=\((.*)\)")


class PostgresConnector(SqlConnector):
    capabilities = Capabilities(two_phase=True, capture=True, last_resource=True,
                                bulk_export=frozenset({"copy-text", "copy-text-portable"}),
                                bulk_import=frozenset({"copy-text"}),
                                insert_resolving=True, supports_json_log=True,
                                supports_json_apply=True)
    database_name = "PostgreSQL"
    error_classes = PG_ERROR_CLASSES

    def __init__(self, name: str, url: str, *, engine: sa.Engine | None = None,
                 schema: str | None = None, capture: str = "triggers") -> None:
        super().__init__(name, url, engine=engine, schema=schema)
        #: how writes that bypass dualwrite are captured: ``triggers`` or ``logical``
        self.capture_mode = capture

    def _reusable(self, conn: sa.Connection) -> bool:
        # an empty branch's BEGIN was answered and never ended: the pool rolls it back
        from psycopg import pq

        raw = conn.connection.driver_connection
        return raw is not None and raw.info.transaction_status == pq.TransactionStatus.IDLE

    def change_log(self) -> CaptureLog:
        if self._capture is None and self.capture_mode == "logical":
            from dualwrite.connectors.postgresql.logical import LogicalCaptureLog

            self._capture = LogicalCaptureLog(self)
        return super().change_log()

    def _error_code(self, orig: BaseException) -> str | None:
        code = getattr(orig, "sqlstate", None)  # psycopg's SQLSTATE, None before the server
        return code if isinstance(code, str) and code else None

    def _classify_code(self, code: str | int) -> Fault | None:
        code = str(code)
        return PG_ERROR_CLASSES.get(code) or PG_ERROR_CLASSES.get(code[:2])

    def _violated(self, orig: BaseException) -> tuple[str | None, str | None]:
        # The server's diagnostics name the column of a NOT NULL violation; a unique or
        # foreign key violation names its columns and values only in the detail line
        # ("Key (a, b)=(1, 2) already exists.").
        diag = getattr(orig, "diag", None)
        column = getattr(diag, "column_name", None)
        if column:
            return str(column), None
        m = _KEY_DETAIL.search(getattr(diag, "message_detail", None) or "")
        if m:
            return m.group(1).split(",")[0].strip().strip('"'), m.group(2)
        return None, None

    def _create_engine(self, url: str) -> sa.Engine:
        # No pre-ping: it costs a round trip per checkout on the live-sync hot path. A pooled
        # connection that died with the server fails its first statement instead, SQLAlchemy
        # drops the whole pool, and the error surfaces as transient (retry / HTTP 503).
        # Every connection of dualwrite's carries the session setting dualwrite.origin=on:
        # the capture triggers skip what dualwrite writes itself (no echo), at no cost per
        # statement. Its sessions run in UTC: a timestamp without a zone (from MariaDB's
        # DATETIME, SQLite, a capture log's JSON) is UTC to dualwrite, whatever zone the
        # server or the database defaults to. The text settings are those the capture triggers
        # run with, so that a key dualwrite formats (the log's key text) reads as theirs.
        # Values: intervals are read in PostgreSQL's own style, money without a currency
        # sign's locale, floats with every digit they need (see register_adapters).
        # A server that stops answering is not waited for without end: a connection attempt
        # gives up after 10 s, and keepalives (with a bound on unacknowledged data) drop a
        # session whose peer is gone, so that the error surfaces as transient and is
        # retried. The URL may set any of these (its query wins).
        # The URL's own `options` (``options=-csearch_path=fin``) are added after these, not
        # instead of them: without dualwrite.origin every write of dualwrite's would be
        # captured back (an echo). ``schema`` (the environment's `schema:`) is the search
        # path: the schema unqualified table names, and dualwrite's change log, live in.
        options = ("-c dualwrite.origin=on -c timezone=UTC -c extra_float_digits=1 "
                   "-c bytea_output=hex -c intervalstyle=postgres -c lc_monetary=C")
        query = sa.engine.make_url(url).query
        theirs = query.get("options")
        if theirs:
            options += " " + " ".join(theirs) if isinstance(theirs, tuple) else " " + theirs
        if self.default_schema:
            schema = self.default_schema
            if not re.match(r"^[a-z_][a-z0-9_$]*$", schema):
                schema = '"' + schema.replace('"', '""') + '"'
            options += " -c search_path=" + _option_value(schema)
        args: dict[str, Any] = {**CONNECT_DEFAULTS}
        for name in query:
            args.pop(name, None)
        args["options"] = options
        self._connect_args = args
        engine = sa.create_engine(url, pool_size=10, max_overflow=20, pool_recycle=3600,
                                  connect_args=args)

        @event.listens_for(engine, "connect")
        def _adapt(dbapi_conn: Any, _record: Any) -> None:
            register_adapters(dbapi_conn.adapters)

        return engine

    @contextlib.contextmanager
    def catalog_connection(self) -> Iterator[sa.Connection]:
        # dualwrite's connections read JSON documents as text (register_adapters), but
        # SQLAlchemy's catalog queries build JSON objects (a column's collation, its identity
        # options) and read them as the driver parses them: for as long as this connection
        # reads the catalog, it does so with psycopg's own JSON loaders.
        from psycopg.types.json import JsonbLoader, JsonLoader

        with self.engine.connect() as conn:
            adapters = conn.connection.driver_connection.adapters  # type: ignore[union-attr]
            adapters.register_loader("json", JsonLoader)
            adapters.register_loader("jsonb", JsonbLoader)
            try:
                yield conn
            finally:
                register_json_text(adapters)

    # -- types -------------------------------------------------------------------------------
    def _catalog(self, table: str) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = CAST(:t AS regclass) AND a.attnum > 0 "
                "AND NOT a.attisdropped"), {"t": regclass_text(table)}).all()
        return {str(r[0]): _short_name(str(r[1])) for r in rows}

    def _collations(self, table: str) -> dict[str, tuple[str | None, bool]]:
        # citext and nondeterministic (ICU, case-insensitive) collations call 'a' and 'A'
        # equal; the default and libc collations do not
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT a.attname, CASE WHEN c.collname = 'default' THEN d.datcollate "
                "ELSE c.collname END, COALESCE(NOT c.collisdeterministic, false) "
                "OR t.typname = 'citext' FROM pg_attribute a "
                "JOIN pg_type t ON t.oid = a.atttypid "
                "LEFT JOIN pg_collation c ON c.oid = a.attcollation "
                "JOIN pg_database d ON d.datname = current_database() "
                "WHERE a.attrelid = CAST(:t AS regclass) AND a.attnum > 0 "
                "AND NOT a.attisdropped AND a.attcollation <> 0"),
                {"t": regclass_text(table)}).all()
        return {str(r[0]): (None if r[1] is None else str(r[1]), bool(r[2])) for r in rows}

    def column_type(self, column: sa.Column[Any], catalog: str) -> tuple[Kind, Facets]:
        kind, f = super().column_type(column, catalog)
        return _pg_facets(column.type, kind, f)

    def _bulk_update_guard(self, arrays: list[list[Any]]) -> bool:
        """Whether the arrays can go to unnest() as binary parameters (dualwrite's own value
        types have text forms only)."""
        return not any(type(v) in _TEXT_ONLY for a in arrays for v in a)

    def _bulk_insert(self, conn: sa.Connection, table: sa.Table, columns: list[str],
                     rows: Sequence[Row]) -> None:
        from psycopg import sql

        if len(rows) < COPY_THRESHOLD:
            # COPY costs extra round trips to set up; a few rows are cheaper as INSERT, sent
            # straight to the driver with SQL text built once (the live-sync hot path: the
            # Core statement pipeline costs more than the loopback round trip)
            raw_conn: Any = conn.connection.driver_connection
            text = self._insert_sql(raw_conn, table, tuple(columns), returning=False)
            with raw_conn.cursor() as cur:
                if len(rows) == 1:
                    cur.execute(text, rows[0], prepare=True)
                else:
                    cur.executemany(text, rows)
            return

        raw: Any = conn.connection.driver_connection
        stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
            _ident(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns))
        with raw.cursor() as cur, cur.copy(stmt) as copy:
            for r in rows:
                copy.write_row(r)

    # -- bulk: COPY text ------------------------------------------------------------------
    def _bulk_match(self, c: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        return c.collate("C") if isinstance(c.type, sa.String) else c

    def _bulk_text_exact(self, c: sa.ColumnElement[Any], fmt: str
                         ) -> list[sa.ColumnElement[bool]]:
        if fmt != "copy-text-portable":
            return []
        # COPY writes a form feed and a vertical tab as \f and \v, which only PostgreSQL
        # reads back: such rows go through the row path
        return [sa.func.strpos(c, sa.func.chr(12)) == 0, sa.func.strpos(c, sa.func.chr(11)) == 0]

    @contextlib.contextmanager
    def bulk_export(self, table: str, fields: Sequence[BulkField], *, key: Sequence[str],
                    where: Any, after: Row | None, upto: Row | None,
                    fmt: str) -> Iterator[Iterator[bytes]]:
        from psycopg import sql

        text = self._bulk_export_sql(table, fields, key=key, where=where, after=after,
                                     upto=upto, fmt=fmt)
        with self.translating(f"read {table}"):
            conn = self.engine.connect()
        raw: Any = conn.connection.driver_connection
        try:
            with self.translating(f"read {table}"), raw.cursor() as cur:
                # the text of dates and numbers as every reader parses it back exactly,
                # whatever the server's or the role's settings say
                cur.execute("SET LOCAL DateStyle TO 'ISO, YMD'; "
                            "SET LOCAL IntervalStyle TO 'iso_8601'; "
                            "SET LOCAL extra_float_digits TO 3")

            def blocks() -> Iterator[bytes]:
                with self.translating(f"read {table}"), raw.cursor() as cur, cur.copy(
                        sql.SQL("COPY ({}) TO STDOUT").format(sql.SQL(text))) as copy:
                    for block in copy:
                        yield bytes(block)

            yield blocks()
        finally:
            with contextlib.suppress(Exception):
                raw.rollback()  # read only: nothing to keep; the pool gets it idle
            conn.close()

    def bulk_load(self, table: str, columns: Sequence[str], blocks: Iterable[bytes], *,
                  fmt: str) -> int:
        from psycopg import sql

        stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
            _ident(self.table(table)), sql.SQL(", ").join(sql.Identifier(c) for c in columns))
        with self.translating("begin"):
            conn = self.engine.connect()
        try:
            with self.transactional(conn):
                raw: Any = conn.connection.driver_connection
                with self.translating(f"insert into {table}"), raw.cursor() as cur:
                    with cur.copy(stmt) as copy:
                        for block in blocks:
                            copy.write(block)
                    loaded = int(cur.rowcount)
        finally:
            conn.close()
        return loaded

    def _insert_sql(self, raw: Any, table: sa.Table, columns: tuple[str, ...], *,
                    returning: bool) -> str:
        """INSERT text for the driver, rendered once (composing it costs more than the
        round trip it makes)."""
        from psycopg import sql

        def build() -> str:
            # the columns named, not *: the caller knows the answer's names without asking
            # the driver to describe it (psycopg builds them anew for every statement)
            back = sql.SQL(" RETURNING {}").format(sql.SQL(", ").join(
                sql.Identifier(c.name) for c in table.columns)) if returning else sql.SQL("")
            return sql.SQL("INSERT INTO {} ({}) VALUES ({}){}").format(
                _ident(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns),
                sql.SQL(", ").join(sql.Placeholder() for _ in columns), back).as_string(raw)

        return str(self.statement(("raw-insert", table.schema, table.name, columns, returning),
                                  build))

    def _insert_returning(self, conn: sa.Connection, table: str, values: dict[str, Any]
                          ) -> dict[str, Any]:
        raw: Any = conn.connection.driver_connection
        t = self.table(table)
        text = self._insert_sql(raw, t, tuple(values), returning=True)
        if _in_transaction(raw):
            result = _run_prepared(raw, text, tuple(values.values()))
            load = _transformer(raw)
            load.set_pgresult(result)
            row = load.load_row(0, tuple)
        else:  # psycopg's cursor begins the transaction the protocol path takes as open
            with raw.cursor() as cur:
                cur.execute(text, tuple(values.values()), prepare=True)
                row = cur.fetchone()
        return dict(zip([c.name for c in t.columns], row, strict=True))

    def _insert_resolving(self, conn: sa.Connection, table: str, columns: tuple[str, ...],
                          row: Row, lookups: Sequence[FoldedLookup]) -> bool | None:
        # INSERT ... SELECT from one-row subqueries, one per lookup: a lookup that finds
        # nothing makes the SELECT empty, so nothing is inserted and the caller can name the
        # problem with the transaction as it was. The parameters take their types from the
        # target columns, as in INSERT ... VALUES (same coercions, same errors).
        raw: Any = conn.connection.driver_connection
        at = {f.slot: n for n, f in enumerate(lookups)}
        shape = tuple((f.slot, f.table, f.match, f.returning) for f in lookups)

        def build() -> str:
            from psycopg import sql

            picks = [sql.SQL("{}.v").format(sql.Identifier(f"l{at[i]}")) if i in at
                     else sql.Placeholder() for i in range(len(columns))]
            sources = [sql.SQL("(SELECT {r} AS v FROM {t} WHERE {m} = {p} ORDER BY {r} "
                               "LIMIT 1) {a}").format(
                r=sql.Identifier(f.returning), t=_ident(self.table(f.table)),
                m=sql.Identifier(f.match), p=sql.Placeholder(), a=sql.Identifier(f"l{n}"))
                for n, f in enumerate(lookups)]
            return sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
                _ident(self.table(table)), sql.SQL(", ").join(sql.Identifier(c)
                                                              for c in columns),
                sql.SQL(", ").join(picks), sql.SQL(" CROSS JOIN ").join(sources)
            ).as_string(raw)

        text = str(self.statement(("raw-insert-resolving", table, columns, shape), build))
        params = [v for i, v in enumerate(row) if i not in at] + [f.value for f in lookups]
        if _in_transaction(raw):
            return bool(_run_prepared(raw, text, params).command_tuples == 1)
        with raw.cursor() as cur:
            cur.execute(text, params, prepare=True)
            return bool(cur.rowcount == 1)

    def _bulk_update(self, conn: sa.Connection, table: sa.Table, key: list[str],
                     columns: list[str], rows: Sequence[tuple[Row, Row]]) -> int | None:
        # Many rows: one UPDATE ... FROM unnest(arrays), one round trip and one plan, instead
        # of a statement per row.
        if len(rows) < COPY_THRESHOLD or not columns:
            return None
        try:
            return len(self._unnest_update(conn, table, key, columns,
                                           [(k, v, None) for k, v in rows], returning=False))
        except _TextOnly:
            return None

    def _bulk_update_if(self, conn: sa.Connection, table: sa.Table, key: list[str],
                        columns: list[str], rows: Sequence[tuple[Row, Row, Row]]
                        ) -> set[Row] | None:
        if len(rows) < COPY_THRESHOLD or not columns:
            return None
        try:
            return self._unnest_update(conn, table, key, columns, rows, returning=True)
        except _TextOnly:
            return None

    def _unnest_update(self, conn: sa.Connection, table: sa.Table, key: list[str],
                       columns: list[str], rows: Sequence[tuple[Row, Row, Row | None]],
                       *, returning: bool) -> set[Row]:
        """UPDATE ... FROM unnest(key, new[, expected]) arrays; with ``returning``, only rows
        that still hold the expected values (IS NOT DISTINCT FROM), and their keys back."""
        from psycopg import sql

        guarded = returning
        names = [*key, *columns, *(columns if guarded else [])]
        types = [without_collation(table.c[c].type.compile(dialect=self.engine.dialect))
                 for c in names]
        arrays = [[r[0][i] for r in rows] for i in range(len(key))] + \
            [[r[1][i] for r in rows] for i in range(len(columns))]
        if guarded:
            arrays += [[r[2][i] for r in rows] for i in range(len(columns))]  # type: ignore[index]
        if not self._bulk_update_guard(arrays):
            raise _TextOnly
        alias = [sql.Identifier(f"v{i}") for i in range(len(names))]
        t = _ident(table)
        match = [sql.SQL("{t}.{c} = u.{a}").format(t=t, c=sql.Identifier(c), a=alias[i])
                 for i, c in enumerate(key)]
        if guarded:
            match.append(sql.SQL("ROW({cur}) IS NOT DISTINCT FROM ROW({exp})").format(
                cur=sql.SQL(", ").join(sql.SQL("{t}.{c}").format(t=t, c=sql.Identifier(c))
                                       for c in columns),
                exp=sql.SQL(", ").join(sql.SQL("u.{}").format(alias[len(key) + len(columns)
                                                                  + i])
                                       for i in range(len(columns)))))
        stmt = sql.SQL("UPDATE {t} SET {sets} FROM unnest({arrays}) AS u({alias}) "
                       "WHERE {match}{ret}").format(
            t=t,
            sets=sql.SQL(", ").join(
                sql.SQL("{} = u.{}").format(sql.Identifier(c), alias[len(key) + i])
                for i, c in enumerate(columns)),
            arrays=sql.SQL(", ").join(
                sql.SQL("%b::{}[]").format(sql.SQL(typ)) for typ in types),
            alias=sql.SQL(", ").join(alias),
            match=sql.SQL(" AND ").join(match),
            ret=sql.SQL(" RETURNING {}").format(sql.SQL(", ").join(
                sql.SQL("{t}.{c}").format(t=t, c=sql.Identifier(c)) for c in key))
            if returning else sql.SQL(""))
        raw: Any = conn.connection.driver_connection
        with raw.cursor() as cur:
            # %b: binary parameters; text-dumping arrays of decimals and times quotes every
            # element
            cur.execute(stmt, arrays)
            if returning:
                return {tuple(r) for r in cur.fetchall()}
            return {(i,) for i in range(max(cur.rowcount, 0))}

    def _unmark_origin(self, conn: sa.Connection) -> None:
        conn.exec_driver_sql("SET LOCAL dualwrite.origin = 'queue'")

    def _key_in(self, column: sa.ColumnElement[Any], values: list[Any]
                ) -> sa.ColumnElement[bool]:
        # one array parameter instead of a thousand
        array = sa.ARRAY(plain_type(column.type))
        return column == sa.func.any(sa.cast(sa.literal(values, array), array))

    def capture_dialect(self) -> Dialect:
        from dualwrite.connectors.postgresql.dialect import PostgresDialect

        return PostgresDialect()

    @contextlib.contextmanager
    def single_statements(self) -> Iterator[sa.Connection]:
        # psycopg's autocommit is a client-side flag, and so is SQLAlchemy's reset of it when
        # the connection goes back to the pool (no SET is sent either way)
        with self.engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")

    def driver_connect(self, **settings: Any) -> Any:
        """A psycopg connection of its own (outside the pool), made with this connector's
        connection settings (the URL's, and dualwrite's session options), ``settings``
        added: for sessions that outlive any transaction (LISTEN)."""
        import psycopg

        cargs, cparams = self.engine.dialect.create_connect_args(self.engine.url)
        theirs = getattr(self, "_connect_args", {})  # none: an engine given from outside
        return psycopg.connect(*cargs, **{**cparams, **theirs, **settings})

    def begin_branch(self, xid: str) -> Branch:
        return PgBranch(self, xid)

    def _json_rows(self, table: sa.Table,
                   versions: Sequence[tuple[str, list[str], list[JsonSource]]]
                   ) -> tuple[Any, list[list[Any]], list[Any]] | None:
        """``ROWS FROM (json_to_recordset(%(<name>)s::json) AS (<source> <type>, ...), ...)
        AS r(...)``, then a join per lookup on the target: per version (``name``, the
        columns written, their sources), one JSON array of objects in; the arrays zipped by
        position, one typed row out per position, the members of version ``name`` named
        ``"<name>.<source>"``. Returns the rows, per version the expression of each column's
        value, and the conditions under which every computed value was found (see
        :class:`JsonValue`). A copied member is converted with the target column's own input
        function, as an INSERT of that text would. One call per array for all of its
        objects (per row, ``json_to_record`` costs several times as much), and no join
        between the versions (json_to_recordset's row estimate is a constant, so a join by
        position is planned blind: a nested loop over both arrays, once). None when one
        source member would be read as two types."""
        from psycopg import sql

        r = sql.Identifier("r")
        funcs: list[Any] = []
        names: list[Any] = []
        values: list[list[Any]] = []
        joins: list[Any] = []
        guards: list[Any] = []
        try:
            for name, columns, sources in versions:
                defs: dict[str, str] = {}

                def member(src: str, typ: str, defs: dict[str, str] = defs,
                           name: str = name) -> Any:
                    if defs.setdefault(src, typ) != typ:
                        raise _TextOnly
                    return sql.SQL("{}.{}").format(r, sql.Identifier(f"{name}.{src}"))

                out: list[Any] = []
                for j, (c, src) in enumerate(zip(columns, sources, strict=True)):
                    typ = self._type_text(table.c[c])
                    if isinstance(src, str):
                        out.append(member(src, typ))
                    elif src.how == "constant":
                        out.append(sql.SQL("CAST({} AS {})").format(sql.Literal(src.value),
                                                                    sql.SQL(typ)))
                    elif src.how == "mapped":
                        # one jsonb object (text -> value), parsed once per statement (an
                        # uncorrelated subquery is an InitPlan) and probed by key per row;
                        # joined as a derived table of pairs it was parsed again per row
                        got = member(src.source, "text")
                        m = sql.SQL("(SELECT {p}::jsonb)").format(
                            p=sql.Placeholder(f"m{src.mapping}"))
                        out.append(sql.SQL("CAST(({m} ->> {got}) AS {typ})").format(
                            m=m, got=got, typ=sql.SQL(typ)))
                        guards.append(sql.SQL("({got} IS NULL OR {m} ? {got})").format(
                            got=got, m=m))
                    else:  # a lookup on the target
                        lt = self.table(src.table)
                        got = member(src.source, self._type_text(lt.c[src.match]))
                        lk = sql.Identifier(f"{name}_l{j}")
                        joins.append(sql.SQL(
                            " LEFT JOIN LATERAL (SELECT x.{ret} AS v FROM {lt} x WHERE "
                            "x.{match} = {got} ORDER BY x.{ret} LIMIT 1) {lk} ON true").format(
                            ret=sql.Identifier(src.returning), lt=_ident(lt),
                            match=sql.Identifier(src.match), got=got, lk=lk))
                        guards.append(sql.SQL("({got} IS NULL OR {lk}.v IS NOT NULL)").format(
                            got=got, lk=lk))
                        out.append(sql.SQL("{}.v").format(lk))
                values.append(out)
                if not defs:  # a version that reads no member (only constants)
                    defs["dw_none"] = "text"
                funcs.append(sql.SQL("json_to_recordset({p}::json) AS ({defs})").format(
                    p=sql.Placeholder(name),
                    defs=sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n),
                                                                    sql.SQL(t))
                                            for n, t in defs.items())))
                names += [sql.Identifier(f"{name}.{n}") for n in defs]
        except _TextOnly:
            return None
        rows = sql.SQL("ROWS FROM ({funcs}) AS {r}({names}){joins}").format(
            funcs=sql.SQL(", ").join(funcs), r=r, names=sql.SQL(", ").join(names),
            joins=sql.SQL("").join(joins))
        if joins:
            # parenthesised, to be joined with others (a lone ROWS FROM cannot be)
            rows = sql.SQL("({})").format(rows)
        return rows, values, guards

    def _type_text(self, column: sa.Column[Any]) -> str:
        return without_collation(column.type.compile(dialect=self.engine.dialect))

    def _json_update_if(self, conn: sa.Connection, table: sa.Table, key: list[str],
                        columns: list[str], key_sources: list[str], sources: list[JsonSource],
                        new: Sequence[str], old: Sequence[str],
                        mappings: Sequence[Sequence[tuple[str, Any]]]) -> set[Row] | None:
        # One statement for the whole run: the versions as two JSON arrays joined by position,
        # the keys read from the new versions; written only where the row still holds the
        # old version (as _unnest_update) and every computed value of both was found.
        if not columns:
            return None
        raw: Any = conn.connection.driver_connection
        text = self._json_statement(
            ("update", table, tuple(key), tuple(columns), tuple(key_sources), tuple(sources)),
            lambda: self._json_update_sql(table, key, columns, key_sources, sources), raw)
        if text is None:
            return None
        with raw.cursor() as cur:
            cur.execute(text, {"n": _json_array(new), "o": _json_array(old),
                               **_mapping_params(mappings)})
            return {tuple(r) for r in cur.fetchall()}

    def _json_statement(self, key: tuple[Any, ...], build: Callable[[], Any], raw: Any
                        ) -> str | None:
        """The text of a set-based statement, built and rendered once per shape (a single
        row's apply would otherwise spend longer composing it than running it); the same
        text each time also lets psycopg prepare it on the server."""
        cache: dict[tuple[Any, ...], str | None] = self.__dict__.setdefault("_json_sql", {})
        if key not in cache:
            if len(cache) > 1000:
                cache.clear()
            stmt = build()
            cache[key] = None if stmt is None else stmt.as_string(raw)
        return cache[key]

    def _json_update_sql(self, table: sa.Table, key: list[str], columns: list[str],
                         key_sources: list[str], sources: list[JsonSource]) -> Any:
        from psycopg import sql

        t = _ident(table)
        got = self._json_rows(table, [("n", key + columns, [*key_sources, *sources]),
                                      ("o", columns, sources)])
        if got is None:
            return None
        rows, (new_vals, old_vals), guards = got
        key_vals, new_vals = new_vals[:len(key)], new_vals[len(key):]
        match = [sql.SQL("{t}.{c} = {v}").format(t=t, c=sql.Identifier(k), v=key_vals[i])
                 for i, k in enumerate(key)]
        stmt = sql.SQL(
            "UPDATE {t} SET {sets} FROM {rows} "
            "WHERE {match} AND ROW({cur}) IS NOT DISTINCT FROM ROW({exp}) RETURNING {ret}"
        ).format(
            t=t,
            sets=sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(c), v)
                                    for c, v in zip(columns, new_vals, strict=True)),
            rows=rows,
            match=sql.SQL(" AND ").join(match + guards),
            cur=sql.SQL(", ").join(sql.SQL("{t}.{c}").format(t=t, c=sql.Identifier(c))
                                   for c in columns),
            exp=sql.SQL(", ").join(old_vals),
            ret=sql.SQL(", ").join(sql.SQL("{t}.{c}").format(t=t, c=sql.Identifier(k))
                                   for k in key))
        return stmt

    def _json_insert(self, conn: sa.Connection, table: sa.Table, columns: list[str],
                     sources: list[JsonSource], rows: Sequence[str], key: list[str],
                     mappings: Sequence[Sequence[tuple[str, Any]]]) -> set[Row] | None:
        if not columns:
            return None
        raw: Any = conn.connection.driver_connection
        text = self._json_statement(
            ("insert", table, tuple(columns), tuple(sources), tuple(key)),
            lambda: self._json_insert_sql(table, columns, sources, key), raw)
        if text is None:
            return None
        with raw.cursor() as cur:
            cur.execute(text, {"n": _json_array(rows), **_mapping_params(mappings)})
            return {tuple(r) for r in cur.fetchall()}

    def _json_insert_sql(self, table: sa.Table, columns: list[str], sources: list[JsonSource],
                         key: list[str]) -> Any:
        from psycopg import sql

        got = self._json_rows(table, [("n", columns, sources)])
        if got is None:
            return None
        new_rows, (vals,), guards = got
        stmt = sql.SQL("INSERT INTO {t} ({cols}) SELECT {vals} FROM {new_rows}{where} "
                       "RETURNING {ret}").format(
            t=_ident(table),
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            vals=sql.SQL(", ").join(vals), new_rows=new_rows,
            where=sql.SQL(" WHERE ") + sql.SQL(" AND ").join(guards) if guards else sql.SQL(""),
            ret=sql.SQL(", ").join(sql.Identifier(k) for k in key))
        return stmt

    def _delete_decision_rows(self, conn: sa.Connection, xids: Sequence[str]) -> None:
        # one array parameter: the same statement text (and plan) whatever the count
        conn.exec_driver_sql(f"DELETE FROM {DECISIONS_TABLE} WHERE outcome = 'commit' AND "
                             "xid = ANY(%s)", (list(xids),))

    def recover(self, prefix: str) -> list[str]:
        # pg_prepared_xacts lists every database's branches: keep this database's own.
        rows = self.execute("SELECT gid FROM pg_prepared_xacts WHERE database = "
                            "current_database() AND gid LIKE :p ORDER BY prepared",
                            {"p": prefix.replace("%", r"\%").replace("_", r"\_") + "%"})
        return [str(r[0]) for r in rows]

    def finish_prepared(self, xid: str, *, commit: bool) -> None:
        # COMMIT/ROLLBACK PREPARED take a literal and refuse to run inside a transaction
        # block: use a fresh autocommit connection. xids are dualwrite's own ([a-z0-9-]).
        if not _SAFE_XID.match(xid):
            raise TerminalConnectorError(f"refusing to finish unexpected xid {xid!r}",
                                         environment=self.name)
        verb = "COMMIT" if commit else "ROLLBACK"
        with self.translating(f"{verb.lower()} prepared {xid}"), \
                self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"{verb} PREPARED '{xid}'")

    def _column_is_binary_ordered(self, table: str, column: str) -> bool:
        with self.engine.connect() as conn:
            row = conn.execute(sa.text(
                "SELECT CASE WHEN a.attcollation = 0 THEN 'c' "
                "WHEN c.collname = 'default' THEN d.datcollate ELSE c.collname END "
                "FROM pg_attribute a "
                "LEFT JOIN pg_collation c ON c.oid = a.attcollation "
                "JOIN pg_database d ON d.datname = current_database() "
                "WHERE a.attrelid = CAST(:t AS regclass) AND a.attname = :c"),
                {"t": regclass_text(table), "c": column}).first()
        return row is None or str(row[0]).lower() in BINARY_COLLATIONS

    def _binary_order_expr(self, col: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        return sa.collate(col, "C")


def _mapping_params(mappings: Sequence[Sequence[tuple[str, Any]]]) -> dict[str, str]:
    """Each mapping of a :class:`JsonValue` as the JSON text of one object, text -> value
    (a mapping's texts are distinct), named as the statement's placeholders name them."""
    return {f"m{i}": json.dumps(dict(pairs)) for i, pairs in enumerate(mappings)}


def _json_array(objects: Sequence[str]) -> str:
    """JSON objects (texts) as the text of one JSON array of them."""
    return "[" + ",".join(objects) + "]"


class _TextOnly(Exception):
    """Values the binary unnest() path cannot carry: the caller falls back to row updates."""


_TEXT_ONLY = (Interval, Infinite, EndOfDay, TemporalText)

# -- types and values -------------------------------------------------------------------------

_SHORT = [("timestamp with time zone", "timestamptz"), ("timestamp without time zone", "timestamp"),
          ("time with time zone", "timetz"), ("time without time zone", "time"),
          ("character varying", "varchar"), ("character", "char")]


def _short_name(name: str) -> str:
    """PostgreSQL's type name, the common short forms (timetz, varchar(10), char(5))."""
    for long, short in _SHORT:
        if name.startswith(long):
            return short + name[len(long):]
        if name.startswith("timestamp(") and long == "timestamp with time zone" and \
                name.endswith(" with time zone"):
            return "timestamptz" + name[len("timestamp"):-len(" with time zone")]
    return name


def _pg_facets(t: Any, kind: Kind, f: Facets) -> tuple[Kind, Facets]:
    """PostgreSQL's rules: which special values each type holds, text without U+0000,
    floats of 24 or 53 bits, money, network addresses, arrays."""
    name = type(t).__name__.upper()
    if kind is Kind.OTHER:
        if name == "MONEY":
            return Kind.DECIMAL, replace(f, precision=19, scale=2, money=True)
        if name in ("INET", "CIDR", "MACADDR", "MACADDR8"):
            return Kind.NETWORK, replace(f, network=name.lower().rstrip("8"))
        return kind, f
    if kind is Kind.FLOAT:
        return kind, replace(f, precision=24 if name == "REAL" else 53, specials=FLOAT_SPECIALS)
    if kind is Kind.DECIMAL:
        bounded = getattr(t, "precision", None) is not None
        return kind, replace(f, specials=frozenset({NAN}) if bounded else
                             frozenset({NAN, INF, NEG_INF}))
    if kind is Kind.STRING:
        return kind, replace(f, nul=False)
    if kind in (Kind.DATE, Kind.DATETIME):
        digits = getattr(t, "precision", None)
        return kind, replace(f, specials=TEMPORAL_SPECIALS,
                             fraction=digits if kind is Kind.DATETIME else None)
    if kind is Kind.TIME:
        return kind, replace(f, specials=frozenset({END_OF_DAY}),
                             fraction=getattr(t, "precision", None))
    if kind is Kind.JSON:
        return kind, replace(f, normalised=name == "JSONB")
    if kind is Kind.ARRAY:
        item = getattr(t, "item_type", None)
        if item is None:
            return kind, f
        from dualwrite.connectors.sql import type_facets

        ikind, ifacets = type_facets(item, Facets(database=f.database,
                                                  type_name=f.type_name.rstrip("[]")))
        ikind, ifacets = _pg_facets(item, ikind, ifacets)
        return kind, replace(f, element=ikind, element_facets=ifacets)
    return kind, f


def register_json_text(adapters: Any) -> None:
    """Read JSON documents as the text they are (a JSON ``null`` is not SQL NULL)."""
    from psycopg.adapt import Loader

    class JsonTextLoader(Loader):
        def load(self, data: Any) -> Any:
            return JsonText(bytes(data).decode())

    adapters.register_loader("json", JsonTextLoader)
    adapters.register_loader("jsonb", JsonTextLoader)


def register_adapters(adapters: Any) -> None:
    """Teach one psycopg connection dualwrite's values: the dates, timestamps and times
    Python cannot hold (``infinity``, ``24:00:00``, ``0044-03-15 BC``) are read as dualwrite's
    special values instead of failing the whole read; intervals keep months and days apart;
    JSON documents stay text (JSON ``null`` is not SQL NULL); money is a Decimal; a real is
    its exact binary value. And the way back, for writing."""
    from psycopg import postgres
    from psycopg.adapt import Dumper, Loader
    from psycopg.errors import DataError
    from psycopg.pq import Format

    def oid(name: str) -> int:
        return int(postgres.types[name].oid)

    def safe(type_name: str, special: Any) -> type[Loader]:
        base = postgres.adapters.get_loader(oid(type_name), Format.TEXT)

        class SafeLoader(Loader):
            def __init__(self, oid: int, context: Any = None) -> None:
                super().__init__(oid, context)
                self._base = base(oid, context)  # type: ignore[misc]

            def load(self, data: Any) -> Any:
                try:
                    return self._base.load(data)
                except (DataError, ValueError, OverflowError):
                    return special(bytes(data).decode())

        return SafeLoader

    def temporal(text: str) -> Any:
        return {"infinity": INFINITY, "-infinity": MINUS_INFINITY}.get(text) or \
            TemporalText(text)

    def time_of_day(text: str) -> Any:
        try:
            return parse_time(text)
        except ValueError:
            return TemporalText(text)

    for name in ("date", "timestamp", "timestamptz"):
        adapters.register_loader(name, safe(name, temporal))
    for name in ("time", "timetz"):
        adapters.register_loader(name, safe(name, time_of_day))

    class IntervalLoader(Loader):
        def load(self, data: Any) -> Any:
            return Interval.parse(bytes(data).decode())

    class MoneyLoader(Loader):
        def load(self, data: Any) -> Any:
            return parse_money(bytes(data).decode())

    float4 = postgres.adapters.get_loader(oid("float4"), Format.TEXT)

    class RealLoader(Loader):
        def __init__(self, oid: int, context: Any = None) -> None:
            super().__init__(oid, context)
            self._base = float4(oid, context)  # type: ignore[misc]

        def load(self, data: Any) -> Any:
            v = self._base.load(data)
            return single(v) if v == v and v not in (float("inf"), float("-inf")) else v

    adapters.register_loader("interval", IntervalLoader)
    register_json_text(adapters)
    adapters.register_loader("money", MoneyLoader)
    adapters.register_loader("float4", RealLoader)

    class IntervalDumper(Dumper):
        oid = postgres.types["interval"].oid

        def dump(self, obj: Any) -> bytes:
            return str(obj.pg_text()).encode()

    class TextDumper(Dumper):
        """Written as text of unknown type: the database reads it as the column's type."""

        def dump(self, obj: Any) -> bytes:
            return str(obj).encode()

    adapters.register_dumper(Interval, IntervalDumper)
    for cls in (Infinite, EndOfDay, TemporalText):
        adapters.register_dumper(cls, TextDumper)
