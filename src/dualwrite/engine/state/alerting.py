"""Events (lookup misses, map failures) and the alerts raised from them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from dualwrite.engine.state.base import StoreBase
from dualwrite.engine.state.schema import alerts, events


class EventsState(StoreBase):
    """Events (lookup misses (a part of :class:`StateStore`)."""

    # -- events and alerts -----------------------------------------------------------
    def add_event(self, map_name: str, kind: str, message: str, at: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.insert(events).values(at=at, map=map_name, kind=kind,
                                                  message=message[:2000]))

    def count_events(self, map_name: str | None, kinds: Sequence[str] | None, since: float
                     ) -> int:
        stmt = sa.select(sa.func.count()).select_from(events).where(events.c.at >= since)
        if map_name:
            stmt = stmt.where(events.c.map == map_name)
        if kinds:
            stmt = stmt.where(events.c.kind.in_(list(kinds)))
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar() or 0)

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

    def last_alert(self, map_name: str, rule: str) -> float | None:
        with self.engine.connect() as conn:
            v = conn.execute(sa.select(sa.func.max(alerts.c.at)).where(
                alerts.c.map == map_name, alerts.c.rule == rule)).scalar()
        return float(v) if v is not None else None

    def alerts(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(alerts).order_by(alerts.c.id.desc()).limit(limit))
            return [dict(r._mapping) for r in rows]
