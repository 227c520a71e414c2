"""How a running applier waits on a quiet link: each side's log is read only as often as it
needs to be (docs/capture.md, "Waiting for changes")."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from capture_fixtures import make_items
from dualwrite.engine.link import Link
from dualwrite.model.maps import Side

from conftest import BackendFactory


def _until(cond: Callable[[], bool], what: Callable[[], str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what()
        time.sleep(0.01)  # polling a condition, with a deadline


@dataclass
class Watched:
    """A running applier's reads of each side's log, and what each of its waits returned."""

    reads: dict[Side, int] = field(default_factory=lambda: {s: 0 for s in Side})
    woken: list[set[Side] | None] = field(default_factory=list)


@contextmanager
def running(link: Link) -> Iterator[Watched]:
    """``link``'s applier running in a thread, watched, until the block ends."""
    applier = link.applier()
    seen = Watched()
    apply_from, wait = applier.apply_from, applier._wait

    def counted(s: Side, only: Sequence[str] | None = None) -> int:
        seen.reads[s] += 1
        return apply_from(s, only)

    def recorded(stop: threading.Event, idle: int = 0) -> set[Side] | None:
        seen.woken.append(got := wait(stop, idle))
        return got

    applier.apply_from = counted  # type: ignore[method-assign]
    applier._wait = recorded  # type: ignore[method-assign]
    stop = threading.Event()
    runner = threading.Thread(target=applier.run, args=(stop,), daemon=True)
    runner.start()
    try:
        yield seen
    finally:
        stop.set()
        runner.join(30)
        applier.close()


def test_a_quiet_applier_reads_a_notifying_log_once_a_second_and_a_polled_one_each_poll(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    """PostgreSQL (left) notifies when changes commit; MariaDB (right) is polled, every
    ``capture.idle_poll_max`` on a quiet link (0.1 s here). Each poll reads MariaDB's log
    only: PostgreSQL's is read when it notifies (its notification wakes the applier, for a
    statement sent with parameters too), and once a second besides (an application's
    two-phase commit notifies nobody). Every kind of change arrives."""

    def polled_often(cfg: dict[str, Any]) -> None:
        cfg["capture"] = {"idle_poll_max": 0.1}

    it = make_items(make_backend, tmp_path, "postgresql", "mariadb", extra=polled_often)
    with it.link() as link:
        link.start_maps()
        with running(link) as seen:
            reads, woken = seen.reads, seen.woken
            _until(lambda: reads[Side.RIGHT] >= 5, lambda: f"never polled: {reads}")
            start, before = time.monotonic(), dict(reads)
            _until(lambda: reads[Side.RIGHT] - before[Side.RIGHT] >= 15,
                   lambda: f"MariaDB's log was not polled: {reads}")
            elapsed = time.monotonic() - start
            polled = reads[Side.RIGHT] - before[Side.RIGHT]
            notifying = reads[Side.LEFT] - before[Side.LEFT]
            assert notifying <= elapsed + 2, \
                f"PostgreSQL's log read {notifying} times in {elapsed:.1f} s ({polled} polls)"

            dsn = it.left.url.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(dsn, autocommit=True) as app:
                # with parameters: the extended protocol, whose commit has no current query
                woken.clear()
                app.execute("INSERT INTO items (id, name, qty) VALUES (%s, %s, %s)",
                            (1, "notified", 1))
            _until(lambda: 1 in it.rows("right"), lambda: "a notified change never arrived")
            _until(lambda: any(w and Side.LEFT in w for w in woken),
                   lambda: f"PostgreSQL's notification never woke the applier: {woken[-10:]}")
            it.right.app_sql("INSERT INTO items (id, name, qty) VALUES (2, 'polled', 2)")
            _until(lambda: 2 in it.rows("left"), lambda: "a polled change never arrived")
            with psycopg.connect(dsn, autocommit=True) as app:
                app.execute("BEGIN")
                app.execute("INSERT INTO items (id, name, qty) VALUES (3, 'two-phase', 3)")
                gid = f"dwtest-wait-{uuid.uuid4().hex[:12]}"  # server-wide: unique
                app.execute(f"PREPARE TRANSACTION '{gid}'")
                app.execute(f"COMMIT PREPARED '{gid}'")
            _until(lambda: 3 in it.rows("right"),
                   lambda: "a change that notified nobody never arrived")
    assert it.rows("left") == it.rows("right") == {
        1: ("notified", 1), 2: ("polled", 2), 3: ("two-phase", 3)}


def test_a_busy_applier_reads_only_the_side_that_changed(make_backend: BackendFactory,
                                                          tmp_path: Path) -> None:
    """Single-row changes from one side of a PostgreSQL <-> PostgreSQL link, one after the
    other: each costs one read of that side's log (its notification), not one of each log
    and a second pass over both; the quiet side's log is read about once a second."""
    it = make_items(make_backend, tmp_path, "postgresql", "postgresql")
    with it.link() as link:
        link.start_maps()
        with running(link) as seen:
            reads = seen.reads
            _until(lambda: reads[Side.RIGHT] >= 1, lambda: f"never read: {reads}")
            start, before = time.monotonic(), dict(reads)
            n = 30
            for k in range(1, n + 1):
                it.left.app_sql(f"INSERT INTO items (id, name, qty) VALUES ({k}, 'one', {k})")
                _until(lambda k=k: k in it.rows("right"), lambda k=k: f"{k} never arrived")
            elapsed = time.monotonic() - start
            quiet = reads[Side.RIGHT] - before[Side.RIGHT]
            busy = reads[Side.LEFT] - before[Side.LEFT]
            assert quiet <= elapsed + 3, \
                f"the quiet side's log read {quiet} times for {n} changes in {elapsed:.1f} s"
            assert busy <= 1.5 * n + elapsed + 3, \
                f"the busy side's log read {busy} times for {n} changes in {elapsed:.1f} s"
    assert it.rows("right") == {k: ("one", k) for k in range(1, 31)}
