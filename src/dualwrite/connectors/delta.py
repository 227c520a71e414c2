"""The delta journal of an environment: which rows of a tracked table changed, in an order
that a reader can resume from without ever skipping a change (OData change tracking).

The change log (:mod:`dualwrite.connectors.capture`) is not enough for this: it forgets a
change once it is applied, and it never records dualwrite's own writes (no echo). The
journal records *every* committed change of a tracked table, whoever made it (the
application's own SQL, dualwrite's live writes, the applier's writes from the other side),
as one row ``(table, key)`` written by a trigger in the writer's own transaction. It records
keys only: a reader asks the table for the row's current values (a key whose row is gone was
deleted).

Tables of dualwrite's own, in the connection's schema (as the change log):

``dualwrite_delta``
    The journal: ``id`` (grows as rows are written), ``tbl``, ``k`` (the key as a JSON
    array, in the change log's encoding), ``batch`` and ``at`` (NULL until sequenced).
``dualwrite_delta_state``
    One row: the last batch handed out, the position pruned through, and an ``epoch`` (a
    random id given when the journal is created: a token from another journal is refused).
``dualwrite_delta_tables``
    Per tracked table: its trigger tag, the key columns, and the batch tracking began at.

**Positions never skip a change.** ``id`` is assigned when a row is written, not when its
transaction commits: a reader that resumed after id 10 would miss id 9 if id 9's transaction
committed after the read. So positions are assigned by a *sequencer* instead
(:meth:`DeltaJournal.sequence`), in a transaction serialised on the state row: it takes the
next batch number and puts every journal row it can see with no batch yet (committed rows
only: an uncommitted one is invisible to it) into that batch. A position is
``(batch, id)``. A reader sequences, then reads rows with a position above its token and at
most ``(B, ∞)``, B the batch its own sequencing left. Every row it can see in a batch
``<= B`` was sequenced by a committed sequencer; every row not yet visible (its writer has
not committed) will be sequenced later, into a batch ``> B``. So a later read from any token
handed out here sees it: no change is skipped, however transactions interleave
(``test_interleaved_transactions_are_never_skipped``).

**Retention.** :meth:`DeltaJournal.prune` deletes whole batches sequenced before a cut-off and
records the last batch deleted; a token below it may have missed changes and is refused. A
token of a table tracked since a later batch (tracking stopped and began again) is refused
too, and so is one whose batch was never handed out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from dualwrite.connectors.capture import (
    _bq,
    _dq,
    _my_string,
    _pg_string,
    _sql_string,
    dialect_for,
)
from dualwrite.connectors.sql import SqlConnector
from dualwrite.errors import DeltaTokenGone
from dualwrite.model.codec import decode_json, from_log
from dualwrite.model.schema import Column

JOURNAL = "dualwrite_delta"
STATE = "dualwrite_delta_state"
TRACKED = "dualwrite_delta_tables"
#: the id part of a position that stands for "the whole batch"
WHOLE = 2**62
#: journal rows one sequencing pass puts into a batch (the next pass takes the rest)
SEQUENCE_CHUNK = 20_000


@dataclass(frozen=True, order=True)
class Position:
    """A place in the journal: every change at or below it has been handed out."""

    batch: int
    id: int = WHOLE


@dataclass(frozen=True)
class Touched:
    """One journal row: the key of a row of the table that changed, at ``position``."""

    position: Position
    key: tuple[Any, ...]


def tag_of(table: str) -> str:
    """The name of a table's journal triggers (dualwrite's ``dw_<hash>_`` names, which
    `dualwrite uninstall` removes with the rest)."""
    return "dw_" + hashlib.sha1(f"delta\0{table}".encode()).hexdigest()[:10] + "_dx"


class DeltaJournal:
    """The delta journal of one SQL environment."""

    def __init__(self, connector: SqlConnector) -> None:
        self.connector = connector
        # Any: the journal's SQL reaches into each database's own dialect
        self.dialect: Any = dialect_for(connector)
        self._ready = False

    # ------------------------------------------------------------------------ set up
    def _home(self) -> str:
        log = self.connector.change_log()
        log.locate()
        self.dialect.home = log.dialect.home
        return str(self.dialect.home)

    def _journal_ddl(self) -> list[str]:
        d = self.dialect
        if d.name == "postgresql":
            return [
                f"CREATE TABLE IF NOT EXISTS {JOURNAL} (id BIGSERIAL PRIMARY KEY, "
                "tbl TEXT NOT NULL, k TEXT NOT NULL, batch BIGINT, at TIMESTAMPTZ)",
                f"CREATE INDEX IF NOT EXISTS {JOURNAL}_pos ON {JOURNAL} (tbl, batch, id)",
                f"CREATE INDEX IF NOT EXISTS {JOURNAL}_new ON {JOURNAL} (id) "
                "WHERE batch IS NULL",
                f"CREATE TABLE IF NOT EXISTS {STATE} (one INTEGER PRIMARY KEY, "
                "batch BIGINT NOT NULL, pruned BIGINT NOT NULL, epoch TEXT NOT NULL)",
                f"CREATE TABLE IF NOT EXISTS {TRACKED} (tbl TEXT PRIMARY KEY, tag TEXT NOT NULL, "
                "k TEXT NOT NULL, since BIGINT NOT NULL)",
            ]
        if d.name == "mariadb":
            opts = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            return [
                f"CREATE TABLE IF NOT EXISTS {JOURNAL} (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                "tbl VARCHAR(190) NOT NULL, k VARCHAR(700) NOT NULL, batch BIGINT, "
                f"at DATETIME(6), KEY {JOURNAL}_pos (tbl, batch, id), "
                f"KEY {JOURNAL}_new (batch, id)) {opts}",
                f"CREATE TABLE IF NOT EXISTS {STATE} (one INT PRIMARY KEY, "
                f"batch BIGINT NOT NULL, pruned BIGINT NOT NULL, epoch VARCHAR(40) NOT NULL) "
                f"{opts}",
                f"CREATE TABLE IF NOT EXISTS {TRACKED} (tbl VARCHAR(190) PRIMARY KEY, "
                f"tag VARCHAR(40) NOT NULL, k TEXT NOT NULL, since BIGINT NOT NULL) {opts}",
            ]
        return [
            f"CREATE TABLE IF NOT EXISTS {JOURNAL} (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "tbl TEXT NOT NULL, k TEXT NOT NULL, batch INTEGER, at TEXT)",
            f"CREATE INDEX IF NOT EXISTS {JOURNAL}_pos ON {JOURNAL} (tbl, batch, id)",
            f"CREATE INDEX IF NOT EXISTS {JOURNAL}_new ON {JOURNAL} (batch, id)",
            f"CREATE TABLE IF NOT EXISTS {STATE} (one INTEGER PRIMARY KEY, "
            "batch INTEGER NOT NULL, pruned INTEGER NOT NULL, epoch TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {TRACKED} (tbl TEXT PRIMARY KEY, tag TEXT NOT NULL, "
            "k TEXT NOT NULL, since INTEGER NOT NULL)",
        ]

    def ensure(self) -> None:
        """Create the journal tables if they are missing (idempotent)."""
        if self._ready:
            return
        self._home()
        c = self.connector
        with c.translating("create the delta journal"), c.engine.begin() as conn:
            for statement in self._journal_ddl():
                conn.exec_driver_sql(statement)
            conn.execute(sa.text(
                f"INSERT INTO {STATE} (one, batch, pruned, epoch) SELECT 1, 0, 0, :e "
                f"WHERE NOT EXISTS (SELECT 1 FROM {STATE} WHERE one = 1)"),
                {"e": secrets.token_hex(8)})
        self._ready = True

    def present(self) -> bool:
        """Whether this environment has a journal (without creating one). Asked of the
        database every time: `maps stop --purge` may have removed it meanwhile (the next
        :meth:`ensure` makes it anew)."""
        self._home()
        c = self.connector
        with c.translating("look for the delta journal"), c.engine.connect() as conn:
            exists = self._exists(conn)
        self._ready = self._ready and exists
        return exists

    def _trigger_ddl(self, conn: sa.Connection, table: str, key: Sequence[str]) -> list[str]:
        d, tag = self.dialect, tag_of(table)
        if d.name == "postgresql":
            t = d._table(table)
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
            for op, select in bodies.items():
                event, referencing = d.EVENTS[op]
                out += [
                    f"CREATE OR REPLACE FUNCTION {tag}{op}() RETURNS trigger LANGUAGE plpgsql "
                    f"{d._pinned()} AS $dw$ BEGIN INSERT INTO {JOURNAL} (tbl, k) {select}; "
                    "RETURN NULL; END $dw$",
                    f"DROP TRIGGER IF EXISTS {tag}{op} ON {t}",
                    f"CREATE TRIGGER {tag}{op} AFTER {event} ON {t} {referencing} "
                    f"FOR EACH STATEMENT EXECUTE FUNCTION {tag}{op}()",
                ]
            return out
        if d.name == "mariadb":
            schema, bare = d.split(table)
            db = f"{_bq(schema)}." if schema else ""
            t = f"{db}{_bq(bare)}"
            encodings = d.encodings(conn, table) or {}
            journal = f"{_bq(d.home)}.{JOURNAL}"
            name = _my_string(table)

            def my_key(row: str) -> str:
                return "JSON_ARRAY(" + ", ".join(
                    d._value(f"{row}.{_bq(c)}", encodings.get(c)) for c in key) + ")"

            ins = f"INSERT INTO {journal} (tbl, k) VALUES ({name}, "
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
        assert d.name == "sqlite"
        t = _dq(table)

        def lite_key(row: str) -> str:
            return "json_array(" + ", ".join(d._value(f"{row}.{_dq(c)}") for c in key) + ")"

        ins = f"INSERT INTO {JOURNAL} (tbl, k) VALUES ({_sql_string(table)}, "
        same = " AND ".join(f"OLD.{_dq(c)} IS NEW.{_dq(c)}" for c in key)
        lite: dict[str, tuple[str, str]] = {
            "i": ("INSERT", f"{ins}{lite_key('NEW')});"),
            "d": ("DELETE", f"{ins}{lite_key('OLD')});"),
            "u": ("UPDATE", f"{ins}{lite_key('NEW')}); INSERT INTO {JOURNAL} (tbl, k) "
                            f"SELECT {_sql_string(table)}, {lite_key('OLD')} "
                            f"WHERE NOT ({same});"),
        }
        out = []
        for op, (event, body) in lite.items():
            out += [f"DROP TRIGGER IF EXISTS {tag}{op}",
                    f"CREATE TRIGGER {tag}{op} AFTER {event} ON {t} BEGIN {body} END"]
        return out

    def _drop_ddl(self, table: str) -> list[str]:
        d, tag = self.dialect, tag_of(table)
        if d.name == "postgresql":
            return [f"DROP TRIGGER IF EXISTS {tag}{op} ON {d._table(table)}" for op in "idu"] + \
                [f"DROP FUNCTION IF EXISTS {tag}{op}()" for op in "idu"]
        if d.name == "mariadb":
            schema, _ = d.split(table)
            db = f"{_bq(schema)}." if schema else ""
            return [f"DROP TRIGGER IF EXISTS {db}{tag}{op}" for op in "idu"]
        return [f"DROP TRIGGER IF EXISTS {tag}{op}" for op in "idu"]

    def installed(self, table: str) -> bool:
        """Whether all of ``table``'s journal triggers are there (a table dropped and made
        anew has lost them)."""
        self.ensure()
        d, tag = self.dialect, tag_of(table)
        names = {o: f"{tag}{o}" for o in "idu"}
        schema, bare = d.split(table)
        if d.name == "postgresql":
            query = ("SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgname IN (:i, :d, :u) "
                     "AND tgrelid = to_regclass(:t) AND tgenabled <> 'D'")
            params: dict[str, Any] = {**names, "t": d._table(table)}
        elif d.name == "mariadb":
            query = ("SELECT count(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = "
                     "COALESCE(:s, DATABASE()) AND EVENT_OBJECT_TABLE = :t AND TRIGGER_NAME "
                     "IN (:i, :d, :u)")
            params = {**names, "s": schema, "t": bare}
        else:
            query = ("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND "
                     "tbl_name = :t AND name IN (:i, :d, :u)")
            params = {**names, "t": table}
        c = self.connector
        with c.translating(f"look for the journal triggers of {table}"), \
                c.engine.connect() as conn:
            return int(conn.execute(sa.text(query), params).scalar_one()) == 3

    # ------------------------------------------------------------------------ tracking
    def tracked(self) -> dict[str, tuple[tuple[str, ...], int]]:
        """Tracked tables: their key columns and the batch tracking began at."""
        self.ensure()
        c = self.connector
        with c.translating("read the tracked tables"), c.engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT tbl, k, since FROM {TRACKED}")).all()
        return {str(r[0]): (tuple(json.loads(r[1])), int(r[2])) for r in rows}

    def track(self, table: str, key: Sequence[str]) -> None:
        """Journal every change of ``table`` from now on (idempotent while its key is the
        same). Tracking begins at a new batch, so no token taken before it is accepted."""
        self.ensure()
        c = self.connector
        with c.translating(f"track changes of {table}"), c.engine.begin() as conn:
            statements = self._trigger_ddl(conn, table, key)
            for statement in statements:
                conn.exec_driver_sql(statement)
            conn.execute(sa.text(f"UPDATE {STATE} SET batch = batch + 1 WHERE one = 1"))
            since = int(conn.execute(sa.text(f"SELECT batch FROM {STATE} WHERE one = 1"))
                        .scalar_one())
            conn.execute(sa.text(f"DELETE FROM {TRACKED} WHERE tbl = :t"), {"t": table})
            # what an earlier tracking left is before ``since``: no token reaches it
            conn.execute(sa.text(f"DELETE FROM {JOURNAL} WHERE tbl = :t AND batch IS NOT NULL "
                                 "AND batch < :s"), {"t": table, "s": since})
            conn.execute(sa.text(f"INSERT INTO {TRACKED} (tbl, tag, k, since) "
                                 "VALUES (:t, :g, :k, :s)"),
                         {"t": table, "g": tag_of(table), "k": json.dumps(list(key)),
                          "s": since})

    def untrack(self, table: str) -> None:
        """Stop journaling ``table`` and forget its journal (its tokens are refused)."""
        self.ensure()
        c = self.connector
        with c.translating(f"stop tracking changes of {table}"), c.engine.begin() as conn:
            for statement in self._drop_ddl(table):
                conn.exec_driver_sql(statement)
            conn.execute(sa.text(f"DELETE FROM {TRACKED} WHERE tbl = :t"), {"t": table})
            conn.execute(sa.text(f"DELETE FROM {JOURNAL} WHERE tbl = :t"), {"t": table})

    # ------------------------------------------------------------------------ positions
    def _begin(self) -> Any:
        engine = self.connector.engine
        if self.dialect.name == "mariadb":
            # each statement sees what committed before it (the sequencer's SELECT must see
            # the batches of the sequencer it waited for), and reads of uncommitted journal
            # rows never wait for their writers
            return engine.execution_options(isolation_level="READ COMMITTED").begin()
        return engine.begin()

    def _time(self, at: dt.datetime) -> Any:
        """``at`` (UTC) as the journal's ``at`` column holds it: SQLite's as fixed-width text,
        which sorts as the times do."""
        if self.dialect.name == "sqlite":
            return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
        if self.dialect.name == "mariadb":
            return at.astimezone(dt.UTC).replace(tzinfo=None)
        return at

    def sequence(self) -> int:
        """Put the committed journal rows without a batch into a new one; returns the last
        batch handed out (see the module doc for why this makes positions safe)."""
        self.ensure()
        c = self.connector
        with c.translating("read the delta journal"), self._begin() as conn:
            # nothing waiting: the last batch, without taking the sequencers' lock (a row
            # that commits after this look goes into a batch above the one returned)
            if conn.execute(sa.text(f"SELECT 1 FROM {JOURNAL} WHERE batch IS NULL LIMIT 1")
                            ).first() is None:
                return int(conn.execute(sa.text(f"SELECT batch FROM {STATE} WHERE one = 1"))
                           .scalar_one())
        at = self._time(dt.datetime.now(dt.UTC))
        with c.translating("sequence the delta journal"), self._begin() as conn:
            # the lock on the state row (SQLite: the write lock) serialises sequencers
            conn.execute(sa.text(f"UPDATE {STATE} SET batch = batch + 1 WHERE one = 1"))
            batch = int(conn.execute(sa.text(f"SELECT batch FROM {STATE} WHERE one = 1"))
                        .scalar_one())
            ids = [int(r[0]) for r in conn.execute(sa.text(
                f"SELECT id FROM {JOURNAL} WHERE batch IS NULL ORDER BY id LIMIT :n"),
                {"n": SEQUENCE_CHUNK})]
            if not ids:
                conn.rollback()  # nothing new: the batch number is not used
                return batch - 1
            for start in range(0, len(ids), 1000):
                chunk = ids[start:start + 1000]
                conn.execute(sa.text(
                    f"UPDATE {JOURNAL} SET batch = :b, at = :at WHERE id IN :ids")
                    .bindparams(sa.bindparam("ids", expanding=True)),
                    {"b": batch, "at": at, "ids": chunk})
        return batch

    def check(self, conn: sa.Connection, table: str, after: Position, epoch: str) -> int:
        """Raise :class:`DeltaTokenGone` unless ``table`` can be read from ``after``; returns the
        last batch handed out."""
        state = conn.execute(sa.text(f"SELECT batch, pruned, epoch FROM {STATE} "
                                     "WHERE one = 1")).one()
        since = conn.execute(sa.text(f"SELECT since FROM {TRACKED} WHERE tbl = :t"),
                             {"t": table}).scalar()
        if epoch != str(state[2]):
            raise DeltaTokenGone("the token is from another journal (this environment's "
                               "journal was created anew, or the token is not one of ours)")
        if since is None:
            raise DeltaTokenGone(f"changes of {table!r} are not tracked any more (its map "
                               "was stopped)")
        if after.batch > int(state[0]):
            raise DeltaTokenGone("the token names a position this service never handed out")
        if after < Position(int(since)):
            raise DeltaTokenGone(f"the token is older than the tracking of {table!r} (tracking "
                               "stopped and began again since)")
        if after < Position(int(state[1])):
            raise DeltaTokenGone("the changes after the token are no longer kept (older than "
                               "the delta retention)")
        return int(state[0])

    def epoch(self) -> str:
        self.ensure()
        c = self.connector
        with c.translating("read the delta journal"), c.engine.connect() as conn:
            return str(conn.execute(sa.text(f"SELECT epoch FROM {STATE} WHERE one = 1"))
                       .scalar_one())

    def read(self, table: str, key_columns: Sequence[Column], after: Position, epoch: str,
             limit: int) -> tuple[list[Touched], Position]:
        """Sequence, then up to ``limit`` journal rows of ``table`` after ``after``, in
        position order, and the position of the end of what is visible now (``(B, ∞)``).
        Raises :class:`DeltaTokenGone` when ``after`` cannot be resumed from."""
        horizon = Position(self.sequence())
        c = self.connector
        decoders = [from_log(col) for col in key_columns]
        with c.translating("read the delta journal"), self._begin() as conn:
            rows = conn.execute(sa.text(
                f"SELECT batch, id, k FROM {JOURNAL} WHERE tbl = :t AND batch IS NOT NULL "
                "AND (batch > :b OR (batch = :b AND id > :i)) AND batch <= :h "
                "ORDER BY batch, id LIMIT :n"),
                {"t": table, "b": after.batch, "i": after.id, "h": horizon.batch,
                 "n": limit}).all()
            # checked after the read: a prune that committed before the read is seen here
            self.check(conn, table, after, epoch)
        out = []
        for batch, id_, k in rows:
            values = decode_json(k)
            key = tuple(v if v is None or fn is None else fn(v)
                        for v, fn in zip(values, decoders, strict=True))
            out.append(Touched(Position(int(batch), int(id_)), key))
        return out, horizon

    def prune(self, older_than: dt.datetime) -> int:
        """Delete the batches sequenced before ``older_than``; returns the rows deleted."""
        self.ensure()
        c = self.connector
        cut = self._time(older_than)
        with c.translating("prune the delta journal"), self._begin() as conn:
            last = conn.execute(sa.text(
                f"SELECT MAX(batch) FROM {JOURNAL} WHERE batch IS NOT NULL AND at < :c"),
                {"c": cut}).scalar()
            if last is None:
                return 0
            # recorded first: a reader that saw a deleted row's absence sees this too
            conn.execute(sa.text(f"UPDATE {STATE} SET pruned = :p WHERE one = 1 AND "
                                 "pruned < :p"), {"p": int(last)})
            n = conn.execute(sa.text(f"DELETE FROM {JOURNAL} WHERE batch <= :p"),
                             {"p": int(last)}).rowcount
        return int(n or 0)

    def _exists(self, conn: sa.Connection) -> bool:
        return sa.inspect(conn).has_table(TRACKED)
