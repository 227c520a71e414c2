"""Live sync with one OData side (the service as the last resource of the commit): a link
whose `hub` environment is another dualwrite's `serve` (a SQLite ↔ SQLite link of its own),
the other PostgreSQL or MariaDB. Writes through `link.transaction()` end on both sides or on
neither; a change set whose answer is lost is decided by reading its rows back; one that
cannot be decided stays in doubt, the database side prepared, until `recover`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

import hub_fixtures
from capture_fixtures import Items
from dualwrite.engine.link import Link
from dualwrite.engine.live import xid_prefix
from dualwrite.engine.live_odata import IN_DOUBT, LAST_RESOURCE_STEPS
from dualwrite.engine.security import create_token
from dualwrite.errors import ConfigError, InDoubt, RowError, TransientConnectorError
from httpfaults import HttpFaults
from hub_fixtures import ITEMS_MAP
from serve_process import Served, serve

from conftest import Backend, BackendFactory

#: the hub: another dualwrite's `serve` (tests/hub_fixtures.py)
hub = hub_fixtures.hub


@pytest.fixture
def proxy(hub: tuple[Items, Served]) -> Iterator[HttpFaults]:
    with HttpFaults(hub[1].url + "/odata/erp/") as p:
        yield p


def db_side(make_backend: BackendFactory, kind: str, *, name_length: int = 40) -> Backend:
    # a SQLite file of its own: the hub's are dualwrite_test_a and _b of the same directory
    db = make_backend(kind, "dualwrite_spoke" if kind == "sqlite" else "dualwrite_test_b")
    db.connector.clear_link()
    md = sa.MetaData()
    sa.Table("items", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("name", sa.String(name_length), nullable=False),
             sa.Column("qty", sa.Integer))
    db.create(md)
    return db


def spoke(tmp_path: Path, hub_root: str, db: Backend, *, conflict: str = "left-wins"
          ) -> Path:
    """A link hub (OData, through ``hub_root``) ↔ crm (``db``); requests time out after
    2 s and are tried once (a test of a lost answer needs no waiting)."""
    root = tmp_path / "spoke"
    (root / "maps").mkdir(parents=True, exist_ok=True)
    (root / "maps" / "items.yaml").write_text(ITEMS_MAP + f"conflict: {conflict}\n")
    cfg = {"environments": {
               "hub": {"url": f"odata+{hub_root}?token=${{HUB_TOKEN}}&timeout=2&retries=1"},
               "crm": {"url": db.url}},
           "link": {"left": "hub", "right": "crm"},
           "state": f"sqlite:///{root / 'state.db'}", "maps": ["maps/*.yaml"]}
    (root / "dualwrite.yaml").write_text(yaml.safe_dump(cfg))
    return root / "dualwrite.yaml"


def pg_rows(db: Backend) -> dict[int, tuple[str, int | None]]:
    return {int(r["id"]): (r["name"], r["qty"]) for r in db.rows("items", ["id"])}


def prepared(db: Backend, link: Link) -> list[str]:
    if db.kind == "postgresql":
        return [r[0] for r in db.sql("SELECT gid FROM pg_prepared_xacts WHERE "
                                     "database = current_database()")]
    return [x for x in (r[3].decode() if isinstance(r[3], bytes) else str(r[3])
                        for r in db.sql("XA RECOVER"))
            if x.startswith(xid_prefix(link.link_id))]


def seeded(items: Items, db: Backend) -> None:
    """Rows 1..3 on both sides (the hub's through its own live sync)."""
    rows = [{"id": i, "name": f"row {i}", "qty": i} for i in range(1, 4)]
    items.left.insert("items", rows)
    items.right.insert("items", rows)
    db.insert("items", rows)


def in_doubt(link: Link) -> list[str]:
    return [x for x, _ in link.state.checkpoints_in_phase(IN_DOUBT)]


KINDS = ["postgresql", "mariadb"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_transaction_commits_on_the_database_and_in_the_service(
        hub: tuple[Items, Served], proxy: HttpFaults, make_backend: BackendFactory,
        tmp_path: Path, kind: str) -> None:
    items, _ = hub
    db = db_side(make_backend, kind)
    seeded(items, db)
    with Link.open(spoke(tmp_path, proxy.root, db)) as link:
        with link.transaction("clerk") as tx:
            tx.create("crm", "items", {"id": 10, "name": "made in crm", "qty": 1})
            tx.update("crm", "items", {"id": 2}, {"name": "changed in crm"})
            tx.delete("crm", "items", {"id": 3})
        # written in the service: the other way round, one transaction too
        with link.transaction("clerk") as tx:
            tx.update("hub", "items", {"id": 1}, {"qty": 100})
            tx.create("hub", "items", {"id": 11, "name": "made in hub", "qty": 2})
        assert prepared(db, link) == [] and in_doubt(link) == []
        audit = {(a["environment"], a["operation"]) for a in link.state.audit()}
        assert ("hub", "create") in audit and ("crm", "create") in audit
    want = {1: ("row 1", 100), 2: ("changed in crm", 2), 10: ("made in crm", 1),
            11: ("made in hub", 2)}
    assert pg_rows(db) == want
    # the hub's own live sync took the change sets to both of its sides
    assert items.rows("left") == want and items.rows("right") == want
    batches = [rel for method, rel, _, _ in proxy.seen if method == "POST"]
    assert batches == ["$batch", "$batch"], batches


def test_a_change_set_the_service_refuses_leaves_both_sides_unchanged(
        hub: tuple[Items, Served], proxy: HttpFaults, make_backend: BackendFactory,
        tmp_path: Path) -> None:
    items, _ = hub
    db = db_side(make_backend, "postgresql")
    seeded(items, db)
    # a row the hub has and the database has not: its create is refused as a duplicate
    items.left.insert("items", [{"id": 7, "name": "only in the hub", "qty": 7}])
    with Link.open(spoke(tmp_path, proxy.root, db)) as link:
        with pytest.raises(RowError) as caught, link.transaction() as tx:
            tx.update("crm", "items", {"id": 1}, {"name": "not kept"})
            tx.create("crm", "items", {"id": 7, "name": "duplicate", "qty": 0})
        assert caught.value.map == "items" and caught.value.side == "hub"
        assert "refused" in caught.value.message and "nothing was written" in \
            caught.value.message
        assert prepared(db, link) == [] and in_doubt(link) == []
    assert pg_rows(db) == {i: (f"row {i}", i) for i in range(1, 4)}
    assert items.rows("left")[1] == ("row 1", 1) and items.rows("left")[7][0] == \
        "only in the hub"


@pytest.mark.parametrize("fault", ["lost", "hang"])
def test_an_answer_lost_after_the_service_applied_the_change_set_commits(
        hub: tuple[Items, Served], proxy: HttpFaults, make_backend: BackendFactory,
        tmp_path: Path, fault: str) -> None:
    """The proxy forwards the change set and drops its answer (or holds it past the 2 s
    timeout): the rows read back are as sent, so the database side commits."""
    items, _ = hub
    db = db_side(make_backend, "postgresql")
    seeded(items, db)
    with Link.open(spoke(tmp_path, proxy.root, db)) as link:
        proxy.fail("POST", r"\$batch", fault)
        with link.transaction() as tx:
            tx.create("crm", "items", {"id": 20, "name": "answer lost", "qty": 20})
            tx.delete("crm", "items", {"id": 2})
        assert proxy.pending() == 0
        assert prepared(db, link) == [] and in_doubt(link) == []
    assert pg_rows(db) == items.rows("left") == {1: ("row 1", 1), 3: ("row 3", 3),
                                                 20: ("answer lost", 20)}
    # the rows were read back by key after the lost answer
    after = [rel for method, rel, _, _ in proxy.seen if method == "GET"]
    assert any(r.startswith("items?") and "20" in r for r in after), after


def test_a_change_set_dropped_before_the_service_saw_it_rolls_back(
        hub: tuple[Items, Served], proxy: HttpFaults, make_backend: BackendFactory,
        tmp_path: Path) -> None:
    """The connection drops with the request unforwarded: the client cannot tell that from a
    lost answer, reads the rows back, finds them not as sent, and rolls back."""
    items, _ = hub
    db = db_side(make_backend, "postgresql")
    seeded(items, db)
    with Link.open(spoke(tmp_path, proxy.root, db)) as link:
        proxy.fail("POST", r"\$batch", "drop")
        with pytest.raises(TransientConnectorError, match="not applied") as caught, \
                link.transaction() as tx:
            tx.create("crm", "items", {"id": 20, "name": "never sent", "qty": 20})
            tx.update("crm", "items", {"id": 1}, {"qty": 50})
        assert "nothing was written" in caught.value.message
        assert prepared(db, link) == [] and in_doubt(link) == []
    assert pg_rows(db) == items.rows("left") == {i: (f"row {i}", i) for i in range(1, 4)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not-applied"])
def test_an_outcome_that_cannot_be_read_back_stays_in_doubt_until_recover(
        hub: tuple[Items, Served], proxy: HttpFaults, make_backend: BackendFactory,
        tmp_path: Path, kind: str, applied: bool) -> None:
    """The answer is lost and the rows cannot be read back either: the transaction is in
    doubt, the database side prepared (its change invisible). `recover`, once the service
    answers, reads the rows back and commits or rolls back."""
    items, _ = hub
    db = db_side(make_backend, kind)
    seeded(items, db)
    config = spoke(tmp_path, proxy.root, db)
    with Link.open(config) as link:
        link.recover()  # what the first transaction would do: done before the faults
        link_id = link.link_id
    try:
        in_doubt_then_recovered(proxy, items, db, config, applied)
    finally:  # a failed assertion must not leave a branch prepared (its locks) behind
        for xid in db.connector.recover(xid_prefix(link_id)):
            db.connector.finish_prepared(xid, commit=False)


def in_doubt_then_recovered(proxy: HttpFaults, items: Items, db: Backend, config: Path,
                            applied: bool) -> None:
    with Link.open(config) as link:
        # validated before the faults: its probe of the hub's change tracking is a GET of
        # items too, and a probe that cannot be made is a transient error (as describing)
        link.validate()
        proxy.fail("POST", r"\$batch", "lost" if applied else "drop")
        proxy.fail("GET", r"items", "drop", times=3)
        with pytest.raises(InDoubt, match="in doubt") as caught, link.transaction() as tx:
            tx.update("crm", "items", {"id": 2}, {"name": "in doubt"})
        assert "dualwrite recover" in caught.value.hint
        assert len(prepared(db, link)) == 1 and len(in_doubt(link)) == 1
        assert pg_rows(db)[2] == ("row 2", 2)  # prepared: not visible yet
        assert items.rows("left")[2] == (("in doubt", 2) if applied else ("row 2", 2))
    proxy.clear()
    proxy.fail("GET", r"items", "drop", times=3)  # still unreachable: left in doubt
    with Link.open(config) as link:
        report = link.recover()
        assert [a.action for a in report.actions] == [
            "left in doubt (the OData service could not be read)", "left in doubt"]
        assert len(prepared(db, link)) == 1 and len(in_doubt(link)) == 1
    proxy.clear()
    with Link.open(config) as link:
        report = link.recover()
        [action] = report.actions
        assert action.action.startswith("committed" if applied else "rolled back")
        assert prepared(db, link) == [] and in_doubt(link) == []
    assert pg_rows(db) == items.rows("left")
    assert pg_rows(db)[2] == (("in doubt", 2) if applied else ("row 2", 2))


def test_a_database_that_cannot_prepare_is_refused_saying_why(
        hub: tuple[Items, Served], proxy: HttpFaults, make_backend: BackendFactory,
        tmp_path: Path) -> None:
    db = db_side(make_backend, "sqlite")
    with Link.open(spoke(tmp_path, proxy.root, db)) as link:
        with pytest.raises(ConfigError, match="cannot prepare a transaction") as caught, \
                link.transaction() as tx:
            tx.create("crm", "items", {"id": 1, "name": "x", "qty": 1})
        assert "PostgreSQL or MariaDB" in caught.value.hint
    assert pg_rows(db) == {}


def test_writes_through_serve_of_a_link_with_an_odata_side(
        hub: tuple[Items, Served], proxy: HttpFaults, make_backend: BackendFactory,
        tmp_path: Path) -> None:
    """The spoke's own `serve` publishes its database environment; a write there is one
    live transaction with the hub (a change set refused by the hub: nothing written)."""
    import httpx

    items, _ = hub
    db = db_side(make_backend, "postgresql")
    seeded(items, db)
    items.left.insert("items", [{"id": 7, "name": "only in the hub", "qty": 7}])
    config = spoke(tmp_path, proxy.root, db)
    with Link.open(config) as link:
        token = create_token(link.state, "app", role="writer")
    with serve(config) as served, httpx.Client(
            base_url=served.url + "/odata/crm/",
            headers={"Authorization": f"Bearer {token}"}) as c:
        r = c.post("items", json={"id": 30, "name": "through serve", "qty": 3})
        assert r.status_code == 201, r.text
        r = c.patch("items(1)", json={"qty": 11})
        assert r.status_code in (200, 204), r.text
        r = c.post("items", json={"id": 7, "name": "duplicate in the hub", "qty": 0})
        assert r.status_code == 409, r.text
        assert "hub" in r.json()["error"]["message"]
    assert pg_rows(db) == {1: ("row 1", 11), 2: ("row 2", 2), 3: ("row 3", 3),
                           30: ("through serve", 3)}
    assert items.rows("left") == {**pg_rows(db), 7: ("only in the hub", 7)}


CHILD = textwrap.dedent("""
    import os, signal, sys
    import dualwrite

    step = sys.argv[2]

    def hook(at):
        if at == step:
            os.kill(os.getpid(), signal.SIGKILL)

    with dualwrite.open(sys.argv[1]) as link:
        with link.transaction(principal="crash-test", hook=hook) as tx:
            tx.create("crm", "items", {"id": 50, "name": "made by the killed", "qty": 5})
            tx.update("crm", "items", {"id": 1}, {"name": "changed by the killed"})
    print("committed")
""")


@pytest.mark.parametrize("step", LAST_RESOURCE_STEPS)
def test_sigkill_at_each_step_then_recover(
        hub: tuple[Items, Served], make_backend: BackendFactory, tmp_path: Path,
        step: str) -> None:
    """The coordinator is killed at each step; `dualwrite recover` then ends the database
    branch as the service's rows say (before the record: presumed abort, never sent;
    after the send: applied, read back; after the decision: committed by the log)."""
    items, served = hub
    db = db_side(make_backend, "postgresql")
    seeded(items, db)
    config = spoke(tmp_path, served.url + "/odata/erp/", db)
    with Link.open(config) as link:
        link.recover()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run([sys.executable, str(script), str(config), step],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    applied = step in ("after_send", "after_decision")
    with Link.open(config) as link:
        assert len(prepared(db, link)) == 1
        assert len(in_doubt(link)) == (1 if step in ("after_record", "after_send") else 0)
        report = link.recover()
        assert [a.action.split(" (")[0] for a in report.actions] == [
            "committed" if applied else "rolled back"]
        assert prepared(db, link) == [] and in_doubt(link) == []
        [v] = link.verify()
        assert v.ok, v.as_dict()
    rows = pg_rows(db)
    assert rows == items.rows("left")
    assert (50 in rows) == applied
    assert rows[1][0] == ("changed by the killed" if applied else "row 1")


def hub_patch(served: Served, key: int, values: dict[str, object]) -> None:
    """Change a hub row through its OData API directly (not through the proxy)."""
    import httpx

    with httpx.Client(base_url=served.url + "/odata/erp/", headers={
            "Authorization": f"Bearer {os.environ['HUB_TOKEN']}"}) as c:
        r = c.patch(f"items({key})", json=values)
        assert r.is_success, r.text


def test_a_row_changed_in_the_service_after_the_transaction_read_it_fails_it(
        hub: tuple[Items, Served], proxy: HttpFaults, make_backend: BackendFactory,
        tmp_path: Path) -> None:
    """An update of a service row sends If-Match with the ETag read: a change made in the
    service between that read and the change set is a 412, and the whole transaction fails
    naming the map and key, nothing written on either side."""
    items, served = hub
    db = db_side(make_backend, "postgresql")
    seeded(items, db)
    with Link.open(spoke(tmp_path, proxy.root, db)) as link:
        with pytest.raises(RowError) as caught, link.transaction() as tx:
            tx.update("hub", "items", {"id": 1}, {"qty": 100})
            tx.create("crm", "items", {"id": 40, "name": "not kept", "qty": 4})
            hub_patch(served, 1, {"name": "changed meanwhile"})
        assert caught.value.map == "items" and caught.value.key == (1,)
        assert caught.value.side == "hub"
        assert "changed in the OData service since this transaction read it" in \
            caught.value.message and "nothing was written" in caught.value.message
        assert prepared(db, link) == [] and in_doubt(link) == []
        # without a change in between, the same update goes through (its ETag matches)
        with link.transaction() as tx:
            tx.update("hub", "items", {"id": 2}, {"qty": 200})
    assert pg_rows(db) == {1: ("row 1", 1), 2: ("row 2", 200), 3: ("row 3", 3)}
    assert items.rows("left") == {1: ("changed meanwhile", 1), 2: ("row 2", 200),
                                  3: ("row 3", 3)}


@pytest.mark.parametrize("conflict", ["left-wins", "right-wins"])
def test_the_follower_sees_a_change_made_in_the_service_before_its_write_as_a_conflict(
        hub: tuple[Items, Served], proxy: HttpFaults, make_backend: BackendFactory,
        tmp_path: Path, conflict: str) -> None:
    """The follower reads the twin (and its ETag) and writes the database's change with
    If-Match; the service's row is changed just before the change set arrives (412). The
    conflict is recorded; the winner's change ends on both sides."""
    import time

    from dualwrite.engine.odata_follow import ODataFollower

    items, served = hub
    db = db_side(make_backend, "postgresql")
    seeded(items, db)
    with Link.open(spoke(tmp_path, proxy.root, db, conflict=conflict)) as link:
        follower = ODataFollower(link.connectors, link.state, link.bound_maps(), {},
                                 reconcile_every=1)
        follower.start()
        with db.app().begin() as conn:
            conn.execute(sa.text("UPDATE items SET name = 'changed in PG' WHERE id = 3"))
        proxy.before("POST", r"\$batch", lambda: hub_patch(served, 3, {"name": "in hub"}))
        deadline = time.monotonic() + 60
        while True:
            written = follower.step()
            [v] = link.verify()
            if v.ok and written == 0 and proxy.pending() == 0:
                break
            assert time.monotonic() < deadline, v.as_dict()
        [c] = link.state.conflicts()
        assert c["map"] == "items" and c["key"] == [3]
        assert c["winner"] == ("left" if conflict == "left-wins" else "right")
        assert link.state.errors() == []
    winner = "in hub" if conflict == "left-wins" else "changed in PG"
    assert pg_rows(db)[3] == items.rows("left")[3] == (winner, 3)
    statuses = [f for m, rel, f, _ in proxy.seen if m == "POST"]
    assert "before" in statuses


def test_a_service_without_batch_is_written_row_by_row_and_refused_for_live_sync(
        hub: tuple[Items, Served], proxy: HttpFaults, make_backend: BackendFactory,
        tmp_path: Path) -> None:
    """The proxy answers 501 to every $batch, as a service without it would: initial sync
    writes row by row (a row the service refuses to the error inbox, the rest written),
    and a live transaction is refused, saying why, with nothing written."""
    from dualwrite.errors import TerminalConnectorError

    items, _ = hub
    db = db_side(make_backend, "postgresql", name_length=100)  # the hub's name holds 40
    items.left.insert("items", [{"id": i, "name": f"hub {i}", "qty": i} for i in range(1, 4)])
    db.insert("items", [{"id": i, "name": "x" * 60 if i == 12 else f"crm {i}", "qty": i}
                        for i in range(10, 15)])
    proxy.fail("POST", r"\$batch", "501", times=50)
    with Link.open(spoke(tmp_path, proxy.root, db)) as link:
        [result] = link.sync_initial(master="left")
        # (the count is of the rows to create; the one refused is among the errors)
        assert result.created == {"left": 4, "right": 3}, result.as_dict()
        assert result.errors == {"left": 1, "right": 0}, result.as_dict()
        [error] = link.state.errors()
        assert error.key == (12,) and error.side == "left" and error.operation == "create"
        assert "no $batch: one request per row" in error.reason and "holds 40" in \
            error.reason
        with pytest.raises(TerminalConnectorError, match="takes no atomic change sets") \
                as caught, link.transaction() as tx:
            tx.create("crm", "items", {"id": 30, "name": "not written", "qty": 3})
        assert "answered 501 to $batch" in caught.value.message
        assert "follow" in caught.value.hint
    assert items.rows("left") == {**{i: (f"hub {i}", i) for i in range(1, 4)},
                                  **{i: (f"crm {i}", i) for i in (10, 11, 13, 14)}}
    assert 30 not in pg_rows(db) and set(pg_rows(db)) == {1, 2, 3, 10, 11, 12, 13, 14}
    batches = [rel for m, rel, _, _ in proxy.seen if m == "POST" and rel == "$batch"]
    assert len(batches) == 1  # found out once: then row by row
    assert [rel for m, rel, _, _ in proxy.seen if m == "POST" and rel == "items"]


class _Running:
    """A `dualwrite run` (or ``serve``) process, its output collected line by line by a
    thread."""

    def __init__(self, config: Path, *command: str) -> None:
        import threading

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dualwrite", "-c", str(config), *(command or ("run",))],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(
            self.proc.stdout or ()), daemon=True)
        self._reader.start()

    def wait_for(self, words: str, deadline: float) -> None:
        import time

        while not any(words in line for line in self.lines):
            assert time.monotonic() < deadline and self.proc.poll() is None, self.lines
            time.sleep(0.05)  # polling the output for the condition, with a deadline

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._reader.join(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code


def until(cond: Callable[[], bool], seconds: float = 60) -> None:
    """Wait for ``cond`` (both sides polled), failing after ``seconds``."""
    import time

    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.05)  # polling both sides for the condition, with a deadline


def test_run_follows_a_link_with_an_odata_side_under_the_applier_lease(
        hub: tuple[Items, Served], make_backend: BackendFactory, tmp_path: Path) -> None:
    """`dualwrite run` on a link with an OData side follows it (no `dualwrite follow`
    needed); a second `run` stands by, and takes over when the first stops."""
    import time

    items, served = hub
    db = db_side(make_backend, "postgresql")
    seeded(items, db)
    config = spoke(tmp_path, served.url + "/odata/erp/", db)

    first = _Running(config)
    second: _Running | None = None
    try:
        first.wait_for("following link", time.monotonic() + 60)
        second = _Running(config)
        second.wait_for("standing by", time.monotonic() + 60)
        with db.app().begin() as conn:
            conn.execute(sa.text("UPDATE items SET name = 'changed in PG' WHERE id = 1"))
        hub_patch(served, 2, {"name": "changed in the hub"})
        until(lambda: items.rows("left")[1][0] == "changed in PG"
              and pg_rows(db)[2][0] == "changed in the hub")
        assert first.stop() == 0
        second.wait_for("following link", time.monotonic() + 60)
        with db.app().begin() as conn:
            conn.execute(sa.text("INSERT INTO items (id, name, qty) VALUES (9, 'after', 9)"))
        until(lambda: items.rows("left").get(9) == ("after", 9))
        assert second.stop() == 0
    finally:
        for p in (first, second):
            if p is not None and p.proc.poll() is None:
                p.stop()
    said = [("standby" if "standing by" in line else "follow") for line in second.lines
            if "standing by" in line or "following link" in line]
    assert said == ["standby", "follow"], second.lines
    assert pg_rows(db) == items.rows("left")


def test_serve_follows_a_link_with_an_odata_side_and_run_stands_by(
        hub: tuple[Items, Served], make_backend: BackendFactory, tmp_path: Path) -> None:
    """`dualwrite serve` on a link with an OData side follows it as `run` does (both ways),
    under the same lease: a `run` started beside it stands by."""
    import time

    items, served = hub
    db = db_side(make_backend, "postgresql")
    seeded(items, db)
    config = spoke(tmp_path, served.url + "/odata/erp/", db)

    ours = _Running(config, "serve", "--port", "0")
    beside: _Running | None = None
    try:
        ours.wait_for("following link", time.monotonic() + 60)
        with db.app().begin() as conn:
            conn.execute(sa.text("UPDATE items SET name = 'changed in PG' WHERE id = 1"))
        hub_patch(served, 2, {"name": "changed in the hub"})
        until(lambda: items.rows("left")[1][0] == "changed in PG"
              and pg_rows(db)[2][0] == "changed in the hub")
        beside = _Running(config)
        beside.wait_for("standing by", time.monotonic() + 60)
    finally:
        for p in (beside, ours):
            if p is not None and p.proc.poll() is None:
                assert p.stop() == 0, p.lines
    assert any("dualwrite serve: following link" in line for line in ours.lines), ours.lines
    assert pg_rows(db) == items.rows("left")


def test_a_transaction_with_nothing_for_the_service_commits_the_database_alone(
        hub: tuple[Items, Served], proxy: HttpFaults, make_backend: BackendFactory,
        tmp_path: Path) -> None:
    """A write to a table no map names sends no change set: the database branch commits
    by itself (audited as any other)."""
    items, _ = hub
    db = db_side(make_backend, "postgresql")
    md = sa.MetaData()
    sa.Table("notes", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("text", sa.String(40)))
    db.create(md)
    with Link.open(spoke(tmp_path, proxy.root, db)) as link:
        with link.transaction("clerk") as tx:
            tx.create("crm", "notes", {"id": 1, "text": "only here"})
        assert prepared(db, link) == [] and in_doubt(link) == []
        assert [(a["environment"], a["table_name"]) for a in link.state.audit()] == [
            ("crm", "notes")]
    assert db.rows("notes", ["id"]) == [{"id": 1, "text": "only here"}]
    assert [m for m, rel, _, _ in proxy.seen if m == "POST"] == []
    assert items.rows("left") == {}
