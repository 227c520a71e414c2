"""The links and maps a state store knows: link records, each map's state and installed
version, its applied activity."""

from __future__ import annotations

import threading
import time
from typing import Any

import sqlalchemy as sa

from dualwrite.engine.state.base import StoreBase
from dualwrite.engine.state.codec import now_iso
from dualwrite.engine.state.records import MapState
from dualwrite.engine.state.schema import (
    CACHE_SECONDS,
    links,
    map_activity,
    map_status,
    map_versions,
)
from dualwrite.errors import LinkError

#: per state store (its URL), bumped by every map state this process sets, once committed
_VERSIONS: dict[str, int] = {}
_VERSIONS_LOCK = threading.Lock()


class MapsState(StoreBase):
    """The links and maps a state store knows (a part of :class:`StateStore`)."""

    @property
    def map_states_version(self) -> int:
        """Bumped by every map state set in this process through any store of the same
        database (``serve``'s console and its applier each open one), after it commits: an
        applier sees a pause or stop made in its own process before its next step (another
        process's within 0.2 s, when it next reads the states)."""
        return _VERSIONS.get(self.url, 0)

    # -- links -----------------------------------------------------------------------
    def get_link(self, name: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(links).where(links.c.name == name)).first()
        return dict(row._mapping) if row else None

    def claim_link(self, name: str, link_id: str, left: str, right: str) -> str:
        """Record link ``name`` with ``link_id`` unless it is recorded already; return the
        id recorded, this one or the one another process recorded first (processes of one
        link starting at once on a new state store must all take the same id)."""
        with self.engine.begin() as conn:
            try:
                with conn.begin_nested():  # a savepoint: the failed INSERT alone undone
                    conn.execute(sa.insert(links).values(
                        name=name, link_id=link_id, left_env=left, right_env=right,
                        created_at=now_iso()))
                return link_id
            except sa.exc.IntegrityError:  # recorded by another process meanwhile
                pass
            stored = conn.execute(sa.select(links.c.link_id).where(links.c.name == name)
                                  ).scalar()
        if stored is None:  # deleted again in between: `unlink` ran; let the caller retry
            raise LinkError(f"link {name!r} was unlinked while it was being linked",
                            hint="start the process again")
        return str(stored)

    def delete_link(self, name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(links).where(links.c.name == name))

    # -- map status ------------------------------------------------------------------
    def set_map_state(self, map_name: str, state: MapState, *, initial_synced: bool = False,
                      forget_synced: bool = False) -> None:
        """Set a map's state; ``initial_synced`` records that its initial sync just ended,
        ``forget_synced`` that it must run again (capture was removed)."""
        self._cache.pop("map_states", None)
        now = now_iso()
        with self.engine.begin() as conn:
            # the row held from the read on (where the database locks rows): two processes
            # setting one map's state at once (JetStream workers failing it) take turns; a
            # delete and insert of the row met the other's insert on its key
            row = conn.execute(sa.select(map_status).where(map_status.c.map == map_name)
                               .with_for_update()).first()
            synced = now if initial_synced else (row.initial_synced_at if row else None)
            version = row.version if row is not None else None
            if forget_synced:
                synced = version = None  # capture removed: no version is installed
            values = {"state": MapState(state).value, "initial_synced_at": synced,
                      "updated_at": now, "version": version}
            update = sa.update(map_status).where(map_status.c.map == map_name).values(values)
            if row is not None:
                conn.execute(update)
            else:
                try:
                    with conn.begin_nested():  # a savepoint: the failed INSERT alone undone
                        conn.execute(sa.insert(map_status).values(map=map_name, **values))
                except sa.exc.IntegrityError:  # made by another process meanwhile
                    conn.execute(update)
        # once committed: an applier that looked at the bump before would read the old state
        # and take it for the new one
        self._cache.pop("map_states", None)
        with _VERSIONS_LOCK:
            _VERSIONS[self.url] = _VERSIONS.get(self.url, 0) + 1

    def record_map_version(self, map_name: str, version: str, definition: str,
                           file: str | None) -> None:
        """Keep the text of a map version (before capture is installed for it: a change
        captured under it must find it). Processes recording one version at once (`run`
        and `serve` starting together, JetStream workers) all succeed: one row."""
        with self.engine.begin() as conn:
            if conn.execute(sa.select(map_versions.c.version).where(
                    map_versions.c.map == map_name, map_versions.c.version == version)
                    ).first() is None:
                try:
                    with conn.begin_nested():  # a savepoint: the failed INSERT alone undone
                        conn.execute(sa.insert(map_versions).values(
                            map=map_name, version=version, definition=definition, file=file,
                            installed_at=now_iso()))
                except sa.exc.IntegrityError:  # recorded by another process meanwhile
                    pass  # the same version: the same text

    def install_map_version(self, map_name: str, version: str) -> None:
        """Record that capture of ``map_name`` is installed for ``version`` (recorded before):
        every process applies that version, whatever its own map file says. A map's first
        row inserted by two processes at once is updated by the one whose INSERT met the
        other's."""
        self._cache.pop("map_states", None)
        with self.engine.begin() as conn:
            update = (sa.update(map_status).where(map_status.c.map == map_name)
                      .values(version=version, updated_at=now_iso()))
            if not conn.execute(update).rowcount:
                try:
                    with conn.begin_nested():  # a savepoint: the failed INSERT alone undone
                        conn.execute(sa.insert(map_status).values(
                            map=map_name, state=MapState.STOPPED.value,
                            initial_synced_at=None, updated_at=now_iso(), version=version))
                except sa.exc.IntegrityError:  # made by another process meanwhile
                    conn.execute(update)

    def map_definition(self, map_name: str, version: str) -> str | None:
        """The text of a recorded map version."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(map_versions.c.definition).where(
                map_versions.c.map == map_name, map_versions.c.version == version)).scalar()

    def map_states(self) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            states = {r.map: dict(r._mapping) for r in conn.execute(sa.select(map_status))}
        self._cache["map_states"] = (time.monotonic(), states)
        return states

    def running_maps(self, max_age: float = CACHE_SECONDS) -> set[str]:
        """Names of running maps, read at most ``max_age`` seconds ago: live writes ask on
        every transaction, and a start or stop made by another process is seen within that
        time (at once when made through this store)."""
        return {n for n, st in self.recent_map_states(max_age).items()
                if st["state"] == MapState.RUNNING}

    def queued_maps(self, max_age: float = CACHE_SECONDS) -> set[str]:
        """Maps whose changes are captured but not mirrored synchronously (initializing,
        paused, resuming): a write through dualwrite to their tables must queue."""
        return {n for n, st in self.recent_map_states(max_age).items()
                if MapState(st["state"]).queueing}

    def recent_map_states(self, max_age: float = CACHE_SECONDS) -> dict[str, dict[str, Any]]:
        """Map states read at most ``max_age`` seconds ago (see :meth:`running_maps`)."""
        hit = self._cache.get("map_states")
        return hit[1] if hit and time.monotonic() - hit[0] < max_age else self.map_states()

    def note_applied(self, activity: dict[str, tuple[str, int]]) -> None:
        """Record when each map last applied a change, and add how many it applied.

        Several processes add to one map's row at once (JetStream workers): the count is
        added in the UPDATE itself (a read, then a write of what was read plus one's own,
        lost the other's), and a first row two processes insert at once is added to by the
        one whose INSERT met the other's (it failed the map with a duplicate key)."""
        with self.engine.begin() as conn:
            for name, (at, n) in activity.items():
                add = (sa.update(map_activity).where(map_activity.c.map == name)
                       .values(last_applied_at=at, applied=map_activity.c.applied + n))
                if conn.execute(add).rowcount:
                    continue
                try:
                    with conn.begin_nested():  # a savepoint: the failed INSERT alone undone
                        conn.execute(sa.insert(map_activity).values(
                            map=name, last_applied_at=at, applied=n))
                except sa.exc.IntegrityError:  # inserted by another process meanwhile
                    conn.execute(add)

    def activity(self) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            return {r.map: dict(r._mapping) for r in conn.execute(sa.select(map_activity))}
