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
        """Validated maps in dependency order; raises ValidationFailed listing every issue."""
        bound, issues = self.validate()
        if issues:
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

    def start_maps(self, names: Sequence[str] = (), *,
                   progress: Progress | None = None) -> list[MapResult]:
        """Start maps (all by default) in dependency order: a map whose initial sync has
        not run gets it first. Returns the initial syncs that ran."""
        bound = self.bound_maps(names)
        self.ensure_linked()
        states = self.state.map_states()
        ran = []
        for b in bound:
            if not (states.get(b.name) or {}).get("initial_synced_at"):
                ran.append(self._sync(progress).run(b))
            self.state.set_map_state(b.name, "running")
        return ran

    def stop_maps(self, names: Sequence[str] = ()) -> list[str]:
        bound = self.bound_maps(names)
        for b in bound:
            self.state.set_map_state(b.name, "stopped")
        return [b.name for b in bound]

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
