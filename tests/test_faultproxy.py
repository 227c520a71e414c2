"""The fault proxy the outage tests rely on (tests/faultproxy.py), against real PostgreSQL and
MariaDB sessions through it: queries pass; ``cut`` and ``reset`` lose the driver's
connection; under ``refuse`` a connect is refused; under ``stall`` a connect with a timeout
times out; back to ``pass``, new connections work; nothing leaks."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pymysql
import pytest
import sqlalchemy as sa

from dualwrite.testing.backends import only

from conftest import Backend, BackendFactory
from faultproxy import FaultProxy, Mode

SERVERS = only("postgresql", "mariadb", why="their drivers' own sessions, opened raw")
#: a connect timeout the test waits through on purpose (under STALL); the others are generous
STALL_TIMEOUT = 2


class Session:
    """A raw driver session to ``url``'s database, through whatever host and port it names.
    ``connect_timeout`` bounds the whole connect: PyMySQL's own connect_timeout covers the
    TCP connect only (which a stalled proxy completes), its read_timeout the handshake."""

    def __init__(self, kind: str, url: str, connect_timeout: int = 30) -> None:
        u = sa.engine.make_url(url)
        self.kind = kind
        self.conn: Any
        if kind == "postgresql":
            self.conn = psycopg.connect(host=u.host, port=u.port, user=u.username,
                                        dbname=u.database, connect_timeout=connect_timeout,
                                        autocommit=True)
        else:
            self.conn = pymysql.connect(host=u.host, port=u.port, user=u.username,
                                        database=u.database, connect_timeout=connect_timeout,
                                        read_timeout=connect_timeout, autocommit=True)

    def one(self, sql: str) -> Any:
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def lost_connection(kind: str) -> type[Exception]:
    return psycopg.OperationalError if kind == "postgresql" else pymysql.err.OperationalError


@pytest.fixture(params=SERVERS)
def through(request: pytest.FixtureRequest, make_backend: BackendFactory,
            fault_proxy: Callable[[Backend], FaultProxy]
            ) -> Iterator[tuple[str, str, FaultProxy]]:
    """(kind, URL through the proxy, proxy) for this process's test database on each
    server; the proxy is stopped afterwards (and checked for leaks) by ``fault_proxy``."""
    backend = make_backend(request.param, "dualwrite_test_a")
    proxy = fault_proxy(backend)
    yield request.param, proxy.url(backend.url), proxy


@pytest.fixture
def sessions() -> Iterator[Callable[..., Session]]:
    """A factory of sessions, each closed at the end of the test."""
    made: list[Session] = []

    def open_session(kind: str, url: str, connect_timeout: int = 30) -> Session:
        s = Session(kind, url, connect_timeout)
        made.append(s)
        return s

    yield open_session
    for s in made:
        s.close()


def test_a_query_passes_through(through: tuple[str, str, FaultProxy],
                                sessions: Callable[..., Session]) -> None:
    kind, url, proxy = through
    s = sessions(kind, url)
    assert s.one("SELECT 40 + 2") == 42
    # a result larger than the proxy's buffer comes through whole
    assert s.one("SELECT LENGTH(REPEAT('x', 3000000))") == 3_000_000
    assert proxy.accepted == 1 and proxy.connections() == 1


@pytest.mark.parametrize("mode", [Mode.CUT, Mode.RESET])
def test_cut_and_reset_lose_the_connection_then_pass_works_again(
        through: tuple[str, str, FaultProxy], sessions: Callable[..., Session],
        mode: Mode) -> None:
    kind, url, proxy = through
    s = sessions(kind, url)
    assert s.one("SELECT 1") == 1
    with proxy.fault(mode):
        assert proxy.connections() == 0
        with pytest.raises(lost_connection(kind)):
            s.one("SELECT 2")
        # a new connection is hung up on too, while the mode is in force
        with pytest.raises(lost_connection(kind)):
            sessions(kind, url)
    assert sessions(kind, url).one("SELECT 3") == 3


def test_reset_connections_once(through: tuple[str, str, FaultProxy],
                                sessions: Callable[..., Session]) -> None:
    kind, url, proxy = through
    first, second = sessions(kind, url), sessions(kind, url)
    assert first.one("SELECT 1") == second.one("SELECT 1") == 1
    assert proxy.reset_connections() == 2
    assert proxy.mode is Mode.PASS
    for s in (first, second):
        with pytest.raises(lost_connection(kind)):
            s.one("SELECT 2")
    assert sessions(kind, url).one("SELECT 3") == 3


def test_refuse_refuses_new_connections_and_drops_current_ones(
        through: tuple[str, str, FaultProxy], sessions: Callable[..., Session]) -> None:
    kind, url, proxy = through
    s = sessions(kind, url)
    assert s.one("SELECT 1") == 1
    port = proxy.port
    with proxy.fault(Mode.REFUSE):
        with pytest.raises(lost_connection(kind)):
            s.one("SELECT 2")
        # refused outright (the connect timeout is long: a refusal, not a wait, ends it)
        with pytest.raises(lost_connection(kind), match=r"(?i)refused"):
            sessions(kind, url, connect_timeout=60)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=60).close()
    assert proxy.port == port
    assert sessions(kind, url).one("SELECT 3") == 3


def test_stall_makes_a_connect_time_out(through: tuple[str, str, FaultProxy],
                                        sessions: Callable[..., Session]) -> None:
    kind, url, proxy = through
    s = sessions(kind, url)
    assert s.one("SELECT 1") == 1
    with proxy.fault(Mode.STALL):
        with pytest.raises(lost_connection(kind), match=r"(?i)time"):
            sessions(kind, url, connect_timeout=STALL_TIMEOUT)
        # a session opened before: its query waits until the proxy passes again
        answer: list[Any] = []
        waiting = threading.Thread(target=lambda: answer.append(s.one("SELECT 7")))
        waiting.start()
        waiting.join(0.5)
        assert answer == [], "a query went through a stalled proxy"
    waiting.join(60)
    assert answer == [7]
    assert sessions(kind, url).one("SELECT 3") == 3


def test_modes_switched_from_many_threads_while_traffic_flows(
        through: tuple[str, str, FaultProxy], sessions: Callable[..., Session]) -> None:
    """Clients query and reconnect on threads of their own while two more threads switch
    modes: the proxy keeps answering, and ends with every connection working."""
    kind, url, proxy = through
    stop = threading.Event()
    errors: list[BaseException] = []
    answered = [0] * 3

    def client(n: int) -> None:
        try:
            while not stop.is_set():
                try:
                    s = Session(kind, url, connect_timeout=STALL_TIMEOUT)
                except lost_connection(kind):
                    continue
                try:
                    while not stop.is_set():
                        assert s.one(f"SELECT {n}") == n
                        answered[n] += 1
                except lost_connection(kind):
                    pass
                finally:
                    s.close()
        except BaseException as exc:
            errors.append(exc)

    def switcher(modes: list[Mode]) -> None:
        try:
            for _ in range(10):
                for mode in modes:
                    proxy.set_mode(mode)
                    stop.wait(0.05)  # pacing the switches, not a synchronisation
        except BaseException as exc:
            errors.append(exc)

    clients = [threading.Thread(target=client, args=(n,)) for n in range(3)]
    switchers = [threading.Thread(target=switcher, args=([Mode.PASS, Mode.CUT, Mode.PASS,
                                                          Mode.REFUSE],)),
                 threading.Thread(target=switcher, args=([Mode.RESET, Mode.PASS, Mode.STALL,
                                                          Mode.PASS],))]
    for t in clients + switchers:
        t.start()
    for t in switchers:
        t.join(120)
    proxy.set_mode(Mode.PASS)
    # every client gets answers again once the proxy passes
    before = list(answered)
    deadline = time.monotonic() + 60
    try:
        while not all(a > b for a, b in zip(answered, before, strict=True)):
            assert time.monotonic() < deadline, f"clients not answered after the faults: {answered}"
            stop.wait(0.05)  # polling a condition, with a deadline
    finally:
        stop.set()
        for t in clients:
            t.join(60)
    assert not errors, errors
    assert not any(t.is_alive() for t in clients + switchers)
    assert sessions(kind, url).one("SELECT 4") == 4


def test_stop_joins_the_thread_and_closes_every_socket(
        make_backend: BackendFactory) -> None:
    backend = make_backend("postgresql", "dualwrite_test_a")
    port = sa.engine.make_url(backend.url).port
    assert port is not None
    proxy = FaultProxy(port).start()
    stalled = Session("postgresql", proxy.url(backend.url))
    try:
        assert stalled.one("SELECT 1") == 1
        proxy.set_mode(Mode.STALL)
        held = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
        threads = [t for t in threading.enumerate() if t.name == f"faultproxy-{proxy.port}"]
        assert len(threads) == 1 and proxy.open_sockets() > 0
        proxy.stop()
        assert not threads[0].is_alive()
        assert proxy.open_sockets() == 0
        # the port is free again: nothing listens there any more
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=30).close()
        held.close()
    finally:
        stalled.close()
        proxy.stop()
