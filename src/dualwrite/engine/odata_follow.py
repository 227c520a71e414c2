"""Keeping a link with one OData side in step, change by change: the OData side's changes
read by delta links or by polling its modified property, the database side's by its capture
triggers; each changed row compared through the map with its twin and written where they
differ. Outside the applier (which keeps its positions, fences and applied marks in SQL
change logs on both sides); driven by :meth:`ODataFollower.step`.

Why comparing makes this safe without the applier's bookkeeping: every write is decided by
reading both rows as they are now, so a change read twice (a poll's overlap window, a step
repeated after a crash before its cursor was kept) writes nothing the second time, and
dualwrite's own writes read back from the service compare equal (echo suppression falls
out of it; polling also drops them by their timestamp, :class:`ModifiedPoll`).

Order and conflicts: the side the map's ``conflict:`` policy makes win (``left-wins``,
``right-wins``) is read first in each step, so when both sides changed one row between two
steps, the loser's change is compared against the winner's values already written, and is
dropped. ``newest-wins`` and ``manual`` need the applier's old versions: refused here.

Deletions: told by delta links (``@removed``) and by the database's log; with polling, a
key-only read every ``reconcile_every`` steps finds rows gone from the service (a row the
database side still has, whose key the service no longer has, and which has no change
queued in the database's log, was deleted in the service).

Each source transaction of the database side is written to the service as one ``$batch``
change set (all or nothing); a change set the service refuses is written row by row, and
the refused rows go to the error inbox.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dualwrite.connectors.base import Connector, Row
from dualwrite.connectors.capture import CaptureLog
from dualwrite.connectors.changelog import Change, ChangeLog
from dualwrite.connectors.odata.changes import (
    DEFAULT_OVERLAP,
    FollowedService,
    ModifiedPoll,
    RowChange,
)
from dualwrite.connectors.odata.connector import ETags
from dualwrite.engine.capture import capture_specs
from dualwrite.engine.diff import Classified, Entry, Failure, MapDiffer
from dualwrite.engine.initial_sync import InitialSync
from dualwrite.engine.lease import DEFAULT_TTL, ApplierLease
from dualwrite.engine.state import StateStore
from dualwrite.errors import ConfigError, ConstraintViolation, RowError, TransientConnectorError
from dualwrite.model.binding import BoundMap
from dualwrite.model.maps import ConflictPolicy, Side
from dualwrite.model.values import canonical

if TYPE_CHECKING:
    from dualwrite.engine.link import Link

log = logging.getLogger("dualwrite.odata_follow")

PHASE = "odata-follow"


@dataclass
class _Followed:
    """One map: its sides, how the service's changes are read, and where reading is."""

    bound: BoundMap
    odata: Side
    method: str
    modified: str | None
    poll: ModifiedPoll = field(default_factory=ModifiedPoll)
    delta_link: str | None = None
    steps: int = 0
    #: the position last kept in the state store
    kept: dict[str, Any] = field(default_factory=dict)

    @property
    def db(self) -> Side:
        return self.odata.other


class ODataFollower:
    """Follows every valid map of a link whose one side is an OData service (no triggers
    of its own: ``capabilities.capture`` false) and whose other side has capture."""

    def __init__(self, connectors: dict[Side, Connector], state: StateStore,
                 maps: Sequence[BoundMap], modified: dict[Side, str | None], *,
                 overlap: dt.timedelta = DEFAULT_OVERLAP, reconcile_every: int = 10,
                 batch: int = 1000) -> None:
        self.connectors = connectors
        self.state = state
        self.batch = batch
        self.reconcile_every = reconcile_every
        self.sync = InitialSync(connectors, state, batch_size=batch)
        odata = [s for s in Side if not connectors[s].capabilities.capture]
        if len(odata) != 1 or not connectors[odata[0].other].capabilities.capture:
            raise ConfigError(
                "following changes needs one side without capture triggers (an OData "
                "service) and one with them (PostgreSQL, MariaDB, SQLite)",
                hint="link an OData environment with a database environment", code="DW204")
        o = odata[0]
        service = connectors[o]
        if not isinstance(service, FollowedService):
            raise ConfigError(
                f"environment {service.name!r} has no change tracking or modified-timestamp "
                "reading (it is not an OData service)", code="DW204",
                hint="follow a link between an OData environment and a database")
        #: the service's connector, as what following needs of it
        self.service: FollowedService = service
        # the entities written come back with the service's own timestamp: echo suppression
        service.return_written = True
        # the twins read before each write carry their ETags: a write sends If-Match with
        # the one read, and a change made in the service in between is a conflict (412)
        service.etags = ETags()
        self.maps: list[_Followed] = []
        for b in maps:
            if b.spec.conflict not in (ConflictPolicy.LEFT_WINS, ConflictPolicy.RIGHT_WINS):
                raise ConfigError(
                    f"map {b.name!r}: conflict policy {b.spec.conflict.value} needs the "
                    "applier's old versions, which a change read from an OData service has "
                    "not", hint="use left-wins or right-wins with an OData side",
                    code="DW204")
            if b.filter(Side.LEFT) is not None or b.filter(Side.RIGHT) is not None:
                raise ConfigError(
                    f"map {b.name!r} has a filter, which following an OData side does not "
                    "apply yet (a row moving into or out of it)", hint="follow maps without "
                    "`filter:`; sync and verify the filtered ones", code="DW204")
            mod = b.spec.modified(o) or modified.get(o)
            found = connectors[o].change_method(b.table(o), mod)
            if found is None or found[0] is None:
                message, hint = cannot_follow(b.table(o), connectors[o].name, o,
                                              found[1] if found else "it reads no changes")
                raise ConfigError(f"map {b.name!r}: {message}", hint=hint, code="DW136")
            f = _Followed(b, o, found[0], mod, ModifiedPoll(overlap=overlap))
            _, stats = state.get_checkpoint(b.name, PHASE)
            f.poll = ModifiedPoll.from_doc(stats.get("poll") or {}, overlap)
            f.delta_link = stats.get("delta_link")
            f.kept = dict(stats)
            self.maps.append(f)
        self.differs = {f.bound.name: MapDiffer(f.bound, connectors, master=None)
                        for f in self.maps}

    # -- set-up --------------------------------------------------------------------------------
    def start(self) -> None:
        """Install capture on the database side, and take the service's starting position
        (a delta link, or the newest modified value): changes from then on are followed.
        Run *before* initial sync, as the applier's capture is installed before it: a change
        made while the sync runs is then followed too (compared, written only if the sync
        did not already copy it). A delta link's initial read reads the set whole once. Run
        again (a new process), it keeps the position kept by the first."""
        for f in self.maps:
            self._log(f).install(capture_specs(f.bound)[f.db])
            if f.kept.get("started"):
                continue  # a position kept by an earlier start: follow on from there
            if f.method == "delta":
                got = self.service.start_delta(
                    f.bound.table(f.odata), self.differs[f.bound.name].columns[f.odata],
                    page_size=self.batch)
                if got is None:
                    raise ConfigError(f"map {f.bound.name!r}: the service stopped applying "
                                      "change tracking", hint="run validate again",
                                      code="DW136")
                f.delta_link = got[1]
            else:
                assert f.modified is not None
                f.poll.since = self.service.newest_modified(
                    f.bound.table(f.odata), f.modified)
                # the rows of the overlap window below it are as initial sync will find
                # them, not changes: read them once as seen, so that no step re-reads one
                # as a change (it would overwrite a change the other side made meanwhile)
                self._poll(f)
            self._keep(f)

    # -- steps ---------------------------------------------------------------------------------
    def step(self) -> int:
        """Read and write what changed on both sides since the last step; returns how many
        rows were written."""
        n = 0
        for f in self.maps:
            winner = Side.LEFT if f.bound.spec.conflict is ConflictPolicy.LEFT_WINS \
                else Side.RIGHT
            for s in (winner, winner.other):
                n += self._from_odata(f) if s is f.odata else self._from_db(f)
            f.steps += 1
            if f.method == "poll" and f.steps % self.reconcile_every == 0:
                n += self.reconcile(f)
        return n

    def _poll(self, f: _Followed) -> list[RowChange]:
        assert f.modified is not None
        return list(self.service.poll_changes(
            f.bound.table(f.odata), self.differs[f.bound.name].columns[f.odata], f.modified,
            f.poll, page_size=self.batch))

    def _keep(self, f: _Followed) -> None:
        """Keep the position in the state store (when it moved)."""
        # "started": a position was taken, even "from the first row" (an empty service);
        # the rows seen and the echoes expected in the overlap window go with it, so that a
        # new process does not read them again as changes
        position = {"started": True, "method": f.method, "modified": f.modified,
                    "poll": f.poll.as_doc(), "delta_link": f.delta_link}
        if position != f.kept:
            self.state.put_checkpoint(f.bound.name, PHASE, None, position)
            f.kept = position

    def _from_odata(self, f: _Followed) -> int:
        o = f.odata
        if f.method != "delta":
            # the cursor moves only once what it read is written: a failed step reads again
            saved = copy.deepcopy(f.poll)
            try:
                return self._apply_odata_changes(f, self._poll(f), None)
            except BaseException:
                f.poll = saved
                raise
        assert f.delta_link is not None
        changes, link = self.service.read_delta(
            f.bound.table(o), f.delta_link, page_size=self.batch)
        return self._apply_odata_changes(f, changes, link)

    def _apply_odata_changes(self, f: _Followed, changes: list[RowChange], link: str | None
                             ) -> int:
        o, d = f.odata, f.db
        differ = self.differs[f.bound.name]
        cols = differ.columns[o]
        latest: dict[Row, RowChange] = {}
        for c in changes:  # several changes of one row: its latest state decides
            latest[c.key] = c
        upserts = [c for c in latest.values() if c.op == "upsert" and c.values is not None]
        rows = [tuple(c.values.get(col) for col in cols) for c in upserts
                if c.values is not None]
        deletes = [self._row_of_key(f, o, c.key) for c in latest.values() if c.op == "delete"]
        n = self._write_twins(f, o, rows, master=o)
        if deletes:
            keys = [differ.target_key(o, r) for r in deletes]
            with self.connectors[d].transaction() as tx:
                n += tx.delete(f.bound.table(d), f.bound.key(d), keys)
        if link is not None:
            f.delta_link = link
        self._keep(f)
        return n

    def _from_db(self, f: _Followed) -> int:
        d = f.db
        clog = self._log(f)
        changes = clog.read([f.bound.name], self.batch)
        if not changes:
            return 0
        n = 0
        by_tx: dict[str, list[Change]] = {}
        for c in changes:
            by_tx.setdefault(c.txid, []).append(c)
        differ = self.differs[f.bound.name]
        key_cols = {c: differ.cols[d][c] for c in f.bound.key(d)}
        for group in by_tx.values():
            keys = list(dict.fromkeys(self._db_key(c, key_cols) for c in group))
            present = self.connectors[d].fetch(f.bound.table(d), differ.columns[d],
                                               key=f.bound.key(d), keys=keys)
            found = {tuple(r[i] for i in differ.key_idx[d]) for r in present}
            gone = [self._row_of_key(f, d, k) for k in keys if k not in found]
            n += self._write_twins(f, d, present, master=d, deletes=gone, one_change_set=True)
            self._keep(f)  # the echoes this write expects, before its changes are forgotten
            clog.forget([c.seq for c in group])
        return n

    @staticmethod
    def _db_key(change: Change, key_cols: dict[str, Any]) -> Row:
        """A logged change's key as the database side's connector reads it."""
        decoded = CaptureLog.decode(dict(zip(key_cols, change.key, strict=True)), key_cols)
        assert decoded is not None
        return tuple(decoded.values())

    def reconcile(self, f: _Followed) -> int:
        """Key-only reconciliation (polling): rows the database side has, whose twin the
        service no longer has, and whose database row has no change queued, are deleted on
        the database side. The database's queued changes are written to the service first,
        so a row created there is not taken for one deleted in the service."""
        o, d = f.odata, f.db
        n = self._from_db(f)
        differ = self.differs[f.bound.name]
        okeys = {tuple(r) for b in self.connectors[o].read(
            f.bound.table(o), list(f.bound.key(o)), key=f.bound.key(o), batch_size=self.batch)
            for r in b}
        ocanon = {_canon(k) for k in okeys}
        missing: list[Row] = []
        for b in self.connectors[d].read(f.bound.table(d), list(f.bound.key(d)),
                                         key=f.bound.key(d), batch_size=self.batch):
            for k in b:
                twin = differ.target_key(d, self._row_of_key(f, d, tuple(k)))
                if _canon(twin) not in ocanon:
                    missing.append(tuple(k))
        if not missing:
            return n
        clog = self._log(f)
        key_columns = [differ.cols[d][c] for c in f.bound.key(d)]
        with self.connectors[d].transaction() as sess:  # reads only: commits nothing
            queued = clog.pending(sess, f.bound.name, missing, key_columns)
        by_name = {col.name: col for col in key_columns}
        waiting = {_canon(self._db_key(change, by_name)) for change in queued}
        doomed = [k for k in missing if _canon(k) not in waiting]
        if doomed:
            with self.connectors[d].transaction() as tx:
                n += tx.delete(f.bound.table(d), f.bound.key(d), doomed)
        return n

    # -- writing -------------------------------------------------------------------------------
    def _row_of_key(self, f: _Followed, s: Side, key: Row) -> Row:
        """A row of side ``s`` holding only ``key`` (for the differ's key conversions)."""
        return self.differs[f.bound.name].row_of_key(s, key)

    def _write_twins(self, f: _Followed, s: Side, rows: Sequence[Row], *, master: Side,
                     deletes: Sequence[Row] = (), one_change_set: bool = False,
                     again: bool = True) -> int:
        """Compare ``rows`` of side ``s`` with their twins and write the differences to the
        other side (and delete the twins of ``deletes``).

        A write the service refuses with 412 (the twin changed there since it was read) is
        a conflict, recorded as one: the side the map's policy makes win keeps its change —
        the service's: this one is dropped (the service's change is read in a later step);
        the database's: the twins are read again and written once more (``again``)."""
        t = s.other
        if not rows and not deletes:
            return 0
        b = f.bound
        differ = MapDiffer(b, self.connectors, master=master)
        twins = self.connectors[t].fetch(b.table(t), differ.columns[t], key=b.key(t),
                                         keys=[differ.target_key(s, r) for r in rows]) \
            if rows else []
        by_key = {_canon(differ.target_key(t, r)): r for r in twins}
        entries = []
        for r in rows:
            twin = by_key.get(_canon(differ.target_key(s, r)))
            left, right = (r, twin) if s is Side.LEFT else (twin, r)
            key = tuple(left[i] for i in differ.key_idx[Side.LEFT]) if left is not None \
                else tuple(r[i] for i in differ.key_idx[s])
            entries.append(Entry(key, left, right))
        c = differ.classify(entries) if entries else Classified()
        c.creates[s], c.updates[s] = [], []  # the source side is as it should be
        doomed = [differ.target_key(s, r) for r in deletes]
        if doomed:  # only twins that exist: a row made and deleted between steps has none
            have = {_canon(tuple(r)) for r in self.connectors[t].fetch(
                b.table(t), list(b.key(t)), key=b.key(t), keys=doomed)}
            doomed = [k for k in doomed if _canon(k) in have]
        n = len(c.creates[t]) + len(c.updates[t]) + len(doomed)
        if one_change_set and t is f.odata:
            failed = self._one_change_set(f, differ, c, doomed)
        else:
            failed = self.sync.write_classified(differ, c)
        conflicted = [fl for fl in failed if _conflict(fl)]
        for fail in [*c.failures, *failed]:
            if fail not in conflicted:
                self.state.add_error(b.name, fail.side.value, fail.key, fail.operation,
                                     str(fail.error.message), fail.payload)
        if conflicted:
            n += self._conflicts(f, s, rows, deletes, conflicted, differ, master=master,
                                 again=again)
        return n - len(failed)

    def _conflicts(self, f: _Followed, s: Side, rows: Sequence[Row], deletes: Sequence[Row],
                   conflicted: list[Failure], differ: MapDiffer, *, master: Side,
                   again: bool) -> int:
        b = f.bound
        winner = Side.LEFT if b.spec.conflict is ConflictPolicy.LEFT_WINS else Side.RIGHT
        keys = {_canon(fl.key) for fl in conflicted}
        for fl in conflicted:
            log.info("%s: map %s, key %r: the row changed in the service since it was read "
                     "(412); %s wins", self.connectors[f.odata].name, b.name, fl.key,
                     winner.value)
            self.state.add_conflict(b.name, list(fl.key), b.spec.conflict.value,
                                    winner.value, s.value, dict(fl.payload or {}), None)
        if winner is not s or not again:
            return 0

        def entry_key(r: Row) -> Row:
            twin = differ.target_key(s, r)
            return _canon(r[i] for i in differ.key_idx[s]) if s is Side.LEFT else \
                _canon(twin)

        retry = [r for r in rows if entry_key(r) in keys]
        gone = [r for r in deletes if _canon(differ.target_key(s, r)) in keys]
        return self._write_twins(f, s, retry, master=master, deletes=gone, again=False)

    def _one_change_set(self, f: _Followed, differ: MapDiffer, c: Classified,
                        doomed: list[Row]) -> list[Failure]:
        """The changes of one source transaction as one change set to the service; when it
        is refused, row by row, the refused rows as failures."""
        t, b = f.odata, f.bound
        try:
            with self.connectors[t].transaction() as tx:
                if c.creates[t]:
                    tx.insert(b.table(t), differ.insert_columns[t],
                              [cr.values for cr in c.creates[t]])
                for u in c.updates[t]:
                    tx.update(b.table(t), b.key(t), u.columns or differ.update_columns[t],
                              [(u.target_key, u.values)])
                if doomed:
                    tx.delete(b.table(t), b.key(t), doomed)
            self._note_echoes(f, tx)
            return []
        except ConstraintViolation:
            failed = self.sync.write_classified(differ, c)
            for k in doomed:
                try:
                    with self.connectors[t].transaction() as tx:
                        tx.delete(b.table(t), b.key(t), [k])
                except ConstraintViolation as exc:
                    err = RowError(exc.message, map=b.name, side=t.value, table=b.table(t),
                                   key=k, hint=exc.hint)
                    err.__cause__ = exc
                    failed.append(Failure(t, k, "delete", err))
            return failed

    def _note_echoes(self, f: _Followed, tx: Any) -> None:
        if f.method != "poll" or f.modified is None:
            return
        key = f.bound.key(f.odata)
        for _set, entity in getattr(tx, "written", []):
            if f.modified in entity and all(k in entity for k in key):
                f.poll.expect_echo(tuple(entity[k] for k in key), entity[f.modified])

    def _log(self, f: _Followed) -> ChangeLog:
        return self.connectors[f.db].change_log()


def cannot_follow(table: str, env: str, side: Side, why: str) -> tuple[str, str]:
    """The message and hint of DW136 (a map whose OData side's changes cannot be read), the
    same from ``validate`` and from a follower refusing the map."""
    return (f"changes of {table!r} ({env}) cannot be read: {why}",
            f"name the entity set's modified-timestamp property (CAP's `managed`: modifiedAt) "
            f"for the environment (`{env}: {{url: ..., modified: modifiedAt}}`) or for this "
            f"map (`modified: {{{side.value}: modifiedAt}}`); until then the map can be "
            "planned, synced and verified (`sync --initial`, `verify`), not followed "
            "(`follow`, `run`) nor written live")


def describe_position(position: dict[str, Any]) -> str | None:
    """What ``status`` says of a map the follower follows (its kept position), or None."""
    if not position.get("started"):
        return None
    if position.get("method") == "delta":
        return "followed by `dualwrite follow`: delta links"
    since = (position.get("poll") or {}).get("since")
    return (f"followed by `dualwrite follow`: polling {position.get('modified')}"
            + (f", changes up to {since} read" if since else ""))


def follower_for(link: Link, *, reconcile_every: int = 10) -> ODataFollower:
    """The follower of ``link``'s valid maps, with the environments' ``modified:``."""
    return ODataFollower(
        link.connectors, link.state, link.bound_maps(),
        {s: link.config.modified(link.env_name(s)) for s in Side},
        reconcile_every=reconcile_every, batch=min(link.config.model.sync.batch_size, 1000))


def run_follower(link: Link, stop: threading.Event, *, say: Callable[[str, str], None],
                 interval: float = 1.0, ttl: float = DEFAULT_TTL, command: str = "run") -> None:
    """``dualwrite run`` (or ``serve``: ``command`` names it in what is said) on a link with
    an OData side: follow it (:class:`ODataFollower`)
    under the link's applier lease until ``stop`` is set — one follower per link; another
    process waits as a standby and takes over when the lease is released (at a stop) or
    expires (``ttl`` seconds unheard). The follower takes the service's position as
    ``start()`` does, or goes on from the one kept. ``say(text, event)`` tells the operator.

    No fence as the applier's: a holder stopped (SIGSTOP) past ``ttl`` and woken after
    another took over may still run the step it was in; its writes are decided by comparing
    current rows, so it writes nothing the new holder's step did not (it may write a row
    both read before the other side changed it again, which the next step compares
    anew)."""
    lease = ApplierLease(link.state, link.config.link_name, ttl=ttl)
    follower: ODataFollower | None = None
    standing_by = False
    renewed = 0.0
    try:
        while not stop.is_set():
            if follower is None:
                if not lease.acquire():
                    if not standing_by:
                        say(f"dualwrite {command}: another process follows link "
                            f"{link.config.link_name!r}; standing by", "standby")
                        standing_by = True
                    stop.wait(min(interval, ttl / 3))
                    continue
                standing_by = False
                try:
                    follower = follower_for(link)
                    follower.start()
                except TransientConnectorError as exc:
                    say(f"dualwrite {command}: {exc.message}; retrying", "retry")
                    follower = None
                    lease.release()
                    stop.wait(interval)
                    continue
                say(f"dualwrite {command}: following link {link.config.link_name!r} with an OData "
                    f"side (pid {os.getpid()})", "ready")
                renewed = time.monotonic()
            if time.monotonic() - renewed >= min(1.0, ttl / 3):
                if not lease.renew():
                    say(f"dualwrite {command}: another process took the lease over; standing by",
                        "standby")
                    follower, standing_by = None, True
                    continue
                renewed = time.monotonic()
            try:
                written = follower.step()
            except TransientConnectorError as exc:  # the next step reads it again
                say(f"dualwrite {command}: {exc.message}; retrying", "retry")
                stop.wait(interval)
                continue
            if written == 0:
                stop.wait(interval)
    finally:
        lease.release()


def _canon(key: Iterable[Any]) -> Row:
    return tuple(canonical(v) for v in key)


def _conflict(failure: Failure) -> bool:
    """Whether a write failed because the service's row changed since it was read (412)."""
    cause = failure.error.__cause__
    return isinstance(cause, ConstraintViolation) and cause.kind == "conflict"
