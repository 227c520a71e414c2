"""MariaDB / MySQL through PyMySQL: multi-row INSERTs for batches, ``LOAD DATA LOCAL INFILE``
for initial sync's bulk path, XA two-phase commit; capture by triggers (their SQL in
``dialect.py``)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
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

from dualwrite.connectors.base import (
    BulkField,
    Capabilities,
    FoldedLookup,
    JsonSource,
    JsonValue,
    Row,
)
from dualwrite.connectors.capture import (
    Dialect,
)
from dualwrite.connectors.mariadb import json_apply as ja
from dualwrite.connectors.sql import Fault, SqlConnector, qualified, raw, split_table
from dualwrite.errors import ConstraintViolation
from dualwrite.model.codec import parse_duration
from dualwrite.model.conversion import Plan, plan
from dualwrite.model.schema import (
    END_OF_DAY,
    INF,
    INFINITE,
    NAN,
    NEG_INF,
    NEG_INFINITE,
    Column,
    Facets,
    Kind,
)
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
#: kinds whose pairs the set-based path takes beyond text_safe (see reads_log_text)
_GUARDED_KINDS = frozenset({Kind.DECIMAL, Kind.DATE, Kind.DATETIME})
#: special values whose text the set-based statements leave to the row path
_GUARDED_SPECIALS = frozenset({NAN, INF, NEG_INF, INFINITE, NEG_INFINITE})
_JSON_CHECK = re.compile(r"json_valid\(`((?:[^`]|``)+)`\)", re.IGNORECASE)


#: where MariaDB's messages name the column of a rejected write (errors 1048, 1406, 1264,
#: 1265, 1366, 1292 and 1452): there are no structured diagnostics; a column is written
#: either `db`.`t`.`c` or 'c'
_MY_COLUMN_REPORTS = [
    re.compile(r"Column '(?P<f>[^']+)' cannot be null"),
    re.compile(r"value: '(?P<v>.*)' for column (?:`[^`]*`\.)*`(?P<f>[^`]+)`"),
    re.compile(r"for column (?:`[^`]*`\.)*`(?P<f>[^`]+)`"),
    re.compile(r"for column '(?P<f>[^']+)'"),
    re.compile(r"FOREIGN KEY \(`(?P<f>[^`]+)`"),
]


def _nothing_to_end(dbapi_connection: Any) -> None:
    """The end of a transaction on a session in autocommit: nothing to send."""


#: the key of ``Connection.info`` under which a last resource's decision row waits for its
#: one-phase XA COMMIT (see :func:`_direct_xa` and :meth:`MySqlConnector._commit_deciding`)
_DECISION = "dw_decision"


def _direct_xa(dialect: sa.Dialect) -> None:
    """Have ``dialect`` send a live branch's XA statements to the driver directly.

    SQLAlchemy's MySQL dialect runs each as a ``text()`` construct through the connection,
    about 0.1 ms of Python apiece, and a branch sends four (``XA START``, ``XA END``,
    ``XA PREPARE``, ``XA COMMIT``) in every live transaction; a last resource sends its
    decision row, ``XA END`` and ``XA COMMIT ... ONE PHASE`` in one request. Same
    statements, same order, same arguments; the driver's errors reach the branch's
    translation as they are."""

    def run(connection: sa.Connection, *statements: str, xid: Any) -> None:
        with connection.connection.driver_connection.cursor() as cur:  # type: ignore[union-attr]
            for statement in statements:
                cur.execute(statement, (xid,))

    def begin(connection: sa.Connection, xid: Any) -> None:
        run(connection, "XA START %s", xid=xid)

    def prepare(connection: sa.Connection, xid: Any) -> None:
        run(connection, "XA END %s", "XA PREPARE %s", xid=xid)

    def commit(connection: sa.Connection, xid: Any, is_prepared: bool = True,
               recover: bool = False) -> None:
        # a commit without a prepare is a one-phase commit (a last resource's): no
        # XA PREPARE and its log flush
        if is_prepared:
            run(connection, "XA COMMIT %s", xid=xid)
            return
        decision = connection.info.pop(_DECISION, None)
        if decision is None:
            run(connection, "XA END %s", "XA COMMIT %s ONE PHASE", xid=xid)
            return
        # the last resource's decision row, XA END and the commit in one request (a
        # connection option: several statements per request): one round trip, not three.
        # A statement that fails stops the rest, and its error is raised here
        insert, (transaction, record) = decision
        with connection.connection.driver_connection.cursor() as cur:  # type: ignore[union-attr]
            cur.execute(f"{insert}; XA END %s; XA COMMIT %s ONE PHASE",
                        (transaction, record, xid, xid))
            while cur.nextset():
                pass

    def rollback(connection: sa.Connection, xid: Any, is_prepared: bool = True,
                 recover: bool = False) -> None:
        run(connection, *(() if is_prepared else ("XA END %s",)), "XA ROLLBACK %s", xid=xid)

    for name, fn in (("do_begin_twophase", begin), ("do_prepare_twophase", prepare),
                     ("do_commit_twophase", commit), ("do_rollback_twophase", rollback)):
        setattr(dialect, name, fn)


class MySqlConnector(SqlConnector):
    capabilities = Capabilities(two_phase=True, capture=True, last_resource=True,
                                bulk_import=frozenset({"copy-text-portable"}),
                                bulk_export=frozenset({"copy-text", "copy-text-portable"}),
                                bulk_load_checks=True, supports_json_log=True,
                                supports_json_apply=True, insert_resolving=True)
    database_name = "MariaDB"
    error_classes = MY_ERROR_CLASSES

    def _commit_deciding(self, conn: sa.Connection, tx: sa.TwoPhaseTransaction,
                         transaction: str, record: str) -> None:
        # the row rides with the commit's own request (_direct_xa's commit)
        conn.info[_DECISION] = (self.decision_insert_sql(), (transaction, record))
        try:
            tx.commit()
        finally:
            conn.info.pop(_DECISION, None)

    def _error_code(self, orig: BaseException) -> int | None:
        code = next(iter(getattr(orig, "args", ())), None)  # PyMySQL: (errno, message)
        return code if isinstance(code, int) and code else None

    def _violated(self, orig: BaseException) -> tuple[str | None, str | None]:
        args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
        text = str(args[1]) if len(args) > 1 else str(orig)
        for pattern in _MY_COLUMN_REPORTS:
            m = pattern.search(text)
            if m:
                return m.group("f"), m.groupdict().get("v")
        return None, None

    def _unmark_origin(self, conn: sa.Connection) -> None:
        conn.exec_driver_sql("SET @dualwrite_origin = NULL")
        # the pool's checkin hook restores the mark (see _create_engine)
        conn.connection._connection_record.info["dw_unmarked"] = True

    def _reusable(self, conn: sa.Connection) -> bool:
        # a session that let its writes be captured goes back to the pool, whose checkin
        # hook gives it its mark back
        return not conn.connection._connection_record.info.get("dw_unmarked", False)

    def capture_dialect(self) -> Dialect:
        from dualwrite.connectors.mariadb.dialect import MariaDbDialect

        return MariaDbDialect()

    def __init__(self, name: str, url: str, *, engine: sa.Engine | None = None,
                 schema: str | None = None) -> None:
        #: (table, column) -> character set, learnt when checking a key's collation
        self._charsets: dict[tuple[str, str], str | None] = {}
        #: the engine of bulk loads (LOAD DATA LOCAL INFILE), made at the first one
        self._loader: sa.Engine | None = None
        #: the engine of single statements (sessions in autocommit), made at the first one
        self._single: sa.Engine | None = None
        super().__init__(name, url, engine=engine, schema=schema)

    @contextmanager
    def single_statements(self) -> Iterator[sa.Connection]:
        # Sessions of their own, in autocommit from the start (PyMySQL's flag): no ROLLBACK
        # after the statements (a round trip with PyMySQL even with nothing to undo), and no
        # switching a pooled session's autocommit on and off (a round trip each way). Each
        # statement reads what committed before it, as in a READ COMMITTED transaction. A
        # change log read, a lookup, a fetch by key: each pays one round trip, not two.
        if self._single is None:
            self._single = self._create_engine(self.url, autocommit=True)
        with self._single.connect() as conn:
            try:
                yield conn
            except BaseException:
                # A session whose server went away, seen by a statement run on the driver
                # itself (the log's reads: SQLAlchemy did not see the error, and this pool
                # is not the one its disconnect handling empties): dropped, not handed out
                # again to fail the next read with PyMySQL's "(0, '')"
                driver: Any = None if conn.invalidated else conn.connection.driver_connection
                if driver is not None and not driver.open:
                    conn.invalidate()
                raise

    def _create_engine(self, url: str, *, local_infile: bool = False,
                       autocommit: bool = False) -> sa.Engine:
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
        # Several statements in one request: an apply transaction's closing bookkeeping
        # (fence, positions, prune, queue probe) is one round trip instead of four (see
        # MariaDbDialect.finish_apply). FOUND_ROWS is SQLAlchemy's own (an UPDATE's rowcount
        # counts the rows it matched), which a client_flag given here would replace.
        from pymysql.constants import CLIENT

        asked = sa.engine.make_url(url).query.get("client_flag", "0")
        args["client_flag"] = (int(asked if isinstance(asked, str) else asked[-1])
                               | CLIENT.FOUND_ROWS | CLIENT.MULTI_STATEMENTS)
        if local_infile:
            # only bulk loads' connections let the server ask for a client file: the file
            # is always the one their own LOAD DATA names
            args["local_infile"] = True
        engine = sa.create_engine(url, pool_size=10, max_overflow=20, pool_recycle=3600,
                                  pool_reset_on_return=None,
                                  isolation_level="AUTOCOMMIT" if autocommit
                                  else "READ COMMITTED",
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

        _direct_xa(engine.dialect)
        if autocommit:
            # Nothing to commit or roll back in autocommit: SQLAlchemy still ends the
            # transaction it began for the statements, and PyMySQL would send each end to the
            # server (this engine's dialect is its own)
            engine.dialect.do_rollback = _nothing_to_end  # type: ignore[method-assign]
            engine.dialect.do_commit = _nothing_to_end  # type: ignore[method-assign]
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

    # -- the applier's set-based path (see json_apply) ------------------------------------
    def reads_log_text(self, p: Plan) -> bool:
        """The plan's ``text_safe``, or, for a decimal, a date or a datetime, the same plan
        without what the statements convert or guard themselves (json_apply): a zone offset
        (put in UTC), special values and dates of no plain shape (their rows left out, to the
        row path, which refuses them). Never PostgreSQL's money: its log holds display text.
        """
        s, t = p.source, p.target
        if s.facets.money:
            return False  # PostgreSQL logs money as its display text ('$1,234.56')
        if p.text_safe:
            return True
        if s.kind is not t.kind or t.kind not in _GUARDED_KINDS or p.nulled:
            return False
        f = replace(s.facets, specials=s.facets.specials - _GUARDED_SPECIALS,
                    database=t.facets.database)
        if t.kind is Kind.DATETIME:
            f = replace(f, time_zone=t.facets.time_zone)
        return plan(replace(s, facets=f), t).text_safe

    def _json_insert(self, conn: sa.Connection, table: sa.Table, columns: list[str],
                     sources: list[JsonSource], rows: Sequence[str], key: list[str],
                     mappings: Sequence[Sequence[tuple[str, Any]]]) -> set[Row] | None:
        # INSERT ... SELECT over JSON_TABLE, the keys written by RETURNING (MariaDB 10.5+)
        if not columns or not ja.small_mappings(mappings):
            return None
        raw_conn: Any = conn.connection.driver_connection
        text = self._json_statement(
            ("insert", table, tuple(columns), tuple(sources), tuple(key)),
            lambda: self._json_insert_sql(raw_conn, table, columns, sources, key), raw_conn)
        if text is None:
            return None
        with raw_conn.cursor() as cur:
            cur.execute(text % {"n": ja.json_literal(rows),
                                **ja.mapping_params(mappings, raw_conn.escape)})
            return {tuple(r) for r in cur.fetchall()}

    def _json_insert_sql(self, raw_conn: Any, table: sa.Table, columns: list[str],
                         sources: list[JsonSource], key: list[str]) -> str:
        cols = self._json_columns(table)
        rows = self._json_reader(raw_conn)
        vals = [rows.value(cols[c], src, "$") for c, src in zip(columns, sources, strict=True)]
        q = self._quote
        where = " WHERE " + " AND ".join(rows.guards) if rows.guards else ""
        return (f"INSERT INTO {self._table_sql(table)} ({', '.join(q(c) for c in columns)}) "
                f"SELECT {', '.join(vals)} FROM {rows.table_function('n')}"
                f"{''.join(rows.joins)}{where} RETURNING {', '.join(q(k) for k in key)}")

    def _json_update_if(self, conn: sa.Connection, table: sa.Table, key: list[str],
                        columns: list[str], key_sources: list[str], sources: list[JsonSource],
                        new: Sequence[str], old: Sequence[str],
                        mappings: Sequence[Sequence[tuple[str, Any]]]) -> set[Row] | None:
        # MariaDB has no UPDATE ... RETURNING. Two statements in this transaction: a locking
        # read of the run's target rows (by key: it locks only them, and reads them as
        # committed now) tells, per version, whether the row still holds the old version
        # and every computed value was found; then one UPDATE writes exactly those (they
        # are held by this transaction since the read: nothing changed them in between).
        # It matches as many rows as the read found, else the batch fails and is applied
        # again row by row (a lookup's row that went away in between, say).
        if not columns or not ja.small_mappings(mappings):
            return None
        raw_conn: Any = conn.connection.driver_connection
        shape = (table, tuple(key), tuple(columns), tuple(key_sources), tuple(sources))
        check = self._json_statement(("check", *shape), lambda: self._json_check_sql(
            raw_conn, table, key, columns, key_sources, sources), raw_conn)
        write = self._json_statement(("write", *shape), lambda: self._json_write_sql(
            raw_conn, table, key, columns, key_sources, sources), raw_conn)
        if check is None or write is None:
            return None
        params = ja.mapping_params(mappings, raw_conn.escape)
        with raw_conn.cursor() as cur:
            cur.execute(check % {"n": ja.json_literal(
                [f"[{a},{b}]" for a, b in zip(new, old, strict=True)]), **params})
            (agg, passed), = cur.fetchall()
            try:
                found = [r for r in json.loads(agg or "[]") if r is not None]
            except ValueError:
                found = []
            if len(found) != passed:  # cannot be: a result cut short
                raise ConstraintViolation(
                    f"the set-based update of {qualified(table)} could not read which rows "
                    "to write", environment=self.name, kind="other",
                    hint="the batch is applied again row by row")
            if not found:
                return set()
            cur.execute(write % {"n": ja.json_literal(
                [f"[{new[int(r[0]) - 1]}]" for r in found]), **params})
            if cur.rowcount != len(found):
                raise ConstraintViolation(
                    f"the set-based update of {qualified(table)} matched {cur.rowcount} rows "
                    f"of the {len(found)} it had locked", environment=self.name, kind="other",
                    hint="the batch is applied again row by row")
            return {tuple(r[1:]) for r in found}

    def _json_check_sql(self, raw_conn: Any, table: sa.Table, key: list[str],
                        columns: list[str], key_sources: list[str], sources: list[JsonSource]
                        ) -> str:
        """Per version (elements [new, old]) whose row still holds the old version and
        whose every value was found: [dw_ord, <key>...], as one JSON array (one row back
        instead of one per version), and how many; locking the run's target rows by key."""
        cols = self._json_columns(table)
        rows = self._json_reader(raw_conn)
        match = self._json_key_match(rows, table, cols, key, key_sources)
        for c, src in zip(columns, sources, strict=True):
            rows.value(cols[c], src, "$[0]")  # its guards: the write computes it again
        old_vals = [rows.value(cols[c], src, "$[1]")
                    for c, src in zip(columns, sources, strict=True)]
        holds = [ja.same(cols[c], f"t.{self._quote(c)}", v)
                 for c, v in zip(columns, old_vals, strict=True)]
        q = self._quote
        cond = f"({' AND '.join(holds + rows.guards)})"
        # JSON_ARRAYAGG is cut at group_concat_max_len: none for this statement
        return (f"SET STATEMENT group_concat_max_len = 4294967295 FOR "
                f"SELECT JSON_ARRAYAGG(IF({cond}, JSON_ARRAY(n.dw_ord, "
                f"{', '.join('t.' + q(k) for k in key)}), NULL)), "
                f"COALESCE(SUM({cond}), 0) "
                f"FROM {rows.table_function('n')} STRAIGHT_JOIN {self._table_sql(table)} t "
                f"ON {match}{''.join(rows.joins)} FOR UPDATE")

    def _json_write_sql(self, raw_conn: Any, table: sa.Table, key: list[str],
                        columns: list[str], key_sources: list[str], sources: list[JsonSource]
                        ) -> str:
        """The UPDATE of the rows the check found (elements [new])."""
        cols = self._json_columns(table)
        rows = self._json_reader(raw_conn)
        for src in sources:
            if isinstance(src, JsonValue) and src.how == "lookup" and \
                    self.table(src.table) is table:
                raise ja.Declined  # a subquery on the table updated: not in one UPDATE
        match = self._json_key_match(rows, table, cols, key, key_sources)
        vals = [rows.value(cols[c], src, "$[0]") for c, src in zip(columns, sources, strict=True)]
        q = self._quote
        where = " WHERE " + " AND ".join(rows.guards) if rows.guards else ""
        return (f"UPDATE {rows.table_function('n')} STRAIGHT_JOIN {self._table_sql(table)} t "
                f"ON {match}{''.join(rows.joins)} SET "
                + ", ".join(f"t.{q(c)} = {v}" for c, v in zip(columns, vals, strict=True))
                + where)

    def _json_key_match(self, rows: ja.Rows, table: sa.Table, cols: dict[str, Column],
                        key: list[str], key_sources: list[str]) -> str:
        name = qualified(table)
        return " AND ".join(
            ja.key_match(cols[k], f"t.{self._quote(k)}", rows.member("$[0]", src),
                         self._text_collation(name, k) if cols[k].kind is Kind.STRING
                         else None)
            for k, src in zip(key, key_sources, strict=True))

    def _json_statement(self, key: tuple[Any, ...], build: Callable[[], str],
                        raw_conn: Any) -> str | None:
        """A set-based statement's text, built once per shape; None: the shape cannot be
        written exactly this way, or the server is no MariaDB 10.6 or later (JSON_TABLE,
        INSERT ... RETURNING, SET STATEMENT): the row path."""
        if not _json_table_server(raw_conn):
            return None
        cache: dict[tuple[Any, ...], str | None] = self.__dict__.setdefault("_json_sql", {})
        if key not in cache:
            if len(cache) > 1000:
                cache.clear()
            try:
                cache[key] = build()
            except ja.Declined:
                cache[key] = None
        return cache[key]

    def _json_reader(self, raw_conn: Any) -> ja.Rows:
        def literal(v: Any) -> str:
            return str(raw_conn.escape(v)).replace("%", "%%")

        def table_sql(name: str) -> str:
            return self._table_sql(self.table(name))

        return ja.Rows(self._quote, literal, self._json_columns_of, table_sql,
                       self._text_collation)

    def _json_columns_of(self, table: str) -> dict[str, Column]:
        return self.describe(table).columns

    def _json_columns(self, table: sa.Table) -> dict[str, Column]:
        return self.describe(qualified(table)).columns

    def _quote(self, name: str) -> str:
        return str(self.engine.dialect.identifier_preparer.quote(name)).replace("%", "%%")

    def _table_sql(self, t: sa.Table) -> str:
        return f"{self._quote(t.schema)}.{self._quote(t.name)}" if t.schema else \
            self._quote(t.name)

    def _text_collation(self, table: str, column: str) -> str | None:
        """A text column's collation where its character set is utf8mb4, else None
        (cached)."""
        key = (table, column)
        cache: dict[tuple[str, str], str | None] = self.__dict__.setdefault("_utf8mb4", {})
        if key not in cache:
            charset, collation = self._charset_collation(table, column)
            cache[key] = collation if charset == "utf8mb4" else None
        return cache[key]

    def _charset_collation(self, table: str, column: str) -> tuple[str | None, str | None]:
        """A column's character set and collation (None, None: not a text column, or no such
        column)."""
        schema, name = split_table(table)
        with self.engine.connect() as conn:
            row = conn.execute(sa.text(
                "SELECT CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = COALESCE(:s, DATABASE()) AND TABLE_NAME = :t "
                "AND COLUMN_NAME = :c"), {"s": schema, "t": name, "c": column}).first()
        if row is None:
            return None, None
        return (None if row[0] is None else str(row[0]),
                None if row[1] is None else str(row[1]))

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
        conn.exec_driver_sql(
            f"INSERT INTO {self.engine.dialect.identifier_preparer.format_table(table)} "
            f"({', '.join(quote(c) for c in columns)}) "
            f"VALUES ({marks})", list(rows))

    def _insert_resolving(self, conn: sa.Connection, table: str, columns: tuple[str, ...],
                          row: Row, lookups: Sequence[FoldedLookup]) -> bool | None:
        # INSERT ... SELECT from one-row derived tables, one per lookup, as on PostgreSQL: a
        # lookup that finds nothing makes the SELECT empty, so nothing is inserted and the
        # caller names the problem with the transaction as it was. The values go to the
        # driver as they are, as _bulk_insert's do (MariaDB converts a selected literal to the
        # column as it converts one in VALUES). The key is matched by its bytes as well as by
        # `=`: the collation's `=` ignores case and trailing spaces, the ordinary lookup does
        # not (it keeps the row whose key reads back as the value), and where the two would
        # disagree this finds nothing and the ordinary path answers. `=` first, for the index.
        # The source is read without locks (READ COMMITTED: a consistent read).
        at = {f.slot: n for n, f in enumerate(lookups)}
        shape = tuple((f.slot, f.table, f.match, f.returning) for f in lookups)

        def build() -> str:
            prep = self.engine.dialect.identifier_preparer
            quote, name = prep.quote, prep.format_table
            picks = [f"l{at[i]}.v" if i in at else "%s" for i in range(len(columns))]
            sources = [
                f"(SELECT {quote(f.returning)} AS v FROM {name(self.table(f.table))} "
                f"WHERE {quote(f.match)} = %s AND CAST({quote(f.match)} AS BINARY) = "
                f"CAST(%s AS BINARY) ORDER BY {quote(f.returning)} LIMIT 1) l{n}"
                for n, f in enumerate(lookups)]
            return (f"INSERT INTO {name(self.table(table))} "
                    f"({', '.join(quote(c) for c in columns)}) SELECT {', '.join(picks)} "
                    f"FROM {' CROSS JOIN '.join(sources)}")

        text = str(self.statement(("raw-insert-resolving", table, columns, shape), build))
        params = [v for i, v in enumerate(row) if i not in at] + \
            [v for f in lookups for v in (f.value, f.value)]
        with conn.connection.driver_connection.cursor() as cur:  # type: ignore[union-attr]
            cur.execute(text, params)
            return bool(cur.rowcount == 1)

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
        for engine in (self._loader, self._single):
            if engine is not None:
                engine.dispose()
        self._loader = self._single = None
        super().close()

    def _long_text(self) -> sa.types.TypeEngine[str]:
        from sqlalchemy.dialects import mysql

        return mysql.LONGTEXT()  # TEXT stops at 64 KiB

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
        charset, collation = self._charset_collation(table, column)
        if collation is None:
            return True
        self._charsets[(table, column)] = charset
        return collation.endswith("_bin") or collation == "binary"

    def _binary_order_expr(self, col: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        table = getattr(col, "table", None)
        charset = self._charsets.get((qualified(table) if isinstance(table, sa.Table) else "",
                                      getattr(col, "name", "")))
        if charset == "utf8mb4":
            return sa.collate(col, "utf8mb4_bin")
        if charset in ("utf8mb3", "utf8"):
            return sa.collate(col, "utf8mb3_bin")
        return sa.cast(col, mysql.BINARY())


def _json_table_server(raw_conn: Any) -> bool:
    """Whether the server is MariaDB 10.6 or later (PyMySQL's server version string, e.g.
    ``10.11.19-MariaDB-0+deb12u1``, or with the ``5.5.5-`` prefix older MariaDB servers
    send; MySQL's has no ``MariaDB``)."""
    info = str(raw_conn.get_server_info())
    m = re.match(r"(?:5\.5\.5-)?(\d+)\.(\d+)", info)
    return "MariaDB" in info and m is not None and (int(m.group(1)), int(m.group(2))) >= (10, 6)


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
