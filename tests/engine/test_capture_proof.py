"""Proof of change capture, the acceptance criteria of the capture issue.

1. A stateful property test (hypothesis): random creates, updates and deletes made by the
   applications themselves on BOTH databases (including the same key on both sides before the
   applier runs), pauses and resumes of the map, and applier steps, interleaved. Once quiet,
   both sides agree (verify), and the conflicts recorded agree with the map's policy.
2. ``dualwrite run`` killed with SIGKILL at random points, 20 times, under a steady workload of
   single-row and multi-row transactions: every change is applied once (no loss, no
   duplicate), counters included.
3. The target database down for 30 s during a workload: the source keeps writing, the queue
   grows and shows in ``status``, and the backlog drains once the target is back.

Plus minimal tests of defects found while writing these (see their docstrings).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    precondition,
    rule,
    run_state_machine_as_test,
)

from dualwrite.engine.capture import Applier
from dualwrite.engine.link import Link
from dualwrite.model.maps import Side

from conftest import MY_URL, PG_URL, Backend, BackendFactory, require_service

# -- a dedicated pair of tables and its map -----------------------------------------------------

ITEMS_MAP = """\
name: items
left: items
right: items
key: {{left: [id], right: [id]}}
conflict: {policy}
fields:
  - id = id
  - name = name
  - qty = qty
"""

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
                     capture: dict[str, Any] | None = None) -> ItemsPair:
    """Fresh ``items`` tables (no change log, no link record) and a config in ``root``."""
    for b in (left, right):
        b.connector.clear_link()
        b.create(items_metadata())
    (root / "maps").mkdir(parents=True, exist_ok=True)
    (root / "maps" / "items.yaml").write_text(ITEMS_MAP.format(policy=policy))
    cfg: dict[str, Any] = {
        "environments": {"erp": {"url": left.url}, "crm": {"url": right.url}},
        "link": {"left": "erp", "right": "crm"},
        "state": f"sqlite:///{root / 'state.db'}",
        "maps": ["maps/*.yaml"],
    }
    if capture:
        cfg["capture"] = capture
    path = root / "dualwrite.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return ItemsPair(left, right, path)


def drop_items(backend: Backend) -> None:
    """Leave the database as found: the table (its triggers go with it) and the change log."""
    with contextlib.suppress(Exception), backend.app().begin() as conn:
        for t in ("items", "dualwrite_changes", "dualwrite_applied", "dualwrite_origin"):
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {t}")


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


def app_write(backend: Backend, ops: Sequence[Op]) -> dict[int, tuple[Value | None,
                                                                     Value | None]]:
    """Run ``ops`` in one application transaction, as an application would (read the row, then
    insert, update or delete it). Returns per key its row before the first op and after the
    last."""
    out: dict[int, tuple[Value | None, Value | None]] = {}
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
            out[key] = (out[key][0] if key in out else before, after)
    return out


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


def drain(applier: Applier, link: Link, timeout: float = 60.0) -> None:
    """Step the applier until it finds nothing twice in a row and nothing is queued."""
    deadline = time.monotonic() + timeout
    idle = 0
    while idle < 2:
        if time.monotonic() > deadline:
            pytest.fail(f"changes still queued after {timeout} s: {link.status()}",
                        pytrace=False)
        idle = idle + 1 if applier.step() == 0 else 0
    assert queued(link) == 0, link.status()


# -- 1. stateful property test --------------------------------------------------------------------

PROPERTY_PAIRS = [("sqlite", "sqlite"), ("postgresql", "postgresql"), ("postgresql", "mariadb")]
POLICIES = ["left-wins", "right-wins", "newest-wins"]

KEYS = st.integers(0, 5)
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
            #: keys whose last write was the same key changed on both sides (from the same
            #: version, to different ones) before the applier ran: key -> (left, right) values
            self.both: dict[int, tuple[Value | None, Value | None]] = {}

        def _note(self, side: str, changes: dict[int, tuple[Value | None, Value | None]]
                  ) -> None:
            for key, (before, after) in changes.items():
                if before != after:
                    self.written.setdefault(key, {})[side] = after
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
            newest-wins, the right's under right-wins."""
            r_before, r_after = app_write(right, [(key, right_kind, right_name, right_qty)])[key]
            l_before, l_after = app_write(left, [(key, left_kind, left_name, left_qty)])[key]
            self._note("right", {key: (r_before, r_after)})
            self._note("left", {key: (l_before, l_after)})
            if l_before == r_before and l_after != l_before and r_after != r_before \
                    and l_after != r_after:
                self.both[key] = (l_after, r_after)

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
            drain(self.applier, self.link)
            [result] = self.link.verify(["items"])
            assert result.ok, result.as_dict()
            assert self.link.state.errors() == []
            final = contents(left)
            assert contents(right) == final
            conflicts = self.link.state.conflicts("items")
            winners = {c["winner"] for c in conflicts}
            allowed = {"left-wins": {"left"}, "right-wins": {"right"},
                       "newest-wins": {"left", "right"}}[policy]
            assert winners <= allowed, (policy, conflicts)
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
    run_state_machine_as_test(machine, settings=settings(
        max_examples=300 if long_run else 15, stateful_step_count=50 if long_run else 20,
        deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True))


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
            [sys.executable, "-m", "dualwrite.cli", "-c", str(config), "run"],
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
    done = subprocess.run([sys.executable, "-m", "dualwrite.cli", "-c", str(config), "status",
                           "--json"], capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return dict(json.loads(done.stdout))


def check_delivered(pair: ItemsPair, model: dict[int, Value]) -> None:
    """Both sides hold exactly what the application committed, and dualwrite saw no error and
    no conflict (one writer: a change applied twice, or out of order, would show as one)."""
    left, right = contents(pair.left), contents(pair.right)
    assert left == model, "the source rows are not what the application wrote"
    missing = sorted(set(model) - set(right))
    extra = sorted(set(right) - set(model))
    wrong = sorted(k for k in set(model) & set(right) if right[k] != model[k])
    assert not (missing or extra or wrong), (
        f"target differs: {len(missing)} missing (e.g. {missing[:5]}), {len(extra)} extra "
        f"(e.g. {extra[:5]}), {len(wrong)} wrong (e.g. "
        f"{[(k, model[k], right[k]) for k in wrong[:5]]})")
    counts = {s: b.sql("SELECT COUNT(*), COALESCE(SUM(qty), 0) FROM items")[0]
              for s, b in (("left", pair.left), ("right", pair.right))}
    assert counts["left"] == counts["right"] == (len(model), sum(q or 0 for _n, q in
                                                                 model.values())), counts
    with pair.link() as link:
        [result] = link.verify(["items"])
        assert result.ok, result.as_dict()
        assert link.state.errors() == []
        assert link.state.conflicts("items") == []
        assert queued(link) == 0


# -- 2. SIGKILL at random points -----------------------------------------------------------------

KILL_PAIRS = [("postgresql", "postgresql"), ("postgresql", "mariadb")]


@pytest.mark.parametrize(("left_kind", "right_kind"), KILL_PAIRS)
def test_run_killed_at_random_points_applies_each_change_once(
        backends: Callable[[str, str], tuple[Backend, Backend]], tmp_path: Path,
        left_kind: str, right_kind: str, long_run: bool) -> None:
    kills = 100 if long_run else 20
    left, right = backends(left_kind, right_kind)
    pair = reset_items_pair(left, right, tmp_path, capture={"batch_size": 50})
    with pair.link() as link:
        link.start_maps(["items"])
    rng = random.Random(f"{left_kind}-{right_kind}-kills")
    workload = Workload(left, seed=rng.randrange(1 << 30), pace=0.002).start()
    progressed = 0
    before = contents(right)
    try:
        for n in range(kills):
            log = tmp_path / f"run-{n}.log"
            proc = start_run(pair.config, log)
            try:
                wait_ready(proc, log)
                time.sleep(rng.uniform(0.05, 0.5))  # the kill point, not a synchronisation
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
            assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
            now = contents(right)
            progressed += now != before
            before = now
    finally:
        workload.stop()
    # every round must have killed an applier at work, not an idle one
    assert progressed >= kills * 3 // 4, f"the applier made progress in {progressed}/{kills}"
    assert workload.transactions > kills * 10 and workload.increments > kills * 5
    model = workload.snapshot()
    log = tmp_path / "run-final.log"
    with running(pair.config, log), pair.link() as link:
        wait_for(lambda: contents(right) == model and queued(link) == 0, 120,
                 lambda: f"not drained: {link.status()}; target has {len(contents(right))} "
                 f"rows, the application wrote {len(model)}")
        status = {m["map"]: m for m in cli_status(pair.config)["maps"]}
        assert status["items"]["state"] == "running"
        assert status["items"]["queued"] == 0 and status["items"]["errors"] == 0
    check_delivered(pair, model)


# -- 3. the target down for 30 s ------------------------------------------------------------------

OUTAGE_SECONDS = 30.0
MARIADBD = "/usr/sbin/mariadbd"


def _pg_admin() -> sa.Engine:
    return sa.create_engine(PG_URL.format(db="postgres"), isolation_level="AUTOCOMMIT",
                            poolclass=sa.pool.NullPool)


def _mariadb_answers() -> bool:
    engine = sa.create_engine(MY_URL.format(db="mysql"), poolclass=sa.pool.NullPool,
                              connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            return bool(conn.exec_driver_sql("SELECT 1").scalar() == 1)
    except sa.exc.DBAPIError:
        return False
    finally:
        engine.dispose()


def _start_mariadb() -> None:
    subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--exec",
                    MARIADBD], check=True, timeout=60)
    wait_for(_mariadb_answers, 120, lambda: "MariaDB did not come back; start it with: "
             "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
             interval=0.2)


@contextlib.contextmanager
def target_down(right: Backend) -> Iterator[None]:
    """The right database unreachable for the block: the MariaDB server stopped for real, or,
    with both sides on one PostgreSQL server, the database closed to connections (its
    sessions terminated). Always back up at the end."""
    if right.kind == "mariadb":
        require_service("mariadb", 3306)
        try:
            subprocess.run(["start-stop-daemon", "--stop", "--exec", MARIADBD, "--retry", "60"],
                           check=True, timeout=120)
            assert not _mariadb_answers()
            yield
        finally:
            _start_mariadb()
        return
    assert right.kind == "postgresql"
    db = sa.engine.make_url(right.url).database
    admin = _pg_admin()
    sessions = sa.text("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = :d")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false")
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": db})

            def gone() -> bool:
                return int(conn.execute(sessions, {"d": db}).scalar_one()) == 0

            wait_for(gone, 30, lambda: f"sessions of {db} did not end")
        yield
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER DATABASE {db} WITH ALLOW_CONNECTIONS true")
        admin.dispose()


@pytest.mark.parametrize(("left_kind", "right_kind"), KILL_PAIRS)
def test_target_down_30s_loses_nothing_and_drains(
        backends: Callable[[str, str], tuple[Backend, Backend]], tmp_path: Path,
        left_kind: str, right_kind: str) -> None:
    left, right = backends(left_kind, right_kind)
    pair = reset_items_pair(left, right, tmp_path)
    with pair.link() as link:
        link.start_maps(["items"])
    log = tmp_path / "run.log"
    status_failures: list[str] = []
    samples: list[tuple[int, int]] = []  # (queued changes, transactions committed)
    workload = Workload(left, seed=11, pace=0.03)
    with running(pair.config, log) as proc, pair.link() as link:
        workload.start()
        try:
            # the applier is applying before the outage
            wait_for(lambda: len(contents(right)) >= 20, 60,
                     lambda: f"nothing applied before the outage: {link.status()}")
            with target_down(right):
                end = time.monotonic() + OUTAGE_SECONDS
                while (left_s := end - time.monotonic()) > 0:
                    time.sleep(min(3.0, left_s))  # the outage lasts 30 s: pacing, no sync
                    committed = workload.transactions
                    try:
                        samples.append((queued(link), committed))
                    except Exception as exc:
                        status_failures.append(f"{type(exc).__name__}: {exc}")
                        # still measure the queue, from the source's change log
                        stats = link.connectors[Side.LEFT].capture_log().stats()
                        samples.append((stats.get("items", (0, 0, None))[0], committed))
                    assert proc.poll() is None, (
                        f"dualwrite run died during the outage:\n{log.read_text()[-3000:]}")
            # writes go on a little after the target is back
            target = workload.transactions + 20
            wait_for(lambda: workload.transactions >= target, 30, lambda: "workload stalled")
        finally:
            workload.stop()
        model = workload.snapshot()
        wait_for(lambda: contents(right) == model and queued(link) == 0, 120,
                 lambda: f"backlog not drained: {link.status()}\n{log.read_text()[-3000:]}",
                 interval=0.2)
        assert proc.poll() is None, log.read_text()[-3000:]
    # every transaction committed during the outage queued at least one change
    assert len(samples) >= 8, samples
    sizes = [q for q, _t in samples]
    assert sizes == sorted(sizes) and sizes[0] > 0, f"the queue did not grow: {samples}"
    assert sizes[-1] - sizes[0] >= samples[-1][1] - samples[0][1] > 100, samples
    check_delivered(pair, model)
    assert not status_failures, (
        "link.status() failed while the target was down (the queue sizes above were read "
        f"from the source's change log instead): {status_failures[:3]}")
