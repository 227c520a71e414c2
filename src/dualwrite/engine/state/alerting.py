"""Events (lookup misses, map failures) and the alerts raised from them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from dualwrite.engine.state.base import StoreBase
from dualwrite.engine.state.schema import alerts, events, map_status


def _count_events(conn: sa.Connection, map_name: str | None, kinds: Sequence[str] | None,
                  since: float) -> int:
    """Events from ``since`` on, of ``map_name`` (None: every map) and ``kinds`` (None:
    every kind)."""
    stmt = sa.select(sa.func.count()).select_from(events).where(events.c.at >= since)
    if map_name:
        stmt = stmt.where(events.c.map == map_name)
    if kinds:
        stmt = stmt.where(events.c.kind.in_(list(kinds)))
    return int(conn.execute(stmt).scalar() or 0)


class EventsState(StoreBase):
    """Events (lookup misses (a part of :class:`StateStore`)."""

    # -- events and alerts -----------------------------------------------------------
    def add_event(self, map_name: str, kind: str, message: str, at: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.insert(events).values(at=at, map=map_name, kind=kind,
                                                  message=message[:2000]))

    def count_events(self, map_name: str | None, kinds: Sequence[str] | None, since: float
                     ) -> int:
        with self.engine.connect() as conn:
            return _count_events(conn, map_name, kinds, since)

    def last_events(self, kind: str) -> dict[str, tuple[float, str]]:
        """Per map, the time and message of its latest event of ``kind``."""
        latest = sa.select(events.c.map, sa.func.max(events.c.id).label("id")).where(
            events.c.kind == kind).group_by(events.c.map).subquery()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(events.c.map, events.c.at, events.c.message)
                                .join(latest, latest.c.id == events.c.id)).all()
        return {str(r.map): (float(r.at), str(r.message)) for r in rows}

    def add_alert(self, map_name: str, rule: str, action: str, message: str, at: float, *,
                  kind: str | None = None) -> None:
        """Record that ``rule`` fired on ``map_name``: the alert of that rule and map that is
        not cleared yet fires again (its state kept: acknowledged stays acknowledged), else a
        new alert starts, firing."""
        with self.engine.begin() as conn:
            self._add_alert(conn, map_name, rule, action, message, at, kind=kind)

    @staticmethod
    def _add_alert(conn: sa.Connection, map_name: str, rule: str, action: str, message: str,
                   at: float, *, kind: str | None) -> None:
        row = conn.execute(sa.select(alerts.c.id, alerts.c.fired).where(
            alerts.c.map == map_name, alerts.c.rule == rule,
            sa.func.coalesce(alerts.c.state, "firing") != "cleared")
            .order_by(alerts.c.id.desc()).limit(1)).first()
        if row is not None:
            conn.execute(sa.update(alerts).where(alerts.c.id == row.id).values(
                at=at, action=action, message=message, fired=(row.fired or 1) + 1))
            return
        conn.execute(sa.insert(alerts).values(at=at, map=map_name, rule=rule,
                                              action=action, message=message, kind=kind,
                                              state="firing", first_at=at, fired=1))

    def fire_alert(self, map_name: str, rule: str, action: str, *, kinds: Sequence[str] | None,
                   count: int, since: float, now: float, describe: Callable[[int], str]
                   ) -> str | None:
        """Fire ``rule`` on ``map_name`` if it is due: ``count`` or more events of ``kinds``
        (None: any kind) on the map from ``since`` on and after the rule's last firing. Due,
        the alert is recorded as :meth:`add_alert` records it, at ``now``, with the message
        ``describe(n)`` (n: the events counted), which is returned; not due, None.

        One process at a time decides for a map (its status row is written first, which
        holds it: a row lock on a database server, the write lock in SQLite): processes that
        record events of one map at once (JetStream workers failing together) fire a rule
        that reached its count once, not once each. A map without a status row (never
        started) is not held."""
        with self.engine.begin() as conn:
            conn.execute(sa.update(map_status).where(map_status.c.map == map_name)
                         .values(map=map_status.c.map))
            last = conn.execute(sa.select(sa.func.max(alerts.c.at)).where(
                alerts.c.map == map_name, alerts.c.rule == rule)).scalar()
            if last is not None and float(last) >= since:
                since = float(last) + 1e-6
            n = _count_events(conn, map_name, kinds, since)
            if n < count:
                return None
            message = describe(n)
            self._add_alert(conn, map_name, rule, action, message, now, kind=None)
            return message

    def alerts(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(alerts).order_by(alerts.c.id.desc()).limit(limit))
            return [dict(r._mapping) for r in rows]
