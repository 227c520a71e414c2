"""Proof of change capture, the acceptance criteria of the capture issue.

1. A stateful property test (hypothesis): random creates, updates and deletes made by the
   applications themselves on BOTH databases (including the same key on both sides before the
   applier runs), pauses and resumes of the map, and applier steps, interleaved. Once quiet,
   both sides agree (verify), and the conflicts recorded agree with the map's policy.
2. ``dualwrite run`` killed with SIGKILL at random points, 20 times, under a steady workload of
   single-row and multi-row transactions: every change is applied once (no loss, no
   duplicate), counters included.
3. The target unreachable for 5 s (30 s with ``--long``) during a workload: the source keeps
   writing, the queue grows and shows in ``status``, and the backlog drains once the target
   is back. The target is reached through a fault proxy (tests/faultproxy.py) that refuses
   connections and resets the open ones: the shared database servers are never stopped.

Plus minimal tests of the defects these found (see their docstrings).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    precondition,
    rule,
    run_state_machine_as_test,
)

from capture_fixtures import ITEMS_MAP, fresh_tables, link_config
from dualwrite.connectors.base import Connector
from dualwrite.connectors.sql import SqlConnector
from dualwrite.engine.capture import Applier
from dualwrite.engine.link import Link
from dualwrite.errors import TransientConnectorError
from dualwrite.model.maps import Side
from dualwrite.testing.backends import pairs

from conftest import PG_URL, Backend, BackendFactory
from faultproxy import FaultProxy, Mode

# -- a dedicated pair of tables and its map -----------------------------------------------------


#: a row's mapped values (name, qty); a missing row is None
Value = tuple[str | None, int | None]
#: one application write: (key, "set" | "bump" | "delete", name, qty)
Op = tuple[int, str, str | None, int | None]

READY = "dualwrite run: applying captured changes"
STOPPED = "dualwrite run: stopped"


def items_metadata() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("items", md,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("name", sa.String(40)),
             sa.Column("qty", sa.Integer))
    return md


@dataclass
class ItemsPair:
    left: Backend
    right: Backend
    config: Path

    def link(self) -> Link:
        return Link.open(self.config)

    def side(self, name: str) -> Backend:
        return self.left if name == "left" else self.right


def contents(backend: Backend) -> dict[int, Value]:
    """The rows of ``items`` as the application sees them."""
    with backend.app().connect() as conn:
        rows = conn.execute(sa.text("SELECT id, name, qty FROM items")).all()
    return {int(r[0]): (r[1], None if r[2] is None else int(r[2])) for r in rows}


def reset_items_pair(left: Backend, right: Backend, root: Path, policy: str = "left-wins",
                     capture: dict[str, Any] | None = None,
                     right_through: FaultProxy | None = None) -> ItemsPair:
    """Fresh ``items`` tables (no change log, no link record) and a config in ``root``; with
    ``right_through``, the config reaches the right database through that fault proxy (the
    test's own ``right`` backend still connects directly)."""
    fresh_tables(items_metadata(), left, right)

    def extra(cfg: dict[str, Any]) -> None:
        if capture:
            cfg["capture"] = capture
        if right_through is not None:
            cfg["environments"]["crm"]["url"] = right_through.url(right.url)

    path = link_config(root, left, right, {"items": ITEMS_MAP.format(policy=policy)},
                       extra=extra)
    return ItemsPair(left, right, path)


def drop_items(backend: Backend) -> None:
    """Leave the database as found: the table (its triggers go with it) and the change log."""
    with contextlib.suppress(Exception), backend.app().begin() as conn:
        for t in ("items", "items_audit", "dualwrite_changes", "dualwrite_applied",
                  "dualwrite_origin"):
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {t}")


AUDIT_DDL = {
    "postgresql": [
        "CREATE TABLE items_audit (n BIGSERIAL PRIMARY KEY, id INT NOT NULL, op CHAR(1))",
        "CREATE OR REPLACE FUNCTION items_audit_f() RETURNS trigger LANGUAGE plpgsql AS $a$ "
        "BEGIN IF TG_OP = 'DELETE' THEN INSERT INTO items_audit (id, op) VALUES (OLD.id, 'D'); "
        "ELSE INSERT INTO items_audit (id, op) VALUES (NEW.id, left(TG_OP, 1)); END IF; "
        "RETURN NULL; END $a$",
        "CREATE TRIGGER items_audit_t AFTER INSERT OR UPDATE OR DELETE ON items "
        "FOR EACH ROW EXECUTE FUNCTION items_audit_f()",
    ],
    "mariadb": [
        "CREATE TABLE items_audit (n BIGINT AUTO_INCREMENT PRIMARY KEY, id INT NOT NULL, "
        "op CHAR(1))",
        *(f"CREATE TRIGGER items_audit_{op.lower()} AFTER {event} ON items FOR EACH ROW "
          f"INSERT INTO items_audit (id, op) VALUES ({row}.id, '{op}')"
          for op, event, row in (("I", "INSERT", "NEW"), ("U", "UPDATE", "NEW"),
                                 ("D", "DELETE", "OLD"))),
    ],
}


def add_audit(backend: Backend) -> None:
    """An audit trigger of the application's own on ``items``: one row in ``items_audit``
    per row written, by anyone (the application, or dualwrite applying a change)."""
    with backend.app().begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS items_audit")
        for statement in AUDIT_DDL[backend.kind]:
            conn.exec_driver_sql(statement)


def audit_counts(backend: Backend) -> dict[int, int]:
    """Rows written per key, according to the audit trigger."""
    with backend.app().connect() as conn:
        rows = conn.execute(sa.text("SELECT id, COUNT(*) FROM items_audit GROUP BY id")).all()
    return {int(r[0]): int(r[1]) for r in rows}


@pytest.fixture
def backends(make_backend: BackendFactory) -> Iterator[Callable[[str, str], tuple[Backend,
                                                                                 Backend]]]:
    """(left, right) backends of a pair; their ``items`` tables are dropped afterwards."""
    made: list[Backend] = []

    def factory(left: str, right: str) -> tuple[Backend, Backend]:
        lb = make_backend(left, "dualwrite_test_a")
        rb = make_backend(right, "dualwrite_test_b" if right == left else "dualwrite_test_a")
        made.extend([lb, rb])
        return lb, rb

    yield factory
    for b in made:
        if b.kind != "sqlite":
            drop_items(b)


@dataclass
class Touch:
    """What one application transaction did to one key."""

    before: Value | None
    after: Value | None
    changed: bool  # some statement changed the row: the triggers captured a change


def app_write(backend: Backend, ops: Sequence[Op]) -> dict[int, Touch]:
    """Run ``ops`` in one application transaction, as an application would (read the row, then
    insert, update or delete it). Returns per key its row before the first op and after the
    last, and whether any statement changed it."""
    out: dict[int, Touch] = {}
    select = sa.text("SELECT name, qty FROM items WHERE id = :k")
    with backend.app().begin() as conn:
        for key, kind, name, qty in ops:
            got = conn.execute(select, {"k": key}).first()
            before: Value | None = None if got is None else (got[0], got[1])
            if kind == "delete":
                if before is not None:
                    conn.execute(sa.text("DELETE FROM items WHERE id = :k"), {"k": key})
            elif kind == "bump" and before is not None:
                conn.execute(sa.text("UPDATE items SET qty = qty + 1 WHERE id = :k"),
                             {"k": key})
            elif before is not None:
                conn.execute(sa.text("UPDATE items SET name = :n, qty = :q WHERE id = :k"),
                             {"k": key, "n": name, "q": qty})
            else:
                conn.execute(sa.text("INSERT INTO items (id, name, qty) VALUES (:k, :n, :q)"),
                             {"k": key, "n": name, "q": qty})
            got = conn.execute(select, {"k": key}).first()
            after: Value | None = None if got is None else (got[0], got[1])
            prior = out.get(key)
            out[key] = Touch(prior.before if prior else before, after,
                             (prior is not None and prior.changed) or after != before)
    return out


def queued_keys(backend: Backend) -> set[int]:
    """Keys of ``items`` with changes still queued in this side's change log."""
    with backend.app().connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT k FROM dualwrite_changes WHERE map = 'items'")).all()
    return {int(json.loads(r[0])[0]) for r in rows}


def wait_for(condition: Callable[[], bool], timeout: float, what: Callable[[], str],
             interval: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail with ``what()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not reached within {timeout} s: {what()}", pytrace=False)
        time.sleep(interval)


def queued(link: Link, map_name: str = "items") -> int:
    return int(next(m for m in link.status() if m["map"] == map_name)["queued"])


def settle(applier: Applier, link: Link, timeout: float = 60.0) -> None:
    """Step the applier until it finds nothing twice in a row."""
    deadline = time.monotonic() + timeout
    idle = 0
    while idle < 2:
        if time.monotonic() > deadline:
            pytest.fail(f"changes still coming after {timeout} s: {link.status()}",
                        pytrace=False)
        idle = idle + 1 if applier.step() == 0 else 0


def drain(applier: Applier, link: Link, timeout: float = 60.0) -> None:
    """Step the applier (through any backoff) until nothing is queued nor parked and it finds
    nothing twice in a row."""
    deadline = time.monotonic() + timeout
    idle = 0
    while idle < 2:
        if time.monotonic() > deadline:
            pytest.fail(f"not drained after {timeout} s: {link.status()}; inbox: "
                        f"{[e.reason for e in link.state.errors()]}", pytrace=False)
        idle = idle + 1 if applier.step() == 0 and queued(link) == 0 else 0


# -- 1. stateful property test --------------------------------------------------------------------

PROPERTY_PAIRS = pairs(needs=("capture",))
POLICIES = ["left-wins", "right-wins", "newest-wins"]

KEY_RANGE = range(6)
KEYS = st.sampled_from(KEY_RANGE)
KINDS = st.sampled_from(["set", "bump", "delete"])
NAMES = st.sampled_from(["apple", "pear", "plum", "Ünïcode ✓", "", None])
QTYS = st.one_of(st.none(), st.integers(-3, 40))
OPS = st.tuples(KEYS, KINDS, NAMES, QTYS)
SIDES = st.sampled_from(["left", "right"])


def capture_machine(left: Backend, right: Backend, policy: str, root: Path
                    ) -> type[RuleBasedStateMachine]:
    examples = itertools.count()

    class CaptureMachine(RuleBasedStateMachine):
        """Application writes on both sides, pauses, resumes and applier steps."""

        def __init__(self) -> None:
            super().__init__()
            self.pair = reset_items_pair(left, right, root / f"example-{next(examples)}",
                                         policy)
            self.link = self.pair.link()
            self.link.start_maps(["items"])
            self.applier = self.link.applier()
            self.paused = False
            #: key -> side -> the value that side's application last wrote
            self.written: dict[int, dict[str, Value | None]] = {}
            #: keys whose last write was the same key changed on both sides, from the same
            #: synced version to different ones, before the applier ran: (left, right) values
            self.both: dict[int, tuple[Value | None, Value | None]] = {}

        def _note(self, side: str, touched: dict[int, Touch]) -> None:
            for key, touch in touched.items():
                if touch.changed:
                    self.written.setdefault(key, {})[side] = touch.after
                    self.both.pop(key, None)

        @rule(op=OPS)
        def write_left(self, op: Op) -> None:
            self._note("left", app_write(left, [op]))

        @rule(op=OPS)
        def write_right(self, op: Op) -> None:
            self._note("right", app_write(right, [op]))

        @rule(side=SIDES, ops=st.lists(OPS, min_size=2, max_size=4))
        def transaction(self, side: str, ops: list[Op]) -> None:
            self._note(side, app_write(self.pair.side(side), ops))

        @rule(key=KEYS, left_kind=KINDS, right_kind=KINDS, left_name=NAMES,
              right_name=NAMES, left_qty=QTYS, right_qty=QTYS)
        def write_both(self, key: int, left_kind: str, right_kind: str,
                       left_name: str | None, right_name: str | None, left_qty: int | None,
                       right_qty: int | None) -> None:
            """The same key changed on both sides before the applier runs. The right first:
            under newest-wins the left's change is then the newer one (and at equal capture
            times the left wins the tie), so the left's value must win under left-wins and
            newest-wins, the right's under right-wins: when the key was in sync before (same
            row, nothing queued for it) and both changed it, to different rows."""
            busy = queued_keys(left) | queued_keys(right)
            lrows, rrows = contents(left), contents(right)
            # prefer a key in sync (same row on both sides, nothing queued for it): only
            # then is the outcome the policy's to decide alone
            in_sync = [k for k in KEY_RANGE if k not in busy and lrows.get(k) == rrows.get(k)]
            if in_sync:
                key = in_sync[key % len(in_sync)]
            synced = key in in_sync
            r = app_write(right, [(key, right_kind, right_name, right_qty)])[key]
            lt = app_write(left, [(key, left_kind, left_name, left_qty)])[key]
            self._note("right", {key: r})
            self._note("left", {key: lt})
            if synced and lt.changed and r.changed and lt.after != r.after:
                self.both[key] = (lt.after, r.after)

        @rule()
        def apply(self) -> None:
            handled = self.applier.step()
            if self.paused:
                assert handled == 0, "the applier applied changes of a paused map"

        @precondition(lambda self: not self.paused)
        @rule()
        def pause(self) -> None:
            assert self.link.pause_maps(["items"]) == ["items"]
            self.applier.maps(refresh=True)  # the in-process applier re-reads states at once
            self.paused = True

        @precondition(lambda self: self.paused)
        @rule()
        def resume(self) -> None:
            assert self.link.resume_maps(["items"]) == ["items"]
            self.applier.maps(refresh=True)
            self.paused = False

        def teardown(self) -> None:
            try:
                # only once every step passed: a failing step's own error is the report
                if sys.exc_info()[0] is None:
                    self.quiesce_and_check()
            finally:
                self.applier.close()
                self.link.close()

        def quiesce_and_check(self) -> None:
            self.link.resume_maps(["items"])
            self.applier.maps(refresh=True)
            settle(self.applier, self.link)  # no outage here: no backoff to wait through
            assert [e.reason for e in self.link.state.errors()] == []
            assert queued(self.link) == 0, self.link.status()
            [result] = self.link.verify(["items"])
            assert result.ok, result.as_dict()
            final = contents(left)
            assert contents(right) == final
            conflicts = self.link.state.conflicts("items")
            winners = {c["winner"] for c in conflicts}
            allowed = {"left-wins": {"left"}, "right-wins": {"right"},
                       "newest-wins": {"left", "right"}}[policy]
            assert winners <= allowed, (policy, conflicts)
            event(f"keys changed on both sides, checked: {min(len(self.both), 2)}+")
            event(f"conflicts recorded: {min(len(conflicts), 3)}+")
            for key, (l_value, r_value) in self.both.items():
                want = r_value if policy == "right-wins" else l_value
                assert final.get(key) == want, (
                    f"key {key} changed on both sides (left to {l_value}, right to "
                    f"{r_value}): under {policy} expected {want}, both sides hold "
                    f"{final.get(key)}")
                assert any(c["key"] == [key] for c in conflicts), (
                    f"key {key} changed on both sides but no conflict was recorded")
            for key, by_side in self.written.items():
                if len(by_side) == 1:  # written by one side only: its last write stands
                    [(side, value)] = by_side.items()
                    assert final.get(key) == value, (key, side, value, final.get(key))

    return CaptureMachine


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(("left_kind", "right_kind"), PROPERTY_PAIRS)
def test_random_writes_on_both_sides_converge(backends: Callable[[str, str], tuple[
        Backend, Backend]], tmp_path: Path, left_kind: str, right_kind: str, policy: str,
        long_run: bool) -> None:
    left, right = backends(left_kind, right_kind)
    machine = capture_machine(left, right, policy, tmp_path)
    # Shrinking a failure replays hundreds of examples (each with fresh tables and a link):
    # minutes. The default run reports a failure as found; --long shrinks it too.
    phases = list(Phase) if long_run else [Phase.explicit, Phase.reuse, Phase.generate]
    run_state_machine_as_test(machine, settings=settings(
        max_examples=300 if long_run else 8, stateful_step_count=50 if long_run else 20,
        deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True,
        phases=phases))


# -- a steady application workload ---------------------------------------------------------------

class Workload:
    """Application transactions on one side, in a thread: single-row inserts, increments,
    renames and deletes, and multi-row transactions (which may increment one row twice),
    with an exact model of what committed."""

    def __init__(self, backend: Backend, seed: int, pace: float) -> None:
        self.backend = backend
        self.rng = random.Random(seed)
        self.pace = pace
        self.model: dict[int, Value] = {}
        self.transactions = 0
        self.increments = 0
        self._next_id = 1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="workload", daemon=True)

    def start(self) -> Workload:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the workload did not stop"
        if self._error is not None:
            raise AssertionError(f"the workload failed: {self._error!r}") from self._error

    def snapshot(self) -> dict[int, Value]:
        with self._lock:
            return dict(self.model)

    def _run(self) -> None:
        try:
            with self.backend.app().connect() as conn:
                while not self._stop.is_set():
                    self._one(conn)
                    self._stop.wait(self.pace)
        except BaseException as exc:
            self._error = exc

    def _one(self, conn: sa.Connection) -> None:
        model = dict(self.model)
        ids = sorted(model)
        roll = self.rng.random()
        increments = 0
        with conn.begin():
            if roll < 0.3 or len(ids) < 5:
                todo = [("insert", 0)]
            elif roll < 0.55:
                todo = [("bump", self.rng.choice(ids))]
            elif roll < 0.65:
                todo = [("rename", self.rng.choice(ids))]
            elif roll < 0.72:
                todo = [("delete", self.rng.choice(ids))]
            else:  # several rows in one transaction, perhaps one row twice
                todo = [("insert", 0), ("insert", 0),
                        *(("bump", self.rng.choice(ids)) for _ in range(3))]
                if self.rng.random() < 0.3:
                    todo.append(("delete", self.rng.choice(ids)))
            for kind, key in todo:
                if kind == "insert":
                    key = self._next_id
                    self._next_id += 1
                    row: Value = (f"item {key}", 0)
                    conn.execute(sa.text("INSERT INTO items (id, name, qty) VALUES "
                                         "(:k, :n, :q)"), {"k": key, "n": row[0], "q": 0})
                    model[key] = row
                elif key not in model:
                    continue  # deleted earlier in this transaction
                elif kind == "bump":
                    conn.execute(sa.text("UPDATE items SET qty = qty + 1 WHERE id = :k"),
                                 {"k": key})
                    name, qty = model[key]
                    model[key] = (name, (qty or 0) + 1)
                    increments += 1
                elif kind == "rename":
                    name = f"item {key} r{self.rng.randrange(1000)}"
                    conn.execute(sa.text("UPDATE items SET name = :n WHERE id = :k"),
                                 {"k": key, "n": name})
                    model[key] = (name, model[key][1])
                else:
                    conn.execute(sa.text("DELETE FROM items WHERE id = :k"), {"k": key})
                    del model[key]
        with self._lock:  # committed
            self.model = model
            self.transactions += 1
            self.increments += increments


def start_run(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``dualwrite -c CONFIG run`` in a subprocess, its stderr in ``log``."""
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "dualwrite", "-c", str(config), "run"],
            stdout=subprocess.DEVNULL, stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    def ready() -> bool:
        assert proc.poll() is None, f"dualwrite run exited early:\n{log.read_text()[-3000:]}"
        return READY in log.read_text()

    wait_for(ready, timeout, lambda: f"dualwrite run never became ready:\n"
             f"{log.read_text()[-3000:]}", interval=0.02)


def stop_run(proc: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM: the applier stops cleanly (exit 0)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"dualwrite run did not stop on SIGTERM:\n{log.read_text()[-3000:]}")
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert STOPPED in log.read_text(), log.read_text()[-3000:]


@contextlib.contextmanager
def running(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``dualwrite run``, ready; stopped with SIGTERM at the end (killed if the block fails)."""
    proc = start_run(config, log)
    try:
        wait_ready(proc, log)
        yield proc
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    stop_run(proc, log)


def cli_status(config: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "dualwrite", "-c", str(config), "status",
                           "--json"], capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return dict(json.loads(done.stdout))


def differences(model: dict[int, Value], got: dict[int, Value]) -> str:
    """What ``got`` lacks, has too many of, or holds wrong, against ``model`` (empty: none)."""
    missing = sorted(set(model) - set(got))
    extra = sorted(set(got) - set(model))
    wrong = sorted(k for k in set(model) & set(got) if got[k] != model[k])
    if not (missing or extra or wrong):
        return ""
    return (f"{len(missing)} missing (e.g. {missing[:5]}), {len(extra)} extra (e.g. "
            f"{extra[:5]}), {len(wrong)} wrong (e.g. "
            f"{[(k, model[k], got[k]) for k in wrong[:5]]})")


def check_delivered(pair: ItemsPair, model: dict[int, Value]) -> None:
    """Both sides hold exactly what the application committed; each row was written as many
    times on the target as on the source (a change lost or applied twice would show); dualwrite
    saw no error and no conflict (one writer: a change applied out of order would show as
    one)."""
    assert differences(model, contents(pair.left)) == "", "the source is not what was written"
    assert differences(model, contents(pair.right)) == "", "the target differs"
    counts = {s: b.sql("SELECT COUNT(*), COALESCE(SUM(qty), 0) FROM items")[0]
              for s, b in (("left", pair.left), ("right", pair.right))}
    assert counts["left"] == counts["right"] == (len(model), sum(q or 0 for _n, q in
                                                                 model.values())), counts
    # one writer: each row change on the source is one row change on the target
    source, target = audit_counts(pair.left), audit_counts(pair.right)
    assert sum(source.values()) > len(model)
    off = {k: (source.get(k, 0), target.get(k, 0)) for k in set(source) | set(target)
           if source.get(k, 0) != target.get(k, 0)}
    assert not off, ("rows written a different number of times on the source and the target "
                     f"(key: (source, target)): {dict(sorted(off.items())[:10])}, "
                     f"{len(off)} keys in all")
    with pair.link() as link:
        [result] = link.verify(["items"])
        assert result.ok, result.as_dict()
        assert link.state.errors() == []
        assert link.state.conflicts("items") == []
        assert queued(link) == 0


def wait_drained(link: Link, pair: ItemsPair, model: dict[int, Value], timeout: float,
                 log: Path) -> None:
    """Wait until the queue is empty (the applier forgets a change only once it is committed
    on the target), then for the target to hold what the application wrote."""
    wait_for(lambda: queued(link) == 0, timeout,
             lambda: f"backlog not drained: {link.status()}\n{log.read_text()[-3000:]}",
             interval=0.2)
    assert differences(model, contents(pair.right)) == "", (
        f"queue empty but the target differs: {differences(model, contents(pair.right))}")


# -- 2. SIGKILL at random points -----------------------------------------------------------------

KILL_PAIRS = pairs(needs=("two_phase", "capture"))


def target_writes(backend: Backend) -> int:
    """Rows written on ``backend``'s ``items`` so far, by anyone (its audit trigger's count)."""
    return int(backend.sql("SELECT COUNT(*) FROM items_audit")[0][0])


@pytest.mark.parametrize(("left_kind", "right_kind"), KILL_PAIRS)
def test_run_killed_at_random_points_applies_each_change_once(
        backends: Callable[[str, str], tuple[Backend, Backend]], tmp_path: Path,
        left_kind: str, right_kind: str, long_run: bool) -> None:
    """Each round waits until the workload has committed new transactions, starts
    ``dualwrite run`` and kills it: every other round at a random point after it is ready
    (start-up and recovery included), the rounds between once it has applied something (a
    condition waited for, however long a busy machine takes), at a random point shortly
    after, so that those kills land on an applier at work with a backlog still coming. Only
    the applier writes the target; the last run drains what the killed ones left."""
    kills = 100 if long_run else 8
    left, right = backends(left_kind, right_kind)
    pair = reset_items_pair(left, right, tmp_path, capture={"batch_size": 50})
    with pair.link() as link:
        link.start_maps(["items"])
    add_audit(left)
    add_audit(right)
    rng = random.Random(f"{left_kind}-{right_kind}-kills")
    workload = Workload(left, seed=rng.randrange(1 << 30), pace=0.002).start()
    applied_per_round: list[int] = []

    def kill_round(n: int, at_work: bool) -> int:
        """One round; returns how many rows its run wrote on the target."""
        # the workload goes on across every kill: new transactions for this round
        transactions, increments = workload.transactions, workload.increments
        wait_for(lambda: workload.transactions >= transactions + 10
                 and workload.increments >= increments + 5, 120,
                 lambda: f"the workload stalled at {workload.transactions} transactions")
        written = target_writes(right)
        log = tmp_path / f"run-{n}.log"
        proc = start_run(pair.config, log)
        try:
            wait_ready(proc, log, timeout=120)
            if at_work:  # this run has applied something
                wait_for(lambda: target_writes(right) > written or proc.poll() is not None,
                         120, lambda: f"run {n} applied nothing:\n{log.read_text()[-3000:]}")
            time.sleep(rng.uniform(0.0, 0.4))  # the kill point, not a synchronisation
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
        return target_writes(right) - written

    try:
        for n in range(kills):
            applied_per_round.append(kill_round(n, at_work=n % 2 == 1))
        # and after the last kill: changes no killed run can have applied
        transactions = workload.transactions
        wait_for(lambda: workload.transactions >= transactions + 3, 120,
                 lambda: "the workload stalled after the last kill")
    finally:
        workload.stop()
    assert all(applied_per_round[n] > 0 for n in range(1, kills, 2)), applied_per_round
    model = workload.snapshot()
    # the killed runs left work behind for the last one: the target is not there yet
    assert differences(model, contents(right)) != "", "nothing was left to drain"
    log = tmp_path / "run-final.log"
    with running(pair.config, log), pair.link() as link:
        wait_drained(link, pair, model, 180, log)
        status = {m["map"]: m for m in cli_status(pair.config)["maps"]}
        assert status["items"]["state"] == "running"
        assert status["items"]["queued"] == 0 and status["items"]["errors"] == 0
    check_delivered(pair, model)


# -- 3. the target unreachable for a while ---------------------------------------------------------

#: samples of the queue taken during an outage (at least)
OUTAGE_SAMPLES = 8
#: transactions the workload commits during an outage (at least: the outage lasts until then)
OUTAGE_TRANSACTIONS = 50


@pytest.fixture
def outage_seconds(long_run: bool) -> float:
    """How long the target stays unreachable (at least): 5 s, 30 s with --long."""
    return 30.0 if long_run else 5.0


def _pg_admin() -> sa.Engine:
    return sa.create_engine(PG_URL.format(db="postgres"), isolation_level="AUTOCOMMIT",
                            poolclass=sa.pool.NullPool)


@contextlib.contextmanager
def target_down(proxy: FaultProxy) -> Iterator[None]:
    """The target unreachable for the block, as a stopped server is: the sessions through
    ``proxy`` reset, new ones refused. Reachable again after the block."""
    with proxy.fault(Mode.REFUSE):
        yield


def dispose_pool(connector: Connector) -> None:
    """Drop a connector's pooled sessions: the next use connects anew."""
    assert isinstance(connector, SqlConnector)
    connector.engine.dispose()


@pytest.mark.parametrize(("left_kind", "right_kind"), KILL_PAIRS)
def test_target_down_loses_nothing_and_drains(
        backends: Callable[[str, str], tuple[Backend, Backend]], tmp_path: Path,
        fault_proxy: Callable[[Backend], FaultProxy], outage_seconds: float,
        left_kind: str, right_kind: str) -> None:
    """``dualwrite run`` reaches the target through a fault proxy, which refuses it for
    ``outage_seconds`` (and until the workload has committed OUTAGE_TRANSACTIONS meanwhile,
    however slow a busy machine makes it) while the source keeps writing."""
    left, right = backends(left_kind, right_kind)
    proxy = fault_proxy(right)
    pair = reset_items_pair(left, right, tmp_path, right_through=proxy)
    with pair.link() as link:
        link.start_maps(["items"])
    add_audit(left)
    add_audit(right)
    log = tmp_path / "run.log"
    # (queued changes, transactions committed before and after reading the queue)
    samples: list[tuple[int, int, int]] = []
    workload = Workload(left, seed=11, pace=0.03)
    with running(pair.config, log) as proc, pair.link() as link:
        workload.start()
        try:
            # the applier is applying before the outage, through the proxy
            wait_for(lambda: len(contents(right)) >= 20, 120,
                     lambda: f"nothing applied before the outage: {link.status()}")
            assert proxy.accepted > 0
            noticed = f"capture {link.env_name(Side.LEFT)} -> {link.env_name(Side.RIGHT)}: "
            retries = log.read_text().count(noticed)
            with target_down(proxy):
                end = time.monotonic() + outage_seconds
                # the queue is sampled once dualwrite run has met the outage: a batch whose
                # commit on the target was acknowledged just before is forgotten on the
                # source first
                wait_for(lambda: log.read_text().count(noticed) > retries, 120,
                         lambda: f"dualwrite run did not notice the outage:\n"
                         f"{log.read_text()[-3000:]}")
                deadline = end + 120
                while True:
                    before = workload.transactions
                    [row] = [m for m in link.status() if m["map"] == "items"]
                    samples.append((int(row["queued"]), before, workload.transactions))
                    assert link.env_name(Side.RIGHT) in row["unreachable"], row
                    assert proc.poll() is None, (
                        f"dualwrite run died during the outage:\n{log.read_text()[-3000:]}")
                    if (time.monotonic() >= end and len(samples) >= OUTAGE_SAMPLES
                            and samples[-1][1] - samples[0][2] >= OUTAGE_TRANSACTIONS):
                        break
                    assert time.monotonic() < deadline, f"the workload stalled: {samples}"
                    time.sleep(outage_seconds / OUTAGE_SAMPLES)  # pacing the samples
            # this test's own sessions to the target died with it (dualwrite run's are its
            # own business: it must cope)
            dispose_pool(link.connectors[Side.RIGHT])
            # writes go on a little after the target is back
            target = workload.transactions + 20
            wait_for(lambda: workload.transactions >= target, 60, lambda: "workload stalled")
        finally:
            workload.stop()
        model = workload.snapshot()
        wait_drained(link, pair, model, 180, log)
        assert proc.poll() is None, log.read_text()[-3000:]
        [row] = [m for m in link.status() if m["map"] == "items"]
        assert row["unreachable"] == [] and row["errors"] == 0, row
    # the queue grew all along: nothing left it while the target was down, and every
    # transaction committed between two samples queued at least one change
    sizes = [q for q, _b, _a in samples]
    assert sizes == sorted(sizes), f"the queue shrank during the outage: {samples}"
    grown = samples[-1][1] - samples[0][2]  # committed after the first read, before the last
    assert grown >= OUTAGE_TRANSACTIONS, samples
    assert sizes[-1] - sizes[0] >= grown, f"the queue did not grow with the writes: {samples}"
    check_delivered(pair, model)


# -- 4. minimal tests of defects the tests above found -------------------------------------------

@pytest.fixture
def items_link(backends: Callable[[str, str], tuple[Backend, Backend]], tmp_path: Path,
               request: pytest.FixtureRequest) -> Iterator[tuple[ItemsPair, Link, Applier]]:
    """A running ``items`` map (left-wins) on the pair given by the test's parameters."""
    left, right = backends(request.getfixturevalue("left_kind"),
                           request.getfixturevalue("right_kind"))
    pair = reset_items_pair(left, right, tmp_path / "pair", "left-wins")
    with _running_items(pair) as running_link:
        yield running_link


@pytest.fixture
def proxied_items_link(backends: Callable[[str, str], tuple[Backend, Backend]],
                       tmp_path: Path, request: pytest.FixtureRequest,
                       fault_proxy: Callable[[Backend], FaultProxy]
                       ) -> Iterator[tuple[ItemsPair, Link, Applier, FaultProxy]]:
    """``items_link`` whose link reaches the right database through a fault proxy."""
    left, right = backends(request.getfixturevalue("left_kind"),
                           request.getfixturevalue("right_kind"))
    proxy = fault_proxy(right)
    pair = reset_items_pair(left, right, tmp_path / "pair", "left-wins", right_through=proxy)
    with _running_items(pair) as (pair, link, applier):
        yield pair, link, applier, proxy


@contextlib.contextmanager
def _running_items(pair: ItemsPair) -> Iterator[tuple[ItemsPair, Link, Applier]]:
    link = pair.link()
    try:
        link.start_maps(["items"])
        applier = link.applier()
        try:
            yield pair, link, applier
        finally:
            applier.close()
    finally:
        link.close()


@pytest.mark.parametrize("same", [True, False], ids=["same-row", "different-rows"])
@pytest.mark.parametrize(("left_kind", "right_kind"), PROPERTY_PAIRS)
def test_row_created_on_both_sides_is_compared_not_rejected(
        items_link: tuple[ItemsPair, Link, Applier], left_kind: str, right_kind: str,
        same: bool) -> None:
    """Found by the property test. A create is first inserted optimistically (no lock, no
    comparison). When the twin row already existed, the duplicate key of a run of ONE change
    made ``Applier._write`` raise ``_Restart``: the change went to the error inbox as
    "rejected" (its key parked, the other side's change waiting behind it) instead of the
    batch being redone carefully, comparing the twin (equal: nothing to do; different: a
    conflict for the map's policy)."""
    pair, link, applier = items_link
    app_write(pair.right, [(1, "set", "created on both", 1 if same else 2)])
    app_write(pair.left, [(1, "set", "created on both", 1)])
    settle(applier, link)
    assert [(e.operation, e.reason) for e in link.state.errors()] == []
    assert queued(link) == 0
    assert contents(pair.left) == contents(pair.right) == {1: ("created on both", 1)}
    winners = [c["winner"] for c in link.state.conflicts("items")]
    assert winners == ([] if same else ["left"])


@pytest.mark.parametrize(("left_kind", "right_kind"), PROPERTY_PAIRS)
def test_queued_change_already_reflected_is_not_replayed(
        items_link: tuple[ItemsPair, Link, Applier], left_kind: str, right_kind: str) -> None:
    """Found by the property test (an ABA case). The right creates row 5; the left creates
    the same row 5, then deletes it. Applying the left's log: its create finds the twin equal
    (skipped), its delete finds the twin as it started (deleted on the right). Applying the
    right's log: its create, still queued, found no row on the left, the version it started
    from, and was inserted there: the link quiet, the inbox empty, no conflict recorded, and
    row 5 on the left only. "The target holds the old version: nothing to decide" must not
    ignore the target's own queued changes of that key."""
    pair, link, applier = items_link
    app_write(pair.right, [(5, "set", "apple", None)])
    app_write(pair.left, [(5, "set", "apple", None)])
    app_write(pair.left, [(5, "delete", None, None)])
    settle(applier, link)
    assert link.state.errors() == [] and queued(link) == 0
    [result] = link.verify(["items"])
    assert result.ok, result.as_dict()
    assert contents(pair.left) == contents(pair.right) == {}


#: about PostgreSQL alone: its sessions are terminated through pg_stat_activity
PG_PG = [("postgresql", "postgresql")]


def _pg_terminate(where: str, params: dict[str, Any]) -> int:
    """Terminate PostgreSQL sessions matching ``where`` (on pg_stat_activity); wait until
    they are gone. Returns how many there were."""
    admin = _pg_admin()
    try:
        with admin.connect() as conn:
            pids = [int(r[0]) for r in conn.execute(sa.text(
                f"SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND {where}"),
                params)]
            for pid in pids:
                conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})

            def gone() -> bool:
                return not conn.execute(sa.text(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = ANY(:p)"), {"p": pids}).first()

            wait_for(gone, 30, lambda: f"sessions {pids} did not end")
    finally:
        admin.dispose()
    return len(pids)


@pytest.mark.parametrize(("left_kind", "right_kind"), PG_PG)
def test_run_survives_the_loss_of_its_listen_session(
        backends: Callable[[str, str], tuple[Backend, Backend]], tmp_path: Path,
        left_kind: str, right_kind: str) -> None:
    """Found by the outage test. On a PostgreSQL<->PostgreSQL link the applier waits on
    LISTEN connections (``_PgListener``, called from ``Applier._wait`` outside any error
    handling). When one is lost (server restart, failover, an idle-session killer,
    pg_terminate_backend), ``conn.notifies()`` raises psycopg.OperationalError ("server closed
    the connection unexpectedly"), which ends ``Applier.run``: ``dualwrite run`` exits 1.
    Expected: the applier carries on (polling, then listening again once it can)."""
    left, right = backends(left_kind, right_kind)
    pair = reset_items_pair(left, right, tmp_path)
    with pair.link() as link:
        link.start_maps(["items"])
    log = tmp_path / "run.log"
    dbs = [str(sa.engine.make_url(b.url).database) for b in (left, right)]
    with running(pair.config, log) as proc:
        wait_for(lambda: _listening(dbs) == 2, 30, lambda: "dualwrite run is not listening")
        assert _pg_terminate("query ILIKE 'LISTEN%' AND datname = ANY(:d)", {"d": dbs}) == 2
        app_write(left, [(1, "set", "after the listener was lost", 1)])
        wait_for(lambda: 1 in contents(right) or proc.poll() is not None, 30,
                 lambda: f"the change never arrived:\n{log.read_text()[-3000:]}")
        assert proc.poll() is None, f"dualwrite run died:\n{log.read_text()[-3000:]}"
        assert contents(right) == {1: ("after the listener was lost", 1)}


def _listening(dbs: list[str]) -> int:
    admin = _pg_admin()
    try:
        with admin.connect() as conn:
            return int(conn.execute(sa.text(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%' "
                "AND datname = ANY(:d)"), {"d": dbs}).scalar_one())
    finally:
        admin.dispose()


@pytest.mark.parametrize(("left_kind", "right_kind"), KILL_PAIRS)
def test_session_lost_inside_the_apply_transaction_is_retried(
        proxied_items_link: tuple[ItemsPair, Link, Applier, FaultProxy], left_kind: str,
        right_kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the outage test (both pairs). The statements the applier runs itself inside
    the apply transaction (``CaptureLog.applied``, ``mark_applied``, ``unmark``, ``pending``,
    ``forget`` with a connection, in src/dualwrite/connectors/capture.py) call
    ``conn.execute`` outside ``SqlConnector.translating``. When the target's session is lost
    there (the server stops, restarts or terminates it), the raw
    sqlalchemy.exc.OperationalError escapes ``Applier.step`` (which handles ConnectorError
    only) and ``dualwrite run`` exits 1. Expected: a TransientConnectorError, retried with
    backoff like any other unreachable target. The session is lost by the fault proxy
    resetting the target's connections, just before the transaction's closing bookkeeping
    (``finish_apply``: a step reading the log asks ``applied`` only on a retry)."""
    pair, link, applier, proxy = proxied_items_link
    log = applier.logs[Side.RIGHT]
    original = log.finish_apply
    lost: list[int] = []

    def finish_on_a_lost_session(*args: Any, **kwargs: Any) -> Any:
        if not lost:  # the session dies once, just before the closing bookkeeping
            lost.append(proxy.reset_connections())
        return original(*args, **kwargs)

    monkeypatch.setattr(log, "finish_apply", finish_on_a_lost_session)
    app_write(pair.left, [(1, "set", "applied after a retry", 1)])
    applier.step()
    assert lost and lost[0] >= 1, "no session of the applier's to lose"
    assert applier.last_error[Side.LEFT], "the lost session was not noted as a retry"
    wait_for(lambda: applier.step() > 0 or 1 in contents(pair.right), 30,
             lambda: f"never applied: {applier.last_error}")
    drain(applier, link)
    assert contents(pair.right) == {1: ("applied after a retry", 1)}


@pytest.mark.parametrize(("left_kind", "right_kind"), KILL_PAIRS)
def test_target_refusing_connections_is_retried(
        proxied_items_link: tuple[ItemsPair, Link, Applier, FaultProxy], left_kind: str,
        right_kind: str) -> None:
    """Found by the outage test: a target that refuses new sessions was classified as
    terminal and ``dualwrite run`` exited 2. Expected: retried with backoff, applied once
    connections are accepted again. (The server's own refusals, "not currently accepting
    connections" and the like, are classified by the test below.)"""
    pair, link, applier, proxy = proxied_items_link
    app_write(pair.left, [(1, "set", "applied after the outage", 1)])
    with target_down(proxy):
        dispose_pool(link.connectors[Side.RIGHT])  # no pooled session: connect anew
        applier.step()
        assert applier.last_error[Side.LEFT], "the outage was not noted as a retry"
        assert contents(pair.right) == {}
    drain(applier, link)
    assert contents(pair.right) == {1: ("applied after the outage", 1)}


@pytest.mark.parametrize("message", [
    'database "crm" is not currently accepting connections',
    "the database system is starting up",
    "the database system is shutting down",
])
def test_server_refusing_sessions_is_transient(make_backend: BackendFactory,
                                                message: str) -> None:
    """Found by the outage test (PostgreSQL<->PostgreSQL). A PostgreSQL target refusing new
    sessions with "database ... is not currently accepting connections" (ALLOW_CONNECTIONS
    false; likewise "the database system is starting up" / "is shutting down" during a
    restart) was classified as terminal: neither ``SqlConnector._looks_transient``
    (src/dualwrite/connectors/sql.py) nor the applier's own phrase list (since removed: the
    connector alone classifies) knew the message, so ``Applier.step`` re-raised the
    TerminalConnectorError and ``dualwrite run`` exited 2. The server's exact refusals are
    put through the connector's one translation point here (closing a database or
    restarting the server, shared with everyone, is not a test's to do)."""
    connector = make_backend("postgresql", "dualwrite_test_b").connector
    assert isinstance(connector, SqlConnector)
    refusal = psycopg.OperationalError(
        f'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  '
        f"{message}")
    with pytest.raises(TransientConnectorError, match=message), \
            connector.translating("connect"):
        raise sa.exc.OperationalError("connect", None, refusal)


@pytest.mark.parametrize(("left_kind", "right_kind"), KILL_PAIRS)
def test_status_while_the_target_is_down(
        proxied_items_link: tuple[ItemsPair, Link, Applier, FaultProxy], left_kind: str,
        right_kind: str) -> None:
    """Found by the outage test: ``Link.status`` failed altogether while one database was
    unreachable, exactly when the queue building up on the other side is what one needs to
    see. Expected: the reachable side's queue, the unreachable side named."""
    pair, link, _applier, proxy = proxied_items_link
    app_write(pair.left, [(1, "set", "queued while the target is down", 1)])
    with target_down(proxy):
        dispose_pool(link.connectors[Side.RIGHT])
        rows = {m["map"]: m for m in link.status()}
        assert rows["items"]["queued"] == 1
        assert rows["items"]["unreachable"] == [link.env_name(Side.RIGHT)]
