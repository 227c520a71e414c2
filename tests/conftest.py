"""Shared fixtures: real databases (SQLite, PostgreSQL, MariaDB) and the memory fake.

A database that is down FAILS the test with the command that starts it; nothing is skipped.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
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

from faultproxy import FaultProxy

PG_URL = os.environ.get("DUALWRITE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/{db}")
MY_URL = os.environ.get("DUALWRITE_TEST_MY", "mysql+pymysql://root@127.0.0.1:3306/{db}")
SHARED = Path(__file__).resolve().parents[1].parent / "shared"

START = {
    "postgresql": "bash scripts/services.sh  (or: pg_ctlcluster --skip-systemctl-redirect 15 "
                  "main start)",
    "mariadb": "bash scripts/services.sh  (or: start-stop-daemon --start --oknodo --background "
               "--exec /usr/sbin/mariadbd)",
    "nats": "bash scripts/services.sh  (or: start-stop-daemon --start --oknodo --background "
            "--exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server)",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="run soak and long fault-injection loops at full size")


@pytest.fixture(scope="session")
def long_run(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--long"))


def require_service(name: str, port: int) -> None:
    """Fail (never skip) with how to start the service when it is not listening."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return
    except OSError as exc:
        pytest.fail(f"{name} is not reachable on 127.0.0.1:{port} ({exc}); start it with: "
                    f"{START[name]}", pytrace=False)


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
        # what each database refuses itself: SQLite does not enforce VARCHAR lengths; the
        # memory fake knows NOT NULL, unique keys and foreign keys only
        self.enforces = {"memory": frozenset(), "sqlite": frozenset({"check"})}.get(
            kind, frozenset({"check", "length"}))

    def guid_default(self) -> Any:
        return guid_default(self.dialect)

    def reopen(self) -> Connector:
        return connect(self.connector.name, self.url)

    @property
    def dialect(self) -> str:
        return {"sqlite": "sqlite", "postgresql": "postgresql", "mariadb": "mysql",
                "memory": "sqlite"}[self.kind]

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
        if self.kind == "mariadb":
            remember_link(self.connector)
            prefixes = tuple(_OWN_LINKS)
        else:
            prefixes = ("dw-",)
        if not prefixes:
            return
        for xid in self.connector.recover("dw-"):
            if xid.startswith(prefixes):
                self.connector.finish_prepared(xid, commit=False)

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        assert isinstance(self.connector, SqlConnector)
        return self.connector.execute(statement)


def db_prefix() -> str | None:
    """What replaces "dualwrite_test_" in this process's database names (None: nothing).

    DUALWRITE_TEST_DB_PREFIX lets two checkouts run the suite at once on one server. Under
    pytest-xdist each worker gets databases of its own as well: worker ``gwN`` uses
    ``<prefix>gwN_`` (``dualwrite_gwN_`` without a prefix), so workers never share tables."""
    prefix = os.environ.get("DUALWRITE_TEST_DB_PREFIX")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        return f"{prefix or 'dualwrite_'}{worker}_"
    return prefix


#: xid prefixes of the links recorded in this process's MariaDB test databases
_OWN_LINKS: set[str] = set()


def remember_link(connector: Connector) -> None:
    """Note the link recorded in ``connector``'s database (see ``Backend.clear_prepared``)."""
    with contextlib.suppress(Exception):
        record = connector.get_link()
        if record is not None:
            _OWN_LINKS.add(xid_prefix(record.link_id))


def _db(name: str) -> str:
    """The test database's name for ``name`` ("dualwrite_test_a", "dualwrite_test_b")."""
    prefix = db_prefix()
    return name.replace("dualwrite_test_", prefix, 1) if prefix else name


_ENSURED: set[tuple[str, str]] = set()


def _ensure_database(kind: str, db: str) -> None:
    """Create ``db`` on its server if it is missing (once per process), so that a plain
    ``pytest -n 3`` works without scripts/services.sh having made the workers' databases."""
    if (kind, db) in _ENSURED:
        return
    if kind == "postgresql":
        admin = sa.create_engine(PG_URL.format(db="postgres"), isolation_level="AUTOCOMMIT",
                                 poolclass=sa.pool.NullPool)
        try:
            with admin.connect() as conn:
                exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"),
                                      {"d": db}).first()
                if not exists:
                    try:
                        conn.exec_driver_sql(f'CREATE DATABASE "{db}"')
                    except sa.exc.ProgrammingError as exc:  # created meanwhile by another run
                        if "already exists" not in str(exc):
                            raise
        finally:
            admin.dispose()
    else:
        admin = sa.create_engine(MY_URL.format(db=""), poolclass=sa.pool.NullPool)
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET "
                                     "utf8mb4 COLLATE utf8mb4_bin")
        finally:
            admin.dispose()
    _ENSURED.add((kind, db))


def database_url(kind: str, name: str) -> str:
    """The URL of this process's test database ``name`` on the PostgreSQL or MariaDB server
    (``kind``), which is made sure to be up and to hold that database."""
    if kind == "postgresql":
        require_service("postgresql", 5432)
        url = PG_URL.format(db=_db(name))
    else:
        require_service("mariadb", 3306)
        url = MY_URL.format(db=_db(name))
    _ensure_database(kind, _db(name))
    return url


def _make(kind: str, db: str, tmp_path: Path) -> Backend:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / (db + '.db')}"
    elif kind in ("postgresql", "mariadb"):
        url = database_url(kind, db)
    else:
        url = f"memory://{db}-{uuid.uuid4().hex}"
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
            if b.kind == "mariadb":
                remember_link(b.connector)
            with contextlib.suppress(Exception):
                b.connector.clear_link()
        b.connector.close()
        if isinstance(b.connector, MemoryConnector):
            MemoryConnector.reset(b.url)


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


ALL_BACKENDS = ["memory", "sqlite", "postgresql", "mariadb"]
SQL_BACKENDS = ["sqlite", "postgresql", "mariadb"]
#: (left, right) pairs for end-to-end sync tests
PAIRS = [("memory", "memory"), ("sqlite", "sqlite"), ("postgresql", "postgresql"),
         ("postgresql", "mariadb")]


@pytest.fixture(params=ALL_BACKENDS)
def backend(request: pytest.FixtureRequest, make_backend: BackendFactory) -> Backend:
    return make_backend(request.param, "dualwrite_test_a")
