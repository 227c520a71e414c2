"""A link: two environments, their connectors, dualwrite's state, and the bound maps.

:class:`Link` is what ``dualwrite.open()`` returns and what every CLI command works through.
An environment belongs to one link only: the link id is recorded in the environment itself
(:meth:`Connector.set_link`; a SQL database's ``dualwrite_link`` table), and a second link to
it is refused with the other link's name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dualwrite.connectors import connect
from dualwrite.connectors.base import Connector, LinkRecord
from dualwrite.engine import metrics
from dualwrite.engine.alerts import Alerts
from dualwrite.engine.capture import Applier, held_by_dependencies
from dualwrite.engine.config import Config, load_config, parse_map_text
from dualwrite.engine.diff import MapDiffer
from dualwrite.engine.initial_sync import InitialSync, MapResult, Progress
from dualwrite.engine.lease import ApplierLease
from dualwrite.engine.live import (
    Coordinator,
    LiveTransaction,
    RecoveryReport,
    Rules,
    StepHook,
    abandoned_transactions,
)
from dualwrite.engine.live import recover as recover_branches
from dualwrite.engine.live_odata import LastResourceCoordinator, odata_side, resolve_in_doubt
from dualwrite.engine.lookups import PlannedRows
from dualwrite.engine.monitor import PROGRESS_SECONDS, Monitor
from dualwrite.engine.odata_follow import PHASE as FOLLOW_PHASE
from dualwrite.engine.odata_follow import cannot_follow, describe_position
from dualwrite.engine.security import Principal
from dualwrite.engine.state import MapState, StateStore, now_iso
from dualwrite.engine.verify import VerifyResult, verify_map
from dualwrite.errors import (
    ConfigError,
    ConnectorError,
    Issue,
    LinkError,
    TerminalConnectorError,
    ValidationFailed,
)
from dualwrite.model.binding import BoundMap, bind_maps
from dualwrite.model.maps import Side, TableMap, dependency_order
from dualwrite.model.schema import TableSchema

log = logging.getLogger("dualwrite.link")

#: errors that keep a map from running live — following its changes, live writes — but not
#: from being planned, synced (`sync --initial`) and verified, which read no changes: DW136,
#: an OData side whose changes cannot be read
NOT_FOR_SYNC = frozenset({"DW136"})


class Link:
    """Two environments linked through maps. Use as a context manager, or call close()."""

    def __init__(self, config: Config) -> None:
        #: the maps as their files say (``validate`` checks these; a running map may be
        #: installed for another version, kept in the state store: see ``_adopt_versions``)
        self.files = config
        self.config = config
        self._versions: dict[str, str] | None = None
        self.connectors: dict[Side, Connector] = {}
        self._state: StateStore | None = None
        self._bound: list[BoundMap] | None = None
        self._issues: list[Issue] | None = None
        #: live_maps' answer and the binding it was worked out from (a new binding, after a
        #: map is reloaded or a version adopted, is a new list: the answer is worked out again)
        self._live: tuple[list[BoundMap], tuple[BoundMap, ...]] | None = None
        self._link_id: str | None = None
        self._outcomes: dict[str, Any] | None = None  # live transactions' counters by outcome
        self._differs: dict[str, MapDiffer] = {}
        self._recovered = False
        self._next_resolve = 0.0  # when abandoned transactions may next be settled
        #: set-up that needed a database which could not be reached when the process started
        #: (loading business rules): done before the first live write, which needs both
        self._before_first_write: list[Callable[[], Any]] = []
        self._alerts: Alerts | None = None
        self._monitor: Monitor | None = None
        # reentrant: differ() validates under it, and validation may adopt map versions
        self._lock = threading.RLock()
        self.rules = Rules()
        try:
            for side, env in ((Side.LEFT, config.left), (Side.RIGHT, config.right)):
                self.connectors[side] = connect(env, config.url(env),
                                                schema=config.schema(env),
                                                capture=config.capture_mode(env))
        except Exception:
            self.close()
            raise

    @classmethod
    def open(cls, path: str | Path = "dualwrite.yaml", *, lenient: bool = False) -> Link:
        """The link of the config at ``path``. ``lenient``: map files that do not parse are
        left out, their problems kept for :meth:`validate` to report (``Config.problems``)."""
        return cls(load_config(path, lenient=lenient))

    @property
    def state(self) -> StateStore:
        if self._state is None:
            self._state = StateStore(self.config.state_url)
        return self._state

    @property
    def monitor(self) -> Monitor:
        """Samples, initial sync progress, alert states and paged reads of the state store
        (see :mod:`dualwrite.engine.monitor`)."""
        if self._monitor is None:
            self._monitor = Monitor(self.state, {r.name: r.within_minutes * 60
                                                 for r in self.config.model.alerts})
        return self._monitor

    def close(self) -> None:
        if self._state is not None:
            # decisions on their way to the state store delete their rows through the
            # connectors: while these are open (what fails stays for recovery)
            with contextlib.suppress(Exception):
                self._state.flush_decided(closing=True)
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
    # -- map versions --------------------------------------------------------------------------
    def _adopt_versions(self, states: dict[str, dict[str, Any]] | None = None) -> bool:
        """Use, for each map, the version its capture is installed for (its text is in the
        state store), not its file: a file edited and not reloaded changes nothing, and every
        process applies one version. True when that changed what this link uses (the caller's
        caches of the maps are then stale)."""
        states = self.state.map_states() if states is None else states
        installed = {n: str(st["version"]) for n, st in states.items() if st.get("version")}
        if installed == self._versions:
            return False
        using = {m.name: m for m in self.config.maps}
        maps = []
        for m in self.files.maps:
            v = installed.get(m.name)
            now = using.get(m.name)
            if now is not None and now.version == (v or m.version):
                maps.append(now)  # what this link uses already
                continue
            text = self.state.map_definition(m.name, v) if v and v != m.version else None
            maps.append(parse_map_text(text, file=m.file) if text is not None else m)
        changed = [m.version for m in maps] != [m.version for m in self.config.maps]
        with self._lock:
            self._versions = installed
            if changed:
                self.config = dataclasses.replace(self.files, maps=maps)
                self._bound = self._issues = None
                self._differs.clear()
        return changed

    def file_changes(self) -> dict[str, tuple[str, str]]:
        """Maps whose file (as it is now on disk) differs from the version installed:
        name -> (installed, file)."""
        states = self.state.map_states()
        try:
            files = load_config(self.files.path).maps
        except ConfigError:
            files = self.files.maps  # a file that does not parse now: validate says why
        out = {}
        for m in files:
            v = (states.get(m.name) or {}).get("version")
            if v and v != m.version:
                out[m.name] = (str(v), m.version)
        return out

    def validate(self, *, files: bool = False) -> tuple[list[BoundMap], list[Issue]]:
        """Bind every map to both real schemas; return bound maps and every issue found. The
        maps are the versions installed (``files``: as the map files say now)."""
        if files:
            bound, issues = self._bind(self.files.maps)
            return bound, [*self.files.problems, *issues]
        if self._versions is None:
            self._adopt_versions()
        if self._bound is not None and self._issues is not None:
            return self._bound, self._issues
        self._bound, self._issues = self._bind(self.config.maps)
        return self._bound, self._issues

    def _bind(self, maps: list[TableMap]) -> tuple[list[BoundMap], list[Issue]]:
        schemas: dict[tuple[Side, str], TableSchema | None] = {}
        tables = {s: self._tables(s, maps) for s in Side}

        def schema(side: Side, table: str) -> TableSchema | None:
            if (side, table) not in schemas:
                try:
                    schemas[(side, table)] = self.connectors[side].describe(table)
                except TerminalConnectorError:
                    schemas[(side, table)] = None
            return schemas[(side, table)]

        unparsed = frozenset(i.map for i in self.files.problems if i.map)
        bound, issues = bind_maps(maps, schema, lambda s: tables[s], unparsed)
        return bound, issues + self._change_methods(bound) + self._capture_modes(maps)

    def _capture_modes(self, maps: list[TableMap]) -> list[Issue]:
        """For each environment that captures by logical decoding (``capture: logical``):
        an error when the server cannot (``wal_level``, the role's REPLICATION), and a warning
        when its replication slot is missing or holds back much WAL."""
        issues: list[Issue] = []
        if not maps:
            return issues
        for s in Side:
            env = self.env_name(s)
            if self.config.capture_mode(env) != "logical":
                continue
            log = self.connectors[s].change_log()
            try:
                missing = log.capture_requirements()
                # before the first `maps start` nothing is installed yet: not a warning
                behind = [] if missing else log.capture_warnings(before_install=True)
            except ConnectorError:
                continue  # unreachable: reported where the tables are described
            for m in missing:
                issues.append(Issue("DW137", f"environment {env!r} cannot capture by logical "
                                    f"decoding: {m}", "fix the server as said, or set "
                                    f"`capture: triggers` for {env!r}", str(self.config.path),
                                    None, severity="error"))
            for b in behind:
                issues.append(Issue("DW138", f"environment {env!r}: {b}", "see "
                                    "docs/capture.md, choosing how to capture",
                                    str(self.config.path), None, severity="warning"))
        return issues

    def _change_methods(self, bound: list[BoundMap]) -> list[Issue]:
        """For each side whose changes are not captured in its database (an OData service),
        how they would be read: a note naming the method, or the error DW136 that they
        cannot be, and what to name (the map can still be planned, synced and verified:
        :data:`NOT_FOR_SYNC`). A service that cannot be reached (transient) raises, as
        describing it does."""
        issues = []
        for b in bound:
            for s in Side:
                env = self.env_name(s)
                modified = b.spec.modified(s) or self.config.modified(env)
                try:
                    found = self.connectors[s].change_method(b.table(s), modified)
                except TerminalConnectorError as exc:
                    found = (None, f"it could not be asked ({exc.message})")
                if found is None:
                    continue
                method, why = found
                line = b.spec.line_of("modified")
                if method is not None:
                    issues.append(Issue("DW135", f"changes of {b.table(s)!r} ({env}) are read "
                                        f"by {why}", "nothing to do", b.spec.file, line,
                                        map=b.name, severity="note"))
                else:
                    message, hint = cannot_follow(b.table(s), env, s, why)
                    issues.append(Issue("DW136", message, hint, b.spec.file, line,
                                        map=b.name))
        return issues

    def _tables(self, side: Side, maps: list[TableMap]) -> list[str]:
        """The tables of ``side``'s default schema, and those of every other schema the maps
        name (``fin.currency``), qualified, for validation to find tables in (and hint
        with)."""
        connector = self.connectors[side]
        names = connector.tables()
        named = {m.table(side) for m in maps}
        named |= {t for m in maps for f in m.fields for s, t in f.lookup_tables if s is side}
        named |= {t.table for m in maps for f in m.fields for t in f.ref(side).targets
                  if t.table}
        for schema in sorted({n.partition(".")[0] for n in named if "." in n}):
            try:
                names += connector.schema_tables(schema)
            except ConnectorError:
                continue  # a schema that does not exist: its tables are reported missing
        return names

    def bound_maps(self, names: Sequence[str] = (), *, live: bool = True) -> list[BoundMap]:
        """Validated maps in dependency order; raises ValidationFailed listing every error
        (warnings do not stop the maps). ``live=False`` (plan, initial sync, verify: they
        read no changes) lets the errors of :data:`NOT_FOR_SYNC` pass."""
        bound, issues = self.validate()
        errors = [i for i in issues if i.is_error and (live or i.code not in NOT_FOR_SYNC)]
        if errors:
            raise ValidationFailed(errors)
        for n in names:
            self.config.map(n)  # raises a clear error for an unknown name
        ordered_names = [m.name for m in dependency_order(self.config.maps)]
        by_name = {b.name: b for b in bound}
        return [by_name[n] for n in ordered_names if n in by_name and (not names or n in names)]

    def valid_maps(self) -> tuple[list[BoundMap], dict[str, list[Issue]]]:
        """The maps that bind without errors, in dependency order, and the errors of the
        others by map name (errors of no one map under ""). Unlike :meth:`bound_maps`, one
        invalid map does not stop the others."""
        bound, issues = self.validate()
        by_map: dict[str, list[Issue]] = {}
        for i in issues:
            if i.is_error:  # warnings and notes do not keep a map from running
                by_map.setdefault(i.map or "", []).append(i)
        by_name = {b.name: b for b in bound if b.name not in by_map}
        return [by_name[m.name] for m in dependency_order(self.config.maps)
                if m.name in by_name], by_map

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
            # Processes of this link starting together on a new state store (`run` and
            # `serve`, JetStream workers) each made an id up: the first one claimed in the
            # state store stands. A record of this link's name with another id is one such
            # process's, written after its claim (then the state store has it by now), or
            # one a lost state store left (then it is refused as before, with nothing
            # recorded here: `unlink` finds it by the link's name).
            self._refuse_other_links({s: r for s, r in records.items()
                                      if r is not None and r.link_name != name}, link_id)
            if any(r is not None and r.link_id != link_id for r in records.values()):
                stored = self.state.get_link(name)
                self._refuse_other_links(records, stored["link_id"] if stored else link_id)
            if stored:
                link_id = stored["link_id"]
            else:
                link_id = self.state.claim_link(name, link_id, self.config.left,
                                                self.config.right)
        self._refuse_other_links(records, link_id)
        missing = [s for s, rec in records.items() if rec is None]
        for s in missing:
            self.connectors[s].set_link(LinkRecord(link_id, name, self.env_name(s),
                                                   now_iso()))
        if missing:  # another link's process may have recorded one meanwhile
            self._refuse_other_links({s: self.connectors[s].get_link() for s in missing},
                                     link_id)
        return link_id

    def _refuse_other_links(self, records: dict[Side, LinkRecord | None], link_id: str
                            ) -> None:
        """LinkError where an environment's record names another link than ``link_id``."""
        for s, rec in records.items():
            if rec is not None and rec.link_id != link_id:
                raise LinkError(
                    f"environment {self.env_name(s)!r} already belongs to link "
                    f"{rec.link_name!r} (id {rec.link_id}, since {rec.created_at}); an "
                    "environment can be in one link only",
                    hint=f"run `dualwrite unlink` with the config of link {rec.link_name!r} "
                    "first, or link another environment")

    @property
    def link_id(self) -> str:
        """This link's id (linking the environments on first use)."""
        if self._link_id is None:
            self._link_id = self.ensure_linked()
        return self._link_id

    def unlink(self, *, purge: bool = False) -> list[str]:
        """Remove this link's record from both environments; returns the environments freed.
        Records of other links are left alone. With ``purge`` the record's table goes too,
        where no other link's record is in it."""
        name = self.config.link_name
        stored = self.state.get_link(name)
        freed = []
        for s in Side:
            c = self.connectors[s]
            rec = c.get_link()
            ours = rec is not None and (rec.link_name == name if stored is None
                                        else rec.link_id == stored["link_id"])
            if ours:
                c.clear_link()
                freed.append(self.env_name(s))
            if purge and (rec is None or ours):
                c.drop_link_storage()
        self.state.delete_link(name)
        return freed

    def leftovers(self) -> dict[str, list[str]]:
        """Per environment, dualwrite's triggers, functions and tables still there (the link
        record's table included)."""
        out: dict[str, list[str]] = {}
        for s in Side:
            c = self.connectors[s]
            found = c.change_log().uninstall(dry_run=True) if c.capabilities.capture else []
            out[self.env_name(s)] = found + c.link_storage()
        return out

    def applier_pid(self) -> int | None:
        """The process id of the applier (`run`, `serve`) holding this link's lease, if
        one does; never links the environments to find out."""
        return self.applier_lease().holder()

    def purge_capture(self) -> dict[str, list[str]]:
        """Stop every map and remove every dualwrite trigger, function and change-log table
        from both environments (`maps stop --purge`); the link record stays. Refused while
        an applier runs. Returns, per environment, what was removed."""
        self._refuse_while_applying("remove capture")
        capture = [s for s in Side if self.connectors[s].capabilities.capture]
        found = {s: self.connectors[s].change_log().uninstall(dry_run=True) for s in capture}
        # a map that no longer binds (a table gone) cannot be stopped by its spec: its
        # triggers are found by name below
        with contextlib.suppress(ValidationFailed):
            self.stop_maps()
        # maps no longer in the config, or that no longer bind, are stopped by name
        for name, st in self.state.map_states().items():
            if st["state"] != "stopped":
                self.state.drop_parked(name)
                self.state.set_map_state(name, MapState.STOPPED, forget_synced=True)
        removed: dict[str, list[str]] = {self.env_name(s): [] for s in Side}
        for s in capture:
            swept = self.connectors[s].change_log().uninstall()
            removed[self.env_name(s)] = found[s] + [x for x in swept if x not in found[s]]
        return removed

    def uninstall(self) -> dict[str, list[str]]:
        """Stop every map, then remove every dualwrite trigger, function and table from both
        environments, and the link (its records and the state store's). The state store
        itself stays (audit log, tokens, inbox). Refused while an applier runs."""
        removed = self.purge_capture()
        had = {s: self.connectors[s].link_storage() for s in Side}
        # what initial sync kept of the link's rows (resume points, the rows it was creating,
        # the digests of self-filled fields) describes tables no longer linked
        for name in self.state.map_states():
            self.state.clear_checkpoint(name, "initial")
            self.state.clear_creating(name)
            self.state.forget_created_defaults(name)
        self.unlink(purge=True)
        for s in Side:
            still = self.connectors[s].link_storage()
            removed[self.env_name(s)] += [x for x in had[s] if x not in still]
        return removed

    def _refuse_while_applying(self, doing: str) -> None:
        pid = self.applier_pid()
        if pid is not None:
            raise LinkError(f"cannot {doing} while an applier (pid {pid}) runs for link "
                            f"{self.config.link_name!r}",
                            hint="stop `dualwrite run` or `dualwrite serve` first (SIGTERM)")

    # -- work --------------------------------------------------------------------------------
    def _sync(self, progress: Progress | None, *, record: _Recorder | None = None
              ) -> InitialSync:
        """An initial sync; with ``record`` its progress is also written to the state store
        (at most once a second, for the console and /metrics, whichever process looks)."""
        return InitialSync(self.connectors, self.state,
                           batch_size=self.config.model.sync.batch_size,
                           bulk=self.config.model.sync.bulk,
                           progress=record.wrap(progress) if record is not None else progress)

    def plan(self, names: Sequence[str] = (), *, master: str | None = None,
             progress: Progress | None = None, errors: bool = False) -> list[MapResult]:
        """What initial sync of the named maps (all by default) would do, in dependency
        order, writing nothing. A lookup to a row that a map planned earlier would create
        counts as resolving, as it will in the sync. With ``errors``, each result lists
        every row predicted to fail."""
        side = Side(master) if master else None
        bound = self.bound_maps(names, live=False)
        planned = PlannedRows((s, t) for b in bound for f in b.fields for s in Side
                              for t in f.end(s).targets)
        sync = self._sync(progress)
        return [sync.plan(b, master=side, planned=planned, errors=errors) for b in bound]

    def sync_initial(self, names: Sequence[str] = (), *, master: str | None = None,
                     progress: Progress | None = None, resume: bool = True,
                     skip_errors: bool = False) -> list[MapResult]:
        """Initial sync of the named maps (all by default) in dependency order. With
        ``skip_errors``, rows with an open inbox entry are left alone (not tried again)."""
        bound = self.bound_maps(names, live=False)
        self.ensure_linked()
        side = Side(master) if master else None
        recorder = _Recorder(self.monitor)
        sync = self._sync(progress, record=recorder)
        out = []
        for b in bound:
            out.append(sync.run(b, master=side, resume=resume, skip_errors=skip_errors))
            recorder.finish(b.name)
        return out

    def verify(self, names: Sequence[str] = (), *, max_details: int | None = 1000,
               progress: Progress | None = None) -> list[VerifyResult]:
        return [verify_map(b, self.connectors, batch_size=self.config.model.sync.batch_size,
                           max_details=max_details, state=self.state, progress=progress)
                for b in self.bound_maps(names, live=False)]

    # -- live sync ---------------------------------------------------------------------------
    def live_maps(self) -> tuple[BoundMap, ...]:
        """Every valid map, in dependency order (live writes consult the running ones); raises
        ValidationFailed as :meth:`bound_maps`. Worked out once per binding: every live write
        asks, several times."""
        bound, _issues = self.validate()
        live = self._live
        if live is not None and live[0] is bound:
            return live[1]
        maps = tuple(self.bound_maps())
        self._live = (bound, maps)
        return maps

    def differ(self, name: str) -> MapDiffer:
        with self._lock:
            d = self._differs.get(name)
            if d is None:
                bound, issues = self.validate()
                found = [b for b in bound if b.name == name]
                if not found:
                    self.config.map(name)  # a clear error for an unknown name
                    raise ValidationFailed([i for i in issues if i.map in (name, None)])
                d = self._differs[name] = MapDiffer(found[0], self.connectors)
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
        for s in Side:
            if not self.connectors[s].capabilities.live:
                raise LinkError(
                    f"environment {self.env_name(s)!r} cannot run maps live yet: changes are "
                    f"not read from a {type(self.connectors[s]).__name__} environment",
                    hint="use `dualwrite sync --initial` and `dualwrite verify` with it "
                    "(docs/odata.md, OData environments)")
        self.forget_validation()  # bind to the tables as they are now (a fault fixed)
        bound = self.bound_maps(names)
        self.ensure_linked()
        states = self.state.map_states()
        ran = []
        for b in bound:
            st = (states.get(b.name) or {})
            if st.get("state") == "running":
                continue
            if st.get("state") in ("paused", "resuming", "failed"):
                self.resume_maps([b.name])
                continue
            captured = self.install_capture(b)
            if not st.get("initial_synced_at"):
                if captured:
                    self.state.set_map_state(b.name, MapState.INITIALIZING)
                recorder = _Recorder(self.monitor)
                ran.append(self._sync(progress, record=recorder).run(b))
                recorder.finish(b.name)
            self.state.set_map_state(b.name, MapState.RUNNING)
        return ran

    def install_capture(self, b: BoundMap) -> bool:
        """Install change capture for one map on both sides, and record the map version it
        is installed for; False where a side's backend has none (the in-memory connector:
        live sync through dualwrite only)."""
        if not all(self.connectors[s].capabilities.capture for s in Side):
            return False
        from dualwrite.engine.capture import capture_specs

        self.state.record_map_version(b.name, b.spec.version, b.spec.source or "",
                                      b.spec.file)
        for s, spec in capture_specs(b).items():
            self.connectors[s].change_log().install(spec)
        self.state.install_map_version(b.name, b.spec.version)
        self._versions = None  # adopt it at the next look
        return True

    def reload_maps(self, names: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Install the maps' files as they are now for maps whose capture is installed (all
        whose file changed, by default): each new version is checked against both schemas
        (every problem listed, nothing changed), capture is installed again with its columns,
        and the version is recorded: running processes switch to it within seconds. A change
        of tables, key or company is refused (that is another map: stop it and start it
        again). Returns per map: its versions before and after, and what capture records now.
        """
        from dualwrite.engine.capture import CAPTURING

        fresh = load_config(self.files.path)
        self.files = fresh
        states = self.state.map_states()
        wanted = [m for m in fresh.maps if not names or m.name in names]
        for n in names:
            fresh.map(n)  # a clear error for an unknown name
        current = {m.name: m for m in self.config.maps}
        bound, issues = self._bind(fresh.maps)
        by_name = {b.name: b for b in bound}
        out: list[dict[str, Any]] = []
        problems = [i for i in issues if i.is_error and i.map in {m.name for m in wanted}]
        if problems:
            raise ValidationFailed(problems)
        for m in wanted:
            st = states.get(m.name) or {}
            installed = st.get("version")
            if st.get("state") not in CAPTURING:
                out.append({"map": m.name, "reloaded": False,
                            "why": "not started: `maps start` installs its file"})
                continue
            # (a map started before map versions has none recorded: it is installed anew)
            if installed == m.version:
                out.append({"map": m.name, "reloaded": False, "why": "unchanged"})
                continue
            old = current[m.name]
            if (old.left, old.right, old.key, old.company) != (m.left, m.right, m.key,
                                                               m.company):
                raise LinkError(
                    f"map {m.name!r}: its tables, key or company changed; that is another "
                    "map, which reload cannot switch to",
                    hint=f"stop it and start it again (`dualwrite maps stop {m.name}`, then "
                    f"`dualwrite maps start {m.name}`: an initial sync)")
            self.install_capture(by_name[m.name])
            out.append({"map": m.name, "reloaded": True, "from": installed, "to": m.version})
        self._versions = None
        return out

    def remove_capture(self, b: BoundMap) -> None:
        if not all(self.connectors[s].capabilities.capture for s in Side):
            return
        from dualwrite.engine.capture import capture_specs

        for s, spec in capture_specs(b).items():
            self.connectors[s].change_log().remove(spec)

    def stop_maps(self, names: Sequence[str] = ()) -> list[str]:
        """Stop maps: remove their capture and forget what they had queued. Starting one
        again runs its initial sync again (nothing was captured while it was stopped)."""
        self.forget_validation()  # bind to the tables as they are now (a fault fixed)
        bound = self.bound_maps(names)
        for b in reversed(bound):
            self.remove_capture(b)
            self.state.drop_parked(b.name)
            self.state.set_map_state(b.name, MapState.STOPPED, forget_synced=True)
        return [b.name for b in bound]

    def pause_maps(self, names: Sequence[str] = ()) -> list[str]:
        """Pause running maps: changes keep being captured and stay queued, in order."""
        out = []
        states = self.state.map_states()
        for b in self.bound_maps(names):
            if (states.get(b.name) or {}).get("state") in ("running", "resuming"):
                self.state.set_map_state(b.name, MapState.PAUSED)
                out.append(b.name)
                log.info("map %s paused: its changes queue", b.name,
                         extra={"event": "paused", "map": b.name})
        return out

    def resume_maps(self, names: Sequence[str] = ()) -> list[str]:
        """Resume paused (or failed) maps: the applier replays their queue in order
        (``resuming``) and puts them back to ``running`` once it is empty. A failed map whose
        fault is not fixed fails again, with the reason."""
        out = []
        states = self.state.map_states()
        self.forget_validation()  # a failed map's fix: bind it to the tables as they are now
        for b in self.bound_maps(names):
            if (states.get(b.name) or {}).get("state") in ("paused", "failed"):
                self.state.set_map_state(b.name, MapState.RESUMING)
                out.append(b.name)
                log.info("map %s resuming: its queue replays in order", b.name,
                         extra={"event": "resumed", "map": b.name})
        return out

    def alerts(self) -> Alerts:
        if self._alerts is None:
            self._alerts = Alerts(self, self.config.model.alerts)
        return self._alerts

    def applier(self, **kwargs: Any) -> Applier:
        """An applier of this link's captured changes (see :mod:`dualwrite.engine.capture`)."""
        self.ensure_linked()
        return Applier.for_link(self, **kwargs)

    def applier_lease(self) -> ApplierLease:
        """A claim on this link's applier lease (see dualwrite.engine.lease); named by the
        link's name, not its id: taking it must not need the databases."""
        return ApplierLease(self.state, self.config.link_name,
                            ttl=self.config.model.capture.lease_seconds)

    def before_first_write(self, step: Callable[[], Any]) -> None:
        """Run ``step`` (set-up that needs the databases) before the first live transaction,
        right after recovery; a step that fails is tried again at the next one."""
        with self._lock:
            self._recovered = False
            self._before_first_write.append(step)

    def forget_validation(self) -> None:
        """Describe the tables and validate the maps again on next use (after a database was
        unreachable, or a map failed: its tables may have changed)."""
        with self._lock:
            self._bound = self._issues = None
            self._differs.clear()
        for c in self.connectors.values():
            c.forget_schema()

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
                stats[s] = c.change_log().stats() if c.capabilities.capture else {}
            except ConnectorError:
                # status is most wanted when a side is down: report what the other side has
                stats[s] = {}
                unreachable.append(self.env_name(s))
        # a logical-decoding environment's slot missing, or holding back much WAL (its
        # queue is then in the WAL, not in the log: see docs/capture.md)
        slot_notes: list[str] = []
        for s in Side:
            if not self.connectors[s].capabilities.capture or self.env_name(s) in unreachable:
                continue
            with contextlib.suppress(ConnectorError):
                slot_notes += [f"{self.env_name(s)}: {p}"
                               for p in self.connectors[s].change_log().capture_warnings()]
        errors = self.monitor.error_counts()  # one grouped count: the inbox may be large
        throughput = self.monitor.throughput()
        parked = self.state.parked_count()
        conflicts = self.state.conflict_counts()
        activity = self.state.activity()
        failures = self.state.last_events("failed")
        edited = self.file_changes()
        procs = self.processes()
        appliers = [p for p in procs if p["alive"] and p["role"] == "applier"]
        applier = f"pid {appliers[0]['pid']} on {appliers[0]['host']}" if appliers else None
        gone = min((p["heartbeat_age"] for p in procs if p["role"] == "applier"),
                   default=None)
        held = held_by_dependencies({m.name: m.depends_on for m in self.config.maps},
                                    {n: str(st.get("state")) for n, st in states.items()})
        out = []
        for m in dependency_order(self.config.maps):
            st = states.get(m.name) or {}
            rows = sum(stats[s].get(m.name, (0, 0, None))[0] for s in Side)
            oldest = [x for s in Side if (x := stats[s].get(m.name, (0, 0, None))[2])]
            lag = max(0.0, _time.time() - min(oldest).timestamp()) if oldest else 0.0
            state = st.get("state") or "not running"
            applying = state in ("running", "resuming")
            notes = []
            if m.name in held:
                notes.append(f"held: {held[m.name]}, which it depends on, is "
                             f"{(states.get(held[m.name]) or {}).get('state') or 'not running'};"
                             " its changes queue")
            elif applying and applier is None:
                # running as far as the maps go, yet nothing applies: say so
                notes.append("no applier" + (f" for {gone:.0f} s" if gone is not None else
                                             " (start `dualwrite run` or `dualwrite serve`)"))
            if state == "failed":
                notes.append(failures[m.name][1] if m.name in failures else "failed")
            if applying:
                notes += slot_notes
            if followed := describe_position(
                    self.state.get_checkpoint(m.name, FOLLOW_PHASE)[1]):
                notes.append(followed)
            if m.name in edited:
                notes.append(f"map file changed, not reloaded (installed {edited[m.name][0]}, "
                             f"file {edited[m.name][1]}): `dualwrite maps reload {m.name}`")
            note = "; ".join(notes) or None
            out.append({
                "map": m.name, "state": state,
                "lag_seconds": round(lag, 3) if state in ("running", "resuming") else None,
                "lag_changes": rows if state in ("running", "resuming") else 0,
                "queued": rows + parked.get(m.name, 0),
                "errors": errors.get(m.name, 0),
                "conflicts": conflicts.get(m.name, 0),
                "last_applied_at": (activity.get(m.name) or {}).get("last_applied_at"),
                # changes applied per second over the last minute (from the samples the
                # applier takes; None before it has taken one)
                "throughput": throughput.get(m.name),
                "depends_on": list(m.depends_on),
                "initial_synced_at": st.get("initial_synced_at"),
                "unreachable": unreachable,
                "applier": applier if applying else None,
                # the map version capture is installed for (see `maps reload`)
                "version": st.get("version"),
                # what is wrong: a failed map's reason, or a running map nothing applies
                "note": note,
            })
        return out

    def processes(self) -> list[dict[str, Any]]:
        """The ``run`` and ``serve`` processes of this link (appliers, standbys), with
        whether their heartbeat is recent."""
        return self.state.processes(self.config.link_name)

    def recover(self) -> RecoveryReport:
        """End every branch of this link left prepared by a dead coordinator (see
        :func:`dualwrite.engine.live.recover`)."""
        done, in_doubt = resolve_in_doubt(self.link_id, self.connectors, self.state)
        report = recover_branches(self.link_id, self.connectors, self.state,
                                  in_doubt=in_doubt)
        report.actions[:0] = done
        return report

    @contextmanager
    def transaction(self, principal: str | Principal = "api", *,
                    hook: StepHook | None = None) -> Iterator[LiveTransaction]:
        """A live transaction: every write in the block, with its mirrored twins on the other
        side, commits on both sides or on neither. Raises RowError (naming map, side, table,
        key, field and value), LicenceError or RowNotFound; both sides are then unchanged.

        ``principal`` is a name (the principal's licences apply) or a token's
        :class:`~dualwrite.engine.security.Principal` (the token's own licences apply)."""
        # a map reloaded by another process is used from the next transaction (within a
        # second: the states are cached that long)
        self._adopt_versions(self.state.recent_map_states())
        if not self._recovered:
            with self._lock:
                if not self._recovered:
                    self.recover()
                    for step in self._before_first_write:
                        step()
                    self._before_first_write.clear()
                    self._recovered = True
        elif abandoned_transactions() and time.monotonic() >= self._next_resolve:
            # a transaction this process left in doubt: settled as soon as its database
            # answers again (tried at most once a second, by the next live transaction)
            self._next_resolve = time.monotonic() + 1.0
            with contextlib.suppress(ConnectorError):
                self.recover()
        coordinator: Coordinator | LastResourceCoordinator = (
            LastResourceCoordinator(self, principal, hook)
            if odata_side(self.connectors) is not None else Coordinator(self, principal, hook))
        counted = self._outcomes
        if counted is None:  # the labelled counters, looked up once (a lock and a hash each)
            counted = self._outcomes = {
                o: metrics.LIVE_TRANSACTIONS.labels(self.config.link_name, o)
                for o in ("committed", "rolled_back")}
        try:
            yield coordinator.tx
        except BaseException:
            coordinator.abort()
            counted["rolled_back"].inc()
            raise
        try:
            coordinator.commit()
        except BaseException:  # before the decision: rolled back on both sides
            counted["rolled_back"].inc()
            raise
        counted["committed"].inc()

    def describe(self) -> dict[str, Any]:
        return {"link": self.config.link_name, "left": self.config.left,
                "right": self.config.right, "maps": [m.name for m in self.config.maps]}


class _Recorder:
    """Writes an initial sync's progress to the state store: when a map starts, at most once
    a second while it runs, and when it ends (``finish``)."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.last: dict[str, float] = {}
        self.seen: dict[str, tuple[int, int | None]] = {}

    def wrap(self, progress: Progress | None) -> Progress:
        def update(name: str, done: int, total: int | None) -> None:
            now = time.monotonic()
            if name not in self.last:
                self.monitor.sync_started(name, total)
                self.last[name] = now
            self.seen[name] = (done, total)
            if now - self.last[name] >= PROGRESS_SECONDS:
                self.monitor.sync_progressed(name, done, total)
                self.last[name] = now
            if progress is not None:
                progress(name, done, total)
        return update

    def finish(self, name: str) -> None:
        done, total = self.seen.get(name, (0, 0))
        self.monitor.sync_progressed(name, done, total if total is not None else done,
                                     finished=True)


def open_link(path: str | Path = "dualwrite.yaml") -> Link:
    """Open the link described by a config file, with the business rules its ``rules:``
    names loaded. Raises ConfigError or ConnectorError with a message saying what to fix."""
    from dualwrite.engine.rules import load_rules

    link = Link.open(path)
    try:
        load_rules(link)
    except BaseException:
        link.close()
        raise
    return link


__all__ = ["Link", "open_link"]
