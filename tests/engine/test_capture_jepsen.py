"""A checker in the style of Jepsen: concurrent edits on both sides are never a lost update.

Writers on both sides rename a few shared rows concurrently, with random pauses, while
``dualwrite run`` applies and is killed (SIGKILL) at random points and restarted. Audit
triggers record, on both sides, every write to a row: the value it replaced, the value it
wrote, and whether dualwrite or the application wrote it. Every value an application writes
is unique, so the value a write replaced names the write it saw: the writes of each key form
a graph of what saw what. Once quiet (and, for ``manual``, every conflict resolved), the
checker proves, under each policy:

* every pair of application writes on the two sides that did not see each other (neither is
  an ancestor of the other) is a recorded conflict of that key;
* no conflict is recorded for a key where every write saw the one before it;
* both sides end equal, on a write that no other write saw (every ordered pair ends on the
  later write).

Small by default; ``--long`` writes for a minute and kills the applier 30 times.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from capture_fixtures import ITEMS_MAP, drain, fresh_tables, items_metadata, link_config
from dualwrite.engine.capture import resolve_conflict
from dualwrite.engine.link import Link
from dualwrite.model.maps import Side

from conftest import Backend, BackendFactory

READY = "dualwrite run: applying captured changes"
#: keys 1..FREE: both sides write them blindly, at random; FREE+1..TURNS: the sides take
#: turns, each writing only a value of the other side's it has seen (no conflict may be
#: recorded there: every write saw the one before); TURNS+1..KEYS: rounds, in which both
#: sides write the same fresh key within a few milliseconds of each other (every round a
#: race between the two writes and the applier)
FREE = 6
TURNS = 10
KEYS = 1000

AUDIT = {
    "postgresql": [
        "DROP TABLE IF EXISTS items_audit",
        "CREATE TABLE items_audit (n BIGSERIAL PRIMARY KEY, id INT NOT NULL, old TEXT, "
        "new TEXT, origin TEXT NOT NULL)",
        "CREATE OR REPLACE FUNCTION items_audit_f() RETURNS trigger LANGUAGE plpgsql AS $a$ "
        "BEGIN INSERT INTO items_audit (id, old, new, origin) VALUES (NEW.id, OLD.name, "
        "NEW.name, CASE WHEN current_setting('dualwrite.origin', true) IN ('on', 'queue') "
        "THEN 'dw' ELSE 'app' END); RETURN NULL; END $a$",
        "CREATE TRIGGER items_audit_t AFTER UPDATE ON items FOR EACH ROW "
        "EXECUTE FUNCTION items_audit_f()",
    ],
    "mariadb": [
        "DROP TABLE IF EXISTS items_audit",
        "CREATE TABLE items_audit (n BIGINT AUTO_INCREMENT PRIMARY KEY, id INT NOT NULL, "
        "old VARCHAR(40), new VARCHAR(40), origin VARCHAR(3) NOT NULL)",
        "CREATE TRIGGER items_audit_t AFTER UPDATE ON items FOR EACH ROW "
        "INSERT INTO items_audit (id, old, new, origin) VALUES (NEW.id, OLD.name, NEW.name, "
        "IF(@dualwrite_origin IS NULL, 'app', 'dw'))",
    ],
}


@dataclass(frozen=True)
class Write:
    side: str
    key: int
    old: str
    new: str


class Writers:
    """One application writer per side: renames of shared rows to unique values, each its
    own transaction, with random pauses."""

    def __init__(self, sides: dict[str, Backend], seed: int) -> None:
        self.sides = sides
        self.seed = seed
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.count = {s: 0 for s in sides}
        self.rounds = 0
        self.barrier = threading.Barrier(len(sides))
        self.threads = [threading.Thread(target=self._write, args=(s,), daemon=True)
                        for s in sides]

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.barrier.abort()
        for t in self.threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a writer did not stop"
        assert not self.errors, self.errors

    def _write(self, side: str) -> None:
        """Each turn: a round (with the other writer: the same fresh key, a few ms apart),
        then one write of a blind or turn-taking key, with a random pause."""
        rng = random.Random(f"{self.seed}-{side}")
        other = "r" if side == "left" else "l"
        try:
            with self.sides[side].app().connect() as conn:
                for key in range(TURNS + 1, KEYS + 1):
                    if self.stop.is_set():
                        return
                    try:
                        self.barrier.wait(timeout=60)
                    except threading.BrokenBarrierError:
                        return
                    self.rounds = key - TURNS
                    self.stop.wait(rng.uniform(0, 0.01))
                    self._rename(conn, side, key)
                    key = rng.randrange(1, TURNS + 1)
                    with conn.begin():
                        if key > FREE:
                            # a turn-taking key: write only over the other side's value (or
                            # the initial one on the left), i.e. having seen it
                            now = conn.execute(sa.text("SELECT name FROM items WHERE id = :k"
                                                       " FOR UPDATE"), {"k": key}).scalar_one()
                            if not (now.startswith(other) or (side == "left" and
                                                              now.startswith("init"))):
                                continue
                        self._write_one(conn, side, key)
                    self.stop.wait(rng.uniform(0, 0.02))
        except BaseException as exc:
            self.errors.append(exc)

    def _rename(self, conn: sa.Connection, side: str, key: int) -> None:
        with conn.begin():
            self._write_one(conn, side, key)

    def _write_one(self, conn: sa.Connection, side: str, key: int) -> None:
        n = self.count[side]
        conn.execute(sa.text("UPDATE items SET name = :v WHERE id = :k"),
                     {"v": f"{side[0]}{n}", "k": key})
        self.count[side] = n + 1


def start_run(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen([sys.executable, "-m", "dualwrite", "-c", str(config), "run"],
                                stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while READY not in log.read_text():
        assert proc.poll() is None, f"dualwrite run exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"never ready:\n{log.read_text()[-3000:]}"
        time.sleep(0.02)


def audit(b: Backend, side: str) -> list[tuple[Write, str]]:
    rows = b.sql("SELECT id, old, new, origin FROM items_audit ORDER BY n")
    return [(Write(side, int(r[0]), str(r[1]), str(r[2])), str(r[3])) for r in rows]


def check(writes: list[Write], finals: dict[str, dict[int, str]],
          recorded: set[frozenset[str]], conflict_keys: set[int]) -> dict[str, int]:
    """The checker (see the module docstring); returns counts for the report.

    ``recorded``: the pairs of values each conflict record names (its incoming change's and
    each of the target's own changes it met). A pair of writes that did not see each other
    must be recorded itself when it is where the two histories part: each write saw the
    other's predecessor (the row's value before either). Any other such pair lies after such
    a parting (one of its writes saw a write of the recorded pair), which covers it."""
    by_value = {w.new: w for w in writes}
    assert len(by_value) == len(writes), "application values are unique"

    def ancestors(w: Write) -> set[str]:
        """The values ``w`` saw: its predecessor's, theirs, ... back to the initial one."""
        out = {w.old}
        while w.old in by_value:
            w = by_value[w.old]
            out.add(w.old)
        return out

    seen = {w.new: ancestors(w) for w in writes}
    concurrent_keys: set[int] = set()
    pairs = partings = 0
    unrecorded = []
    for key in range(1, KEYS + 1):
        mine = [w for w in writes if w.key == key]
        left = [w for w in mine if w.side == "left"]
        right = [w for w in mine if w.side == "right"]
        for a in left:
            for b in right:
                if a.new in seen[b.new] or b.new in seen[a.new]:
                    continue  # one saw the other: ordered
                concurrent_keys.add(key)
                pairs += 1
                if a.old in seen[b.new] | {b.old} and b.old in seen[a.new] | {a.old}:
                    partings += 1
                    if frozenset((a.new, b.new)) not in recorded:
                        unrecorded.append((key, a.new, b.new))
    assert not unrecorded, ("writes that did not see each other, where the histories part, "
                            f"with no conflict recorded (key, left, right): {unrecorded[:20]} "
                            f"({len(unrecorded)} in all)")
    false = sorted(k for k in conflict_keys if k not in concurrent_keys)
    assert not false, f"conflicts recorded where every write saw the one before: {false}"
    taking_turns = [w for w in writes if FREE < w.key <= TURNS]
    assert taking_turns and not concurrent_keys & set(range(FREE + 1, TURNS + 1)), \
        "the turn-taking keys must be written, in turns"
    assert finals["left"] == finals["right"], "the two sides differ"
    superseded = set().union(*seen.values()) if seen else set()
    stale = {k: v for k, v in finals["left"].items() if v in superseded}
    assert not stale, f"keys ending on a write that a later write saw (a lost update): {stale}"
    assert partings > 0, "no two writes raced: the workload did not test anything"
    return {"writes": len(writes), "concurrent pairs": pairs, "partings": partings,
            "keys": len(concurrent_keys)}


@pytest.fixture
def pair(request: pytest.FixtureRequest, make_backend: BackendFactory) -> Iterator[
        tuple[Backend, Backend]]:
    left_kind, right_kind = request.param
    left = make_backend(left_kind, "dualwrite_test_a")
    right = make_backend(right_kind, "dualwrite_test_b" if left_kind == right_kind
                         else "dualwrite_test_a")
    yield left, right


#: every policy on PostgreSQL <-> MariaDB; PostgreSQL <-> PostgreSQL with two of them (the
#: suite's time is counted; --long makes each case longer instead)
CASES = [(("postgresql", "mariadb"), p) for p in ("manual", "left-wins", "right-wins",
                                                    "newest-wins")] + \
    [(("postgresql", "postgresql"), p) for p in ("manual", "newest-wins")]


@pytest.mark.parametrize(("pair", "policy"), CASES,
                         ids=[f"{a}-{b}-{p}" for (a, b), p in CASES], indirect=["pair"])
def test_concurrent_writers_and_applier_kills_lose_no_update(
        pair: tuple[Backend, Backend], tmp_path: Path, policy: str, long_run: bool) -> None:
    left, right = pair
    fresh_tables(items_metadata(), left, right)
    # the checker reads what each conflict met: the audit trail keeps it past settling
    config = link_config(tmp_path, left, right, {"items": ITEMS_MAP.format(policy=policy)},
                         extra=lambda cfg: cfg.update(capture={"keep_conflict_values": True}))
    left.insert("items", [{"id": k, "name": f"init{k}", "qty": 0} for k in range(1, KEYS + 1)])
    with Link.open(config) as link:
        link.start_maps()
    for b in (left, right):
        with b.app().begin() as conn:
            for ddl in AUDIT[b.kind]:
                conn.exec_driver_sql(ddl)
    rng = random.Random(f"jepsen-{policy}-{left.kind}-{right.kind}")
    seconds, kills = (60.0, 30) if long_run else (4.0, 2)
    with Writers({"left": left, "right": right}, seed=rng.randrange(1 << 30)) as writers:
        end = time.monotonic() + seconds
        for n in range(kills + 1):
            log = tmp_path / f"run-{n}.log"
            proc = start_run(config, log)
            try:
                wait_ready(proc, log)
                # the kill point, not a synchronisation: anywhere in the writing period
                writers.stop.wait(max(0.0, min(rng.uniform(0.2, 2 * seconds / (kills + 1)),
                                               end - time.monotonic())))
            finally:
                proc.send_signal(signal.SIGKILL if n < kills else signal.SIGTERM)
                proc.wait(timeout=60)
        while time.monotonic() < end:
            writers.stop.wait(end - time.monotonic())
    assert writers.count["left"] > 20 and writers.count["right"] > 20, writers.count
    with Link.open(config) as link:
        applier = link.applier()
        drain(applier, timeout=300)
        if policy == "manual":
            for i, e in enumerate(link.state.errors("items")):
                assert e.operation == "conflict", e
                resolve_conflict(link, e.id, Side.LEFT if i % 2 == 0 else Side.RIGHT)
            drain(applier, timeout=300)
            assert link.state.errors() == []
        recorded: set[frozenset[str]] = set()
        conflict_keys: set[int] = set()
        for c in link.state.conflicts("items", limit=1_000_000):
            conflict_keys.add(int(c["key"][0]))
            mine = (c["incoming"].get("new") or {}).get("name")
            recorded |= {frozenset((mine, (x.get("new") or {}).get("name")))
                         for x in c["theirs"]}
        [result] = link.verify(["items"])
        assert result.ok, result.as_dict()
    writes = [w for b, s in ((left, "left"), (right, "right"))
              for w, origin in audit(b, s) if origin == "app"]
    finals = {s: {int(r[0]): str(r[1]) for r in b.sql("SELECT id, name FROM items")}
              for s, b in (("left", left), ("right", right))}
    counts = check(writes, finals, recorded, conflict_keys)
    print(f"{policy} {left.kind}-{right.kind}: {counts}")
