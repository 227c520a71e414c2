"""Applying captured changes: writes that bypassed dualwrite reach the other side.

The :class:`Applier` reads each environment's change log (the change-log seam,
:class:`dualwrite.connectors.changelog.ChangeLog`: triggers in the SQL databases, see
:mod:`dualwrite.connectors.capture`) and applies what it finds to the other side, for every map
in an applying state (``running``, ``resuming``). It is in three parts: the decisions
(ordering, runs, parking, conflicts, positions) in :mod:`dualwrite.engine.apply.core`, with no
I/O; the driver (stepping, backoff, waiting, housekeeping, the purger thread, the lease) in
:mod:`dualwrite.engine.apply.driver`; and here, what one step reads, locks, compares and
writes. It switches on the connectors' capabilities, never on a database's name. What it
guarantees, and how:

* **Order.** Changes are read oldest first and applied transaction by transaction, in the
  order of each transaction's last change. A transaction that wrote after another one
  committed has a later last change, so it is applied after it: every pair of transactions
  that touch the same row, or where one read what the other wrote, is applied in commit
  order. A source transaction is never split; under load, consecutive source transactions
  are applied together in one target transaction (group commit).
* **Exactly once.** The applied position ((source, map, transaction), or a high-water mark on
  SQLite) is written in the same target transaction as the rows. A change read again after a
  crash is recognised and skipped; it is then deleted from the source log. Reading the log,
  the applier does not ask first which transactions were applied (a round trip per step):
  the position's key refuses a second one, and the target transaction is then rolled back
  and applied again with the question asked.
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

import functools
import json
import logging
import operator
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Self, cast

from dualwrite.connectors.base import Connector, JsonSource, JsonValue, Row, WriteSession
from dualwrite.connectors.changelog import (
    MARKER,
    WATERMARK,
    CaptureSpec,
    Change,
    ChangeLog,
    columns_of_filter,
    decode_json,
    parse_time,
)
from dualwrite.engine import metrics
from dualwrite.engine.apply.core import (
    APPLYING,
    canonical_key,
    decide,
    force,
    held_by_dependencies,
    hold_back,
    not_applied,
    route,
    winner,
)
from dualwrite.engine.apply.core import KINDS as _KINDS
from dualwrite.engine.apply.core import LAZY as _LAZY
from dualwrite.engine.apply.core import Action as _Action
from dualwrite.engine.apply.core import Mode as _Mode
from dualwrite.engine.apply.core import Outcome as _Outcome
from dualwrite.engine.apply.core import in_commit_order as _in_commit_order
from dualwrite.engine.apply.core import kind_of as _kind_of
from dualwrite.engine.apply.core import positions as _positions
from dualwrite.engine.apply.core import runs as _runs
from dualwrite.engine.apply.core import same as _same
from dualwrite.engine.apply.core import same_value as _same_value
from dualwrite.engine.apply.driver import ApplierLoop, run_applier
from dualwrite.engine.diff import MapDiffer, coerce
from dualwrite.engine.lease import ApplierLease
from dualwrite.engine.live import RuleContext, Rules
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
from dualwrite.model.maps import Side
from dualwrite.model.schema import Kind
from dualwrite.model.values import canonical, value_key

if TYPE_CHECKING:
    from dualwrite.engine.alerts import Alerts
    from dualwrite.engine.config import CaptureConfig
    from dualwrite.engine.link import Link
    from dualwrite.engine.monitor import Monitor
    from dualwrite.errors import Issue
    from dualwrite.model.maps import TableMap

log = logging.getLogger("dualwrite.capture")

#: kinds of the constants (defaults) the set-based statements write as literals
_CONSTANT_KINDS = frozenset({Kind.STRING, Kind.INTEGER, Kind.BOOLEAN, Kind.DECIMAL})
#: kinds of the columns a value map or a resolved lookup reads from and writes into on the
#: set-based path: their values' JSON text is one spelling each
_MAPPED_KINDS = frozenset({Kind.STRING, Kind.INTEGER, Kind.BOOLEAN})
_MISSING: Any = object()

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


@dataclass(frozen=True)
class MapSource:
    """Where the applier's maps come from (a link's: :meth:`Applier.for_link`): the
    applier asks, it never holds the link."""

    #: use, for each map, the version its capture is installed for (``states``: the store's
    #: map states); True when a map was reloaded (its row builders are then built anew)
    adopt_versions: Callable[[dict[str, dict[str, Any]]], bool]
    #: the maps that bind without errors, and the errors of the others by map
    valid_maps: Callable[[], tuple[list[BoundMap], dict[str, list[Issue]]]]
    #: describe the tables and bind the maps again at the next :attr:`valid_maps`
    forget_validation: Callable[[], None]
    #: a map's compiled row builders (shared with the link's other write paths)
    differ: Callable[[str], MapDiffer]
    #: bind map texts (an older version of a map, for changes captured under it)
    bind: Callable[[list[TableMap]], tuple[list[BoundMap], list[Issue]]]


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


class Applier(ApplierLoop):
    """Applies captured changes of one link, both directions. Thread-compatible, not
    thread-safe: one applier runs in one thread (``run``).

    Its collaborators are passed in (:meth:`for_link` takes them from a link, the usual
    way): where its maps come from (``maps``), the connectors per side, the state store, the
    environments' names, the link's name (metric labels, fences), the capture settings it
    reads (batch size, poll interval, backoff, queue budgets, conflict values kept), the
    business rules, the alerts its events feed, and the monitor housekeeping samples into
    (a getter: a link makes its monitor on first use)."""

    def __init__(self, maps: MapSource, connectors: dict[Side, Connector], state: StateStore,
                 *, env: dict[Side, str], link_name: str, capture: CaptureConfig,
                 rules: Rules, alerts: Alerts, monitor: Callable[[], Monitor],
                 batch: int | None = None, poll: float | None = None,
                 process: str | None = None) -> None:
        self.map_source = maps
        self.connectors = connectors
        self.capture = capture
        self.rules = rules
        self.monitor = monitor
        #: this process's id in the state store, given a heartbeat by housekeeping
        self.process = process
        self.batch = batch or capture.batch_size
        self.poll = poll if poll is not None else capture.poll_interval
        self.logs: dict[Side, ChangeLog] = {s: connectors[s].change_log() for s in Side}
        self.state: StateStore = state
        self.env = dict(env)
        #: metric labels: the link, and per source side the direction it applies
        self._link_name = link_name
        self._direction = {s: f"{self.env[s]}->{self.env[s.other]}" for s in Side}
        self._maps: dict[str, _MapCtx] = {}
        self._maps_at = 0.0
        self._maps_version = -1  # the store's map_states_version when last read
        self._prune: dict[Side, list[tuple[str, str]]] = {s: [] for s in Side}
        self._backoff: dict[Side, float] = {s: 0.0 for s in Side}
        self._retry_at: dict[Side, float] = {s: 0.0 for s in Side}
        self._read_at: dict[Side, float] = {s: 0.0 for s in Side}
        self._read_last: dict[Side, int] = {s: 0 for s in Side}
        self.last_error: dict[Side, str | None] = {s: None for s in Side}
        self._activity: dict[str, tuple[str, int]] = {}
        self._flushed = 0.0
        self._purger: threading.Thread | None = None
        self._purger_stop = threading.Event()
        self._parked: set[tuple[str, tuple[Any, ...]]] | None = None
        self._json_plans: dict[tuple[str, str, Side], _JsonPlan | None] = {}
        #: maps as older versions say, for changes captured under them (see _ctx_of)
        self._versions: dict[tuple[str, str], _MapCtx | None] = {}
        self.alerts = alerts
        #: alert actions fired by this step's events, run after it (see run_deferred)
        self._deferred: list[Callable[[], None]] = []
        self._waiter: Any = None
        self._waiter_at = 0.0
        #: the lease this applier applies under (None: not fenced, e.g. a one-off drain in
        #: tests or `sync`); its epoch goes with every transaction committed in a database
        self.lease: ApplierLease | None = None
        self._epoch: int | None = None

    @classmethod
    def for_link(cls, link: Link, **kwargs: Any) -> Self:
        """An applier of ``link``'s captured changes, its collaborators the link's (keyword
        arguments as for the constructor: ``batch``, ``poll``, ``process``)."""
        maps = MapSource(adopt_versions=link._adopt_versions, valid_maps=link.valid_maps,
                         forget_validation=link.forget_validation, differ=link.differ,
                         bind=link._bind)
        return cls(maps, link.connectors, link.state,
                   env={s: link.env_name(s) for s in Side}, link_name=link.config.link_name,
                   capture=link.config.model.capture, rules=link.rules, alerts=link.alerts(),
                   monitor=lambda: link.monitor, **kwargs)

    # -- the lease and its fence ---------------------------------------------------------------
    def hold(self, lease: ApplierLease) -> None:
        """Apply under ``lease`` (held): raise its fence in both databases now, before any
        change is applied, so that an earlier holder still running commits nothing more."""
        assert lease.epoch is not None, "hold() wants a held lease"
        # A fence above the lease's epoch: the state store was made anew (or restored from a
        # backup) while the databases kept their fences. The holder moves its epoch past them.
        highest = 0
        for s in Side:
            with self.connectors[s].translating("read the applier fence"), \
                    self.connectors[s].transaction() as sess:
                highest = max(highest, self.logs[s].fence_epoch(sess, self._link_name))
        if highest >= lease.epoch:
            lease.advance(highest + 1)
        assert lease.epoch is not None
        self.lease, self._epoch = lease, lease.epoch
        for s in Side:
            with self.connectors[s].translating("raise the applier fence"), \
                    self.connectors[s].transaction() as sess:
                self.logs[s].fence(sess, self._link_name, lease.epoch)

    def _raise_more_fences(self, sess: WriteSession, t: Side) -> None:
        """Fences besides :meth:`_fenced`'s to raise in the target transaction (``sess``, on
        side ``t``) before it commits; none for an applier under one lease."""

    def _fenced(self) -> tuple[str, int] | None:
        return (self._link_name, self._epoch) if self._epoch is not None else None

    # -- maps --------------------------------------------------------------------------------
    def maps(self, refresh: bool = False) -> dict[str, _MapCtx]:
        """Maps whose capture is installed, with their state (re-read at most every 0.2 s,
        so that pause/resume from another process take effect promptly)."""
        now = time.monotonic()
        version = self.state.map_states_version
        if refresh or now - self._maps_at > 0.2 or version != self._maps_version:
            self._maps_version = version
            states = self.state.map_states()
            if self.map_source.adopt_versions(states):
                # a map was reloaded: build its row builders, decoders and plans anew
                self._maps, self._json_plans = {}, {}
                self._versions = {}
            out = {}
            bound, issues = self.map_source.valid_maps()
            if any((states.get(n) or {}).get("state") in APPLYING for n in issues):
                # resumed (or started) after a fault: see the tables as they are now
                self.map_source.forget_validation()
                bound, issues = self.map_source.valid_maps()
            held = held_by_dependencies(
                {b.name: b.spec.depends_on for b in bound},
                {n: str((st or {}).get("state")) for n, st in states.items()})
            for b in bound:
                st = (states.get(b.name) or {}).get("state")
                if st in CAPTURING:
                    old = self._maps.get(b.name)
                    differ = old.differ if old else self.map_source.differ(b.name)
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
        self._json_plans = {k: v for k, v in self._json_plans.items() if k[0] != name}
        self.map_source.forget_validation()
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
        self.apply_changes(s, ordered, maps, rest=rest, optimistic=True)
        return len(ordered)  # the rest included

    def apply_changes(self, s: Side, changes: list[Change], maps: dict[str, _MapCtx], *,
                      forget: bool = True, check_applied: bool = True,
                      rest: Future[list[Change]] | None = None,
                      optimistic: bool = False) -> BatchResult:
        """Apply ``changes`` (in order) from side ``s``: one target transaction, retried
        without each change that fails (which goes to the inbox, its key parked).

        ``rest``, if given, delivers the rest of the transaction that ``changes`` begin (its
        later changes, in order) while the first ones are applied; ``changes`` is extended
        with them, in place, before this returns.

        ``optimistic``: do not ask the target first which of the source transactions it
        applied already (one round trip per apply transaction, on every step) where each
        change has a transaction id: recording the applied positions refuses one that exists
        (their key), and the transaction is then rolled back and applied again with the
        question asked. For readers of a source's log, where a transaction comes again only
        after an applier stopped between its commit on the target and the deletion from the
        log. Every retry asks."""
        t = s.other
        started = time.perf_counter()
        excluded: dict[int, DualwriteError] = {}
        failed_tx: dict[str, int] = {}
        row_mode = careful = False
        parked_keys = self._parked_keys()
        # the changes of ``rest`` belong to the transactions of ``changes``
        ask = check_applied and not (optimistic and
                                     all(c.txid != WATERMARK for c in changes))
        # The target's log tables made (or known) before the apply transaction holds locks:
        # ensure's DDL runs on a connection of its own, and would wait for this transaction's
        # locks (a log an earlier version made gets a column the first time it is used).
        self.logs[t].ensure()
        while True:
            outcome = _Outcome()
            finishing = False
            try:
                # every statement of the apply transaction passes the connector's error
                # translation: a lost session is a transient error, retried with backoff
                with self.connectors[t].translating("apply captured changes"), \
                        self.connectors[t].transaction() as sess:
                    # the rest has no transaction the first part has not: its pairs are known
                    pairs = sorted({(c.map, c.txid) for c in changes})
                    done, marks = self.logs[t].applied(sess, self.env[s], pairs) \
                        if ask else (set(), {})
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
                    # The fence and the applied positions (a replay from the state store has
                    # none), in one round trip with the probe of the target's queue below:
                    # they commit with the rows, or roll back with them on a recheck.
                    self._raise_more_fences(sess, t)
                    unchecked = sorted(n for n, keys in outcome.unchecked.items() if keys)
                    finishing = True
                    queued = self.logs[t].finish_apply(
                        sess, self.env[s], _positions(todo) if check_applied else [],
                        self._prune[s], self._fenced(), unchecked)
                    # Rows the fast paths wrote without looking at the target's queue first
                    # are looked at now that this transaction holds them: a change of the
                    # target's own, committed before the write, means a conflict to settle.
                    self._recheck(sess, t, maps, outcome, queued)
                    # Record conflicts, then park (state store), then commit the target: a
                    # crash in between does them again on redelivery (each is idempotent),
                    # never loses one. In that order: once a key is parked, its change comes
                    # back as one waiting behind it, and is not seen as a conflict again.
                    keep = self.capture.keep_conflict_values
                    for c in outcome.conflicts.values():
                        self.state.add_conflict(**c, keep=keep)
                    self._park(s, outcome.parked)
                break
            except _Restart as r:
                excluded[r.action.change.seq] = r.error
                if r.action.change.txid != WATERMARK:
                    failed_tx[r.action.change.txid] = r.action.change.seq
                row_mode = careful = True
            except _Recheck:
                careful = True
            except (RowError, ConstraintViolation) as exc:
                if finishing and not ask and isinstance(exc, ConstraintViolation) and \
                        exc.kind == "unique":
                    # an applied position that exists: a transaction applied before (see
                    # ``optimistic``); again, asking which, as if nothing had happened
                    log.info("changes from %s applied before were read again: applying "
                             "the batch again without them", self.env[s],
                             extra={"event": "reapplied", "side": self.env[t],
                                    "source": self.env[s]})
                else:
                    # A batch failed: again, checking every target row first (an optimistic
                    # bulk insert met a row already there), then one row per statement to
                    # find the culprit.
                    if row_mode:
                        raise LinkError(f"a change failed outside any row: {exc}") from exc
                    row_mode = careful
                    careful = True
            if rest is not None:  # failed before the rest was taken: take it for the retry
                changes.extend(rest.result())
                rest = None
            ask = check_applied
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
        items = [(c.map, c.op) for c in changes]
        applied: list[tuple[str, str]] = []
        dup: list[tuple[str, str]] = []
        held: list[tuple[str, str]] = []
        if not parked and fresh is None:  # the common case: every change applied now
            applied = items
        else:
            for c, item in zip(changes, items, strict=True):
                (held if c.seq in parked else dup if fresh is not None and c.seq not in fresh
                 else applied).append(item)
        metrics.count_changes(metrics.CHANGES_CAPTURED, link, direction, items)
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
        todo = not_applied(part, done, marks)
        changes = todo
        if any(c.op == MARKER for c in part):  # markers of applied transactions too
            for c in part:
                if c.op == MARKER:
                    outcome.broken.setdefault(c.map, c.reason or "")
            changes = [c for c in todo if c.op != MARKER]
        if any(c.version for c in changes):
            self._unknown_versions(changes, maps, mode)
        # the parking rules (dualwrite.engine.apply.core): a change that failed parks its
        # whole source transaction; what follows on a parked key waits behind it
        live = route(self._actions(s, changes, maps, outcome), mode, outcome)
        for run in _runs(live, mode.limit):
            # a key parked by an earlier run of this transaction (a manual conflict): its
            # later changes wait behind it, they are not conflicts of their own
            run = hold_back(run, mode.blocked, outcome)
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
                    m.differ.decoder(s), m.bound.filter(s), m.differ,
                    operator.itemgetter(*m.differ.key_idx[s]), len(m.differ.key_idx[s]),
                    *m.differ.key_decoders(s), m)
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
        bound, _issues = self.map_source.bind([spec])
        if not bound:
            return None
        return _MapCtx(bound[0], MapDiffer(bound[0], self.connectors), m.state)

    def _unknown_versions(self, changes: list[Change], maps: dict[str, _MapCtx],
                          mode: _Mode) -> None:
        """Changes captured under a version that cannot be applied as such fail (they are
        parked with the reason, with their source transaction), never applied as another
        version."""
        excluded = mode.excluded
        # a map's version is a digest of its text: worked out once per map, not per change,
        # and each (map, version) pair of the batch is judged once, on its first change
        current = {n: m.bound.spec.version for n, m in maps.items()}
        first: dict[tuple[str, str], Change] = {}
        for c in changes:
            first.setdefault((c.map, c.version), c)
        unknown = {pair for pair, c in first.items()
                   if (m := maps.get(c.map)) is not None and c.version
                   and c.version != current[c.map] and self._ctx_of(c, maps) is m}
        if not unknown:
            return
        for c in changes:
            if (c.map, c.version) not in unknown:
                continue
            m = maps[c.map]
            excluded.setdefault(c.seq, RowError(
                f"captured under map version {c.version}, which the state store does not "
                "know or which no longer fits the tables; applying it as version "
                f"{m.bound.spec.version} could write it wrongly", map=c.map,
                hint="discard it (the rows then differ: `dualwrite verify` names them, "
                "`dualwrite sync --initial` mends them), or bring the tables back"))
            if c.txid != WATERMARK:
                mode.failed_tx.setdefault(c.txid, c.seq)

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
                self.rules.covers(self.env[s.other], m.bound.table(s.other)):
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
                 outcome: _Outcome, queued: set[str]) -> None:
        """Look at the target's queue for the rows the fast paths wrote in this transaction.
        They are held by it now, so whatever the target did to them committed before: a
        queued change of its own for one of them is a conflict the write did not see, and the
        batch is applied again carefully (:class:`_Recheck`). ``queued``: the maps the
        target queues anything of, probed once for all of them with the transaction's
        bookkeeping (none: the common case)."""
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
        and how. Only where that is exactly what the row builders would do: a source whose
        log's JSON text a target reads back exactly (``supports_json_log``) and a target that
        reads it (``supports_json_apply``: :meth:`WriteSession.insert_json`), no
        company striping, every key column a copy between columns of the same kind, and
        every written field either such a copy, a default, a value map, a lookup on the
        target (a join by natural key) or one on the source (resolved per run) of the shapes
        :meth:`_json_value` takes. A filter on the source is evaluated as before (it decides
        each change's kind); the values still go as text.

        This is a second compiler of the map, on purpose: it compiles into SQL over the log's
        JSON text, where the compiled map's row builders are Python closures over decoded
        rows, so it cannot call them without decoding every row (the cost it exists to
        avoid). What keeps the two in agreement: it reads the same facts from the compiled map
        (``create_into``/``live_into``, ``insert_columns``/``live_columns``, the kinds, the
        conversion plans and their ``text_safe``, the scoped lookups) and coerces defaults and
        value-map answers with the same :func:`coerce`; a field it cannot compute exactly as
        the row builders would makes the whole plan None (the row path), and a row its
        statement leaves out takes the row path. tests/engine/test_capture_realistic.py and
        tests/engine/test_capture_bulk.py apply the same changes on both paths and compare
        the rows and the inbox."""
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
        if self.connectors[s].capabilities.supports_json_log and \
                self.connectors[t].capabilities.supports_json_apply and \
                not d.company_cols[t] and None not in values.values() \
                and all(d.kinds[s][src] is d.kinds[t][dst] and d.kinds[t][dst] in _JSON_KINDS
                        and self.connectors[t].reads_log_text(d.plan(s, t, src, dst))
                        for src, dst in key_pairs):
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
                 # would round) must not reach the target as text, unless the target's
                 # statement converts it as they would (Connector.reads_log_text)
                 and d.connectors[t].reads_log_text(d.plan(s, t, src.column, dst.column, i))
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
                resolver = LookupResolver({s: self.connectors[s]})
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
        if len(keys) >= _PROBE_QUEUE_AT and not self.logs[t].queues(sess, b.name):
            return {}
        key_cols = [d.connectors[t].describe(b.table(t)).columns[c] for c in b.key(t)]
        found = self.logs[t].pending(sess, b.name, list(keys), key_cols)
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
        theirs: dict[tuple[Any, ...], list[Change]] = {}
        try:
            current: dict[tuple[Any, ...], tuple[Any, ...]] = {}
            if check:
                got = sess.lock(table_t, d.lock_columns[t], key=list(b.key(t)),
                                keys=[a.tkey for a in run])
                # raw values: Python's == already equates 5, 5.0 and Decimal('5.00');
                # the canonical form is the fallback (see _same)
                locked = d.locked_current
                current = dict(locked(t, r) for r in got)
                theirs = self._theirs(sess, t, m, [a.tkey for a in run])
            else:
                outcome.unchecked.setdefault(b.name, []).extend(a.tkey for a in run)
            resolved: dict[tuple[Side, int], dict[Any, Any]] = {}
            if d.has_lookups:
                resolver = LookupResolver({t: SessionLookups(sess),
                                           s: self.connectors[s]})
                resolved = d.resolve(((s, row) for a in run for row in (a.old, a.new)),
                                     resolver)
        except (RowError, ConstraintViolation) as exc:
            if len(run) == 1:
                raise _Restart(run[0], exc) from exc
            raise
        inserts: list[tuple[_Action, Row]] = []
        updates: list[tuple[_Action, Row]] = []
        deletes: list[_Action] = []
        undecided: list[tuple[_Action, tuple[Any, ...] | None]] = []
        conflicts: list[tuple[_Action, tuple[Any, ...] | None, list[Change]]] = []
        # the compiled builders themselves (what create_values / live_values call), bound
        # once per run: this loop is per row, and the wrappers would add a call to each
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
        if undecided and check and self.logs[t].catch_up(sess):
            # A target whose log is filled after its writers commit (logical decoding): a
            # change of its own committed before the lock may not be in its log yet. Now
            # that the log holds everything committed before the lock, look again.
            late = self._theirs(sess, t, m, [a.tkey for a, _cur in undecided])
            still = []
            for a, cur in undecided:
                contested = late.get(canonical_key(a.tkey))
                if contested:
                    conflicts.append((a, cur, contested))
                else:
                    still.append((a, cur))
            undecided = still
        if undecided or conflicts:
            self._decide(sess, s, m, undecided, conflicts, resolved, inserts, updates,
                         deletes, outcome)
        if self.rules.covers(self.env[t], table_t):
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
                self.rules.run(ctx)
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
        build = d.build_live[t]  # live_values' builder, bound once: a per-row loop
        try:
            for a in run:
                assert a.new is not None and a.old is not None
                rows.append((a.tkey, build(a.new, a.skey, {}), build(a.old, a.skey, {})))
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
            return d.live_values(t, a.old, resolved, a.skey)
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
        src = self.connectors[s].fetch(b.table(s), d.columns[s], key=list(b.key(s)),
                                            keys=[a.skey for a in asked])
        src_now = {canonical_key(tuple(r[i] for i in d.key_idx[s])): r for r in src}
        # the decisions themselves: dualwrite.engine.apply.core (no I/O)
        to_forget = decide(s, b, d, undecided, conflicts, src_now, resolved, self.env,
                           now_iso, inserts, updates, deletes, outcome)
        if to_forget:
            self.logs[t].forget([c.seq for c in to_forget], sess)

    #: the conflict rules (dualwrite.engine.apply.core)
    _winner = staticmethod(winner)
    _force = staticmethod(force)

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
        self.run_deferred()
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
            with self.connectors[Side.LEFT].transaction() as left, \
                    self.connectors[Side.RIGHT].transaction() as right:
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
        keys = d.keys_from_left(lkey)
        current: dict[Side, Row | None] = {}
        for x in Side:
            got = sessions[x].lock(b.table(x), d.columns[x], key=list(b.key(x)),
                                   keys=[keys[x]])
            current[x] = got[0] if got else None
            if self._theirs(sessions[x], x, m, [keys[x]]):
                return False  # a change of this key not parked yet: it joins first
        decoded = [(Side(p.source), c, d.decoder(Side(p.source))) for p, c in edits]
        rows = [(x, dec(c.old) if c.old is not None else None,
                 dec(c.new) if c.new is not None else None) for x, c, dec in decoded]
        resolver = LookupResolver({x: SessionLookups(sessions[x])
                                   for x in Side})
        resolved = d.resolve([*current.items(), *((x, r) for x, old, new in rows
                                                  for r in (old, new))], resolver)
        as_base = d.terms(base, keys[base], resolved)
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
        rules = self.rules.covers(self.env[other], b.table(other))
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
        self.rules.run(ctx)
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
                    with self.connectors[t].transaction() as sess:
                        self.logs[t].unmark(sess, self.env[s], stale)
            except ConnectorError as exc:
                log.warning("pruning applied positions in %s: %s", self.env[t], exc)

    def event(self, map_name: str, kind: str, message: str) -> None:
        """Record an event (alert rules count them); lost, with a log line, while the state
        store cannot be reached: what it tells is logged already. The actions of the rules it
        fires run after the step (:meth:`run_deferred`), never inside the apply loop: one
        that pauses or stops a map changes the maps the loop works on."""
        try:
            self.alerts.record(map_name, kind, message, defer=self._deferred.append)
        except TransientConnectorError as exc:
            log.debug("event %s of map %s not recorded: %s", kind, map_name, exc)

    def run_deferred(self) -> None:
        """Run the alert actions fired since the last call (pause or stop a map, call a
        webhook). One that fails is logged; the applier goes on."""
        while self._deferred:
            action = self._deferred.pop(0)
            try:
                action()
            except Exception as exc:  # an alert's action must not stop the applier
                log.warning("alert action failed: %s", exc, exc_info=True)

    def flush_activity(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._activity and (force or now - self._flushed > 1.0):
            self.state.note_applied(self._activity)
            self._activity = {}
            self._flushed = now


# -- helpers ---------------------------------------------------------------------------------
_UNSET: Any = object()
#: from this many changes in a run on, the target's log is probed for any queued change of the
#: map before its queued changes for the run's keys are looked up
_PROBE_QUEUE_AT = 50


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


# ``held_by_dependencies`` and ``_kind_of`` are the core's (dualwrite.engine.apply.core),
# re-exported for their importers here
__all__ = ["APPLYING", "CAPTURING", "Applier", "BatchResult", "_kind_of", "canonical_key",
           "capture_specs", "held_by_dependencies", "resolve_conflict", "run_applier"]
