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
back exactly (:func:`dualwrite.model.conversion.from_log` turns a member into the Python
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
import hashlib
import json
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa

from dualwrite.connectors.sql import split_table, without_collation
from dualwrite.errors import LeaseLost, TerminalConnectorError
from dualwrite.model.codec import decode_json as decode_json
from dualwrite.model.codec import from_log, parse_instant
from dualwrite.model.schema import Column, Kind

if TYPE_CHECKING:
    from dualwrite.connectors.sql import SqlConnector

CHANGES = "dualwrite_changes"
#: seconds a CaptureLog trusts that its log table exists once it has seen it
EXISTS_TRUST = 5.0
#: the log's column of the map version a change was captured under
VERSION = "v"
APPLIED = "dualwrite_applied"
#: the ``source`` of the applied-positions row that fences out appliers of an older lease
FENCE_SOURCE = "#fence"
ORIGIN = "dualwrite_origin"
WAKE = "dualwrite_wake"
NOTIFY_CHANNEL = "dualwrite_changes"
#: the applied-position row of a source without transaction ids (SQLite): a high-water mark
WATERMARK = ""
#: the op of a marker: capture could not record a change of the map (see the module doc)
MARKER = "X"


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture for one map on one side: the table, its key, and every column the
    map reads (key, mapped fields, filter columns)."""

    map: str
    table: str
    key: tuple[str, ...]
    columns: tuple[str, ...]
    #: the map version the triggers capture for: each change in the log carries it, so that
    #: it is applied as that version says (a reload changes the columns captured)
    version: str = ""

    @property
    def tag(self) -> str:
        """A short, stable, identifier-safe name for this map's triggers on this table. Both
        are in it: a map's two tables may be in one database (one schema), where MariaDB's
        trigger names and PostgreSQL's function names must differ."""
        return "dw_" + hashlib.sha1(f"{self.map}\0{self.table}".encode()).hexdigest()[:10]

    @property
    def legacy_tag(self) -> str:
        """The name earlier versions gave (the map's alone), to remove what they installed."""
        return "dw_" + hashlib.sha1(self.map.encode()).hexdigest()[:10]

    @property
    def needed(self) -> tuple[str, ...]:
        """Every column the triggers read: the key, then the captured columns."""
        return tuple(dict.fromkeys(self.key + self.columns))


_UNDECODED: Any = object()
#: a named parameter (``:name``) of the statements here, not a cast (``::type``)
_NAMED = re.compile(r"(?<!:):([a-z]\w*)")


class Change:
    """One captured row change. ``old``/``new`` hold the map's columns (None for the side
    of an insert or delete that has no row); values are as JSON gave them (see
    :func:`decode_json`), to be turned into the columns' values by ``conversion.from_log``.

    A change read from a log keeps ``old_json``/``new_json``, the JSON text the trigger
    wrote, and decodes it only when ``old``/``new`` is asked for: the applier's set-based
    paths hand the text to the target database and never decode it in Python.

    A marker (op ``X``) says that capture could not record a change of its map; ``reason``
    says why, its key is the row's where the trigger could still read it (else empty), and it
    has no versions."""

    __slots__ = ("_key", "_new", "_old", "at", "key_text", "map", "new_json", "old_json", "op",
                 "seq", "txid", "version")

    def __init__(self, seq: int, map: str, txid: str, op: str, key_text: str,
                 old: dict[str, Any] | None = None, new: dict[str, Any] | None = None,
                 at: dt.datetime | None = None, *, old_json: str | None = None,
                 new_json: str | None = None, key: tuple[Any, ...] | None = None) -> None:
        self.seq = seq
        self.map = map
        self.txid = txid
        self.op = op  # "I", "U", "D", or "X" (a marker)
        self.key_text = key_text  # the key as the log stores it (a JSON array); see ``key``
        self._key = key  # decoded, when the reader decoded it already
        self.at = at if at is not None else dt.datetime.now(dt.UTC)
        self.old_json, self.new_json = old_json, new_json
        self._old = old if old is not None or old_json is None else _UNDECODED
        self._new = new if new is not None or new_json is None else _UNDECODED
        self.version = ""  # the map version it was captured under ("": before versions)

    @property
    def old(self) -> dict[str, Any] | None:
        if self._old is _UNDECODED:
            self._old = decode_json(self.old_json)
        return self._old

    @property
    def new(self) -> dict[str, Any] | None:
        if self.op == MARKER:
            return None  # a marker's "new" carries its reason, not a version
        if self._new is _UNDECODED:
            self._new = decode_json(self.new_json)
        return self._new

    @property
    def reason(self) -> str | None:
        """Why capture could not record this change (markers only; None otherwise)."""
        if self.op != MARKER:
            return None
        doc = self._new if self._new is not _UNDECODED else decode_json(self.new_json)
        return str((doc or {}).get("reason") or "capture could not record this change")

    @property
    def has_old(self) -> bool:
        """Whether there is an old version (an update or a delete), without decoding it."""
        return self.old_json is not None if self._old is _UNDECODED else self._old is not None

    @property
    def has_new(self) -> bool:
        if self.op == MARKER:
            return False
        return self.new_json is not None if self._new is _UNDECODED else self._new is not None

    @property
    def key(self) -> tuple[Any, ...]:
        """The key, decoded when first asked (a log reader decodes all of a read's keys
        at once: one call of the JSON decoder instead of one per change)."""
        if self._key is None:
            self._key = tuple(decode_json(self.key_text))
        return self._key

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Change:
        new = {"reason": d.get("reason")} if d["op"] == MARKER else d.get("new")
        c = cls(seq=int(d["seq"]), map=str(d["map"]), txid=str(d["txid"]), op=str(d["op"]),
                key_text=json.dumps(list(d["key"]), default=str), old=d.get("old"),
                new=new, at=parse_time(d["at"]))
        c.version = str(d.get("v") or "")
        return c

    def as_dict(self) -> dict[str, Any]:
        out = {"seq": self.seq, "map": self.map, "txid": self.txid, "op": self.op,
               "key": list(self.key), "old": self.old, "new": self.new,
               "at": self.at.isoformat(), "v": self.version}
        if self.op == MARKER:
            out["reason"] = self.reason
        return out

    def __repr__(self) -> str:
        return (f"Change(seq={self.seq}, map={self.map!r}, txid={self.txid!r}, op={self.op!r}, "
                f"key={self.key_text})")


#: the advisory lock (PostgreSQL) that dualwrite's own DDL in a database is made under
_DDL_LOCK = 0x64775F6464  # "dw_dd"

#: a log's timestamp as an aware datetime, under the name the applier imports it by
#: (:func:`dualwrite.model.codec.parse_instant`)
parse_time = parse_instant


def columns_of_filter(expr: Any) -> set[str]:
    """Every column a parsed filter reads (its Property nodes)."""
    from dataclasses import fields, is_dataclass

    from dualwrite.model.filters import Property

    out: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Property):
            out.add(node.name)
        elif isinstance(node, tuple | list):
            for n in node:
                walk(n)
        elif is_dataclass(node):
            for f in fields(node):
                walk(getattr(node, f.name))

    walk(expr)
    return out


# -- from the log back to values ----------------------------------------------------------------
# Each decoder takes a value as decode_json gave it (or as it comes back from the state store,
# where numbers may have become text) and returns the Python value the connector reads for a
# column of that kind. A value Python has no type for stays the database's text (documented in
# docs/capture.md); a value that is not what the kind expects is returned unchanged: decoding
# never fails, the target decides.

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


class Dialect(ABC):
    """The SQL of change capture for one database."""

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


class PostgresDialect(Dialect):
    """Statement-level triggers with transition tables: one ``INSERT ... SELECT`` per
    statement. The map's columns are read by name only after a check, once per statement,
    that the table still has them all (one catalog lookup); if not, the same statement logs
    a marker per row from the whole row (``row_to_json(t.*)``), which reads no column by name.
    (A plpgsql EXCEPTION block would catch the error instead, but it opens a subtransaction
    for every captured statement: a cost on every write, and in a long transaction an
    overflow of the subtransaction cache that slows every session's snapshots.)"""

    #: settings the trigger functions run with (restored when they return), so that the
    #: log's text does not depend on the writing session's
    SETTINGS = (("bytea_output", "hex"), ("extra_float_digits", "1"),
                ("intervalstyle", "postgres"), ("timezone", "UTC"))
    TXID = "pg_current_xact_id()::text::bigint"
    EVENTS: ClassVar[dict[str, tuple[str, str]]] = {
        "i": ("INSERT", "REFERENCING NEW TABLE AS dw_new"),
        "d": ("DELETE", "REFERENCING OLD TABLE AS dw_old"),
        "u": ("UPDATE", "REFERENCING OLD TABLE AS dw_old NEW TABLE AS dw_new")}

    def key_text(self, params: Sequence[str], columns: Sequence[Column]) -> str:
        # json_build_array takes "any": the parameters need their column's type
        return ("json_build_array(" + ", ".join(
            f"CAST(:{p} AS {without_collation(c.sql_type)})"
            for p, c in zip(params, columns, strict=True)) + ")::text")

    def _pinned(self) -> str:
        """The SET clause of a trigger function: the settings the log's text depends on, and
        the search path of the log's schema (a writer's own search path may not hold it)."""
        settings = " ".join(f"SET {k} = '{v}'" for k, v in self.SETTINGS)
        return f"{settings} SET search_path = {_dq(self.home)}" if self.home else settings

    def _table(self, table: str) -> str:
        schema, name = self.split(table)
        return f"{_dq(schema)}.{_dq(name)}" if schema else _dq(name)

    def log_ddl(self) -> list[str]:
        path = f"SET search_path = {_dq(self.home)} " if self.home else ""
        wake = (
            "CREATE OR REPLACE FUNCTION dualwrite_wake() RETURNS trigger LANGUAGE plpgsql "
            f"{path}AS $dw$ BEGIN "
            f"DELETE FROM {WAKE} WHERE txid = NEW.txid; "
            # At PREPARE TRANSACTION a notification would make the PREPARE fail: the poll
            # finds the changes once committed. A depth above 1 means the constraints were
            # set immediate and this fires inside the capturing statement, long before the
            # transaction ends (and it may yet be prepared).
            "IF pg_trigger_depth() = 1 AND current_query() !~* "
            "E'prepare\\\\s+transaction|set\\\\s+constraints' THEN "
            f"PERFORM pg_notify('{NOTIFY_CHANNEL}', ''); END IF; "
            "RETURN NULL; END $dw$")
        return [
            f"CREATE TABLE IF NOT EXISTS {CHANGES} (seq bigserial PRIMARY KEY, "
            "map text NOT NULL, txid bigint NOT NULL, op char(1) NOT NULL, k text NOT NULL, "
            "old json, new json, at timestamptz NOT NULL DEFAULT clock_timestamp(), v text)",
            f"CREATE INDEX IF NOT EXISTS {CHANGES}_key ON {CHANGES} (map, k)",
            f"CREATE TABLE IF NOT EXISTS {APPLIED} (source text NOT NULL, map text NOT NULL, "
            "txid text NOT NULL, seq bigint NOT NULL, at timestamptz NOT NULL DEFAULT now(), "
            "PRIMARY KEY (source, map, txid))",
            # unlogged: a row lives only inside the transaction that inserts it
            f"CREATE UNLOGGED TABLE IF NOT EXISTS {WAKE} (txid bigint PRIMARY KEY)",
            wake,
            # created once (replacing it would lock the table against every writer, prepared
            # transactions included, until they end)
            "DO $dw$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgname = "
            f"'dualwrite_wake' AND tgrelid = '{WAKE}'::regclass) THEN "
            f"CREATE CONSTRAINT TRIGGER dualwrite_wake AFTER INSERT ON {WAKE} "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION dualwrite_wake(); "
            "END IF; END $dw$",
        ]

    def encodings(self, conn: sa.Connection, table: str) -> dict[str, str] | None:
        oid = conn.execute(sa.text("SELECT to_regclass(:t)::oid"),
                           {"t": self._table(table)}).scalar()
        if oid is None:
            return None
        rows = conn.execute(sa.text(
            "SELECT a.attname, COALESCE(b.typname, t.typname) FROM pg_catalog.pg_attribute a "
            "JOIN pg_catalog.pg_type t ON t.oid = a.atttypid "
            "LEFT JOIN pg_catalog.pg_type b ON b.oid = t.typbasetype AND t.typtype = 'd' "
            "WHERE a.attrelid = :oid AND a.attnum > 0 AND NOT a.attisdropped"),
            {"oid": oid}).all()
        return {str(r[0]): JSON_DOC if r[1] in ("json", "jsonb") else PLAIN for r in rows}

    @staticmethod
    def _value(ref: str, encoding: str | None) -> str:
        # a JSON document as its text: row_to_json would embed it, and JSON null would read
        # as SQL NULL
        return f"{ref}::text" if encoding == JSON_DOC else ref

    def _body(self, spec: CaptureSpec, enc: dict[str, str], op: str) -> str:
        m, txid, v = _pg_string(spec.map), self.TXID, _pg_string(spec.version)
        needed = spec.needed
        names = ", ".join(_pg_string(c) for c in needed)
        present = ("(SELECT count(*) FROM pg_catalog.pg_attribute WHERE attrelid = TG_RELID "
                   "AND attnum > 0 AND NOT attisdropped AND attname = ANY (ARRAY["
                   f"{names}]::name[])) = {len(needed)}")
        proj = ", ".join(f"{self._value('t.' + _dq(c), enc.get(c))} AS {_dq(c)}"
                         for c in spec.columns)
        row = f"(SELECT row_to_json(v.*) FROM (SELECT {proj}) AS v)"
        key = f"json_build_array({', '.join('t.' + _dq(c) for c in spec.key)})::text"
        ins = f"INSERT INTO {CHANGES} (map, txid, op, k, old, new, v) "

        def rows(rel: str) -> str:
            return f"SELECT {key} AS k, {row} AS j FROM {rel} AS t"

        if op == "i":
            capture = (f"{ins}SELECT {m}, {txid}, 'I', n.k, NULL, n.j, {v} "
                       f"FROM ({rows('dw_new')}) AS n")
        elif op == "d":
            capture = (f"{ins}SELECT {m}, {txid}, 'D', o.k, o.j, NULL, {v} "
                       f"FROM ({rows('dw_old')}) AS o")
        else:
            # Old and new rows joined on the key: a row whose key changed shows as a delete of
            # the old key and an insert of the new one. The join compares the key's text (a
            # change a collation calls equal is still a change), and never a key with a NULL.
            whole = f"num_nulls({', '.join('t.' + _dq(c) for c in spec.key)}) = 0"

            def keyed(rel: str) -> str:
                return (f"SELECT s.k, CASE WHEN s.whole THEN s.k END AS jk, s.j FROM (SELECT "
                        f"{key} AS k, {whole} AS whole, {row} AS j FROM {rel} AS t) AS s")

            capture = (
                f"{ins}SELECT {m}, {txid}, "
                "CASE WHEN o.k IS NULL THEN 'I' WHEN n.k IS NULL THEN 'D' ELSE 'U' END, "
                f"COALESCE(n.k, o.k), o.j, n.j, {v} FROM ({keyed('dw_old')}) AS o "
                f"FULL JOIN ({keyed('dw_new')}) AS n ON o.jk = n.jk "
                "WHERE o.k IS NULL OR n.k IS NULL OR o.j::text <> n.j::text")
        # the marker: from the whole row, which names no column
        keys = ", ".join(_pg_string(c) for c in spec.key)
        marker_key = (f"CASE WHEN r.j::jsonb ?& ARRAY[{keys}] THEN json_build_array("
                      + ", ".join(f"r.j->{_pg_string(c)}" for c in spec.key)
                      + ")::text ELSE '[]' END")
        gone = ("array_to_string(ARRAY(SELECT c FROM unnest(ARRAY["
                f"{names}]::text[]) AS c WHERE NOT EXISTS (SELECT 1 FROM "
                "pg_catalog.pg_attribute a WHERE a.attrelid = TG_RELID AND a.attname = c "
                "AND a.attnum > 0 AND NOT a.attisdropped)), ', ')")
        prefix = _pg_string(f"capture of map {spec.map!r} on table {spec.table!r} cannot "
                            "record column(s) ")
        reason = f"{prefix} || {gone} || ' (renamed or dropped)'"
        marker = (f"{ins}SELECT {m}, {txid}, '{MARKER}', {marker_key}, NULL, "
                  f"json_build_object('reason', {reason}), {v} FROM (SELECT row_to_json(t.*) "
                  "AS j "
                  f"FROM {'dw_old' if op == 'd' else 'dw_new'} AS t) AS r")
        return (
            "DECLARE dw_tx text; BEGIN "
            "IF current_setting('dualwrite.origin', true) = 'on' THEN RETURN NULL; END IF; "
            f"IF {present} THEN {capture}; ELSE {marker}; END IF; "
            # once per transaction: a row whose deferred trigger notifies at COMMIT
            "IF FOUND THEN dw_tx := pg_current_xact_id()::text; "
            "IF current_setting('dualwrite.wake', true) IS DISTINCT FROM dw_tx THEN "
            f"INSERT INTO {WAKE} (txid) VALUES (dw_tx::bigint); "
            # a session setting (a local one would end with this function's own settings),
            # rolled back with the row if the (sub)transaction is
            "PERFORM set_config('dualwrite.wake', dw_tx, false); END IF; END IF; "
            "RETURN NULL; END")

    def definitions(self, spec: CaptureSpec, encodings: dict[str, str]) -> dict[str, str]:
        return {f"{spec.tag}_{op}": self._body(spec, encodings, op) for op in self.EVENTS}

    def install_ddl(self, spec: CaptureSpec, encodings: dict[str, str]) -> list[str]:
        t = self._table(spec.table)
        settings = self._pinned()
        out = []
        for name, body in self.definitions(spec, encodings).items():
            event, refs = self.EVENTS[name[-1]]
            tag = "$dw$"
            while tag in body:
                tag = tag[:-1] + "_$"
            out += [
                f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql "
                f"{settings} AS {tag}{body}{tag}",
                f"DROP TRIGGER IF EXISTS {name} ON {t}",
                f"CREATE TRIGGER {name} AFTER {event} ON {t} {refs} FOR EACH STATEMENT "
                f"EXECUTE FUNCTION {name}()",
            ]
        return out

    def installed(self, conn: sa.Connection, spec: CaptureSpec) -> dict[str, tuple[str, str]]:
        rows = conn.execute(sa.text(
            "SELECT tg.tgname, CASE WHEN n.nspname = current_schema() THEN c.relname "
            "ELSE n.nspname || '.' || c.relname END, tg.tgenabled, p.prosrc "
            "FROM pg_catalog.pg_trigger tg JOIN pg_catalog.pg_class c ON c.oid = tg.tgrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_catalog.pg_proc p ON p.oid = tg.tgfoid "
            "WHERE tg.tgname IN (:i, :d, :u)"),
            {o: f"{spec.tag}_{o}" for o in self.EVENTS}).all()
        return {str(r[0]): (("disabled:" if r[2] == "D" else "") + str(r[1]), str(r[3]))
                for r in rows}

    def remove_ddl(self, spec_tag: str, table: str) -> list[str]:
        # CASCADE drops each function's trigger wherever it is (the table may be renamed)
        return [f"DROP FUNCTION IF EXISTS {spec_tag}_{op}() CASCADE" for op in "iud"]


#: MariaDB errors a capture trigger's handler passes on to the application: they concern its
#: transaction or the server, not what capture can record (lock wait timeout, deadlock,
#: interrupted, killed, statement timeout, out of memory or space, XA states, read-only)
_MY_RESIGNAL = (1205, 1213, 1317, 1927, 1969, 1037, 1038, 1041, 1021, 1114, 1180, 1181, 1399,
                1401, 1613, 1614, 1792, 1290)
_MY_BINARY = {"tinyblob", "blob", "mediumblob", "longblob", "binary", "varbinary", "geometry",
              "point", "linestring", "polygon", "multipoint", "multilinestring",
              "multipolygon", "geometrycollection"}


class MariaDbDialect(Dialect):
    """MariaDB exposes the id of the writing transaction only through system versioning:
    the log is a table versioned by transaction id, so the row-start column of each change
    *is* its source transaction id. (information_schema.INNODB_TRX would be simpler, but it
    is a cache refreshed at most every 0.1 s: a new transaction is often missing from it.)
    Deleting applied changes leaves history rows; the applier purges them with DELETE
    HISTORY (every second). Each capturing transaction adds a row to
    mysql.transaction_registry, which MariaDB never purges by itself (see docs/capture.md).

    Row triggers read the map's columns by name; an exit handler turns an error (a column
    renamed or dropped: "Unknown column 'qty' in 'OLD'") into a marker, and passes those that
    concern the transaction (``_MY_RESIGNAL``) on."""

    def add_version_ddl(self) -> str:
        # a system-versioned table is altered only with its history kept as it is
        return (f"SET STATEMENT system_versioning_alter_history = KEEP FOR ALTER TABLE {CHANGES} "
                f"ADD COLUMN IF NOT EXISTS {VERSION} VARCHAR(40)")

    def key_text(self, params: Sequence[str], columns: Sequence[Column]) -> str:
        return "JSON_ARRAY(" + ", ".join(
            self._value(f":{p}", BINARY if c.kind is Kind.BINARY else PLAIN)
            for p, c in zip(params, columns, strict=True)) + ")"

    def log_ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {CHANGES} (seq BIGINT AUTO_INCREMENT PRIMARY KEY, "
            "map VARCHAR(190) NOT NULL, op CHAR(1) NOT NULL, "
            "k VARCHAR(700) NOT NULL, old LONGTEXT, new LONGTEXT, at DATETIME(6) NOT NULL, "
            "v VARCHAR(40), "
            "txid BIGINT UNSIGNED GENERATED ALWAYS AS ROW START INVISIBLE, "
            "txid_end BIGINT UNSIGNED GENERATED ALWAYS AS ROW END INVISIBLE, "
            "PERIOD FOR SYSTEM_TIME (txid, txid_end), "
            "KEY dualwrite_changes_key (map, k(200))) ENGINE=InnoDB "
            "DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin WITH SYSTEM VERSIONING",
            f"CREATE TABLE IF NOT EXISTS {APPLIED} (source VARCHAR(190) NOT NULL, "
            "map VARCHAR(190) NOT NULL, txid VARCHAR(40) NOT NULL, seq BIGINT NOT NULL, "
            "at DATETIME(6) NOT NULL DEFAULT NOW(6), PRIMARY KEY (source, map, txid)) "
            "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
        ]

    def encodings(self, conn: sa.Connection, table: str) -> dict[str, str] | None:
        schema, name = self.split(table)
        rows = conn.execute(sa.text(
            "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_SET_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = COALESCE(:s, DATABASE()) AND TABLE_NAME = :t"),
            {"s": schema, "t": name}).all()
        if not rows:
            return None
        out = {}
        for name, data_type, charset in rows:
            data_type = str(data_type).lower()
            out[str(name)] = (BINARY if data_type in _MY_BINARY else
                              FLOAT32 if data_type == "float" else
                              BIT if data_type == "bit" else
                              TEXT if charset is not None else PLAIN)
        return out

    @staticmethod
    def _value(ref: str, encoding: str | None) -> str:
        if encoding == BINARY:  # "\x" and lower-case hex, as PostgreSQL writes bytea
            return f"CONCAT(CHAR(92, 120 USING utf8mb4), LOWER(HEX({ref})))"
        if encoding == TEXT:
            # any character set as utf8mb4, and a JSON column as plain text (CONVERT(... USING)
            # would keep its JSON type, and JSON_OBJECT would embed the document: JSON null
            # would read as SQL NULL)
            return f"CAST({ref} AS CHAR CHARACTER SET utf8mb4)"
        if encoding == FLOAT32:  # JSON_OBJECT prints a FLOAT with 6 digits; a DOUBLE exactly
            return f"CAST({ref} AS DOUBLE)"
        if encoding == BIT:  # a BIT is a binary string: its number instead
            return f"({ref} + 0)"
        return ref

    @staticmethod
    def _same(a: str, b: str, encoding: str | None) -> str:
        # text compared byte for byte: a collation may call 'a' and 'A' (or 'a ') equal
        if encoding == TEXT:
            return f"CAST({a} AS BINARY) <=> CAST({b} AS BINARY)"
        return f"{a} <=> {b}"

    def _bodies(self, spec: CaptureSpec, enc: dict[str, str]) -> dict[str, str]:
        m = _my_string(spec.map)

        def obj(row: str) -> str:
            return "JSON_OBJECT(" + ", ".join(
                f"{_my_string(c)}, {self._value(row + '.' + _bq(c), enc.get(c))}"
                for c in spec.columns) + ")"

        def key(row: str) -> str:
            return "JSON_ARRAY(" + ", ".join(
                self._value(row + "." + _bq(c), enc.get(c)) for c in spec.key) + ")"

        # a trigger runs in its table's database: one elsewhere names the log's
        log = f"{_bq(self.home)}.{CHANGES}" if self.split(spec.table)[0] else CHANGES
        ins = (f"INSERT INTO {log} (map, v, op, k, old, new, at) VALUES ({m}, "
               f"{_my_string(spec.version)}, ")
        now = "UTC_TIMESTAMP(6)"
        prefix = _my_string(f"capture of map {spec.map!r} on table {spec.table!r} failed: ")

        def handler(row: str) -> str:
            return (
                "DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN "
                "DECLARE dw_no INT DEFAULT 0; "
                "DECLARE dw_msg TEXT CHARACTER SET utf8mb4 DEFAULT ''; "
                "DECLARE dw_k TEXT CHARACTER SET utf8mb4 DEFAULT '[]'; "
                "GET DIAGNOSTICS CONDITION 1 dw_no = MYSQL_ERRNO, dw_msg = MESSAGE_TEXT; "
                f"IF dw_no IN ({', '.join(map(str, _MY_RESIGNAL))}) THEN RESIGNAL; END IF; "
                # the key, if it can still be read
                "BEGIN DECLARE CONTINUE HANDLER FOR SQLEXCEPTION SET dw_k = '[]'; "
                f"SET dw_k = {key(row)}; END; "
                f"{ins}'{MARKER}', dw_k, NULL, JSON_OBJECT('reason', CONCAT({prefix}, dw_msg)), "
                f"{now}); END; ")

        guard = "IF @dualwrite_origin IS NULL THEN "
        unchanged = " AND ".join(self._same(f"OLD.{_bq(c)}", f"NEW.{_bq(c)}", enc.get(c))
                                 for c in spec.columns)
        same_key = " AND ".join(self._same(f"OLD.{_bq(c)}", f"NEW.{_bq(c)}", enc.get(c))
                                for c in spec.key)
        return {
            f"{spec.tag}_i": f"BEGIN {handler('NEW')}{guard}"
                             f"{ins}'I', {key('NEW')}, NULL, {obj('NEW')}, {now}); END IF; END",
            f"{spec.tag}_d": f"BEGIN {handler('OLD')}{guard}"
                             f"{ins}'D', {key('OLD')}, {obj('OLD')}, NULL, {now}); END IF; END",
            f"{spec.tag}_u": (
                f"BEGIN {handler('NEW')}{guard}IF NOT ({unchanged}) THEN IF {same_key} THEN "
                f"{ins}'U', {key('NEW')}, {obj('OLD')}, {obj('NEW')}, {now}); ELSE "
                f"{ins}'D', {key('OLD')}, {obj('OLD')}, NULL, {now}); "
                f"{ins}'I', {key('NEW')}, NULL, {obj('NEW')}, {now}); "
                "END IF; END IF; END IF; END"),
        }

    def definitions(self, spec: CaptureSpec, encodings: dict[str, str]) -> dict[str, str]:
        return self._bodies(spec, encodings)

    def install_ddl(self, spec: CaptureSpec, encodings: dict[str, str]) -> list[str]:
        schema, table = self.split(spec.table)
        # a trigger lives in its table's database
        db = f"{_bq(schema)}." if schema else ""
        t = f"{db}{_bq(table)}"
        events = {"i": "INSERT", "d": "DELETE", "u": "UPDATE"}
        out = []
        for name, body in self._bodies(spec, encodings).items():
            # replaced in one statement: MariaDB's DDL is not transactional, and between a
            # DROP and a CREATE an application's write would not be captured
            out += [f"CREATE OR REPLACE TRIGGER {db}{name} AFTER {events[name[-1]]} ON {t} "
                    f"FOR EACH ROW {body}"]
        return out

    def installed(self, conn: sa.Connection, spec: CaptureSpec) -> dict[str, tuple[str, str]]:
        schema, _ = self.split(spec.table)
        rows = conn.execute(sa.text(
            "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_STATEMENT FROM "
            "information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = COALESCE(:s, DATABASE()) "
            "AND TRIGGER_NAME IN (:i, :d, :u)"),
            {"s": schema, **{o: f"{spec.tag}_{o}" for o in "idu"}}).all()
        return {str(r[0]): ((f"{schema}." if schema else "") + str(r[1]), str(r[2]))
                for r in rows}

    def remove_ddl(self, spec_tag: str, table: str) -> list[str]:
        schema, _ = self.split(table)
        db = f"{_bq(schema)}." if schema else ""
        return [f"DROP TRIGGER IF EXISTS {db}{spec_tag}_{op}" for op in "iud"]


class SqliteDialect(Dialect):
    """Row triggers. SQLite is typed by value, not by column: every value is logged by what
    it holds (``typeof``): a blob as ``"\\x<hex>"``, a real with 18 significant digits
    (``json_object`` writes 15, and ``Inf`` for infinity, which is no JSON; this SQLite's
    ``printf`` is not exact at 17 digits for every double, and is at 18).

    A real read back for a decimal column is the double SQLite holds, in its shortest form:
    the 18 digits are a way to carry the double, not the decimal's digits."""

    has_txid = False

    def key_text(self, params: Sequence[str], columns: Sequence[Column]) -> str:
        return "json_array(" + ", ".join(self._value(f":{p}") for p in params) + ")"

    def log_ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {CHANGES} (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "map TEXT NOT NULL, txid INTEGER, op TEXT NOT NULL, k TEXT NOT NULL, old TEXT, "
            "new TEXT, at TEXT NOT NULL, v TEXT)",
            f"CREATE INDEX IF NOT EXISTS {CHANGES}_key ON {CHANGES} (map, k)",
            f"CREATE TABLE IF NOT EXISTS {APPLIED} (source TEXT NOT NULL, map TEXT NOT NULL, "
            "txid TEXT NOT NULL, seq INTEGER NOT NULL, at TEXT, "
            "PRIMARY KEY (source, map, txid))",
            f"CREATE TABLE IF NOT EXISTS {ORIGIN} (x INTEGER)",
        ]

    def encodings(self, conn: sa.Connection, table: str) -> dict[str, str] | None:
        rows = conn.exec_driver_sql(f"SELECT name FROM pragma_table_info({_sql_string(table)})"
                                    ).all()
        return {str(r[0]): PLAIN for r in rows} if rows else None

    @staticmethod
    def _value(ref: str) -> str:
        digits = f"printf('%!.18g', {ref})"
        real = (f"CASE WHEN abs({ref}) <= 1.7976931348623157e308 THEN json({digits}) "
                f"ELSE {digits} END")
        return (f"CASE typeof({ref}) WHEN 'blob' THEN '\\x' || lower(hex({ref})) "
                f"WHEN 'real' THEN {real} ELSE {ref} END")

    def _statements(self, spec: CaptureSpec) -> dict[str, str]:
        t, tag = _dq(spec.table), spec.tag

        def obj(row: str) -> str:
            return "json_object(" + ", ".join(
                f"{_sql_string(c)}, {self._value(row + '.' + _dq(c))}"
                for c in spec.columns) + ")"

        def key(row: str) -> str:
            return "json_array(" + ", ".join(self._value(row + "." + _dq(c))
                                             for c in spec.key) + ")"

        now = "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')"
        ins = (f"INSERT INTO {CHANGES} (map, v, op, k, old, new, at) VALUES "
               f"({_sql_string(spec.map)}, {_sql_string(spec.version)}, ")
        guard = f"NOT EXISTS (SELECT 1 FROM {ORIGIN})"
        # compared byte for byte: a column's collation (NOCASE) may call 'a' and 'A' equal
        changed = " OR ".join(f"OLD.{_dq(c)} IS NOT NEW.{_dq(c)} COLLATE BINARY"
                              for c in spec.columns)
        same_key = " AND ".join(f"OLD.{_dq(c)} IS NEW.{_dq(c)} COLLATE BINARY"
                                for c in spec.key)
        return {
            f"{tag}_i": f"CREATE TRIGGER {tag}_i AFTER INSERT ON {t} WHEN {guard} BEGIN "
                        f"{ins}'I', {key('NEW')}, NULL, {obj('NEW')}, {now}); END",
            f"{tag}_d": f"CREATE TRIGGER {tag}_d AFTER DELETE ON {t} WHEN {guard} BEGIN "
                        f"{ins}'D', {key('OLD')}, {obj('OLD')}, NULL, {now}); END",
            f"{tag}_u": f"CREATE TRIGGER {tag}_u AFTER UPDATE ON {t} WHEN {guard} AND "
                        f"({same_key}) AND ({changed}) BEGIN "
                        f"{ins}'U', {key('NEW')}, {obj('OLD')}, {obj('NEW')}, {now}); END",
            # a key change: the twin of the old key goes, a twin of the new key comes
            f"{tag}_k": f"CREATE TRIGGER {tag}_k AFTER UPDATE ON {t} WHEN {guard} AND NOT "
                        f"({same_key}) BEGIN {ins}'D', {key('OLD')}, {obj('OLD')}, NULL, "
                        f"{now}); {ins}'I', {key('NEW')}, NULL, {obj('NEW')}, {now}); END",
        }

    def definitions(self, spec: CaptureSpec, encodings: dict[str, str]) -> dict[str, str]:
        return self._statements(spec)

    def install_ddl(self, spec: CaptureSpec, encodings: dict[str, str]) -> list[str]:
        out = []
        for name, statement in self._statements(spec).items():
            out += [f"DROP TRIGGER IF EXISTS {name}", statement]
        return out

    def installed(self, conn: sa.Connection, spec: CaptureSpec) -> dict[str, tuple[str, str]]:
        rows = conn.execute(sa.text(
            "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger' AND "
            "name IN (:i, :d, :u, :k)"), {o: f"{spec.tag}_{o}" for o in "iduk"}).all()
        return {str(r[0]): (str(r[1]), str(r[2])) for r in rows}

    def remove_ddl(self, spec_tag: str, table: str) -> list[str]:
        return [f"DROP TRIGGER IF EXISTS {spec_tag}_{op}" for op in "iudk"]


def dialect_for(connector: SqlConnector) -> Dialect:
    name = connector.engine.dialect.name
    if name == "postgresql":
        return PostgresDialect()
    if name in ("mysql", "mariadb"):
        return MariaDbDialect()
    if name == "sqlite":
        return SqliteDialect()
    raise TerminalConnectorError(f"change capture is not available for {name}",
                                 environment=connector.name,
                                 hint="use PostgreSQL, MariaDB or SQLite")


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

    def locate(self) -> None:
        """Learn the log's schema: the connection's own (see the module doc), once."""
        if self.dialect.home or isinstance(self.dialect, SqliteDialect):
            return
        c = self.connector
        query = "SELECT current_schema()" if isinstance(self.dialect, PostgresDialect) else \
            "SELECT DATABASE()"
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
            if isinstance(self.dialect, PostgresDialect):
                # processes starting at once (JetStream workers) would otherwise meet in
                # CREATE OR REPLACE FUNCTION: "tuple concurrently updated"
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_DDL_LOCK})")
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
            encodings = self.dialect.encodings(conn, spec.table)
            if encodings is None:
                raise TerminalConnectorError(
                    f"cannot capture map {spec.map!r}: table {spec.table!r} does not exist",
                    environment=c.name, hint="create it, or correct the table name in the map")
            gone = [col for col in spec.needed if col not in encodings]
            if gone:
                raise TerminalConnectorError(
                    f"cannot capture map {spec.map!r}: table {spec.table!r} has no column(s) "
                    f"{', '.join(repr(g) for g in gone)}", environment=c.name,
                    hint="correct the map's field lines, or the table, and start the map again")
            for statement in self.dialect.install_ddl(spec, encodings):
                conn.exec_driver_sql(statement)
        # what an earlier version installed under the map's name alone, removed once the new
        # triggers are in (a change meanwhile is logged twice, and applied once)
        self._ddl(self.dialect.remove_ddl(spec.legacy_tag, spec.table),
                  f"remove older capture from {spec.table}")

    def check(self, spec: CaptureSpec) -> list[str]:
        """What is wrong with the installed capture of one map: the change log or the table
        missing, columns the map reads gone from the table (renamed or dropped), triggers
        missing, disabled, on another table, or out of date (the table's columns changed
        type since they were installed). Empty when capture is as :meth:`install` would
        make it; otherwise fix the table or the map, and install again."""
        self.locate()
        c = self.connector
        problems: list[str] = []
        where = f"map {spec.map!r}, table {spec.table!r}"
        with c.translating(f"check capture on {spec.table}"), c.engine.connect() as conn:
            if not sa.inspect(conn).has_table(CHANGES):
                problems.append(f"{where}: the change log ({CHANGES}) is missing")
            encodings = self.dialect.encodings(conn, spec.table)
            if encodings is None:
                return [*problems, f"{where}: the table does not exist"]
            gone = [col for col in spec.needed if col not in encodings]
            if gone:
                problems.append(f"{where}: column(s) {', '.join(repr(g) for g in gone)} gone "
                                "from the table (renamed or dropped)")
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
        reads for its column (:func:`dualwrite.model.conversion.from_log`: one decoding for
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
    OWN_OBJECT = re.compile(r"^(dw_[0-9a-f]{10}_[a-z]+|dualwrite_wake)$")
    #: per dialect: (kind, name, DROP statement) of every dualwrite trigger and function (no
    #: % in them: a driver could take it for a placeholder)
    _OWN_OBJECTS: ClassVar[dict[str, str]] = {
        "postgresql": (
            # a trigger on a table in another schema calls a function in the log's schema
            "SELECT 'trigger', t.tgname, 'DROP TRIGGER IF EXISTS ' || quote_ident(t.tgname) "
            "|| ' ON ' || quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM "
            "pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON "
            "n.oid = c.relnamespace JOIN pg_proc f ON f.oid = t.tgfoid JOIN pg_namespace fn "
            "ON fn.oid = f.pronamespace WHERE NOT t.tgisinternal AND (n.nspname = "
            "current_schema() OR fn.nspname = current_schema()) AND left(t.tgname, 3) = 'dw_' "
            "UNION ALL SELECT 'function', p.proname, 'DROP FUNCTION IF EXISTS ' || "
            "quote_ident(p.proname) || '(' || pg_get_function_identity_arguments(p.oid) || ')' "
            "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE "
            "n.nspname = current_schema() AND (left(p.proname, 3) = 'dw_' OR "
            "p.proname = 'dualwrite_wake')"),
        "mysql": (
            # a trigger in another database writes into this one's log, by its name
            "SELECT 'trigger', TRIGGER_NAME, CONCAT('DROP TRIGGER IF EXISTS `', "
            "REPLACE(TRIGGER_SCHEMA, '`', '``'), '`.`', TRIGGER_NAME, '`') FROM "
            "information_schema.TRIGGERS WHERE (TRIGGER_SCHEMA = DATABASE() OR LOCATE(CONCAT("
            "'`', REPLACE(DATABASE(), '`', '``'), '`.dualwrite_changes'), ACTION_STATEMENT) "
            "> 0) AND LEFT(TRIGGER_NAME, 3) = 'dw_'"),
        "sqlite": (
            "SELECT 'trigger', name, 'DROP TRIGGER IF EXISTS \"' || name || '\"' "
            "FROM sqlite_master WHERE type = 'trigger' AND substr(name, 1, 3) = 'dw_'"),
    }

    def uninstall(self, *, dry_run: bool = False) -> list[str]:
        """Remove every dualwrite trigger and function and every ``dualwrite_*`` table but
        the link record's (``maps stop --purge``, ``uninstall``), found in the catalog by
        name, so that those of maps no longer in the config go too. Returns what was removed
        (with ``dry_run``, what would be)."""
        c = self.connector
        dialect = c.engine.dialect.name
        with c.translating("list dualwrite's triggers and tables"), c.engine.connect() as conn:
            objects = [(str(k), str(n), str(d)) for k, n, d in
                       conn.exec_driver_sql(self._OWN_OBJECTS[dialect]).all()
                       if self.OWN_OBJECT.match(str(n))]
            tables = sorted(t for t in sa.inspect(conn).get_table_names()
                            if t.startswith("dualwrite_") and t != "dualwrite_link")
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
        with c.translating("read the change log"), c.engine.connect() as conn:
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
                        rows += self._log_rows(conn, *more)
                        more = None
            conn.rollback()
        if more is None:
            return self._changes(rows), None
        rest: Future[list[Change]] = Future()
        query = more

        def read_rest() -> None:
            try:
                with c.translating("read the change log"), c.engine.connect() as cx:
                    got = self._log_rows(cx, *query)
                    cx.rollback()
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
                self.connector.engine.connect() as conn:
            rows = self._rows(conn, f"SELECT seq, txid FROM {CHANGES} WHERE map IN ({marks}) "
                              f"AND seq > :after ORDER BY seq LIMIT {int(limit)}",
                              {**params, "after": after})
            conn.rollback()
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
        """The rows of one query (named ``:parameters``). On PostgreSQL through the driver
        itself: a large read spends a good part of its time in SQLAlchemy's row handling."""
        if isinstance(self.dialect, PostgresDialect):
            raw: Any = conn.connection.driver_connection
            with raw.cursor() as cur:
                cur.execute(_NAMED.sub(r"%(\1)s", text), params)
                return list(cur.fetchall())
        return list(conn.execute(sa.text(text), params).all())

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
        # JSON as text, decoded here with exact decimals (a driver would give floats)
        if self.connector.engine.dialect.name == "postgresql":
            return "seq, map, txid, op, k, old::text, new::text, at, v"
        return "seq, map, txid, op, k, old, new, at, v"

    def pending(self, conn: sa.Connection, map_name: str, keys: Sequence[tuple[Any, ...]],
                columns: Sequence[Column]) -> list[Change]:
        """Committed changes of ``map_name`` still queued in this log for the given keys
        (values of the key ``columns`` of this side's table), oldest first, inside the
        caller's transaction. The database formats the asked keys itself, exactly as its
        triggers did."""
        if not keys:
            return []
        width = len(columns)
        rows: list[Any] = []
        if isinstance(self.dialect, PostgresDialect):
            # all keys in one statement: one array parameter per key column
            arrays = {f"a{n}": [k[n] for k in keys] for n in range(width)}
            unnest = ", ".join(f"CAST(:a{n} AS {without_collation(c.sql_type)}[])"
                               for n, c in enumerate(columns))
            cols = ", ".join(f"u.v{n}" for n in range(width))
            names = ", ".join(f"v{n}" for n in range(width))
            rows = list(conn.execute(sa.text(
                f"SELECT {self._columns()} FROM {CHANGES} WHERE map = :m AND k = ANY(ARRAY("
                f"SELECT json_build_array({cols})::text FROM unnest({unnest}) AS u({names})))"
                " ORDER BY seq"), {"m": map_name, **arrays}).all())
        else:
            for i in range(0, len(keys), 200):
                chunk = list(keys[i:i + 200])
                params: dict[str, Any] = {"m": map_name}
                exprs = []
                for j, k in enumerate(chunk):
                    names_j = [f"k{j}_{n}" for n in range(width)]
                    params.update(zip(names_j, k, strict=True))
                    exprs.append(self.dialect.key_text(names_j, columns))
                rows += conn.execute(sa.text(
                    f"SELECT {self._columns()} FROM {CHANGES} WHERE map = :m "
                    f"AND k IN ({', '.join(exprs)}) ORDER BY seq"), params).all()
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

    def queued(self, conn: sa.Connection, maps: Sequence[str]) -> set[str]:
        """Which of ``maps`` this log holds changes of, as ``conn``'s transaction sees it
        now: :meth:`queues` for many maps in one round trip."""
        if len(maps) == 1:
            return set(maps) if self.queues(conn, maps[0]) else set()
        self.ensure()
        params = {f"m{i}": m for i, m in enumerate(maps)}
        union = " UNION ALL ".join(
            f"SELECT map FROM (SELECT map FROM {CHANGES} WHERE map = :m{i} LIMIT 1) q{i}"
            for i in range(len(maps)))
        return {str(r[0]) for r in conn.execute(sa.text(union), params)}

    def queues(self, conn: sa.Connection, map_name: str) -> bool:
        """Whether this log holds any committed change of ``map_name``, inside the caller's
        transaction (one index probe)."""
        return conn.execute(sa.text(f"SELECT 1 FROM {CHANGES} WHERE map = :m LIMIT 1"),
                            {"m": map_name}).first() is not None

    def stats(self) -> dict[str, tuple[int, int, dt.datetime | None]]:
        """Per map: queued changes, their size in bytes, and the time of the oldest."""
        if not self._exists():
            return {}
        c = self.connector
        length = "length" if c.engine.dialect.name != "postgresql" else "octet_length"
        with c.translating("measure the change log"), c.engine.connect() as conn:
            rows = conn.execute(sa.text(
                f"SELECT map, COUNT(*), SUM({length}(k) + COALESCE({length}(CAST(old AS "
                f"{self._text()})), 0) + COALESCE({length}(CAST(new AS {self._text()})), 0)), "
                f"MIN(at) FROM {CHANGES} GROUP BY map")).all()
        return {str(r[0]): (int(r[1]), int(r[2] or 0), parse_time(r[3]) if r[3] else None)
                for r in rows}

    def _text(self) -> str:
        return "CHAR" if self.connector.engine.dialect.name in ("mysql", "mariadb") else "TEXT"

    # -- fencing -------------------------------------------------------------------------------
    def fence(self, conn: sa.Connection, link: str, epoch: int) -> None:
        """Raise the link's fence in this database to ``epoch`` inside the transaction of
        ``conn``, or raise :class:`LeaseLost` when it holds a later epoch already (a newer
        applier took the lease over): that transaction must then roll back. The fence is a
        row of the applied-positions table (source ``#fence``, map = the link's name); its
        row lock orders an old and a new applier's transactions, and the later epoch wins."""
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

    def finish_apply(self, conn: sa.Connection, source: str,
                     positions: Sequence[tuple[str, str, int]],
                     prune: Sequence[tuple[str, str]], fence: tuple[str, int] | None) -> None:
        """The bookkeeping that closes an apply transaction, inside it, last before its
        commit: raise the fence (``(link, epoch)``, if given: :meth:`fence`), record
        ``positions`` (:meth:`mark_applied`) and drop ``prune`` (:meth:`unmark`). On
        PostgreSQL one statement, one round trip, where the fence is there already (the
        common case): a single-row transaction would otherwise pay three."""
        self.ensure()
        if isinstance(self.dialect, PostgresDialect) and \
                all(t != WATERMARK for _m, t, _s in positions):
            if not self._finish_pg(conn, source, positions, prune, fence) and \
                    fence is not None:
                self.fence(conn, *fence)  # the first fence here, or a newer applier's
            return
        if fence is not None:
            self.fence(conn, *fence)
        self.mark_applied(conn, source, positions)
        if prune:
            self.unmark(conn, source, prune)

    def _finish_pg(self, conn: sa.Connection, source: str,
                   positions: Sequence[tuple[str, str, int]],
                   prune: Sequence[tuple[str, str]], fence: tuple[str, int] | None) -> bool:
        """:meth:`finish_apply` as one statement of data-modifying CTEs (each runs once, to
        completion, whether or not the query reads it): whether the fence was raised."""
        parts = []
        params: dict[str, Any] = {"s": source}
        if fence is not None:
            parts.append(f"f AS (UPDATE {APPLIED} SET seq = %(e)s WHERE source = %(fs)s AND "
                         "map = %(link)s AND txid = '' AND seq <= %(e)s RETURNING 1)")
            params.update(fs=FENCE_SOURCE, link=fence[0], e=fence[1])
        if positions:
            parts.append(f"i AS (INSERT INTO {APPLIED} (source, map, txid, seq) SELECT %(s)s, "
                         "u.m, u.t, u.q FROM unnest(%(im)s::text[], %(it)s::text[], "
                         "%(iq)s::bigint[]) AS u(m, t, q))")
            params.update(im=[m for m, _t, _q in positions], it=[t for _m, t, _q in positions],
                          iq=[q for _m, _t, q in positions])
        if prune:
            parts.append(f"d AS (DELETE FROM {APPLIED} WHERE source = %(s)s AND (map, txid) IN "
                         "(SELECT * FROM unnest(%(dm)s::text[], %(dt)s::text[])))")
            params.update(dm=[m for m, _t in prune], dt=[t for _m, t in prune])
        if not parts:
            return True
        text = "WITH " + ", ".join(parts) + " SELECT " + \
            ("(SELECT count(*) FROM f)" if fence is not None else "1")
        raw: Any = conn.connection.driver_connection
        with raw.cursor() as cur:
            cur.execute(text, params)
            row = cur.fetchone()
        return row is not None and int(row[0]) == 1

    def fence_epoch(self, conn: sa.Connection, link: str) -> int:
        """The epoch the link's fence holds in this database (0: none yet)."""
        self.ensure()
        held = conn.execute(sa.text(
            f"SELECT seq FROM {APPLIED} WHERE source = :s AND map = :m AND txid = ''"),
            {"s": FENCE_SOURCE, "m": link}).scalar()
        return int(held or 0)

    # -- forgetting ----------------------------------------------------------------------------
    def forget(self, seqs: Sequence[int], conn: sa.Connection | None = None, *,
               fence: tuple[str, int] | None = None) -> None:
        """Delete applied (or superseded, or parked) changes from the log (behind the
        fence ``(link, epoch)``, if given: see :meth:`fence`)."""
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

        def run(cx: sa.Connection) -> None:
            if fence is not None and isinstance(self.dialect, PostgresDialect) and \
                    ordered[-1] - ordered[0] + 1 == len(ordered) <= 1000:
                # the fence and a contiguous run in one round trip (the common case)
                if cx.execute(sa.text(
                        f"WITH f AS (UPDATE {APPLIED} SET seq = :e WHERE source = :fs AND "
                        "map = :link AND txid = '' AND seq <= :e RETURNING 1), "
                        f"d AS (DELETE FROM {CHANGES} WHERE seq BETWEEN :a AND :b) "
                        "SELECT count(*) FROM f"),
                        {"e": fence[1], "fs": FENCE_SOURCE, "link": fence[0],
                         "a": ordered[0], "b": ordered[-1]}).scalar() != 1:
                    self.fence(cx, *fence)  # the first fence here, or a newer applier's
                return
            if fence is not None:
                self.fence(cx, *fence)
            for i in range(0, len(ordered), 1000):
                chunk = ordered[i:i + 1000]
                lo, hi = chunk[0], chunk[-1]
                if hi - lo + 1 == len(chunk):  # a contiguous run: a range is cheaper
                    cx.execute(sa.text(f"DELETE FROM {CHANGES} WHERE seq BETWEEN :a AND :b"),
                               {"a": lo, "b": hi})
                else:
                    cx.exec_driver_sql(f"DELETE FROM {CHANGES} WHERE seq IN "
                                       f"({', '.join(str(int(s)) for s in chunk)})")

        if conn is not None:
            run(conn)
            return
        with c.translating("forget applied changes"), c.engine.begin() as cx:
            run(cx)

    # -- applied positions (inside the apply transaction) -------------------------------------
    def applied(self, conn: sa.Connection, source: str, pairs: Sequence[tuple[str, str]]
                ) -> tuple[set[tuple[str, str]], dict[str, int]]:
        """Which (map, txid) of ``source`` were applied here already, and the high-water mark
        per map for sources without transaction ids."""
        self.ensure()
        done: set[tuple[str, str]] = set()
        marks: dict[str, int] = {}
        txids = sorted({t for _m, t in pairs if t != WATERMARK})
        for i in range(0, len(txids), 500):
            chunk = txids[i:i + 500]
            params: dict[str, Any] = {"s": source, **{f"t{j}": t for j, t in enumerate(chunk)}}
            rows = conn.execute(sa.text(
                f"SELECT map, txid FROM {APPLIED} WHERE source = :s AND txid IN "
                f"({', '.join(f':t{j}' for j in range(len(chunk)))})"), params).all()
            done |= {(str(r[0]), str(r[1])) for r in rows}
        if any(t == WATERMARK for _m, t in pairs):
            rows = conn.execute(sa.text(
                f"SELECT map, seq FROM {APPLIED} WHERE source = :s AND txid = ''"),
                {"s": source}).all()
            marks = {str(r[0]): int(r[1]) for r in rows}
        return done, marks

    def mark_applied(self, conn: sa.Connection, source: str,
                     positions: Sequence[tuple[str, str, int]]) -> None:
        """Record applied (map, txid, max seq) of ``source``; for sources without
        transaction ids, move the map's high-water mark."""
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

    def unmark(self, conn: sa.Connection, source: str, pairs: Sequence[tuple[str, str]]
               ) -> None:
        """Drop applied positions whose changes are gone from the source log (they can
        never be delivered again)."""
        plain = [(m, t) for m, t in pairs if t != WATERMARK]
        if plain:
            conn.execute(sa.text(f"DELETE FROM {APPLIED} WHERE source = :s AND map = :m AND "
                                 "txid = :t"), [{"s": source, "m": m, "t": t} for m, t in plain])

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
                self.fence(conn, *fence)
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
        """Whether deleting changes leaves something behind to purge (MariaDB's history)."""
        return isinstance(self.dialect, MariaDbDialect)

    def purge(self) -> None:
        """Drop what deleting applied changes left behind (MariaDB's history rows). Read
        committed: the scan then locks only the history rows it deletes, not every row and
        gap it passes, so applications' captured writes (new log rows) do not wait for it."""
        # nothing deleted since the last purge: nothing to purge (a quiet link costs nothing)
        if not self.needs_purge or not self._forgotten or not self._exists():
            return
        self._forgotten = False
        c = self.connector
        with c.translating("purge the change log's history"), \
                c.engine.connect().execution_options(isolation_level="READ COMMITTED") as conn, \
                conn.begin():
            conn.exec_driver_sql(f"DELETE HISTORY FROM {CHANGES}")
