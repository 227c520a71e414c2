"""Change capture inside an environment's own database: triggers into a change log.

Each environment that has a running map carries three tables of dualwrite's own:

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

**No echo.** dualwrite marks its own connections so that the triggers ignore what it writes:
a session setting on PostgreSQL (``dualwrite.origin``, given as a connection option) and a
session variable on MariaDB (``@dualwrite_origin``, set by the connection's init command).
SQLite has neither, so dualwrite inserts a row into ``dualwrite_origin`` at the start of each
of its write transactions and deletes it before commit: the row never commits, and since
SQLite admits one writer at a time, only dualwrite's own transaction ever sees it.

**Transaction ids.** PostgreSQL: ``pg_current_xact_id()`` (64-bit, never reused). MariaDB: the
InnoDB transaction id of the writing transaction. SQLite exposes none; as it serialises
writers, ``seq`` order is commit order there and the applied position is a high-water mark.

Trigger and function names are derived from the map name (``dw_<hash>_<op>``), so that a map
with any name can be installed and removed, and two maps on one table each have their own.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa

from dualwrite.errors import TerminalConnectorError

if TYPE_CHECKING:
    from dualwrite.connectors.sql import SqlConnector

CHANGES = "dualwrite_changes"
APPLIED = "dualwrite_applied"
ORIGIN = "dualwrite_origin"
NOTIFY_CHANNEL = "dualwrite_changes"
#: the applied-position row of a source without transaction ids (SQLite): a high-water mark
WATERMARK = ""


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture for one map on one side: the table, its key, and every column the
    map reads (key, mapped fields, filter columns)."""

    map: str
    table: str
    key: tuple[str, ...]
    columns: tuple[str, ...]

    @property
    def tag(self) -> str:
        """A short, stable, identifier-safe name for this map's triggers."""
        return "dw_" + hashlib.sha1(self.map.encode()).hexdigest()[:10]


_UNDECODED: Any = object()
#: a named parameter (``:name``) of the statements here, not a cast (``::type``)
_NAMED = re.compile(r"(?<!:):([a-z]\w*)")


class Change:
    """One captured row change. ``old``/``new`` hold the map's columns (None for the side
    of an insert or delete that has no row); values are as JSON gave them (see
    :func:`decode_json`), to be coerced to the column kinds by the engine.

    A change read from a log keeps ``old_json``/``new_json``, the JSON text the trigger
    wrote, and decodes it only when ``old``/``new`` is asked for: the applier's set-based
    paths hand the text to the target database and never decode it in Python."""

    __slots__ = ("_key", "_new", "_old", "at", "key_text", "map", "new_json", "old_json", "op",
                 "seq", "txid")

    def __init__(self, seq: int, map: str, txid: str, op: str, key_text: str,
                 old: dict[str, Any] | None = None, new: dict[str, Any] | None = None,
                 at: dt.datetime | None = None, *, old_json: str | None = None,
                 new_json: str | None = None, key: tuple[Any, ...] | None = None) -> None:
        self.seq = seq
        self.map = map
        self.txid = txid
        self.op = op  # "I", "U" or "D"
        self.key_text = key_text  # the key as the log stores it (a JSON array); see ``key``
        self._key = key  # decoded, when the reader decoded it already
        self.at = at if at is not None else dt.datetime.now(dt.UTC)
        self.old_json, self.new_json = old_json, new_json
        self._old = old if old is not None or old_json is None else _UNDECODED
        self._new = new if new is not None or new_json is None else _UNDECODED

    @property
    def old(self) -> dict[str, Any] | None:
        if self._old is _UNDECODED:
            self._old = decode_json(self.old_json)
        return self._old

    @property
    def new(self) -> dict[str, Any] | None:
        if self._new is _UNDECODED:
            self._new = decode_json(self.new_json)
        return self._new

    @property
    def has_old(self) -> bool:
        """Whether there is an old version (an update or a delete), without decoding it."""
        return self.old_json is not None if self._old is _UNDECODED else self._old is not None

    @property
    def has_new(self) -> bool:
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
        return cls(seq=int(d["seq"]), map=str(d["map"]), txid=str(d["txid"]), op=str(d["op"]),
                   key_text=json.dumps(list(d["key"]), default=str), old=d.get("old"),
                   new=d.get("new"), at=parse_time(d["at"]))

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "map": self.map, "txid": self.txid, "op": self.op,
                "key": list(self.key), "old": self.old, "new": self.new,
                "at": self.at.isoformat()}

    def __repr__(self) -> str:
        return (f"Change(seq={self.seq}, map={self.map!r}, txid={self.txid!r}, op={self.op!r}, "
                f"key={self.key_text})")


#: one decoder for every log row: json.loads(parse_float=...) would build one per call
_DECODER = json.JSONDecoder(parse_float=Decimal)


def decode_json(text: Any) -> Any:
    """JSON from a log column: numbers as Decimal (exact), the rest as JSON has them."""
    if text is None:
        return None
    if isinstance(text, dict | list):  # psycopg decodes json columns itself
        return text
    return _DECODER.decode(text)


def parse_time(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    t = dt.datetime.fromisoformat(str(value))
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


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


class Dialect(ABC):
    """The SQL of change capture for one database."""

    #: whether the log records a real source transaction id
    has_txid = True

    def __init__(self, quote: Any) -> None:
        self.q = quote

    @abstractmethod
    def log_ddl(self) -> list[str]:
        """Create the log and applied-position tables (idempotent)."""

    @abstractmethod
    def install_ddl(self, spec: CaptureSpec) -> list[str]:
        """Create (or replace) the triggers of one map on one table."""

    @abstractmethod
    def remove_ddl(self, spec_tag: str, table: str) -> list[str]:
        """Drop the triggers of one map (idempotent)."""

    def _object(self, func: str, alias: str, columns: Sequence[str]) -> str:
        """``func('c1', alias.c1, ...)``: a JSON object of a row's columns (MariaDB, SQLite)."""
        return f"{func}(" + ", ".join(f"'{c}', {alias}.{self.q(c)}" for c in columns) + ")"

    def _array(self, func: str, alias: str, columns: Sequence[str]) -> str:
        """``func(alias.c1, ...)``: a JSON array of a row's columns (MariaDB, SQLite)."""
        return f"{func}(" + ", ".join(f"{alias}.{self.q(c)}" for c in columns) + ")"

    @abstractmethod
    def key_text(self, params: Sequence[str], sql_types: Sequence[str]) -> str:
        """An SQL expression giving the log's key text for bound parameters, formatted by
        the database exactly as the triggers format it."""


class PostgresDialect(Dialect):
    def key_text(self, params: Sequence[str], sql_types: Sequence[str]) -> str:
        # json_build_array takes "any": the parameters need their column's type
        return ("json_build_array(" + ", ".join(
            f"CAST(:{p} AS {t})" for p, t in zip(params, sql_types, strict=True)) + ")::text")

    def log_ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {CHANGES} (seq bigserial PRIMARY KEY, "
            "map text NOT NULL, txid bigint NOT NULL, op char(1) NOT NULL, k text NOT NULL, "
            "old json, new json, at timestamptz NOT NULL DEFAULT clock_timestamp())",
            f"CREATE INDEX IF NOT EXISTS {CHANGES}_key ON {CHANGES} (map, k)",
            f"CREATE TABLE IF NOT EXISTS {APPLIED} (source text NOT NULL, map text NOT NULL, "
            "txid text NOT NULL, seq bigint NOT NULL, at timestamptz NOT NULL DEFAULT now(), "
            "PRIMARY KEY (source, map, txid))",
        ]

    def install_ddl(self, spec: CaptureSpec) -> list[str]:
        q, t, tag = self.q, self.q(spec.table), spec.tag
        mapname = spec.map.replace("'", "''")

        def obj(alias: str) -> str:
            cols = ", ".join(f"{alias}.{q(c)}" for c in spec.columns)
            return f"(SELECT row_to_json(v) FROM (SELECT {cols}) v)"

        def key(alias: str) -> str:
            return f"json_build_array({', '.join(f'{alias}.{q(c)}' for c in spec.key)})::text"

        head = ("IF current_setting('dualwrite.origin', true) = 'on' THEN RETURN NULL; "
                "END IF; ")
        # NOTIFY wakes the applier at once. A transaction that has notified cannot PREPARE:
        # dualwrite's own queued writes (two-phase branches) say 'queue' and skip it.
        tail = (" IF FOUND AND current_setting('dualwrite.origin', true) IS DISTINCT FROM "
                f"'queue' THEN PERFORM pg_notify('{NOTIFY_CHANNEL}', ''); END IF; "
                "RETURN NULL;")
        ins = f"INSERT INTO {CHANGES} (map, txid, op, k, old, new) "
        txid = "pg_current_xact_id()::text::bigint"
        join = " AND ".join(f"o.{q(c)} = n.{q(c)}" for c in spec.key)
        o_txt = ", ".join(f"o.{q(c)}::text" for c in spec.columns)
        n_txt = ", ".join(f"n.{q(c)}::text" for c in spec.columns)
        bodies = {
            "i": (f"{ins}SELECT '{mapname}', {txid}, 'I', {key('n')}, NULL, {obj('n')} "
                  "FROM dw_new n;", "INSERT", "REFERENCING NEW TABLE AS dw_new"),
            "d": (f"{ins}SELECT '{mapname}', {txid}, 'D', {key('o')}, {obj('o')}, NULL "
                  "FROM dw_old o;", "DELETE", "REFERENCING OLD TABLE AS dw_old"),
            # An update joins old and new rows on the key: a row whose key changed shows as
            # a delete of the old key and an insert of the new one.
            "u": (f"{ins}SELECT '{mapname}', {txid}, "
                  "CASE WHEN o IS NULL THEN 'I' WHEN n IS NULL THEN 'D' ELSE 'U' END, "
                  f"CASE WHEN n IS NULL THEN {key('o')} ELSE {key('n')} END, "
                  f"CASE WHEN o IS NULL THEN NULL ELSE {obj('o')} END, "
                  f"CASE WHEN n IS NULL THEN NULL ELSE {obj('n')} END "
                  f"FROM dw_old o FULL JOIN dw_new n ON {join} "
                  f"WHERE o IS NULL OR n IS NULL OR ROW({o_txt}) IS DISTINCT FROM ROW({n_txt});",
                  "UPDATE", "REFERENCING OLD TABLE AS dw_old NEW TABLE AS dw_new"),
        }
        out = []
        for op, (body, event, refs) in bodies.items():
            name = f"{tag}_{op}"
            out += [
                f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
                f"$dw$ BEGIN {head}{body}{tail} END $dw$",
                f"DROP TRIGGER IF EXISTS {name} ON {t}",
                f"CREATE TRIGGER {name} AFTER {event} ON {t} {refs} FOR EACH STATEMENT "
                f"EXECUTE FUNCTION {name}()",
            ]
        return out

    def remove_ddl(self, spec_tag: str, table: str) -> list[str]:
        out = []
        for op in "iud":
            out += [f"DROP TRIGGER IF EXISTS {spec_tag}_{op} ON {self.q(table)}",
                    f"DROP FUNCTION IF EXISTS {spec_tag}_{op}()"]
        return out


class MariaDbDialect(Dialect):
    """MariaDB exposes the id of the writing transaction only through system versioning:
    the log is a table versioned by transaction id, so the row-start column of each change
    *is* its source transaction id. (information_schema.INNODB_TRX would be simpler, but it
    is a cache refreshed at most every 0.1 s: a new transaction is often missing from it.)
    Deleting applied changes leaves history rows; the applier purges them with DELETE
    HISTORY (every second). Each capturing transaction adds a row to
    mysql.transaction_registry, which MariaDB never purges by itself (see docs/capture.md)."""

    def key_text(self, params: Sequence[str], sql_types: Sequence[str]) -> str:
        return "JSON_ARRAY(" + ", ".join(f":{p}" for p in params) + ")"

    def log_ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {CHANGES} (seq BIGINT AUTO_INCREMENT PRIMARY KEY, "
            "map VARCHAR(190) NOT NULL, op CHAR(1) NOT NULL, "
            "k VARCHAR(700) NOT NULL, old LONGTEXT, new LONGTEXT, at DATETIME(6) NOT NULL, "
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

    def install_ddl(self, spec: CaptureSpec) -> list[str]:
        q, t, tag = self.q, self.q(spec.table), spec.tag
        mapname = spec.map.replace("'", "''")

        def obj(alias: str) -> str:
            return self._object("JSON_OBJECT", alias, spec.columns)

        def key(alias: str) -> str:
            return self._array("JSON_ARRAY", alias, spec.key)

        ins = f"INSERT INTO {CHANGES} (map, op, k, old, new, at) VALUES ('{mapname}', "
        now = "UTC_TIMESTAMP(6)"
        unchanged = " AND ".join(f"OLD.{q(c)} <=> NEW.{q(c)}" for c in spec.columns)
        same_key = " AND ".join(f"OLD.{q(c)} <=> NEW.{q(c)}" for c in spec.key)
        guard = "@dualwrite_origin IS NULL"
        return [
            f"DROP TRIGGER IF EXISTS {tag}_i",
            f"CREATE TRIGGER {tag}_i AFTER INSERT ON {t} FOR EACH ROW BEGIN IF {guard} THEN "
            f"{ins}'I', {key('NEW')}, NULL, {obj('NEW')}, {now}); END IF; END",
            f"DROP TRIGGER IF EXISTS {tag}_d",
            f"CREATE TRIGGER {tag}_d AFTER DELETE ON {t} FOR EACH ROW BEGIN IF {guard} THEN "
            f"{ins}'D', {key('OLD')}, {obj('OLD')}, NULL, {now}); END IF; END",
            f"DROP TRIGGER IF EXISTS {tag}_u",
            f"CREATE TRIGGER {tag}_u AFTER UPDATE ON {t} FOR EACH ROW BEGIN "
            f"IF {guard} AND NOT ({unchanged}) THEN "
            f"IF {same_key} THEN "
            f"{ins}'U', {key('NEW')}, {obj('OLD')}, {obj('NEW')}, {now}); "
            f"ELSE "
            f"{ins}'D', {key('OLD')}, {obj('OLD')}, NULL, {now}); "
            f"{ins}'I', {key('NEW')}, NULL, {obj('NEW')}, {now}); "
            f"END IF; END IF; END",
        ]

    def remove_ddl(self, spec_tag: str, table: str) -> list[str]:
        return [f"DROP TRIGGER IF EXISTS {spec_tag}_{op}" for op in "iud"]


class SqliteDialect(Dialect):
    has_txid = False

    def key_text(self, params: Sequence[str], sql_types: Sequence[str]) -> str:
        return "json_array(" + ", ".join(f":{p}" for p in params) + ")"

    def log_ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {CHANGES} (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "map TEXT NOT NULL, txid INTEGER, op TEXT NOT NULL, k TEXT NOT NULL, old TEXT, "
            "new TEXT, at TEXT NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {CHANGES}_key ON {CHANGES} (map, k)",
            f"CREATE TABLE IF NOT EXISTS {APPLIED} (source TEXT NOT NULL, map TEXT NOT NULL, "
            "txid TEXT NOT NULL, seq INTEGER NOT NULL, at TEXT, "
            "PRIMARY KEY (source, map, txid))",
            f"CREATE TABLE IF NOT EXISTS {ORIGIN} (x INTEGER)",
        ]

    def install_ddl(self, spec: CaptureSpec) -> list[str]:
        q, t, tag = self.q, self.q(spec.table), spec.tag
        mapname = spec.map.replace("'", "''")

        def obj(alias: str) -> str:
            return self._object("json_object", alias, spec.columns)

        def key(alias: str) -> str:
            return self._array("json_array", alias, spec.key)

        now = "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')"
        ins = f"INSERT INTO {CHANGES} (map, op, k, old, new, at) VALUES ('{mapname}', "
        guard = f"NOT EXISTS (SELECT 1 FROM {ORIGIN})"
        changed = " OR ".join(f"OLD.{q(c)} IS NOT NEW.{q(c)}" for c in spec.columns)
        same_key = " AND ".join(f"OLD.{q(c)} IS NEW.{q(c)}" for c in spec.key)
        return [
            f"DROP TRIGGER IF EXISTS {tag}_i",
            f"CREATE TRIGGER {tag}_i AFTER INSERT ON {t} WHEN {guard} BEGIN "
            f"{ins}'I', {key('NEW')}, NULL, {obj('NEW')}, {now}); END",
            f"DROP TRIGGER IF EXISTS {tag}_d",
            f"CREATE TRIGGER {tag}_d AFTER DELETE ON {t} WHEN {guard} BEGIN "
            f"{ins}'D', {key('OLD')}, {obj('OLD')}, NULL, {now}); END",
            f"DROP TRIGGER IF EXISTS {tag}_u",
            f"CREATE TRIGGER {tag}_u AFTER UPDATE ON {t} WHEN {guard} AND ({same_key}) "
            f"AND ({changed}) BEGIN "
            f"{ins}'U', {key('NEW')}, {obj('OLD')}, {obj('NEW')}, {now}); END",
            f"DROP TRIGGER IF EXISTS {tag}_k",
            # a key change: the twin of the old key goes, a twin of the new key comes
            f"CREATE TRIGGER {tag}_k AFTER UPDATE ON {t} WHEN {guard} AND NOT ({same_key}) "
            f"BEGIN {ins}'D', {key('OLD')}, {obj('OLD')}, NULL, {now}); "
            f"{ins}'I', {key('NEW')}, NULL, {obj('NEW')}, {now}); END",
        ]

    def remove_ddl(self, spec_tag: str, table: str) -> list[str]:
        return [f"DROP TRIGGER IF EXISTS {spec_tag}_{op}" for op in "iudk"]


def dialect_for(connector: SqlConnector) -> Dialect:
    quote = connector.engine.dialect.identifier_preparer.quote
    name = connector.engine.dialect.name
    if name == "postgresql":
        return PostgresDialect(quote)
    if name in ("mysql", "mariadb"):
        return MariaDbDialect(quote)
    if name == "sqlite":
        return SqliteDialect(quote)
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

    @property
    def has_txid(self) -> bool:
        return self.dialect.has_txid

    def _ddl(self, statements: Iterable[str], doing: str) -> None:
        c = self.connector
        with c.translating(doing), c.engine.begin() as conn:
            for s in statements:
                conn.exec_driver_sql(s)

    def ensure(self) -> None:
        """Create the log tables if they are missing (idempotent)."""
        if not self._ready:
            self._ddl(self.dialect.log_ddl(), "create the change log")
            self._ready = True

    def install(self, spec: CaptureSpec) -> None:
        """Install (or refresh) the capture triggers of one map. Idempotent."""
        self.ensure()
        self._ddl(self.dialect.install_ddl(spec), f"install capture on {spec.table}")

    def remove(self, spec: CaptureSpec) -> None:
        """Remove the capture triggers of one map and forget its queued changes."""
        self._ddl(self.dialect.remove_ddl(spec.tag, spec.table),
                  f"remove capture from {spec.table}")
        if self._exists():
            self._ddl([f"DELETE FROM {CHANGES} WHERE map = '{spec.map.replace(chr(39), '')}'"],
                      "forget queued changes")

    #: what dualwrite's trigger and function names look like (see CaptureSpec.tag)
    OWN_OBJECT = re.compile(r"^dw_[0-9a-f]{10}_[a-z]+$")
    #: per dialect: (kind, name, DROP statement) of every dualwrite trigger and function (no
    #: % in them: a driver could take it for a placeholder)
    _OWN_OBJECTS: ClassVar[dict[str, str]] = {
        "postgresql": (
            "SELECT 'trigger', t.tgname, 'DROP TRIGGER IF EXISTS ' || quote_ident(t.tgname) "
            "|| ' ON ' || quote_ident(c.relname) FROM pg_trigger t JOIN pg_class c ON "
            "c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT "
            "t.tgisinternal AND n.nspname = current_schema() AND left(t.tgname, 3) = 'dw_' "
            "UNION ALL SELECT 'function', p.proname, 'DROP FUNCTION IF EXISTS ' || "
            "quote_ident(p.proname) || '(' || pg_get_function_identity_arguments(p.oid) || ')' "
            "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE "
            "n.nspname = current_schema() AND left(p.proname, 3) = 'dw_'"),
        "mysql": (
            "SELECT 'trigger', TRIGGER_NAME, CONCAT('DROP TRIGGER IF EXISTS `', TRIGGER_NAME, "
            "'`') FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() AND "
            "LEFT(TRIGGER_NAME, 3) = 'dw_'"),
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
            # triggers before their functions (PostgreSQL), tables last
            self._ddl([d for k, _, d in objects if k == "trigger"] +
                      [d for k, _, d in objects if k == "function"] +
                      [f"DROP TABLE IF EXISTS {q(t)}" for t in tables],
                      "remove dualwrite's triggers and tables")
            self._ready = False
        return found

    def _exists(self) -> bool:
        with self.connector.translating("look for the change log"), \
                self.connector.engine.connect() as conn:
            return sa.inspect(conn).has_table(CHANGES)

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
            seq, name, txid, op, key_text, old, new, at = r
            c.seq = seq if type(seq) is int else int(seq)
            c.map = name if type(name) is str else str(name)
            c.txid = WATERMARK if txid is None else str(txid)
            c.op = op if len(op) == 1 else str(op).strip()
            c.key_text = key_text if type(key_text) is str else str(key_text)
            c._key = tuple(k)
            c.at = at if type(at) is dt.datetime and at.tzinfo is not None else parse_time(at)
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
            return "seq, map, txid, op, k, old::text, new::text, at"
        return "seq, map, txid, op, k, old, new, at"

    def pending(self, conn: sa.Connection, map_name: str, keys: Sequence[tuple[Any, ...]],
                sql_types: Sequence[str]) -> list[Change]:
        """Committed changes of ``map_name`` still queued in this log for the given keys
        (values in this side's types; ``sql_types`` are the key columns' SQL types), oldest
        first, inside the caller's transaction. The database formats the asked keys itself,
        exactly as its triggers did."""
        if not keys:
            return []
        width = len(sql_types)
        rows: list[Any] = []
        if isinstance(self.dialect, PostgresDialect):
            # all keys in one statement: one array parameter per key column
            arrays = {f"a{n}": [k[n] for k in keys] for n in range(width)}
            unnest = ", ".join(f"CAST(:a{n} AS {t}[])" for n, t in enumerate(sql_types))
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
                    exprs.append(self.dialect.key_text(names_j, sql_types))
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

    # -- forgetting ----------------------------------------------------------------------------
    def forget(self, seqs: Sequence[int], conn: sa.Connection | None = None) -> None:
        """Delete applied (or superseded, or parked) changes from the log."""
        if not seqs:
            return
        c = self.connector
        ordered = sorted(seqs)

        def run(cx: sa.Connection) -> None:
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
        if not self.needs_purge or not self._exists():
            return
        c = self.connector
        with c.translating("purge the change log's history"), \
                c.engine.connect().execution_options(isolation_level="READ COMMITTED") as conn, \
                conn.begin():
            conn.exec_driver_sql(f"DELETE HISTORY FROM {CHANGES}")
