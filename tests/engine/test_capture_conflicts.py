"""Concurrent edits on both sides are never a lost update (issue: never lose, never corrupt).

Each test reproduces a case found on a real link:

* an application write on the target, committed between the applier's look at the target's
  queue and its write, was overwritten without a conflict;
* resolving parked conflicts after a busy period swapped the two sides' last values;
* later changes queued behind a parked conflict must be applied after it is resolved;
* the conflict count counted every change that queued behind a conflict.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from capture_fixtures import LOGICAL_KINDS, Items, drain, make_items
from dualwrite.connectors.capture import CaptureLog
from dualwrite.connectors.sql import SqlWriteSession
from dualwrite.engine.capture import resolve_conflict
from dualwrite.model.maps import Side
from dualwrite.testing.backends import pair_id, pairs

from conftest import Backend, BackendFactory

PAIRS = pairs(needs=("two_phase", "capture"))
POLICIES = ["manual", "left-wins", "right-wins", "newest-wins"]


def app_update(b: Backend, key: int, name: str) -> None:
    """The application renames row ``key``, autocommit."""
    b.app_sql("UPDATE items SET name = :n WHERE id = :k", {"n": name, "k": key})


def names(it: Items, side: str) -> dict[int, str]:
    return {k: v[0] for k, v in it.rows(side).items()}


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def blocked_writes(b: Backend) -> int:
    """Application statements on ``b``'s server waiting for a lock right now. On MariaDB,
    INNODB_TRX turned out not to list a transaction that waits from its first statement on,
    so a statement still executing counts (one that is not blocked finishes at once)."""
    if b.kind == "postgresql":
        return int(b.sql("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = "
                         "current_database() AND wait_event_type = 'Lock'")[0][0])
    return int(b.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE "
                     "COMMAND = 'Query' AND INFO LIKE 'UPDATE items SET name%'")[0][0])


@pytest.fixture(params=PAIRS + LOGICAL_KINDS, ids=pair_id)
def kinds(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """(left, right[, capture mode]): each pair with triggers, and with logical decoding."""
    return request.param  # type: ignore[no-any-return]


def synced_items(make_backend: BackendFactory, tmp_path: Path, kinds: tuple[str, ...],
                 policy: str, n: int = 3) -> Items:
    it = make_items(make_backend, tmp_path, *kinds, policy=policy)
    it.left.insert("items", [{"id": i, "name": f"A{i}", "qty": i} for i in range(1, n + 1)])
    with it.link() as link:
        link.start_maps()
    assert names(it, "right") == {i: f"A{i}" for i in range(1, n + 1)}
    return it


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("source", ["left", "right"])
def test_a_target_write_committed_just_before_the_apply_is_a_conflict(
        kinds: tuple[str, ...], make_backend: BackendFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, policy: str, source: str) -> None:
    """The source application renames row 1; the target application renames it too and
    commits while the applier is about to write (after it looked at the target's queue, before
    it locked the row). Both writes started from the synced version and neither saw the other:
    a conflict, settled by the policy; never the source's value written over the target's in
    silence."""
    it = synced_items(make_backend, tmp_path, kinds, policy)
    src, dst = (it.left, it.right) if source == "left" else (it.right, it.left)
    mine, theirs = ("L1", "R1") if source == "left" else ("R1", "L1")
    app_update(src, 1, mine)
    raced: list[bool] = []

    def racing(real: Any) -> Any:
        def race_then_write(sess: SqlWriteSession, table: str, *args: Any, **kw: Any) -> Any:
            if not raced and sess.connector.url == dst.url:
                raced.append(True)
                app_update(dst, 1, theirs)  # committed before the applier holds the row
            return real(sess, table, *args, **kw)
        return race_then_write

    # the applier's first statement on the row: a lock (the careful path), or the guarded
    # update of the set-based path (which writes first and looks at the queue after)
    monkeypatch.setattr(SqlWriteSession, "lock", racing(SqlWriteSession.lock))
    monkeypatch.setattr(SqlWriteSession, "update_if_json",
                        racing(SqlWriteSession.update_if_json))
    with it.link() as link:
        drain(link.applier())
        assert raced, "the race was not injected: the applier never locked a target row"
        left, right = names(it, "left")[1], names(it, "right")[1]
        conflicts = link.state.conflicts("items")
        assert len(conflicts) == 1, conflicts
        if policy == "manual":
            assert (left, right) == ("L1", "R1")  # each side keeps its own until resolved
            [entry] = link.state.errors()
            assert entry.operation == "conflict"
        else:
            # newest-wins: the target's write came later
            winner = {"left-wins": "L1", "right-wins": "R1"}.get(policy, theirs)
            assert left == right == winner, (policy, left, right)
            assert link.state.errors() == []
        # the untouched rows are as synced
        assert names(it, "left")[2] == names(it, "right")[2] == "A2"


@pytest.mark.parametrize("policy", ["manual", "left-wins"])
def test_a_target_write_racing_the_apply_is_ordered_or_a_conflict(
        kinds: tuple[str, ...], make_backend: BackendFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, policy: str) -> None:
    """The target application's rename starts right after the applier first looked at the
    target's queue (on PostgreSQL in the round trip of its bookkeeping), in its own thread.
    Whichever commits first, the outcome is one of the two correct ones: the target's write
    is ordered after the applied one (both sides end with the target's value, no conflict),
    or it committed first and is a recorded conflict. Both sides holding the source's value
    with no conflict recorded is the lost update."""
    it = synced_items(make_backend, tmp_path, kinds, policy)
    app_update(it.left, 1, "L1")
    writer: list[threading.Thread] = []
    errors: list[BaseException] = []
    # where the applier looks at the target's queue: alone, or with its bookkeeping
    for name in ("queues", "pending", "finish_apply"):
        real = getattr(CaptureLog, name)

        def hooked(log: CaptureLog, conn: Any, *args: Any, _real: Any = real) -> Any:
            found = _real(log, conn, *args)
            if not writer and log.connector.url == it.right.url:
                def write() -> None:
                    try:
                        app_update(it.right, 1, "R1")
                    except BaseException as exc:  # reported by the test
                        errors.append(exc)

                t = threading.Thread(target=write)
                writer.append(t)
                t.start()
                # the write committed, or waits for the row the applier holds
                wait_for(lambda: not t.is_alive() or blocked_writes(it.right) > 0, 30,
                         "the application's write to commit or to wait for a lock")
            return found

        monkeypatch.setattr(CaptureLog, name, hooked)
    with it.link() as link:
        drain(link.applier())
        assert writer, "the race was not injected"
        writer[0].join(timeout=30)
        assert not writer[0].is_alive() and not errors, errors
        drain(link.applier())
        left, right = names(it, "left")[1], names(it, "right")[1]
        conflicts = link.state.conflicts("items")
        if conflicts:
            assert len(conflicts) == 1
            if policy == "manual":
                assert (left, right) == ("L1", "R1")
            else:
                assert left == right == "L1"
        else:
            assert left == right == "R1", "the target's later write was lost"


@pytest.mark.parametrize("policy", ["manual"])
def test_changes_queued_behind_a_conflict_replay_after_resolve_and_count_once(
        kinds: tuple[str, ...], make_backend: BackendFactory, tmp_path: Path,
        policy: str) -> None:
    """Both sides rename row 1 while the applier is stopped (a conflict), then each side
    changes it twice more. The conflict is counted once (not once per change behind it); the
    later changes wait; after `resolve --pick left` both sides hold the left's last value,
    and a change made after the resolve flows normally."""
    it = synced_items(make_backend, tmp_path, kinds, policy)
    for n in (1, 2, 3):
        app_update(it.left, 1, f"L{n}")
        app_update(it.right, 1, f"R{n}")
    app_update(it.left, 2, "L-two")  # another row flows meanwhile
    with it.link() as link:
        applier = link.applier()
        drain(applier)
        assert names(it, "right")[2] == "L-two"
        [entry] = link.state.errors()
        assert entry.operation == "conflict"
        assert len(link.state.conflicts("items")) == 1
        [status] = [m for m in link.status() if m["map"] == "items"]
        assert status["conflicts"] == 1 and status["errors"] == 1
        assert names(it, "left")[1] == "L3" and names(it, "right")[1] == "R3"
        resolve_conflict(link, entry.id, Side.LEFT)
        drain(applier)
        assert names(it, "left")[1] == names(it, "right")[1] == "L3"
        assert link.state.errors() == []
        app_update(it.right, 1, "R4")
        drain(applier)
        assert names(it, "left")[1] == names(it, "right")[1] == "R4"
        [result] = link.verify(["items"])
        assert result.ok, result.as_dict()


def test_a_change_made_after_the_conflict_is_applied_after_resolve(
        kinds: tuple[str, ...], make_backend: BackendFactory, tmp_path: Path) -> None:
    """A change to the parked key made while the conflict is open waits, and is applied once
    the conflict is resolved: the picked side's version first, then the later change."""
    it = synced_items(make_backend, tmp_path, kinds, "manual")
    app_update(it.left, 1, "L1")
    app_update(it.right, 1, "R1")
    with it.link() as link:
        applier = link.applier()
        drain(applier)
        [entry] = link.state.errors()
        app_update(it.right, 1, "R2")  # made after the conflict was parked
        it.right.app_sql("UPDATE items SET qty = 42 WHERE id = 1")
        drain(applier)
        assert names(it, "left")[1] == "L1"  # it waits behind the conflict
        resolve_conflict(link, entry.id, Side.LEFT)
        drain(applier)
        # R2 and qty 42 came after the conflict was found: applied on top of the picked
        # version (L1, 1), in the order they were made
        assert it.rows("left")[1] == it.rows("right")[1] == ("R2", 42)
        assert link.state.errors() == [] and link.state.parked_count() == {}


class TwoWriters:
    """One application writer per side, each in its own thread: single-statement transactions,
    a share of them on a few shared keys, the rest on keys of its own side (inserted, renamed,
    deleted)."""

    def __init__(self, it: Items, shared: int, transactions: int, seed: int) -> None:
        import random

        self.it = it
        self.shared = shared
        self.transactions = transactions
        self.rng = {s: random.Random(f"{seed}-{s}") for s in ("left", "right")}
        self.errors: list[BaseException] = []

    def run(self) -> None:
        threads = [threading.Thread(target=self._writer, args=(s,)) for s in ("left", "right")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not any(t.is_alive() for t in threads), "a writer did not finish"
        assert not self.errors, self.errors

    def _writer(self, side: str) -> None:
        b = self.it.left if side == "left" else self.it.right
        rng = self.rng[side]
        base = 1000 if side == "left" else 100_000
        own: list[int] = []
        try:
            with b.app().connect() as conn:
                for n in range(self.transactions):
                    roll = rng.random()
                    with conn.begin():
                        if roll < 0.18:
                            k = rng.randrange(1, self.shared + 1)
                            conn.execute(sa.text("UPDATE items SET name = :n, qty = :q "
                                                 "WHERE id = :k"),
                                         {"n": f"{side[0].upper()}{n}", "q": n, "k": k})
                        elif roll < 0.6 or len(own) < 5:
                            k = base + n
                            conn.execute(sa.text("INSERT INTO items (id, name, qty) "
                                                 "VALUES (:k, :n, 0)"), {"k": k, "n": f"i{k}"})
                            own.append(k)
                        elif roll < 0.9:
                            k = rng.choice(own)
                            conn.execute(sa.text("UPDATE items SET qty = qty + 1 WHERE id = :k"),
                                         {"k": k})
                        else:
                            k = own.pop(rng.randrange(len(own)))
                            conn.execute(sa.text("DELETE FROM items WHERE id = :k"), {"k": k})
        except BaseException as exc:
            self.errors.append(exc)


@pytest.fixture
def busy_period(kinds: tuple[str, ...], make_backend: BackendFactory, tmp_path: Path,
                long_run: bool) -> Iterator[Items]:
    shared = 30
    it = synced_items(make_backend, tmp_path, kinds, "manual", n=shared)
    TwoWriters(it, shared, 950 if long_run else 300, seed=7).run()
    yield it


def test_resolving_every_conflict_of_a_busy_period_converges(busy_period: Items) -> None:
    """One writer per side while the applier is stopped, 18 % of the statements on 30 shared
    keys; then the applier drains, every parked conflict is resolved (picks alternating) and
    the applier drains again: both sides agree, each shared key holds its picked side's last
    value, nothing is left in the inbox."""
    it = busy_period
    before = {s: names(it, s) for s in ("left", "right")}
    with it.link() as link:
        applier = link.applier()
        drain(applier, timeout=120)
        entries = link.state.errors()
        assert entries and all(e.operation == "conflict" for e in entries)
        keys = [e.key[0] for e in entries]
        assert len(keys) == len(set(keys)), "one inbox entry per conflicting key"
        assert len(link.state.conflicts("items")) == len(entries)
        picks = {}
        for n, e in enumerate(sorted(entries, key=lambda e: e.id)):
            pick = Side.LEFT if n % 2 == 0 else Side.RIGHT
            picks[e.key[0]] = pick
            resolve_conflict(link, e.id, pick)
        drain(applier, timeout=120)
        after = {s: names(it, s) for s in ("left", "right")}
        assert after["left"] == after["right"]
        for k, pick in picks.items():
            assert after["left"][k] == before[pick.value][k], (k, pick, after["left"][k])
        assert link.state.errors() == []
        [result] = link.verify(["items"])
        assert result.ok, result.as_dict()
