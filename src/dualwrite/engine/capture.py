"""Applying captured changes: writes that bypassed dualwrite reach the other side.

The :class:`Applier` reads each environment's change log (see
:mod:`dualwrite.connectors.capture`) and applies what it finds to the other side, for every map
in an applying state (``running``, ``resuming``). What it guarantees, and how:

* **Order.** Changes are read oldest first and applied transaction by transaction, in the
  order of each transaction's last change. A transaction that wrote after another one
  committed has a later last change, so it is applied after it: every pair of transactions
  that touch the same row, or where one read what the other wrote, is applied in commit
  order. A source transaction is never split; under load, consecutive source transactions
  are applied together in one target transaction (group commit).
* **Exactly once.** The applied position ((source, map, transaction), or a high-water mark on
  SQLite) is written in the same target transaction as the rows. A change read again after a
  crash is recognised and skipped; it is then deleted from the source log.
* **No echo.** The applier's own writes are invisible to the triggers (connectors mark them).
* **Conflicts.** Before writing a row, the applier locks the target row and compares it with
  the version the change started from (its captured old values). If the target holds that
  version, or already holds the new one, there is nothing to decide. Otherwise, if both sides
  now agree, the change was superseded; if the target has changes of its own still queued for
  that row, both sides changed it since it was last synced: a conflict, settled by the map's
  policy (``left-wins``, ``right-wins``, ``newest-wins`` by capture time, or ``manual``, which
  parks the row in the error inbox). A target row that differs without queued changes of its
  own (written while capture was not installed) takes the incoming change.
* **Nothing lost.** A change that cannot be applied (a constraint on the target, a lookup that
  does not resolve) goes to the error inbox with the reason, its key is parked, and later
  changes to that key wait behind it in the state store while every other row flows. An
  unreachable target leaves the changes in the source log, retried with backoff.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import operator
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, cast

from dualwrite.connectors.base import JsonSource, JsonValue, Row, WriteSession
from dualwrite.connectors.capture import (
    MARKER,
    WATERMARK,
    CaptureLog,
    CaptureSpec,
    Change,
    MariaDbDialect,
    PostgresDialect,
    columns_of_filter,
    decode_json,
    parse_time,
)
from dualwrite.engine import metrics
from dualwrite.engine.diff import Entry, MapDiffer, coerce
from dualwrite.engine.lease import ApplierLease
from dualwrite.engine.live import RuleContext
from dualwrite.engine.lookups import LookupResolver, RelatedKey, SessionLookups
from dualwrite.engine.settle import Edit, changed_fields
from dualwrite.engine.settle import settle as settle_versions
from dualwrite.engine.state import (
    InboxEntry,
    MapState,
    ParkedChange,
    StateStore,
    decode_doc,
    now_iso,
)
from dualwrite.errors import (
    ConnectorError,
    ConstraintViolation,
    DualwriteError,
    LeaseLost,
    LinkError,
    RowError,
    TransientConnectorError,
    ValidationFailed,
)
from dualwrite.model.binding import BoundMap
from dualwrite.model.conversion import from_log
from dualwrite.model.filters import evaluate
from dualwrite.model.maps import ConflictPolicy, Side
from dualwrite.model.schema import Kind
from dualwrite.model.values import canonical, value_key

if TYPE_CHECKING:
    from dualwrite.engine.link import Link

log = logging.getLogger("dualwrite.capture")

#: the longest wait of a quiet applier whose sides all notify (PostgreSQL)
_NOTIFIED_IDLE_MAX = 1.0

#: kinds of the constants (defaults) the set-based statements write as literals
_CONSTANT_KINDS = frozenset({Kind.STRING, Kind.INTEGER, Kind.BOOLEAN, Kind.DECIMAL})
#: kinds of the columns a value map or a resolved lookup reads from and writes into on the
#: set-based path: their values' JSON text is one spelling each
_MAPPED_KINDS = frozenset({Kind.STRING, Kind.INTEGER, Kind.BOOLEAN})
_MISSING: Any = object()

#: map states in which captured changes are applied
APPLYING = ("running", "resuming")
#: the log event of a map's move into a state, as the applier sees it
_STATE_EVENTS = {"paused": "paused", "resuming": "resumed", "running": "running",
                 "held": "held", "failed": "failed"}
#: map states in which capture is installed (a failed map keeps capturing: nothing is lost
#: while it is out)
CAPTURING = ("initializing", "running", "paused", "resuming", "failed")


def capture_specs(bound: BoundMap) -> dict[Side, CaptureSpec]:
    """What each side's triggers capture for ``bound``: its key and every column the map
    reads, filter columns included."""
    out = {}
    for s in Side:
        cols = list(bound.read_columns(s))
        flt = bound.filter(s)
        if flt is not None:
            cols += sorted(c for c in columns_of_filter(flt) if c not in cols)
        out[s] = CaptureSpec(bound.name, bound.table(s), tuple(bound.key(s)), tuple(cols),
                             bound.spec.version)
    return out


# -- one action -----------------------------------------------------------------------------
_LAZY: Any = object()


class _Action:
    """A captured change, decoded for one map: what the source row was and became.

    ``old``/``new`` are rows of the map's source columns, or None where there is no such
    version (or it lies outside the map's filter). For a map without a filter they are
    decoded only when first asked for: the set-based paths never ask."""

    __slots__ = ("_decode", "_new", "_old", "change", "ctx", "kind", "lkey", "skey",
                 "source", "tkey")

    def __init__(self, change: Change, source: Side, kind: str, old: Row | None,
                 new: Row | None, skey: Row, tkey: Row, lkey: Row,
                 decode: Callable[[dict[str, Any]], Row] | None = None,
                 ctx: _MapCtx | None = None) -> None:
        self.ctx = ctx  # the map, as the version the change was captured under says
        self.change = change
        self.source = source
        self.kind = kind  # "create", "update" or "delete"
        self._old, self._new = old, new  # a row, None, or _LAZY (decode on first use)
        self.skey = skey
        self.tkey = tkey
        self.lkey = lkey  # the key on the left side: how a row is parked, whichever side
        self._decode = decode

    @property
    def old(self) -> Row | None:
        if self._old is _LAZY:
            assert self._decode is not None and self.change.old is not None
            self._old = self._decode(self.change.old)
        return self._old

    @property
    def new(self) -> Row | None:
        if self._new is _LAZY:
            assert self._decode is not None and self.change.new is not None
            self._new = self._decode(self.change.new)
        return self._new


#: kinds whose JSON text (as PostgreSQL's row_to_json and MariaDB's JSON_OBJECT write it:
#: numbers as numbers, dates, times and timestamps as ISO text, without a zone where the
#: column has none) the target's own input function reads back to the same value
_JSON_KINDS = frozenset({Kind.STRING, Kind.INTEGER, Kind.DECIMAL, Kind.FLOAT, Kind.BOOLEAN,
                         Kind.DATE, Kind.DATETIME, Kind.TIME, Kind.UUID})


@dataclass
class _JsonPlan:
    """Target columns and how each is read from a captured version (JSON text) by the target
    database: a member copied (its source column's name) or computed (:class:`JsonValue`)."""

    live_columns: list[str]
    live_sources: list[JsonSource]
    insert_columns: list[str]
    insert_sources: list[JsonSource]
    #: per target key column, the source column it is copied from
    key_sources: list[str]
    #: per mapping a JsonValue names: its pairs (a value map: fixed), or the source lookup
    #: whose ids are resolved per run (see Applier._mappings)
    mappings: list[list[tuple[str, Any]] | _SourceLookup] = field(default_factory=list)


@dataclass
class _SourceLookup:
    """A lookup on the source side, resolved before the write: the ids a run's versions hold
    in member ``member``, turned into natural keys by the source database, as pairs (id as
    JSON text, natural key in the target column's kind)."""

    member: str
    field: int
    kind: Kind


@dataclass
class _MapCtx:
    bound: BoundMap
    differ: MapDiffer
    state: str


@dataclass
class BatchResult:
    applied: int = 0
    skipped: int = 0
    conflicts: int = 0
    parked: int = 0


@dataclass
class _Outcome:
    #: conflicts settled in this transaction, one per (map, key) however many of its changes
    #: met the target's own
    conflicts: dict[tuple[str, tuple[Any, ...]], dict[str, Any]] = field(default_factory=dict)
    parked: list[tuple[_Action, str, str, dict[str, Any] | None]] = field(default_factory=list)
    applied: int = 0
    skipped: int = 0
    #: (map, canonical left key) parked in this transaction: later changes to it wait
    held: set[tuple[str, tuple[Any, ...]]] = field(default_factory=set)
    #: per map, target keys written without first locking the row and looking at the
    #: target's queue (the optimistic fast paths): looked at before commit (_recheck)
    unchecked: dict[str, list[Row]] = field(default_factory=dict)
    #: maps whose capture could not record a change (a marker in the log), with the reason
    broken: dict[str, str] = field(default_factory=dict)


@dataclass
class _Mode:
    """How one attempt at an apply transaction writes: run length, whether every row is
    compared first, the changes that failed before (by seq) and the keys held back."""

    limit: int
    careful: bool
    excluded: dict[int, DualwriteError]
    blocked: set[tuple[str, tuple[Any, ...]]]
    #: source transaction id -> seq of its change that failed: the rest of it waits
    failed_tx: dict[str, int] = field(default_factory=dict)


class _Postpone(Exception):
    """An entry cannot be settled yet: roll back what was written for it (see _settle)."""


class _Recheck(Exception):
    """A row written by a fast path turned out to have changes of its own queued on the
    target (committed before the write locked it): roll back and apply the batch again
    carefully, so that the conflict is seen."""


class _Restart(Exception):
    """Roll back and apply the batch again without the action that failed."""

    def __init__(self, action: _Action, error: DualwriteError) -> None:
        super().__init__(str(error))
        self.action = action
        self.error = error


#: seconds between housekeeping passes (heartbeat, lease, queue budgets, samples) while
#: changes flow, and at most while the link is quiet (HEARTBEAT_TIMEOUT is 10 s)
_HOUSEKEEPING = 1.0
_IDLE_HOUSEKEEPING = 3.0


class Applier:
    """Applies captured changes of one link, both directions. Thread-compatible, not
    thread-safe: one applier runs in one thread (``run``)."""

    def __init__(self, link: Link, *, batch: int | None = None, poll: float | None = None,
                 process: str | None = None) -> None:
        self.link = link
        #: this process's id in the state store, given a heartbeat by housekeeping
        self.process = process
        cfg = link.config.model.capture
        self.batch = batch or cfg.batch_size
        self.poll = poll if poll is not None else cfg.poll_interval
        self.logs: dict[Side, CaptureLog] = {s: link.connectors[s].capture_log() for s in Side}
        self.state: StateStore = link.state
        self.env = {s: link.env_name(s) for s in Side}
        #: metric labels: the link, and per source side the direction it applies
        self._link_name = link.config.link_name
        self._direction = {s: f"{self.env[s]}->{self.env[s.other]}" for s in Side}
        self._maps: dict[str, _MapCtx] = {}
        self._maps_at = 0.0
        self._maps_version = -1  # the store's map_states_version when last read
        self._prune: dict[Side, list[tuple[str, str]]] = {s: [] for s in Side}
        self._backoff: dict[Side, float] = {s: 0.0 for s in Side}
        self._retry_at: dict[Side, float] = {s: 0.0 for s in Side}
        self.last_error: dict[Side, str | None] = {s: None for s in Side}
        self._activity: dict[str, tuple[str, int]] = {}
        self._flushed = 0.0
        self._purger: threading.Thread | None = None
        self._purger_stop = threading.Event()
        self._parked: set[tuple[str, tuple[Any, ...]]] | None = None
        self._decoders: dict[tuple[str, str, Side], Callable[[dict[str, Any]], Row]] = {}
        self._json_plans: dict[tuple[str, str, Side], _JsonPlan | None] = {}
        #: maps as older versions say, for changes captured under them (see _ctx_of)
        self._versions: dict[tuple[str, str], _MapCtx | None] = {}
        self.alerts = link.alerts()
        self._waiter: Any = None
        self._waiter_at = 0.0
        #: the lease this applier applies under (None: not fenced, e.g. a one-off drain in
        #: tests or `sync`); its epoch goes with every transaction committed in a database
        self.lease: ApplierLease | None = None
        self._epoch: int | None = None

    # -- the lease and its fence ---------------------------------------------------------------
    def hold(self, lease: ApplierLease) -> None:
        """Apply under ``lease`` (held): raise its fence in both databases now, before any
        change is applied, so that an earlier holder still running commits nothing more."""
        assert lease.epoch is not None, "hold() wants a held lease"
        # A fence above the lease's epoch: the state store was made anew (or restored from a
        # backup) while the databases kept their fences. The holder moves its epoch past them.
        highest = 0
        for s in Side:
            with self.link.connectors[s].translating(  # type: ignore[attr-defined]
                    "read the applier fence"), self.link.connectors[s].transaction() as sess:
                highest = max(highest, self.logs[s].fence_epoch(_conn(sess), self._link_name))
        if highest >= lease.epoch:
            lease.advance(highest + 1)
        assert lease.epoch is not None
        self.lease, self._epoch = lease, lease.epoch
        for s in Side:
            with self.link.connectors[s].translating(  # type: ignore[attr-defined]
                    "raise the applier fence"), self.link.connectors[s].transaction() as sess:
                self.logs[s].fence(_conn(sess), self._link_name, lease.epoch)

    def _fenced(self) -> tuple[str, int] | None:
        return (self._link_name, self._epoch) if self._epoch is not None else None

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

    # -- maps --------------------------------------------------------------------------------
    def maps(self, refresh: bool = False) -> dict[str, _MapCtx]:
        """Maps whose capture is installed, with their state (re-read at most every 0.2 s,
        so that pause/resume from another process take effect promptly)."""
        now = time.monotonic()
        version = self.state.map_states_version
        if refresh or now - self._maps_at > 0.2 or version != self._maps_version:
            self._maps_version = version
            states = self.state.map_states()
            if self.link._adopt_versions(states):
                # a map was reloaded: build its row builders, decoders and plans anew
                self._maps, self._decoders, self._json_plans = {}, {}, {}
                self._versions = {}
            out = {}
            bound, issues = self.link.valid_maps()
            if any((states.get(n) or {}).get("state") in APPLYING for n in issues):
                # resumed (or started) after a fault: see the tables as they are now
                self.link.forget_validation()
                bound, issues = self.link.valid_maps()
            held = held_by_dependencies(
                {b.name: b.spec.depends_on for b in bound},
                {n: str((st or {}).get("state")) for n, st in states.items()})
            for b in bound:
                st = (states.get(b.name) or {}).get("state")
                if st in CAPTURING:
                    old = self._maps.get(b.name)
                    differ = old.differ if old else self.link.differ(b.name)
                    # a map whose dependency does not apply is held with it: its rows would
                    # only find their related rows missing (lines of a paused order header)
                    out[b.name] = _MapCtx(b, differ, "held" if b.name in held else str(st))
            for name, m in out.items():
                was = self._maps.get(name)
                if was is not None and was.state != m.state:
                    # a pause or resume made by any process, as this applier sees it
                    log.info("map %s is %s (was %s)", name, m.state, was.state,
                             extra={"event": _STATE_EVENTS.get(m.state, m.state), "map": name,
                                    "state": m.state, "was": was.state})
            self._maps, self._maps_at = out, now
            for name, found in issues.items():
                if (states.get(name) or {}).get("state") in APPLYING:
                    # a map that no longer binds (a table or column gone, a map file broken)
                    # is out of the link, the others go on
                    self.fail_map(name, "binding the map", ValidationFailed(found))
        return self._maps

    # -- the loop ----------------------------------------------------------------------------
    def run(self, stop: threading.Event, *, ready: Callable[[], None] | None = None) -> None:
        """Apply until ``stop`` is set. Waits for changes on PostgreSQL's NOTIFY, else polls."""
        self.prune_markers()
        self.replay_released()
        if ready:
            ready()
        last_housekeeping = 0.0
        state_down: str | None = None
        idle = 0  # passes in a row that found nothing
        while not stop.is_set():
            done = self.step()
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
            if done == 0:
                self._wait(stop, idle)
        with contextlib.suppress(TransientConnectorError):
            self.flush_activity(force=True)

    def _wait(self, stop: threading.Event, idle: int = 0) -> None:
        """Wait for changes: until a PostgreSQL side notifies, or the next look at a polled
        log. A link that stays quiet is looked at less and less often (``idle``: passes in a
        row that found nothing; the wait doubles each time, up to capture.idle_poll_max, or
        up to a second when every side notifies): a quiet applier costs next to nothing,
        and the first change after a quiet spell is still seen within that bound."""
        delay = self.poll
        if idle > 1:
            cap = max(self.poll, self.link.config.model.capture.idle_poll_max)
            delay = min(cap, self.poll * 2 ** min(idle - 1, 16))
        pending_retry = [t - time.monotonic() for t in self._retry_at.values()
                         if t > time.monotonic()]
        if pending_retry:
            delay = min(delay, max(min(pending_retry), 0.001))
        waiter = self._notify_waiter()
        if waiter is None:
            stop.wait(delay)
            return
        try:
            # only PostgreSQL sides notify: with another kind of side, wake at least every
            # poll interval to look at its log
            everyone_notifies = len(waiter.conns) == len(self.link.connectors)
            if everyone_notifies and not pending_retry:
                # a notification wakes it at once; the timeout only bounds how late a
                # change that notifies nobody is seen (an application's two-phase commit)
                waiter(min(_NOTIFIED_IDLE_MAX, max(delay, 0.05) * 2 ** min(max(idle - 1, 0), 8)))
            else:
                waiter(delay)
        except Exception as exc:  # any failure of the LISTEN session
            # A lost LISTEN session (server restart, terminated backend) must not stop the
            # applier: poll, and listen again a little later.
            log.warning("LISTEN session lost (%s); polling until it is back", exc)
            waiter.close()
            self._waiter = None
            self._waiter_at = time.monotonic() + 1.0
            stop.wait(delay)

    def _notify_waiter(self) -> _PgListener | None:
        """LISTEN on the PostgreSQL sides, so that their changes wake the applier at once (set
        up again after a failure, at most once a second)."""
        if self._waiter is None and time.monotonic() >= self._waiter_at:
            self._waiter = False
            urls = [c.url for c in self.link.connectors.values()
                    if c.engine.dialect.name == "postgresql"]  # type: ignore[attr-defined]
            if urls:
                try:
                    self._waiter = _PgListener(urls)
                except Exception:  # unreachable now: poll, retry later
                    self._waiter = None
                    self._waiter_at = time.monotonic() + 1.0
        return self._waiter or None

    def close(self) -> None:
        if self._waiter:
            self._waiter.close()
        if self._purger is not None:
            self._purger_stop.set()
            self._purger.join(timeout=30)
            self._purger = None
        self.flush_activity(force=True)

    def step(self) -> int:
        """One pass over both directions; returns how many changes were handled."""
        handled = 0
        for s in Side:
            if time.monotonic() < self._retry_at[s]:
                continue
            try:
                try:
                    handled += self.apply_from(s)
                except (TransientConnectorError, LeaseLost):
                    raise
                except Exception as exc:
                    handled += self._isolate(s, exc)
                self._backoff[s] = 0.0
                if self.last_error[s] is not None:
                    log.info("capture %s -> %s: reachable again; applying", self.env[s],
                             self.env[s.other], extra={"event": "reconnected",
                                                       "side": self.env[s.other]})
                self.last_error[s] = None
            except TransientConnectorError as exc:
                self._backoff[s] = min(max(self._backoff[s] * 2, 0.1),
                                       self.link.config.model.capture.max_backoff)
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
        return handled

    def _isolate(self, s: Side, exc: BaseException) -> int:
        """A batch from side ``s`` failed for a reason that retrying will not fix (a change
        that fails alone is parked, so this is a fault of a map: a table gone, a permission
        taken away, a bug). Each map's changes are applied on their own to find the maps at
        fault; those fail (state ``failed``, the reason in an event and an alert), and the
        others keep flowing. A failed map's changes stay queued in the log until it is
        resumed. (Changes of one source transaction that span a failed map and another are
        then applied for the other map alone: the lesser evil than stopping every map.)"""
        maps = [n for n, m in self.maps().items() if m.state in APPLYING]
        if len(maps) <= 1:
            for name in maps:
                self.fail_map(name, f"applying changes from {self.env[s]}", exc, s=s)
            return 0
        handled = 0
        for name in maps:
            try:
                handled += self.apply_from(s, only=[name])
            except (TransientConnectorError, LeaseLost):
                raise
            except Exception as one:
                self.fail_map(name, f"applying changes from {self.env[s]}", one, s=s)
        return handled

    def fail_map(self, name: str, doing: str, exc: BaseException, *,
                 s: Side | None = None) -> None:
        """Take a map out of the link: state ``failed`` (queued changes stay in the log; a
        resume puts it back), the reason recorded as a ``failed`` event (alert rules see it),
        and logged. ``doing``: what failed ("applying changes from erp"); ``s``: the side whose
        changes it was applying, if any."""
        reason = str(exc) if isinstance(exc, DualwriteError) else \
            f"{type(exc).__name__}: {exc} (a fault of dualwrite: please report it)"
        log.error("map %s failed %s: %s", name, doing, reason,
                  exc_info=not isinstance(exc, DualwriteError),
                  extra={"event": "failed", "map": name,
                         "side": self.env[s.other] if s is not None else None})
        metrics.APPLY_ERRORS.labels(self._link_name, name, self._direction[s] if s is not None
                                    else "-", "failed").inc()
        self.state.set_map_state(name, MapState.FAILED)
        self.event(name, "failed", f"{doing}: {reason}")
        # its tables may have changed: describe them and bind the map again when it resumes
        self._maps.pop(name, None)
        self._decoders = {k: v for k, v in self._decoders.items() if k[0] != name}
        self._json_plans = {k: v for k, v in self._json_plans.items() if k[0] != name}
        self.link.forget_validation()
        self._maps_at = 0.0  # read again at the next look

    # -- one direction -----------------------------------------------------------------------
    def apply_from(self, s: Side, only: Sequence[str] | None = None) -> int:
        """Read one batch from side ``s``'s log (of the maps ``only``, else of every applying
        map) and apply it to the other side."""
        maps = {n: m for n, m in self.maps().items() if m.state in APPLYING
                and (only is None or n in only)}
        if not maps:
            return 0
        first, rest = self.logs[s].read_start(list(maps), self.batch)
        if not first:
            return 0
        # With a rest still being read, the first part is one transaction: it is applied
        # meanwhile, and the rest follows it in the same target transaction.
        ordered = _in_commit_order(first, self.logs[s].has_txid)
        self.apply_changes(s, ordered, maps, rest=rest)
        return len(ordered)  # the rest included

    def apply_changes(self, s: Side, changes: list[Change], maps: dict[str, _MapCtx], *,
                      forget: bool = True, check_applied: bool = True,
                      rest: Future[list[Change]] | None = None) -> BatchResult:
        """Apply ``changes`` (in order) from side ``s``: one target transaction, retried
        without each change that fails (which goes to the inbox, its key parked).

        ``rest``, if given, delivers the rest of the transaction that ``changes`` begin (its
        later changes, in order) while the first ones are applied; ``changes`` is extended
        with them, in place, before this returns."""
        t = s.other
        started = time.perf_counter()
        excluded: dict[int, DualwriteError] = {}
        failed_tx: dict[str, int] = {}
        row_mode = careful = False
        parked_keys = self._parked_keys()
        while True:
            outcome = _Outcome()
            try:
                # every statement of the apply transaction passes the connector's error
                # translation: a lost session is a transient error, retried with backoff
                with self.link.connectors[t].translating(  # type: ignore[attr-defined]
                        "apply captured changes"), \
                        self.link.connectors[t].transaction() as sess:
                    conn = _conn(sess)
                    # the rest has no transaction the first part has not: its pairs are known
                    pairs = sorted({(c.map, c.txid) for c in changes})
                    done, marks = self.logs[t].applied(conn, self.env[s], pairs) \
                        if check_applied else (set(), {})
                    blocked = set(parked_keys)
                    mode = _Mode(1 if row_mode else self.batch, careful, excluded, blocked,
                                 failed_tx)
                    todo = self._apply_part(sess, s, changes, maps, outcome, mode, done, marks)
                    if rest is not None:
                        more = rest.result()
                        rest = None
                        changes.extend(more)
                        # a new list: the first part's may be ``changes`` itself
                        todo = todo + self._apply_part(sess, s, more, maps, outcome, mode,
                                                       done, marks)
                    # Rows the fast paths wrote without looking at the target's queue first
                    # are looked at now that this transaction holds them: a change of the
                    # target's own, committed before the write, means a conflict to settle.
                    self._recheck(sess, t, maps, outcome)
                    # Record conflicts, then park (state store), then commit the target: a
                    # crash in between does them again on redelivery (each is idempotent),
                    # never loses one. In that order: once a key is parked, its change comes
                    # back as one waiting behind it, and is not seen as a conflict again.
                    keep = self.link.config.model.capture.keep_conflict_values
                    for c in outcome.conflicts.values():
                        self.state.add_conflict(**c, keep=keep)
                    self._park(s, outcome.parked)
                    # the fence and the applied positions (a replay from the state store has
                    # none), last before the commit, in one round trip
                    self.logs[t].finish_apply(
                        conn, self.env[s], _positions(todo) if check_applied else [],
                        self._prune[s], self._fenced())
                break
            except _Restart as r:
                excluded[r.action.change.seq] = r.error
                if r.action.change.txid != WATERMARK:
                    failed_tx[r.action.change.txid] = r.action.change.seq
                row_mode = careful = True
            except _Recheck:
                careful = True
            except (RowError, ConstraintViolation) as exc:
                # A batch failed: again, checking every target row first (an optimistic
                # bulk insert met a row already there), then one row per statement to find
                # the culprit.
                if row_mode:
                    raise LinkError(f"a change failed outside any row: {exc}") from exc
                row_mode = careful
                careful = True
            if rest is not None:  # failed before the rest was taken: take it for the retry
                changes.extend(rest.result())
                rest = None
        self._count(s, changes, todo, outcome, time.perf_counter() - started)
        self._prune[s] = []
        if forget:
            self.logs[s].forget([c.seq for c in changes], fence=self._fenced())
            self._prune[s] = sorted({(c.map, c.txid) for c in changes if c.txid != WATERMARK})
        for name, reason in outcome.broken.items():
            self._capture_broken(name, reason)
        for c in outcome.conflicts.values():
            self.event(c["map_name"], "conflict", f"key {c['key']}: {c['winner']} wins")
        for a, status, kind, info in outcome.parked:
            if status == "error" and kind != "conflict":  # conflicts were counted above
                self.event(a.change.map, kind, str((info or {}).get("reason", "")))
        now = now_iso()
        for name in {c.map for c in changes}:
            prev = self._activity.get(name, ("", 0))
            self._activity[name] = (now, prev[1] + sum(1 for c in changes if c.map == name))
        self.flush_activity()
        return BatchResult(outcome.applied, outcome.skipped, len(outcome.conflicts),
                           len(outcome.parked))

    def _count(self, s: Side, changes: list[Change], todo: list[Change], outcome: _Outcome,
               seconds: float) -> None:
        """Metrics and logs of one committed apply transaction: every change counted once
        by outcome (applied: the target holds it; duplicate: applied before, delivered again;
        parked: to the inbox, or waiting behind an entry there), its source transactions,
        its conflicts by resolution, its duration."""
        link, direction = self._link_name, self._direction[s]
        metrics.child(metrics.APPLY_DURATION, link, direction).observe(seconds)
        parked = {a.change.seq for a, *_rest in outcome.parked}
        fresh = {c.seq for c in todo} if len(todo) != len(changes) else None
        applied: list[tuple[str, str]] = []
        dup: list[tuple[str, str]] = []
        held: list[tuple[str, str]] = []
        for c in changes:
            item = (c.map, c.op)
            (held if c.seq in parked else dup if fresh is not None and c.seq not in fresh
             else applied).append(item)
        metrics.count_changes(metrics.CHANGES_CAPTURED, link, direction,
                              [(c.map, c.op) for c in changes])
        for outcome_name, items in (("applied", applied), ("duplicate", dup),
                                    ("parked", held)):
            if items:
                metrics.count_changes(metrics.CHANGES_APPLIED, link, direction, items,
                                      outcome_name)
        txids = {c.txid for c in todo if c.seq not in parked}
        if txids:
            # a SQLite log has no transaction ids: each applied read (a snapshot) counts one
            metrics.child(metrics.TRANSACTIONS_APPLIED, link, direction).inc(
                len(txids - {WATERMARK}) + (WATERMARK in txids))
        for cf in outcome.conflicts.values():
            metrics.CONFLICTS.labels(link, cf["map_name"], direction, cf["winner"]).inc()
            log.info("conflict on map %s, key %s: %s (policy %s)", cf["map_name"], cf["key"],
                     "parked in the inbox" if cf["winner"] == "manual"
                     else f"{self.env[Side(cf['winner'])]} wins", cf["policy"],
                     extra={"event": "conflict", "map": cf["map_name"],
                            "side": self.env[Side(cf["source"])], "key": list(cf["key"]),
                            "policy": cf["policy"], "winner": cf["winner"]})
        for a, status, kind, _info in outcome.parked:
            if status == "error":
                metrics.APPLY_ERRORS.labels(link, a.change.map, direction, kind).inc()
        if log.isEnabledFor(logging.DEBUG):
            by_tx: dict[str, list[Change]] = {}
            for c in todo:
                if c.seq not in parked:
                    by_tx.setdefault(c.txid, []).append(c)
            for txid, cs in by_tx.items():
                log.debug("applied transaction %s from %s: %d change(s) of %s", txid,
                          self.env[s], len(cs), ", ".join(sorted({c.map for c in cs})),
                          extra={"event": "applied", "side": self.env[s.other],
                                 "source": self.env[s],
                                 # a SQLite log has no transaction ids
                                 "txid": None if txid == WATERMARK else txid,
                                 "keys": len(cs),
                                 "map": cs[0].map if len({c.map for c in cs}) == 1
                                 else None})

    def _apply_part(self, sess: WriteSession, s: Side, part: list[Change],
                    maps: dict[str, _MapCtx], outcome: _Outcome, mode: _Mode,
                    done: set[tuple[str, str]], marks: dict[str, int]) -> list[Change]:
        """Apply consecutive changes of one apply transaction; returns those that were not
        applied before (their positions are to be recorded)."""
        todo = part if not done and not marks else [
            c for c in part if (c.map, c.txid) not in done
            and not (c.txid == WATERMARK and c.seq <= marks.get(c.map, -1))]
        changes = todo
        if any(c.op == MARKER for c in part):  # markers of applied transactions too
            for c in part:
                if c.op == MARKER:
                    outcome.broken.setdefault(c.map, c.reason or "")
            changes = [c for c in todo if c.op != MARKER]
        live = []
        blocked, excluded = mode.blocked, mode.excluded
        if any(c.version for c in changes):
            self._unknown_versions(changes, maps, mode)
        # A change that failed parks its whole source transaction (never applied in part):
        # the transaction's other changes wait behind it, whichever map and key they are of.
        failed_tx = mode.failed_tx
        for a in self._actions(s, changes, maps, outcome):
            err = excluded.get(a.change.seq)
            if err is None and not blocked and not failed_tx:  # the common case
                live.append(a)
                continue
            held = (a.change.map, canonical_key(a.lkey))
            if err is not None:
                outcome.parked.append((a, "error", _kind_of(err), {"reason": str(err)}))
                blocked.add(held)  # what follows on this key waits behind it
            elif a.change.txid in failed_tx:
                outcome.parked.append((a, "waiting", "",
                                       {"behind": failed_tx[a.change.txid]}))
                blocked.add(held)
            elif held in blocked:
                outcome.parked.append((a, "waiting", "", None))
            else:
                live.append(a)
        for run in _runs(live, mode.limit):
            if outcome.held:
                # a key parked by an earlier run of this transaction (a manual conflict):
                # its later changes wait behind it, they are not conflicts of their own
                blocked |= outcome.held
                waiting = [a for a in run if (a.change.map, canonical_key(a.lkey)) in blocked]
                if waiting:
                    outcome.parked += [(a, "waiting", "", None) for a in waiting]
                    run = [a for a in run if (a.change.map, canonical_key(a.lkey))
                           not in blocked]
                    if not run:
                        continue
            ctx = run[0].ctx
            assert ctx is not None
            self._apply_run(sess, s, ctx, run, outcome, careful=mode.careful)
        return todo

    # -- decoding ----------------------------------------------------------------------------
    def _actions(self, s: Side, changes: list[Change], maps: dict[str, _MapCtx],
                 outcome: _Outcome) -> list[_Action]:
        """Decode changes into actions for their maps (the hot loop of a large batch: what
        does not depend on the row is looked up once per map)."""
        out = []
        per_map: dict[tuple[str, str], tuple[Any, ...] | None] = {}
        left = s is Side.LEFT
        for c in changes:
            ctx = per_map.get((c.map, c.version), _UNSET)
            if ctx is _UNSET:
                m = self._ctx_of(c, maps)
                ctx = per_map[(c.map, c.version)] = None if m is None else (
                    self._decoder(m, s), m.bound.filter(s), m.differ,
                    operator.itemgetter(*m.differ.key_idx[s]), len(m.differ.key_idx[s]),
                    *self._key_coercions(m.differ, s), m)
            if ctx is None:
                continue
            decode, flt, d, keyget, width, keyfix, tkinds, m = ctx
            if flt is None:
                # No filter: the kind follows from which versions exist, and the keys from
                # the logged key, so the values stay undecoded until a path needs them.
                was, now = c.has_old, c.has_new
                lazy_kind = _KINDS[was][now]
                if lazy_kind is None:
                    outcome.skipped += 1
                    continue
                skey = c.key
                if keyfix:
                    k = list(skey)
                    for i, decode_key in keyfix:
                        if k[i] is not None:
                            k[i] = decode_key(k[i])
                    skey = tuple(k)
                tkey = skey if tkinds is None else tuple(
                    coerce(v, kd) for v, kd in zip(skey, tkinds, strict=True))
                out.append(_Action(c, s, lazy_kind, _LAZY if was else None,
                                   _LAZY if now else None, skey, tkey,
                                   skey if left else tkey, decode, m))
                continue
            old = decode(c.old) if c.old is not None else None
            new = decode(c.new) if c.new is not None else None
            was = old is not None and (flt is None or _matches(flt, d, s, old, c.old))
            now = new is not None and (flt is None or _matches(flt, d, s, new, c.new))
            kind = _KINDS[was][now]
            if kind is None:
                outcome.skipped += 1
                continue
            row = new if new is not None else old
            assert row is not None
            skey = keyget(row) if width > 1 else (keyget(row),)
            tkey = d.target_key(s, row)
            out.append(_Action(c, s, kind, old if was else None, new if now else None,
                               skey, tkey, skey if left else tkey, ctx=m))
        return out

    @staticmethod
    def _key_coercions(d: MapDiffer, s: Side
                       ) -> tuple[list[tuple[int, Callable[[Any], Any]]], list[Kind] | None]:
        """How a key read from the log becomes the source key (the decoders the decoder
        applies to those columns) and the target key (None: the same values, the kinds
        agree; else the target kinds to coerce to, as :meth:`MapDiffer.target_key` does)."""
        t = s.other
        cols = [d.cols[s][d.columns[s][i]] for i in d.key_idx[s]]
        src = [c.kind for c in cols]
        dst = [d.kinds[t][c] for c in d.bound.key(t)]
        keyfix = [(i, fn) for i, c in enumerate(cols) if (fn := from_log(c)) is not None]
        return keyfix, None if src == dst else dst

    def _ctx_of(self, c: Change, maps: dict[str, _MapCtx]) -> _MapCtx | None:
        """The map as the version ``c`` was captured under says (its text kept in the state
        store): after a reload, changes captured before it are applied as the old version
        (their columns are the old version's), those after it as the new one. A version the
        state store does not know, or that no longer binds to the tables, gives the map as
        it is: the change is then parked (see _unknown_versions)."""
        m = maps.get(c.map)
        if m is None or not c.version or c.version == m.bound.spec.version:
            return m
        key = (c.map, c.version)
        if key not in self._versions:
            self._versions[key] = self._bind_version(c.map, c.version, m)
        return self._versions[key] or m

    def _bind_version(self, name: str, version: str, m: _MapCtx) -> _MapCtx | None:
        from dualwrite.engine.config import parse_map_text

        text = self.state.map_definition(name, version)
        if text is None:
            return None
        spec = parse_map_text(text, file=m.bound.spec.file)
        bound, _issues = self.link._bind([spec])
        if not bound:
            return None
        return _MapCtx(bound[0], MapDiffer(bound[0], self.link.connectors), m.state)

    def _unknown_versions(self, changes: list[Change], maps: dict[str, _MapCtx],
                          mode: _Mode) -> None:
        """Changes captured under a version that cannot be applied as such fail (they are
        parked with the reason, with their source transaction), never applied as another
        version."""
        excluded = mode.excluded
        # a map's version is a digest of its text: worked out once per map, not per change
        current = {n: m.bound.spec.version for n, m in maps.items()}
        for c in changes:
            m = maps.get(c.map)
            if m is None or not c.version or c.version == current[c.map] or \
                    self._ctx_of(c, maps) is not m:
                continue
            excluded.setdefault(c.seq, RowError(
                f"captured under map version {c.version}, which the state store does not "
                "know or which no longer fits the tables; applying it as version "
                f"{m.bound.spec.version} could write it wrongly", map=c.map,
                hint="discard it (the rows then differ: `dualwrite verify` names them, "
                "`dualwrite sync --initial` mends them), or bring the tables back"))
            if c.txid != WATERMARK:
                mode.failed_tx.setdefault(c.txid, c.seq)

    def _decoder(self, m: _MapCtx, s: Side) -> Callable[[dict[str, Any]], Row]:
        """A function turning captured values of map ``m`` (its version) from side ``s``, as
        JSON gave them, into a row of its columns in their kinds
        (:func:`dualwrite.model.conversion.from_log`); only kinds JSON cannot carry exactly
        are decoded."""
        name, d = m.bound.name, m.differ
        fn = self._decoders.get((name, m.bound.spec.version, s))
        if fn is None:
            cols = d.columns[s]
            fix = [(i, f) for i, c in enumerate(cols)
                   if (f := from_log(d.cols[s][c])) is not None]

            def decode(values: dict[str, Any]) -> Row:
                row = [values.get(c) for c in cols]
                for i, f in fix:
                    if row[i] is not None:
                        row[i] = f(row[i])
                return tuple(row)

            fn = self._decoders[(name, m.bound.spec.version, s)] = decode
        return fn

    # -- applying one run of like changes ----------------------------------------------------
    def _apply_run(self, sess: WriteSession, s: Side, m: _MapCtx, run: list[_Action],
                   outcome: _Outcome, *, careful: bool = True) -> None:
        """Apply a run of like changes (see the module docstring for the rules).

        Whether the target changed a row too since it was last synced (a conflict, whatever it
        holds now: it may have changed and changed back) is decided from the target's own
        queued changes, looked at only once the row is held by this transaction: before, a
        change the target commits in between would be overwritten unseen. The careful path
        locks the target rows, then looks, compares and writes. The fast paths (unless
        ``careful``) write first, in one statement, and the rows they wrote are looked at
        before commit (:meth:`_recheck`): updates on PostgreSQL write a row only where it still
        holds the old version; creates are inserted optimistically (no twin is the common
        case)."""
        d = m.differ
        kind = run[0].kind
        plan = self._json_plan(m, s)
        if careful or kind == "delete" or \
                (kind == "update" and d.has_lookups and plan is None) or \
                self.link.rules.covers(self.env[s.other], m.bound.table(s.other)):
            self._compare_and_write(sess, s, m, run, outcome, check=True)
            return
        if kind == "update":
            if not self._guarded_update(sess, s, m, run, outcome):
                self._compare_and_write(sess, s, m, run, outcome, check=True)
            return
        texts = [a.change.new_json for a in run] if plan is not None else []
        if plan is not None and None not in texts:
            t = s.other
            done = sess.insert_json(m.bound.table(t), list(m.bound.key(t)),
                                    plan.insert_columns, plan.insert_sources,
                                    cast(list[str], texts),
                                    mappings=self._mappings(plan, m, s, run))
            if done is not None:
                # the rows a computed value left out (a lookup that finds nothing, a value
                # the map lacks) take the row path, which names what is wrong
                rest = self._written(m, run, outcome, done)
                if rest:
                    self._compare_and_write(sess, s, m, rest, outcome, check=False)
                return
        self._compare_and_write(sess, s, m, run, outcome, check=False)

    @staticmethod
    def _written(m: _MapCtx, run: list[_Action], outcome: _Outcome, done: set[Row]
                 ) -> list[_Action]:
        """Count what a set-based statement wrote (keys ``done``; to be looked at before
        commit); returns the rest of ``run``."""
        written = outcome.unchecked.setdefault(m.bound.name, [])
        if len(done) == len(run):  # the common case: every row written
            outcome.applied += len(run)
            written.extend(a.tkey for a in run)
            return []
        done_keys = {canonical_key(k) for k in done}
        rest = [a for a in run if canonical_key(a.tkey) not in done_keys]
        written.extend(a.tkey for a in run if canonical_key(a.tkey) in done_keys)
        outcome.applied += len(run) - len(rest)
        return rest

    def _recheck(self, sess: WriteSession, t: Side, maps: dict[str, _MapCtx],
                 outcome: _Outcome) -> None:
        """Look at the target's queue for the rows the fast paths wrote in this transaction.
        They are held by it now, so whatever the target did to them committed before: a
        queued change of its own for one of them is a conflict the write did not see, and the
        batch is applied again carefully (:class:`_Recheck`). One cheap probe for all the
        maps (the target queues nothing of them: the common case)."""
        names = sorted(n for n, keys in outcome.unchecked.items() if keys)
        queued = self.logs[t].queued(_conn(sess), names) if names else set()
        for name, keys in outcome.unchecked.items():
            if not keys or name not in queued:
                continue
            theirs = self._theirs(sess, t, maps[name], keys)
            if theirs:
                raise _Recheck()
        outcome.unchecked.clear()

    def _json_plan(self, m: _MapCtx, s: Side) -> _JsonPlan | None:
        """Whether changes from side ``s`` for this map can go to the target as the log's JSON
        text, converted by the target database (no decoding, no row building in Python),
        and how. Only where that is exactly what the row builders would do: a PostgreSQL
        (``row_to_json``) or MariaDB (``JSON_OBJECT``) log and a PostgreSQL target, no
        company striping, every key column a copy between columns of the same kind, and
        every written field either such a copy, a default, a value map, a lookup on the
        target (a join by natural key) or one on the source (resolved per run) of the shapes
        :meth:`_json_value` takes. A filter on the source is evaluated as before (it decides
        each change's kind); the values still go as text."""
        key = (m.bound.name, m.bound.spec.version, s)
        if key in self._json_plans:
            return self._json_plans[key]
        plan = None
        t = s.other
        d, b = m.differ, m.bound
        mappings: list[list[tuple[str, Any]] | _SourceLookup] = []
        values: dict[int, JsonSource | None] = {
            i: self._json_value(m, s, i, mappings)
            for i in sorted(set(d.create_into[t]) | set(d.live_into[t]))}
        key_pairs = [(d.columns[s][i], c) for i, c in zip(d.key_idx[s], b.key(t), strict=True)]
        if isinstance(self.logs[s].dialect, PostgresDialect | MariaDbDialect) and \
                isinstance(self.logs[t].dialect, PostgresDialect) and \
                not d.company_cols[t] and None not in values.values() \
                and all(d.kinds[s][src] is d.kinds[t][dst] and d.kinds[t][dst] in _JSON_KINDS
                        and d.plan(s, t, src, dst).text_safe for src, dst in key_pairs):
            plan = _JsonPlan(
                live_columns=list(d.live_columns[t]),
                live_sources=[cast(JsonSource, values[i]) for i in d.live_into[t]],
                insert_columns=list(d.insert_columns[t]),
                insert_sources=[cast(JsonSource, values[i]) for i in d.create_into[t]],
                key_sources=[src for src, _dst in key_pairs], mappings=mappings)
        self._json_plans[key] = plan
        return plan

    @staticmethod
    def _json_value(m: _MapCtx, s: Side, i: int,
                    mappings: list[list[tuple[str, Any]] | _SourceLookup]) -> JsonSource | None:
        """How the target database computes field ``i`` from a version of side ``s``, exactly
        as the row builders would (:meth:`MapDiffer._compile`), or None where it cannot:

        * a copy between columns of the same kind whose text the target reads back exactly;
        * a default (``none >> col``): the constant, as the row builders coerce it;
        * a value map from a text, integer or boolean column into one: the map's pairs,
          each source spelling the map names (a JSON value as the log writes it) with the
          answer of the map itself; a spelling it does not name (another letter case, say)
          is not written by the set-based statement, and the change takes the row path;
        * a lookup on the target by a text or integer natural key: a join with the related
          table, as :meth:`Connector.lookup` resolves it;
        * a lookup on the source into a text or integer column: resolved before the write
          (:meth:`Applier._mappings`).

        A value the statement cannot compute (a lookup that finds nothing, a value the map
        lacks) leaves its change to the row path, which parks it with the row path's error."""
        t = s.other
        d, b = m.differ, m.bound
        f = b.fields[i]
        src, dst = f.end(s), f.end(t)
        if dst.column is None:
            return None
        kind_t = d.kinds[t][dst.column]
        if src.column is None:  # a default
            value = coerce(f.spec.default, kind_t)
            if kind_t not in _CONSTANT_KINDS or dst.is_lookup or \
                    (isinstance(value, str) and "%" in value):  # a literal beside parameters
                return None
            return JsonValue("constant", value=value)
        col_s = d.cols[s][src.column]
        kind_s = col_s.kind
        vm = f.spec.values
        computed = src.is_lookup or dst.is_lookup or vm is not None
        if computed and from_log(col_s) is not None:
            return None  # the values a computed field reads are JSON's own
        if src.is_lookup or dst.is_lookup:
            if vm is not None or (src.is_lookup and dst.is_lookup):
                return None
            end = src if src.is_lookup else dst
            if (s, i) in d.scoped or (t, i) in d.scoped or len(end.targets) != 1:
                return None
            target = end.targets[0]
            if src.is_lookup:
                if kind_s not in _MAPPED_KINDS or kind_t not in _MAPPED_KINDS or \
                        kind_s is Kind.BOOLEAN:
                    return None
                mappings.append(_SourceLookup(src.column, i, kind_t))
                return JsonValue("mapped", source=src.column, mapping=len(mappings) - 1)
            if target.next is not None or target.company is not None or \
                    kind_s is not target.key_kind or kind_s not in (Kind.STRING, Kind.INTEGER):
                return None
            return JsonValue("lookup", source=src.column, table=target.table,
                             match=target.key, returning=target.id)
        if vm is not None:
            if kind_s not in _MAPPED_KINDS or kind_t not in _MAPPED_KINDS:
                return None
            to = vm.to_right if s is Side.LEFT else vm.to_left
            named = list(vm.pairs) if s is Side.LEFT else list(vm.pairs.values())
            pairs: dict[str, Any] = {}
            for literal in _spellings(kind_s, named):
                value = decode_json('{"v": ' + literal + '}')["v"]
                found, out = to(value)
                text = value if isinstance(value, str) else literal
                if found and text not in pairs:
                    pairs[text] = None if out is None else coerce(out, kind_t)
            if any(v is not None and not isinstance(v, str | int | bool)
                   for v in pairs.values()):
                return None
            mappings.append(sorted(pairs.items()))
            return JsonValue("mapped", source=src.column, mapping=len(mappings) - 1)
        col_t = d.cols[t][dst.column]
        plain = (kind_s is kind_t and kind_t in _JSON_KINDS
                 # a value the row builders would convert (a zone, a scale the target
                 # would round) must not reach the target as text
                 and d.plan(s, t, src.column, dst.column, i).text_safe
                 # a single-precision float is logged as its shortest text, which a double
                 # reads as another value than the float the row builders widen
                 and (kind_t is not Kind.FLOAT or (col_s.facets.precision or 53) ==
                      (col_t.facets.precision or 53)))
        return src.column if plain else None

    def _mappings(self, plan: _JsonPlan, m: _MapCtx, s: Side, run: list[_Action]
                  ) -> list[list[tuple[str, Any]]]:
        """The pairs of each mapping of ``plan`` for ``run``: a value map's as planned; a
        source lookup's resolved now, for the ids the run's versions hold (one query per
        lookup and run, on the source, as the row path's)."""
        out: list[list[tuple[str, Any]]] = []
        resolver: LookupResolver | None = None
        for mp in plan.mappings:
            if not isinstance(mp, _SourceLookup):
                out.append(mp)
                continue
            ids: dict[str, Any] = {}
            seen: set[str] = set()
            find = _member_pattern(mp.member)
            for a in run:
                for text in (a.change.new_json, a.change.old_json):
                    if text is None:
                        continue
                    # The member's JSON literal, found in the text without decoding it all.
                    # Only which ids to resolve depends on it: the statement matches the
                    # member's own value, so an id missed here leaves its row to the row path.
                    got = find.search(text)
                    if got is None or got.group(1) == "null":
                        continue
                    lit = got.group(1)
                    if lit in seen:  # a run holds few distinct ids: each decoded once
                        continue
                    seen.add(lit)
                    if lit.startswith('"'):
                        v = decode_json(lit)
                        ids[v] = v
                    else:
                        ids[lit] = decode_json(lit)
            if resolver is None:
                resolver = LookupResolver({s: self.link.connectors[s]})
            end = m.bound.fields[mp.field].end(s)
            found = resolver.to_keys(s, end.targets, ids.values())
            pairs = []
            for text, v in ids.items():
                k = found.get(canonical(v), _MISSING)
                if k is _MISSING or isinstance(k, RelatedKey):
                    continue  # the row path names it
                k = None if k is None else coerce(k, mp.kind)
                if k is None or isinstance(k, str | int):
                    pairs.append((text, k))
            out.append(pairs)
        return out

    def _theirs(self, sess: WriteSession, t: Side, m: _MapCtx, keys: Sequence[Row]
                ) -> dict[tuple[Any, ...], list[Change]]:
        """The target's captured changes still queued for ``keys`` (target keys), by
        canonical key, as this transaction sees them now. A large set asks first whether the
        target queues anything of this map at all (the common case: it does not): one cheap
        probe instead of sending every key."""
        d, b = m.differ, m.bound
        conn = _conn(sess)
        if len(keys) >= _PROBE_QUEUE_AT and not self.logs[t].queues(conn, b.name):
            return {}
        key_cols = [d.connectors[t].describe(b.table(t)).columns[c] for c in b.key(t)]
        found = self.logs[t].pending(conn, b.name, list(keys), key_cols)
        out: dict[tuple[Any, ...], list[Change]] = {}
        decoders = [from_log(d.cols[t][c]) for c in b.key(t)]
        for c in found:
            k = canonical_key(tuple(v if fn is None or v is None else fn(v)
                                    for v, fn in zip(c.key, decoders, strict=True)))
            out.setdefault(k, []).append(c)
        return out

    def _compare_and_write(self, sess: WriteSession, s: Side, m: _MapCtx, run: list[_Action],
                           outcome: _Outcome, *, check: bool) -> None:
        """With ``check``: lock the run's target rows, then look at the target's queue for
        them, compare and write (in that order: a target change committed before the lock is
        in its queue by then, one committed after waits for this transaction). Without: write
        (optimistic creates), the rows to be looked at before commit."""
        t = s.other
        d, b = m.differ, m.bound
        table_t = b.table(t)
        key_t = list(b.key(t))
        live_cols = d.live_columns[t]
        cols = key_t + [c for c in live_cols if c not in key_t]
        theirs: dict[tuple[Any, ...], list[Change]] = {}
        try:
            current: dict[tuple[Any, ...], tuple[Any, ...]] = {}
            if check:
                got = sess.lock(table_t, cols, key=key_t, keys=[a.tkey for a in run])
                # raw values: Python's == already equates 5, 5.0 and Decimal('5.00');
                # the canonical form is the fallback (see _same)
                pos = [cols.index(c) for c in live_cols]
                current = {tuple(r[:len(key_t)]): tuple(r[i] for i in pos) for r in got}
                theirs = self._theirs(sess, t, m, [a.tkey for a in run])
            else:
                outcome.unchecked.setdefault(b.name, []).extend(a.tkey for a in run)
            resolved: dict[tuple[Side, int], dict[Any, Any]] = {}
            if d.has_lookups:
                resolver = LookupResolver({t: SessionLookups(sess),
                                           s: self.link.connectors[s]})
                entries = []
                for a in run:
                    for row in (a.old, a.new):
                        if row is not None:
                            entries.append(Entry((), row, None) if s is Side.LEFT
                                           else Entry((), None, row))
                resolved = d._prefetch(entries, resolver)
        except (RowError, ConstraintViolation) as exc:
            if len(run) == 1:
                raise _Restart(run[0], exc) from exc
            raise
        inserts: list[tuple[_Action, Row]] = []
        updates: list[tuple[_Action, Row]] = []
        deletes: list[_Action] = []
        undecided: list[tuple[_Action, tuple[Any, ...] | None]] = []
        conflicts: list[tuple[_Action, tuple[Any, ...] | None, list[Change]]] = []
        build_create, build_live = d.build_create[t], d.build_live[t]
        for a in run:
            try:
                cur = current.get(a.tkey) if check else None
                new_vals = build_live(a.new, a.skey, resolved) if a.new is not None else None
                if a.new is not None and cur is not None and _same(cur, new_vals):
                    outcome.skipped += 1  # already there
                    continue
                if a.new is None and cur is None and check:
                    outcome.skipped += 1  # a delete of a row already gone
                    continue
                contested = theirs.get(canonical_key(a.tkey))
                if contested:
                    conflicts.append((a, canonical_key(cur) if cur is not None else None,
                                      contested))
                elif a.kind == "create":
                    assert a.new is not None
                    if cur is None:
                        inserts.append((a, build_create(a.new, a.skey, resolved)))
                    else:
                        undecided.append((a, canonical_key(cur)))
                elif a.kind == "update":
                    assert new_vals is not None
                    if cur is not None and _same(cur, self._old_live(d, t, a, resolved)):
                        updates.append((a, new_vals))
                    else:
                        undecided.append((a, canonical_key(cur) if cur is not None else None))
                elif _same(cur, self._old_live(d, t, a, resolved)):
                    deletes.append(a)
                else:
                    undecided.append((a, canonical_key(cur) if cur is not None else None))
            except RowError as exc:
                raise _Restart(a, exc) from exc
        if undecided or conflicts:
            self._decide(sess, s, m, undecided, conflicts, resolved, inserts, updates,
                         deletes, outcome)
        if self.link.rules.covers(self.env[t], table_t):
            self._check_rules(s, m, inserts, updates, deletes, current)
        self._write(sess, s, m, inserts, updates, deletes, optimistic=not check)
        outcome.applied += len(inserts) + len(updates) + len(deletes)

    def _check_rules(self, s: Side, m: _MapCtx, inserts: list[tuple[_Action, Row]],
                     updates: list[tuple[_Action, Row]], deletes: list[_Action],
                     current: dict[tuple[Any, ...], tuple[Any, ...]]) -> None:
        """The target's business rules (``rules.before_write``) see each captured change
        before it is written; one that rejects it (or changes its values: a captured row must
        stay the twin of its source) sends it, with its source transaction, to the inbox."""
        t = s.other
        d, b = m.differ, m.bound
        env, table = self.env[t], b.table(t)
        principal = f"capture from {self.env[s]}"
        todo = [("create", a, dict(zip(d.insert_columns[t], v, strict=True)))
                for a, v in inserts] + \
            [("update", a, dict(zip(d.live_columns[t], v, strict=True))) for a, v in updates] + \
            [("delete", a, {}) for a in deletes]
        for op, a, values in todo:
            cur = current.get(a.tkey)
            before = dict(zip(d.live_columns[t], cur, strict=True)) if cur is not None else None
            ctx = RuleContext(op, env, table, dict(values), before, principal, captured=True)
            try:
                self.link.rules.run(ctx)
            except RowError as exc:
                raise _Restart(a, RowError(exc.reason, map=b.name, side=env, table=table,
                                           key=a.tkey, field=exc.field, value=exc.value,
                                           hint=exc.hint)) from exc
            if ctx.values != values:
                raise _Restart(a, RowError(
                    "a business rule changed the values of a captured change; rules may "
                    "only reject captured changes (the row must stay the twin of its source)",
                    map=b.name, side=env, table=table, key=a.tkey,
                    hint="test ctx.captured in the rule and leave the values as they are"))

    def _guarded_update(self, sess: WriteSession, s: Side, m: _MapCtx, run: list[_Action],
                        outcome: _Outcome) -> bool:
        """Many updates in one statement that writes each row only where the target still
        holds the version the change started from (the common case); the rest go through the
        careful path. False where the backend has no such statement."""
        t = s.other
        d, b = m.differ, m.bound
        plan = self._json_plan(m, s)
        if plan is not None:
            news = [a.change.new_json for a in run]
            olds = [a.change.old_json for a in run]
            if None not in news and None not in olds:  # every change still as logged text
                done = sess.update_if_json(
                    b.table(t), list(b.key(t)), plan.live_columns, plan.key_sources,
                    plan.live_sources, cast(list[str], news), cast(list[str], olds),
                    mappings=self._mappings(plan, m, s, run))
                if done is not None:
                    return self._after_guarded(sess, s, m, run, outcome, done)
        if d.has_lookups:
            return False  # the row builders below resolve no lookups
        rows = []
        try:
            for a in run:
                assert a.new is not None and a.old is not None
                rows.append((a.tkey, d.build_live[t](a.new, a.skey, {}),
                             d.build_live[t](a.old, a.skey, {})))
        except RowError:
            return False  # a value that does not convert: let the careful path name it
        done = sess.update_if(b.table(t), list(b.key(t)), d.live_columns[t], rows)
        if done is None:
            return False
        return self._after_guarded(sess, s, m, run, outcome, done)

    def _after_guarded(self, sess: WriteSession, s: Side, m: _MapCtx, run: list[_Action],
                       outcome: _Outcome, done: set[Row]) -> bool:
        """Count what a guarded update wrote (to be looked at before commit); the rows it
        left (the target moved on, or a computed value was not found) go through the
        careful path."""
        rest = self._written(m, run, outcome, done)
        if rest:
            self._compare_and_write(sess, s, m, rest, outcome, check=True)
        return True

    def _old_live(self, d: MapDiffer, t: Side, a: _Action,
                  resolved: dict[tuple[Side, int], dict[Any, Any]]) -> tuple[Any, ...] | None:
        if a.old is None:
            return None
        try:
            return d.build_live[t](a.old, a.skey, resolved)
        except RowError:
            return None  # the old version no longer resolves: it cannot match the target

    def _decide(self, sess: WriteSession, s: Side, m: _MapCtx,
                undecided: list[tuple[_Action, tuple[Any, ...] | None]],
                conflicts: list[tuple[_Action, tuple[Any, ...] | None, list[Change]]],
                resolved: dict[tuple[Side, int], dict[Any, Any]],
                inserts: list[tuple[_Action, Row]], updates: list[tuple[_Action, Row]],
                deletes: list[_Action], outcome: _Outcome) -> None:
        """Changes whose target row is neither the version they started from nor the one they
        end with, or that the target changed too: superseded (both sides agree now),
        overwritten (the target's version is news to nobody), or a conflict settled by the
        map's policy."""
        t = s.other
        d, b = m.differ, m.bound
        asked = [a for a, _c in undecided] + [a for a, _c, _x in conflicts]
        src = self.link.connectors[s].fetch(b.table(s), d.columns[s], key=list(b.key(s)),
                                            keys=[a.skey for a in asked])
        src_now = {canonical_key(tuple(r[i] for i in d.key_idx[s])): r for r in src}

        def agree(a: _Action, cur: tuple[Any, ...] | None) -> bool:
            """Both sides hold the same version now (a later change, or a synchronous write,
            got there): nothing to apply."""
            now_row = src_now.get(canonical_key(a.skey))
            if now_row is None or cur is None:
                return now_row is None and cur is None
            try:
                return canonical_key(d.build_live[t](now_row, a.skey, resolved)) == cur
            except RowError:
                return False

        for a, cur in undecided:
            if agree(a, cur):
                outcome.skipped += 1
            else:
                self._force(a, cur, d, t, resolved, inserts, updates, deletes)
        to_forget: list[Change] = []
        for a, cur, theirs in conflicts:
            if agree(a, cur):
                outcome.skipped += 1
                continue
            policy = b.spec.conflict
            winner = self._winner(policy, a, theirs)
            held = (b.name, canonical_key(a.lkey))
            if held not in outcome.conflicts:  # one conflict, however many changes met it
                outcome.conflicts[held] = {
                    "map_name": b.name, "key": list(a.lkey), "policy": policy.value,
                    "winner": winner.value if winner else "manual", "source": s.value,
                    "incoming": a.change.as_dict(), "target": _plain(cur, d.live_columns[t]),
                    "theirs": [x.as_dict() for x in theirs]}
            if winner is None:
                outcome.held.add(held)
                outcome.parked.append((a, "error", "conflict", {
                    "reason": f"conflict: both sides changed this row since it was last "
                    f"synced (map policy: manual); {self.env[s]} changed it at "
                    f"{a.change.at.isoformat()}, {self.env[t]} at "
                    f"{max(x.at for x in theirs).isoformat()}",
                    "target": _plain(cur, d.live_columns[t]),
                    "theirs": [x.as_dict() for x in theirs],
                    # what either side changes after this is applied on top of the version
                    # the conflict is resolved for (see dualwrite.engine.settle)
                    "detected_at": now_iso()}))
            elif winner is t:
                outcome.skipped += 1
            else:
                # the target's own changes to this row lost: they must not flow back
                to_forget += theirs
                self._force(a, cur, d, t, resolved, inserts, updates, deletes)
        if to_forget:
            self.logs[t].forget([c.seq for c in to_forget], _conn(sess))

    @staticmethod
    def _winner(policy: ConflictPolicy, a: _Action, theirs: list[Change]) -> Side | None:
        if policy is ConflictPolicy.LEFT_WINS:
            return Side.LEFT
        if policy is ConflictPolicy.RIGHT_WINS:
            return Side.RIGHT
        if policy is ConflictPolicy.NEWEST_WINS:
            latest = max(x.at for x in theirs)
            if a.change.at == latest:
                return Side.LEFT
            return a.source if a.change.at > latest else a.source.other
        return None

    @staticmethod
    def _force(a: _Action, cur: tuple[Any, ...] | None, d: MapDiffer, t: Side,
               resolved: dict[tuple[Side, int], dict[Any, Any]],
               inserts: list[tuple[_Action, Row]], updates: list[tuple[_Action, Row]],
               deletes: list[_Action]) -> None:
        """Make the target hold the change's new version, whatever it holds now."""
        if a.kind == "delete":
            if cur is not None:
                deletes.append(a)
            return
        assert a.new is not None
        if cur is None:
            inserts.append((a, d.create_values(t, a.new, resolved, a.skey)))
        else:
            updates.append((a, d.live_values(t, a.new, resolved, a.skey)))

    def _write(self, sess: WriteSession, s: Side, m: _MapCtx,
               inserts: list[tuple[_Action, Row]], updates: list[tuple[_Action, Row]],
               deletes: list[_Action], *, optimistic: bool = False) -> None:
        """Write what was decided. An optimistic insert that meets a row is not an error of
        the change: the batch is redone carefully (comparing with that row)."""
        t = s.other
        d, b = m.differ, m.bound
        table = b.table(t)
        steps: list[tuple[list[_Action], Callable[[], Any]]] = []
        if deletes:
            steps.append((deletes, lambda: sess.delete(table, list(b.key(t)),
                                                       [a.tkey for a in deletes])))
        if updates and d.live_columns[t]:
            steps.append(([a for a, _v in updates], lambda: sess.update(
                table, list(b.key(t)), d.live_columns[t], [(a.tkey, v) for a, v in updates])))
        if inserts:
            steps.append(([a for a, _v in inserts], lambda: sess.insert(
                table, d.insert_columns[t], [v for _a, v in inserts])))
        for acts, fn in steps:
            try:
                fn()
            except ConstraintViolation as exc:
                if len(acts) == 1 and not (optimistic and acts is not deletes and
                                           acts[0].kind == "create"):
                    raise _Restart(acts[0], RowError(
                        f"the database rejected the change: {exc.message}", map=b.name,
                        side=self.env[t], table=table, key=acts[0].tkey,
                        hint=exc.hint)) from exc
                raise

    def _capture_broken(self, name: str, reason: str) -> None:
        """Capture could no longer record a change of this map (a marker in the log: a mapped
        column renamed or dropped): a ``capture_broken`` event, and the map fails with the
        reason; the other maps go on."""
        self.event(name, "capture_broken", reason)
        self.fail_map(name, "capturing its changes", LinkError(
            f"capture could not record a change: {reason}",
            hint=f"correct the table or the map, then `dualwrite maps stop {name}` and "
            f"`dualwrite maps start {name}` (an initial sync: changes made meanwhile were not "
            "captured)"))

    # -- parking -----------------------------------------------------------------------------
    def _parked_keys(self) -> set[tuple[str, tuple[Any, ...]]]:
        """Keys held by open inbox entries. Only the applier parks, so its own cache is exact
        but for releases made by other processes, which housekeeping picks up each second."""
        if self._parked is None:
            self._parked = self.state.parked_keys()
        return self._parked

    def _park(self, s: Side, parked: list[tuple[_Action, str, str, dict[str, Any] | None]]
              ) -> None:
        """Put changes that failed in the inbox, then the changes waiting behind them: behind
        the entry of their source transaction's failed change, or behind their key's."""
        if parked:
            self._parked = None
        entries: dict[int, int] = {}
        for a, status, kind, info in parked:
            c = a.change
            if status == "error":
                reason = (info or {}).get("reason", "")
                # the entry's side: where the write failed (as for initial sync); the side
                # the change came from is in its payload
                entries[c.seq] = self.state.park_error(
                    c.map, self.env[s.other], s.value, a.lkey, c.op, kind, reason, c.as_dict(),
                    {k: v for k, v in (info or {}).items() if k != "reason"})
                if kind != "conflict":
                    # the names and values of the inbox entry (`errors show`)
                    log.warning("change rejected on map %s, key %s (inbox entry %s): %s",
                                c.map, list(a.lkey), entries[c.seq], reason,
                                extra={"event": kind, "map": c.map, "side": self.env[s.other],
                                       "from": self.env[s], "key": list(a.lkey),
                                       "operation": metrics.operation(c.op),
                                       "txid": c.txid, "inbox_id": entries[c.seq]})
        for a, status, _kind, info in parked:
            if status != "error":
                behind = (info or {}).get("behind")
                self.state.park_waiting(a.change.map, s.value, a.lkey, a.change.as_dict(),
                                        entries.get(behind) if behind is not None else None)

    # -- settling what was decided ------------------------------------------------------------
    def replay_released(self) -> int:
        """Settle the inbox entries that were resolved, retried or discarded: both sides of
        each key they hold get the decided version with the changes that waited applied on top
        (see :mod:`dualwrite.engine.settle`). An entry whose keys still have changes in a log,
        not parked yet, waits for a later round (they join it first); one whose write fails
        is open again, with the reason. Returns how many parked changes were settled."""
        released = self.state.released_parks()
        if not released:
            return 0
        self._parked = None
        maps = {k: m for k, m in self.maps(refresh=True).items() if m.state in APPLYING}
        n = 0
        for entry, items in released:
            if any(p.map not in maps for p in items):
                continue  # a map is paused (or stopped): it settles once the map runs
            try:
                if not self._settle(entry, items, maps):
                    continue
            except (RowError, ConstraintViolation) as exc:
                self._reopen(entry, exc)
                continue
            self.state.finish_release(entry.id, [p.id for p in items])
            n += len(items)
        self._parked = None
        return n

    def _reopen(self, entry: InboxEntry, exc: DualwriteError) -> None:
        """The decided version could not be written: the entry is open again, its changes
        still parked behind it."""
        self.state.add_error(entry.map, entry.side, entry.key, entry.operation,
                             f"{entry.status} failed: {exc}", entry.payload)
        self.event(entry.map, "rejected", f"{entry.status} of inbox entry {entry.id} failed: "
                   f"{exc}")

    def _settle(self, entry: InboxEntry, items: list[ParkedChange],
                maps: dict[str, _MapCtx]) -> bool:
        """Write the settled version of every key ``entry`` holds, one transaction per side
        (each key's rows locked first). False, having written nothing, while a side's log
        still holds changes of those keys (they are parked behind the entry first)."""
        payload = entry.payload or {}
        source = Side(payload.get("source", Side.LEFT.value))
        extra = decode_doc(payload["extra"]) if isinstance(payload.get("extra"), str) else {}
        changes = [(p, Change.from_dict(p.change)) for p in items]
        if payload.get("kind") == "conflict":
            # the versions in conflict are decided; what either side did after the conflict
            # was found comes on top
            base = Side(payload["pick"]) if payload.get("pick") else source.other
            found = parse_time(extra.get("detected_at") or entry.first_at)
            edits = [(p, c) for p, c in changes if c.at > found]
        else:
            # a failed change: its whole source transaction is what is decided (applied as
            # the source holds it now, or dropped); every later change comes on top
            base = source if entry.status in ("retry", "resolved") else source.other
            failed = {(p.source, p.change.get("txid")) for p in items if p.role == "blocker"
                      and p.change.get("txid") not in (None, WATERMARK)}
            failed_seqs = {(p.source, c.seq) for p, c in changes if p.role == "blocker"}
            edits = [(p, c) for p, c in changes if (p.source, c.txid) not in failed
                     and (p.source, c.seq) not in failed_seqs]
        groups: dict[tuple[str, tuple[Any, ...]], list[tuple[ParkedChange, Change]]] = {}
        for p in items:
            groups.setdefault((p.map, canonical_key(p.key)), [])
        for p, c in edits:
            groups[(p.map, canonical_key(p.key))].append((p, c))
        keys = {g: next(p.key for p in items if (p.map, canonical_key(p.key)) == g)
                for g in groups}
        try:
            with self.link.connectors[Side.LEFT].transaction() as left, \
                    self.link.connectors[Side.RIGHT].transaction() as right:
                sessions = {Side.LEFT: left, Side.RIGHT: right}
                for g, group_edits in groups.items():
                    if not self._settle_key(maps[g[0]], keys[g], base, group_edits, sessions):
                        raise _Postpone()
        except _Postpone:
            return False
        return True

    def _settle_key(self, m: _MapCtx, lkey: tuple[Any, ...], base: Side,
                    edits: list[tuple[ParkedChange, Change]],
                    sessions: dict[Side, WriteSession]) -> bool:
        """Settle one key of map ``m`` (``lkey``: its left key) inside ``sessions``."""
        d, b = m.differ, m.bound
        keys = _side_keys(d, b, lkey)
        current: dict[Side, Row | None] = {}
        for x in Side:
            got = sessions[x].lock(b.table(x), d.columns[x], key=list(b.key(x)),
                                   keys=[keys[x]])
            current[x] = got[0] if got else None
            if self._theirs(sessions[x], x, m, [keys[x]]):
                return False  # a change of this key not parked yet: it joins first
        decoded = [(Side(p.source), c, self._decoder(m, Side(p.source))) for p, c in edits]
        rows = [(x, dec(c.old) if c.old is not None else None,
                 dec(c.new) if c.new is not None else None) for x, c, dec in decoded]
        resolver = LookupResolver({x: SessionLookups(sessions[x])
                                   for x in Side})
        resolved = d.resolve([*current.items(), *((x, r) for x, old, new in rows
                                                  for r in (old, new))], resolver)
        as_base = _Terms(d, base, keys[base], resolved)
        changes = []
        for (x, c, _dec), (_x, old, new) in zip(decoded, rows, strict=True):
            version = as_base.fields(new, x) or {}
            changes.append(Edit(c.at, x, c.seq, new is None,
                                changed_fields(as_base.fields(old, x), version, _same_value),
                                version))
        row = as_base.row(settle_versions(as_base.fields(current[base], base), changes),
                          current[base])
        self._write_version(sessions[base], b.table(base), list(b.key(base)), keys[base],
                            d.columns[base], current[base], row)
        other = base.other
        now = current[other]
        rules = self.link.rules.covers(self.env[other], b.table(other))
        if row is None:
            if now is not None:
                if rules:
                    self._settle_rules(m, other, "delete", {}, now, keys[other])
                sessions[other].delete(b.table(other), list(b.key(other)), [keys[other]])
        elif now is None:
            vals = d.create_values(other, row, resolved, keys[base])
            if rules:
                self._settle_rules(m, other, "create",
                                   dict(zip(d.insert_columns[other], vals, strict=True)), None,
                                   keys[other])
            sessions[other].insert(b.table(other), d.insert_columns[other], [vals])
        else:
            vals = d.live_values(other, row, resolved, keys[base])
            if rules:
                self._settle_rules(m, other, "update",
                                   dict(zip(d.live_columns[other], vals, strict=True)), now,
                                   keys[other])
            if d.live_columns[other] and not _same(d.live_current(other, now), vals):
                sessions[other].update(b.table(other), list(b.key(other)),
                                       d.live_columns[other], [(keys[other], vals)])
        return True

    def _settle_rules(self, m: _MapCtx, side: Side, op: str, values: dict[str, Any],
                      now: Row | None, key: Row) -> None:
        """The business rules of ``side`` see what settling writes there, as they see a
        captured change (see _check_rules); a rejection reopens the entry."""
        d, b = m.differ, m.bound
        before = dict(zip(d.columns[side], now, strict=True)) if now is not None else None
        ctx = RuleContext(op, self.env[side], b.table(side), dict(values), before,
                          f"settling, from {self.env[side.other]}", captured=True)
        self.link.rules.run(ctx)
        if ctx.values != values:
            raise RowError("a business rule changed the values of a captured change; rules "
                           "may only reject captured changes", map=b.name, side=self.env[side],
                           table=b.table(side), key=key,
                           hint="test ctx.captured in the rule and leave the values as they are")

    @staticmethod
    def _write_version(sess: WriteSession, table: str, key: list[str], kvals: Row,
                       columns: list[str], current: Row | None, row: Row | None) -> None:
        """Make a side's own row ``row`` (in ``columns``), as it stands in ``current``."""
        if row is None:
            if current is not None:
                sess.delete(table, key, [kvals])
            return
        if current is None:
            sess.insert(table, columns, [row])
            return
        changed = [i for i, c in enumerate(columns) if c not in key
                   and not _same((current[i],), (row[i],))]
        if changed:
            sess.update(table, key, [columns[i] for i in changed],
                        [(kvals, tuple(row[i] for i in changed))])

    # -- housekeeping ------------------------------------------------------------------------
    def prune_markers(self) -> None:
        """At start: finish what a stopped applier left half done. Changes it applied (their
        position marked on the target) but did not delete from the source log yet are
        deleted now, before anything is applied: the other direction would otherwise take
        them for the target's own changes not yet applied, and see a conflict that is not
        one. Then applied positions whose source changes are gone are dropped (a crash
        between deleting them and dropping the position leaves a few behind)."""
        for t in Side:
            s = t.other
            try:
                marks = [(m, x) for src, m, x in self.logs[t].all_marks()
                         if src == self.env[s]]
                if not marks:
                    continue
                present = self.logs[s].txids_present(sorted({x for _m, x in marks}))
                left_behind = [(m, x) for m, x in marks if x in present]
                if left_behind:
                    self.logs[s].forget_transactions(left_behind, fence=self._fenced())
                stale = marks
                if stale:
                    with self.link.connectors[t].transaction() as sess:
                        self.logs[t].unmark(sess.conn, self.env[s], stale)  # type: ignore[attr-defined]
            except ConnectorError as exc:
                log.warning("pruning applied positions in %s: %s", self.env[t], exc)

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
        budget = self.link.config.model.capture.queue
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

    def _sample(self, maps: dict[str, _MapCtx], stats: dict[Side, dict[str, Any]]) -> None:
        """Every few seconds (not in the first ones), per map: lag and queue into the state
        store's samples (the console's chart, the throughput of `status`); alerts whose cause
        is gone clear. One state-store transaction."""
        monitor = self.link.monitor
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
        """MariaDB keeps deleted log rows as history, and every read of the log wades through
        them until they are purged: purge every second (cheap when small), on a thread of its
        own. Inline, purging what a 20,000-row transaction left took about 50 ms, which every
        change arriving meanwhile waited for."""
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

    def event(self, map_name: str, kind: str, message: str) -> None:
        """Record an event (alert rules count them); lost, with a log line, while the state
        store cannot be reached: what it tells is logged already."""
        try:
            self.alerts.record(map_name, kind, message)
        except TransientConnectorError as exc:
            log.debug("event %s of map %s not recorded: %s", kind, map_name, exc)

    def flush_activity(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._activity and (force or now - self._flushed > 1.0):
            self.state.note_applied(self._activity)
            self._activity = {}
            self._flushed = now


class _PgListener:
    """LISTEN on every PostgreSQL database of the link; ``wait(timeout)`` returns at the
    first notification or after ``timeout`` seconds."""

    def __init__(self, urls: Sequence[str]) -> None:
        import selectors

        import psycopg
        from sqlalchemy.engine import make_url

        from dualwrite.connectors.postgresql import CONNECT_DEFAULTS

        self.conns = []
        self.sel = selectors.DefaultSelector()
        for url in urls:
            u = make_url(url)
            settings: dict[str, Any] = {**CONNECT_DEFAULTS, **u.query}
            conn = psycopg.connect(host=u.host or "localhost", port=u.port or 5432,
                                   user=u.username, password=u.password, dbname=u.database,
                                   autocommit=True, **settings)
            conn.execute("LISTEN dualwrite_changes")
            self.conns.append(conn)
            self.sel.register(conn.fileno(), selectors.EVENT_READ, conn)

    def __call__(self, timeout: float) -> None:
        for key, _ev in self.sel.select(timeout):
            conn = key.data
            # drain: notifications arrive as soon as the socket is read
            for _n in conn.notifies(timeout=0, stop_after=100):
                pass

    def close(self) -> None:
        for c in self.conns:
            with contextlib.suppress(Exception):
                c.close()


# -- helpers ---------------------------------------------------------------------------------
_UNSET: Any = object()
_SEQ = operator.attrgetter("seq")
#: from this many changes in a run on, the target's log is probed for any queued change of the
#: map before its queued changes for the run's keys are looked up
_PROBE_QUEUE_AT = 50
#: seconds between purges of a log's history (MariaDB)
_PURGE_EVERY = 1.0
#: action kind by (row in the filter before, row in the filter after)
_KINDS: tuple[tuple[str | None, str], tuple[str, str]] = (
    (None, "create"), ("delete", "update"))


class _Terms:
    """A map's rows in the terms of one side (``base``): each field's value as the base side's
    column holds it. A row of the other side is converted field by field as writing it into
    the base side would (lookups, value maps, defaults), fields that do not flow that way
    left out."""

    def __init__(self, d: MapDiffer, base: Side, key: Row,
                 resolved: dict[tuple[Side, int], dict[Any, Any]]) -> None:
        self.d, self.base, self.key, self.resolved = d, base, key, resolved
        self.slots = [(i, d.pos[base][col]) for i, f in enumerate(d.bound.fields)
                      if (col := f.end(base).column) is not None]

    def fields(self, row: Row | None, side: Side) -> dict[int, Any] | None:
        if row is None:
            return None
        if side is self.base:
            return {i: row[p] for i, p in self.slots}
        d = self.d
        return {i: d.transform(side, i, row, self.key, self.resolved) for i, _p in self.slots
                if d.bound.fields[i].spec.flows_to(self.base) or i in d.bound.key_fields}

    def row(self, fields: dict[int, Any] | None, current: Row | None) -> Row | None:
        """A base-side row (its read columns) holding ``fields``: the current row's other
        columns kept, its key as given."""
        if fields is None:
            return None
        d, base = self.d, self.base
        out = list(current) if current is not None else [None] * len(d.columns[base])
        for col, v in zip(d.bound.key(base), self.key, strict=True):
            out[d.pos[base][col]] = v
        for i, p in self.slots:
            if i in fields:
                out[p] = fields[i]
        return tuple(out)


def held_by_dependencies(depends: dict[str, Sequence[str]], states: dict[str, str]
                         ) -> dict[str, str]:
    """Maps in an applying state held back because a map they depend on (``depends_on``,
    transitively) is not running: map -> the dependency that holds it. Their changes queue
    meanwhile, as a paused map's do."""
    held: dict[str, str] = {}

    def blocker(name: str, seen: frozenset[str]) -> str | None:
        for dep in depends.get(name, ()):
            if dep in seen:
                continue
            if states.get(dep) != "running":
                return dep
            found = blocker(dep, seen | {dep})
            if found is not None:
                return found
        return None

    for name in depends:
        if states.get(name) in APPLYING and (dep := blocker(name, frozenset({name}))):
            held[name] = dep
    return held


def _side_keys(d: MapDiffer, b: BoundMap, lkey: Sequence[Any]) -> dict[Side, Row]:
    """A row's key on each side, from its left key (as the state store holds it)."""
    left = tuple(coerce(v, d.kinds[Side.LEFT][c])
                 for v, c in zip(lkey, b.key(Side.LEFT), strict=True))
    shaped: list[Any] = [None] * len(d.columns[Side.LEFT])
    for i, v in zip(d.key_idx[Side.LEFT], left, strict=True):
        shaped[i] = v
    return {Side.LEFT: left, Side.RIGHT: d.target_key(Side.LEFT, tuple(shaped))}


def _same_value(a: Any, b: Any) -> bool:
    """Whether two values of one column are the same value: Python equality (5 and
    Decimal('5.00'), a datetime with a zone and one without by the instant through the
    canonical form), except that a float zero keeps its sign (0.0 and -0.0 are two values a
    column may hold) and NaN is itself."""
    if type(a) is float and type(b) is float:
        if a != a or b != b:  # NaN
            return a != a and b != b
        return a == b and (a != 0.0 or math.copysign(1.0, a) == math.copysign(1.0, b))
    return bool(a == b or canonical(a) == canonical(b))


def _conn(sess: WriteSession) -> Any:
    """The SQL connection under a write session (the change log's statements run on it)."""
    return sess.conn  # type: ignore[attr-defined]


def canonical_key(values: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(canonical(v) for v in values)


def _same(cur: tuple[Any, ...] | None, values: tuple[Any, ...] | None) -> bool:
    """Whether a target row's values equal values built for it: Python equality first (it
    already equates 5 and Decimal('5.00')), then the canonical form (datetimes, booleans)."""
    if cur is None or values is None:
        return cur is values
    if cur == values and not any(type(v) is float for v in cur):
        return True  # the common case, at once
    return len(cur) == len(values) and all(_same_value(a, b) for a, b in
                                           zip(cur, values, strict=True))


def _plain(values: tuple[Any, ...] | None, cols: list[str]) -> dict[str, Any] | None:
    if values is None:
        return None
    return {c: (str(v) if v is not None and not isinstance(v, int | str) else v)
            for c, v in zip(cols, values, strict=True)}


def _matches(flt: Any, d: MapDiffer, s: Side, row: Row, captured: dict[str, Any] | None
             ) -> bool:
    """Whether a captured row is in the map's filter: the map's columns as decoded, and the
    columns only the filter reads as captured (see capture_specs)."""
    values = dict(captured or {})
    values.update(zip(d.columns[s], row, strict=True))
    try:
        return evaluate(flt, values)
    except RowError:
        return False


def _kind_of(err: DualwriteError) -> str:
    """The event a parked change's error records: "lookup" for a lookup or value map without
    an answer (the error says so by its kind, not its words), else "rejected"."""
    return "lookup" if isinstance(err, RowError) and err.kind == "lookup" else "rejected"


@functools.lru_cache(maxsize=256)
def _member_pattern(member: str) -> re.Pattern[str]:
    """Finds member ``member`` of a flat JSON object (a logged version) and its literal: a
    number, a string, true/false or null. A quote inside a string value is escaped, so the
    member's quoted name followed by a colon is found only as a member."""
    return re.compile(re.escape(json.dumps(member)) +
                      r'\s*:\s*("(?:[^"\\]|\\.)*"|[-+0-9.eE]+|true|false|null)')


def _spellings(kind: Kind, named: Sequence[Any]) -> list[str]:
    """The JSON literals a log may hold, in a column of ``kind``, for the values a value map
    names: each one a candidate that the map itself then accepts or not."""
    if kind is Kind.BOOLEAN:  # PostgreSQL logs true/false, MariaDB 1/0
        return ["true", "false", "1", "0"]
    out = []
    for v in named:
        if v is None:
            continue
        if kind is Kind.STRING:
            out.append(json.dumps(str(v)))
            if isinstance(v, bool):
                out.append(json.dumps(str(v).lower()))
            continue
        vk = value_key(v)
        try:
            n = Decimal(vk or "")
        except InvalidOperation:
            continue
        if n.is_finite() and n == n.to_integral_value():
            out.append(str(int(n)))
    return out


def _in_commit_order(changes: list[Change], has_txid: bool) -> list[Change]:
    """Transactions ordered by their last change, each transaction's changes by seq."""
    ordered = sorted(changes, key=_SEQ)  # linear for a read that came in seq order
    if not has_txid:
        return ordered
    by_tx: dict[str, list[Change]] = {}
    for c in ordered:
        by_tx.setdefault(c.txid, []).append(c)
    if len(by_tx) == 1:
        return ordered
    groups = sorted(by_tx.values(), key=lambda g: g[-1].seq)
    return [c for g in groups for c in g]


def _runs(actions: list[_Action], limit: int) -> Iterator[list[_Action]]:
    """Consecutive actions of one map and kind, with no key twice: each run is written with
    one statement per kind, and order between runs is kept."""
    run: list[_Action] = []
    keys: set[tuple[Any, ...]] = set()
    ctx: _MapCtx | None = None
    kind = None
    for a in actions:
        k = a.tkey  # one side's values, all of its own types: no canonical form needed
        if a.kind != kind or a.ctx is not ctx or k in keys or len(run) >= limit:
            if run:
                yield run
            run, keys, ctx, kind = [], set(), a.ctx, a.kind
        run.append(a)
        keys.add(k)
    if run:
        yield run


def _positions(changes: list[Change]) -> list[tuple[str, str, int]]:
    top: dict[tuple[str, str], int] = {}
    for c in changes:
        k = (c.map, c.txid)
        if top.get(k, -1) < c.seq:
            top[k] = c.seq
    return [(m, t, q) for (m, t), q in top.items()]




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
    while not stop.is_set():
        link.state.heartbeat(me, role="applier")
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
            log.warning("%s; retrying in %.1f s", note, delay)
            link.state.heartbeat(me, role="applier", note=note)
            link.forget_validation()
            stop.wait(delay)
            delay = min(delay * 2, link.config.model.capture.max_backoff)
    return None


def resolve_conflict(link: Link, entry_id: int, pick: Side) -> dict[str, Any]:
    """Resolve a parked conflict for the ``pick`` side. The applier then settles it (see
    :mod:`dualwrite.engine.settle`): both sides get the picked side's row as it is then, with
    every change either side made after the conflict was found applied on top, field by
    field, in the order they were made. Returns what was decided."""
    entry = link.state.get_error(entry_id)
    if entry.status != "open":
        raise DualwriteError(f"inbox entry {entry_id} is {entry.status}, not open",
                             hint="list open entries with `dualwrite errors list`")
    if entry.operation != "conflict":
        raise DualwriteError(
            f"inbox entry {entry_id} is a {entry.operation} that failed, not a conflict",
            hint=f"fix the row, then `dualwrite errors retry {entry_id}` (or discard it)")
    link.state.resolve_error(entry_id, "resolved", pick=pick.value)
    return {"id": entry_id, "map": entry.map, "key": list(entry.key), "picked": pick.value,
            "kept": link.env_name(pick), "written_to": link.env_name(pick.other)}


__all__ = ["APPLYING", "CAPTURING", "Applier", "BatchResult", "canonical_key",
           "capture_specs", "resolve_conflict", "run_applier"]
