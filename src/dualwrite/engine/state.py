"""dualwrite's own state: links, checkpoints, map status and the error inbox.

Stored in any SQLAlchemy database (SQLite by default). Keys are stored as tagged JSON so that a
checkpoint's key comes back with the same Python types it was read with.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from dualwrite.connectors.sqlite import create_sqlite_engine
from dualwrite.engine.files import private_sqlite_file
from dualwrite.engine.journal import DecisionJournal
from dualwrite.errors import (
    DualwriteError,
    StateStoreOutdated,
    TerminalConnectorError,
    TransientConnectorError,
)
from dualwrite.model.values import tag, untag

_md = sa.MetaData()

links = sa.Table(
    "links", _md,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("link_id", sa.String(64), nullable=False),
    sa.Column("left_env", sa.String(200), nullable=False),
    sa.Column("right_env", sa.String(200), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
)

checkpoints = sa.Table(
    "checkpoints", _md,
    sa.Column("map", sa.String(200), primary_key=True),
    sa.Column("phase", sa.String(40), primary_key=True),
    sa.Column("position", sa.Text, nullable=True),
    sa.Column("stats", sa.Text, nullable=False, default="{}"),
    sa.Column("updated_at", sa.String(40), nullable=False),
)

map_status = sa.Table(
    "map_status", _md,
    sa.Column("map", sa.String(200), primary_key=True),
    sa.Column("state", sa.String(40), nullable=False),
    sa.Column("initial_synced_at", sa.String(40), nullable=True),
    sa.Column("updated_at", sa.String(40), nullable=False),
    # the map version capture is installed for (map_versions holds its text)
    sa.Column("version", sa.String(40), nullable=True),
)

map_versions = sa.Table(
    "map_versions", _md,
    sa.Column("map", sa.String(200), primary_key=True),
    sa.Column("version", sa.String(40), primary_key=True),
    sa.Column("definition", sa.Text, nullable=False),
    sa.Column("file", sa.Text, nullable=True),
    sa.Column("installed_at", sa.String(40), nullable=False),
)

error_inbox = sa.Table(
    "error_inbox", _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("map", sa.String(200), nullable=False, index=True),
    sa.Column("side", sa.String(10), nullable=False),
    sa.Column("row_key", sa.Text, nullable=False),
    sa.Column("operation", sa.String(20), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=1),
    sa.Column("first_at", sa.String(40), nullable=False),
    sa.Column("last_at", sa.String(40), nullable=False),
    sa.Column("status", sa.String(20), nullable=False, default="open"),
    sa.UniqueConstraint("map", "side", "row_key", "operation", name="uq_error_row"),
)


coordinator_log = sa.Table(
    "coordinator_log", _md,
    sa.Column("xid", sa.String(80), primary_key=True),
    sa.Column("decision", sa.String(10), nullable=False),  # "commit"; absence means abort
    sa.Column("participants", sa.Text, nullable=False),
    sa.Column("decided_at", sa.String(40), nullable=False),
    sa.Column("completed_at", sa.String(40), nullable=True),
)

audit_log = sa.Table(
    "audit_log", _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("xid", sa.String(80), nullable=False, index=True),
    sa.Column("principal", sa.String(200), nullable=False),
    sa.Column("environment", sa.String(200), nullable=False),
    sa.Column("table_name", sa.String(200), nullable=False),
    sa.Column("row_key", sa.Text, nullable=False),
    sa.Column("operation", sa.String(20), nullable=False),
    sa.Column("map", sa.String(200), nullable=True),
)

principals = sa.Table(
    "principals", _md,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("roles", sa.Text, nullable=False, default="[]"),
    sa.Column("licences", sa.Text, nullable=False, default="[]"),
)

tokens = sa.Table(
    "tokens", _md,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("principal", sa.String(200), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("revoked_at", sa.String(40), nullable=True),
    # NULL in tokens made before roles and per-token licences (see dualwrite.engine.security)
    sa.Column("role", sa.String(20), nullable=True),
    sa.Column("licences", sa.Text, nullable=True),  # JSON list; NULL: the principal's
)

#: requests refused for want of a role or a licence (HTTP 403, LicenceError)
refusals = sa.Table(
    "refusals", _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("principal", sa.String(200), nullable=False),
    sa.Column("token_id", sa.String(16), nullable=True),
    sa.Column("environment", sa.String(200), nullable=True),
    sa.Column("request", sa.Text, nullable=False),  # "PATCH /odata/erp/..." or "create erp.T"
    sa.Column("needed", sa.String(200), nullable=False),  # "role writer", "licence accounts"
    sa.Column("reason", sa.Text, nullable=False),
)

#: one-off upgrades already made to this store (key -> when)
state_meta = sa.Table(
    "state_meta", _md,
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

parked = sa.Table(
    "parked", _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("map", sa.String(200), nullable=False),
    sa.Column("row_key", sa.Text, nullable=False),
    sa.Column("source", sa.String(10), nullable=False),  # "left" or "right"
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("role", sa.String(10), nullable=False),  # "blocker" or "waiting"
    sa.Column("error_id", sa.Integer, nullable=False, index=True),
    sa.Column("change", sa.Text, nullable=False),
    sa.Column("parked_at", sa.String(40), nullable=False),
    sa.UniqueConstraint("map", "source", "seq", name="uq_parked_change"),
)

conflicts = sa.Table(
    "conflicts", _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("map", sa.String(200), nullable=False, index=True),
    sa.Column("row_key", sa.Text, nullable=False),
    sa.Column("policy", sa.String(20), nullable=False),
    sa.Column("winner", sa.String(10), nullable=False),
    sa.Column("source", sa.String(10), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    # the incoming change's position in its source log: a conflict recorded again when its
    # change is delivered again (a crash before the target committed) is recorded once
    sa.Column("seq", sa.BigInteger, nullable=True),
    # row values kept after the conflict closed (capture.keep_conflict_values)
    sa.Column("kept", sa.Boolean, nullable=True),
)

events = sa.Table(
    "events", _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False, index=True),  # unix time
    sa.Column("map", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)

alerts = sa.Table(
    "alerts", _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("map", sa.String(200), nullable=False),
    sa.Column("rule", sa.String(200), nullable=False),
    sa.Column("action", sa.String(20), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    # the alert's life (see dualwrite.engine.monitor): ``at`` is when it last fired
    sa.Column("kind", sa.String(40), nullable=True),
    sa.Column("state", sa.String(20), nullable=True),  # firing, acknowledged, cleared
    sa.Column("first_at", sa.Float, nullable=True),
    sa.Column("fired", sa.Integer, nullable=True),
    sa.Column("acked_at", sa.Float, nullable=True),
    sa.Column("acked_by", sa.String(200), nullable=True),
    sa.Column("cleared_at", sa.Float, nullable=True),
)

map_activity = sa.Table(
    "map_activity", _md,
    sa.Column("map", sa.String(200), primary_key=True),
    sa.Column("last_applied_at", sa.String(40), nullable=False),
    sa.Column("applied", sa.BigInteger, nullable=False, default=0),
)


processes = sa.Table(
    "processes", _md,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("link", sa.String(200), nullable=False),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("role", sa.String(20), nullable=False),  # applier, standby, server
    sa.Column("started_at", sa.String(40), nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),  # unix time
    sa.Column("note", sa.Text, nullable=True),  # what it waits for, when it waits
)

#: The applier lease of each link (see dualwrite.engine.lease): who applies, until when, and
#: the epoch that fences every earlier holder out of the databases.
applier_leases = sa.Table(
    "applier_leases", _md,
    sa.Column("link", sa.String(200), primary_key=True),
    sa.Column("holder", sa.String(300), nullable=False),  # host:pid:nonce
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),  # unix time; 0: released
    sa.Column("acquired_at", sa.String(40), nullable=False),
)

#: one-way fields whose value on a row that initial sync created was filled by that side's own
#: column default (or trigger), not copied: the digest of the value it got (NULL until read
#: back after the write). Such a field is not written over the other side's value by a re-run
#: while it still holds that value (see docs/initial-sync.md). Digests, never the values:
#: the store keeps no business data beyond open inbox entries.
created_defaults = sa.Table(
    "created_defaults", _md,
    # the key digest before the side: reads and deletes ask for both sides' keys at once
    sa.Column("map", sa.String(200), primary_key=True),
    sa.Column("row_key", sa.String(64), primary_key=True),  # digest of the row's key
    sa.Column("side", sa.String(10), primary_key=True),  # the side the row was created on
    sa.Column("field", sa.String(200), primary_key=True),  # that side's column
    sa.Column("digest", sa.String(64), nullable=True),
)

#: the rows the chunk an initial sync is writing creates (key digests, per map and side),
#: until the values their own side filled in are read back into ``created_defaults``
sync_creating = sa.Table(
    "sync_creating", _md,
    sa.Column("map", sa.String(200), primary_key=True),
    sa.Column("side", sa.String(10), primary_key=True),
    sa.Column("key_digests", sa.Text, nullable=False),  # a JSON list
)

#: a process whose heartbeat is older than this many seconds is taken for dead
HEARTBEAT_TIMEOUT = 10.0


@dataclass
class _Pending:
    """A commit decision waiting for the group write."""

    xid: str
    participants: list[str]
    principal: str
    audit: list[AuditEntry]
    done: bool = False
    error: BaseException | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One committed write: who, where, which row, what."""

    environment: str
    table: str
    key: tuple[Any, ...]
    operation: str
    map: str | None = None


#: a conflict's detail once its row values are dropped
_NO_DETAIL = "{}"
_CONFLICT_VALUES_UPGRADE = "conflict row values kept while open only"
_SCHEMA_VERSION_KEY = "schema_version"

#: how long live writes may reuse the running maps and a principal's licences read earlier
CACHE_SECONDS = 1.0


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _tag(v: Any) -> Any:
    if isinstance(v, Decimal):
        return {"$d": str(v)}
    if isinstance(v, dt.datetime):
        return {"$dt": v.isoformat()}
    if isinstance(v, dt.date):
        return {"$date": v.isoformat()}
    if isinstance(v, dt.time):
        return {"$t": v.isoformat()}
    if isinstance(v, uuid.UUID):
        return {"$u": str(v)}
    if isinstance(v, bytes | memoryview):
        return {"$b": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, float) and v != v:
        return {"$nan": True}
    if isinstance(v, list):
        return [_tag(x) for x in v]
    return tag(v)  # dualwrite's own value types, addresses, durations


def _untag(v: Any) -> Any:
    if isinstance(v, list):
        return [_untag(x) for x in v]
    if isinstance(v, dict) and len(v) == 1:
        (k, x), = v.items()
        if k == "$d":
            return Decimal(x)
        if k == "$dt":
            return dt.datetime.fromisoformat(x)
        if k == "$date":
            return dt.date.fromisoformat(x)
        if k == "$t":
            return dt.time.fromisoformat(x)
        if k == "$u":
            return uuid.UUID(x)
        if k == "$b":
            return base64.b64decode(x)
        if k == "$nan":
            return float("nan")
        return untag(v)
    return v


def encode_values(values: Sequence[Any]) -> str:
    """JSON for a tuple of database values that decodes to the same types."""
    return json.dumps([_tag(v) for v in values], separators=(",", ":"))


def decode_values(text: str) -> tuple[Any, ...]:
    return tuple(_untag(v) for v in json.loads(text))


def _deep_tag(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _deep_tag(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_deep_tag(x) for x in v]
    return _tag(v)


def _deep_untag(v: Any) -> Any:
    if isinstance(v, dict):
        u = _untag(v)
        return u if u is not v else {k: _deep_untag(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_deep_untag(x) for x in v]
    return v


def encode_doc(doc: Any) -> str:
    """JSON for nested data holding database values, decoding to the same types."""
    return json.dumps(_deep_tag(doc), separators=(",", ":"))


def decode_doc(text: str) -> Any:
    return _deep_untag(json.loads(text))


def encode_row(row: dict[str, Any]) -> str:
    return json.dumps({k: _tag(v) for k, v in row.items()}, separators=(",", ":"))


def decode_row(text: str) -> dict[str, Any]:
    return {k: _untag(v) for k, v in json.loads(text).items()}


@dataclass(frozen=True)
class ParkedChange:
    """A captured change held in the state store behind an inbox entry: the ``blocker``
    (the change that failed, or met a conflict) or one ``waiting`` behind it."""

    id: int
    map: str
    key: tuple[Any, ...]  # the key it holds, as the left side has it
    source: str  # "left" or "right": the side it was captured on
    role: str
    change: dict[str, Any]


@dataclass
class InboxEntry:
    id: int
    map: str
    side: str
    key: tuple[Any, ...]
    operation: str
    reason: str
    payload: dict[str, Any] | None
    attempts: int
    first_at: str
    last_at: str
    status: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "map": self.map, "side": self.side, "key": list(self.key),
                "operation": self.operation, "reason": self.reason, "attempts": self.attempts,
                "first_at": self.first_at, "last_at": self.last_at, "status": self.status}


def _server_engine(url: str) -> sa.Engine:
    """The engine of a state store on a database server (PostgreSQL). A server that stops
    answering is not waited for without end (the connectors' timeouts and keepalives; the
    URL's query wins), and losing it is a TransientConnectorError of environment "state":
    the applier waits for it with backoff instead of exiting, and `serve` answers 503."""
    args: dict[str, Any] = {}
    if sa.engine.make_url(url).get_backend_name() == "postgresql":
        from dualwrite.connectors.postgresql import CONNECT_DEFAULTS

        args = {k: v for k, v in CONNECT_DEFAULTS.items()
                if k not in sa.engine.make_url(url).query}
    engine = sa.create_engine(url, pool_pre_ping=True, connect_args=args)

    @sa.event.listens_for(engine, "handle_error")
    def _unreachable(ctx: sa.engine.ExceptionContext) -> None:
        if ctx.is_disconnect or isinstance(ctx.sqlalchemy_exception, sa.exc.OperationalError):
            raise TransientConnectorError(
                f"the state store cannot be reached: "
                f"{' '.join(str(ctx.original_exception).split())[:300]}",
                hint="dualwrite retries; check the state store's server and `state:` in "
                "dualwrite.yaml", environment="state") from ctx.original_exception

    return engine


class StateStore:
    """Access to dualwrite's own tables. Every method is one short transaction."""

    def __init__(self, url: str, *, upgrade: bool = False) -> None:
        """Open the state store at ``url``: an empty one is made at the current schema
        version; one at an older version is refused (StateStoreOutdated) unless ``upgrade``
        (what `dualwrite state upgrade` does), one a newer dualwrite made is refused."""
        self.url = url
        #: (version found, version now) when this opening upgraded the store
        self.upgraded: tuple[int, int] | None = None
        database = (sa.engine.make_url(url).database or "") if url.startswith("sqlite") else ""
        in_file = database not in ("", ":memory:") and not database.startswith("file:")
        if in_file:
            try:
                private_sqlite_file(Path(database))
            except OSError as exc:
                raise TerminalConnectorError(
                    f"cannot open the state store {url!r}: {exc.strerror}",
                    hint="check `state:` in dualwrite.yaml; the folder must exist and be "
                    "writable", environment="state") from exc
        self.engine = create_sqlite_engine(url, wal=True) if url.startswith("sqlite") else \
            _server_engine(url)
        self._cv = threading.Condition()
        self._queue: list[_Pending] = []
        self._completed: list[str] = []
        self._writing = False
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
        # A state store in a SQLite file makes commit decisions durable in a journal beside
        # it (see dualwrite.engine.journal); other stores commit them directly.
        self._journal: DecisionJournal | None = None
        if in_file:
            self._journal = DecisionJournal(Path(database + ".decisions"),
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
            if self._journal is not None:
                self._journal.close()
            self.flush_completions()
        finally:
            self.engine.dispose()

    def settle(self) -> None:
        """Bring every journalled decision (this process's, and those of processes that are
        gone) into the state store's tables, so that reading them sees all of them."""
        if self._journal is not None:
            self._journal.drain()
            self._journal.adopt()

    # -- links -------------------------------------------------------------------------------
    def get_link(self, name: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(links).where(links.c.name == name)).first()
        return dict(row._mapping) if row else None

    def put_link(self, name: str, link_id: str, left: str, right: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(links).where(links.c.name == name))
            conn.execute(sa.insert(links).values(name=name, link_id=link_id, left_env=left,
                                                 right_env=right, created_at=now_iso()))

    def delete_link(self, name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(links).where(links.c.name == name))

    # -- checkpoints -------------------------------------------------------------------------
    def get_checkpoint(self, map_name: str, phase: str) -> tuple[tuple[Any, ...] | None,
                                                                  dict[str, Any]]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(checkpoints).where(
                checkpoints.c.map == map_name, checkpoints.c.phase == phase)).first()
        if row is None:
            return None, {}
        pos = decode_values(row.position) if row.position else None
        return pos, json.loads(row.stats)

    def put_checkpoint(self, map_name: str, phase: str, position: Sequence[Any] | None,
                       stats: dict[str, Any]) -> None:
        values = {"position": encode_values(position) if position is not None else None,
                  "stats": json.dumps(stats), "updated_at": now_iso()}
        with self.engine.begin() as conn:
            n = conn.execute(sa.update(checkpoints).where(
                checkpoints.c.map == map_name, checkpoints.c.phase == phase).values(**values))
            if n.rowcount == 0:
                conn.execute(sa.insert(checkpoints).values(map=map_name, phase=phase, **values))

    def clear_checkpoint(self, map_name: str, phase: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(checkpoints).where(
                checkpoints.c.map == map_name, checkpoints.c.phase == phase))

    # -- map status --------------------------------------------------------------------------
    def set_map_state(self, map_name: str, state: str, *, initial_synced: bool = False,
                      forget_synced: bool = False) -> None:
        """Set a map's state; ``initial_synced`` records that its initial sync just ended,
        ``forget_synced`` that it must run again (capture was removed)."""
        self._cache.pop("map_states", None)
        now = now_iso()
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(map_status).where(map_status.c.map == map_name)).first()
            synced = now if initial_synced else (row.initial_synced_at if row else None)
            version = row.version if row is not None else None
            if forget_synced:
                synced = version = None  # capture removed: no version is installed
            conn.execute(sa.delete(map_status).where(map_status.c.map == map_name))
            conn.execute(sa.insert(map_status).values(map=map_name, state=state,
                                                      initial_synced_at=synced, updated_at=now,
                                                      version=version))

    def record_map_version(self, map_name: str, version: str, definition: str,
                           file: str | None) -> None:
        """Keep the text of a map version (before capture is installed for it: a change
        captured under it must find it)."""
        with self.engine.begin() as conn:
            if conn.execute(sa.select(map_versions.c.version).where(
                    map_versions.c.map == map_name, map_versions.c.version == version)
                    ).first() is None:
                conn.execute(sa.insert(map_versions).values(
                    map=map_name, version=version, definition=definition, file=file,
                    installed_at=now_iso()))

    def install_map_version(self, map_name: str, version: str) -> None:
        """Record that capture of ``map_name`` is installed for ``version`` (recorded before):
        every process applies that version, whatever its own map file says."""
        self._cache.pop("map_states", None)
        with self.engine.begin() as conn:
            n = conn.execute(sa.update(map_status).where(map_status.c.map == map_name)
                             .values(version=version, updated_at=now_iso())).rowcount
            if not n:
                conn.execute(sa.insert(map_status).values(
                    map=map_name, state="stopped", initial_synced_at=None,
                    updated_at=now_iso(), version=version))

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
        return {n for n, st in self.recent_map_states(max_age).items() if st["state"] == "running"}

    def queued_maps(self, max_age: float = CACHE_SECONDS) -> set[str]:
        """Maps whose changes are captured but not mirrored synchronously (initializing,
        paused, resuming): a write through dualwrite to their tables must queue."""
        return {n for n, st in self.recent_map_states(max_age).items()
                if st["state"] in ("initializing", "paused", "resuming")}

    def recent_map_states(self, max_age: float = CACHE_SECONDS) -> dict[str, dict[str, Any]]:
        """Map states read at most ``max_age`` seconds ago (see :meth:`running_maps`)."""
        hit = self._cache.get("map_states")
        return hit[1] if hit and time.monotonic() - hit[0] < max_age else self.map_states()

    def note_applied(self, activity: dict[str, tuple[str, int]]) -> None:
        """Record when each map last applied a change, and how many it applied."""
        with self.engine.begin() as conn:
            for name, (at, n) in activity.items():
                row = conn.execute(sa.select(map_activity.c.applied).where(
                    map_activity.c.map == name)).first()
                if row is None:
                    conn.execute(sa.insert(map_activity).values(map=name, last_applied_at=at,
                                                                applied=n))
                else:
                    conn.execute(sa.update(map_activity).where(map_activity.c.map == name)
                                 .values(last_applied_at=at, applied=row.applied + n))

    def activity(self) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            return {r.map: dict(r._mapping) for r in conn.execute(sa.select(map_activity))}

    # -- processes -------------------------------------------------------------------------
    def register_process(self, link: str, role: str, note: str | None = None) -> str:
        """Record this process (host, pid, role) for ``status``; returns its id. Rows of
        processes gone for long are swept here."""
        import os
        import socket

        pid = str(uuid.uuid4())
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(sa.delete(processes).where(
                processes.c.heartbeat < now - 24 * 3600))
            conn.execute(sa.insert(processes).values(
                id=pid, link=link, host=socket.gethostname(), pid=os.getpid(), role=role,
                started_at=now_iso(), heartbeat=now, note=note))
        return pid

    def heartbeat(self, process_id: str, *, role: str | None = None,
                  note: str | None = None) -> None:
        """This process is alive (and now has ``role``, waits for ``note``)."""
        values: dict[str, Any] = {"heartbeat": time.time(), "note": note}
        if role is not None:
            values["role"] = role
        with self.engine.begin() as conn:
            conn.execute(sa.update(processes).where(processes.c.id == process_id)
                         .values(**values))

    def unregister_process(self, process_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(processes).where(processes.c.id == process_id))

    def processes(self, link: str) -> list[dict[str, Any]]:
        """The processes of ``link``, each with ``alive`` (a heartbeat within
        HEARTBEAT_TIMEOUT seconds) and ``heartbeat_age`` in seconds."""
        now = time.time()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(processes).where(processes.c.link == link)
                                .order_by(processes.c.started_at)).all()
        return [{"id": r.id, "host": r.host, "pid": r.pid, "role": r.role,
                 "started_at": r.started_at, "heartbeat_age": round(now - r.heartbeat, 1),
                 "alive": now - r.heartbeat <= HEARTBEAT_TIMEOUT, "note": r.note}
                for r in rows]

    # -- parked changes (capture) --------------------------------------------------------------
    def park_error(self, map_name: str, env: str, source: str, key: Sequence[Any], op: str,
                   kind: str, reason: str, change: dict[str, Any],
                   extra: dict[str, Any]) -> int:
        """Put a change that could not be applied in the inbox and park its key: later
        changes to it wait (see :meth:`park_waiting`). Idempotent for one change."""
        operation = "conflict" if kind == "conflict" else \
            {"I": "create", "U": "update", "D": "delete"}.get(op, op)
        self.add_error(map_name, env, key, operation, reason,
                       {"kind": kind, "source": source, "change": encode_doc(change),
                        "extra": encode_doc(extra)})
        k = encode_values(key)
        with self.engine.begin() as conn:
            entry = conn.execute(sa.select(error_inbox.c.id).where(
                error_inbox.c.map == map_name, error_inbox.c.side == env,
                error_inbox.c.row_key == k, error_inbox.c.operation == operation)).scalar_one()
            self._park(conn, map_name, k, source, change, "blocker", entry)
        return int(entry)

    def park_waiting(self, map_name: str, source: str, key: Sequence[Any],
                     change: dict[str, Any], entry: int | None = None) -> None:
        """Park a change behind inbox entry ``entry`` (the rest of a parked source
        transaction), or else behind the entry that holds its key: the open one, or the latest
        one released and not settled yet."""
        k = encode_values(key)
        with self.engine.begin() as conn:
            if entry is None:
                entry = conn.execute(
                    sa.select(parked.c.error_id).join(error_inbox, error_inbox.c.id ==
                                                      parked.c.error_id)
                    .where(parked.c.map == map_name, parked.c.row_key == k,
                           error_inbox.c.status == "open").limit(1)).scalar()
            if entry is None:
                entry = conn.execute(sa.select(sa.func.max(parked.c.error_id)).where(
                    parked.c.map == map_name, parked.c.row_key == k)).scalar() or 0
            self._park(conn, map_name, k, source, change, "waiting", int(entry))

    @staticmethod
    def _park(conn: sa.Connection, map_name: str, k: str, source: str,
              change: dict[str, Any], role: str, entry: int) -> None:
        seq = int(change["seq"])
        found = conn.execute(sa.select(parked.c.id, parked.c.role).where(
            parked.c.map == map_name, parked.c.source == source, parked.c.seq == seq)).first()
        if found:
            # delivered again (a crash before the target committed): a change that blocks
            # its key keeps blocking it, it does not wait behind itself
            if found.role == "blocker" and role == "waiting":
                return
            conn.execute(sa.update(parked).where(parked.c.id == found.id).values(
                error_id=entry, role=role))
        else:
            conn.execute(sa.insert(parked).values(
                map=map_name, row_key=k, source=source, seq=seq, role=role, error_id=entry,
                change=encode_doc(change), parked_at=now_iso()))

    def drop_parked(self, map_name: str) -> int:
        """Forget the changes parked for a map (it was stopped: its next start syncs it
        again). Their inbox entries stay, for the record."""
        with self.engine.begin() as conn:
            return int(conn.execute(sa.delete(parked).where(parked.c.map == map_name)).rowcount)

    def parked_keys(self) -> set[tuple[str, tuple[Any, ...]]]:
        """(map, canonical key) of every key held by a parked change: behind an open inbox
        entry, or behind one that was retried, discarded or resolved and that the applier has
        not settled yet (a later change must not overtake what it settles)."""
        from dualwrite.model.values import canonical

        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(parked.c.map, parked.c.row_key).distinct()).all()
        return {(r.map, tuple(canonical(v) for v in decode_values(r.row_key))) for r in rows}

    def parked_count(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(parked.c.map, sa.func.count())
                                .group_by(parked.c.map)).all()
        return {str(r[0]): int(r[1]) for r in rows}

    def released_parks(self) -> list[tuple[InboxEntry, list[ParkedChange]]]:
        """Inbox entries that were retried, discarded or resolved and still hold parked
        changes, oldest first, each with its parked changes in parking order."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(parked).join(error_inbox, error_inbox.c.id == parked.c.error_id)
                .where(error_inbox.c.status.in_(("retry", "discarded", "resolved")))
                .order_by(parked.c.error_id, parked.c.id)).all()
        out: dict[int, list[ParkedChange]] = {}
        for r in rows:
            out.setdefault(int(r.error_id), []).append(ParkedChange(
                int(r.id), r.map, decode_values(r.row_key), r.source, r.role,
                decode_doc(r.change)))
        return [(self.get_error(entry_id), items) for entry_id, items in out.items()]

    def finish_release(self, error_id: int, parked_ids: Sequence[int] | None = None) -> None:
        """Drop the given parked changes of a released entry (None: all of them): they were
        settled. (Changes parked behind it meanwhile stay, for the next round.) A retried
        entry is then resolved; one that failed again was reopened and keeps its changes."""
        with self.engine.begin() as conn:
            status = conn.execute(sa.select(error_inbox.c.status).where(
                error_inbox.c.id == error_id)).scalar()
            if status == "open":
                return
            if parked_ids is None:
                conn.execute(sa.delete(parked).where(parked.c.error_id == error_id))
            ids = list(parked_ids or ())
            for i in range(0, len(ids), 500):
                conn.execute(sa.delete(parked).where(parked.c.id.in_(ids[i:i + 500])))
            if status == "retry":
                conn.execute(sa.update(error_inbox).where(error_inbox.c.id == error_id)
                             .values(status="resolved", last_at=now_iso()))
                self._forget_closed_entry(conn, error_id)

    def add_conflict(self, map_name: str, key: Sequence[Any], policy: str, winner: str,
                     source: str, incoming: dict[str, Any], target: dict[str, Any] | None,
                     theirs: Sequence[dict[str, Any]] = (), *, keep: bool = False) -> None:
        """Record a conflict: the ``incoming`` change from ``source``, the target's row and
        its own changes it met (``theirs``), and who won; once per incoming change. Its row
        values are kept only while it is open, that is for a manual one (``winner``
        "manual") until its inbox entry closes (:meth:`_forget_conflict_values`), unless
        ``keep`` (``capture.keep_conflict_values``: an operator's audit trail); one a policy
        settled keeps none."""
        detail = {"incoming": incoming, "target": target, "theirs": list(theirs)} \
            if winner == "manual" or keep else {}
        with self.engine.begin() as conn:
            seq = incoming.get("seq")
            if seq is not None and conn.execute(sa.select(conflicts.c.id).where(
                    conflicts.c.map == map_name, conflicts.c.source == source,
                    conflicts.c.seq == int(seq),
                    conflicts.c.row_key == encode_values(key))).first() is not None:
                return
            conn.execute(sa.insert(conflicts).values(
                at=now_iso(), map=map_name, row_key=encode_values(key), policy=policy,
                winner=winner, source=source, seq=seq, kept=keep or None,
                detail=encode_doc(detail)))

    @staticmethod
    def _forget_conflict_values(conn: sa.Connection, map_name: str, row_key: str) -> None:
        """Drop the row values of a key's conflicts once no conflict inbox entry of it is
        open: the store keeps business data only for open entries (and those an operator
        asked to keep)."""
        still_open = conn.execute(sa.select(error_inbox.c.id).where(
            error_inbox.c.map == map_name, error_inbox.c.row_key == row_key,
            error_inbox.c.operation == "conflict", error_inbox.c.status == "open")
            .limit(1)).first()
        if still_open is None:
            conn.execute(sa.update(conflicts).where(
                conflicts.c.map == map_name, conflicts.c.row_key == row_key,
                conflicts.c.detail != _NO_DETAIL, conflicts.c.kept.is_not(True))
                .values(detail=_NO_DETAIL))

    def _forget_closed_entry(self, conn: sa.Connection, error_id: int) -> None:
        row = conn.execute(sa.select(error_inbox.c.map, error_inbox.c.row_key,
                                     error_inbox.c.operation, error_inbox.c.status).where(
            error_inbox.c.id == error_id)).first()
        if row is not None and row.operation == "conflict" and \
                row.status in ("resolved", "discarded"):
            self._forget_conflict_values(conn, row.map, row.row_key)

    def conflicts(self, map_name: str | None = None, limit: int = 1000, *,
                  conflict_id: int | None = None) -> list[dict[str, Any]]:
        """The latest conflicts, newest first; an open one also with its row values
        (``incoming``, ``target``, ``theirs``)."""
        stmt = sa.select(conflicts).order_by(conflicts.c.id.desc()).limit(limit)
        if map_name:
            stmt = stmt.where(conflicts.c.map == map_name)
        if conflict_id is not None:
            stmt = stmt.where(conflicts.c.id == conflict_id)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [{"id": r.id, "at": r.at, "map": r.map, "key": list(decode_values(r.row_key)),
                 "policy": r.policy, "winner": r.winner, "source": r.source,
                 **decode_doc(r.detail)} for r in rows]

    def conflict_counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(conflicts.c.map, sa.func.count())
                                .group_by(conflicts.c.map)).all()
        return {str(r[0]): int(r[1]) for r in rows}

    # -- events and alerts ---------------------------------------------------------------------
    def add_event(self, map_name: str, kind: str, message: str, at: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.insert(events).values(at=at, map=map_name, kind=kind,
                                                  message=message[:2000]))

    def count_events(self, map_name: str | None, kinds: Sequence[str] | None, since: float
                     ) -> int:
        stmt = sa.select(sa.func.count()).select_from(events).where(events.c.at >= since)
        if map_name:
            stmt = stmt.where(events.c.map == map_name)
        if kinds:
            stmt = stmt.where(events.c.kind.in_(list(kinds)))
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar() or 0)

    def last_events(self, kind: str) -> dict[str, tuple[float, str]]:
        """Per map, the time and message of its latest event of ``kind``."""
        latest = sa.select(events.c.map, sa.func.max(events.c.id).label("id")).where(
            events.c.kind == kind).group_by(events.c.map).subquery()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(events.c.map, events.c.at, events.c.message)
                                .join(latest, latest.c.id == events.c.id)).all()
        return {str(r.map): (float(r.at), str(r.message)) for r in rows}

    def add_alert(self, map_name: str, rule: str, action: str, message: str, at: float, *,
                  kind: str | None = None) -> None:
        """Record that ``rule`` fired on ``map_name``: the alert of that rule and map that is
        not cleared yet fires again (its state kept: acknowledged stays acknowledged), else a
        new alert starts, firing."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(alerts.c.id, alerts.c.fired).where(
                alerts.c.map == map_name, alerts.c.rule == rule,
                sa.func.coalesce(alerts.c.state, "firing") != "cleared")
                .order_by(alerts.c.id.desc()).limit(1)).first()
            if row is not None:
                conn.execute(sa.update(alerts).where(alerts.c.id == row.id).values(
                    at=at, action=action, message=message, fired=(row.fired or 1) + 1))
                return
            conn.execute(sa.insert(alerts).values(at=at, map=map_name, rule=rule,
                                                  action=action, message=message, kind=kind,
                                                  state="firing", first_at=at, fired=1))

    def last_alert(self, map_name: str, rule: str) -> float | None:
        with self.engine.connect() as conn:
            v = conn.execute(sa.select(sa.func.max(alerts.c.at)).where(
                alerts.c.map == map_name, alerts.c.rule == rule)).scalar()
        return float(v) if v is not None else None

    def alerts(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(alerts).order_by(alerts.c.id.desc()).limit(limit))
            return [dict(r._mapping) for r in rows]

    # -- two-phase commit decisions and the audit log ------------------------------------------
    def log_commit_decision(self, xid: str, participants: Sequence[str], principal: str,
                            audit: Sequence[AuditEntry]) -> None:
        """Record, durably, that ``xid`` commits, with its audit rows; returns once they are
        on disk.

        Called after every branch is prepared and before the first is committed: from here on
        recovery commits the branches. A crash before this point leaves no decision, and
        recovery rolls the branches back (presumed abort).

        Group commit: concurrent callers are written together in one write (one flush for
        all of them: a journal record, or a state-store transaction where there is no
        journal); the first caller to arrive writes for everyone queued, the others wait for
        it. Completions noted with :meth:`complete` ride along with the state-store write
        (with the journal's drain, when decisions are journalled)."""
        item = _Pending(xid, list(participants), principal, list(audit))
        with self._cv:
            self._queue.append(item)
            while not item.done:
                if self._writing:
                    self._cv.wait()
                    continue
                self._writing = True
                batch, self._queue = self._queue, []
                completed: list[str] = []
                if self._journal is None:  # journalled, they go with the drain instead
                    completed, self._completed = self._completed, []
                self._cv.release()
                error: BaseException | None = None
                try:
                    self._write_decisions(batch, completed)
                except BaseException as exc:  # every waiter of this batch gets the error
                    error = exc
                finally:
                    self._cv.acquire()
                    self._writing = False
                    for p in batch:
                        p.done, p.error = True, error
                    if error is not None:
                        self._completed = completed + self._completed
                    self._cv.notify_all()
        if item.error is not None:
            raise item.error

    def _write_decisions(self, batch: list[_Pending], completed: list[str]) -> None:
        now = now_iso()
        if self._journal is not None:
            self._journal.append({"at": now, "decisions": [
                [p.xid, p.participants, p.principal,
                 [[a.environment, a.table, encode_values(a.key), a.operation, a.map]
                  for a in p.audit]] for p in batch]})
            return
        if self.engine.dialect.name == "sqlite":
            self._write_decisions_sqlite(
                [(p.xid, json.dumps(p.participants), now) for p in batch],
                [(now, p.xid, p.principal, a.environment, a.table, encode_values(a.key),
                  a.operation, a.map) for p in batch for a in p.audit], completed, now)
            return
        with self.engine.begin() as conn:
            conn.execute(sa.insert(coordinator_log), [
                {"xid": p.xid, "decision": "commit", "participants": json.dumps(p.participants),
                 "decided_at": now} for p in batch])
            audit_rows = [
                {"at": now, "xid": p.xid, "principal": p.principal, "environment": a.environment,
                 "table_name": a.table, "row_key": encode_values(a.key),
                 "operation": a.operation, "map": a.map}
                for p in batch for a in p.audit]
            if audit_rows:
                conn.execute(sa.insert(audit_log), audit_rows)
            if completed:
                conn.execute(sa.update(coordinator_log).where(
                    coordinator_log.c.xid.in_(completed)).values(completed_at=now))

    def _import_journalled(self, payloads: list[Any]) -> None:
        """The journal's sink: its records into coordinator_log and audit_log, with the
        completions noted since, in one transaction; decisions already here are skipped (an
        import that crashed before deleting its file is repeated)."""
        decisions = [(at, d) for p in payloads for at in [p["at"]] for d in p["decisions"]]
        with self._cv:
            completed, self._completed = self._completed, []
        try:
            present: set[str] = set()
            xids = [d[0] for _, d in decisions]
            with self.engine.connect() as conn:
                for i in range(0, len(xids), 500):
                    present.update(conn.execute(sa.select(coordinator_log.c.xid).where(
                        coordinator_log.c.xid.in_(xids[i:i + 500]))).scalars())
            fresh = [(at, d) for at, d in decisions if d[0] not in present]
            self._write_decisions_sqlite(
                [(d[0], json.dumps(d[1]), at) for at, d in fresh],
                [(at, d[0], d[2], *a) for at, d in fresh for a in d[3]], completed, now_iso())
        except BaseException:
            with self._cv:
                self._completed = completed + self._completed
            raise

    def _write_decisions_sqlite(self, decisions: list[tuple[str, str, str]],
                                rows: list[tuple[Any, ...]], completed: list[str],
                                now: str) -> None:
        # Plain DB-API calls on a pooled connection, one transaction, one fsync (WAL,
        # synchronous=FULL).
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            if decisions:
                cur.executemany(
                    "INSERT INTO coordinator_log (xid, decision, participants, decided_at) "
                    "VALUES (?, 'commit', ?, ?)", decisions)
            if rows:
                cur.executemany(
                    "INSERT INTO audit_log (at, xid, principal, environment, table_name, "
                    "row_key, operation, map) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            if completed:
                cur.executemany("UPDATE coordinator_log SET completed_at = ? WHERE xid = ?",
                                [(now, x) for x in completed])
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            raw.close()

    def decision(self, xid: str) -> str | None:
        self.settle()
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(coordinator_log.c.decision).where(
                coordinator_log.c.xid == xid)).first()
        return str(row[0]) if row else None

    def complete(self, xid: str, *, now: bool = False) -> None:
        """Note that every branch of ``xid`` is committed. Written with the next decision
        batch (no write of its own on the hot path) unless ``now``."""
        if not now:
            with self._cv:
                self._completed.append(xid)
            return
        with self.engine.begin() as conn:
            conn.execute(sa.update(coordinator_log).where(coordinator_log.c.xid == xid)
                         .values(completed_at=now_iso()))

    def flush_completions(self) -> None:
        if self._journal is not None and self._journal.pending:
            self._journal.drain()  # completions go with their decisions
        with self._cv:
            completed, self._completed = self._completed, []
        if completed:
            with self.engine.begin() as conn:
                conn.execute(sa.update(coordinator_log).where(
                    coordinator_log.c.xid.in_(completed)).values(completed_at=now_iso()))

    def incomplete_decisions(self) -> list[str]:
        self.settle()
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(coordinator_log.c.xid).where(
                coordinator_log.c.completed_at.is_(None)))]

    def audit(self, limit: int = 1000) -> list[dict[str, Any]]:
        self.settle()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.id.desc())
                                .limit(limit)).all()
        return [{**dict(r._mapping), "row_key": list(decode_values(r.row_key))} for r in rows]

    # -- principals and tokens ---------------------------------------------------------------
    def grant(self, name: str, roles: Sequence[str], licences: Sequence[str]) -> None:
        """Add roles and licences to a principal (creating it)."""
        self._cache.pop(("principal", name), None)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(principals).where(principals.c.name == name)).first()
            old_roles = set(json.loads(row.roles)) if row else set()
            old_lic = set(json.loads(row.licences)) if row else set()
            values = {"roles": json.dumps(sorted(old_roles | set(roles))),
                      "licences": json.dumps(sorted(old_lic | set(licences)))}
            if row:
                conn.execute(sa.update(principals).where(principals.c.name == name)
                             .values(**values))
            else:
                conn.execute(sa.insert(principals).values(name=name, **values))

    def principal(self, name: str, max_age: float = 0.0
                  ) -> tuple[frozenset[str], frozenset[str]]:
        """(roles, licences) of a principal; empty for one never granted anything. With
        ``max_age``, an answer read that recently may be reused."""
        hit = self._cache.get(("principal", name))
        if hit and time.monotonic() - hit[0] < max_age:
            return hit[1]  # type: ignore[no-any-return]
        got = self._read_principal(name)
        self._cache[("principal", name)] = (time.monotonic(), got)
        return got

    def _read_principal(self, name: str) -> tuple[frozenset[str], frozenset[str]]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(principals).where(principals.c.name == name)).first()
        if row is None:
            return frozenset(), frozenset()
        return frozenset(json.loads(row.roles)), frozenset(json.loads(row.licences))

    def add_token(self, token_id: str, principal: str, token_hash: str, *, role: str,
                  licences: Sequence[str] | None) -> None:
        """Store a token's hash with its role and its own licences (None: the principal's,
        whatever they are when it is used)."""
        with self.engine.begin() as conn:
            conn.execute(sa.insert(tokens).values(
                id=token_id, principal=principal, token_hash=token_hash, created_at=now_iso(),
                role=role, licences=None if licences is None else json.dumps(sorted(licences))))

    def token(self, token_hash: str, max_age: float = 0.0) -> dict[str, Any] | None:
        """``{"id", "principal", "role", "licences"}`` of an unrevoked token (role and
        licences None where the token has none of its own), or None. With ``max_age``, a
        valid answer read that recently may be reused (a revocation made by this store clears
        them at once)."""
        hit = self._cache.get(("token", token_hash))
        if hit and time.monotonic() - hit[0] < max_age:
            return hit[1]  # type: ignore[no-any-return]
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tokens.c.id, tokens.c.principal, tokens.c.role,
                                         tokens.c.licences).where(
                tokens.c.token_hash == token_hash, tokens.c.revoked_at.is_(None))).first()
        if row is None:  # not cached: a token created elsewhere must not wait for a stale "no"
            return None
        got = {"id": row.id, "principal": row.principal, "role": row.role,
               "licences": None if row.licences is None
               else frozenset(json.loads(row.licences))}
        self._cache[("token", token_hash)] = (time.monotonic(), got)
        return got

    def list_tokens(self) -> list[dict[str, Any]]:
        """Every token (never the token itself): id, principal, role and licences of its own
        (None where it has none), created, revoked."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(tokens.c.id, tokens.c.principal, tokens.c.role,
                                          tokens.c.licences, tokens.c.created_at,
                                          tokens.c.revoked_at).order_by(tokens.c.created_at))
            out = [dict(r._mapping) for r in rows]
        for r in out:
            r["licences"] = None if r["licences"] is None else json.loads(r["licences"])
        return out

    def revoke_token(self, token_id: str) -> bool:
        with self.engine.begin() as conn:
            n = conn.execute(sa.update(tokens).where(tokens.c.id == token_id,
                                                     tokens.c.revoked_at.is_(None))
                             .values(revoked_at=now_iso()))
        for k in [k for k in self._cache if isinstance(k, tuple) and k[0] == "token"]:
            self._cache.pop(k, None)
        return n.rowcount > 0

    def add_refusal(self, principal: str, request: str, needed: str, reason: str, *,
                    token_id: str | None = None, environment: str | None = None) -> None:
        """Audit a refused request: who, with which token, what was asked, what it lacked."""
        with self.engine.begin() as conn:
            conn.execute(sa.insert(refusals).values(
                at=now_iso(), principal=principal, token_id=token_id, environment=environment,
                request=request[:2000], needed=needed, reason=reason[:2000]))

    def refusals(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The latest refused requests, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(refusals).order_by(refusals.c.id.desc())
                                .limit(limit)).all()
        return [dict(r._mapping) for r in rows]

    # -- one-way fields filled by a created row's own defaults ----------------------------
    def note_created_defaults(self, map_name: str, side: str,
                              rows: Sequence[tuple[str, Mapping[str, str | None]]]) -> None:
        """Record, per created row (the digest of its key), the digest of each one-way field
        its side filled itself (None: not read back yet). A repeat replaces the earlier
        record."""
        if not rows:
            return
        records = [{"map": map_name, "side": side, "row_key": key_text, "field": f,
                    "digest": d} for key_text, fields in rows for f, d in fields.items()]
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(created_defaults), records)
            return
        except sa.exc.IntegrityError:
            pass  # some rows were created before (deleted and created again): replace those
        by_field: dict[str, list[str]] = {}
        for key_text, fields in rows:
            for f in fields:
                by_field.setdefault(f, []).append(key_text)
        with self.engine.begin() as conn:
            for f, keys in by_field.items():
                for i in range(0, len(keys), 900):  # below every database's parameter limit
                    conn.execute(sa.delete(created_defaults).where(
                        created_defaults.c.map == map_name,
                        created_defaults.c.row_key.in_(keys[i:i + 900]),
                        created_defaults.c.side == side, created_defaults.c.field == f))
            conn.execute(sa.insert(created_defaults), records)

    def created_defaults(self, map_name: str, keys: Sequence[str]
                         ) -> dict[tuple[str, str], dict[str, str | None]]:
        """(side, key digest) -> {column: digest} for the given key digests."""
        out: dict[tuple[str, str], dict[str, str | None]] = {}
        wanted = list(dict.fromkeys(keys))
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), 900):  # below every database's parameter limit
                for side, row_key, f, d in conn.execute(sa.select(
                        created_defaults.c.side, created_defaults.c.row_key,
                        created_defaults.c.field, created_defaults.c.digest).where(
                        created_defaults.c.map == map_name,
                        created_defaults.c.row_key.in_(wanted[i:i + 900]))):
                    out.setdefault((side, row_key), {})[f] = d
        return out

    def put_creating(self, map_name: str, sides: Mapping[str, Sequence[str]]) -> None:
        """Name the rows (key digests per side) the chunk about to be written creates,
        replacing what an earlier chunk named."""
        with self.engine.begin() as conn:
            conn.execute(sa.delete(sync_creating).where(sync_creating.c.map == map_name))
            conn.execute(sa.insert(sync_creating), [
                {"map": map_name, "side": side, "key_digests": json.dumps(list(keys))}
                for side, keys in sides.items()])

    def creating(self, map_name: str) -> dict[str, set[str]]:
        """What :meth:`put_creating` last named for the map (nothing once cleared)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(sync_creating.c.side, sync_creating.c.key_digests).where(
                sync_creating.c.map == map_name)).all()
        return {side: set(json.loads(keys)) for side, keys in rows}

    def clear_creating(self, map_name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(sync_creating).where(sync_creating.c.map == map_name))

    def forget_created_defaults(self, map_name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(created_defaults).where(created_defaults.c.map == map_name))

    # -- error inbox -------------------------------------------------------------------------
    def add_error(self, map_name: str, side: str, key: Sequence[Any], operation: str,
                  reason: str, payload: dict[str, Any] | None = None) -> None:
        """Record a failed row; a repeat of the same (map, side, key, operation) bumps
        ``attempts`` and ``last_at`` instead of adding a duplicate."""
        k = encode_values(key)
        now = now_iso()
        body = encode_row(payload) if payload is not None else None
        with self.engine.begin() as conn:
            existing = conn.execute(sa.select(error_inbox.c.id, error_inbox.c.attempts).where(
                error_inbox.c.map == map_name, error_inbox.c.side == side,
                error_inbox.c.row_key == k, error_inbox.c.operation == operation)).first()
            if existing:
                conn.execute(sa.update(error_inbox).where(error_inbox.c.id == existing.id).values(
                    attempts=existing.attempts + 1, last_at=now, reason=reason, payload=body,
                    status="open"))
            else:
                conn.execute(sa.insert(error_inbox).values(
                    map=map_name, side=side, row_key=k, operation=operation, reason=reason,
                    payload=body, attempts=1, first_at=now, last_at=now, status="open"))

    def errors(self, map_name: str | None = None, status: str | None = "open", *,
               error_id: int | None = None) -> list[InboxEntry]:
        stmt = sa.select(error_inbox).order_by(error_inbox.c.id)
        if error_id is not None:
            stmt = stmt.where(error_inbox.c.id == error_id)
        if map_name:
            stmt = stmt.where(error_inbox.c.map == map_name)
        if status:
            stmt = stmt.where(error_inbox.c.status == status)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [InboxEntry(r.id, r.map, r.side, decode_values(r.row_key), r.operation, r.reason,
                           decode_row(r.payload) if r.payload else None, r.attempts, r.first_at,
                           r.last_at, r.status) for r in rows]

    def get_error(self, error_id: int) -> InboxEntry:
        for e in self.errors(status=None, error_id=error_id):
            return e
        raise DualwriteError(f"no error with id {error_id} in the inbox",
                             hint="list them with `dualwrite errors list`")

    def resolve_error(self, error_id: int, status: str, *, pick: str | None = None) -> None:
        """Set an entry's status (``retry``, ``discarded``, ``resolved``); ``pick`` records the
        side a conflict was resolved for (the applier settles the entry with it)."""
        with self.engine.begin() as conn:
            values: dict[str, Any] = {"status": status, "last_at": now_iso()}
            if pick is not None:
                body = conn.execute(sa.select(error_inbox.c.payload).where(
                    error_inbox.c.id == error_id)).scalar()
                payload = decode_row(body) if body else {}
                payload["pick"] = pick
                values["payload"] = encode_row(payload)
            conn.execute(sa.update(error_inbox).where(error_inbox.c.id == error_id)
                         .values(**values))
            self._forget_closed_entry(conn, error_id)

    def clear_errors(self, map_name: str, side: str, key: Sequence[Any]) -> None:
        """A row that now syncs cleanly closes its open inbox entries."""
        with self.engine.begin() as conn:
            n = conn.execute(sa.update(error_inbox).where(
                error_inbox.c.map == map_name, error_inbox.c.side == side,
                error_inbox.c.row_key == encode_values(key),
                error_inbox.c.status == "open").values(status="resolved", last_at=now_iso()))
            if n.rowcount:
                self._forget_conflict_values(conn, map_name, encode_values(key))
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


