"""Shared fixtures: the backends of ``dualwrite.testing.backends`` (real databases and the
memory fake), one :class:`Backend` per database a test asks for.

A database that is down FAILS the test with the command that starts it; nothing is skipped.
Tests choose backends by what they need (``backends(needs=...)``, ``pairs(needs=...)``),
never by lists of names: a backend added to the registry runs through every test it can.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dualwrite.connectors import connect
from dualwrite.connectors.base import Connector
from dualwrite.connectors.memory import MemoryConnector
from dualwrite.connectors.sql import SqlConnector, kind_of
from dualwrite.engine.live import xid_prefix
from dualwrite.model.schema import Column, ForeignKey, TableSchema
from dualwrite.testing import Harness
from dualwrite.testing.backends import PG_URL as PG_URL  # re-exported for tests
from dualwrite.testing.backends import backends, pairs, spec

from faultproxy import FaultProxy

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="run soak and long fault-injection loops at full size")


@pytest.fixture(scope="session")
def long_run(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--long"))


def shared_path(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.fail(f"reference data {p} is missing: the `shared` folder must sit beside the "
                    "checkout", pytrace=False)
    return p


def guid_default(dialect: str) -> Any:
    """A server-side GUID default, as CRM primary keys have."""
    return sa.text({
        "sqlite": "(lower(hex(randomblob(16))))",
        "postgresql": "(gen_random_uuid()::text)",
        "mysql": "(uuid())",
    }[dialect])


def schema_of(table: sa.Table) -> TableSchema:
    """The TableSchema a SQL connector would reflect for ``table`` (for the memory fake)."""
    pk = tuple(c.name for c in table.primary_key.columns)
    cols = {c.name: Column(c.name, kind_of(c.type), bool(c.nullable),
                           c.server_default is not None or (
                               c.autoincrement is True or (c.primary_key and len(pk) == 1 and
                                                           kind_of(c.type).value == "integer")),
                           c.primary_key, getattr(c.type, "length", None)) for c in table.columns}
    fks = [ForeignKey(tuple(e.parent.name for e in fk.elements), fk.referred_table.name,
                      tuple(e.column.name for e in fk.elements))
           for fk in table.foreign_key_constraints]
    uniques = [tuple(c.name for c in u.columns) for u in table.constraints
               if isinstance(u, sa.UniqueConstraint)]
    return TableSchema(table.name, cols, pk, fks, uniques)


class Backend(Harness):
    """One database for a test: its URL, a connector, and DDL helpers (and the harness of
    the connector compliance suite, dualwrite.testing)."""

    def __init__(self, kind: str, url: str, connector: Connector) -> None:
        super().__init__(connector)
        self.kind = kind
        self.url = url
        self._app: sa.Engine | None = None
        self.spec = spec(kind)
        self.enforces = self.spec.enforces

    def guid_default(self) -> Any:
        return guid_default(self.dialect)

    def reopen(self) -> Connector:
        return connect(self.connector.name, self.url)

    @property
    def dialect(self) -> str:
        """The SQLAlchemy dialect of its DDL (the memory fake: SQLite's)."""
        return self.spec.dialect

    def create(self, metadata: sa.MetaData) -> None:
        """Create the tables of ``metadata`` (dropping same-named ones first)."""
        if isinstance(self.connector, MemoryConnector):
            for t in metadata.sorted_tables:
                self.connector.create_table(schema_of(t))
            return
        assert isinstance(self.connector, SqlConnector)
        self.clear_prepared()
        engine = self.connector.engine
        existing = sa.MetaData()
        with warnings.catch_warnings():
            # SQLAlchemy's MySQL reflection reads every table's DDL and does not know the
            # PERIOD clause of dualwrite's (system-versioned) change log
            warnings.filterwarnings("ignore", "Unknown schema content", sa.exc.SAWarning)
            with self.connector.catalog_connection() as conn:
                existing.reflect(conn, only=[t.name for t in metadata.sorted_tables
                                             if sa.inspect(conn).has_table(t.name)])
        existing.drop_all(engine)
        metadata.drop_all(engine)
        # a change log left by an earlier test would be applied to this one's tables
        with engine.begin() as conn:
            for own in ("dualwrite_changes", "dualwrite_applied", "dualwrite_origin"):
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {own}")
        metadata.create_all(engine)
        self.connector.forget_schema()
        if self.connector._capture is not None:
            self.connector._capture._ready = False

    def app(self) -> sa.Engine:
        """An engine like the application's own: its writes are captured (dualwrite's own
        connections are marked so that they are not)."""
        if self._app is None:
            self._app = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        return self._app

    def app_sql(self, statement: str, params: dict[str, Any] | list[dict[str, Any]] | None = None
                ) -> None:
        """Run one statement as the application would, in its own transaction."""
        with self.app().begin() as conn:
            conn.execute(sa.text(statement), params or {})

    def clear_prepared(self) -> None:
        """Roll back prepared branches an earlier, failed test left: they hold locks that
        would make DROP TABLE wait forever. PostgreSQL lists this database's branches only;
        MariaDB's XA RECOVER lists the whole server's, so there only the branches of links
        this process recorded in its own databases are touched: another worker's or another
        checkout's are none of this test's business (and one still in flight cannot be
        finished from here anyway: XAER_NOTA)."""
        if self.spec.recover_lists_server:
            remember_link(self.connector)
            prefixes = tuple(_OWN_LINKS)
        else:
            prefixes = ("dw-",)
        if not prefixes:
            return
        for xid in self.connector.recover("dw-"):
            if xid.startswith(prefixes):
                self.connector.finish_prepared(xid, commit=False)

    def quote(self, name: str) -> str:
        """``name`` as an identifier of this database's SQL (always quoted), whatever it
        holds."""
        assert isinstance(self.connector, SqlConnector)
        return self.connector.engine.dialect.identifier_preparer.quote_identifier(name)

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        assert isinstance(self.connector, SqlConnector)
        return self.connector.execute(statement)


#: xid prefixes of the links recorded in this process's MariaDB test databases
_OWN_LINKS: set[str] = set()


def remember_link(connector: Connector) -> None:
    """Note the link recorded in ``connector``'s database (see ``Backend.clear_prepared``)."""
    with contextlib.suppress(Exception):
        record = connector.get_link()
        if record is not None:
            _OWN_LINKS.add(xid_prefix(record.link_id))


def database_url(kind: str, name: str) -> str:
    """The URL of this process's test database ``name`` of backend ``kind`` (a server's),
    which is made sure to be up and to hold that database."""
    return spec(kind).url(name, Path("."))


def _make(kind: str, db: str, tmp_path: Path) -> Backend:
    url = spec(kind).url(db, tmp_path)
    return Backend(kind, url, connect(db, url))


BackendFactory = Callable[[str, str], Backend]


def fresh_state_url(kind: str, tmp_path: Path) -> str:
    """The URL of an empty state store: a SQLite file in ``tmp_path``, or this process's
    PostgreSQL test database for state stores with every state table dropped."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    from dualwrite.engine import monitor, state

    url = database_url("postgresql", "dualwrite_test_state")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        for md in (state._md, monitor._md):
            md.drop_all(engine)
    finally:
        engine.dispose()
    return url


@pytest.fixture
def make_backend(tmp_path: Path) -> Iterator[BackendFactory]:
    made: list[Backend] = []

    def factory(kind: str, db: str) -> Backend:
        b = _make(kind, db, tmp_path)
        made.append(b)
        return b

    yield factory
    for b in made:
        if isinstance(b.connector, SqlConnector):
            # best-effort clean-up must not mask the test's own failure
            if b.spec.recover_lists_server:
                remember_link(b.connector)
            # a branch a failed test left prepared holds its locks (clear_link's DROP would
            # wait for them), and holds up every logical replication slot made on the shared
            # server until it is rolled back
            with contextlib.suppress(Exception):
                b.clear_prepared()
            with contextlib.suppress(Exception):
                b.connector.clear_link()
        b.connector.close()
        if isinstance(b.connector, MemoryConnector):
            MemoryConnector.reset(b.url)
        if b.kind == "postgresql":
            drop_logical_capture(b.url)


def drop_logical_capture(url: str, timeout: float = 15.0) -> None:
    """Drop what `capture: logical` left in the database at ``url``: its replication slots
    (a slot left behind keeps WAL on the shared server, and no database that has one can be
    dropped), once their decoders have let go of them, and its publications."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    deadline = time.monotonic() + timeout
    try:
        with engine.connect() as conn:
            while True:
                slots = conn.execute(sa.text(
                    "SELECT slot_name, active FROM pg_replication_slots WHERE database = "
                    "current_database() AND slot_name LIKE 'dualwrite\\_%'")).all()
                for name, active in slots:
                    if not active:
                        conn.execute(sa.text("SELECT pg_drop_replication_slot(:s)"),
                                     {"s": name})
                if not any(active for _n, active in slots):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"replication slots still in use: {slots}")
                time.sleep(0.05)
            for (name,) in conn.execute(sa.text(
                    "SELECT pubname FROM pg_publication WHERE pubname LIKE "
                    "'dualwrite\\_%'")).all():
                conn.exec_driver_sql(f'DROP PUBLICATION IF EXISTS "{name}"')
    finally:
        engine.dispose()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[Backend], FaultProxy]]:
    """A factory: ``fault_proxy(backend)`` starts a fault proxy in front of ``backend``'s
    server (``proxy.url(backend.url)`` reaches the same database through it). Every proxy is
    stopped at the end of the test: its thread joined, its sockets closed."""
    made: list[FaultProxy] = []

    def factory(backend: Backend) -> FaultProxy:
        port = sa.engine.make_url(backend.url).port
        assert port is not None, f"{backend.url} names no port to put a proxy in front of"
        proxy = FaultProxy(port).start()
        made.append(proxy)
        return proxy

    yield factory
    for proxy in made:
        proxy.stop()
        assert proxy.open_sockets() == 0, "the fault proxy leaked sockets"


#: (left, right) pairs for end-to-end sync tests: each backend with itself or the reference
PAIRS = pairs()


@pytest.fixture(params=backends())
def backend(request: pytest.FixtureRequest, make_backend: BackendFactory) -> Backend:
    return make_backend(request.param, "dualwrite_test_a")
