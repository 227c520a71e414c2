"""The processes of a link (run, serve, workers) and their heartbeats."""

from __future__ import annotations

import time
import uuid
from typing import Any

import sqlalchemy as sa

from dualwrite.engine.state.base import StoreBase
from dualwrite.engine.state.codec import now_iso
from dualwrite.engine.state.schema import HEARTBEAT_TIMEOUT, processes


class ProcessesState(StoreBase):
    """The processes of a link (run (a part of :class:`StateStore`)."""

    # -- processes -------------------------------------------------------------------
    def register_process(self, link: str, role: str, note: str | None = None) -> str:
        """Record this process (host, pid, role) for ``status``; returns its id. Rows of
        processes gone for long are swept here."""
        import os
        import socket

        pid = str(uuid.uuid4())
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(sa.delete(processes).where(
                processes.c.heartbeat < now - 24 * 3600))
            conn.execute(sa.insert(processes).values(
                id=pid, link=link, host=socket.gethostname(), pid=os.getpid(), role=role,
                started_at=now_iso(), heartbeat=now, note=note))
        return pid

    def heartbeat(self, process_id: str, *, role: str | None = None,
                  note: str | None = None) -> None:
        """This process is alive (and now has ``role``, waits for ``note``)."""
        values: dict[str, Any] = {"heartbeat": time.time(), "note": note}
        if role is not None:
            values["role"] = role
        with self.engine.begin() as conn:
            conn.execute(sa.update(processes).where(processes.c.id == process_id)
                         .values(**values))

    def unregister_process(self, process_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(processes).where(processes.c.id == process_id))

    def processes(self, link: str) -> list[dict[str, Any]]:
        """The processes of ``link``, each with ``alive`` (a heartbeat within
        HEARTBEAT_TIMEOUT seconds) and ``heartbeat_age`` in seconds."""
        now = time.time()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(processes).where(processes.c.link == link)
                                .order_by(processes.c.started_at)).all()
        return [{"id": r.id, "host": r.host, "pid": r.pid, "role": r.role,
                 "started_at": r.started_at, "heartbeat_age": round(now - r.heartbeat, 1),
                 "alive": now - r.heartbeat <= HEARTBEAT_TIMEOUT, "note": r.note}
                for r in rows]
