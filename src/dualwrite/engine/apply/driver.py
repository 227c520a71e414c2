"""The applier's driver: the loop that steps both directions, backs off from a side that
cannot be reached, waits for changes (the logs' signals, else polling that slows down on a
quiet link), keeps the lease and the housekeeping (heartbeat, settling released inbox entries,
queue budgets, samples), and runs the purger thread; and :func:`run_applier`, which takes the
link's applier lease and runs an applier while it holds it.

What one step applies, and how, is :class:`dualwrite.engine.capture.Applier`'s (its
decisions: :mod:`dualwrite.engine.apply.core`); this module only decides *when*. It names no
database: whether a log notifies is its own (:meth:`ChangeLog.listen`), whether it needs a
purge too (:attr:`ChangeLog.needs_purge`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dualwrite.connectors.changelog import ChangeLog, ChangeSignal
from dualwrite.engine import metrics
from dualwrite.engine.apply.core import APPLYING
from dualwrite.engine.lease import ApplierLease
from dualwrite.engine.state import MapState, StateStore
from dualwrite.errors import (
    ConnectorError,
    LeaseLost,
    LinkError,
    TransientConnectorError,
)
from dualwrite.model.maps import Side

if TYPE_CHECKING:
    from dualwrite.connectors.base import Connector
    from dualwrite.engine.alerts import Alerts
    from dualwrite.engine.capture import Applier
    from dualwrite.engine.config import CaptureConfig
    from dualwrite.engine.link import Link
    from dualwrite.engine.monitor import Monitor

#: the applier's log (one logger for the applier, whichever module logs)
log = logging.getLogger("dualwrite.capture")

#: seconds between housekeeping passes (heartbeat, lease, queue budgets, samples) while
#: changes flow, and at most while the link is quiet (HEARTBEAT_TIMEOUT is 10 s)
_HOUSEKEEPING = 1.0
_IDLE_HOUSEKEEPING = 3.0
#: the longest wait of a quiet applier whose sides all notify (PostgreSQL)
_NOTIFIED_IDLE_MAX = 1.0
#: seconds between purges of a log's history (MariaDB)
_PURGE_EVERY = 1.0


class ApplierLoop:
    """The driver part of :class:`dualwrite.engine.capture.Applier` (which it is a base of):
    stepping, backoff, waiting, housekeeping and the purger thread. What it needs of the
    applier is declared here."""

    connectors: dict[Side, Connector]
    capture: CaptureConfig
    monitor: Callable[[], Monitor]
    logs: dict[Side, ChangeLog]
    state: StateStore
    alerts: Alerts
    env: dict[Side, str]
    process: str | None
    poll: float
    lease: ApplierLease | None
    last_error: dict[Side, str | None]
    _link_name: str
    _direction: dict[Side, str]
    _maps: dict[str, Any]
    _backoff: dict[Side, float]
    _retry_at: dict[Side, float]
    _waiter: Any
    _waiter_at: float
    #: per side, when its log was last read (monotonic); see :meth:`_due`
    _read_at: dict[Side, float]
    #: per side, the changes the last step read from its log (see :meth:`_due_after_work`)
    _read_last: dict[Side, int]
    batch: int
    _purger: threading.Thread | None
    _purger_stop: threading.Event

    # -- what a step does: the applier's ------------------------------------------------------
    def apply_from(self, s: Side, only: Sequence[str] | None = None) -> int:
        raise NotImplementedError

    def _isolate(self, s: Side, exc: BaseException) -> int:
        raise NotImplementedError

    def maps(self, refresh: bool = False) -> dict[str, Any]:
        raise NotImplementedError

    def prune_markers(self) -> None:
        raise NotImplementedError

    def replay_released(self) -> int:
        raise NotImplementedError

    def event(self, map_name: str, kind: str, message: str) -> None:
        raise NotImplementedError

    def flush_activity(self, force: bool = False) -> None:
        raise NotImplementedError

    def run_deferred(self) -> None:
        raise NotImplementedError

    # -- the loop ------------------------------------------------------------------------------
    def _renew(self) -> None:
        """Keep the lease; raise LeaseLost when another process has taken it."""
        if self.lease is None:
            return
        try:
            held = self.lease.renew()
        except Exception as exc:
            # the state store cannot be reached: no standby can take the lease over through
            # it either; the fence keeps the databases safe whatever happens meanwhile
            log.warning("renewing the applier lease: %s", exc)
            return
        if not held:
            raise LeaseLost(f"link {self._link_name!r}: another process took the applier "
                            "lease over (this one was stopped or cut off for longer than "
                            f"the lease's {self.lease.ttl:g} s)",
                            hint="nothing to do: this process stands by again")

    def run(self, stop: threading.Event, *, ready: Callable[[], None] | None = None) -> None:
        """Apply until ``stop`` is set. Waits for changes on the logs' signals where they
        notify, else polls."""
        self.prune_markers()
        self.replay_released()
        if ready:
            ready()
        last_housekeeping = 0.0
        state_down: str | None = None
        idle = 0  # passes in a row that found nothing
        due: set[Side] | None = None  # the sides to read next (None: every side)
        while not stop.is_set():
            done = self.step(due)
            now = time.monotonic()
            # housekeeping each second while changes flow; a quiet link's less often, but
            # always often enough to keep the lease (a third of its time to live)
            period = _HOUSEKEEPING if idle == 0 else min(
                _IDLE_HOUSEKEEPING, self.lease.ttl / 3 if self.lease else _IDLE_HOUSEKEEPING)
            if now - last_housekeeping > period:
                last_housekeeping = now
                try:
                    self.housekeeping()
                    if state_down is not None:
                        log.info("the state store answers again", extra={"event": "reconnected",
                                                                        "side": "state"})
                    state_down = None
                except TransientConnectorError as exc:
                    # the state store is down (a PostgreSQL one, on another host): apply what
                    # can be applied without it, and keep looking; the lease may run out
                    # meanwhile, and the fence then stops this applier
                    if state_down is None:
                        log.warning("%s; retrying", exc, extra={"event": "unreachable",
                                                                "side": "state"})
                    state_down = str(exc)
            idle = idle + 1 if done == 0 else 0
            due = self._due(self._wait(stop, idle)) if done == 0 else self._due_after_work()
        with contextlib.suppress(TransientConnectorError):
            self.flush_activity(force=True)

    def _wait(self, stop: threading.Event, idle: int = 0) -> set[Side] | None:
        """Wait for changes: until a side's log signals, or the next look at a polled
        log. A link that stays quiet is looked at less and less often (``idle``: passes in a
        row that found nothing; the wait doubles each time, up to capture.idle_poll_max, or
        up to a second when every side notifies): a quiet applier costs next to nothing,
        and the first change after a quiet spell is still seen within that bound. Returns
        the sides whose logs signalled, or None where it cannot say (no signals)."""
        delay = self.poll
        if idle > 1:
            cap = max(self.poll, self.capture.idle_poll_max)
            delay = min(cap, self.poll * 2 ** min(idle - 1, 16))
        pending_retry = [t - time.monotonic() for t in self._retry_at.values()
                         if t > time.monotonic()]
        if pending_retry:
            delay = min(delay, max(min(pending_retry), 0.001))
        waiter = self._notify_waiter()
        if waiter is None:
            stop.wait(delay)
            return None
        try:
            # with a side whose log does not notify, wake at least every poll interval to
            # look at its log
            everyone_notifies = len(waiter.sides) == len(self.connectors)
            if everyone_notifies and not pending_retry:
                # a notification wakes it at once; the timeout only bounds how late a
                # change that notifies nobody is seen (an application's two-phase commit)
                return waiter(min(_NOTIFIED_IDLE_MAX,
                                  max(delay, 0.05) * 2 ** min(max(idle - 1, 0), 8)))
            return waiter(delay)
        except Exception as exc:  # any failure of a signal (a lost LISTEN session)
            # A lost signal (server restart, terminated backend) must not stop the applier:
            # poll, and listen again a little later.
            log.warning("LISTEN session lost (%s); polling until it is back", exc)
            waiter.close()
            self._waiter = None
            self._waiter_at = time.monotonic() + 1.0
            stop.wait(delay)
            return None

    def _due(self, signalled: set[Side] | None) -> set[Side] | None:
        """The sides to read after a wait that found ``signalled``: those, every side whose
        log is polled (its turn came), and every side not read for a second, even one that
        notifies (a change that notifies nobody, as an application's two-phase commit's,
        is still seen within that bound). A quiet link waiting on MariaDB's polled log thus
        does not read PostgreSQL's, which would have notified, on every poll. None: every
        side."""
        if signalled is None or not self._waiter:
            return None
        notifying = set(self._waiter.sides)
        now = time.monotonic()
        return {s for s in Side if s in signalled or s not in notifying
                or self.last_error[s] is not None  # its retry is due (see _wait)
                or now - self._read_at[s] >= _NOTIFIED_IDLE_MAX}

    def _due_after_work(self) -> set[Side] | None:
        """The sides to read after a step that applied changes: a side whose read may have
        left more (a full batch), and those :meth:`_due` names for the signals that came in
        meanwhile (looked at without waiting). A single-row change from a notifying side
        thus costs one read of its log, not three (its own again, and the other side's). None:
        every side (no signals)."""
        waiter = self._notify_waiter()
        if waiter is None:
            return None
        try:
            signalled = waiter(0)
        except Exception:  # a lost signal: the next wait notices it and polls meanwhile
            return None
        due = self._due(signalled)
        if due is None:
            return None
        return due | {s for s in Side if self._read_last[s] >= self.batch}

    def _notify_waiter(self) -> _Signals | None:
        """The signals of the logs that notify (see :meth:`ChangeLog.listen`), so that their
        changes wake the applier at once (set up again after a failure, at most once a
        second)."""
        if self._waiter is None and time.monotonic() >= self._waiter_at:
            self._waiter = False
            signals: dict[Side, ChangeSignal] = {}
            try:
                for s in Side:
                    signal = self.logs[s].listen()
                    if signal is not None:
                        signals[s] = signal
            except Exception:  # unreachable now: poll, retry later
                for signal in signals.values():
                    signal.close()
                self._waiter = None
                self._waiter_at = time.monotonic() + 1.0
                return None
            if signals:
                self._waiter = _Signals(signals)
        return self._waiter or None

    def close(self) -> None:
        self.run_deferred()
        if self._waiter:
            self._waiter.close()
        if self._purger is not None:
            self._purger_stop.set()
            self._purger.join(timeout=30)
            self._purger = None
        self.flush_activity(force=True)

    def step(self, sides: set[Side] | None = None) -> int:
        """One pass over both directions (or only those from ``sides``); returns how many
        changes were handled."""
        handled = 0
        for s in Side:
            self._read_last[s] = 0
            if time.monotonic() < self._retry_at[s] or (sides is not None and s not in sides):
                continue
            self._read_at[s] = time.monotonic()
            try:
                try:
                    self._read_last[s] = n = self.apply_from(s)
                    handled += n
                except (TransientConnectorError, LeaseLost):
                    raise
                except Exception as exc:
                    handled += self._isolate(s, exc)
                    self._read_last[s] = self.batch  # what the fault left: read it again
                self._backoff[s] = 0.0
                if self.last_error[s] is not None:
                    log.info("capture %s -> %s: reachable again; applying", self.env[s],
                             self.env[s.other], extra={"event": "reconnected",
                                                       "side": self.env[s.other]})
                self.last_error[s] = None
            except TransientConnectorError as exc:
                self._backoff[s] = min(max(self._backoff[s] * 2, 0.1),
                                       self.capture.max_backoff)
                self._retry_at[s] = time.monotonic() + self._backoff[s]
                if self.last_error[s] is None:
                    log.warning("capture %s -> %s: %s; retrying", self.env[s],
                                self.env[s.other], exc,
                                extra={"event": "unreachable", "side": self.env[s.other]})
                    metrics.APPLY_ERRORS.labels(self._link_name, "*", self._direction[s],
                                                "unreachable").inc()
                    for name in self._maps:  # as last read: reading them may need the side
                        self.event(name, "unreachable", str(exc))
                self.last_error[s] = str(exc)
        # what alert rules decided during the step (pause, stop a map), now it is over
        self.run_deferred()
        return handled

    def housekeeping(self) -> None:
        """Every second while changes flow, every few seconds while quiet: a heartbeat,
        settle released parks, finish resuming maps, watch queue budgets; and see that what
        deleted log rows leave behind is purged."""
        self._renew()
        if self.process is not None:
            self.state.heartbeat(self.process, role="applier", note=self._waiting_for())
        try:
            self.replay_released()
            stats = {s: self.logs[s].stats() for s in Side}
        except ConnectorError:
            return
        self._start_purger()
        budget = self.capture.queue
        maps = self.maps(refresh=True)
        for name, m in maps.items():
            rows = sum(stats[s].get(name, (0, 0, None))[0] for s in Side)
            size = sum(stats[s].get(name, (0, 0, None))[1] for s in Side)
            oldest = [x for s in Side if (x := stats[s].get(name, (0, 0, None))[2])]
            age = (time.time() - min(oldest).timestamp()) if oldest else 0.0
            if m.state == "resuming" and rows == 0:
                self.state.set_map_state(name, MapState.RUNNING)
            used = max(rows / budget.max_rows, size / budget.max_bytes,
                       age / budget.max_age_seconds)
            self.alerts.queue_level(name, used, rows, size, age)
        self._sample(maps, stats)
        self.run_deferred()

    def _sample(self, maps: dict[str, Any], stats: dict[Side, dict[str, Any]]) -> None:
        """Every few seconds (not in the first ones), per map: lag and queue into the state
        store's samples (the console's chart, the throughput of `status`); alerts whose cause
        is gone clear. One state-store transaction."""
        monitor = self.monitor()
        now = time.time()
        if not monitor.due(now):
            return
        parked = self.state.parked_count()
        per_map = {}
        for name, m in maps.items():
            rows = sum(stats[s].get(name, (0, 0, None))[0] for s in Side)
            oldest = [x for s in Side if (x := stats[s].get(name, (0, 0, None))[2])]
            applying = m.state in APPLYING
            lag = max(0.0, now - min(oldest).timestamp()) if oldest and applying else 0.0
            per_map[name] = (lag, rows if applying else 0, rows + parked.get(name, 0))
        monitor.sample(per_map, now)

    def _waiting_for(self) -> str | None:
        """What keeps this applier from applying, for ``status`` (None: nothing)."""
        down = [f"{self.env[x.other]} unreachable ({e})" for x, e in self.last_error.items()
                if e is not None]
        return "; ".join(down) or None

    def _start_purger(self) -> None:
        """MariaDB keeps deleted log rows as history, PostgreSQL keeps them as dead row
        versions, and every read of the log wades through them until they are purged
        (vacuumed): purge every second after something was deleted (cheap when small), on a
        thread of its own. Inline, purging what a 20,000-row transaction left took about
        50 ms on MariaDB, which every change arriving meanwhile waited for."""
        logs = [c for c in self.logs.values() if c.needs_purge]
        if not logs or self._purger is not None:
            return

        def purge() -> None:
            while not self._purger_stop.wait(_PURGE_EVERY):
                for c in logs:
                    try:
                        c.purge()
                    except ConnectorError as exc:  # unreachable: the applier says so
                        log.debug("purging the change log: %s", exc)

        self._purger = threading.Thread(target=purge, name="dualwrite-log-purge", daemon=True)
        self._purger.start()


class _Signals:
    """Waits on the signals of several sides' change logs at once; a call returns at the
    first one, with the sides that signalled, or after ``timeout`` seconds (none)."""

    def __init__(self, signals: dict[Side, ChangeSignal]) -> None:
        self.sides = dict(signals)
        self.sel = selectors.DefaultSelector()
        for side, signal in self.sides.items():
            self.sel.register(signal.fileno(), selectors.EVENT_READ, (side, signal))

    def __call__(self, timeout: float) -> set[Side]:
        fired = set()
        for key, _ev in self.sel.select(timeout):
            side, signal = key.data
            signal.drain()
            fired.add(side)
        return fired

    def close(self) -> None:
        self.sel.close()
        for signal in self.sides.values():
            with contextlib.suppress(Exception):
                signal.close()


def run_applier(link: Link, stop: threading.Event, *, ready: Callable[[], None] | None = None,
                prepare: Callable[[], None] | None = None, wait_for_lock: bool = True,
                runner: Callable[[Applier, threading.Event, Callable[[], None] | None], None]
                | None = None) -> None:
    """Take the link's applier lease (waiting for it, as a standby, while another process
    holds it), recover in-doubt live transactions, then apply captured changes until ``stop``
    is set. A database that cannot be reached, at start or later, is waited for with backoff
    (the process does not exit); the process is registered in the state store with its role
    and a heartbeat, so that ``status`` shows whether anything applies. An applier that loses
    its lease (stopped or cut off for longer than it lasts, see dualwrite.engine.lease)
    commits nothing more and stands by again. ``prepare`` runs once the maps are valid (it
    may need the databases too: loading rules). ``runner(applier, stop, ready)``, if given,
    does the holder's work instead of ``applier.run`` (the JetStream reader, see
    dualwrite.engine.jetstream); it raises LeaseLost like it when the lease is lost."""
    me = link.state.register_process(link.config.link_name, "standby")
    lease = link.applier_lease()
    name = link.config.link_name
    waited = False
    try:
        while not stop.is_set():
            while not _try_acquire(lease, stop):
                if stop.is_set():
                    return
                holder = _holder_text(lease)
                if not waited:
                    log.info("standing by: %s applies link %r; this process takes over if it "
                             "stops", holder, name,
                             extra={"event": "standby", "applier_pid": lease.holder()})
                    metrics.APPLIER_LEADER.labels(name).set(0)
                    waited = True
                if not wait_for_lock:
                    raise LinkError(
                        f"another applier ({holder}) is running for link {name!r}",
                        hint="one applier per link: stop the other `dualwrite run` or `serve`, "
                        "or let this one wait as a standby")
                with contextlib.suppress(TransientConnectorError):
                    link.state.heartbeat(me, role="standby",
                                         note=f"standing by: {holder} applies")
                if stop.wait(1.0):
                    return
            if waited:
                log.warning("failover: this process (pid %s) applies link %r now (lease epoch "
                            "%s)", os.getpid(), name, lease.epoch,
                            extra={"event": "failover", "epoch": lease.epoch})
            metrics.APPLIER_LEADER.labels(name).set(1)
            applier = _start_applier(link, stop, me, prepare, lease)
            if applier is None:
                return
            try:
                if runner is None:
                    applier.run(stop, ready=ready)
                else:
                    runner(applier, stop, ready)
                return
            except LeaseLost as exc:
                log.warning("%s; standing by", exc, extra={"event": "lease_lost"})
                metrics.APPLIER_LEADER.labels(name).set(0)
                with contextlib.suppress(TransientConnectorError):
                    link.state.heartbeat(me, role="standby", note="lost the lease")
                ready, waited = None, True
            finally:
                applier.close()
    finally:
        metrics.APPLIER_LEADER.labels(name).set(0)
        # a state store that cannot be reached: the lease runs out, the row is swept
        with contextlib.suppress(TransientConnectorError):
            lease.release()
        with contextlib.suppress(TransientConnectorError):
            link.state.unregister_process(me)


def _try_acquire(lease: ApplierLease, stop: threading.Event) -> bool:
    """Take the lease if free; while the state store cannot be reached, wait for it (a
    standby cannot take over through a store it cannot reach, nor can anyone else)."""
    said = False
    while not stop.is_set():
        try:
            return lease.acquire()
        except TransientConnectorError as exc:
            if not said:
                log.warning("%s; waiting for it to take the applier lease", exc,
                            extra={"event": "unreachable", "side": "state"})
                said = True
            stop.wait(1.0)
    return False


def _holder_text(lease: ApplierLease) -> str:
    """"pid N" of the lease's holder, with its host when that is another one."""
    try:
        info = lease.holder_info()
    except TransientConnectorError:
        info = None
    if info is None:
        return "another process"
    host, pid, _epoch = info
    return f"pid {pid}" + ("" if host == socket.gethostname() else f" (on {host})")


def _start_applier(link: Link, stop: threading.Event, me: str,
                   prepare: Callable[[], None] | None, lease: ApplierLease) -> Applier | None:
    """Validate the maps, recover in-doubt transactions and make the applier, holding
    ``lease`` (its fence raised in both databases), waiting with backoff while a database
    cannot be reached. None when stopped meanwhile."""
    delay = 0.1
    note: str | None = None
    while not stop.is_set():
        # the note stays while the next attempt runs: until one succeeds, the process is
        # still waiting (clearing it here let `status` see no reason between two attempts)
        link.state.heartbeat(me, role="applier", note=note)
        try:
            link.bound_maps()
            if prepare is not None:
                prepare()
            applier = link.applier(process=me)
            try:
                # the fence first: an older holder still running commits nothing from here
                # on, recovery of in-doubt transactions included
                applier.hold(lease)
                link.recover()
            except BaseException:
                applier.close()
                raise
            return applier
        except TransientConnectorError as exc:
            note = f"waiting for a database: {exc.message}"
            # the note first: `status` then says what the log says
            link.state.heartbeat(me, role="applier", note=note)
            log.warning("%s; retrying in %.1f s", note, delay)
            link.forget_validation()
            stop.wait(delay)
            delay = min(delay * 2, link.config.model.capture.max_backoff)
    return None


__all__ = ["ApplierLoop", "run_applier"]
