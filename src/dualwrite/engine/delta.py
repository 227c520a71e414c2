"""Change tracking for OData delta links, over each environment's delta journal
(:mod:`dualwrite.connectors.delta`).

A table is tracked while it is the table of a started map (capture installed: running,
paused, resuming, ...) on that side: its journal triggers are installed the first time a
client asks to track it, and removed by :meth:`ChangeFeed.housekeep` once no started map uses
it. A delta position is handed out as text, ``<epoch>.<batch>.<id>``; the OData layer wraps it
in its token.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dualwrite.connectors.delta import DeltaJournal, Position
from dualwrite.errors import DeltaTokenGone, TerminalConnectorError
from dualwrite.model.maps import Side
from dualwrite.model.values import canonical

if TYPE_CHECKING:
    from dualwrite.engine.link import Link

log = logging.getLogger("dualwrite.delta")

#: map states in which a map's tables are tracked (capture is installed)
TRACKING = ("initializing", "running", "paused", "resuming", "failed")
#: journal rows read per delta page, per entity asked for (a key changed several times
#: takes several rows)
ROWS_PER_ENTITY = 4


@dataclass
class DeltaPage:
    """What changed after a position: per key, in the order of its last change, the row as
    it is now (None: deleted); the position to resume from; whether more is waiting."""

    entries: list[tuple[dict[str, Any], dict[str, Any] | None]]
    position: str
    more: bool


def _parse(position: str) -> tuple[str, Position]:
    parts = position.split(".")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit() or \
            len(parts[1]) > 19 or len(parts[2]) > 19:
        raise DeltaTokenGone("the delta token is malformed (not one this service gave)")
    return parts[0], Position(int(parts[1]), int(parts[2]))


class ChangeFeed:
    """Delta positions and the changes after them, for the tables of a link's started maps.
    Thread-safe: the OData service calls it from its worker threads."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._journals: dict[Side, DeltaJournal] = {}
        self._lock = threading.Lock()
        self._install_lock = threading.Lock()

    def _journal(self, side: Side) -> DeltaJournal | None:
        with self._lock:
            if side not in self._journals:
                journal = self.link.connectors[side].delta_journal()
                if journal is None:
                    return None
                self._journals[side] = journal
            return self._journals[side]

    def eligible(self, side: Side, *, max_age: float | None = None) -> set[str]:
        """The tables of ``side`` that may be tracked now: those of started maps."""
        states = self.link.state.recent_map_states() if max_age is None else \
            self.link.state.recent_map_states(max_age)
        started = {n for n, st in states.items() if st.get("state") in TRACKING}
        # maps that bind: one map gone wrong does not stop the tracking of the others
        return {b.table(side) for b in self.link.valid_maps()[0] if b.name in started}

    def start(self, side: Side, table: str, key: Sequence[str]) -> str | None:
        """The position of "now" for ``table`` (every change after it will be told), tracking
        it first if it is not yet; None when ``table`` is not tracked (no started map uses
        it, or its database has no journal)."""
        journal = self._journal(side)
        if journal is None or table not in self.eligible(side):
            return None
        key = tuple(key)
        # asked of the database every time (an initial read is rare): another serve may
        # have stopped tracking the table, or the table was dropped and made anew (its
        # triggers gone); tracking then begins again
        with self._install_lock:  # two requests must not install the same triggers at once
            journal.present()  # (made anew below if `maps stop --purge` removed it)
            if journal.tracked().get(table, ((), 0))[0] != key or \
                    not journal.installed(table):
                try:
                    journal.track(table, key)
                except TerminalConnectorError as exc:
                    # e.g. no privilege to create triggers: the read is answered without
                    # tracking, as OData allows, and the reason is in the log
                    log.warning("cannot track changes of %s: %s", table, exc,
                                extra={"event": "delta_untrackable", "table": table})
                    return None
                log.info("tracking changes of %s for OData delta links", table,
                         extra={"event": "delta_tracked", "table": table})
        batch = journal.sequence()
        return f"{journal.epoch()}.{batch}.{Position(batch).id}"

    def read(self, side: Side, table: str, key: Sequence[str], position: str,
             limit: int) -> DeltaPage:
        """The changes of ``table`` after ``position``: at most ``limit`` keys, each with its
        current row. Raises :class:`DeltaTokenGone` for a position that cannot be resumed
        from (malformed, expired, from another journal, or the table is not tracked)."""
        epoch, after = _parse(position)
        journal = self._journal(side)
        if journal is None:
            raise DeltaTokenGone(f"changes of {table!r} are not tracked")
        if table not in self.eligible(side):
            raise DeltaTokenGone(f"changes of {table!r} are not tracked any more (no "
                                 "started map uses it)")
        conn = self.link.connectors[side]
        schema = conn.describe(table)
        key_columns = [schema.columns[c] for c in key]
        rows_wanted = limit * ROWS_PER_ENTITY
        touched, horizon = journal.read(table, key_columns, after, epoch, rows_wanted)
        last: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # canonical key -> key, in order
        end, more = after, False
        for t in touched:
            slot = tuple(canonical(v) for v in t.key)
            if slot not in last and len(last) == limit:
                more = True
                break
            last.pop(slot, None)  # moves the key to the place of its latest change
            last[slot] = t.key
            end = t.position
        else:
            if len(touched) == rows_wanted:
                more = True
            else:
                end = max(end, horizon)
        columns = list(schema.columns)
        current: dict[tuple[Any, ...], dict[str, Any]] = {}
        keys = list(last.values())
        for start in range(0, len(keys), 500):
            for r in conn.fetch(table, columns, key=list(key), keys=keys[start:start + 500]):
                row = dict(zip(columns, r, strict=True))
                current[tuple(canonical(row[c]) for c in key)] = row
        entries = [(dict(zip(key, k, strict=True)), current.get(slot))
                   for slot, k in last.items()]
        return DeltaPage(entries, f"{epoch}.{end.batch}.{end.id}", more)

    def housekeep(self, retention: float) -> None:
        """Sequence each journal, delete batches older than ``retention`` seconds, and stop
        tracking tables no started map uses any more."""
        cut = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=retention)
        for side in Side:
            journal = self._journal(side)
            if journal is None or not journal.present():
                continue  # made when a client first asks to track a set, not before
            wanted = self.eligible(side, max_age=0)
            for table in journal.tracked():
                if table not in wanted or not journal.installed(table):
                    with self._install_lock:
                        journal.untrack(table)
                    log.info("stopped tracking changes of %s (no started map uses it, or its "
                             "triggers are gone)", table,
                             extra={"event": "delta_untracked", "table": table})
            journal.sequence()
            journal.prune(cut)
