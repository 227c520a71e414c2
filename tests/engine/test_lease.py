"""The applier lease and its fence (dualwrite.engine.lease): one applier per link across
processes and hosts, and an applier that lost its lease — stopped, paused, cut off past its
TTL — commits nothing more in either database, on a SQLite and on a PostgreSQL state store."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from capture_fixtures import drain, make_items
from dualwrite.engine.lease import ApplierLease
from dualwrite.engine.state import StateStore
from dualwrite.errors import LeaseLost
from dualwrite.model.maps import Side

from conftest import BackendFactory, fresh_state_url


def wait_until(what: str, cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)  # polling a condition, with a deadline


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_one_holder_at_a_time_and_each_takeover_a_higher_epoch(store: str,
                                                                tmp_path: Path) -> None:
    state = StateStore(fresh_state_url(store, tmp_path))
    try:
        a = ApplierLease(state, "l", ttl=0.3)
        b = ApplierLease(state, "l", ttl=30)
        assert a.acquire() and a.epoch == 1
        assert not b.acquire() and b.epoch is None  # held, and renewed
        assert a.renew() and b.holder() == os.getpid()
        host, _pid, epoch = b.holder_info() or ("", 0, 0)
        assert host and epoch == 1
        # a stops renewing: its lease runs out and b takes it, with the next epoch
        wait_until("the lease expires", b.acquire)
        assert b.epoch == 2
        assert not a.renew() and a.epoch is None  # a learns it lost it
        assert not a.acquire()  # and cannot take it back while b renews
        with pytest.raises(LeaseLost):  # nor move an epoch it does not hold
            a.epoch = 1
            a.advance(9)
        # a release hands it on at once, not after the TTL; the epoch still goes up
        b.release()
        assert b.holder() is None and a.acquire() and a.epoch == 3
        a.advance(7)
        assert a.epoch == 7 and a.renew()
        # another lease of the store is another link's
        assert ApplierLease(state, "other").acquire()
    finally:
        state.close()


def test_a_holder_gone_from_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    """kill -9 leaves the lease unexpired; on the same host a dead pid is seen at once."""
    url = fresh_state_url("sqlite", tmp_path)
    code = ("import sys; from dualwrite.engine.state import StateStore; "
            "from dualwrite.engine.lease import ApplierLease; s = StateStore(sys.argv[1]); "
            "lease = ApplierLease(s, 'l', ttl=3600); assert lease.acquire(); "
            "print(lease.epoch, flush=True); sys.stdin.read()")
    state = StateStore(url)
    with subprocess.Popen([sys.executable, "-c", code, url], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "1"
            mine = ApplierLease(state, "l", ttl=3600)
            assert not mine.acquire() and mine.holder() == proc.pid
            proc.kill()
            proc.wait(timeout=30)
            assert mine.acquire() and mine.epoch == 2
        finally:
            if proc.poll() is None:
                proc.kill()
            state.close()


def _state(store: str, tmp_path: Path) -> Any:
    url = fresh_state_url(store, tmp_path)
    return lambda cfg: cfg.update(state=url)


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_an_applier_that_lost_its_lease_commits_nothing_on_either_side(
        make_backend: BackendFactory, tmp_path: Path, store: str) -> None:
    it = make_items(make_backend, tmp_path, "postgresql", "mariadb",
                    extra=_state(store, tmp_path))
    with it.link() as link:
        link.start_maps()
        name = link.config.link_name
        old_lease = ApplierLease(link.state, name, ttl=0.3)
        assert old_lease.acquire()
        old = link.applier()
        new = link.applier()
        try:
            old.hold(old_lease)
            it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'before', 1)")
            drain(old)
            assert it.rows("right") == {1: ("before", 1)}
            # the old applier stops answering (SIGSTOP, a pause, a partition): its lease
            # runs out, a standby takes it over and raises the fence in both databases
            new_lease = ApplierLease(link.state, name, ttl=60)
            wait_until("the old lease expires", new_lease.acquire)
            assert new_lease.epoch == 2
            new.hold(new_lease)
            it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (2, 'erp', 2)")
            it.right.app_sql("INSERT INTO items (id, name, qty) VALUES (3, 'crm', 3)")
            it.right.app_sql("UPDATE items SET qty = 10 WHERE id = 1")
            # the old one wakes up: whatever it tries to commit, in either database, fails
            with pytest.raises(LeaseLost, match="lost its lease"):
                old.step()
            assert it.rows("right") == {1: ("before", 10), 3: ("crm", 3)}
            assert it.rows("left") == {1: ("before", 1), 2: ("erp", 2)}
            assert [k for _op, k in it.log("left")] and [k for _op, k in it.log("right")]
            with pytest.raises(LeaseLost, match="another process took"):
                old.housekeeping()  # and it learns it at its next renewal, too
            # the new holder applies everything, once
            drain(new)
            assert it.rows("left") == it.rows("right") == {
                1: ("before", 10), 2: ("erp", 2), 3: ("crm", 3)}
            assert it.log("left") == it.log("right") == []
        finally:
            old.close()
            new.close()


def _audit(backend: Any) -> None:
    """Record every committed insert into ``items`` (a rolled-back one leaves nothing)."""
    backend.app_sql("CREATE TABLE items_audit (id INT NOT NULL)")
    if backend.kind == "postgresql":
        backend.app_sql("CREATE FUNCTION items_audit() RETURNS trigger LANGUAGE plpgsql AS "
                        "$$ BEGIN INSERT INTO items_audit VALUES (NEW.id); RETURN NULL; END $$")
        backend.app_sql("CREATE TRIGGER items_audit AFTER INSERT ON items FOR EACH ROW "
                        "EXECUTE FUNCTION items_audit()")
    else:
        backend.app_sql("CREATE TRIGGER items_audit AFTER INSERT ON items FOR EACH ROW "
                        "INSERT INTO items_audit VALUES (NEW.id)")


@pytest.mark.parametrize("pair", [("postgresql", "mariadb"), ("postgresql", "postgresql")],
                         ids=lambda p: "-".join(p))
def test_a_zombie_caught_mid_transaction_rolls_back_and_the_change_is_applied_once(
        make_backend: BackendFactory, tmp_path: Path, pair: tuple[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    it = make_items(make_backend, tmp_path, *pair)
    for b in (it.left, it.right):
        b.app_sql("DROP TABLE IF EXISTS items_audit")
        if b.kind == "postgresql":
            b.app_sql("DROP FUNCTION IF EXISTS items_audit() CASCADE")
    _audit(it.right)
    with it.link() as link:
        link.start_maps()
        name = link.config.link_name
        zombie_lease = ApplierLease(link.state, name, ttl=0.3)
        assert zombie_lease.acquire()
        zombie, heir = link.applier(), link.applier()
        inside, wake = threading.Event(), threading.Event()
        zombie_threads: list[threading.Thread] = []
        target_log = zombie.logs[Side.RIGHT]
        finish = target_log.finish_apply

        def stalled(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() in zombie_threads:
                # the zombie has written the rows in its open target transaction: it stops
                # here, before its bookkeeping (where the fence is raised) and its commit
                inside.set()
                assert wake.wait(120)
            return finish(*args, **kwargs)

        monkeypatch.setattr(target_log, "finish_apply", stalled)
        outcome: list[BaseException] = []

        def zombie_step() -> None:
            try:
                zombie.step()
            except BaseException as exc:  # handed to the test thread
                outcome.append(exc)

        try:
            zombie.hold(zombie_lease)
            it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (10, 'once', 1)")
            worker = threading.Thread(target=zombie_step)
            zombie_threads.append(worker)
            worker.start()
            assert inside.wait(60), "the zombie never reached its commit"
            heir_lease = ApplierLease(link.state, name, ttl=60)
            wait_until("the zombie's lease expires", heir_lease.acquire)
            heir.hold(heir_lease)
            applied: list[int] = []
            heir_thread = threading.Thread(target=lambda: applied.append(drain(heir, timeout=120)))
            heir_thread.start()  # it waits on the row the zombie holds
            wake.set()
            worker.join(120)
            heir_thread.join(120)
            assert not worker.is_alive() and not heir_thread.is_alive()
            assert len(outcome) == 1 and isinstance(outcome[0], LeaseLost), outcome
            # refused by the fence in the target's own transaction (crm), not later
            assert "applies in crm" in str(outcome[0])
            assert applied and applied[0] >= 1
            assert it.rows("right") == {10: ("once", 1)}
            # one committed insert: the zombie's rolled back, the heir's is the only one
            assert it.right.sql("SELECT id FROM items_audit") == [(10,)]
            assert it.log("left") == []
        finally:
            wake.set()
            zombie.close()
            heir.close()


def test_a_new_state_store_moves_the_epoch_past_the_fences_the_databases_keep(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    it = make_items(make_backend, tmp_path, "postgresql", "mariadb")
    with it.link() as link:
        link.start_maps()
        name = link.config.link_name
        applier = link.applier()
        try:
            lease = ApplierLease(link.state, name)
            assert lease.acquire()
            lease.advance(41)
            applier.hold(lease)  # fences at 41 in both databases
        finally:
            lease.release()
            applier.close()
        # the state store is made anew (lost, or restored from an old backup): its lease
        # starts again at epoch 1, below the fences
        with link.state.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM applier_leases"))
        fresh = ApplierLease(link.state, name)
        assert fresh.acquire() and fresh.epoch == 1
        applier = link.applier()
        try:
            applier.hold(fresh)
            assert fresh.epoch == 42
            it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'flows', 1)")
            drain(applier)
            assert it.rows("right") == {1: ("flows", 1)}
        finally:
            fresh.release()
            applier.close()


def test_a_partition_worker_s_batch_carries_every_partition_s_fence(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    """A JetStream worker applies messages of several partitions in one target transaction:
    it commits only while it still holds every one of those partitions' leases. A newer
    worker that took one partition over (its fence raised in the database) makes the whole
    batch roll back, however current the other partitions' fences are."""
    from dualwrite.engine.jetstream.worker import PartitionApplier
    from dualwrite.model.maps import Side

    it = make_items(make_backend, tmp_path, "postgresql", "mariadb")
    with it.link() as link:
        link.start_maps()
        worker = PartitionApplier.for_link(link, process="worker-a")
        try:
            # a newer worker took partition p1 over: epoch 2 in the target database
            right = link.connectors[Side.RIGHT]
            with right.transaction() as sess:
                right.change_log().fence(sess, "p1", 2)
            it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'erp', 1)")
            worker.partition_fences = [("p0", 1), ("p1", 1)]
            with pytest.raises(LeaseLost):
                worker.step()
            assert it.rows("right") == {}
            # holding both (p1 at its new epoch), the same batch commits
            worker.partition_fences = [("p0", 1), ("p1", 2)]
            drain(worker)
            assert it.rows("right") == {1: ("erp", 1)}
        finally:
            worker.partition_fences = []
            worker.close()
