"""MariaDB's change capture: row triggers into the change log (with the writing transaction's
id from system versioning), and the delta journal's triggers (the ``journal_*`` hooks of
:class:`MariaDbDialect`)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from dualwrite.connectors.capture import (
    APPLIED,
    BINARY,
    BIT,
    CHANGES,
    FENCE_SOURCE,
    FLOAT32,
    MARKER,
    PLAIN,
    TEXT,
    VERSION,
    CaptureSpec,
    Dialect,
    _bq,
    _my_string,
    driver_rows,
)
from dualwrite.model.schema import Column, Kind

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

    name = "mariadb"

    def rows(self, conn: sa.Connection, text: str, params: dict[str, Any]) -> list[Any]:
        # through PyMySQL itself: a quiet link's poll of the log spent most of its CPU in
        # SQLAlchemy's statement machinery
        return driver_rows(conn, text, params)

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

    # -- the shared log's hooks -----------------------------------------------------------------
    home_query = "SELECT DATABASE()"
    #: a trigger in another database writes into this one's log, by its name
    own_objects = (
        "SELECT 'trigger', TRIGGER_NAME, CONCAT('DROP TRIGGER IF EXISTS `', "
        "REPLACE(TRIGGER_SCHEMA, '`', '``'), '`.`', TRIGGER_NAME, '`') FROM "
        "information_schema.TRIGGERS WHERE (TRIGGER_SCHEMA = DATABASE() OR LOCATE(CONCAT("
        "'`', REPLACE(DATABASE(), '`', '``'), '`.dualwrite_changes'), ACTION_STATEMENT) "
        "> 0) AND LEFT(TRIGGER_NAME, 3) = 'dw_'")
    text_type = "CHAR"
    needs_purge = True
    has_forget_range = True

    def purge(self, conn: sa.Connection) -> None:
        conn.exec_driver_sql(f"DELETE HISTORY FROM {CHANGES}")

    def forget_range(self, conn: sa.Connection, lo: int, hi: int, fence: tuple[str, int]
                     ) -> bool | None:
        """A transaction of its own in one request of several statements, on a session in
        autocommit (``single_statements``): raise the fence where it is there already and no
        later, delete the rows only where it holds this epoch (the fence row stays locked by
        the UPDATE until the COMMIT: a newer applier's fence waits for it), commit. One round
        trip where a transaction took three (the fence, the delete, the commit). Whether the
        fence was raised is the UPDATE's count of rows matched. On a session not in
        autocommit (a write session's, in its transaction), None: the caller does it the
        plain way there."""
        raw: Any = conn.connection.driver_connection
        if not raw.get_autocommit():
            return None
        sql = ("START TRANSACTION; "
               f"UPDATE {APPLIED} SET seq = %s WHERE source = %s AND map = %s AND txid = '' "
               "AND seq <= %s; "
               f"DELETE FROM {CHANGES} WHERE seq BETWEEN %s AND %s AND EXISTS (SELECT 1 FROM "
               f"{APPLIED} WHERE source = %s AND map = %s AND txid = '' AND seq = %s); "
               "COMMIT")
        link, epoch = fence
        params = [epoch, FENCE_SOURCE, link, epoch, lo, hi, FENCE_SOURCE, link, epoch]
        raised = False
        try:
            with raw.cursor() as cur:
                cur.execute(sql, params)
                index = 0
                while True:
                    if index == 1:
                        raised = cur.rowcount == 1
                    index += 1
                    if not cur.nextset():
                        break
        except BaseException:
            # a statement that failed stops the request before its COMMIT: end the
            # transaction here, not in the pool (whose sessions are in autocommit)
            with contextlib.suppress(Exception):
                raw.rollback()
            raise
        return raised

    def finish_apply(self, conn: sa.Connection, source: str,
                     positions: Sequence[tuple[str, str, int]],
                     prune: Sequence[tuple[str, str]], fence: tuple[str, int] | None,
                     probe: Sequence[str]) -> tuple[bool, set[str]] | None:
        """The statements one after the other in one request (the connector's sessions allow
        several): raise the fence where it is there already and no later, record the
        positions, drop the pruned ones, then look for each ``probe`` map's changes. Each
        statement sees what the ones before it did, and the probe what committed before it,
        as :meth:`CaptureLog.queued` would. Whether the fence was raised is the first
        statement's count of rows matched."""
        raw: Any = conn.connection.driver_connection
        statements: list[str] = []
        params: list[Any] = []
        if fence is not None:
            statements.append(f"UPDATE {APPLIED} SET seq = %s WHERE source = %s AND map = %s "
                              "AND txid = '' AND seq <= %s")
            params += [fence[1], FENCE_SOURCE, fence[0], fence[1]]
        if positions:
            statements.append(f"INSERT INTO {APPLIED} (source, map, txid, seq) VALUES "
                              + ", ".join(["(%s, %s, %s, %s)"] * len(positions)))
            for m, t, q in positions:
                params += [source, m, t, q]
        by_map: dict[str, list[str]] = {}
        for m, t in prune:
            by_map.setdefault(m, []).append(t)
        for m, txids in by_map.items():
            statements.append(f"DELETE FROM {APPLIED} WHERE source = %s AND map = %s AND "
                              f"txid IN ({', '.join(['%s'] * len(txids))})")
            params += [source, m, *txids]
        if probe:
            statements.append(" UNION ALL ".join(
                f"SELECT map FROM (SELECT map FROM {CHANGES} WHERE map = %s LIMIT 1) q{i}"
                for i in range(len(probe))))
            params += list(probe)
        if not statements:
            return True, set()
        raised = fence is None
        queued: set[str] = set()
        with raw.cursor() as cur:
            cur.execute("; ".join(statements), params)
            index = 0
            while True:
                if index == 0 and fence is not None:
                    raised = cur.rowcount == 1
                if probe and index == len(statements) - 1:
                    queued = {str(r[0]) for r in cur.fetchall()}
                index += 1
                if not cur.nextset():
                    break
        return raised, queued

    # -- the delta journal ------------------------------------------------------------------
    #: each statement sees what committed before it (the sequencer's SELECT must see the
    #: batches of the sequencer it waited for), and reads of uncommitted journal rows never
    #: wait for their writers
    journal_isolation = "READ COMMITTED"

    def journal_ddl(self, journal: str, state: str, tracked: str) -> list[str]:
        opts = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        return [
            f"CREATE TABLE IF NOT EXISTS {journal} (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
            "tbl VARCHAR(190) NOT NULL, k VARCHAR(700) NOT NULL, batch BIGINT, "
            f"at DATETIME(6), KEY {journal}_pos (tbl, batch, id), "
            f"KEY {journal}_new (batch, id)) {opts}",
            f"CREATE TABLE IF NOT EXISTS {state} (one INT PRIMARY KEY, "
            f"batch BIGINT NOT NULL, pruned BIGINT NOT NULL, epoch VARCHAR(40) NOT NULL) "
            f"{opts}",
            f"CREATE TABLE IF NOT EXISTS {tracked} (tbl VARCHAR(190) PRIMARY KEY, "
            f"tag VARCHAR(40) NOT NULL, k TEXT NOT NULL, since BIGINT NOT NULL) {opts}",
        ]

    def journal_trigger_ddl(self, conn: sa.Connection, journal: str, table: str,
                            key: Sequence[str], tag: str) -> list[str]:
        schema, bare = self.split(table)
        db = f"{_bq(schema)}." if schema else ""
        t = f"{db}{_bq(bare)}"
        encodings = self.encodings(conn, table) or {}
        home_journal = f"{_bq(self.home)}.{journal}"
        name = _my_string(table)

        def my_key(row: str) -> str:
            return "JSON_ARRAY(" + ", ".join(
                self._value(f"{row}.{_bq(c)}", encodings.get(c)) for c in key) + ")"

        ins = f"INSERT INTO {home_journal} (tbl, k) VALUES ({name}, "
        same = " AND ".join(f"OLD.{_bq(c)} <=> NEW.{_bq(c)}" for c in key)
        bodies = {
            "i": f"{ins}{my_key('NEW')})",
            "d": f"{ins}{my_key('OLD')})",
            "u": f"BEGIN {ins}{my_key('NEW')}); IF NOT ({same}) THEN "
                 f"{ins}{my_key('OLD')}); END IF; END",
        }
        events = {"i": "INSERT", "d": "DELETE", "u": "UPDATE"}
        return [f"CREATE OR REPLACE TRIGGER {db}{tag}{op} AFTER {events[op]} ON {t} "
                f"FOR EACH ROW {body}" for op, body in bodies.items()]

    def journal_drop_ddl(self, table: str, tag: str) -> list[str]:
        schema, _ = self.split(table)
        db = f"{_bq(schema)}." if schema else ""
        return [f"DROP TRIGGER IF EXISTS {db}{tag}{op}" for op in "idu"]

    def journal_triggers_query(self, table: str, names: dict[str, str]
                               ) -> tuple[str, dict[str, Any]]:
        schema, bare = self.split(table)
        return ("SELECT count(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = "
                "COALESCE(:s, DATABASE()) AND EVENT_OBJECT_TABLE = :t AND TRIGGER_NAME "
                "IN (:i, :d, :u)", {**names, "s": schema, "t": bare})

    def journal_time(self, at: dt.datetime) -> Any:
        return at.astimezone(dt.UTC).replace(tzinfo=None)
