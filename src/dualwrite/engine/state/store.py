"""The state store: opened at a URL (a database file, or a database server; see
:mod:`dualwrite.connectors.stores`), its schema versioned and migrated."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from dualwrite.connectors.stores import database_file, is_embedded, store_engine
from dualwrite.engine.files import private_database_file
from dualwrite.engine.journal import DecisionJournal
from dualwrite.engine.state.access import PrincipalsState
from dualwrite.engine.state.alerting import EventsState
from dualwrite.engine.state.codec import now_iso
from dualwrite.engine.state.decisions import DecidedElsewhere, DecisionsState
from dualwrite.engine.state.inbox import InboxState
from dualwrite.engine.state.maps import MapsState
from dualwrite.engine.state.process_registry import ProcessesState
from dualwrite.engine.state.records import _Pending
from dualwrite.engine.state.schema import (
    _CONFLICT_VALUES_UPGRADE,
    _NO_DETAIL,
    _SCHEMA_VERSION_KEY,
    _md,
    conflicts,
    error_inbox,
    state_meta,
)
from dualwrite.engine.state.sync_progress import CheckpointsState
from dualwrite.errors import (
    StateStoreOutdated,
    TerminalConnectorError,
    TransientConnectorError,
)


def _engine(url: str) -> sa.Engine:
    """The engine of a state store (:func:`dualwrite.connectors.stores.store_engine`). On a
    database server, losing the server is a TransientConnectorError of environment "state":
    the applier waits for it with backoff instead of exiting, and `serve` answers 503."""
    engine = store_engine(url)
    if is_embedded(engine):
        return engine

    @sa.event.listens_for(engine, "handle_error")
    def _unreachable(ctx: sa.engine.ExceptionContext) -> None:
        if ctx.is_disconnect or isinstance(ctx.sqlalchemy_exception, sa.exc.OperationalError):
            raise TransientConnectorError(
                f"the state store cannot be reached: "
                f"{' '.join(str(ctx.original_exception).split())[:300]}",
                hint="dualwrite retries; check the state store's server and `state:` in "
                "dualwrite.yaml", environment="state") from ctx.original_exception

    return engine


class StateStore(MapsState, CheckpointsState, ProcessesState, InboxState, EventsState,
                 DecisionsState, PrincipalsState):
    """dualwrite's own tables, one part per concern (maps, checkpoints, processes, the
    inbox, events and alerts, decisions and audit, principals and tokens), opened, versioned
    and migrated here. Every method is one short transaction."""

    def __init__(self, url: str, *, upgrade: bool = False) -> None:
        """Open the state store at ``url``: an empty one is made at the current schema
        version; one at an older version is refused (StateStoreOutdated) unless ``upgrade``
        (what `dualwrite state upgrade` does), one a newer dualwrite made is refused."""
        self.url = url
        #: (version found, version now) when this opening upgraded the store
        self.upgraded: tuple[int, int] | None = None
        file = database_file(url)
        if file is not None:
            try:
                private_database_file(file)
            except OSError as exc:
                raise TerminalConnectorError(
                    f"cannot open the state store {url!r}: {exc.strerror}",
                    hint="check `state:` in dualwrite.yaml; the folder must exist and be "
                    "writable", environment="state") from exc
        self.engine = _engine(url)
        self._cv = threading.Condition()
        self._queue: list[_Pending] = []
        self._completed: list[str] = []
        self._writing = False
        self._decided = DecidedElsewhere(self._write_decided)
        self._cache: dict[Any, tuple[float, Any]] = {}
        try:
            self._open(upgrade)
        except (StateStoreOutdated, TransientConnectorError):
            self.engine.dispose()
            raise
        except sa.exc.SQLAlchemyError as exc:
            self.engine.dispose()
            raise TerminalConnectorError(
                f"cannot open the state store {url!r}: {exc.__class__.__name__}: "
                f"{getattr(exc, 'orig', exc)}",
                hint="check `state:` in dualwrite.yaml; the folder must exist and be writable",
                environment="state") from exc
        # A state store in a database file makes commit decisions durable in a journal
        # beside it (see dualwrite.engine.journal); other stores commit them directly.
        self._journal: DecisionJournal | None = None
        if file is not None:
            self._journal = DecisionJournal(Path(f"{file}.decisions"),
                                            self._import_journalled)
            self._journal.adopt()

    def schema_version(self) -> int:
        """The schema version this store is at (1: made before versions were recorded)."""
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(state_meta.c.value).where(
                state_meta.c.key == _SCHEMA_VERSION_KEY)).scalar()
        return int(value) if value is not None else 1

    def _open(self, upgrade: bool) -> None:
        with self.engine.connect() as conn:
            have = set(sa.inspect(conn).get_table_names())
        if not have & {t.name for t in _md.sorted_tables}:
            _md.create_all(self.engine)
            self._set_version(SCHEMA_VERSION)
            return
        if state_meta.name not in have:
            state_meta.create(self.engine, checkfirst=True)
        found = self.schema_version()
        if found > SCHEMA_VERSION:
            raise StateStoreOutdated(
                f"the state store {self.url!r} is at schema version {found}, made by a newer "
                f"dualwrite; this one ({_dualwrite_version()}) knows versions up to "
                f"{SCHEMA_VERSION}", hint="run the dualwrite version that made it (or newer)")
        if found < SCHEMA_VERSION:
            if not upgrade:
                raise StateStoreOutdated(
                    f"the state store {self.url!r} is at schema version {found}; this "
                    f"dualwrite ({_dualwrite_version()}) needs version {SCHEMA_VERSION}",
                    hint="back it up, then run `dualwrite state upgrade` (stop every "
                    "`run` and `serve` of its links first)")
            for version, _what, step in MIGRATIONS:
                if found < version <= SCHEMA_VERSION:
                    step(self)
                    self._set_version(version)
            self.upgraded = (found, SCHEMA_VERSION)

    def _set_version(self, version: int) -> None:
        with self.engine.begin() as conn:
            n = conn.execute(sa.update(state_meta).where(
                state_meta.c.key == _SCHEMA_VERSION_KEY).values(value=str(version))).rowcount
        if n == 0:
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.insert(state_meta).values(key=_SCHEMA_VERSION_KEY,
                                                              value=str(version)))
            except sa.exc.IntegrityError:
                pass  # another process opening the new store recorded it meanwhile

    def _upgrade(self) -> None:
        """Migration 2: bring a store made before schema versions up to date: tables it
        lacks are created; nullable columns added since are added; the row values earlier
        versions kept for settled conflicts are dropped. Idempotent."""
        _md.create_all(self.engine)
        for table in _md.sorted_tables:
            with self.engine.connect() as conn:
                have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
            for col in table.columns:
                if col.name in have or not col.nullable:
                    continue
                typ = col.type.compile(dialect=self.engine.dialect)
                try:
                    with self.engine.begin() as conn:
                        conn.exec_driver_sql(
                            f"ALTER TABLE {table.name} ADD COLUMN {col.name} {typ}")
                except sa.exc.SQLAlchemyError:
                    with self.engine.connect() as conn:
                        if col.name not in {c["name"] for c in
                                            sa.inspect(conn).get_columns(table.name)}:
                            raise
        with self.engine.connect() as conn:
            done = conn.execute(sa.select(state_meta.c.key).where(
                state_meta.c.key == _CONFLICT_VALUES_UPGRADE)).first()
        if done is None:
            self._forget_old_conflict_values()

    def _forget_old_conflict_values(self) -> None:
        """Once per store: drop the row values an earlier version kept for every conflict
        (settled by policy, or whose inbox entry has closed)."""
        open_entry = sa.select(error_inbox.c.id).where(
            error_inbox.c.map == conflicts.c.map, error_inbox.c.row_key == conflicts.c.row_key,
            error_inbox.c.operation == "conflict", error_inbox.c.status == "open").exists()
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.update(conflicts).where(
                    conflicts.c.detail != _NO_DETAIL,
                    sa.or_(conflicts.c.winner != "manual", ~open_entry))
                    .values(detail=_NO_DETAIL))
                conn.execute(sa.insert(state_meta).values(key=_CONFLICT_VALUES_UPGRADE,
                                                          value=now_iso()))
        except sa.exc.IntegrityError:
            pass  # another process made the same upgrade meanwhile

    def close(self) -> None:
        try:
            if self._decided.pending or self._decided.writing:
                self._decided.drain()
            if self._journal is not None:
                self._journal.close()
            self.flush_completions()
        finally:
            self.engine.dispose()


#: The state store's schema versions: (version, what it changes, the step that makes it).
#: A store records its version in ``state_meta``; `dualwrite state upgrade` runs the steps
#: above it in order. Version 1 is every store made before versions were recorded.
MIGRATIONS: list[tuple[int, str, Callable[[StateStore], None]]] = [
    (2, "versioned schema; tables and columns added since (leases, processes, map "
        "versions, alerts' states, created rows' own defaults); conflicts keep row values "
        "only while open",
     StateStore._upgrade),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _dualwrite_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"dualwrite {version('dualwrite')}"
    except PackageNotFoundError:
        return "dualwrite"
