"""The backends dualwrite's tests run against: the one place a database is registered.

Each :class:`BackendSpec` says which connector serves the backend (its
:class:`~dualwrite.connectors.base.Capabilities` come from that class), what its test
databases are and how one is made and dropped, and a few traits of the backend that are
not connector capabilities (``sql``: the application writes with SQL statements of its
own; ``server``: reached over TCP, so a fault proxy can stand in front of it).

Tests never list backends by name. They ask for what they need::

    @pytest.fixture(params=pairs(needs=("two_phase", "capture")), ids=pair_id)
    def pair(request): ...                    # [postgresql-postgresql], [postgresql-mariadb]

    @pytest.mark.parametrize("kind", backends(needs=("sql",)))

so that a backend added to :data:`REGISTRY` runs through every test whose needs it meets.
A test that is about one database's own behaviour (a MariaDB collation, PostgreSQL's error
codes) says so with :func:`only`, which names the backends and why.

Adding a database: write its connector (one module under ``dualwrite/connectors``, declaring
its capabilities), make ``dualwrite.connectors.connect`` open its URLs, run the compliance
suite against it (:mod:`dualwrite.testing.connector_suite`), and add its
:class:`BackendSpec` here.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import sqlalchemy as sa

from dualwrite.connectors.base import BULK_FORMATS, Capabilities, Connector

#: the traits a backend may have besides its connector's capabilities
TRAITS = frozenset({"sql", "server"})
#: needs that are not a field of Capabilities: a bulk format the backend both exports and
#: loads (initial sync's bulk path between two of its databases)
DERIVED = frozenset({"bulk"})

PG_URL = os.environ.get("DUALWRITE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/{db}")
MY_URL = os.environ.get("DUALWRITE_TEST_MY", "mysql+pymysql://root@127.0.0.1:3306/{db}")

START = {
    "postgresql": "bash scripts/services.sh  (or: pg_ctlcluster --skip-systemctl-redirect 15 "
                  "main start)",
    "mariadb": "bash scripts/services.sh  (or: start-stop-daemon --start --oknodo --background "
               "--exec /usr/sbin/mariadbd)",
    "nats": "bash scripts/services.sh  (or: start-stop-daemon --start --oknodo --background "
            "--exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server)",
}


def require_service(name: str, port: int) -> None:
    """Fail the test (never skip it) with how to start the service when it is not
    listening on 127.0.0.1:``port``."""
    import pytest

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return
    except OSError as exc:
        pytest.fail(f"{name} is not reachable on 127.0.0.1:{port} ({exc}); start it with: "
                    f"{START[name]}", pytrace=False)


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


def database_name(name: str) -> str:
    """This process's name for test database ``name`` ("dualwrite_test_a", ...)."""
    prefix = db_prefix()
    return name.replace("dualwrite_test_", prefix, 1) if prefix else name


@dataclass(frozen=True)
class BackendSpec:
    """One backend of the tests.

    ``url(database, directory)`` gives the URL of this process's test database named
    ``database`` (``dualwrite_test_a``: see :func:`database_name`), making it first where it
    is missing (a file backend keeps it in ``directory``, the test's own); ``drop`` removes
    it. ``dialect`` is the SQLAlchemy dialect tests write their DDL in; ``enforces`` what
    the database refuses itself beyond NOT NULL, unique keys and foreign keys (as
    :attr:`dualwrite.testing.Harness.enforces`). ``fake``: not a database (the memory
    connector of the engine's unit tests), never paired with another backend.
    ``recover_lists_server``: :meth:`Connector.recover` lists the prepared branches of the
    whole server, not only of the test's database (MariaDB's XA RECOVER): tests then finish
    only the branches of links they recorded themselves."""

    name: str
    connector: str  # "module:Class", imported only when its capabilities are asked for
    dialect: str
    url: Callable[[str, Path], str]
    drop: Callable[[str, Path], None]
    traits: frozenset[str] = frozenset()
    enforces: frozenset[str] = frozenset({"check", "length"})
    fake: bool = False
    recover_lists_server: bool = False

    @functools.cached_property
    def capabilities(self) -> Capabilities:
        """The capabilities its connector class declares."""
        module, _, cls = self.connector.partition(":")
        klass: type[Connector] = getattr(importlib.import_module(module), cls)
        return klass.capabilities

    def has(self, need: str) -> bool:
        """Whether the backend has ``need``: a trait, ``bulk``, or a capability (a flag that
        is true, or a set of bulk formats that is not empty)."""
        if need in TRAITS:
            return need in self.traits
        caps = self.capabilities
        if need == "bulk":
            return any(f in caps.bulk_export and f in caps.bulk_import for f in BULK_FORMATS)
        if need not in CAPABILITIES:
            raise ValueError(f"unknown need {need!r}: one of {sorted(NEEDS)}")
        return bool(getattr(caps, need))

    @property
    def pairs_across(self) -> bool:
        """Whether it can be linked with a database of another kind: live sync commits a
        transaction on two databases with two-phase commit."""
        return not self.fake and self.capabilities.two_phase


CAPABILITIES = frozenset(f.name for f in fields(Capabilities))
NEEDS = CAPABILITIES | TRAITS | DERIVED


# -- how each backend's test databases are made ------------------------------------------------
def _memory_url(database: str, directory: Path) -> str:
    # one store per test directory: memory:// databases are process-wide
    return f"memory://{database}-{hashlib.sha256(str(directory).encode()).hexdigest()[:16]}"


def _memory_drop(database: str, directory: Path) -> None:
    from dualwrite.connectors.memory import MemoryConnector

    MemoryConnector.reset(_memory_url(database, directory))


def _sqlite_url(database: str, directory: Path) -> str:
    return f"sqlite:///{directory / (database + '.db')}"


def _sqlite_drop(database: str, directory: Path) -> None:
    for suffix in (".db", ".db-journal", ".db-wal", ".db-shm"):
        (directory / (database + suffix)).unlink(missing_ok=True)


_ENSURED: set[tuple[str, str]] = set()


def _pg_url(database: str, directory: Path) -> str:
    require_service("postgresql", 5432)
    db = database_name(database)
    if ("postgresql", db) not in _ENSURED:
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
        _ENSURED.add(("postgresql", db))
    return PG_URL.format(db=db)


def _pg_drop(database: str, directory: Path) -> None:
    db = database_name(database)
    admin = sa.create_engine(PG_URL.format(db="postgres"), isolation_level="AUTOCOMMIT",
                             poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    finally:
        admin.dispose()
    _ENSURED.discard(("postgresql", db))


def _my_url(database: str, directory: Path) -> str:
    require_service("mariadb", 3306)
    db = database_name(database)
    if ("mariadb", db) not in _ENSURED:
        admin = sa.create_engine(MY_URL.format(db=""), poolclass=sa.pool.NullPool)
        try:
            with admin.connect() as conn:
                # binary collation: MariaDB then orders keys as dualwrite's canonical order
                conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET "
                                     "utf8mb4 COLLATE utf8mb4_bin")
        finally:
            admin.dispose()
        _ENSURED.add(("mariadb", db))
    return MY_URL.format(db=db)


def _my_drop(database: str, directory: Path) -> None:
    db = database_name(database)
    admin = sa.create_engine(MY_URL.format(db=""), poolclass=sa.pool.NullPool)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{db}`")
    finally:
        admin.dispose()
    _ENSURED.discard(("mariadb", db))


#: every backend of the tests, in the order tests run them; the first that can pair across
#: kinds is the reference other backends are paired with (see :func:`pairs`)
REGISTRY: dict[str, BackendSpec] = {s.name: s for s in (
    BackendSpec("memory", "dualwrite.connectors.memory.connector:MemoryConnector", "sqlite",
                _memory_url, _memory_drop, enforces=frozenset(), fake=True),
    # SQLite does not enforce VARCHAR lengths
    BackendSpec("sqlite", "dualwrite.connectors.sqlite.connector:SqliteConnector", "sqlite",
                _sqlite_url, _sqlite_drop, frozenset({"sql"}), frozenset({"check"})),
    BackendSpec("postgresql", "dualwrite.connectors.postgresql.connector:PostgresConnector",
                "postgresql", _pg_url, _pg_drop, frozenset({"sql", "server"})),
    BackendSpec("mariadb", "dualwrite.connectors.mariadb.connector:MySqlConnector", "mysql",
                _my_url, _my_drop, frozenset({"sql", "server"}), recover_lists_server=True),
)}


def spec(name: str) -> BackendSpec:
    """The registered backend ``name``; a clear error naming the registered ones if none."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no test backend {name!r}: registered are {sorted(REGISTRY)} "
                       "(dualwrite.testing.backends.REGISTRY)") from None


def _check(needs: Iterable[str]) -> tuple[str, ...]:
    needs = tuple(needs)
    unknown = [n for n in needs if n not in NEEDS]
    if unknown:
        raise ValueError(f"unknown needs {unknown}: one of {sorted(NEEDS)}")
    return needs


def backends(*, needs: Sequence[str] = ()) -> list[str]:
    """The names of the registered backends that have every one of ``needs`` (capabilities
    such as ``two_phase``, ``capture``, ``attach``, ``bulk_export``; ``bulk``; the traits
    ``sql`` and ``server``), in registry order."""
    needs = _check(needs)
    return [s.name for s in REGISTRY.values() if all(s.has(n) for n in needs)]


def pairs(*, needs: Sequence[str] = (), left: Sequence[str] = (), right: Sequence[str] = (),
          same: str = "reference", both_ways: bool = False) -> list[tuple[str, str]]:
    """(left, right) backend pairs for tests of a link between two databases.

    Among the backends having every one of ``needs``: each that cannot be linked with a
    database of another kind (SQLite, the memory fake) is paired with itself; the first
    that can (the reference: PostgreSQL) is paired with each other one that can, as
    (reference, other), and also (other, reference) with ``both_ways``. ``same`` adds the
    pairs of two databases of one kind of those that can pair across: ``"reference"`` the
    reference's own, ``"all"`` each one's, ``"none"`` none. ``left`` and ``right`` are
    further needs of that side alone. Each pair appears once, in registry order."""
    needs, left, right = _check(needs), _check(left), _check(right)
    if same not in ("reference", "all", "none"):
        raise ValueError(f"same={same!r}: one of 'reference', 'all', 'none'")
    kinds = [REGISTRY[n] for n in backends(needs=needs)]
    across = [s for s in kinds if s.pairs_across]
    out: list[tuple[str, str]] = [(s.name, s.name) for s in kinds if not s.pairs_across]
    if across:
        ref = across[0]
        for s in across:
            if s is ref:
                if same != "none":
                    out.append((s.name, s.name))
                continue
            if same == "all":
                out.append((s.name, s.name))
            out.append((ref.name, s.name))
            if both_ways:
                out.append((s.name, ref.name))
    seen: set[tuple[str, str]] = set()
    return [p for p in out if not (p in seen or seen.add(p))  # type: ignore[func-returns-value]
            and all(REGISTRY[p[0]].has(n) for n in left)
            and all(REGISTRY[p[1]].has(n) for n in right)]


def pair_id(pair: tuple[str, ...]) -> str:
    """A pair's test id: ``postgresql-mariadb``."""
    return "-".join(pair)


def only(*names: str, why: str) -> list[str]:
    """``names``, checked to be registered, for a test about those databases' own behaviour
    (``why`` says what, for the reader: a backend added to the registry is not run through
    this test)."""
    if not why:
        raise ValueError("only(): say why the test is for these backends alone")
    return [spec(n).name for n in names]
