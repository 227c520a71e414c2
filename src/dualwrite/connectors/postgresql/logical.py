"""PostgreSQL's change capture by logical decoding (``capture: logical``).

The change log, the applied positions and everything the applier reads stay those of
:class:`~dualwrite.connectors.capture.CaptureLog`: only what *fills* the log differs. Instead
of statement triggers writing in the application's transaction, a **decoder** (a thread of the
process that applies, started with the applier's wait) streams the WAL from a logical
replication slot with the ``pgoutput`` plugin, turns each committed source transaction into
the very log rows the triggers would have written (same columns, same JSON encoding: the
database itself encodes the values, with ``row_to_json``), inserts them in one transaction
that also records the commit LSN it reached (``dualwrite_slot``), commits, and only then
confirms the slot. After a crash, transactions at or below the recorded LSN are skipped:
each change is in the log exactly once. It then wakes the applier in-process (the signal
:meth:`LogicalCaptureLog.listen` hands out).

What an environment in logical mode carries, besides the log tables:

* a **publication** (``dualwrite_<hash>``) of the captured tables and ``dualwrite_capture``
  (what each map captures: table, key, columns, version; its changes are decoded in WAL order
  with the data, so a reload takes effect exactly where it committed);
* ``REPLICA IDENTITY FULL`` on each captured table (the applier's conflict checks need the
  old version of every update and delete);
* a **logical replication slot** of the same name (``pgoutput``), created outside any
  transaction that wrote;
* per captured table, a ``BEFORE ... FOR EACH STATEMENT`` trigger whose ``WHEN`` clause is
  true only in dualwrite's own sessions (``dualwrite.origin`` set): it writes a transactional
  logical message (``pg_logical_emit_message``, prefix ``dualwrite``) holding the session's
  marking, ``on`` (dualwrite's own write: not captured, no echo) or ``queue`` (a write
  through dualwrite that must queue like an application's, see
  ``WriteSession.capture_own_writes``). The decoder reads each change under the last marking
  of its transaction. An application's statement pays the ``WHEN`` test alone (no function
  call, no WAL). Replication origins would mark sessions without a trigger, but an origin
  can be active in one session at a time (PostgreSQL 15): dualwrite's pooled sessions would
  queue behind one another.

The one difference the applier sees: a target's own change reaches its log a little after it
commits. :meth:`LogicalCaptureLog.catch_up` closes that gap where it matters (the applier's
conflict check, see ``engine/capture.py``): it waits until the decoder has logged every
transaction committed before the target row was locked.

An abandoned slot keeps every WAL segment from its position on: :meth:`check` warns when the
slot is inactive or holds more than :data:`SLOT_BEHIND_WARN` bytes, and ``uninstall`` drops
it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import select
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from dualwrite.connectors.capture import (
    CHANGES,
    MARKER,
    CaptureLog,
    CaptureSpec,
    _dq,
    _pg_string,
    capturable,
)
from dualwrite.connectors.changelog import Change, ChangeSignal
from dualwrite.errors import TerminalConnectorError, TransientConnectorError

if TYPE_CHECKING:
    from dualwrite.connectors.base import WriteSession
    from dualwrite.connectors.postgresql.connector import PostgresConnector

log = logging.getLogger("dualwrite.capture.logical")

#: what each map captures, decoded with the data (see the module doc)
SPECS = "dualwrite_capture"
#: the commit LSN up to which the decoder has logged, per slot
SLOT_TABLE = "dualwrite_slot"
#: the prefix of dualwrite's logical messages
PREFIX = "dualwrite"
#: bytes of WAL a slot may hold back before :meth:`LogicalCaptureLog.check` warns
SLOT_BEHIND_WARN = 1 << 30
#: seconds :meth:`LogicalCaptureLog.catch_up` waits for the decoder
CATCH_UP_TIMEOUT = 30.0
#: the settings the decoder's replication session prints values with: those of the trigger
#: functions (dualwrite.connectors.postgresql.dialect.PostgresDialect.SETTINGS)
_OPTIONS = ("-c timezone=UTC -c extra_float_digits=1 -c bytea_output=hex "
            "-c intervalstyle=postgres -c datestyle=ISO -c lc_monetary=C")
_JSON_TYPES = (114, 3802)  # json, jsonb: logged as their text (see the triggers)
_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


# -- pgoutput, sans-I/O ------------------------------------------------------------------------
@dataclass
class Relation:
    """A Relation message: a table as the WAL describes it now."""

    relid: int
    schema: str
    name: str
    identity: str  # 'f': full, 'd': default (primary key), 'n': nothing, 'i': index
    columns: list[tuple[str, int]]  # (name, type oid)


@dataclass
class RowChange:
    """One decoded row change, values as their output functions print them (None: NULL)."""

    rel: Relation  # as the WAL described the table when the row changed
    op: str  # "I", "U", "D"
    old: dict[str, str | None] | None
    new: dict[str, str | None] | None
    own: bool  # written under dualwrite's marking "on" (not captured)


@dataclass
class Transaction:
    """A committed source transaction, whole."""

    xid: int
    commit_lsn: int = 0
    end_lsn: int = 0
    at: dt.datetime = _PG_EPOCH
    changes: list[RowChange] = field(default_factory=list)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> Any:
        got = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return got[0] if len(got) == 1 else got

    def string(self) -> str:
        end = self.data.index(b"\0", self.pos)
        out = self.data[self.pos:end].decode()
        self.pos = end + 1
        return out

    def tuple(self, rel: Relation, unchanged_from: dict[str, str | None] | None
              ) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for i in range(self.take("!h")):
            kind = self.take("!c")
            name = rel.columns[i][0] if i < len(rel.columns) else f"#{i}"
            if kind == b"t":
                n = self.take("!i")
                out[name] = self.data[self.pos:self.pos + n].decode()
                self.pos += n
            elif kind == b"u":  # a TOASTed value the update left as it was
                out[name] = (unchanged_from or {}).get(name)
            else:  # b"n": NULL
                out[name] = None
        return out


class PgOutput:
    """The pgoutput protocol (version 1), fed one message at a time: keeps the relations
    and the transaction being received, and hands out each transaction at its commit."""

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}
        self.tx: Transaction | None = None
        self.own = False

    @property
    def in_transaction(self) -> bool:
        return self.tx is not None

    def feed(self, data: bytes) -> Transaction | None:
        r = _Reader(data)
        kind = r.take("!c")
        if kind == b"B":
            final_lsn, ts, xid = r.take("!QqI")
            self.tx = Transaction(xid, commit_lsn=final_lsn,
                                  at=_PG_EPOCH + dt.timedelta(microseconds=ts))
            self.own = False
        elif kind == b"C":
            _flags, commit_lsn, end_lsn, _ts = r.take("!BQQq")
            tx, self.tx = self.tx, None
            if tx is not None:
                tx.commit_lsn, tx.end_lsn = commit_lsn, end_lsn
            return tx
        elif kind == b"R":
            relid = r.take("!I")
            schema, name = r.string(), r.string()
            identity = r.take("!c").decode()
            cols = []
            for _i in range(r.take("!h")):
                r.take("!B")
                cname = r.string()
                typ, _mod = r.take("!Ii")
                cols.append((cname, typ))
            self.relations[relid] = Relation(relid, schema, name, identity, cols)
        elif kind == b"M":
            flags = r.take("!B")
            r.take("!Q")
            prefix = r.string()
            size = r.take("!i")
            content = r.data[r.pos:r.pos + size]
            if flags & 1 and prefix == PREFIX and self.tx is not None:
                self.own = content == b"on"
        elif kind in (b"I", b"U", b"D") and self.tx is not None:
            relid = r.take("!I")
            rel = self.relations[relid]
            old = new = None
            tag = r.take("!c")
            if kind == b"I":
                new = r.tuple(rel, None)
            elif kind == b"D":
                old = r.tuple(rel, None) if tag == b"O" else None
            else:
                if tag in (b"O", b"K"):  # the old version (O: whole; K: the key alone)
                    before = r.tuple(rel, None)
                    old = before if tag == b"O" else None
                    r.take("!c")  # N
                new = r.tuple(rel, old)
            self.tx.changes.append(RowChange(rel, kind.decode(), old, new, self.own))
        # Origin, Type and Truncate messages: nothing to log (TRUNCATE is not captured by
        # the triggers either)
        return None


# -- from decoded changes to the triggers' log rows --------------------------------------------
def _local(rel: Relation, home: str) -> str:
    return rel.name if rel.schema == home else f"{rel.schema}.{rel.name}"


def log_entries(tx: Transaction, specs: dict[str, list[CaptureSpec]], home: str
                ) -> list[tuple[CaptureSpec, Relation, list[dict[str, Any]]]]:
    """The log rows a transaction makes, as runs of one map on one relation, in the order
    the rows were changed: each entry's ``op`` with the map's columns of its ``o`` (old) and
    ``n`` (new) versions, as the triggers log them: an update that changes none of the
    map's columns logs nothing, one that changes the key logs a delete and an insert, and a
    map whose columns are gone from the table logs a marker (``op`` X, ``reason``)."""
    out: list[tuple[CaptureSpec, Relation, list[dict[str, Any]]]] = []
    for ch in tx.changes:
        if ch.own:
            continue
        rel = ch.rel
        for spec in specs.get(_local(rel, home), ()):
            names = {c for c, _t in rel.columns}
            gone = [c for c in spec.needed if c not in names]
            if gone:
                reason = (f"capture of map {spec.map!r} on table {spec.table!r} cannot record "
                          f"column(s) {', '.join(gone)} (renamed or dropped)")
                rows: list[dict[str, Any]] = [{"op": MARKER, "reason": reason}]
            elif ch.op in ("U", "D") and ch.old is None:
                rows = [{"op": MARKER, "reason": f"capture of map {spec.map!r}: table "
                         f"{spec.table!r} does not log old versions (REPLICA IDENTITY is not "
                         "FULL)"}]
            else:
                rows = _rows(ch, spec)
            if not rows:
                continue
            if out and out[-1][0] is spec and out[-1][1] is rel:
                out[-1][2].extend(rows)
            else:
                out.append((spec, rel, rows))
    return out


def _rows(ch: RowChange, spec: CaptureSpec) -> list[dict[str, Any]]:
    def part(values: dict[str, str | None] | None) -> dict[str, str | None] | None:
        return None if values is None else {c: values.get(c) for c in spec.needed}

    old, new = part(ch.old), part(ch.new)
    if ch.op == "I":
        return [{"op": "I", "n": new}]
    if ch.op == "D":
        return [{"op": "D", "o": old}] if old is not None else []
    assert old is not None and new is not None
    okey = [old[k] for k in spec.key]
    nkey = [new[k] for k in spec.key]
    if okey != nkey or None in okey:
        return [{"op": "D", "o": old}, {"op": "I", "n": new}]
    if all(old[c] == new[c] for c in spec.columns):
        return []  # none of the map's columns changed: not logged, as by the triggers
    return [{"op": "U", "o": old, "n": new}]


def insert_sql(spec: CaptureSpec, rel: Relation, types: dict[int, str]) -> str:
    """The statement that logs a run of one map's rows (a JSON array, ``%(rows)s``) the way
    its triggers would: the database reads each printed value with its type's input function
    and encodes it with ``row_to_json``, as the trigger does from the row itself."""
    typ = {c: t for c, t in rel.columns}

    def value(src: str, c: str) -> str:
        if c not in typ:  # gone from the table: only markers are logged from it
            return "NULL"
        cast = f"CAST({src}->>{_pg_string(c)} AS {types[typ[c]]})"
        return f"CAST({cast} AS text)" if typ[c] in _JSON_TYPES else cast

    def version(src: str) -> str:
        cols = ", ".join(f"{value(src, c)} AS {_dq(c)}" for c in spec.columns)
        return (f"CASE WHEN {src} IS NULL THEN NULL ELSE "
                f"(SELECT row_to_json(v.*) FROM (SELECT {cols}) AS v) END")

    either = "COALESCE(r.e->'n', r.e->'o')"
    old, new = version("r.e->'o'"), version("r.e->'n'")
    key = ("json_build_array(" + ", ".join(
        f"CAST({either}->>{_pg_string(k)} AS {types[typ[k]]})" if k in typ else "NULL"
        for k in spec.key) + ")::text")
    return (f"INSERT INTO {CHANGES} (map, txid, op, k, old, new, v, at) "
            f"SELECT %(m)s, %(x)s, r.e->>'op', CASE WHEN r.e->>'op' = '{MARKER}' THEN '[]' "
            f"ELSE {key} END, {old}, "
            f"CASE WHEN r.e->>'op' = '{MARKER}' THEN json_build_object('reason', "
            f"r.e->>'reason') ELSE {new} END, "
            "%(v)s, %(at)s FROM jsonb_array_elements(%(rows)s::jsonb) WITH ORDINALITY "
            "AS r(e, i) ORDER BY r.i")


def full_xid(xid: int, next_xid: int) -> int:
    """The 64-bit id (``pg_current_xact_id()``, as the triggers log it) of a 32-bit ``xid``
    that is before ``next_xid`` (a 64-bit id)."""
    full = (next_xid & ~0xFFFFFFFF) | xid
    return full - (1 << 32) if full >= next_xid else full


# -- the wake-up -------------------------------------------------------------------------------
class PipeSignal:
    """A :class:`ChangeSignal` the decoder sets when it has logged changes (in-process)."""

    def __init__(self, owner: Decoder) -> None:
        self.owner = owner
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)

    def fileno(self) -> int:
        return self.r

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.w, b"x")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.r, 4096):
                pass

    def close(self) -> None:
        self.owner.unsubscribe(self)
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)


# -- the decoder -------------------------------------------------------------------------------
class Decoder:
    """The thread that streams the slot into the log (see the module doc). Started by
    :meth:`LogicalCaptureLog.listen` or :meth:`~LogicalCaptureLog.catch_up`, stopped when
    its last listener closes (another process may then take the slot over) or the log is
    closed."""

    def __init__(self, log_: LogicalCaptureLog) -> None:
        self.log = log_
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._signals: list[PipeSignal] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        #: the WAL position (LSN) up to which every committed transaction is in the log
        self.reached = 0
        #: the position a catch-up waits for (0: none)
        self.wanted = 0
        #: why the stream stopped last (None: it runs)
        self.error: str | None = None
        #: a fault injected by tests: called after the log's commit, before the slot is told
        self.after_commit: Any = None

    @property
    def listened(self) -> bool:
        """Whether someone listens (an applier that reads when woken)."""
        with self._lock:
            return bool(self._signals)

    def subscribe(self) -> PipeSignal:
        signal = PipeSignal(self)
        with self._lock:
            self._signals.append(signal)
        self.start()
        return signal

    def unsubscribe(self, signal: PipeSignal) -> None:
        with self._lock:
            if signal in self._signals:
                self._signals.remove(signal)
            last = not self._signals
        if last:
            self.stop()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"dualwrite-decoder-{self.log.slot}")
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        self._stop.set()
        self._poke()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def wait_for(self, lsn: int, timeout: float) -> bool:
        """Wait until everything committed before ``lsn`` is in the log."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self.wanted = max(self.wanted, lsn)
        self.start()
        self._poke()
        with self._lock:
            while self.reached < lsn:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.05))
                if self.reached < lsn:
                    self._poke()
            return True

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self._stream()
                backoff = 0.1
            except Exception as exc:  # reconnect with backoff; the applier polls meanwhile
                if self._stop.is_set():
                    break
                self.error = str(exc).strip()
                log.warning("logical decoding of %s: %s; retrying", self.log.connector.name,
                            self.error)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _stream(self) -> None:
        import psycopg2
        import psycopg2.extras

        lg = self.log
        done = lg.recorded_lsn()
        specs = lg.load_specs()
        conn = psycopg2.connect(**lg.replication_params(),
                                connection_factory=psycopg2.extras.LogicalReplicationConnection)
        try:
            cur = conn.cursor()
            cur.start_replication(slot_name=lg.slot, decode=False, options={
                "proto_version": "1", "publication_names": lg.slot, "messages": "true"})
            self.error = None
            proto = PgOutput()
            pending: list[Transaction] = []
            rows = 0
            confirmed = 0  # the end of the last transaction received, all logged before it
            told = 0  # the position last confirmed to the server
            asked = 0.0
            while not self._stop.is_set():
                msg = cur.read_message()
                if msg is not None:
                    tx = proto.feed(msg.payload)
                    if tx is not None:
                        specs = lg.follow_specs(tx, specs)
                        if tx.commit_lsn > done and any(not c.own for c in tx.changes):
                            pending.append(tx)
                            rows += len(tx.changes)
                        confirmed = max(confirmed, tx.end_lsn)
                        if rows >= 50_000:  # a large backlog: log it in parts
                            done = self._flush(cur, pending, specs, confirmed)
                            pending, rows = [], 0
                    continue
                if pending:
                    done = self._flush(cur, pending, specs, confirmed)
                    pending, rows = [], 0
                elif confirmed > told and not proto.in_transaction:
                    cur.send_feedback(flush_lsn=confirmed)
                    told = confirmed
                if not proto.in_transaction:
                    with self._lock:
                        end = max(int(cur.wal_end or 0), confirmed)
                        if end > self.reached:
                            self.reached = end
                            self._lock.notify_all()
                        wanted = self.wanted > self.reached
                else:
                    wanted = False
                now = time.monotonic()
                if wanted and now - asked > 0.002:
                    cur.send_feedback(reply=True)  # a keepalive tells how far the server sent
                    asked = now
                ready, _w, _x = select.select([cur, self._wake_r], [], [],
                                              0.01 if wanted else 1.0)
                if self._wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _flush(self, cur: Any, pending: list[Transaction],
               specs: dict[str, list[CaptureSpec]], confirmed: int) -> int:
        """Log ``pending`` (one transaction of the log's own, with the LSN reached), commit,
        then confirm the slot and wake the listeners; returns the LSN recorded."""
        done = self.log.write(pending, specs)
        if self.after_commit is not None:
            self.after_commit()
        cur.send_feedback(flush_lsn=max(confirmed, pending[-1].end_lsn))
        with self._lock:
            signals = list(self._signals)
        for s in signals:
            s.set()
        return done


# -- the log -----------------------------------------------------------------------------------
class LogicalCaptureLog(CaptureLog):
    """A :class:`CaptureLog` filled by logical decoding instead of triggers (see the module
    doc). Reading, applied positions, fences and forgetting are the trigger log's."""

    connector: PostgresConnector

    def __init__(self, connector: PostgresConnector) -> None:
        super().__init__(connector)
        self._decoder: Decoder | None = None
        self._types: dict[int, str] = {}
        self._sql: dict[tuple[str, int, tuple[tuple[str, int], ...]], str] = {}

    @property
    def slot(self) -> str:
        """The slot's and the publication's name: the environment's, in its database and
        schema (slot names are the whole server's)."""
        self.locate()
        database = self.connector.engine.url.database or ""
        digest = hashlib.sha1(
            f"{database}\0{self.dialect.home}\0{self.connector.name}".encode())
        return "dualwrite_" + digest.hexdigest()[:16]

    @property
    def decoder(self) -> Decoder:
        if self._decoder is None:
            self._decoder = Decoder(self)
        return self._decoder

    # -- set-up ------------------------------------------------------------------------------
    def capture_requirements(self) -> list[str]:
        """What the server lacks for logical capture: ``wal_level``, the role's REPLICATION
        (empty: nothing)."""
        c = self.connector
        with c.translating("check logical decoding"), c.engine.connect() as conn:
            level, may = conn.execute(sa.text(
                "SELECT current_setting('wal_level'), r.rolsuper OR r.rolreplication "
                "FROM pg_catalog.pg_roles r WHERE r.rolname = current_user")).one()
            conn.rollback()
        out = []
        if level != "logical":
            out.append(f"wal_level is {level!r}, not 'logical' (set `wal_level = logical` "
                       "and restart PostgreSQL, or use `capture: triggers`)")
        if not may:
            out.append("the role may not use replication slots (grant it: ALTER ROLE ... "
                       "REPLICATION, or use `capture: triggers`)")
        return out

    def ensure(self) -> None:
        if self._ready:
            return
        missing = self.capture_requirements()
        if missing:
            raise TerminalConnectorError(
                f"environment {self.connector.name!r} cannot capture by logical decoding: "
                + "; ".join(missing), environment=self.connector.name,
                hint="fix the server as said, or set `capture: triggers` for the environment")
        super().ensure()
        self._ready = False
        slot = self.slot
        self._ddl([
            f"CREATE TABLE IF NOT EXISTS {SPECS} (tag text PRIMARY KEY, map text NOT NULL, "
            "tbl text NOT NULL, k text NOT NULL, cols text NOT NULL, v text NOT NULL)",
            f"ALTER TABLE {SPECS} REPLICA IDENTITY FULL",
            # the LSN as a number (a pg_lsn column would puzzle catalog readers)
            f"CREATE TABLE IF NOT EXISTS {SLOT_TABLE} (slot text PRIMARY KEY, "
            "lsn bigint NOT NULL)",
            "CREATE OR REPLACE FUNCTION dualwrite_mark() RETURNS trigger LANGUAGE plpgsql AS "
            f"$dw$ BEGIN PERFORM pg_logical_emit_message(true, '{PREFIX}', "
            "current_setting('dualwrite.origin', true)); RETURN NULL; END $dw$",
            f"DO $dw$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE "
            f"pubname = '{slot}') THEN CREATE PUBLICATION {slot} FOR TABLE {SPECS}; "
            "END IF; END $dw$",
        ], "set up logical capture")
        self._create_slot(slot)
        self._ready = True

    def _create_slot(self, slot: str) -> None:
        """The slot, made outside any transaction that wrote (PostgreSQL requires it); it
        waits for the transactions running now to end."""
        c = self.connector
        with c.translating("create the replication slot"), \
                c.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            there = conn.execute(sa.text(
                "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = :s"),
                {"s": slot}).first()
            if there is None:
                try:
                    conn.execute(sa.text(
                        "SELECT pg_create_logical_replication_slot(:s, 'pgoutput')"),
                        {"s": slot})
                except sa.exc.DBAPIError:
                    if conn.execute(sa.text(  # another process made it meanwhile
                            "SELECT 1 FROM pg_catalog.pg_replication_slots "
                            "WHERE slot_name = :s"), {"s": slot}).first() is None:
                        raise

    def install(self, spec: CaptureSpec) -> None:
        self.ensure()
        c = self.connector
        t = self.dialect._table(spec.table)  # type: ignore[attr-defined]
        with c.translating(f"install capture on {spec.table}"), c.engine.begin() as conn:
            self.dialect.lock_ddl(conn)
            capturable(self.dialect, conn, spec, c.name)
            for statement in self._install_ddl(spec, t, conn):
                conn.exec_driver_sql(statement)
            conn.execute(sa.text(
                f"INSERT INTO {SPECS} (tag, map, tbl, k, cols, v) VALUES (:t, :m, :b, :k, :c, "
                ":v) ON CONFLICT (tag) DO UPDATE SET map = EXCLUDED.map, tbl = EXCLUDED.tbl, "
                "k = EXCLUDED.k, cols = EXCLUDED.cols, v = EXCLUDED.v"),
                {"t": spec.tag, "m": spec.map, "b": spec.table, "k": json.dumps(spec.key),
                 "c": json.dumps(spec.columns), "v": spec.version})
        # the triggers of `capture: triggers` (an environment switched over), once the
        # decoder's capture is in place (a change meanwhile is logged twice, applied once)
        self._ddl(self.dialect.remove_ddl(spec.tag, spec.table) +
                  self.dialect.remove_ddl(spec.legacy_tag, spec.table),
                  f"remove trigger capture from {spec.table}")

    def _install_ddl(self, spec: CaptureSpec, t: str, conn: sa.Connection) -> list[str]:
        out = [f"ALTER TABLE {t} REPLICA IDENTITY FULL",
               f"DROP TRIGGER IF EXISTS {spec.tag}_o ON {t}",
               f"CREATE TRIGGER {spec.tag}_o BEFORE INSERT OR UPDATE OR DELETE ON {t} "
               "FOR EACH STATEMENT WHEN (current_setting('dualwrite.origin', true) IN "
               "('on', 'queue')) EXECUTE FUNCTION dualwrite_mark()"]
        published = conn.execute(sa.text(
            "SELECT 1 FROM pg_catalog.pg_publication_rel p JOIN pg_catalog.pg_publication b "
            "ON b.oid = p.prpubid WHERE b.pubname = :p AND p.prrelid = to_regclass(:t)"),
            {"p": self.slot, "t": t}).first()
        if published is None:
            out.append(f"ALTER PUBLICATION {self.slot} ADD TABLE {t}")
        return out

    def remove(self, spec: CaptureSpec) -> None:
        super().remove(spec)  # the trigger mode's objects, and the queued changes
        if not self._exists():
            return
        c = self.connector
        t = self.dialect._table(spec.table)  # type: ignore[attr-defined]
        with c.translating(f"remove capture from {spec.table}"), c.engine.begin() as conn:
            self.dialect.lock_ddl(conn)
            conn.exec_driver_sql(
                f"DO $dw$ BEGIN IF to_regclass({_pg_string(t)}) IS NOT NULL THEN "
                f"EXECUTE 'DROP TRIGGER IF EXISTS {spec.tag}_o ON ' || "
                f"{_pg_string(t)}; END IF; END $dw$")
            conn.execute(sa.text(f"DELETE FROM {SPECS} WHERE tag = :t"), {"t": spec.tag})
            others = conn.execute(sa.text(f"SELECT 1 FROM {SPECS} WHERE tbl = :b"),
                                  {"b": spec.table}).first()
            if others is None:  # the table's last map: out of the publication
                conn.exec_driver_sql(
                    "DO $dw$ BEGIN IF EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel p "
                    "JOIN pg_catalog.pg_publication b ON b.oid = p.prpubid WHERE b.pubname = "
                    f"'{self.slot}' AND p.prrelid = to_regclass({_pg_string(t)})) THEN "
                    f"EXECUTE 'ALTER PUBLICATION {self.slot} DROP TABLE ' || "
                    f"{_pg_string(t)}; END IF; END $dw$")
            last = conn.execute(sa.text(f"SELECT 1 FROM {SPECS}")).first() is None
        if last:
            # nothing captured any more: a slot nobody reads would keep WAL for ever. Dropped
            # unless a decoder streams it now (that applier keeps reading it; the next
            # install makes one again where it is gone)
            with c.translating("drop the replication slot"), \
                    c.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as cx:
                cx.execute(sa.text(
                    "SELECT pg_drop_replication_slot(slot_name) FROM "
                    "pg_catalog.pg_replication_slots WHERE slot_name = :s AND NOT active"),
                    {"s": self.slot})
            self._ready = False  # the next install makes the slot again

    def check(self, spec: CaptureSpec) -> list[str]:
        """What is wrong with the installed capture of one map: the change log or the table
        missing, columns gone, the table not published, not logging old versions (REPLICA
        IDENTITY not FULL), the marking trigger missing; and the slot missing, inactive or
        far behind (it keeps WAL from its position on)."""
        self.locate()
        c = self.connector
        where = f"map {spec.map!r}, table {spec.table!r}"
        t = self.dialect._table(spec.table)  # type: ignore[attr-defined]
        with c.translating(f"check capture on {spec.table}"), c.engine.connect() as conn:
            problems, encodings = self._check_table(conn, spec)
            if encodings is None:
                return problems
            ident, published, marked = conn.execute(sa.text(
                "SELECT c.relreplident, EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel p "
                "JOIN pg_catalog.pg_publication b ON b.oid = p.prpubid WHERE b.pubname = :p "
                "AND p.prrelid = c.oid), EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g WHERE "
                "g.tgrelid = c.oid AND g.tgname = :g AND g.tgenabled <> 'D') "
                "FROM pg_catalog.pg_class c WHERE c.oid = to_regclass(:t)"),
                {"p": self.slot, "t": t, "g": f"{spec.tag}_o"}).one()
            conn.rollback()
        if ident != "f":
            problems.append(f"{where}: REPLICA IDENTITY is not FULL (old versions are not "
                            "logged)")
        if not published:
            problems.append(f"{where}: the table is not in publication {self.slot}")
        if not marked:
            problems.append(f"{where}: the marking trigger {spec.tag}_o is missing or disabled "
                            "(dualwrite's own writes would be captured back)")
        return problems + self.capture_warnings()

    def capture_warnings(self, *, before_install: bool = False) -> list[str]:
        """The slot missing (unless ``before_install``: the first ``maps start`` makes it),
        or holding back more than :data:`SLOT_BEHIND_WARN` bytes of WAL (an abandoned slot
        keeps every segment from its position on)."""
        c = self.connector
        with c.translating("look at the replication slot"), c.engine.connect() as conn:
            row = conn.execute(sa.text(
                "SELECT active, pg_wal_lsn_diff(pg_current_wal_lsn(), "
                "COALESCE(confirmed_flush_lsn, restart_lsn))::bigint "
                "FROM pg_catalog.pg_replication_slots WHERE slot_name = :s"),
                {"s": self.slot}).first()
            conn.rollback()
        if row is None:
            return [] if before_install else [
                f"replication slot {self.slot} is missing (nothing is captured: stop and "
                "start the maps)"]
        if int(row[1] or 0) > SLOT_BEHIND_WARN:
            return [f"replication slot {self.slot} is {int(row[1]) >> 20} MiB of WAL behind"
                    f"{'' if row[0] else ' and no applier reads it'} (PostgreSQL keeps that "
                    "WAL until it is read: run `dualwrite run`, or `dualwrite uninstall` to "
                    "drop the slot)"]
        return []

    def uninstall(self, *, dry_run: bool = False) -> list[str]:
        """The trigger log's :meth:`CaptureLog.uninstall`, and the slot and the publication
        first (a slot left behind would keep WAL for ever)."""
        self.locate()
        slot = self.slot
        c = self.connector
        with c.translating("list dualwrite's slot"), c.engine.connect() as conn:
            has_slot = conn.execute(sa.text(
                "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = :s"),
                {"s": slot}).first() is not None
            has_pub = conn.execute(sa.text(
                "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = :s"),
                {"s": slot}).first() is not None
            conn.rollback()
        found = ([f"replication slot {slot}"] if has_slot else []) + \
            ([f"publication {slot}"] if has_pub else [])
        if not dry_run:
            if self._decoder is not None:
                self._decoder.stop()
            if has_slot:
                self._drop_slot(slot)
            if has_pub:
                self._ddl([f"DROP PUBLICATION IF EXISTS {slot}"], "drop the publication")
        # the marking function goes with the triggers' (the trigger log's own_objects)
        return found + super().uninstall(dry_run=dry_run)

    def _drop_slot(self, slot: str, wait: float = 10.0) -> None:
        """Drop the slot once no session streams it: a decoder just stopped lets go of it
        within moments (its server process ends); one of another process is not waited for
        longer than ``wait`` seconds."""
        c = self.connector
        deadline = time.monotonic() + wait
        with c.translating("drop the replication slot"), \
                c.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            while True:
                active = conn.execute(sa.text(
                    "SELECT active_pid FROM pg_catalog.pg_replication_slots "
                    "WHERE slot_name = :s"), {"s": slot}).first()
                if active is None:
                    return
                if active[0] is None:
                    with contextlib.suppress(sa.exc.OperationalError):
                        conn.execute(sa.text("SELECT pg_drop_replication_slot(:s)"),
                                     {"s": slot})
                        return
                if time.monotonic() > deadline:
                    raise TerminalConnectorError(
                        f"replication slot {slot} is in use by server process {active[0]}",
                        environment=c.name, hint="stop the `dualwrite run` or `serve` that "
                        "applies this link, then uninstall again")
                time.sleep(0.05)

    # -- the decoder's database work -----------------------------------------------------------
    def replication_params(self) -> dict[str, Any]:
        """psycopg2 connection parameters of a replication session: the connector's
        (host, port, user, database, and the URL's own), printing values as the triggers."""
        c = self.connector
        _args, params = c.engine.dialect.create_connect_args(c.engine.url)
        out = {k: v for k, v in params.items() if isinstance(v, str | int)}
        out.pop("options", None)
        out.update(options=_OPTIONS, application_name="dualwrite-decoder",
                   connect_timeout=10)
        return out

    def recorded_lsn(self) -> int:
        """The commit LSN up to which the log holds every transaction (0: none yet)."""
        self.ensure()
        c = self.connector
        with c.translating("read the decoder's position"), c.engine.connect() as conn:
            got = conn.execute(sa.text(
                f"SELECT lsn FROM {SLOT_TABLE} WHERE slot = :s"),
                {"s": self.slot}).scalar()
            conn.rollback()
        return int(got or 0)

    def load_specs(self) -> dict[str, list[CaptureSpec]]:
        """What each captured table's maps capture, as installed now."""
        c = self.connector
        with c.translating("read what is captured"), c.engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT map, tbl, k, cols, v FROM {SPECS}")).all()
            conn.rollback()
        out: dict[str, list[CaptureSpec]] = {}
        for m, tbl, k, cols, v in rows:
            spec = CaptureSpec(str(m), str(tbl), tuple(json.loads(k)), tuple(json.loads(cols)),
                               str(v))
            out.setdefault(spec.table, []).append(spec)
        return out

    def follow_specs(self, tx: Transaction, specs: dict[str, list[CaptureSpec]]
                     ) -> dict[str, list[CaptureSpec]]:
        """``specs`` after the changes ``tx`` made to them (an install, a reload or a
        removal takes effect exactly where it committed in the WAL)."""
        ours = [ch for ch in tx.changes if _local(ch.rel, self.dialect.home) == SPECS]
        if not ours:
            return specs
        by_tag = {s.tag: s for group in specs.values() for s in group}
        for ch in ours:
            if ch.old is not None and ch.old.get("tag"):
                by_tag.pop(str(ch.old["tag"]), None)
            if ch.new is not None:
                n = ch.new
                spec = CaptureSpec(str(n["map"]), str(n["tbl"]), tuple(json.loads(str(n["k"]))),
                                   tuple(json.loads(str(n["cols"]))), str(n["v"] or ""))
                by_tag[spec.tag] = spec
        out: dict[str, list[CaptureSpec]] = {}
        for spec in by_tag.values():
            out.setdefault(spec.table, []).append(spec)
        tx.changes = [ch for ch in tx.changes if ch not in ours]
        return out

    def write(self, txs: Sequence[Transaction], specs: dict[str, list[CaptureSpec]]) -> int:
        """Log the rows of ``txs`` and record the last one's commit LSN, in one transaction;
        returns that LSN."""
        c = self.connector
        home = self.dialect.home
        lsn = txs[-1].commit_lsn
        with c.translating("log decoded changes"), c.engine.begin() as conn:
            raw: Any = conn.connection.driver_connection
            with raw.cursor() as cur:
                cur.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
                row = cur.fetchone()
                next_xid = int(row[0]) if row else 0
                for tx in txs:
                    xid = full_xid(tx.xid, next_xid)
                    for spec, rel, rows in log_entries(tx, specs, home):
                        cur.execute(self._insert(cur, spec, rel),
                                    {"m": spec.map, "x": xid, "v": spec.version, "at": tx.at,
                                     "rows": json.dumps(rows)})
                cur.execute(f"INSERT INTO {SLOT_TABLE} (slot, lsn) VALUES (%(s)s, %(l)s) "
                            "ON CONFLICT (slot) DO UPDATE SET lsn = EXCLUDED.lsn",
                            {"s": self.slot, "l": lsn})
        return lsn

    def _insert(self, cur: Any, spec: CaptureSpec, rel: Relation) -> str:
        shape = (spec.tag, rel.relid, tuple(rel.columns))
        text = self._sql.get(shape)
        if text is None:
            for _c, typ in rel.columns:
                if typ not in self._types:
                    cur.execute("SELECT format_type(%s::oid, NULL)", (typ,))
                    got = cur.fetchone()
                    self._types[typ] = str(got[0])
            text = self._sql[shape] = insert_sql(spec, rel, self._types)
        return text

    # -- reading -----------------------------------------------------------------------------
    def read_start(self, maps: Sequence[str], limit: int
                   ) -> tuple[list[Change], Future[list[Change]] | None]:
        """:meth:`CaptureLog.read_start`. A reader that does not listen (a one-off read, a
        test) reads what was committed before it asked: the decoder catches up first. One
        that listens (the applier) reads what was logged when it was woken, and is woken
        again for more."""
        if maps and not self.decoder.listened:
            self.catch_up()
        return super().read_start(maps, limit)

    # -- waiting -----------------------------------------------------------------------------
    def listen(self) -> ChangeSignal | None:
        """The decoder's in-process wake-up (starting the decoder: the process that listens
        is the one that applies)."""
        self.ensure()
        return self.decoder.subscribe()

    def catch_up(self, sess: WriteSession | None = None) -> bool:
        """Wait until the decoder has logged every transaction committed before now (the WAL
        flushed as ``sess`` sees it): see the module doc."""
        self.ensure()
        c = self.connector
        if sess is not None:
            from dualwrite.connectors.capture import _sql

            lsn = _sql(sess).execute(sa.text(
                "SELECT pg_current_wal_flush_lsn() - '0/0'::pg_lsn")).scalar()
        else:
            with c.translating("read the WAL position"), c.engine.connect() as conn:
                lsn = conn.execute(sa.text(
                    "SELECT pg_current_wal_flush_lsn() - '0/0'::pg_lsn")).scalar()
                conn.rollback()
        decoder = self.decoder
        if not decoder.wait_for(int(lsn or 0), CATCH_UP_TIMEOUT):
            raise TransientConnectorError(
                f"the decoder of {c.name} did not catch up with the WAL within "
                f"{CATCH_UP_TIMEOUT:g} s" + (f" ({decoder.error})" if decoder.error else ""),
                environment=c.name, hint="retried; if it lasts, see that the slot "
                f"{self.slot} is not in use by another process (pg_replication_slots)")
        return True

    def close(self) -> None:
        super().close()
        if self._decoder is not None:
            self._decoder.stop()


@contextlib.contextmanager
def decoding(log_: LogicalCaptureLog) -> Iterator[Decoder]:
    """The decoder of ``log_`` running for the block (tests, benchmarks)."""
    signal = log_.decoder.subscribe()
    try:
        yield log_.decoder
    finally:
        signal.close()


__all__ = ["Decoder", "LogicalCaptureLog", "PgOutput", "decoding", "full_xid", "insert_sql",
           "log_entries"]
