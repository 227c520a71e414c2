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

from dualwrite.connectors.capture import dialect_for
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
        # the journal's SQL is each database's own (its capture dialect's journal_* hooks)
        self.dialect = dialect_for(connector)
        self._ready = False

    # ------------------------------------------------------------------------ set up
    def _home(self) -> str:
        log = self.connector.change_log()
        log.locate()
        self.dialect.home = log.dialect.home
        return str(self.dialect.home)

    def ensure(self) -> None:
        """Create the journal tables if they are missing (idempotent)."""
        if self._ready:
            return
        self._home()
        c = self.connector
        with c.translating("create the delta journal"), c.engine.begin() as conn:
            for statement in self.dialect.journal_ddl(JOURNAL, STATE, TRACKED):
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

    def installed(self, table: str) -> bool:
        """Whether all of ``table``'s journal triggers are there (a table dropped and made
        anew has lost them)."""
        self.ensure()
        tag = tag_of(table)
        query, params = self.dialect.journal_triggers_query(
            table, {o: f"{tag}{o}" for o in "idu"})
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
            statements = self.dialect.journal_trigger_ddl(conn, JOURNAL, table, key,
                                                          tag_of(table))
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
            for statement in self.dialect.journal_drop_ddl(table, tag_of(table)):
                conn.exec_driver_sql(statement)
            conn.execute(sa.text(f"DELETE FROM {TRACKED} WHERE tbl = :t"), {"t": table})
            conn.execute(sa.text(f"DELETE FROM {JOURNAL} WHERE tbl = :t"), {"t": table})

    # ------------------------------------------------------------------------ positions
    def _begin(self) -> Any:
        engine = self.connector.engine
        if self.dialect.journal_isolation is not None:
            # (MariaDB: READ COMMITTED) each statement sees what committed before it (the
            # sequencer's SELECT must see the batches of the sequencer it waited for), and
            # reads of uncommitted journal rows never wait for their writers
            return engine.execution_options(
                isolation_level=self.dialect.journal_isolation).begin()
        return engine.begin()

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
        at = self.dialect.journal_time(dt.datetime.now(dt.UTC))
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
        cut = self.dialect.journal_time(older_than)
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
