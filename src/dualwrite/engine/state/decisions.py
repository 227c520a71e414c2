"""Two-phase commit decisions, made durable (in the journal beside a SQLite store, or
committed), and the audit log written with them."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from dualwrite.connectors.stores import batch_decisions_sql, is_embedded
from dualwrite.engine.journal import DecisionJournal, drain_in_background
from dualwrite.engine.state.base import StoreBase
from dualwrite.engine.state.codec import decode_values, encode_values, now_iso
from dualwrite.engine.state.records import AuditEntry, _Pending
from dualwrite.engine.state.schema import audit_log, coordinator_log

log = logging.getLogger(__name__)

#: the audit log's columns after ``at``, as one statement writes them (see
#: dualwrite.connectors.stores.batch_decisions_sql)
_AUDIT_COLUMNS = ("xid", "principal", "environment", "table_name", "row_key", "operation",
                  "map")
#: that statement per SQLAlchemy dialect name (None: the database has none)
_AT_ONCE: dict[str, str | None] = {}


#: an audit row as a decision record holds it: environment, table, key (encoded, see
#: dualwrite.engine.state.codec.encode_values), operation, map
AuditRow = list[Any]
#: one decision made durable elsewhere (see DecisionsState.note_decision): when, the xid,
#: participants, principal, audit rows, whether every branch committed, and what deletes its
#: row where it was made
Decided = tuple[str, str, list[str], str, list[AuditRow], bool,
                Callable[[Sequence[str]], None] | None]


def audit_rows(audit: Sequence[AuditEntry]) -> list[AuditRow]:
    """Audit entries as a decision record (and the state store's audit log) hold them."""
    return [[a.environment, a.table, encode_values(a.key), a.operation, a.map] for a in audit]


class DecidedElsewhere:
    """Decisions whose durable record is a last resource's decision row, on their way into
    the state store: written by the journal's background thread (every
    :data:`~dualwrite.engine.journal.DRAIN_SECONDS`) and by every reader that settles
    first; then their rows are deleted where they were made."""

    def __init__(self, sink: Callable[[list[Decided]], None]) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()  # one writer at a time: the order is kept
        self._items: list[Decided] = []
        #: rows written to the state store whose deletion failed: retried at the next drain
        self._unforgotten: list[tuple[Callable[[Sequence[str]], None], list[str]]] = []
        self._forgetting = True  # False once the connectors that delete the rows close

    def stop_forgetting(self) -> None:
        """From now on, leave decision rows where they are (recovery deletes them later):
        the connectors that delete them are closing. Waits for a drain under way, so that
        none uses a connector while it is disposed of (its session would be orphaned)."""
        with self._drain_lock:
            self._forgetting = False
            self._unforgotten = []

    @property
    def pending(self) -> bool:
        return bool(self._items or self._unforgotten)

    @property
    def writing(self) -> bool:
        """A drain is under way: decisions it took may not be in the state store yet
        (``pending`` no longer counts them)."""
        return self._drain_lock.locked()

    def add(self, item: Decided) -> None:
        with self._lock:
            self._items.append(item)
        drain_in_background(self)

    def drain(self) -> None:
        """Write every decision noted so far into the state store (the error is raised,
        the decisions kept, where it cannot be written), then delete their rows (a deletion
        that fails is retried at the next drain; recovery would also find and skip them)."""
        with self._drain_lock:
            with self._lock:
                items, self._items = self._items, []
                retry, self._unforgotten = self._unforgotten, []
            if items:
                try:
                    self._sink(items)
                except BaseException:
                    with self._lock:
                        self._items = items + self._items
                        self._unforgotten = retry + self._unforgotten
                    raise
            if not self._forgetting:
                return
            groups: dict[Callable[[Sequence[str]], None], list[str]] = {}
            for forget, xids in retry:
                groups.setdefault(forget, []).extend(xids)
            for item in items:
                if item[6] is not None:
                    groups.setdefault(item[6], []).append(item[1])
            for forget, xids in groups.items():
                try:
                    forget(xids)
                except Exception:  # the rows stay a while longer: harmless, retried
                    log.warning("could not delete %d decision rows already in the state "
                                "store; retrying", len(xids), exc_info=True)
                    with self._lock:
                        self._unforgotten.append((forget, xids))


class DecisionsState(StoreBase):
    """Two-phase commit decisions (a part of :class:`StateStore`)."""

    #: the group writer's queue (see log_commit_decision) and the journal beside a SQLite store
    _cv: threading.Condition
    _queue: list[_Pending]
    _completed: list[str]
    _writing: bool
    _journal: DecisionJournal | None
    _decided: DecidedElsewhere

    # -- decisions made durable by a last resource --------------------------------------
    def note_decision(self, xid: str, participants: Sequence[str], principal: str,
                      audit: list[AuditRow], *, completed: bool,
                      forget: Callable[[Sequence[str]], None] | None) -> None:
        """Learn a commit decision already durable elsewhere (a last resource's decision
        row, see :class:`dualwrite.engine.live.Coordinator`), with its audit rows; they
        reach the state store within a fraction of a second (``decision``, ``audit`` and
        recovery settle first, so they see it at once), after which ``forget([xid])``
        deletes the row. Nothing is written on the caller's path; a crash before that is
        made good by recovery, which reads the rows that are left."""
        self._decided.add((now_iso(), xid, list(participants), principal, audit,
                           completed, forget))

    def flush_decided(self, *, closing: bool = False) -> None:
        """Write the decisions noted from last resources into the state store now, and
        delete their rows; ``closing``: the connectors that delete them close next, so no
        later drain touches them."""
        try:
            # a drain under way (the background thread's) holds decisions that pending no
            # longer counts: draining waits for it, so that what follows reads them
            if self._decided.pending or self._decided.writing:
                self._decided.drain()
        finally:
            if closing:
                self._decided.stop_forgetting()

    def import_decisions(self, decided: list[Decided]) -> None:
        """Write decisions made durable elsewhere into the state store, now (recovery);
        those it already holds are skipped (their completion is still noted)."""
        self._write_decided(decided)
        for item in decided:
            if item[6] is not None:
                item[6]([item[1]])

    def _write_decided(self, decided: list[Decided]) -> None:
        """The sink of :class:`DecidedElsewhere`: one transaction, idempotent."""
        xids = [d[1] for d in decided]
        completed = [d[1] for d in decided if d[5]]
        now = now_iso()
        if is_embedded(self.engine):
            self._write_decisions_direct(
                [(d[1], json.dumps(d[2]), d[0]) for d in decided],
                [(d[0], d[1], d[3], *a) for d in decided for a in d[4]], completed, now,
                skip_present=True)
            return
        present: set[str] = set()
        with self.engine.connect() as conn:
            for i in range(0, len(xids), 500):
                present.update(conn.execute(sa.select(coordinator_log.c.xid).where(
                    coordinator_log.c.xid.in_(xids[i:i + 500]))).scalars())
        fresh = [d for d in decided if d[1] not in present]
        with self.engine.begin() as conn:
            if fresh:
                conn.execute(sa.insert(coordinator_log), [
                    {"xid": d[1], "decision": "commit", "participants": json.dumps(d[2]),
                     "decided_at": d[0]} for d in fresh])
            rows = [dict(zip(("at", "xid", "principal", *_AUDIT_COLUMNS[2:]),
                             (d[0], d[1], d[3], *a), strict=True))
                    for d in fresh for a in d[4]]
            if rows:
                conn.execute(sa.insert(audit_log), rows)
            if completed:
                for i in range(0, len(completed), 500):
                    conn.execute(sa.update(coordinator_log).where(
                        coordinator_log.c.xid.in_(completed[i:i + 500]),
                        coordinator_log.c.completed_at.is_(None)).values(completed_at=now))

    # -- two-phase commit decisions and the audit log --------------------------------
    def log_commit_decision(self, xid: str, participants: Sequence[str], principal: str,
                            audit: Sequence[AuditEntry]) -> None:
        """Record, durably, that ``xid`` commits, with its audit rows; returns once they are
        on disk.

        Called after every branch is prepared and before the first is committed: from here on
        recovery commits the branches. A crash before this point leaves no decision, and
        recovery rolls the branches back (presumed abort).

        Group commit: concurrent callers are written together in one write (one flush for
        all of them: a journal record, or a state-store transaction where there is no
        journal); the first caller to arrive writes for everyone queued, the others wait for
        it. Completions noted with :meth:`complete` ride along with the state-store write
        (with the journal's drain, when decisions are journalled)."""
        item = _Pending(xid, list(participants), principal, list(audit))
        with self._cv:
            self._queue.append(item)
            while not item.done:
                if self._writing:
                    self._cv.wait()
                    continue
                self._writing = True
                batch, self._queue = self._queue, []
                completed: list[str] = []
                if self._journal is None:  # journalled, they go with the drain instead
                    completed, self._completed = self._completed, []
                self._cv.release()
                error: BaseException | None = None
                try:
                    self._write_decisions(batch, completed)
                except BaseException as exc:  # every waiter of this batch gets the error
                    error = exc
                finally:
                    self._cv.acquire()
                    self._writing = False
                    for p in batch:
                        p.done, p.error = True, error
                    if error is not None:
                        self._completed = completed + self._completed
                    self._cv.notify_all()
        if item.error is not None:
            raise item.error

    def _write_decisions(self, batch: list[_Pending], completed: list[str]) -> None:
        now = now_iso()
        if self._journal is not None:
            self._journal.append({"at": now, "decisions": [
                [p.xid, p.participants, p.principal,
                 [[a.environment, a.table, encode_values(a.key), a.operation, a.map]
                  for a in p.audit]] for p in batch]})
            return
        if is_embedded(self.engine):
            self._write_decisions_direct(
                [(p.xid, json.dumps(p.participants), now) for p in batch],
                [(now, p.xid, p.principal, a.environment, a.table, encode_values(a.key),
                  a.operation, a.map) for p in batch for a in p.audit], completed, now)
            return
        kind = self.engine.dialect.name
        if kind not in _AT_ONCE:  # the statement's text depends on the database alone
            _AT_ONCE[kind] = batch_decisions_sql(self.engine, coordinator_log.name,
                                                 audit_log.name, _AUDIT_COLUMNS)
        one = _AT_ONCE[kind]
        if one is not None:
            self._write_decisions_at_once(one, batch, completed, now)
            return
        with self.engine.begin() as conn:
            conn.execute(sa.insert(coordinator_log), [
                {"xid": p.xid, "decision": "commit", "participants": json.dumps(p.participants),
                 "decided_at": now} for p in batch])
            audit_rows = [
                {"at": now, "xid": p.xid, "principal": p.principal, "environment": a.environment,
                 "table_name": a.table, "row_key": encode_values(a.key),
                 "operation": a.operation, "map": a.map}
                for p in batch for a in p.audit]
            if audit_rows:
                conn.execute(sa.insert(audit_log), audit_rows)
            if completed:
                conn.execute(sa.update(coordinator_log).where(
                    coordinator_log.c.xid.in_(completed)).values(completed_at=now))

    def _write_decisions_at_once(self, statement: str, batch: list[_Pending],
                                 completed: list[str], now: str) -> None:
        # One statement in autocommit: one round trip and one implicit transaction (against
        # BEGIN, two INSERTs, an UPDATE and COMMIT through SQLAlchemy's Core: about 0.9 ms
        # of Python and five round trips per decision on PostgreSQL).
        audit = [(p.xid, p.principal, a.environment, a.table, encode_values(a.key),
                  a.operation, a.map) for p in batch for a in p.audit]
        params: dict[str, Any] = {
            "now": now, "xids": [p.xid for p in batch],
            "parts": [json.dumps(p.participants) for p in batch], "done": completed}
        for i, name in enumerate(_AUDIT_COLUMNS):
            params[f"a_{name}"] = [row[i] for row in audit]
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(statement, params)

    def _import_journalled(self, payloads: list[Any]) -> None:
        """The journal's sink: its records into coordinator_log and audit_log, with the
        completions noted since, in one transaction; decisions already here are skipped (an
        import that crashed before deleting its file is repeated)."""
        decisions = [(at, d) for p in payloads for at in [p["at"]] for d in p["decisions"]]
        with self._cv:
            completed, self._completed = self._completed, []
        try:
            present: set[str] = set()
            xids = [d[0] for _, d in decisions]
            with self.engine.connect() as conn:
                for i in range(0, len(xids), 500):
                    present.update(conn.execute(sa.select(coordinator_log.c.xid).where(
                        coordinator_log.c.xid.in_(xids[i:i + 500]))).scalars())
            fresh = [(at, d) for at, d in decisions if d[0] not in present]
            self._write_decisions_direct(
                [(d[0], json.dumps(d[1]), at) for at, d in fresh],
                [(at, d[0], d[2], *a) for at, d in fresh for a in d[3]], completed, now_iso())
        except BaseException:
            with self._cv:
                self._completed = completed + self._completed
            raise

    def _write_decisions_direct(self, decisions: list[tuple[str, str, str]],
                                rows: list[tuple[Any, ...]], completed: list[str],
                                now: str, *, skip_present: bool = False) -> None:
        # Plain DB-API calls on a pooled connection, one transaction, one fsync (WAL,
        # synchronous=FULL). ``skip_present``: decisions (and their audit rows) the store
        # already holds are left out, in the same transaction.
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            if skip_present and decisions:
                present: set[str] = set()
                xids = [d[0] for d in decisions]
                for i in range(0, len(xids), 500):
                    chunk = xids[i:i + 500]
                    cur.execute("SELECT xid FROM coordinator_log WHERE xid IN "
                                f"({', '.join('?' * len(chunk))})", chunk)
                    present.update(r[0] for r in cur.fetchall())
                if present:
                    decisions = [d for d in decisions if d[0] not in present]
                    rows = [r for r in rows if r[1] not in present]
            if decisions:
                cur.executemany(
                    "INSERT INTO coordinator_log (xid, decision, participants, decided_at) "
                    "VALUES (?, 'commit', ?, ?)", decisions)
            if rows:
                cur.executemany(
                    "INSERT INTO audit_log (at, xid, principal, environment, table_name, "
                    "row_key, operation, map) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            if completed:
                cur.executemany("UPDATE coordinator_log SET completed_at = ? WHERE xid = ?",
                                [(now, x) for x in completed])
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            raw.close()

    def decision(self, xid: str) -> str | None:
        self.settle()
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(coordinator_log.c.decision).where(
                coordinator_log.c.xid == xid)).first()
        return str(row[0]) if row else None

    def complete(self, xid: str, *, now: bool = False) -> None:
        """Note that every branch of ``xid`` is committed. Written with the next decision
        batch (no write of its own on the hot path) unless ``now``."""
        if not now:
            with self._cv:
                self._completed.append(xid)
            return
        with self.engine.begin() as conn:
            conn.execute(sa.update(coordinator_log).where(coordinator_log.c.xid == xid)
                         .values(completed_at=now_iso()))

    def flush_completions(self) -> None:
        if self._journal is not None and self._journal.pending:
            self._journal.drain()  # completions go with their decisions
        with self._cv:
            completed, self._completed = self._completed, []
        if completed:
            with self.engine.begin() as conn:
                conn.execute(sa.update(coordinator_log).where(
                    coordinator_log.c.xid.in_(completed)).values(completed_at=now_iso()))

    def incomplete_decisions(self) -> list[str]:
        self.settle()
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(coordinator_log.c.xid).where(
                coordinator_log.c.completed_at.is_(None)))]

    def audit(self, limit: int = 1000) -> list[dict[str, Any]]:
        self.settle()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.id.desc())
                                .limit(limit)).all()
        return [{**dict(r._mapping), "row_key": list(decode_values(r.row_key))} for r in rows]

    def settle(self) -> None:
        """Bring every journalled decision (this process's, and those of processes that are
        gone) and every decision noted from a last resource into the state store's tables,
        so that reading them sees all of them."""
        self.flush_decided()
        if self._journal is not None:
            self._journal.drain()
            self._journal.adopt()
