"""PostgreSQL's change capture: statement-level triggers with transition tables into the change
log, the LISTEN wake-up (:class:`PgChangeSignal`), and the delta journal's triggers (the
``journal_*`` hooks of :class:`PostgresDialect`)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa

from dualwrite.connectors.capture import (
    APPLIED,
    CHANGES,
    FENCE_SOURCE,
    JSON_DOC,
    MARKER,
    NOTIFY_CHANNEL,
    PLAIN,
    WAKE,
    CaptureSpec,
    Dialect,
    _dq,
    _pg_string,
    driver_rows,
)
from dualwrite.connectors.changelog import ChangeSignal
from dualwrite.connectors.sql import SqlConnector, without_collation
from dualwrite.model.schema import Column

if TYPE_CHECKING:
    from dualwrite.connectors.postgresql.connector import PostgresConnector

#: a named parameter (``:name``) of the capture log's statements, not a cast (``::type``)
#: the advisory lock that dualwrite's own DDL in a database is made under
_DDL_LOCK = 0x64775F6464  # "dw_dd"


class PostgresDialect(Dialect):
    """Statement-level triggers with transition tables: one ``INSERT ... SELECT`` per
    statement. The map's columns are read by name only after a check, once per statement,
    that the table still has them all (one catalog lookup); if not, the same statement logs
    a marker per row from the whole row (``row_to_json(t.*)``), which reads no column by name.
    (A plpgsql EXCEPTION block would catch the error instead, but it opens a subtransaction
    for every captured statement: a cost on every write, and in a long transaction an
    overflow of the subtransaction cache that slows every session's snapshots.)"""

    name = "postgresql"

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
            # transaction ends (and it may yet be prepared). No current query is the
            # implicit commit of an autocommit statement sent with parameters (the extended
            # protocol's Sync), which cannot be a PREPARE: it notifies (it did not, and the
            # applier saw such a change only at its next timeout, up to a second later).
            "IF pg_trigger_depth() = 1 AND COALESCE(current_query(), '') !~* "
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

    # -- the shared log's hooks -----------------------------------------------------------------
    home_query = "SELECT current_schema()"
    #: a trigger on a table in another schema calls a function in the log's schema
    own_objects = (
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
            "p.proname IN ('dualwrite_wake', 'dualwrite_mark'))")
    length_function = "octet_length"

    def log_columns(self) -> str:
        return "seq, map, txid, op, k, old::text, new::text, at, v"

    def lock_ddl(self, conn: sa.Connection) -> None:
        # processes starting at once (JetStream workers) would otherwise meet in
        # CREATE OR REPLACE FUNCTION: "tuple concurrently updated"
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_DDL_LOCK})")

    def rows(self, conn: sa.Connection, text: str, params: dict[str, Any]) -> list[Any]:
        # through the driver itself: a large read spends a good part of its time in
        # SQLAlchemy's row handling
        return driver_rows(conn, text, params)

    def pending_rows(self, conn: sa.Connection, map_name: str,
                     keys: Sequence[tuple[Any, ...]], columns: Sequence[Column]) -> list[Any]:
        # all keys in one statement: one array parameter per key column
        width = len(columns)
        arrays = {f"a{n}": [k[n] for k in keys] for n in range(width)}
        unnest = ", ".join(f"CAST(:a{n} AS {without_collation(c.sql_type)}[])"
                           for n, c in enumerate(columns))
        cols = ", ".join(f"u.v{n}" for n in range(width))
        names = ", ".join(f"v{n}" for n in range(width))
        return list(conn.execute(sa.text(
            f"SELECT {self.log_columns()} FROM {CHANGES} WHERE map = :m AND k = ANY(ARRAY("
            f"SELECT json_build_array({cols})::text FROM unnest({unnest}) AS u({names})))"
            " ORDER BY seq"), {"m": map_name, **arrays}).all())

    def finish_apply(self, conn: sa.Connection, source: str,
                     positions: Sequence[tuple[str, str, int]],
                     prune: Sequence[tuple[str, str]], fence: tuple[str, int] | None,
                     probe: Sequence[str]) -> tuple[bool, set[str]] | None:
        """One statement of data-modifying CTEs (each runs once, to completion, whether or
        not the query reads it), whose row also says which ``probe`` maps the log holds
        changes of (the log's map index, one probe each: the snapshot is the statement's,
        so a change committed before it is seen, as :meth:`CaptureLog.queued` would)."""
        parts = []
        params: dict[str, Any] = {"s": source, "pm": list(probe)}
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
        if not parts and not probe:
            return True, set()
        queued = (f"ARRAY(SELECT p.m FROM unnest(%(pm)s::text[]) AS p(m) WHERE EXISTS "
                  f"(SELECT 1 FROM {CHANGES} c WHERE c.map = p.m))") if probe else \
            "'{}'::text[]"
        text = ("WITH " + ", ".join(parts) + " " if parts else "") + "SELECT " + \
            ("(SELECT count(*) FROM f)" if fence is not None else "1") + ", " + queued
        raw: Any = conn.connection.driver_connection
        with raw.cursor() as cur:
            cur.execute(text, params)
            row = cur.fetchone()
        if row is None:
            return False, set()
        return int(row[0]) == 1, {str(m) for m in row[1] or ()}

    # The log, the applied positions and the wake-up rows are queues: a row in and a row out
    # for each change or transaction. A deleted row stays in the table and its indexes, as a
    # dead version, until a vacuum; every read of the log and every look at the positions
    # steps over them, and autovacuum visits a database about once a minute. Measured: one
    # single-row apply (PostgreSQL to PostgreSQL) took 3.3 ms p50 on fresh tables, 5.5 ms
    # after a 20,000-row transaction had been applied and deleted, 3.3 ms again once
    # vacuumed. The applier's purger (a thread of its own, every second, only after
    # something was deleted) vacuums them.
    needs_purge = True
    purge_in_transaction = False

    def purge(self, conn: sa.Connection) -> None:
        # SKIP_LOCKED: a table autovacuum (or another applier) is vacuuming is left to it
        conn.exec_driver_sql(f"VACUUM (SKIP_LOCKED) {CHANGES}, {APPLIED}, {WAKE}")

    has_forget_range = True

    def forget_range(self, conn: sa.Connection, lo: int, hi: int, fence: tuple[str, int]
                     ) -> bool | None:
        # through the driver itself, like finish_apply: once per apply, on the hot path
        got = self.rows(conn, (
            f"WITH f AS (UPDATE {APPLIED} SET seq = :e WHERE source = :fs AND "
            "map = :link AND txid = '' AND seq <= :e RETURNING 1), "
            # the delete sees the fence's RETURNING rows: nothing goes unless it was raised
            f"d AS (DELETE FROM {CHANGES} WHERE seq BETWEEN :a AND :b AND EXISTS "
            "(SELECT 1 FROM f)) SELECT count(*) FROM f"),
            {"e": fence[1], "fs": FENCE_SOURCE, "link": fence[0], "a": lo, "b": hi})
        return int(got[0][0]) == 1

    # -- the delta journal ------------------------------------------------------------------
    def journal_ddl(self, journal: str, state: str, tracked: str) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {journal} (id BIGSERIAL PRIMARY KEY, "
            "tbl TEXT NOT NULL, k TEXT NOT NULL, batch BIGINT, at TIMESTAMPTZ)",
            f"CREATE INDEX IF NOT EXISTS {journal}_pos ON {journal} (tbl, batch, id)",
            f"CREATE INDEX IF NOT EXISTS {journal}_new ON {journal} (id) "
            "WHERE batch IS NULL",
            f"CREATE TABLE IF NOT EXISTS {state} (one INTEGER PRIMARY KEY, "
            "batch BIGINT NOT NULL, pruned BIGINT NOT NULL, epoch TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {tracked} (tbl TEXT PRIMARY KEY, tag TEXT NOT NULL, "
            "k TEXT NOT NULL, since BIGINT NOT NULL)",
        ]

    def journal_trigger_ddl(self, conn: sa.Connection, journal: str, table: str,
                            key: Sequence[str], tag: str) -> list[str]:
        t = self._table(table)
        name = _pg_string(table)

        def keys(rel: str) -> str:
            return (f"SELECT {name}, json_build_array("
                    + ", ".join(f"{rel}.{_dq(c)}" for c in key) + f")::text FROM {rel}")

        bodies = {
            "i": keys("dw_new"), "d": keys("dw_old"),
            # an update of the key leaves the old key without its row: both are told
            "u": f"{keys('dw_new')} UNION {keys('dw_old')}",
        }
        out = []
        for op, query in bodies.items():
            when, referencing = self.EVENTS[op]
            out += [
                f"CREATE OR REPLACE FUNCTION {tag}{op}() RETURNS trigger LANGUAGE plpgsql "
                f"{self._pinned()} AS $dw$ BEGIN INSERT INTO {journal} (tbl, k) {query}; "
                "RETURN NULL; END $dw$",
                f"DROP TRIGGER IF EXISTS {tag}{op} ON {t}",
                f"CREATE TRIGGER {tag}{op} AFTER {when} ON {t} {referencing} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {tag}{op}()",
            ]
        return out

    def journal_drop_ddl(self, table: str, tag: str) -> list[str]:
        return [f"DROP TRIGGER IF EXISTS {tag}{op} ON {self._table(table)}" for op in "idu"] + \
            [f"DROP FUNCTION IF EXISTS {tag}{op}()" for op in "idu"]

    def journal_triggers_query(self, table: str, names: dict[str, str]
                               ) -> tuple[str, dict[str, Any]]:
        return ("SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgname IN (:i, :d, :u) "
                "AND tgrelid = to_regclass(:t) AND tgenabled <> 'D'",
                {**names, "t": self._table(table)})

    def listen(self, connector: SqlConnector) -> ChangeSignal | None:
        from dualwrite.connectors.postgresql.connector import PostgresConnector

        assert isinstance(connector, PostgresConnector)
        return PgChangeSignal(connector)


class PgChangeSignal:
    """LISTEN on a session of its own (autocommit, opened with the connector's own connection
    settings, outside its pool): readable when a capturing transaction commits (the wake-up,
    see :mod:`dualwrite.connectors.capture`)."""

    def __init__(self, connector: PostgresConnector) -> None:
        self.conn = connector.driver_connect(autocommit=True)
        try:
            self.conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except BaseException:
            self.conn.close()
            raise

    def fileno(self) -> int:
        return int(self.conn.fileno())

    def drain(self) -> None:
        # notifications arrive as soon as the socket is read
        for _n in self.conn.notifies(timeout=0, stop_after=100):
            pass

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

