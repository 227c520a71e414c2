"""A link: two environments, their connectors, dualwrite's state, and the bound maps.

:class:`Link` is what ``dualwrite.open()`` returns and what every CLI command works through.
An environment belongs to one link only: the link id is recorded in the environment itself
(``dualwrite_link`` table), and a second link to it is refused with the other link's name.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dualwrite.connectors import connect
from dualwrite.connectors.base import Connector, LinkRecord
from dualwrite.engine.alerts import Alerts
from dualwrite.engine.capture import Applier, ApplierLock
from dualwrite.engine.config import Config, load_config
from dualwrite.engine.diff import MapDiffer
from dualwrite.engine.initial_sync import InitialSync, MapResult, Progress
from dualwrite.engine.live import (
    Coordinator,
    LiveTransaction,
    RecoveryReport,
    Rules,
    StepHook,
)
from dualwrite.engine.live import recover as recover_branches
from dualwrite.engine.state import StateStore, now_iso
from dualwrite.engine.verify import VerifyResult, verify_map
from dualwrite.errors import (
    ConnectorError,
    Issue,
    LinkError,
    TerminalConnectorError,
    ValidationFailed,
)
from dualwrite.model.binding import BoundMap, bind_maps
from dualwrite.model.maps import Side, dependency_order
from dualwrite.model.schema import TableSchema


class Link:
    """Two environments linked through maps. Use as a context manager, or call close()."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.connectors: dict[Side, Connector] = {}
        self._state: StateStore | None = None
        self._bound: list[BoundMap] | None = None
        self._issues: list[Issue] | None = None
        self._link_id: str | None = None
        self._differs: dict[str, MapDiffer] = {}
        self._recovered = False
        self._alerts: Alerts | None = None
        self._lock = threading.Lock()
        self.rules = Rules()
        try:
            self.connectors[Side.LEFT] = connect(config.left, config.url(config.left))
            self.connectors[Side.RIGHT] = connect(config.right, config.url(config.right))
        except Exception:
            self.close()
            raise

    @classmethod
    def open(cls, path: str | Path = "dualwrite.yaml") -> Link:
        return cls(load_config(path))

    @property
    def state(self) -> StateStore:
        if self._state is None:
            self._state = StateStore(self.config.state_url)
        return self._state

    def close(self) -> None:
        for c in self.connectors.values():
            c.close()
        if self._state is not None:
            self._state.close()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def env_name(self, side: Side) -> str:
        return self.connectors[side].name

    # -- validation --------------------------------------------------------------------------
    def validate(self) -> tuple[list[BoundMap], list[Issue]]:
        """Bind every map to both real schemas; return bound maps and every issue found."""
        if self._bound is not None and self._issues is not None:
            return self._bound, self._issues
        schemas: dict[tuple[Side, str], TableSchema | None] = {}
        tables = {s: self.connectors[s].tables() for s in Side}

        def schema(side: Side, table: str) -> TableSchema | None:
            if (side, table) not in schemas:
                try:
                    schemas[(side, table)] = self.connectors[side].describe(table)
                except TerminalConnectorError:
                    schemas[(side, table)] = None
            return schemas[(side, table)]

        self._bound, self._issues = bind_maps(self.config.maps, schema, lambda s: tables[s])
        return self._bound, self._issues

    def bound_maps(self, names: Sequence[str] = ()) -> list[BoundMap]:
        """Validated maps in dependency order; raises ValidationFailed listing every error
        (warnings and notes do not stop the maps: ``dualwrite validate`` shows them)."""
        bound, issues = self.validate()
        if any(i.is_error for i in issues):
            raise ValidationFailed(issues)
        for n in names:
            self.config.map(n)  # raises a clear error for an unknown name
        ordered_names = [m.name for m in dependency_order(self.config.maps)]
        by_name = {b.name: b for b in bound}
        return [by_name[n] for n in ordered_names if n in by_name and (not names or n in names)]

    # -- the link itself ---------------------------------------------------------------------
    def ensure_linked(self) -> str:
        """Record this link in both environments (idempotent); return the link id.

        Refused with LinkError when either environment already belongs to another link.
        """
        name = self.config.link_name
        stored = self.state.get_link(name)
        records = {s: self.connectors[s].get_link() for s in Side}
        link_id = stored["link_id"] if stored else None
        if link_id is None:
            # The state store is new. If both environments already carry the same record of
            # this very link (state store moved or lost), adopt it rather than refuse.
            ids = {r.link_id for r in records.values() if r and r.link_name == name}
            link_id = ids.pop() if len(ids) == 1 and all(records.values()) else str(uuid.uuid4())
        for s, rec in records.items():
            if rec is not None and rec.link_id != link_id:
                raise LinkError(
                    f"environment {self.env_name(s)!r} already belongs to link "
                    f"{rec.link_name!r} (id {rec.link_id}, since {rec.created_at}); an "
                    "environment can be in one link only",
                    hint=f"run `dualwrite unlink` with the config of link {rec.link_name!r} "
                    "first, or link another environment")
        for s, rec in records.items():
            if rec is None:
                self.connectors[s].set_link(LinkRecord(link_id, name, self.env_name(s),
                                                       now_iso()))
        if not stored:
            self.state.put_link(name, link_id, self.config.left, self.config.right)
        return link_id

    @property
    def link_id(self) -> str:
        """This link's id (linking the environments on first use)."""
        if self._link_id is None:
            self._link_id = self.ensure_linked()
        return self._link_id

    def unlink(self) -> list[str]:
        """Remove this link's record from both environments; returns the environments freed.
        Records of other links are left alone."""
        name = self.config.link_name
        stored = self.state.get_link(name)
        freed = []
        for s in Side:
            rec = self.connectors[s].get_link()
            if rec is not None and (rec.link_name == name if stored is None
                                    else rec.link_id == stored["link_id"]):
                self.connectors[s].clear_link()
                freed.append(self.env_name(s))
        self.state.delete_link(name)
        return freed

    # -- work --------------------------------------------------------------------------------
    def _sync(self, progress: Progress | None) -> InitialSync:
        return InitialSync(self.connectors, self.state,
                           batch_size=self.config.model.sync.batch_size, progress=progress)

    def plan(self, names: Sequence[str] = (), *, master: str | None = None,
             progress: Progress | None = None) -> list[MapResult]:
        side = Side(master) if master else None
        return [self._sync(progress).plan(b, master=side) for b in self.bound_maps(names)]

    def sync_initial(self, names: Sequence[str] = (), *, master: str | None = None,
                     progress: Progress | None = None, resume: bool = True) -> list[MapResult]:
        """Initial sync of the named maps (all by default) in dependency order."""
        bound = self.bound_maps(names)
        self.ensure_linked()
        side = Side(master) if master else None
        sync = self._sync(progress)
        return [sync.run(b, master=side, resume=resume) for b in bound]

    def verify(self, names: Sequence[str] = (), *, max_details: int = 1000,
               progress: Progress | None = None) -> list[VerifyResult]:
        return [verify_map(b, self.connectors, batch_size=self.config.model.sync.batch_size,
                           max_details=max_details, progress=progress)
                for b in self.bound_maps(names)]

    # -- live sync ---------------------------------------------------------------------------
    def live_maps(self) -> list[BoundMap]:
        """Every valid map (live writes consult the running ones)."""
        return self.bound_maps()

    def differ(self, name: str) -> MapDiffer:
        with self._lock:
            d = self._differs.get(name)
            if d is None:
                [bound] = self.bound_maps([name])
                d = self._differs[name] = MapDiffer(bound, self.connectors)
            return d

    def missing_dependencies(self, names: Sequence[str]) -> list[str]:
        """Maps that the named ones depend on (transitively) and that are not running nor
        named, in dependency order."""
        states = self.state.map_states()
        wanted = set(names)
        need: set[str] = set()
        todo = list(names)
        while todo:
            spec = self.config.map(todo.pop())
            for dep in spec.depends_on:
                if dep not in wanted and dep not in need and \
                        (states.get(dep) or {}).get("state") != "running":
                    need.add(dep)
                    todo.append(dep)
        return [m.name for m in dependency_order(self.config.maps) if m.name in need]

    def start_maps(self, names: Sequence[str] = (), *, progress: Progress | None = None,
                   with_dependencies: bool | None = None) -> list[MapResult]:
        """Start maps (all by default) in dependency order. Starting installs capture on both
        tables (state ``initializing``), runs the initial sync if the map has not had one
        (changes made meanwhile are captured, and applied after it), and leaves the map
        ``running``. A paused map is resumed instead. Maps that the named ones depend on and
        that are not running are started first when ``with_dependencies`` is true; when it is
        None they are refused with LinkError naming them. Returns the initial syncs that ran.
        """
        if names:
            missing = self.missing_dependencies(names)
            if missing and with_dependencies is None:
                raise LinkError(
                    f"map(s) {', '.join(names)} depend on {', '.join(missing)}, which "
                    "are not running",
                    hint="start them first, or let dualwrite start them in order "
                    "(`dualwrite maps start --yes`)")
            if missing and with_dependencies:
                names = [*missing, *names]
        bound = self.bound_maps(names)
        self.ensure_linked()
        states = self.state.map_states()
        ran = []
        for b in bound:
            st = (states.get(b.name) or {})
            if st.get("state") == "running":
                continue
            if st.get("state") in ("paused", "resuming"):
                self.resume_maps([b.name])
                continue
            captured = self.install_capture(b)
            if not st.get("initial_synced_at"):
                if captured:
                    self.state.set_map_state(b.name, "initializing")
                ran.append(self._sync(progress).run(b))
            self.state.set_map_state(b.name, "running")
        return ran

    def install_capture(self, b: BoundMap) -> bool:
        """Install change capture for one map on both sides; False where a side's backend has
        none (the in-memory connector: live sync through dualwrite only)."""
        if not all(self.connectors[s].capabilities.capture for s in Side):
            return False
        from dualwrite.engine.capture import capture_specs

        for s, spec in capture_specs(b).items():
            self.connectors[s].capture_log().install(spec)
        return True

    def remove_capture(self, b: BoundMap) -> None:
        if not all(self.connectors[s].capabilities.capture for s in Side):
            return
        from dualwrite.engine.capture import capture_specs

        for s, spec in capture_specs(b).items():
            self.connectors[s].capture_log().remove(spec)

    def stop_maps(self, names: Sequence[str] = ()) -> list[str]:
        """Stop maps: remove their capture and forget what they had queued. Starting one
        again runs its initial sync again (nothing was captured while it was stopped)."""
        bound = self.bound_maps(names)
        for b in reversed(bound):
            self.remove_capture(b)
            self.state.drop_parked(b.name)
            self.state.set_map_state(b.name, "stopped", forget_synced=True)
        return [b.name for b in bound]

    def pause_maps(self, names: Sequence[str] = ()) -> list[str]:
        """Pause running maps: changes keep being captured and stay queued, in order."""
        out = []
        states = self.state.map_states()
        for b in self.bound_maps(names):
            if (states.get(b.name) or {}).get("state") in ("running", "resuming"):
                self.state.set_map_state(b.name, "paused")
                out.append(b.name)
        return out

    def resume_maps(self, names: Sequence[str] = ()) -> list[str]:
        """Resume paused maps: the applier replays their queue in order (``resuming``) and
        puts them back to ``running`` once it is empty."""
        out = []
        states = self.state.map_states()
        for b in self.bound_maps(names):
            if (states.get(b.name) or {}).get("state") == "paused":
                self.state.set_map_state(b.name, "resuming")
                out.append(b.name)
        return out

    def alerts(self) -> Alerts:
        if self._alerts is None:
            self._alerts = Alerts(self, self.config.model.alerts)
        return self._alerts

    def applier(self, **kwargs: Any) -> Applier:
        """An applier of this link's captured changes (see :mod:`dualwrite.engine.capture`)."""
        self.ensure_linked()
        return Applier(self, **kwargs)

    def applier_lock(self) -> ApplierLock:
        return ApplierLock(self.config.state_url, self.link_id)

    def status(self) -> list[dict[str, Any]]:
        """Per map: state, lag (seconds and changes), queued changes, open errors,
        conflicts, and when it last applied a change."""
        import time as _time

        states = self.state.map_states()
        stats: dict[Side, dict[str, tuple[int, int, Any]]] = {}
        unreachable = []
        for s in Side:
            c = self.connectors[s]
            try:
                stats[s] = c.capture_log().stats() if c.capabilities.capture else {}
            except ConnectorError:
                # status is most wanted when a side is down: report what the other side has
                stats[s] = {}
                unreachable.append(self.env_name(s))
        errors: dict[str, int] = {}
        for e in self.state.errors():
            errors[e.map] = errors.get(e.map, 0) + 1
        parked = self.state.parked_count()
        conflicts = self.state.conflict_counts()
        activity = self.state.activity()
        out = []
        for m in dependency_order(self.config.maps):
            st = states.get(m.name) or {}
            rows = sum(stats[s].get(m.name, (0, 0, None))[0] for s in Side)
            oldest = [x for s in Side if (x := stats[s].get(m.name, (0, 0, None))[2])]
            lag = max(0.0, _time.time() - min(oldest).timestamp()) if oldest else 0.0
            state = st.get("state") or "not running"
            out.append({
                "map": m.name, "state": state,
                "lag_seconds": round(lag, 3) if state in ("running", "resuming") else None,
                "lag_changes": rows if state in ("running", "resuming") else 0,
                "queued": rows + parked.get(m.name, 0),
                "errors": errors.get(m.name, 0),
                "conflicts": conflicts.get(m.name, 0),
                "last_applied_at": (activity.get(m.name) or {}).get("last_applied_at"),
                "initial_synced_at": st.get("initial_synced_at"),
                "unreachable": unreachable,
            })
        return out

    def recover(self) -> RecoveryReport:
        """End every branch of this link left prepared by a dead coordinator (see
        :func:`dualwrite.engine.live.recover`)."""
        return recover_branches(self.link_id, self.connectors, self.state)

    @contextmanager
    def transaction(self, principal: str = "api", *, hook: StepHook | None = None
                    ) -> Iterator[LiveTransaction]:
        """A live transaction: every write in the block, with its mirrored twins on the other
        side, commits on both sides or on neither. Raises RowError (naming map, side, table,
        key, field and value), LicenceError or RowNotFound; both sides are then unchanged."""
        if not self._recovered:
            with self._lock:
                if not self._recovered:
                    self.recover()
                    self._recovered = True
        coordinator = Coordinator(self, principal, hook)
        try:
            yield coordinator.tx
        except BaseException:
            coordinator.abort()
            raise
        coordinator.commit()

    def describe(self) -> dict[str, Any]:
        return {"link": self.config.link_name, "left": self.config.left,
                "right": self.config.right, "maps": [m.name for m in self.config.maps]}


def open_link(path: str | Path = "dualwrite.yaml") -> Link:
    """Open the link described by a config file. Raises ConfigError or ConnectorError with a
    message saying what to fix."""
    return Link.open(path)


__all__ = ["Link", "open_link"]
