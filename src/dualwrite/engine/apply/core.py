"""The applier's pure core: what is decided about captured changes, with no I/O and no SQL.

Everything here works on plain data (changes as the change log hands them out, rows as
tuples, a map's row builders) and is tested with it (tests/engine/test_apply_core.py); the
driver (:class:`dualwrite.engine.capture.Applier`) reads the logs, locks and fetches rows,
writes, and calls these for every decision:

* **Order** (:func:`in_commit_order`): transactions by their last change, each transaction's
  changes by seq; :func:`runs` cuts them into runs of one map and kind with no key twice,
  each written with one statement, order between runs kept.
* **Parking** (:func:`route`, :func:`hold_back`): a change that failed parks its whole source
  transaction; a change of a key parked earlier waits behind it.
* **Conflicts** (:func:`decide`, :func:`winner`, :func:`force`): superseded, overwritten, or a
  conflict settled by the map's policy.
* **Positions** (:func:`positions`): the applied position of each (map, transaction).
* **Dependencies** (:func:`held_by_dependencies`): maps held while one they depend on does
  not run.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dualwrite.connectors.base import Row
from dualwrite.connectors.changelog import WATERMARK, Change
from dualwrite.errors import DualwriteError, RowError
from dualwrite.model.maps import ConflictPolicy, Side
from dualwrite.model.values import canonical

if TYPE_CHECKING:
    from dualwrite.engine.diff import MapDiffer
    from dualwrite.model.binding import BoundMap

#: map states in which captured changes are applied
APPLYING = ("running", "resuming")

#: a version still to be decoded (see Action)
LAZY: Any = object()
#: action kind by (row in the filter before, row in the filter after)
KINDS: tuple[tuple[str | None, str], tuple[str, str]] = (
    (None, "create"), ("delete", "update"))
_SEQ = operator.attrgetter("seq")


class Action:
    """A captured change, decoded for one map: what the source row was and became.

    ``old``/``new`` are rows of the map's source columns, or None where there is no such
    version (or it lies outside the map's filter). For a map without a filter they are
    decoded only when first asked for: the set-based paths never ask."""

    __slots__ = ("_decode", "_new", "_old", "change", "ctx", "kind", "lkey", "skey",
                 "source", "tkey")

    def __init__(self, change: Change, source: Side, kind: str, old: Row | None,
                 new: Row | None, skey: Row, tkey: Row, lkey: Row,
                 decode: Callable[[dict[str, Any]], Row] | None = None,
                 ctx: Any = None) -> None:
        self.ctx = ctx  # the map, as the version the change was captured under says
        self.change = change
        self.source = source
        self.kind = kind  # "create", "update" or "delete"
        self._old, self._new = old, new  # a row, None, or LAZY (decode on first use)
        self.skey = skey
        self.tkey = tkey
        self.lkey = lkey  # the key on the left side: how a row is parked, whichever side
        self._decode = decode

    @property
    def old(self) -> Row | None:
        if self._old is LAZY:
            assert self._decode is not None and self.change.old is not None
            self._old = self._decode(self.change.old)
        return self._old

    @property
    def new(self) -> Row | None:
        if self._new is LAZY:
            assert self._decode is not None and self.change.new is not None
            self._new = self._decode(self.change.new)
        return self._new


#: a parked action: (action, "error" or "waiting", the error's kind, what the entry holds)
Parked = tuple[Action, str, str, "dict[str, Any] | None"]


@dataclass
class Outcome:
    """What one attempt at an apply transaction decided."""

    #: conflicts settled in this transaction, one per (map, key) however many of its changes
    #: met the target's own
    conflicts: dict[tuple[str, tuple[Any, ...]], dict[str, Any]] = field(default_factory=dict)
    parked: list[Parked] = field(default_factory=list)
    applied: int = 0
    skipped: int = 0
    #: (map, canonical left key) parked in this transaction: later changes to it wait
    held: set[tuple[str, tuple[Any, ...]]] = field(default_factory=set)
    #: per map, target keys written without first locking the row and looking at the
    #: target's queue (the optimistic fast paths): looked at before commit
    unchecked: dict[str, list[Row]] = field(default_factory=dict)
    #: maps whose capture could not record a change (a marker in the log), with the reason
    broken: dict[str, str] = field(default_factory=dict)


@dataclass
class Mode:
    """How one attempt at an apply transaction writes: run length, whether every row is
    compared first, the changes that failed before (by seq) and the keys held back."""

    limit: int
    careful: bool
    excluded: dict[int, DualwriteError]
    blocked: set[tuple[str, tuple[Any, ...]]]
    #: source transaction id -> seq of its change that failed: the rest of it waits
    failed_tx: dict[str, int] = field(default_factory=dict)


# -- order -------------------------------------------------------------------------------------
def in_commit_order(changes: list[Change], has_txid: bool) -> list[Change]:
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


def runs(actions: list[Action], limit: int) -> Iterator[list[Action]]:
    """Consecutive actions of one map and kind, with no key twice: each run is written with
    one statement per kind, and order between runs is kept."""
    run: list[Action] = []
    keys: set[tuple[Any, ...]] = set()
    ctx: Any = None
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


def positions(changes: list[Change]) -> list[tuple[str, str, int]]:
    """The applied position of each (map, source transaction): its highest seq."""
    top: dict[tuple[str, str], int] = {}
    for c in changes:
        k = (c.map, c.txid)
        if top.get(k, -1) < c.seq:
            top[k] = c.seq
    return [(m, t, q) for (m, t), q in top.items()]


def not_applied(part: list[Change], done: set[tuple[str, str]], marks: dict[str, int]
                ) -> list[Change]:
    """The changes of ``part`` not applied before: their (map, txid) is not in ``done``, and
    (a source without transaction ids) their seq is above the map's high-water mark."""
    if not done and not marks:
        return part
    return [c for c in part if (c.map, c.txid) not in done
            and not (c.txid == WATERMARK and c.seq <= marks.get(c.map, -1))]


# -- parking -----------------------------------------------------------------------------------
def route(actions: list[Action], mode: Mode, outcome: Outcome) -> list[Action]:
    """The parking rules of one apply attempt: returns the actions to apply now; the others
    go to ``outcome.parked``. A change that failed before (``mode.excluded``) is parked with
    its error and holds its key; the rest of its source transaction waits behind it
    (``mode.failed_tx``: never applied in part), whichever map and key; a change of a key
    held back (``mode.blocked``) waits behind it."""
    live = []
    blocked, excluded, failed_tx = mode.blocked, mode.excluded, mode.failed_tx
    for a in actions:
        err = excluded.get(a.change.seq)
        if err is None and not blocked and not failed_tx:  # the common case
            live.append(a)
            continue
        held = (a.change.map, canonical_key(a.lkey))
        if err is not None:
            outcome.parked.append((a, "error", kind_of(err), {"reason": str(err)}))
            blocked.add(held)  # what follows on this key waits behind it
        elif a.change.txid in failed_tx:
            outcome.parked.append((a, "waiting", "", {"behind": failed_tx[a.change.txid]}))
            blocked.add(held)
        elif held in blocked:
            outcome.parked.append((a, "waiting", "", None))
        else:
            live.append(a)
    return live


def hold_back(run: list[Action], blocked: set[tuple[str, tuple[Any, ...]]],
              outcome: Outcome) -> list[Action]:
    """A run without the actions of keys parked by an earlier run of this transaction (a
    manual conflict): they wait behind it (parked), they are not conflicts of their own."""
    if not outcome.held:
        return run
    blocked |= outcome.held
    waiting = [a for a in run if (a.change.map, canonical_key(a.lkey)) in blocked]
    if not waiting:
        return run
    outcome.parked += [(a, "waiting", "", None) for a in waiting]
    return [a for a in run if (a.change.map, canonical_key(a.lkey)) not in blocked]


def kind_of(err: DualwriteError) -> str:
    """The event a parked change's error records: "lookup" for a lookup or value map without
    an answer (the error says so by its kind, not its words), else "rejected"."""
    return "lookup" if isinstance(err, RowError) and err.kind == "lookup" else "rejected"


# -- conflicts ---------------------------------------------------------------------------------
def winner(policy: ConflictPolicy, a: Action, theirs: list[Change]) -> Side | None:
    """The side whose version a conflict keeps, by the map's policy (None: manual). Newest
    wins by capture time; a tie goes to the left side."""
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


#: what a run decides to write: (action, the row built for the target)
Writes = list[tuple[Action, Row]]


def force(a: Action, cur: tuple[Any, ...] | None, d: MapDiffer, t: Side,
          resolved: dict[tuple[Side, int], dict[Any, Any]], inserts: Writes, updates: Writes,
          deletes: list[Action]) -> None:
    """Make the target hold the change's new version, whatever it holds now (``cur``)."""
    if a.kind == "delete":
        if cur is not None:
            deletes.append(a)
        return
    assert a.new is not None
    if cur is None:
        inserts.append((a, d.create_values(t, a.new, resolved, a.skey)))
    else:
        updates.append((a, d.live_values(t, a.new, resolved, a.skey)))


def decide(s: Side, b: BoundMap, d: MapDiffer,
           undecided: list[tuple[Action, tuple[Any, ...] | None]],
           conflicts: list[tuple[Action, tuple[Any, ...] | None, list[Change]]],
           src_now: dict[tuple[Any, ...], Row], resolved: dict[tuple[Side, int], dict[Any, Any]],
           env: dict[Side, str], clock: Callable[[], str], inserts: Writes, updates: Writes,
           deletes: list[Action], outcome: Outcome) -> list[Change]:
    """Changes from side ``s`` whose target row (``cur``) is neither the version they started
    from nor the one they end with (``undecided``), or that the target changed too
    (``conflicts``, with the target's own queued changes): superseded (both sides agree now:
    ``src_now`` holds the source rows as they are, by canonical key), overwritten (the
    target's version is news to nobody), or a conflict settled by the map's policy (recorded
    in ``outcome``; a manual one parked, found at ``clock()``). Returns the target's own
    changes that lost (to be forgotten: they must not flow back)."""
    t = s.other

    def agree(a: Action, cur: tuple[Any, ...] | None) -> bool:
        """Both sides hold the same version now (a later change, or a synchronous write,
        got there): nothing to apply."""
        now_row = src_now.get(canonical_key(a.skey))
        if now_row is None or cur is None:
            return now_row is None and cur is None
        try:
            return canonical_key(d.live_values(t, now_row, resolved, a.skey)) == cur
        except RowError:
            return False

    for a, cur in undecided:
        if agree(a, cur):
            outcome.skipped += 1
        else:
            force(a, cur, d, t, resolved, inserts, updates, deletes)
    to_forget: list[Change] = []
    for a, cur, theirs in conflicts:
        if agree(a, cur):
            outcome.skipped += 1
            continue
        policy = b.spec.conflict
        won = winner(policy, a, theirs)
        held = (b.name, canonical_key(a.lkey))
        if held not in outcome.conflicts:  # one conflict, however many changes met it
            outcome.conflicts[held] = {
                "map_name": b.name, "key": list(a.lkey), "policy": policy.value,
                "winner": won.value if won else "manual", "source": s.value,
                "incoming": a.change.as_dict(), "target": plain(cur, d.live_columns[t]),
                "theirs": [x.as_dict() for x in theirs]}
        if won is None:
            outcome.held.add(held)
            outcome.parked.append((a, "error", "conflict", {
                "reason": f"conflict: both sides changed this row since it was last "
                f"synced (map policy: manual); {env[s]} changed it at "
                f"{a.change.at.isoformat()}, {env[t]} at "
                f"{max(x.at for x in theirs).isoformat()}",
                "target": plain(cur, d.live_columns[t]),
                "theirs": [x.as_dict() for x in theirs],
                # what either side changes after this is applied on top of the version
                # the conflict is resolved for (see dualwrite.engine.settle)
                "detected_at": clock()}))
        elif won is t:
            outcome.skipped += 1
        else:
            # the target's own changes to this row lost: they must not flow back
            to_forget += theirs
            force(a, cur, d, t, resolved, inserts, updates, deletes)
    return to_forget


# -- dependencies ------------------------------------------------------------------------------
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


# -- values ------------------------------------------------------------------------------------
def canonical_key(values: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(canonical(v) for v in values)


def same_value(a: Any, b: Any) -> bool:
    """Whether two values of one column are the same value: Python equality (5 and
    Decimal('5.00'), a datetime with a zone and one without by the instant through the
    canonical form), except that a float zero keeps its sign (0.0 and -0.0 are two values a
    column may hold) and NaN is itself."""
    if type(a) is float and type(b) is float:
        if a != a or b != b:  # NaN
            return a != a and b != b
        return a == b and (a != 0.0 or math.copysign(1.0, a) == math.copysign(1.0, b))
    return bool(a == b or canonical(a) == canonical(b))


def same(cur: tuple[Any, ...] | None, values: tuple[Any, ...] | None) -> bool:
    """Whether a target row's values equal values built for it: Python equality first (it
    already equates 5 and Decimal('5.00')), then the canonical form (datetimes, booleans)."""
    if cur is None or values is None:
        return cur is values
    if cur == values and not any(type(v) is float for v in cur):
        return True  # the common case, at once
    return len(cur) == len(values) and all(same_value(a, b) for a, b in
                                           zip(cur, values, strict=True))


def plain(values: tuple[Any, ...] | None, cols: list[str]) -> dict[str, Any] | None:
    """A row as a JSON-friendly dict (for the state store's conflict records)."""
    if values is None:
        return None
    return {c: (str(v) if v is not None and not isinstance(v, int | str) else v)
            for c, v in zip(cols, values, strict=True)}


__all__ = [
    "APPLYING",
    "KINDS",
    "LAZY",
    "Action",
    "Mode",
    "Outcome",
    "canonical_key",
    "decide",
    "force",
    "held_by_dependencies",
    "hold_back",
    "in_commit_order",
    "kind_of",
    "not_applied",
    "plain",
    "positions",
    "route",
    "runs",
    "same",
    "same_value",
    "winner",
]
