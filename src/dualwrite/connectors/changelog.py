"""The change-log seam: what the engine needs of an environment's change log, for any backend.

A change log is the queue of one environment's captured row changes (see
:mod:`dualwrite.connectors.capture` for the SQL databases' triggers, and
:mod:`dualwrite.connectors.memory` for the memory fake). The applier reads it in commit order,
applies each change to the other side, records the change's *applied position* inside that
write's own transaction (so a change delivered twice takes effect once), and then forgets it.
:class:`ChangeLog` is that contract; every method that runs inside a target write takes the
:class:`~dualwrite.connectors.base.WriteSession` of that write, so a backend without SQL can
implement it. The compliance suite (:mod:`dualwrite.testing.connector_suite`) checks it.

This module holds no SQL and does no I/O: the types a change log hands out (:class:`Change`,
:class:`CaptureSpec`) and the protocols. A backend's log translates its own errors into the one
error tree at its connector's single choke point (``Connector.translating``), kept on purpose
as the only place driver errors are classified. (An OData service has no change log of its
own: its changes are read by the sans-I/O decisions of :mod:`dualwrite.connectors.odata.changes`
behind ``Connector.change_method``, a seam kept as it is.)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from dualwrite.model.codec import decode_json as decode_json
from dualwrite.model.codec import parse_instant

if TYPE_CHECKING:
    from dualwrite.connectors.base import WriteSession
    from dualwrite.model.schema import Column

#: the applied-position row of a source without transaction ids (SQLite): a high-water mark
WATERMARK = ""
#: the op of a marker: capture could not record a change of the map (see
#: :mod:`dualwrite.connectors.capture`)
MARKER = "X"
#: the ``source`` of the applied-positions row that fences out appliers of an older lease
FENCE_SOURCE = "#fence"


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture for one map on one side: the table, its key, and every column the
    map reads (key, mapped fields, filter columns)."""

    map: str
    table: str
    key: tuple[str, ...]
    columns: tuple[str, ...]
    #: the map version the triggers capture for: each change in the log carries it, so that
    #: it is applied as that version says (a reload changes the columns captured)
    version: str = ""

    @property
    def tag(self) -> str:
        """A short, stable, identifier-safe name for this map's triggers on this table. Both
        are in it: a map's two tables may be in one database (one schema), where MariaDB's
        trigger names and PostgreSQL's function names must differ."""
        return "dw_" + hashlib.sha1(f"{self.map}\0{self.table}".encode()).hexdigest()[:10]

    @property
    def legacy_tag(self) -> str:
        """The name earlier versions gave (the map's alone), to remove what they installed."""
        return "dw_" + hashlib.sha1(self.map.encode()).hexdigest()[:10]

    @property
    def needed(self) -> tuple[str, ...]:
        """Every column the triggers read: the key, then the captured columns."""
        return tuple(dict.fromkeys(self.key + self.columns))



_UNDECODED: Any = object()


class Change:
    """One captured row change. ``old``/``new`` hold the map's columns (None for the side
    of an insert or delete that has no row); values are as JSON gave them (see
    :func:`decode_json`), to be turned into the columns' values by ``conversion.from_log``.

    A change read from a log keeps ``old_json``/``new_json``, the JSON text the trigger
    wrote, and decodes it only when ``old``/``new`` is asked for: the applier's set-based
    paths hand the text to the target database and never decode it in Python.

    A marker (op ``X``) says that capture could not record a change of its map; ``reason``
    says why, its key is the row's where the trigger could still read it (else empty), and it
    has no versions."""

    __slots__ = ("_key", "_new", "_old", "at", "key_text", "map", "new_json", "old_json", "op",
                 "seq", "txid", "version")

    def __init__(self, seq: int, map: str, txid: str, op: str, key_text: str,
                 old: dict[str, Any] | None = None, new: dict[str, Any] | None = None,
                 at: dt.datetime | None = None, *, old_json: str | None = None,
                 new_json: str | None = None, key: tuple[Any, ...] | None = None) -> None:
        self.seq = seq
        self.map = map
        self.txid = txid
        self.op = op  # "I", "U", "D", or "X" (a marker)
        self.key_text = key_text  # the key as the log stores it (a JSON array); see ``key``
        self._key = key  # decoded, when the reader decoded it already
        self.at = at if at is not None else dt.datetime.now(dt.UTC)
        self.old_json, self.new_json = old_json, new_json
        self._old = old if old is not None or old_json is None else _UNDECODED
        self._new = new if new is not None or new_json is None else _UNDECODED
        self.version = ""  # the map version it was captured under ("": before versions)

    @property
    def old(self) -> dict[str, Any] | None:
        if self._old is _UNDECODED:
            self._old = decode_json(self.old_json)
        return self._old

    @property
    def new(self) -> dict[str, Any] | None:
        if self.op == MARKER:
            return None  # a marker's "new" carries its reason, not a version
        if self._new is _UNDECODED:
            self._new = decode_json(self.new_json)
        return self._new

    @property
    def reason(self) -> str | None:
        """Why capture could not record this change (markers only; None otherwise)."""
        if self.op != MARKER:
            return None
        doc = self._new if self._new is not _UNDECODED else decode_json(self.new_json)
        return str((doc or {}).get("reason") or "capture could not record this change")

    @property
    def has_old(self) -> bool:
        """Whether there is an old version (an update or a delete), without decoding it."""
        return self.old_json is not None if self._old is _UNDECODED else self._old is not None

    @property
    def has_new(self) -> bool:
        if self.op == MARKER:
            return False
        return self.new_json is not None if self._new is _UNDECODED else self._new is not None

    @property
    def key(self) -> tuple[Any, ...]:
        """The key, decoded when first asked (a log reader decodes all of a read's keys
        at once: one call of the JSON decoder instead of one per change)."""
        if self._key is None:
            self._key = tuple(decode_json(self.key_text))
        return self._key

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Change:
        new = {"reason": d.get("reason")} if d["op"] == MARKER else d.get("new")
        c = cls(seq=int(d["seq"]), map=str(d["map"]), txid=str(d["txid"]), op=str(d["op"]),
                key_text=json.dumps(list(d["key"]), default=str), old=d.get("old"),
                new=new, at=parse_time(d["at"]))
        c.version = str(d.get("v") or "")
        return c

    def as_dict(self) -> dict[str, Any]:
        out = {"seq": self.seq, "map": self.map, "txid": self.txid, "op": self.op,
               "key": list(self.key), "old": self.old, "new": self.new,
               "at": self.at.isoformat(), "v": self.version}
        if self.op == MARKER:
            out["reason"] = self.reason
        return out

    def __repr__(self) -> str:
        return (f"Change(seq={self.seq}, map={self.map!r}, txid={self.txid!r}, op={self.op!r}, "
                f"key={self.key_text})")



#: a log's timestamp as an aware datetime, under the name the applier imports it by
#: (:func:`dualwrite.model.codec.parse_instant`)
parse_time = parse_instant


def columns_of_filter(expr: Any) -> set[str]:
    """Every column a parsed filter reads (its Property nodes)."""
    from dataclasses import fields, is_dataclass

    from dualwrite.model.filters import Property

    out: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Property):
            out.add(node.name)
        elif isinstance(node, tuple | list):
            for n in node:
                walk(n)
        elif is_dataclass(node):
            for f in fields(node):
                walk(getattr(node, f.name))

    walk(expr)
    return out


# -- the protocols -----------------------------------------------------------------------------
class ChangeSignal(Protocol):
    """A wake-up a change log hands out (:meth:`ChangeLog.listen`): its file descriptor turns
    readable when changes may have committed, so that a driver waits on several logs at once
    (``selectors``)."""

    def fileno(self) -> int: ...

    def drain(self) -> None:
        """Consume what made the descriptor readable (raises when the signal is lost: the
        caller polls and asks for a new one later)."""

    def close(self) -> None: ...


@runtime_checkable
class ChangeLog(Protocol):
    """One environment's change log, as the engine uses it.

    *Positions* are (map, source transaction id, highest seq) triples; a source without
    transaction ids (:attr:`has_txid` False) records a per-map high-water mark instead (txid
    :data:`WATERMARK`). A *fence* is ``(link, epoch)``: a write that carries one fails with
    :class:`~dualwrite.errors.LeaseLost` once a later epoch has been raised in this database.
    """

    @property
    def has_txid(self) -> bool:
        """Whether changes carry their source transaction's id (False: seq order is commit
        order, and a read is one snapshot ending at a commit)."""

    @property
    def needs_purge(self) -> bool:
        """Whether forgetting changes leaves something :meth:`purge` must drop."""

    # -- capture ----------------------------------------------------------------------------
    def ensure(self) -> None:
        """Make the log's own storage if it is missing (idempotent)."""

    def install(self, spec: CaptureSpec) -> None:
        """Capture the changes of one map version on one table from now on (idempotent)."""

    def remove(self, spec: CaptureSpec) -> None:
        """Stop capturing for one map and forget its queued changes."""

    def check(self, spec: CaptureSpec) -> list[str]:
        """What is wrong with the installed capture of one map (empty: nothing)."""

    def capture_requirements(self) -> list[str]:
        """What this log needs of its server and the server lacks, each said with what to
        do (empty: nothing; a log that needs nothing beyond its own tables, as the triggers'
        does). Validation makes each an error. Raises ConnectorError when the server cannot
        be reached."""

    def capture_warnings(self, *, before_install: bool = False) -> list[str]:
        """What an operator of this log should look at, besides the queue (logical
        decoding: its replication slot missing or far behind). ``before_install``: what
        the first ``maps start`` makes is not missing yet."""

    def uninstall(self, *, dry_run: bool = False) -> list[str]:
        """Remove everything of dualwrite's capture; returns what was (would be) removed."""

    # -- reading ----------------------------------------------------------------------------
    def read(self, maps: Sequence[str], limit: int) -> list[Change]:
        """Up to about ``limit`` committed changes of ``maps``, oldest first, always whole
        source transactions."""

    def read_start(self, maps: Sequence[str], limit: int
                   ) -> tuple[list[Change], Future[list[Change]] | None]:
        """:meth:`read`, the rest of one large transaction possibly delivered later."""

    def transactions(self, maps: Sequence[str], after: int, limit: int
                     ) -> list[tuple[int, str]]:
        """(seq, txid) of up to ``limit`` committed changes of ``maps`` past seq ``after``."""

    def read_transactions(self, maps: Sequence[str], txids: Sequence[str]) -> list[Change]:
        """Every change of ``maps`` of the given transactions, in seq order."""

    def peek(self, map_name: str, *, key_contains: str | None = None, limit: int = 50,
             offset: int = 0) -> tuple[list[Change], int]:
        """One page of the queued changes of ``map_name`` and how many there are."""

    def stats(self) -> dict[str, tuple[int, int, dt.datetime | None]]:
        """Per map: queued changes, their size in bytes, the time of the oldest."""

    def txids_present(self, txids: Sequence[str]) -> set[str]:
        """Which of ``txids`` still have changes in this log."""

    # -- inside a write session of this environment ----------------------------------------
    def pending(self, sess: WriteSession, map_name: str, keys: Sequence[tuple[Any, ...]],
                columns: Sequence[Column]) -> list[Change]:
        """Queued changes of ``map_name`` for ``keys`` (values of the key ``columns``),
        oldest first, as ``sess``'s transaction sees them."""

    def queues(self, sess: WriteSession, map_name: str) -> bool:
        """Whether any change of ``map_name`` is queued, as ``sess`` sees it."""

    def queued(self, sess: WriteSession, maps: Sequence[str]) -> set[str]:
        """Which of ``maps`` have changes queued, as ``sess`` sees it."""

    def applied(self, sess: WriteSession, source: str, pairs: Sequence[tuple[str, str]]
                ) -> tuple[set[tuple[str, str]], dict[str, int]]:
        """Which (map, txid) of ``source`` were applied here, and per map the high-water
        mark of sources without transaction ids."""

    def mark_applied(self, sess: WriteSession, source: str,
                     positions: Sequence[tuple[str, str, int]]) -> None:
        """Record applied positions of ``source`` inside ``sess``: committed with it, or
        rolled back with it."""

    def unmark(self, sess: WriteSession, source: str, pairs: Sequence[tuple[str, str]]
               ) -> None:
        """Drop applied positions whose changes can never be delivered again."""

    def finish_apply(self, sess: WriteSession, source: str,
                     positions: Sequence[tuple[str, str, int]],
                     prune: Sequence[tuple[str, str]], fence: tuple[str, int] | None,
                     probe: Sequence[str] = ()) -> set[str]:
        """Raise ``fence``, :meth:`mark_applied` ``positions`` and :meth:`unmark` ``prune``,
        last before ``sess`` commits (or rolls back); and return which of the maps ``probe``
        names this log holds changes of (:meth:`queued`), asked in the same round trip where
        the backend can."""

    def fence(self, sess: WriteSession, link: str, epoch: int) -> None:
        """Raise the link's fence to ``epoch`` inside ``sess`` (LeaseLost if later)."""

    def fence_epoch(self, sess: WriteSession, link: str) -> int:
        """The epoch the link's fence holds here (0: none yet)."""

    # -- forgetting -------------------------------------------------------------------------
    def forget(self, seqs: Sequence[int], sess: WriteSession | None = None, *,
               fence: tuple[str, int] | None = None) -> None:
        """Delete changes from the log (inside ``sess`` if given, else in a transaction of
        its own behind ``fence``)."""

    def forget_transactions(self, pairs: Sequence[tuple[str, str]], *,
                            fence: tuple[str, int] | None = None) -> None:
        """Delete the changes of the given (map, txid)."""

    def all_marks(self) -> list[tuple[str, str, str]]:
        """Every (source, map, txid) applied position held here."""

    def purge(self) -> None:
        """Drop what forgetting left behind (see :attr:`needs_purge`)."""

    def catch_up(self, sess: WriteSession | None = None) -> bool:
        """Make every change committed before now (before ``sess``'s last statement, if
        given) readable in the log, waiting for it where the log is filled after the writer
        commits (logical decoding); returns whether the log may have grown meanwhile. A log
        the writer's own transaction fills (triggers) has nothing to wait for: False."""

    # -- waiting ----------------------------------------------------------------------------
    def listen(self) -> ChangeSignal | None:
        """A signal that wakes a waiter when changes commit, or None where the log is polled
        (raises when it cannot be set up now: poll, ask again later)."""

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a change committed since the previous call
        returned (the first call starts watching); True when one was seen, False on the
        timeout. Notifying logs block on their signal, others poll."""
