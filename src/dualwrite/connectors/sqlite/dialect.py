"""SQLite's change capture: row triggers into the change log, and the delta journal's triggers
(the ``journal_*`` hooks of :class:`SqliteDialect`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from dualwrite.connectors.capture import (
    APPLIED,
    CHANGES,
    ORIGIN,
    PLAIN,
    CaptureSpec,
    Dialect,
    _dq,
    _sql_string,
)
from dualwrite.model.schema import Column


class SqliteDialect(Dialect):
    """Row triggers. SQLite is typed by value, not by column: every value is logged by what
    it holds (``typeof``): a blob as ``"\\x<hex>"``, a real with 18 significant digits
    (``json_object`` writes 15, and ``Inf`` for infinity, which is no JSON; this SQLite's
    ``printf`` is not exact at 17 digits for every double, and is at 18).

    A real read back for a decimal column is the double SQLite holds, in its shortest form:
    the 18 digits are a way to carry the double, not the decimal's digits."""

    name = "sqlite"

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

    # -- the shared log's hooks -----------------------------------------------------------------
    own_objects = (
        "SELECT 'trigger', name, 'DROP TRIGGER IF EXISTS \"' || name || '\"' "
        "FROM sqlite_master WHERE type = 'trigger' AND substr(name, 1, 3) = 'dw_'")

    # -- the delta journal ------------------------------------------------------------------
    def journal_ddl(self, journal: str, state: str, tracked: str) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {journal} (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "tbl TEXT NOT NULL, k TEXT NOT NULL, batch INTEGER, at TEXT)",
            f"CREATE INDEX IF NOT EXISTS {journal}_pos ON {journal} (tbl, batch, id)",
            f"CREATE INDEX IF NOT EXISTS {journal}_new ON {journal} (batch, id)",
            f"CREATE TABLE IF NOT EXISTS {state} (one INTEGER PRIMARY KEY, "
            "batch INTEGER NOT NULL, pruned INTEGER NOT NULL, epoch TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {tracked} (tbl TEXT PRIMARY KEY, tag TEXT NOT NULL, "
            "k TEXT NOT NULL, since INTEGER NOT NULL)",
        ]

    def journal_trigger_ddl(self, conn: sa.Connection, journal: str, table: str,
                            key: Sequence[str], tag: str) -> list[str]:
        t = _dq(table)

        def lite_key(row: str) -> str:
            return "json_array(" + ", ".join(self._value(f"{row}.{_dq(c)}") for c in key) + ")"

        ins = f"INSERT INTO {journal} (tbl, k) VALUES ({_sql_string(table)}, "
        same = " AND ".join(f"OLD.{_dq(c)} IS NEW.{_dq(c)}" for c in key)
        lite: dict[str, tuple[str, str]] = {
            "i": ("INSERT", f"{ins}{lite_key('NEW')});"),
            "d": ("DELETE", f"{ins}{lite_key('OLD')});"),
            "u": ("UPDATE", f"{ins}{lite_key('NEW')}); INSERT INTO {journal} (tbl, k) "
                            f"SELECT {_sql_string(table)}, {lite_key('OLD')} "
                            f"WHERE NOT ({same});"),
        }
        out = []
        for op, (when, body) in lite.items():
            out += [f"DROP TRIGGER IF EXISTS {tag}{op}",
                    f"CREATE TRIGGER {tag}{op} AFTER {when} ON {t} BEGIN {body} END"]
        return out

    def journal_drop_ddl(self, table: str, tag: str) -> list[str]:
        return [f"DROP TRIGGER IF EXISTS {tag}{op}" for op in "idu"]

    def journal_triggers_query(self, table: str, names: dict[str, str]
                               ) -> tuple[str, dict[str, Any]]:
        return ("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND "
                "tbl_name = :t AND name IN (:i, :d, :u)", {**names, "t": table})

    def journal_time(self, at: dt.datetime) -> Any:
        # fixed-width text, which sorts as the times do
        return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
