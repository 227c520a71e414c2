"""What an operator watches, kept in the state store so that every process and the console
see it without Prometheus: samples of lag and throughput, initial sync progress, alert states,
and the paged reads the console needs (the inbox, the audit log) without loading them whole.

Tables of its own (``samples``, ``sync_progress``) are created on first use beside the state
store's; alert rows live in the state store's ``alerts`` table, whose ``state`` column this
module moves along: ``firing`` → ``acknowledged`` (an operator saw it) → ``cleared`` (its cause
is gone: the rule's window passed without it firing again, or an applier is back).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from dualwrite.engine.state import (
    HEARTBEAT_TIMEOUT,
    InboxEntry,
    MapState,
    StateStore,
    alerts,
    audit_log,
    decode_row,
    decode_values,
    error_inbox,
    events,
    refusals,
)

if TYPE_CHECKING:
    from dualwrite.engine.link import Link

_md = sa.MetaData()

#: one row per map every SAMPLE_SECONDS while an applier runs: the console's lag chart and
#: the throughput of ``status`` are drawn from them
samples = sa.Table(
    "samples", _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False, index=True),  # unix time
    sa.Column("map", sa.String(200), nullable=False),
    sa.Column("lag_seconds", sa.Float, nullable=False),
    sa.Column("lag_changes", sa.Integer, nullable=False),
    sa.Column("queued", sa.Integer, nullable=False),
    # changes the map has applied since it was first started (map_activity), so that the
    # difference of two samples is what was applied between them, whichever process did
    sa.Column("applied", sa.BigInteger, nullable=False),
)

#: the initial sync of each map as it runs (or last ran), for the console and /metrics
sync_progress = sa.Table(
    "sync_progress", _md,
    sa.Column("map", sa.String(200), primary_key=True),
    sa.Column("done", sa.BigInteger, nullable=False),
    sa.Column("total", sa.BigInteger, nullable=True),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("pid", sa.Integer, nullable=True),
)

SAMPLE_SECONDS = 5.0
#: samples older than this are dropped (the console's chart shows the last hour)
KEEP_SAMPLES_SECONDS = 2 * 3600.0
#: how often a running initial sync writes its progress
PROGRESS_SECONDS = 1.0
#: the rule name of the built-in alert raised when maps run and no applier applies them
NO_APPLIER = "no-applier"
#: the map name of alerts about the whole link
WHOLE_LINK = "*"
#: how long an alert of a rule no longer in the config stays before it is cleared
DEFAULT_WINDOW_SECONDS = 600.0
ALERT_STATES = ("firing", "acknowledged", "cleared")


def iso(at: float | None) -> str | None:
    """A unix time as an ISO 8601 UTC time (milliseconds)."""
    if at is None:
        return None
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="milliseconds")


class Monitor:
    """The operator's view of one link's state store. Every method is one short transaction;
    safe to share between threads."""

    def __init__(self, state: StateStore, windows: dict[str, float] | None = None) -> None:
        self.state = state
        #: per alert rule name, the seconds after its last firing at which it clears
        self.windows = dict(windows or {})
        self._ready = False
        self._lock = threading.Lock()
        # the first sample is taken SAMPLE_SECONDS after start: an applier's first seconds
        # go to applying what queued while it was away, not to writes of its own
        self._last_sample = time.time()

    @property
    def engine(self) -> sa.Engine:
        if not self._ready:
            with self._lock:
                if not self._ready:
                    _md.create_all(self.state.engine)
                    self._ready = True
        return self.state.engine

    # -- samples -----------------------------------------------------------------------------
    def due(self, now: float | None = None) -> bool:
        """Whether a sample is due (at most one per SAMPLE_SECONDS from this process)."""
        return (now or time.time()) - self._last_sample >= SAMPLE_SECONDS

    def sample(self, per_map: dict[str, tuple[float, int, int]], now: float | None = None
               ) -> None:
        """Record, per map, (lag seconds, lag changes, queued) with the applied count the
        state store holds now; drop samples older than KEEP_SAMPLES_SECONDS; clear the alerts
        whose cause is gone (see :meth:`refresh`). One transaction."""
        now = now or time.time()
        self._last_sample = now
        applied = {n: int(a["applied"]) for n, a in self.state.activity().items()}
        rows = [{"at": now, "map": n, "lag_seconds": float(lag), "lag_changes": int(changes),
                 "queued": int(queued), "applied": applied.get(n, 0)}
                for n, (lag, changes, queued) in per_map.items()]
        with self.engine.begin() as conn:
            if rows:
                conn.execute(sa.insert(samples), rows)
            conn.execute(sa.delete(samples).where(samples.c.at < now - KEEP_SAMPLES_SECONDS))
            self._clear_expired(conn, now)

    def samples(self, since: float, map_name: str | None = None) -> list[dict[str, Any]]:
        """Samples taken since ``since`` (unix time), oldest first; of one map, or summed
        over every map per sampling time (lag: the largest)."""
        with self.engine.connect() as conn:
            if map_name:
                rows = conn.execute(sa.select(samples).where(
                    samples.c.at >= since, samples.c.map == map_name)
                    .order_by(samples.c.at)).all()
                return [dict(r._mapping) for r in rows]
            rows = conn.execute(sa.select(
                samples.c.at, sa.func.max(samples.c.lag_seconds).label("lag_seconds"),
                sa.func.sum(samples.c.lag_changes).label("lag_changes"),
                sa.func.sum(samples.c.queued).label("queued"),
                sa.func.sum(samples.c.applied).label("applied"))
                .where(samples.c.at >= since).group_by(samples.c.at)
                .order_by(samples.c.at)).all()
        return [dict(r._mapping) for r in rows]

    def throughput(self, window: float = 60.0, now: float | None = None) -> dict[str, float]:
        """Per map, changes applied per second over the last ``window`` seconds: from the
        applied counts of the state store now and of the last sample at or before the
        window's start (the first sample within it when there is none older)."""
        now = now or time.time()
        since = now - window
        with self.engine.connect() as conn:
            before = sa.select(samples.c.map, sa.func.max(samples.c.at).label("at")).where(
                samples.c.at <= since).group_by(samples.c.map).subquery()
            first = sa.select(samples.c.map, sa.func.min(samples.c.at).label("at")).where(
                samples.c.at > since).group_by(samples.c.map).subquery()
            old = {r.map: (float(r.at), int(r.applied)) for q in (first, before)
                   for r in conn.execute(sa.select(samples.c.map, samples.c.at,
                                                   samples.c.applied)
                                         .join(q, sa.and_(q.c.map == samples.c.map,
                                                          q.c.at == samples.c.at))).all()}
        out = {}
        for name, activity in self.state.activity().items():
            if name not in old:
                continue
            at, applied = old[name]
            span = max(now - at, 1.0)
            out[name] = round(max(int(activity["applied"]) - applied, 0) / span, 2)
        return out

    # -- initial sync progress -----------------------------------------------------------------
    def sync_started(self, map_name: str, total: int | None) -> None:
        import os

        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(sa.delete(sync_progress).where(sync_progress.c.map == map_name))
            conn.execute(sa.insert(sync_progress).values(
                map=map_name, done=0, total=total, started_at=now, updated_at=now,
                finished_at=None, pid=os.getpid()))

    def sync_progressed(self, map_name: str, done: int, total: int | None, *,
                        finished: bool = False) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            n = conn.execute(sa.update(sync_progress).where(sync_progress.c.map == map_name)
                             .values(done=done, total=total, updated_at=now,
                                     finished_at=now if finished else None)).rowcount
            if not n:  # a map with no rows reports no progress before it ends
                conn.execute(sa.insert(sync_progress).values(
                    map=map_name, done=done, total=total, started_at=now, updated_at=now,
                    finished_at=now if finished else None))

    def sync_progress(self) -> dict[str, dict[str, Any]]:
        """Per map, its latest initial sync: rows done, total expected, rate (rows/s), ETA
        seconds, and whether it is running (not finished, written within the last 30 s)."""
        now = time.time()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(sync_progress)).all()
        out = {}
        for r in rows:
            elapsed = max((r.finished_at or r.updated_at) - r.started_at, 1e-3)
            rate = r.done / elapsed if r.done else 0.0
            running = r.finished_at is None and now - r.updated_at < 30
            eta = (r.total - r.done) / rate if running and rate and r.total else None
            out[r.map] = {"map": r.map, "done": int(r.done),
                          "total": None if r.total is None else int(r.total),
                          "rate": round(rate, 1), "eta_seconds": None if eta is None
                          else round(max(eta, 0.0), 1), "running": running,
                          "started_at": iso(r.started_at), "finished_at": iso(r.finished_at),
                          "interrupted": r.finished_at is None and not running}
        return out

    # -- alerts --------------------------------------------------------------------------------
    def alerts(self, states: Sequence[str] | None = None, *, limit: int = 100,
               offset: int = 0, alert_id: int | None = None) -> list[dict[str, Any]]:
        """Alerts, newest first, with ISO times; only those in ``states`` if given. An alert
        recorded before alerts had a state is ``firing`` until it clears."""
        state = sa.func.coalesce(alerts.c.state, "firing")
        stmt = sa.select(alerts, state.label("st")).order_by(alerts.c.id.desc()) \
            .limit(limit).offset(offset)
        if states:
            stmt = stmt.where(state.in_(list(states)))
        if alert_id is not None:
            stmt = stmt.where(alerts.c.id == alert_id)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [{"id": r.id, "state": r.st, "map": r.map, "rule": r.rule,
                 "kind": r.kind or r.rule, "action": r.action, "message": r.message,
                 "fired": r.fired or 1, "first_at": iso(r.first_at or r.at),
                 "last_at": iso(r.at), "acknowledged_at": iso(r.acked_at),
                 "acknowledged_by": r.acked_by, "cleared_at": iso(r.cleared_at)}
                for r in rows]

    def alert_counts(self) -> dict[str, int]:
        state = sa.func.coalesce(alerts.c.state, "firing")
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(state, sa.func.count()).group_by(state)).all()
        return {str(r[0]): int(r[1]) for r in rows}

    def ack(self, alert_id: int, by: str) -> dict[str, Any]:
        """Acknowledge a firing alert (an operator has seen it); it clears by itself once its
        cause is gone. Raises DualwriteError for an unknown or cleared one."""
        from dualwrite.errors import DualwriteError

        with self.engine.begin() as conn:
            row = conn.execute(sa.select(alerts.c.state).where(alerts.c.id == alert_id)).first()
            if row is None:
                raise DualwriteError(f"no alert with id {alert_id}",
                                     hint="list them with `dualwrite alerts list --all`")
            if (row.state or "firing") == "cleared":
                raise DualwriteError(f"alert {alert_id} is cleared already; nothing to "
                                     "acknowledge", hint="`dualwrite alerts list` shows the "
                                     "firing ones")
            conn.execute(sa.update(alerts).where(alerts.c.id == alert_id).values(
                state="acknowledged", acked_at=time.time(), acked_by=by[:200]))
        return self.alerts(alert_id=alert_id)[0]

    def refresh(self, now: float | None = None) -> int:
        """Clear the alerts whose cause is gone: a rule's alert once its window has passed
        since it last fired (a rule no longer in the config: after 10 minutes). The
        no-applier alert is cleared by :func:`check_applier`. Returns how many cleared."""
        now = now or time.time()
        with self.engine.begin() as conn:
            return self._clear_expired(conn, now)

    def _clear_expired(self, conn: sa.Connection, now: float) -> int:
        rows = conn.execute(sa.select(alerts.c.id, alerts.c.rule, alerts.c.at).where(
            sa.func.coalesce(alerts.c.state, "firing") != "cleared",
            alerts.c.rule != NO_APPLIER)).all()
        gone = [r.id for r in rows
                if now - r.at > self.windows.get(r.rule, DEFAULT_WINDOW_SECONDS)]
        if gone:
            conn.execute(sa.update(alerts).where(alerts.c.id.in_(gone)).values(
                state="cleared", cleared_at=now))
        return len(gone)

    def open_alert(self, map_name: str, rule: str) -> int | None:
        """The id of the alert of ``rule`` on ``map_name`` that is not cleared, if any."""
        with self.engine.connect() as conn:
            v = conn.execute(sa.select(alerts.c.id).where(
                alerts.c.map == map_name, alerts.c.rule == rule,
                sa.func.coalesce(alerts.c.state, "firing") != "cleared")
                .order_by(alerts.c.id.desc()).limit(1)).scalar()
        return int(v) if v is not None else None

    def clear(self, alert_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(alerts).where(alerts.c.id == alert_id).values(
                state="cleared", cleared_at=time.time()))

    # -- the inbox, the audit log, events ----------------------------------------------------
    def error_counts(self, status: str = "open") -> dict[str, int]:
        """Inbox entries per map (one grouped count, however many entries)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(error_inbox.c.map, sa.func.count())
                                .where(error_inbox.c.status == status)
                                .group_by(error_inbox.c.map)).all()
        return {str(r[0]): int(r[1]) for r in rows}

    def inbox_page(self, *, map_name: str | None = None, operation: str | None = None,
                   exclude_operation: str | None = None, status: str = "open",
                   offset: int = 0, limit: int = 50) -> tuple[list[InboxEntry], int]:
        """One page of inbox entries (oldest first) and how many match in all."""
        where = [error_inbox.c.status == status]
        if map_name:
            where.append(error_inbox.c.map == map_name)
        if operation:
            where.append(error_inbox.c.operation == operation)
        if exclude_operation:
            where.append(error_inbox.c.operation != exclude_operation)
        with self.engine.connect() as conn:
            total = int(conn.execute(sa.select(sa.func.count()).select_from(error_inbox)
                                     .where(*where)).scalar() or 0)
            rows = conn.execute(sa.select(error_inbox).where(*where)
                                .order_by(error_inbox.c.id).offset(offset).limit(limit)).all()
        return [InboxEntry(r.id, r.map, r.side, decode_values(r.row_key), r.operation,
                           r.reason, decode_row(r.payload) if r.payload else None, r.attempts,
                           r.first_at, r.last_at, r.status) for r in rows], total

    def events_since(self, since: float, kinds: Sequence[str]) -> dict[str, int]:
        """Per map, events of ``kinds`` since ``since`` (unix time)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(events.c.map, sa.func.count()).where(
                events.c.at >= since, events.c.kind.in_(list(kinds)))
                .group_by(events.c.map)).all()
        return {str(r[0]): int(r[1]) for r in rows}

    def audit_page(self, *, offset: int = 0, limit: int = 50) -> tuple[list[dict[str, Any]],
                                                                         int]:
        """One page of the audit log (every committed write through dualwrite), newest
        first, and its size."""
        self.state.settle()
        with self.engine.connect() as conn:
            total = int(conn.execute(sa.select(sa.func.count()).select_from(audit_log))
                        .scalar() or 0)
            rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.id.desc())
                                .offset(offset).limit(limit)).all()
        return [{**dict(r._mapping), "row_key": list(decode_values(r.row_key))}
                for r in rows], total

    def refusals(self, limit: int = 20) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(refusals).order_by(refusals.c.id.desc())
                                .limit(limit)).all()
        return [dict(r._mapping) for r in rows]

    def in_doubt(self) -> int:
        """Live transactions decided but not yet committed on every side."""
        from dualwrite.engine.state import coordinator_log

        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(coordinator_log)
                                    .where(coordinator_log.c.completed_at.is_(None)))
                       .scalar() or 0)


def readable_change(doc: dict[str, Any] | str | None) -> dict[str, Any] | None:
    """A captured change as the state store keeps it, for people: the operation spelt out,
    values as plain JSON (numbers, ISO times)."""
    from dualwrite.engine.state import decode_doc

    if doc is None:
        return None
    c = decode_doc(doc) if isinstance(doc, str) else doc
    ops = {"I": "create", "U": "update", "D": "delete"}
    return {"operation": ops.get(str(c.get("op")), c.get("op")), "key": c.get("key"),
            "captured_at": c.get("at"), "old": c.get("old"), "new": c.get("new")}


def check_applier(link: Link, procs: list[dict[str, Any]] | None = None,
                  states: dict[str, dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """Raise the link's no-applier alert when maps are running (or resuming) and no live
    applier has applied for HEARTBEAT_TIMEOUT seconds; clear it once one does, or nothing
    runs. Alert rules of kind ``no-applier`` act on it when it starts. Returns the open
    alert's facts, or None."""
    monitor = link.monitor
    procs = link.processes() if procs is None else procs
    states = link.state.map_states() if states is None else states
    applying = sorted(n for n, st in states.items()
                      if st.get("state") in (MapState.RUNNING, MapState.RESUMING))
    alive = [p for p in procs if p["role"] == "applier" and p["alive"]]
    open_id = monitor.open_alert(WHOLE_LINK, NO_APPLIER)
    if alive or not applying:
        if open_id is not None:
            monitor.clear(open_id)
        return None
    gone = min((p["heartbeat_age"] for p in procs if p["role"] == "applier"), default=None)
    if gone is not None and gone < HEARTBEAT_TIMEOUT:
        return None  # a heartbeat may just be late
    since = f"for {gone:.0f} s" if gone is not None else "(none is running)"
    message = (f"{len(applying)} map(s) running ({', '.join(applying[:5])}"
               f"{', ...' if len(applying) > 5 else ''}) and no applier {since}: start "
               "`dualwrite run` or `dualwrite serve`")
    if open_id is None:
        link.state.add_alert(WHOLE_LINK, NO_APPLIER, "log", message, time.time(),
                             kind=NO_APPLIER)
        link.alerts().record(WHOLE_LINK, NO_APPLIER, message)  # configured rules act on it
    return {"rule": NO_APPLIER, "message": message}


__all__ = ["ALERT_STATES", "NO_APPLIER", "SAMPLE_SECONDS", "WHOLE_LINK", "Monitor",
           "check_applier", "iso", "readable_change"]
