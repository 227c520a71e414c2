"""The applier lease: one applier per link at a time, across processes and hosts, and a
fence that keeps an applier which lost its lease out of both databases.

The lease is a row of the state store (``applier_leases``): holder, an epoch and an expiry.
The holder renews it at each housekeeping pass: every second while changes flow, at least
every third of ``ttl`` while quiet (``ttl`` is how long a holder may go unheard); a process
that finds it expired — or released, or held by a process of its own host that no longer
exists — takes it over in one compare-and-swap statement, and with it the next epoch.
Expiry is judged by the clocks of the processes (hosts should run NTP; a skew only moves
the moment of a takeover, never its safety).

Safety does not rest on clocks. Every transaction an applier commits in a database carries
its epoch (:meth:`dualwrite.connectors.capture.CaptureLog.fence`): it raises the link's fence
row there to its epoch, or fails if the row already holds a later one. A new holder raises
the fence in both databases before it applies anything, so an applier that was stopped
(``SIGSTOP``, a long pause, a partition) and wakes up after losing its lease can commit
nothing more: its next transaction meets the later epoch and rolls back, and the process
goes back to standing by.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

import sqlalchemy as sa

from dualwrite.engine.state import StateStore, applier_leases, now_iso
from dualwrite.errors import LeaseLost

#: how long a holder may go unheard before a standby takes over, by default (seconds)
DEFAULT_TTL = 15.0


def _alive_here(holder: str) -> bool | None:
    """Whether the process named by ``holder`` (host:pid:nonce) is alive, if it is on this
    host (None: another host's, or unreadable: only its expiry tells)."""
    host, _, rest = holder.partition(":")
    pid, _, _nonce = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ApplierLease:
    """This process's claim on the applier lease of one link.

    ``acquire`` takes it when free (never waits); ``renew`` keeps it and reports whether it
    is still held; ``release`` hands it on at once. ``epoch`` is the fencing token of the
    current holding (None when not held)."""

    def __init__(self, state: StateStore, link: str, *, ttl: float = DEFAULT_TTL) -> None:
        self.state = state
        self.link = link
        self.ttl = ttl
        self.me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.epoch: int | None = None

    @property
    def held(self) -> bool:
        return self.epoch is not None

    def _row(self, conn: sa.Connection) -> tuple[str, int, float] | None:
        row = conn.execute(sa.select(applier_leases.c.holder, applier_leases.c.epoch,
                                     applier_leases.c.expires_at)
                           .where(applier_leases.c.link == self.link)).first()
        return (str(row[0]), int(row[1]), float(row[2])) if row is not None else None

    def acquire(self) -> bool:
        """Take the lease if it is free (expired, released, or its holder is a process of
        this host that is gone); True when this process holds it now."""
        now = time.time()
        with self.state.engine.connect() as conn:
            row = self._row(conn)
        if row is None:
            try:
                with self.state.engine.begin() as conn:
                    conn.execute(sa.insert(applier_leases).values(
                        link=self.link, holder=self.me, epoch=1,
                        expires_at=now + self.ttl, acquired_at=now_iso()))
            except sa.exc.IntegrityError:
                return False  # another process inserted it first
            self.epoch = 1
            return True
        holder, epoch, expires = row
        if holder == self.me and self.epoch == epoch:
            return self.renew()
        if not (expires < now or _alive_here(holder) is False):
            return False
        # compare-and-swap: of processes taking it at once, one wins
        with self.state.engine.begin() as conn:
            n = conn.execute(sa.update(applier_leases).where(
                applier_leases.c.link == self.link, applier_leases.c.holder == holder,
                applier_leases.c.epoch == epoch).values(
                holder=self.me, epoch=epoch + 1, expires_at=now + self.ttl,
                acquired_at=now_iso())).rowcount
        if n != 1:
            return False
        self.epoch = int(epoch) + 1
        return True

    def renew(self) -> bool:
        """Extend the holding; False (and no longer held) when another process has taken
        the lease meanwhile."""
        if self.epoch is None:
            return False
        with self.state.engine.begin() as conn:
            n = conn.execute(sa.update(applier_leases).where(
                applier_leases.c.link == self.link, applier_leases.c.holder == self.me,
                applier_leases.c.epoch == self.epoch).values(
                expires_at=time.time() + self.ttl)).rowcount
        if n != 1:
            self.epoch = None
            return False
        return True

    def advance(self, epoch: int) -> None:
        """Move the holding's epoch up to ``epoch`` (past fences a former state store left
        in the databases); LeaseLost if this process no longer holds the lease."""
        with self.state.engine.begin() as conn:
            n = conn.execute(sa.update(applier_leases).where(
                applier_leases.c.link == self.link, applier_leases.c.holder == self.me,
                applier_leases.c.epoch == self.epoch).values(epoch=epoch)).rowcount
        if n != 1:
            self.epoch = None
            raise LeaseLost(f"link {self.link!r}: another process took the applier lease "
                            "over", hint="nothing to do: this process stands by again")
        self.epoch = epoch

    def release(self) -> None:
        """Hand the lease on: a standby takes it at its next look, not after the TTL. The
        epoch stays (the next holder's is higher)."""
        if self.epoch is None:
            return
        try:
            with self.state.engine.begin() as conn:
                conn.execute(sa.update(applier_leases).where(
                    applier_leases.c.link == self.link, applier_leases.c.holder == self.me,
                    applier_leases.c.epoch == self.epoch).values(expires_at=0.0))
        finally:
            self.epoch = None

    def holder(self) -> int | None:
        """The pid of the process holding the lease now (None: nobody does)."""
        info = self.holder_info()
        return info[1] if info else None

    def holder_info(self) -> tuple[str, int, int] | None:
        """(host, pid, epoch) of the current holder, if the lease is held."""
        with self.state.engine.connect() as conn:
            row = self._row(conn)
        if row is None:
            return None
        holder, epoch, expires = row
        if expires < time.time() or _alive_here(holder) is False:
            return None
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        return host, int(pid) if pid.isdigit() else 0, int(epoch)


__all__ = ["DEFAULT_TTL", "ApplierLease"]
