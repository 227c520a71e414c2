"""Distributed apply on NATS JetStream with real processes: a `dualwrite run` reader and
`dualwrite run --worker` processes, a PostgreSQL state store, a private `nats-server -js`
(its own port and store, restarted by the test). The applications write two-row
transactions all along; meanwhile workers are killed (-9), added, removed (SIGTERM) and
frozen past the ack wait, and the broker is restarted. Every change lands exactly once on
the other side (audit triggers count committed writes per key), the target never shows
half of a transaction, and `verify` is clean. Small by default; ``--long`` for more rounds.
One fault the restart causes only now and then (a consumer's state read back older than it
was) is made deterministic in one process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
import sqlalchemy as sa

from capture_fixtures import (
    ITEMS_MAP,
    Items,
    fresh_tables,
    items_metadata,
    link_config,
    make_items,
)
from dualwrite.cli import main
from dualwrite.engine.capture import Applier
from dualwrite.engine.jetstream.broker import consumer_config, ensure_stream
from dualwrite.engine.jetstream.partition import Names, encode_marker, partition_of
from dualwrite.engine.jetstream.reader import _Reader
from dualwrite.engine.jetstream.worker import LinkWorker
from dualwrite.engine.lease import ApplierLease
from dualwrite.model.maps import Side

from conftest import BackendFactory, database_url, fresh_state_url

NATS_SERVER = "/usr/sbin/nats-server"
LEASE = 4.0
ACK_WAIT = 1.0
PARTITIONS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A private nats-server with JetStream, on its own port and store directory."""

    def __init__(self, store: Path) -> None:
        if not os.access(NATS_SERVER, os.X_OK):
            pytest.fail(f"{NATS_SERVER} is missing: run `bash scripts/services.sh` (it "
                        "installs nats-server)")
        self.store = store
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port),
                                      "-js", "-sd", str(self.store)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                assert self.proc.poll() is None, "nats-server exited at start"
                assert time.monotonic() < deadline, "nats-server did not listen"
                time.sleep(0.05)  # polling a condition, with a deadline

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Procs:
    """dualwrite processes of one config, logging at debug level; a thread per process reads
    its stderr into ``logs``/PID.log (kept with the test's output: a failure names them)."""

    def __init__(self, cfg: str, logs: Path) -> None:
        self.cfg = cfg
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen[str]] = []
        self.out: dict[int, list[str]] = {}
        self.readers: list[threading.Thread] = []

    def start(self, *args: str, until: str) -> subprocess.Popen[str]:
        p = subprocess.Popen([sys.executable, "-m", "dualwrite", "--log-level", "debug", "-c",
                              self.cfg, "run", *args],
                             stderr=subprocess.PIPE, text=True, env={**os.environ})
        self.procs.append(p)
        lines = self.out[p.pid] = []

        def reader() -> None:
            assert p.stderr is not None
            with (self.logs / f"{p.pid}.log").open("w") as f:
                f.write(" ".join([sys.executable, "-m", "dualwrite", "run", *args]) + "\n")
                for line in p.stderr:
                    lines.append(line)
                    f.write(line)
                    f.flush()

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        self.readers.append(t)
        deadline = time.monotonic() + 90
        while not any(until in x for x in lines):
            assert p.poll() is None and time.monotonic() < deadline, \
                f"{until!r} not printed by pid {p.pid}:\n{''.join(lines)}"
            time.sleep(0.02)  # polling a condition, with a deadline
        return p

    def text(self) -> str:
        """What each process logged at info level and above (its last lines), and where its
        whole log is, for a failing assertion."""
        return "".join(f"--- pid {pid} (all of it: {self.logs / f'{pid}.log'})\n" + "".join(
            [line for line in x if " debug " not in line][-25:]) for pid, x in self.out.items())

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for t in self.readers:
            t.join(10)
        for p in self.procs:
            if p.stderr:
                p.stderr.close()


def _audit(it: Items) -> None:
    """Count every committed insert and update of ``items`` per key, on both sides."""
    for b in (it.left, it.right):
        b.app_sql("DROP TABLE IF EXISTS items_audit")
        b.app_sql("CREATE TABLE items_audit (id INT NOT NULL, op CHAR(1) NOT NULL)")
        if b.kind == "postgresql":
            b.app_sql("DROP FUNCTION IF EXISTS items_audit() CASCADE")
            b.app_sql("CREATE FUNCTION items_audit() RETURNS trigger LANGUAGE plpgsql AS $$ "
                      "BEGIN INSERT INTO items_audit VALUES (NEW.id, left(TG_OP, 1)); "
                      "RETURN NULL; END $$")
            b.app_sql("CREATE TRIGGER items_audit AFTER INSERT OR UPDATE ON items FOR EACH "
                      "ROW EXECUTE FUNCTION items_audit()")
        else:
            for op in ("INSERT", "UPDATE"):
                b.app_sql(f"CREATE TRIGGER items_audit_{op[0]} AFTER {op} ON items FOR EACH "
                          f"ROW INSERT INTO items_audit VALUES (NEW.id, '{op[0]}')")


class Writer(threading.Thread):
    """The applications: transaction k inserts keys 10k+1 and 10k+2 (on the left for odd
    k, on the right for even k) and, from k = 6 on, adds 1 to the qty of one of the first
    five transactions' rows written on the same side: a few rows updated over and over, so
    that an old update applied again (a duplicate) would take a row back. Paced."""

    def __init__(self, it: Items) -> None:
        super().__init__(daemon=True)
        self.it = it
        self.keys: list[int] = []
        self.updates: dict[int, int] = {}
        self.stop = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            k = 0
            while not self.stop.wait(0.01):
                k += 1
                a, b = 10 * k + 1, 10 * k + 2
                sql = [f"INSERT INTO items (id, name, qty) VALUES ({a}, 'w{a}', {a}), "
                       f"({b}, 'w{b}', {b})"]
                hot = None
                if k > 5:
                    j = 1 + 2 * ((k // 2) % 3) if k % 2 else 2 + 2 * ((k // 2) % 2)
                    hot = 10 * j + 1
                    sql.append(f"UPDATE items SET qty = qty + 1 WHERE id = {hot}")
                side = self.it.left if k % 2 else self.it.right
                with side.app().begin() as conn:  # one transaction
                    for statement in sql:
                        conn.execute(sa.text(statement))
                self.keys += [a, b]
                if hot is not None:
                    self.updates[hot] = self.updates.get(hot, 0) + 1
        except BaseException as exc:  # handed to the test
            self.failure = exc

    def wrote(self, more: int) -> None:
        want = len(self.keys) + 2 * more
        deadline = time.monotonic() + 60
        while len(self.keys) < want:
            assert self.failure is None and time.monotonic() < deadline, self.failure
            time.sleep(0.005)  # polling a condition, with a deadline

    def finish(self) -> list[int]:
        self.stop.set()
        self.join(30)
        assert self.failure is None, self.failure
        return self.keys


class Watcher(threading.Thread):
    """Looks at both sides all along: a transaction's two rows are there together or not
    at all (never half a transaction)."""

    def __init__(self, it: Items) -> None:
        super().__init__(daemon=True)
        self.it = it
        self.stop = threading.Event()
        self.halves: list[tuple[str, int]] = []
        self.looks = 0

    def run(self) -> None:
        while not self.stop.wait(0.02):
            for side in ("left", "right"):
                ids = set(self.it.rows(side))
                for i in ids:
                    twin = i + 1 if i % 10 == 1 else i - 1
                    if twin not in ids:
                        self.halves.append((side, i))
            self.looks += 1


def _arrived(it: Items, keys: list[int], procs: Procs) -> None:
    deadline = time.monotonic() + 180
    while not (len(it.rows("left")) == len(it.rows("right")) == len(keys)):
        if time.monotonic() > deadline:
            missing = {side: sorted(set(keys) - set(it.rows(side))) for side in
                       ("left", "right")}
            raise AssertionError(f"not arrived: {missing}\n{procs.text()}")
        time.sleep(0.05)  # polling a condition, with a deadline


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    b = Broker(tmp_path / "nats-store")
    b.start()
    try:
        yield b
    finally:
        b.stop()
        shutil.rmtree(b.store, ignore_errors=True)


def test_workers_killed_added_removed_frozen_and_a_broker_restart_lose_and_double_nothing(
        make_backend: BackendFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        broker: Broker, long_run: bool) -> None:
    state = fresh_state_url("postgresql", tmp_path)

    def config(cfg: dict[str, Any]) -> None:
        cfg["state"] = state
        cfg["capture"] = {"lease_seconds": LEASE}
        cfg["transport"] = {"nats": {"url": broker.url, "partitions": PARTITIONS,
                                     "ack_wait": ACK_WAIT, "duplicate_window": 1}}

    it = make_items(make_backend, tmp_path, "postgresql", "mariadb", extra=config)
    assert main(["-c", str(it.config), "maps", "start", "--yes"]) == 0
    capsys.readouterr()
    _audit(it)
    procs = Procs(str(it.config), tmp_path / "logs")
    writer, watcher = Writer(it), Watcher(it)
    rng = random.Random(7)
    try:
        reader = procs.start(until="publishing link")
        standby = procs.start(until="standing by")
        workers = [procs.start("--worker", until="applying partitions")]
        workers.append(procs.start("--worker", until="applying partitions"))
        writer.start()
        watcher.start()
        for _round in range(5 if long_run else 1):
            # kill -9 the reader: its standby takes over and publishes again what is still
            # in the logs (the broker's duplicate window is 1 s: the workers skip copies)
            writer.wrote(rng.randint(5, 20))
            reader.send_signal(signal.SIGKILL)
            reader.wait(timeout=30)
            reader = standby
            while not any("publishing link" in x for x in procs.out[reader.pid]):
                assert reader.poll() is None, procs.text()[-4000:]
                time.sleep(0.02)  # polling a condition (the deadline: the test's timeout)
            standby = procs.start(until="standing by")
            # kill -9 a worker mid-stream; its partitions move to the other one
            writer.wrote(rng.randint(5, 20))
            victim = workers.pop(rng.randrange(len(workers)))
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)
            # add two: the partitions are shared out again while changes flow
            writer.wrote(rng.randint(5, 20))
            workers.append(procs.start("--worker", until="applying partitions"))
            workers.append(procs.start("--worker", until="applying partitions"))
            # frozen past the ack wait (not past its leases): its message in flight is
            # delivered again, and skipped once applied
            writer.wrote(rng.randint(5, 20))
            frozen = rng.choice(workers)
            frozen.send_signal(signal.SIGSTOP)
            time.sleep(ACK_WAIT * 2)  # the fault's length, not a synchronisation
            frozen.send_signal(signal.SIGCONT)
            # the broker killed and started again on its store
            writer.wrote(rng.randint(5, 20))
            broker.kill()
            writer.wrote(5)
            broker.start()
            # remove one (SIGTERM): it hands its partitions on
            writer.wrote(rng.randint(5, 20))
            leaving = workers.pop(rng.randrange(len(workers)))
            leaving.send_signal(signal.SIGTERM)
            assert leaving.wait(timeout=60) == 0, procs.text()[-4000:]
        writer.wrote(10)
        keys = writer.finish()
        _arrived(it, keys, procs)
    finally:
        writer.stop.set()
        watcher.stop.set()
        watcher.join(30)
        procs.close()
    assert watcher.looks > 0
    assert watcher.halves == [], watcher.halves[:10]
    expected = sorted([(k, "I") for k in keys] +
                      [(k, "U") for k, n in writer.updates.items() for _ in range(n)])
    for name, b in (("left", it.left), ("right", it.right)):
        audit = sorted(b.sql("SELECT id, op FROM items_audit ORDER BY id"))
        assert audit == expected, name
    assert it.rows("left") == it.rows("right")
    with it.link() as link:
        assert all(v.ok for v in link.verify())


def _state_url(db: str) -> str:
    """An empty PostgreSQL state store in test database ``db`` (one per link: a store
    keeps one link's maps)."""
    from dualwrite.engine import monitor, state

    url = database_url("postgresql", db)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        for md in (state._md, monitor._md):
            md.drop_all(engine)
    finally:
        engine.dispose()
    return url


def test_two_links_share_their_workers(make_backend: BackendFactory, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str],
                                       broker: Broker) -> None:
    """Several links in one deployment: a reader per link, two workers applying both
    (`run --worker --also`); every change of both links arrives once, both verify clean."""
    links: list[Items] = []
    for i, db in enumerate(("dualwrite_test_a", "dualwrite_test_b")):
        d = tmp_path / f"link{i}"
        d.mkdir()
        state = _state_url(f"dualwrite_test_state{i}")

        def config(cfg: dict[str, Any], state: str = state) -> None:
            cfg["state"] = state
            cfg["capture"] = {"lease_seconds": LEASE}
            cfg["transport"] = {"nats": {"url": broker.url, "partitions": PARTITIONS}}

        lb, rb = make_backend("postgresql", db), make_backend("mariadb", db)
        fresh_tables(items_metadata(), lb, rb)
        path = link_config(d, lb, rb, {"items": ITEMS_MAP.format(policy="left-wins")},
                           extra=config)
        assert main(["-c", str(path), "maps", "start", "--yes"]) == 0
        links.append(Items(lb, rb, path))
    capsys.readouterr()
    procs = Procs(str(links[0].config), tmp_path / "logs")
    try:
        for it in links:
            procs.cfg = str(it.config)
            procs.start(until="publishing link")
        procs.cfg = str(links[0].config)
        for _ in range(2):
            w = procs.start("--worker", "--also", str(links[1].config),
                            until="applying partitions")
        assert "erp<->crm" in "".join(procs.out[w.pid])
        keys = list(range(1, 41))
        for it in links:
            for k in keys:
                (it.left if k % 2 else it.right).app_sql(
                    f"INSERT INTO items (id, name, qty) VALUES ({k}, 'w{k}', {k})")
        for it in links:
            _arrived(it, keys, procs)
    finally:
        procs.close()
    for it in links:
        assert it.rows("left") == it.rows("right")
        with it.link() as link:
            assert all(v.ok for v in link.verify())
            workers = [p for p in link.state.processes(link.config.link_name)
                       if p["role"] == "worker"]
        assert len(workers) == 0  # both stopped and unregistered


def _one_process_items(make_backend: BackendFactory, tmp_path: Path,
                       broker: Broker) -> Items:
    """An items link PostgreSQL ↔ MariaDB with a transport on ``broker`` and its map started,
    for scenarios that play reader and worker in this process."""
    state = fresh_state_url("postgresql", tmp_path)

    def config(cfg: dict[str, Any]) -> None:
        cfg["state"] = state
        cfg["capture"] = {"lease_seconds": LEASE}
        cfg["transport"] = {"nats": {"url": broker.url, "partitions": PARTITIONS,
                                     "ack_wait": ACK_WAIT}}

    it = make_items(make_backend, tmp_path, "postgresql", "mariadb", extra=config)
    assert main(["-c", str(it.config), "maps", "start", "--yes"]) == 0
    return it


@dataclasses.dataclass
class _OneProcess:
    """A reader's and a worker's parts in this process, on one link's stream."""

    link: Any
    cfg: Any
    names: Names
    js: Any
    applier: Applier
    worker: LinkWorker
    tasks: list[asyncio.Task[None]]

    def reader(self) -> _Reader:
        r = _Reader(self.applier, self.cfg, threading.Event(), self.link.config.link_name,
                    self.link.ensure_linked())
        r.js = self.js
        return r

    def take(self, *partitions: int) -> None:
        """The worker owns ``partitions`` (their leases taken; nothing served yet)."""
        for p in partitions:
            lease = ApplierLease(self.link.state, self.names.lease(p), ttl=LEASE * 10)
            assert lease.acquire()
            self.worker.leases[p] = lease
            self.worker.leaving[p] = asyncio.Event()

    def serve(self, p: int) -> None:
        self.tasks.append(asyncio.create_task(self.worker.serve(p)))

    async def apply_all(self, it: Items, *partitions: int) -> None:
        """The worker serves ``partitions`` until both sides hold the same rows (those of
        the test's transactions: every row either side holds)."""
        self.take(*partitions)
        for p in partitions:
            self.serve(p)
        await _both_sides_hold(it, set(it.rows("left")) | set(it.rows("right")))


def _in_one_process(it: Items, scenario: Callable[[Any], Awaitable[None]]) -> None:
    with it.link() as link:
        asyncio.run(scenario(link))
    assert it.rows("left") == it.rows("right")


@contextlib.asynccontextmanager
async def _one_process(link: Any, broker: Broker) -> AsyncIterator[_OneProcess]:
    cfg = link.config.model.transport.nats
    names = Names(link.config.link_name, PARTITIONS, link.ensure_linked())
    nc = await nats.connect(broker.url)
    js = nc.jetstream()
    applier = Applier.for_link(link)
    w = LinkWorker(link, cfg, link.state.register_process(link.config.link_name, "worker"))
    w.js = js
    run = _OneProcess(link, cfg, names, js, applier, w, [])
    try:
        await ensure_stream(js, names, cfg)
        yield run
    finally:
        for ev in w.leaving.values():
            ev.set()
        for t in run.tasks:
            with contextlib.suppress(Exception):
                await t
        await w.close()
        applier.close()
        await nc.close()


def _two_partitions() -> tuple[int, int, tuple[int, int, int, int]]:
    """Two partitions (home, the lower, and held) and keys a, b, c, d: a and c in home, b
    and d in held (a transaction writing a and b, or c and d, touches both)."""
    by_partition: dict[int, list[int]] = {}
    for k in range(1, 200):
        by_partition.setdefault(partition_of("items", [k], PARTITIONS), []).append(k)
    home, held = sorted(by_partition)[:2]
    (a, c), (b, d) = by_partition[home][:2], by_partition[held][:2]
    return home, held, (a, b, c, d)


async def _both_sides_hold(it: Items, keys: set[int]) -> None:
    """Until both sides hold exactly ``keys``: seconds for rows that arrive in well under
    one when nothing waits."""
    deadline = time.monotonic() + 10
    while set(it.rows("right")) != keys or set(it.rows("left")) != keys:
        assert time.monotonic() < deadline, (
            "not applied: the partitions wait for each other (left "
            f"{sorted(it.rows('left'))}, right {sorted(it.rows('right'))})")
        await asyncio.sleep(0.05)  # polling a condition, with a deadline


def test_a_partition_holding_at_a_marker_the_broker_forgot_takes_it_again(
        make_backend: BackendFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    """A broker killed and started again can read a consumer's state back older than it
    was (nats-server writes it asynchronously): a partition holding at a marker is then no
    longer seen there by the transaction's home, which waits for it, and both wait for
    ever (seen in CI: nothing applied after a broker restart). The holder notices that the
    broker forgot its delivery and fetches again. Made deterministic here, in one process:
    the held partition's consumer is made anew under it, as such a restart leaves it."""
    it = _one_process_items(make_backend, tmp_path, broker)
    capsys.readouterr()
    a = 1
    b = next(k for k in range(2, 100)
             if partition_of("items", [k], PARTITIONS) != partition_of("items", [a],
                                                                      PARTITIONS))
    home, held = sorted(partition_of("items", [k], PARTITIONS) for k in (a, b))
    it.left.app_sql(f"INSERT INTO items (id, name, qty) VALUES ({a}, 'a', 1), "
                    f"({b}, 'b', 2)")  # one transaction, two partitions

    async def scenario(link: Any) -> None:
        async with _one_process(link, broker) as run:
            js, names = run.js, run.names
            assert await run.reader().publish_side(Side.LEFT) == 1  # a marker, the txn
            run.take(home, held)
            run.serve(held)
            deadline = time.monotonic() + 30
            while not (await js.consumer_info(names.stream,
                                              names.durable(held))).num_ack_pending:
                assert time.monotonic() < deadline, "the marker was not delivered"
                await asyncio.sleep(0.02)  # polling a condition, with a deadline
            # the broker forgets that it delivered the marker (its consumer state lost)
            await js.delete_consumer(names.stream, names.durable(held))
            await js.add_consumer(names.stream, consumer_config(names, run.cfg, held))
            run.serve(home)
            while set(it.rows("right")) != {a, b}:
                assert time.monotonic() < deadline + 30, \
                    f"not applied: the partitions wait for each other ({it.rows('right')})"
                await asyncio.sleep(0.05)  # polling a condition, with a deadline
            while (await js.stream_info(names.stream)).state.messages:  # marker acked too
                assert time.monotonic() < deadline + 60, "the marker is still held"
                await asyncio.sleep(0.05)  # polling a condition, with a deadline

    caplog.set_level(logging.INFO, logger="dualwrite.jetstream")
    with it.link() as link:
        asyncio.run(scenario(link))
    assert f"partition {held}: the broker no longer counts the message held" in caplog.text
    assert it.rows("left") == it.rows("right")


def test_a_marker_a_stopped_reader_left_without_its_transaction_holds_nothing_up(
        make_backend: BackendFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        broker: Broker) -> None:
    """A reader stopped (killed, or its lease lost) between a transaction's marker and the
    transaction itself leaves the marker alone in its partition, where it holds the
    partition until the transaction is applied. The reader that takes over publishes the
    other side's later transactions first, one of them with a barrier on that partition,
    and then the transaction, behind that one in its home partition: each waits for the
    other for ever (seen in CI: nothing applied after a reader was killed). A reader
    publishes such a transaction first. Made deterministic here, in one process."""
    it = _one_process_items(make_backend, tmp_path, broker)
    capsys.readouterr()
    home, held, (a, b, c, d) = _two_partitions()
    # the right side's transaction (its marker will be left alone), then the left side's;
    # each touches both partitions
    it.right.app_sql(f"INSERT INTO items (id, name, qty) VALUES ({c}, 'c', 3), ({d}, 'd', 4)")
    it.left.app_sql(f"INSERT INTO items (id, name, qty) VALUES ({a}, 'a', 1), ({b}, 'b', 2)")

    async def scenario(link: Any) -> None:
        async with _one_process(link, broker) as run:
            # the stopped reader: the right side's marker, and nothing more
            [txid] = {t for _seq, t in run.applier.logs[Side.RIGHT].transactions(
                ["items"], -1, 100)}
            await run.js.publish(
                run.names.subject(held), encode_marker(Side.RIGHT.value, txid, home),
                headers={"Nats-Msg-Id": run.names.msg_id(
                    run.applier._direction[Side.RIGHT], txid, held)})
            # the reader that takes over: the left side first, then the right
            reader = run.reader()
            await reader.finish_left_transactions()  # as it starts
            assert await reader.publish_side(Side.LEFT) == 1
            assert await reader.publish_side(Side.RIGHT) == 1
            await run.apply_all(it, home, held)

    _in_one_process(it, scenario)


class _FailingPublish:
    """A JetStream context whose first publish to ``subject`` fails, as a broker that goes
    away part way through a transaction's messages; everything else goes to ``js``."""

    def __init__(self, js: Any, subject: str) -> None:
        self.js = js
        self.subject = subject
        self.failed = False

    async def publish(self, subject: str, *args: Any, **kwargs: Any) -> Any:
        if subject == self.subject and not self.failed:
            self.failed = True
            raise nats.errors.TimeoutError
        return await self.js.publish(subject, *args, **kwargs)


def test_a_transaction_whose_publication_failed_part_way_goes_first(
        make_backend: BackendFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        broker: Broker) -> None:
    """The broker goes away after a transaction's marker and before the transaction: the
    marker holds its partition until the transaction is applied. The reader published the
    other side's newer transactions first when the broker was back, one with a barrier on
    that partition, and the transaction behind it in its home partition: each waited for
    the other for ever (seen in CI after a broker restart). The unfinished transaction goes
    first. Made deterministic here, in one process."""
    it = _one_process_items(make_backend, tmp_path, broker)
    capsys.readouterr()
    home, held, (a, b, c, d) = _two_partitions()

    async def scenario(link: Any) -> None:
        async with _one_process(link, broker) as run:
            reader = run.reader()
            it.right.app_sql(f"INSERT INTO items (id, name, qty) VALUES ({c}, 'c', 3), "
                             f"({d}, 'd', 4)")
            reader.js = _FailingPublish(run.js, run.names.subject(home))
            assert await reader.publish_side(Side.RIGHT) == 0  # its marker only
            reader.js = run.js  # the broker is back; a newer transaction on the left
            it.left.app_sql(f"INSERT INTO items (id, name, qty) VALUES ({a}, 'a', 1), "
                            f"({b}, 'b', 2)")
            assert await reader.publish_side(Side.LEFT) == 1
            await reader.publish_side(Side.RIGHT)
            await run.apply_all(it, home, held)

    _in_one_process(it, scenario)
