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
import fcntl
import logging
import operator
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from dualwrite.connectors.base import Row, WriteSession
from dualwrite.connectors.capture import (
    WATERMARK,
    CaptureLog,
    CaptureSpec,
    Change,
    MariaDbDialect,
    PostgresDialect,
    columns_of_filter,
)
from dualwrite.engine.diff import Entry, MapDiffer, coerce
from dualwrite.engine.lookups import LookupResolver, SessionLookups
from dualwrite.engine.state import StateStore, now_iso
from dualwrite.errors import (
    ConnectorError,
    ConstraintViolation,
    DualwriteError,
    LinkError,
    RowError,
    TransientConnectorError,
)
from dualwrite.model.binding import BoundMap
from dualwrite.model.conversion import from_log
from dualwrite.model.filters import evaluate
from dualwrite.model.maps import ConflictPolicy, Side
from dualwrite.model.schema import Kind
from dualwrite.model.values import canonical

if TYPE_CHECKING:
    from dualwrite.engine.link import Link

log = logging.getLogger("dualwrite.capture")

#: map states in which captured changes are applied
APPLYING = ("running", "resuming")
#: map states in which capture is installed
CAPTURING = ("initializing", "running", "paused", "resuming")


def capture_specs(bound: BoundMap) -> dict[Side, CaptureSpec]:
    """What each side's triggers capture for ``bound``: its key and every column the map
    reads, filter columns included."""
    out = {}
    for s in Side:
        cols = list(bound.read_columns(s))
        flt = bound.filter(s)
        if flt is not None:
            cols += sorted(c for c in columns_of_filter(flt) if c not in cols)
        out[s] = CaptureSpec(bound.name, bound.table(s), tuple(bound.key(s)), tuple(cols))
    return out


# -- the applier lease ------------------------------------------------------------------------
class ApplierLock:
    """One applier per link at a time: an exclusive ``flock`` on a file beside the state
    store. The kernel releases it when the holder dies, even by SIGKILL."""

    def __init__(self, state_url: str, link_id: str) -> None:
        if state_url.startswith("sqlite:///") and state_url != "sqlite:///:memory:":
            path = Path(state_url.removeprefix("sqlite:///") + f".applier-{link_id[:8]}.lock")
        else:
            path = Path(tempfile.gettempdir()) / f"dualwrite-applier-{link_id}.lock"
        self.path = path
        self._fd: int | None = None

    def acquire(self, *, wait: bool = False) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def holder(self) -> int | None:
        """The pid written by the current holder, if the lock is held."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        if self._fd is None and self.acquire():
            self.release()
            return None
        return int(text) if text.isdigit() else None


# -- one action -----------------------------------------------------------------------------
_LAZY: Any = object()


class _Action:
    """A captured change, decoded for one map: what the source row was and became.

    ``old``/``new`` are rows of the map's source columns, or None where there is no such
    version (or it lies outside the map's filter). For a map without a filter they are
    decoded only when first asked for: the set-based paths never ask."""

    __slots__ = ("_decode", "_new", "_old", "change", "kind", "lkey", "skey", "source",
                 "tkey")

    def __init__(self, change: Change, source: Side, kind: str, old: Row | None,
                 new: Row | None, skey: Row, tkey: Row, lkey: Row,
                 decode: Callable[[dict[str, Any]], Row] | None = None) -> None:
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
    """Target columns and the source columns (JSON members) they are copied from."""

    live_columns: list[str]
    live_sources: list[str]
    insert_columns: list[str]
    insert_sources: list[str]
    #: per target key column, the source column it is copied from
    key_sources: list[str]


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
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    parked: list[tuple[_Action, str, str, dict[str, Any] | None]] = field(default_factory=list)
    applied: int = 0
    skipped: int = 0
    #: maps whose target log held no queued change when probed in this transaction
    quiet: set[str] = field(default_factory=set)


@dataclass
class _Mode:
    """How one attempt at an apply transaction writes: run length, whether every row is
    compared first, the changes that failed before (by seq) and the keys held back."""

    limit: int
    careful: bool
    excluded: dict[int, DualwriteError]
    blocked: set[tuple[str, tuple[Any, ...]]]


class _Restart(Exception):
    """Roll back and apply the batch again without the action that failed."""

    def __init__(self, action: _Action, error: DualwriteError) -> None:
        super().__init__(str(error))
        self.action = action
        self.error = error


class Applier:
    """Applies captured changes of one link, both directions. Thread-compatible, not
    thread-safe: one applier runs in one thread (``run``)."""

    def __init__(self, link: Link, *, batch: int | None = None, poll: float | None = None
                 ) -> None:
        self.link = link
        cfg = link.config.model.capture
        self.batch = batch or cfg.batch_size
        self.poll = poll if poll is not None else cfg.poll_interval
        self.logs: dict[Side, CaptureLog] = {s: link.connectors[s].capture_log() for s in Side}
        self.state: StateStore = link.state
        self.env = {s: link.env_name(s) for s in Side}
        self._maps: dict[str, _MapCtx] = {}
        self._maps_at = 0.0
        self._prune: dict[Side, list[tuple[str, str]]] = {s: [] for s in Side}
        self._backoff: dict[Side, float] = {s: 0.0 for s in Side}
        self._retry_at: dict[Side, float] = {s: 0.0 for s in Side}
        self.last_error: dict[Side, str | None] = {s: None for s in Side}
        self._activity: dict[str, tuple[str, int]] = {}
        self._flushed = 0.0
        self._purger: threading.Thread | None = None
        self._purger_stop = threading.Event()
        self._parked: set[tuple[str, tuple[Any, ...]]] | None = None
        self._decoders: dict[tuple[str, Side], Callable[[dict[str, Any]], Row]] = {}
        self._json_plans: dict[tuple[str, Side], _JsonPlan | None] = {}
        self.alerts = link.alerts()
        self._waiter: Any = None
        self._waiter_at = 0.0

    # -- maps --------------------------------------------------------------------------------
    def maps(self, refresh: bool = False) -> dict[str, _MapCtx]:
        """Maps whose capture is installed, with their state (re-read at most every 0.2 s,
        so that pause/resume from another process take effect promptly)."""
        now = time.monotonic()
        if refresh or now - self._maps_at > 0.2:
            states = self.state.map_states()
            out = {}
            for b in self.link.bound_maps():
                st = (states.get(b.name) or {}).get("state")
                if st in CAPTURING:
                    old = self._maps.get(b.name)
                    differ = old.differ if old else self.link.differ(b.name)
                    out[b.name] = _MapCtx(b, differ, str(st))
            self._maps, self._maps_at = out, now
        return self._maps

    # -- the loop ----------------------------------------------------------------------------
    def run(self, stop: threading.Event, *, ready: Callable[[], None] | None = None) -> None:
        """Apply until ``stop`` is set. Waits for changes on PostgreSQL's NOTIFY, else polls."""
        self.prune_markers()
        self.replay_released()
        if ready:
            ready()
        last_housekeeping = 0.0
        while not stop.is_set():
            done = self.step()
            now = time.monotonic()
            if now - last_housekeeping > 1.0:
                last_housekeeping = now
                self.housekeeping()
            if done == 0:
                self._wait(stop)
        self.flush_activity(force=True)

    def _wait(self, stop: threading.Event) -> None:
        delay = self.poll
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
            waiter(max(delay, 0.05) if everyone_notifies and not pending_retry else delay)
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
                handled += self.apply_from(s)
                self._backoff[s] = 0.0
                self.last_error[s] = None
            except ConnectorError as exc:
                if not isinstance(exc, TransientConnectorError):
                    raise
                self._backoff[s] = min(max(self._backoff[s] * 2, 0.1),
                                       self.link.config.model.capture.max_backoff)
                self._retry_at[s] = time.monotonic() + self._backoff[s]
                if self.last_error[s] is None:
                    log.warning("capture %s -> %s: %s; retrying", self.env[s],
                                self.env[s.other], exc)
                    for name in self.maps():
                        self.event(name, "unreachable", str(exc))
                self.last_error[s] = str(exc)
        return handled

    # -- one direction -----------------------------------------------------------------------
    def apply_from(self, s: Side) -> int:
        """Read one batch from side ``s``'s log and apply it to the other side."""
        maps = {n: m for n, m in self.maps().items() if m.state in APPLYING}
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
        excluded: dict[int, DualwriteError] = {}
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
                    conn = sess.conn  # type: ignore[attr-defined]
                    # the rest has no transaction the first part has not: its pairs are known
                    pairs = sorted({(c.map, c.txid) for c in changes})
                    done, marks = self.logs[t].applied(conn, self.env[s], pairs) \
                        if check_applied else (set(), {})
                    blocked = set(parked_keys)
                    mode = _Mode(1 if row_mode else self.batch, careful, excluded, blocked)
                    todo = self._apply_part(sess, s, changes, maps, outcome, mode, done, marks)
                    if rest is not None:
                        more = rest.result()
                        rest = None
                        changes.extend(more)
                        # a new list: the first part's may be ``changes`` itself
                        todo = todo + self._apply_part(sess, s, more, maps, outcome, mode,
                                                       done, marks)
                    # Park first (state store), then commit the target: a crash in between
                    # parks again on redelivery (parking is idempotent), never loses.
                    self._park(s, outcome.parked)
                    if check_applied:  # a replay from the state store has no log position
                        self.logs[t].mark_applied(conn, self.env[s], _positions(todo))
                    if self._prune[s]:
                        self.logs[t].unmark(conn, self.env[s], self._prune[s])
                break
            except _Restart as r:
                excluded[r.action.change.seq] = r.error
                row_mode = careful = True
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
        self._prune[s] = []
        if forget:
            self.logs[s].forget([c.seq for c in changes])
            self._prune[s] = sorted({(c.map, c.txid) for c in changes if c.txid != WATERMARK})
        for c in outcome.conflicts:
            self.state.add_conflict(**c)
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

    def _apply_part(self, sess: WriteSession, s: Side, part: list[Change],
                    maps: dict[str, _MapCtx], outcome: _Outcome, mode: _Mode,
                    done: set[tuple[str, str]], marks: dict[str, int]) -> list[Change]:
        """Apply consecutive changes of one apply transaction; returns those that were not
        applied before (their positions are to be recorded)."""
        todo = part if not done and not marks else [
            c for c in part if (c.map, c.txid) not in done
            and not (c.txid == WATERMARK and c.seq <= marks.get(c.map, -1))]
        live = []
        blocked, excluded = mode.blocked, mode.excluded
        for a in self._actions(s, todo, maps, outcome):
            err = excluded.get(a.change.seq)
            if err is None and not blocked:  # the common case: nothing held
                live.append(a)
                continue
            held = (a.change.map, canonical_key(a.lkey))
            if err is not None:
                outcome.parked.append((a, "error", _kind_of(err), {"reason": str(err)}))
                blocked.add(held)  # what follows on this key waits behind it
            elif held in blocked:
                outcome.parked.append((a, "waiting", "", None))
            else:
                live.append(a)
        for run in _runs(live, mode.limit):
            self._apply_run(sess, s, maps[run[0].change.map], run, outcome,
                            careful=mode.careful)
        return todo

    # -- decoding ----------------------------------------------------------------------------
    def _actions(self, s: Side, changes: list[Change], maps: dict[str, _MapCtx],
                 outcome: _Outcome) -> list[_Action]:
        """Decode changes into actions for their maps (the hot loop of a large batch: what
        does not depend on the row is looked up once per map)."""
        out = []
        per_map: dict[str, tuple[Any, ...] | None] = {}
        left = s is Side.LEFT
        for c in changes:
            ctx = per_map.get(c.map, _UNSET)
            if ctx is _UNSET:
                m = maps.get(c.map)
                ctx = per_map[c.map] = None if m is None else (
                    self._decoder(c.map, m.differ, s), m.bound.filter(s), m.differ,
                    operator.itemgetter(*m.differ.key_idx[s]), len(m.differ.key_idx[s]),
                    *self._key_coercions(m.differ, s))
            if ctx is None:
                continue
            decode, flt, d, keyget, width, keyfix, tkinds = ctx
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
                                   skey if left else tkey, decode))
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
                               skey, tkey, skey if left else tkey))
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

    def _decoder(self, name: str, d: MapDiffer, s: Side
                 ) -> Callable[[dict[str, Any]], Row]:
        """A function turning captured values (as JSON gave them) into a row of ``d.columns``
        in the column kinds (:func:`dualwrite.model.conversion.from_log`); only kinds JSON
        cannot carry exactly are decoded."""
        fn = self._decoders.get((name, s))
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

            fn = self._decoders[(name, s)] = decode
        return fn

    # -- applying one run of like changes ----------------------------------------------------
    def _apply_run(self, sess: WriteSession, s: Side, m: _MapCtx, run: list[_Action],
                   outcome: _Outcome, *, careful: bool = True) -> None:
        """Apply a run of like changes (see the module docstring for the rules).

        First, the target's own queued changes for these keys: a key the target changed too
        since it was last synced is a conflict whatever the target holds now (it may have
        changed and changed back). The other keys take the fast path where there is one:
        creates are inserted optimistically (no twin is the common case) unless ``careful``;
        updates on PostgreSQL are one statement that writes a row only where it still holds
        the old version. Everything else locks the target rows and compares."""
        t = s.other
        d = m.differ
        theirs = self._theirs(sess, t, m, run, outcome)
        if theirs:
            contested = [a for a in run if canonical_key(a.tkey) in theirs]
            run = [a for a in run if canonical_key(a.tkey) not in theirs]
            self._compare_and_write(sess, s, m, contested, outcome, theirs, check=True)
        if not run:
            return
        if not careful and run[0].kind == "update" and not d.has_lookups and \
                self._guarded_update(sess, s, m, run, outcome):
            return
        if not careful and run[0].kind == "create":
            plan = self._json_plan(m, s)
            texts = [a.change.new_json for a in run] if plan is not None else []
            if plan is not None and None not in texts and \
                    sess.insert_json(m.bound.table(t), plan.insert_columns,
                                     plan.insert_sources, cast(list[str], texts)):
                outcome.applied += len(run)
                return
        self._compare_and_write(sess, s, m, run, outcome, {},
                                check=careful or run[0].kind != "create")

    def _json_plan(self, m: _MapCtx, s: Side) -> _JsonPlan | None:
        """Whether changes from side ``s`` for this map can go to the target as the log's JSON
        text, converted by the target database (no decoding, no row building in Python),
        and how. Only where that is exactly what the row builders would do: a PostgreSQL
        (``row_to_json``) or MariaDB (``JSON_OBJECT``) log and a PostgreSQL target, no filter
        on the source, no lookups, value maps, defaults or company striping, and every written
        field and every key column a copy between columns of the same kind."""
        key = (m.bound.name, s)
        if key in self._json_plans:
            return self._json_plans[key]
        plan = None
        t = s.other
        d, b = m.differ, m.bound
        fields = sorted(set(d.create_into[t]) | set(d.live_into[t]))

        def plain(i: int) -> bool:
            f = b.fields[i]
            src, dst = f.end(s), f.end(t)
            return (src.column is not None and dst.column is not None and f.spec.values is None
                    and not src.is_lookup and not dst.is_lookup
                    and d.kinds[s][src.column] is d.kinds[t][dst.column]
                    and d.kinds[t][dst.column] in _JSON_KINDS
                    # a value the row builders would convert (a zone, a scale the target
                    # would round) must not reach the target as text
                    and d.plan(s, t, src.column, dst.column, i).text_safe)

        key_pairs = [(d.columns[s][i], c) for i, c in zip(d.key_idx[s], b.key(t), strict=True)]
        if isinstance(self.logs[s].dialect, PostgresDialect | MariaDbDialect) and \
                isinstance(self.logs[t].dialect, PostgresDialect) and b.filter(s) is None and \
                not d.has_lookups and not d.company_cols[t] and all(plain(i) for i in fields) \
                and all(d.kinds[s][src] is d.kinds[t][dst] and d.kinds[t][dst] in _JSON_KINDS
                        and d.plan(s, t, src, dst).text_safe for src, dst in key_pairs):
            plan = _JsonPlan(
                live_columns=list(d.live_columns[t]),
                live_sources=[b.fields[i].end(s).column or "" for i in d.live_into[t]],
                insert_columns=list(d.insert_columns[t]),
                insert_sources=[b.fields[i].end(s).column or "" for i in d.create_into[t]],
                key_sources=[src for src, _dst in key_pairs])
        self._json_plans[key] = plan
        return plan

    def _theirs(self, sess: WriteSession, t: Side, m: _MapCtx, run: list[_Action],
                outcome: _Outcome | None) -> dict[tuple[Any, ...], list[Change]]:
        """The target's captured changes still queued for the run's keys, by key. With an
        ``outcome``, a large run may rely on (or make) one probe per transaction for the map;
        without one, the keys are always looked up."""
        d, b = m.differ, m.bound
        conn = sess.conn  # type: ignore[attr-defined]
        # A large run asks first whether the target queues anything of this map at all (the
        # common case: it does not): one cheap probe instead of sending every key, made once
        # per apply transaction. A change the target commits after the probe has moved its
        # row on, so the guarded update leaves that row, and the rows it leaves are looked up
        # again without a probe (see _after_guarded).
        if outcome is not None and len(run) >= _PROBE_QUEUE_AT:
            if b.name in outcome.quiet:
                return {}
            if not self.logs[t].queues(conn, b.name):
                outcome.quiet.add(b.name)
                return {}
        key_types = [d.connectors[t].describe(b.table(t)).columns[c].sql_type
                     for c in b.key(t)]
        found = self.logs[t].pending(conn, b.name, [a.tkey for a in run], key_types)
        out: dict[tuple[Any, ...], list[Change]] = {}
        kinds = [d.kinds[t][c] for c in b.key(t)]
        for c in found:
            k = canonical_key(tuple(coerce(v, kind)
                                    for v, kind in zip(c.key, kinds, strict=True)))
            out.setdefault(k, []).append(c)
        return out

    def _compare_and_write(self, sess: WriteSession, s: Side, m: _MapCtx, run: list[_Action],
                           outcome: _Outcome, theirs: dict[tuple[Any, ...], list[Change]],
                           *, check: bool) -> None:
        t = s.other
        d, b = m.differ, m.bound
        table_t = b.table(t)
        key_t = list(b.key(t))
        live_cols = d.live_columns[t]
        cols = key_t + [c for c in live_cols if c not in key_t]
        try:
            current: dict[tuple[Any, ...], tuple[Any, ...]] = {}
            if check:
                got = sess.lock(table_t, cols, key=key_t, keys=[a.tkey for a in run])
                # raw values: Python's == already equates 5, 5.0 and Decimal('5.00');
                # the canonical form is the fallback (see _same)
                pos = [cols.index(c) for c in live_cols]
                current = {tuple(r[:len(key_t)]): tuple(r[i] for i in pos) for r in got}
            resolved: dict[tuple[Side, int], dict[Any, Any]] = {}
            if d.has_lookups:
                resolver = LookupResolver({t: SessionLookups(sess),  # type: ignore[dict-item]
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
        self._write(sess, s, m, inserts, updates, deletes, optimistic=not check)
        outcome.applied += len(inserts) + len(updates) + len(deletes)

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
                    plan.live_sources, cast(list[str], news), cast(list[str], olds))
                if done is not None:
                    return self._after_guarded(sess, s, m, run, outcome, done)
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
        """Count what a guarded update wrote; the rest goes through the careful path."""
        if len(done) == len(run):  # the common case: every row still held the old version
            outcome.applied += len(run)
            return True
        done_keys = {canonical_key(k) for k in done}
        rest = [a for a in run if canonical_key(a.tkey) not in done_keys]
        outcome.applied += len(run) - len(rest)
        if rest:
            # The target moved on for these rows: maybe by a change it committed after the
            # run's queue was looked at, so look again (no probe) before comparing.
            theirs = self._theirs(sess, s.other, m, rest, None)
            self._compare_and_write(sess, s, m, rest, outcome, theirs, check=True)
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
            outcome.conflicts.append({
                "map_name": b.name, "key": list(a.lkey), "policy": policy.value,
                "winner": winner.value if winner else "manual", "source": s.value,
                "incoming": a.change.as_dict(), "target": _plain(cur, d.live_columns[t])})
            if winner is None:
                outcome.parked.append((a, "error", "conflict", {
                    "reason": f"conflict: both sides changed this row since it was last "
                    f"synced (map policy: manual); {self.env[s]} changed it at "
                    f"{a.change.at.isoformat()}, {self.env[t]} at "
                    f"{max(x.at for x in theirs).isoformat()}",
                    "target": _plain(cur, d.live_columns[t]),
                    "theirs": [x.as_dict() for x in theirs]}))
            elif winner is t:
                outcome.skipped += 1
            else:
                # the target's own changes to this row lost: they must not flow back
                to_forget += theirs
                self._force(a, cur, d, t, resolved, inserts, updates, deletes)
        if to_forget:
            self.logs[t].forget([c.seq for c in to_forget],
                                sess.conn)  # type: ignore[attr-defined]

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
            inserts.append((a, d.build_create[t](a.new, a.skey, resolved)))
        else:
            updates.append((a, d.build_live[t](a.new, a.skey, resolved)))

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

    # -- parking -----------------------------------------------------------------------------
    def _parked_keys(self) -> set[tuple[str, tuple[Any, ...]]]:
        """Keys held by open inbox entries. Only the applier parks, so its own cache is exact
        but for releases made by other processes, which housekeeping picks up each second."""
        if self._parked is None:
            self._parked = self.state.parked_keys()
        return self._parked

    def _park(self, s: Side, parked: list[tuple[_Action, str, str, dict[str, Any] | None]]
              ) -> None:
        if parked:
            self._parked = None
        for a, status, kind, info in parked:
            c = a.change
            if status == "error":
                reason = (info or {}).get("reason", "")
                self.state.park_error(
                    c.map, self.env[s], s.value, a.lkey, c.op, kind, reason, c.as_dict(),
                    {k: v for k, v in (info or {}).items() if k != "reason"})
            else:
                self.state.park_waiting(c.map, s.value, a.lkey, c.as_dict())

    # -- replaying what waited ---------------------------------------------------------------
    def replay_released(self) -> int:
        """Apply the parked changes of keys whose inbox entry was retried, discarded or
        resolved, in the order they were parked. A change that fails again parks again."""
        released = self.state.released_parks()
        if not released:
            return 0
        self._parked = None
        maps = {k: m for k, m in self.maps(refresh=True).items() if m.state in APPLYING}
        n = 0
        for entry_id, items in released:
            if any(doc["map"] not in maps for _s, doc in items):
                continue  # its map is paused (or stopped): it replays once the map runs
            for source, doc in items:
                s = Side(source)
                change = Change.from_dict(doc)
                m = maps[change.map]
                self.apply_changes(s, [change], {change.map: m}, forget=False,
                                   check_applied=False)
                n += 1
            self.state.finish_release(entry_id)
        self._parked = None
        return n

    # -- housekeeping ------------------------------------------------------------------------
    def prune_markers(self) -> None:
        """Drop applied positions whose source changes are gone (a crash between deleting
        them from the source log and dropping the position leaves a few behind)."""
        for t in Side:
            s = t.other
            try:
                marks = [(m, x) for src, m, x in self.logs[t].all_marks()
                         if src == self.env[s]]
                if not marks:
                    continue
                present = self.logs[s].txids_present(sorted({x for _m, x in marks}))
                stale = [(m, x) for m, x in marks if x not in present]
                if stale:
                    with self.link.connectors[t].transaction() as sess:
                        self.logs[t].unmark(sess.conn, self.env[s], stale)  # type: ignore[attr-defined]
            except ConnectorError as exc:
                log.warning("pruning applied positions in %s: %s", self.env[t], exc)

    def housekeeping(self) -> None:
        """Once a second: replay released parks, finish resuming maps, watch queue budgets;
        and see that what deleted log rows leave behind is purged."""
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
                self.state.set_map_state(name, "running")
            used = max(rows / budget.max_rows, size / budget.max_bytes,
                       age / budget.max_age_seconds)
            self.alerts.queue_level(name, used, rows, size, age)

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
        self.alerts.record(map_name, kind, message)

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

        self.conns = []
        self.sel = selectors.DefaultSelector()
        for url in urls:
            u = make_url(url)
            conn = psycopg.connect(host=u.host or "localhost", port=u.port or 5432,
                                   user=u.username, password=u.password, dbname=u.database,
                                   autocommit=True)
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


def canonical_key(values: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(canonical(v) for v in values)


def _same(cur: tuple[Any, ...] | None, values: tuple[Any, ...] | None) -> bool:
    """Whether a target row's values equal values built for it: Python equality first (it
    already equates 5 and Decimal('5.00')), then the canonical form (datetimes, booleans)."""
    if cur is None or values is None:
        return cur is values
    return cur == values or canonical_key(cur) == canonical_key(values)


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
    text = str(err)
    if "lookup" in text or "value map" in text:
        return "lookup"
    return "rejected"


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
    name = kind = None
    for a in actions:
        k = a.tkey  # one side's values, all of its own types: no canonical form needed
        if a.kind != kind or a.change.map != name or k in keys or len(run) >= limit:
            if run:
                yield run
            run, keys, name, kind = [], set(), a.change.map, a.kind
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
                wait_for_lock: bool = True) -> None:
    """Take the link's applier lease (waiting for it, as a standby, while another process
    holds it), recover in-doubt live transactions, then apply captured changes until
    ``stop`` is set."""
    lock = link.applier_lock()
    while not lock.acquire():
        if not wait_for_lock:
            raise LinkError(
                f"another applier (pid {lock.holder()}) is running for link "
                f"{link.config.link_name!r}",
                hint="one applier per link: stop the other `dualwrite run` or `serve`, or "
                "let this one wait as a standby")
        if stop.wait(1.0):
            return
    try:
        link.recover()
        applier = link.applier()
        try:
            applier.run(stop, ready=ready)
        finally:
            applier.close()
    finally:
        lock.release()


def resolve_conflict(link: Link, entry_id: int, pick: Side) -> dict[str, Any]:
    """Settle a parked conflict: the ``pick`` side's current row is written to the other
    side (or the twin deleted, if the picked row is gone); then the inbox entry is resolved
    and the applier replays the changes that waited behind it (they find both sides agreeing,
    or apply on top). Returns what was written."""
    entry = link.state.get_error(entry_id)
    if entry.status != "open":
        raise DualwriteError(f"inbox entry {entry_id} is {entry.status}, not open",
                             hint="list open entries with `dualwrite errors list`")
    [bound] = link.bound_maps([entry.map])
    d = link.differ(entry.map)
    lkey = tuple(entry.key)
    t = pick.other
    # the picked side's key: the left key as stored, or its twin's key on the right
    shaped = [None] * len(d.columns[Side.LEFT])
    for i, v in zip(d.key_idx[Side.LEFT], lkey, strict=True):
        shaped[i] = v
    keys = {Side.LEFT: tuple(coerce(v, d.kinds[Side.LEFT][c]) for v, c in
                             zip(lkey, bound.key(Side.LEFT), strict=True)),
            Side.RIGHT: d.target_key(Side.LEFT, tuple(shaped))}
    rows = link.connectors[pick].fetch(bound.table(pick), d.columns[pick],
                                       key=list(bound.key(pick)), keys=[keys[pick]])
    with link.connectors[t].transaction() as sess:
        resolver = LookupResolver({t: SessionLookups(sess), pick: link.connectors[pick]})  # type: ignore[dict-item]
        table_t = bound.table(t)
        got = sess.lock(table_t, list(bound.key(t)), key=list(bound.key(t)), keys=[keys[t]])
        if not rows:
            if got:
                sess.delete(table_t, list(bound.key(t)), [keys[t]])
            written: dict[str, Any] = {"deleted": list(keys[t])}
        else:
            row = rows[0]
            entries = [Entry((), row, None) if pick is Side.LEFT else Entry((), None, row)]
            resolved = d._prefetch(entries, resolver)
            skey = tuple(row[i] for i in d.key_idx[pick])
            if got:
                vals = d.build_live[t](row, skey, resolved)
                sess.update(table_t, list(bound.key(t)), d.live_columns[t], [(keys[t], vals)])
                written = {"updated": dict(zip(d.live_columns[t], vals, strict=True))}
            else:
                vals = d.build_create[t](row, skey, resolved)
                sess.insert(table_t, d.insert_columns[t], [vals])
                written = {"created": dict(zip(d.insert_columns[t], vals, strict=True))}
    link.state.resolve_error(entry_id, "resolved")
    return {"id": entry_id, "map": entry.map, "key": list(lkey), "picked": pick.value,
            "written_to": link.env_name(t), **written}


__all__ = ["APPLYING", "CAPTURING", "Applier", "ApplierLock", "BatchResult", "canonical_key",
           "capture_specs", "resolve_conflict", "run_applier"]
