"""The last-resource commit of a live transaction between two databases (see
:class:`dualwrite.engine.live.Coordinator`): the left branch prepared, the right one
committed in one phase with the decision row, the left one committed; the decision row as
the record recovery obeys, and the abort row that fences a commit still on its way."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dualwrite.connectors.sql import DECISIONS_TABLE
from dualwrite.engine import live
from dualwrite.engine.link import Link
from dualwrite.engine.live import read_decision_record, xid_prefix
from dualwrite.errors import ConnectorError, ConstraintViolation, InDoubt

from conftest import Backend, BackendFactory
from faultproxy import FaultProxy, Mode
from sync_fixtures import Pair, erp_customer, make_pair, seed_groups


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def prepared_xacts(backend: Backend) -> list[str]:
    return [str(r[0]) for r in backend.sql(
        "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'dw-%' "
        "AND database = current_database()")]


def rows(pair: Pair) -> list[tuple[str, str]]:
    """The right side's decision rows of the pair's link: (transaction, outcome)."""
    record = pair.crm.connector.get_link()
    assert record is not None
    return [(x, o) for x, o, _ in pair.crm.connector.decisions(xid_prefix(record.link_id))]


def lock_waits(backend: Backend, wait_event: str) -> int:
    """Sessions of the backend's database waiting on a lock of that kind."""
    return int(backend.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
        f"wait_event_type = 'Lock' AND wait_event = '{wait_event}'")[0][0])


# -- the decision table on its own ---------------------------------------------------------
@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
@pytest.mark.parametrize("ends", ["commit", "rollback"])
def test_settling_waits_for_a_commit_under_way_and_then_follows_it(
        make_backend: BackendFactory, kind: str, ends: str) -> None:
    """A commit row inserted and not yet committed (a last resource's COMMIT under way)
    holds settle_decision until that transaction ends: committed, the answer is its row;
    rolled back, an abort row takes its place and a late commit of the same transaction is
    refused on the key."""
    backend = make_backend(kind, "dualwrite_test_a")
    connector = backend.connector
    connector.ensure_decisions()
    xid = f"dw-test{kind[:2]}-1-2-3-{ends}"
    connector.forget_decisions([xid])
    backend.sql(f"DELETE FROM {DECISIONS_TABLE} WHERE xid = '{xid}'")
    engine = sa.create_engine(backend.url, poolclass=sa.pool.NullPool)
    under_way = engine.connect()
    trx = under_way.begin()
    under_way.execute(sa.text(f"INSERT INTO {DECISIONS_TABLE} (xid, outcome, record) "
                              "VALUES (:x, 'commit', '[[\"erp\",\"crm\"],\"p\",[]]')"),
                      {"x": xid})
    answer: list[Any] = []
    settling = threading.Thread(target=lambda: answer.append(connector.settle_decision(xid)))
    settling.start()
    try:
        if kind == "postgresql":
            wait_for("the settling insert to wait for the key",
                     lambda: lock_waits(backend, "transactionid") >= 1)
        else:
            wait_for("the settling insert to wait for the key", lambda: int(backend.sql(
                "SELECT count(*) FROM information_schema.innodb_trx "
                "WHERE trx_state = 'LOCK WAIT'")[0][0]) >= 1)
        assert answer == []  # still waiting: the outcome is not known yet
        (trx.commit if ends == "commit" else trx.rollback)()
        settling.join(timeout=30)
        assert not settling.is_alive()
    finally:
        if trx.is_active:
            trx.rollback()
        under_way.close()
    if ends == "commit":
        outcome, record = answer[0]
        assert outcome == "commit"
        assert read_decision_record(record) == (["erp", "crm"], "p", [])
    else:
        assert answer == [("abort", None)]
        # the fence: the coordinator's commit, arriving late, fails on the key
        with engine.begin() as conn, pytest.raises(sa.exc.IntegrityError):
            conn.execute(sa.text(f"INSERT INTO {DECISIONS_TABLE} (xid, outcome) "
                                 "VALUES (:x, 'commit')"), {"x": xid})
        assert connector.settle_decision(xid) == ("abort", None)  # asked again: the same
        # forgetting deletes commit rows only: the abort row stays to fence
        connector.forget_decisions([xid])
        assert connector.decisions(xid) == [(xid, "abort", None)]
    engine.dispose()


# -- the coordinator -----------------------------------------------------------------------
WAIT_AT_COMMIT = "Wait at commit"
REFUSE_AT_COMMIT = "Refuse at commit"


@pytest.fixture
def commit_traps() -> Callable[[Backend], None]:
    """Installs on a PostgreSQL backend's ``accounts`` a deferred constraint trigger, which
    fires inside COMMIT: a row named WAIT_AT_COMMIT waits there for advisory lock 4242; one
    named REFUSE_AT_COMMIT fails the COMMIT."""
    def install(backend: Backend) -> None:
        backend.sql(
            "CREATE OR REPLACE FUNCTION dw_test_at_commit() RETURNS trigger LANGUAGE plpgsql "
            f"AS $$ BEGIN IF NEW.name = '{WAIT_AT_COMMIT}' THEN "
            "PERFORM pg_advisory_xact_lock(4242); END IF; "
            f"IF NEW.name = '{REFUSE_AT_COMMIT}' THEN "
            "RAISE EXCEPTION 'refused at commit' USING ERRCODE = 'check_violation'; END IF; "
            "RETURN NULL; END $$")
        backend.sql("DROP TRIGGER IF EXISTS dw_test_at_commit ON accounts")
        backend.sql("CREATE CONSTRAINT TRIGGER dw_test_at_commit AFTER INSERT OR UPDATE ON "
                    "accounts DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "
                    "dw_test_at_commit()")
    return install


@pytest.fixture
def pg_pair(make_backend: BackendFactory, tmp_path: Path,
            commit_traps: Callable[[Backend], None]) -> Iterator[tuple[Pair, FaultProxy]]:
    """PostgreSQL <-> PostgreSQL, the right side reached through a fault proxy, maps
    started, the commit traps installed on the right."""
    with FaultProxy(5432) as proxy:
        def through_proxy(cfg: dict[str, Any]) -> None:
            cfg["environments"]["crm"]["url"] = proxy.url(cfg["environments"]["crm"]["url"])

        pair = make_pair(make_backend, tmp_path, "postgresql", "postgresql", batch_size=500,
                         extra=through_proxy)
        seed_groups(pair)
        commit_traps(pair.crm)
        with pair.link() as link:
            link.start_maps()
        try:
            yield pair, proxy
        finally:
            # a branch a failed test left prepared would hold its locks, and hold up every
            # logical replication slot made on the server meanwhile
            proxy.set_mode(Mode.PASS)
            pair.erp.clear_prepared()


def key(row: dict[str, Any]) -> tuple[str, str]:
    return row["dataAreaId"], row["ACCOUNT"]


def test_a_transaction_writes_one_prepare_and_commits_the_right_side_with_its_decision(
        pg_pair: tuple[Pair, FaultProxy]) -> None:
    """At each step, what the databases hold: the left branch alone prepared, the right
    one committed with its decision row in it, then the left one committed; the decision
    reaches the state store and its row is deleted."""
    pair, _ = pg_pair
    seen: dict[str, Any] = {}

    def hook(step: str) -> None:
        seen[step] = (prepared_xacts(pair.erp), prepared_xacts(pair.crm), rows(pair))

    row = erp_customer(811)
    with pair.link() as link:
        with link.transaction(principal="steps", hook=hook) as tx:
            tx.create("erp", "Customers", row)
        erp_prepared, crm_prepared, decided = seen["after_first_prepare"]
        assert len(erp_prepared) == 1 and crm_prepared == [] and decided == []
        xid = erp_prepared[0][:-2]
        assert seen["after_decision"] == (erp_prepared, [], [(xid, "commit")])
        assert seen["after_first_commit"] == ([], [], [(xid, "commit")])
        assert key(row) in pair.accounts()
        assert link.state.decision(xid) == "commit"  # reading settles the noted decision
        assert rows(pair) == []
        assert [(a["principal"], a["operation"]) for a in link.state.audit()
                if a["xid"] == xid] == [("steps", "create"), ("steps", "create")]


def test_a_transaction_that_writes_one_side_prepares_nothing(
        pg_pair: tuple[Pair, FaultProxy]) -> None:
    """A row the map's filter leaves without a twin: the left side alone is written, and
    commits in one phase with its own decision row; nothing is ever prepared."""
    pair, _ = pg_pair
    seen: dict[str, Any] = {}
    row = erp_customer(813, PARTYTYPE="Person")
    with pair.link() as link:
        with link.transaction(principal="one-side",
                              hook=lambda step: seen.setdefault(step, prepared_xacts(pair.erp))
                              ) as tx:
            tx.create("erp", "Customers", row)
        assert seen == {"after_first_prepare": [], "after_decision": []}
        assert key(row) in pair.customers()
        assert key(row) not in pair.accounts()
        [audit] = [a for a in link.state.audit() if a["principal"] == "one-side"]
        assert link.state.decision(audit["xid"]) == "commit"
        left = pair.erp.connector.decisions(audit["xid"])
        assert left == []  # its row was on the left, and is deleted once in the state store


def test_a_commit_the_last_resource_refuses_leaves_both_sides_as_they_were(
        pg_pair: tuple[Pair, FaultProxy]) -> None:
    """The right side's COMMIT fails (a deferred constraint): nothing was committed there,
    so the prepared left branch is rolled back, the error is raised, and an abort row
    records the outcome."""
    pair, _ = pg_pair
    row = erp_customer(815, NAME=REFUSE_AT_COMMIT)
    with pair.link() as link:
        with (pytest.raises(ConstraintViolation, match="refused at commit"),
              link.transaction(principal="refused") as tx):
            tx.create("erp", "Customers", row)
        assert key(row) not in pair.customers()
        assert key(row) not in pair.accounts()
        assert prepared_xacts(pair.erp) == []
        assert [o for _, o in rows(pair)] == ["abort"]
        assert not [a for a in link.state.audit() if a["principal"] == "refused"]
        # the next one commits
        with link.transaction(principal="after") as tx:
            tx.create("erp", "Customers", erp_customer(817))
        assert key(erp_customer(817)) in pair.accounts()


def test_a_commit_whose_answer_is_lost_is_settled_by_its_decision_row(
        pg_pair: tuple[Pair, FaultProxy]) -> None:
    """The right side's session is reset while its COMMIT is under way (held inside COMMIT
    by a lock the test holds): the coordinator cannot tell whether it committed, so it
    settles it on a new session, whose abort row waits for the COMMIT's decision row; the
    test lets the COMMIT finish, the settling finds the commit row, and the left branch is
    committed: both sides hold the row, the transaction did not fail."""
    pair, proxy = pg_pair
    row = erp_customer(819, NAME=WAIT_AT_COMMIT)
    holder = sa.create_engine(pair.crm.url, poolclass=sa.pool.NullPool).connect()
    holder.execute(sa.text("SELECT pg_advisory_lock(4242)"))
    errors: list[BaseException] = []

    def cut_then_release() -> None:
        try:
            wait_for("the COMMIT to wait for the advisory lock",
                     lambda: lock_waits(pair.crm, "advisory") == 1)
            proxy.reset_connections()
            wait_for("the settling insert to wait for the COMMIT's decision row",
                     lambda: lock_waits(pair.crm, "transactionid") == 1)
            holder.execute(sa.text("SELECT pg_advisory_unlock(4242)"))
        except BaseException as exc:
            errors.append(exc)
            holder.execute(sa.text("SELECT pg_advisory_unlock_all()"))

    def hook(step: str) -> None:
        if step == "after_first_prepare":
            threading.Thread(target=cut_then_release, daemon=True).start()

    try:
        with pair.link() as link:
            with link.transaction(principal="answer-lost", hook=hook) as tx:
                tx.create("erp", "Customers", row)
            assert errors == []
            assert key(row) in pair.customers()
            assert key(row) in pair.accounts()
            assert prepared_xacts(pair.erp) == []
            [audit, _] = [a for a in link.state.audit() if a["principal"] == "answer-lost"]
            assert link.state.decision(audit["xid"]) == "commit"
            assert rows(pair) == []
    finally:
        holder.close()


def left_in_doubt(pair: Pair, proxy: FaultProxy, link: Link, row: dict[str, Any]) -> str:
    """Create ``row`` with the right side going down as its COMMIT is sent (and staying
    down): InDoubt is raised; returns the left branch it leaves prepared."""
    def hook(step: str) -> None:
        if step == "after_first_prepare":
            proxy.set_mode(Mode.REFUSE)

    with (pytest.raises(InDoubt, match="dualwrite recover"),
          link.transaction(principal="in-doubt", hook=hook) as tx):
        tx.create("erp", "Customers", row)
    [branch] = prepared_xacts(pair.erp)
    return branch


def test_a_last_resource_out_of_reach_leaves_the_transaction_in_doubt_until_recovery(
        pg_pair: tuple[Pair, FaultProxy]) -> None:
    """The right side goes down as its COMMIT is sent, and stays down: what became of the
    transaction cannot be found out, so it is InDoubt and the left branch stays prepared;
    once the server answers, recovery settles it by the decision row (none: the COMMIT never
    arrived) and rolls the left branch back."""
    pair, proxy = pg_pair
    row = erp_customer(821)
    with pair.link() as link:
        branch = left_in_doubt(pair, proxy, link, row)
        proxy.set_mode(Mode.PASS)
        report = link.recover()
        assert [(a.xid, a.action) for a in report.actions] == [(branch, "rolled back")]
        assert prepared_xacts(pair.erp) == []
        assert rows(pair) == [(branch[:-2], "abort")]
        assert key(row) not in pair.customers()
        assert key(row) not in pair.accounts()
        with pytest.raises(ConnectorError):  # the fence: that transaction cannot commit now
            pair.crm.sql(f"INSERT INTO {DECISIONS_TABLE} (xid, outcome) "
                         f"VALUES ('{branch[:-2]}', 'commit')")


@pytest.mark.parametrize("right", ["postgresql", "mariadb"])
def test_a_transaction_too_large_for_a_decision_row_commits_in_two_phases(
        make_backend: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        right: str) -> None:
    """A decision record over DECISION_RECORD_LIMIT (here lowered: a real one is 4 MiB of
    audit) is not sent in one statement, which MariaDB's max_allowed_packet bounds: both
    branches are prepared and the decision is logged in the state store; no decision row is
    written. Both sides hold every row, and the audit is whole."""
    pair = make_pair(make_backend, tmp_path, "postgresql", right)
    seed_groups(pair)
    with pair.link() as link:
        link.start_maps()
        monkeypatch.setattr(live, "DECISION_RECORD_LIMIT", 600)
        steps: list[str] = []
        crm_rows: dict[str, Any] = {}

        def hook(step: str) -> None:
            steps.append(step)
            if step == "after_decision":
                crm_rows["decided"] = rows(pair)
        new = [erp_customer(830 + i) for i in range(12)]  # some 100 characters of audit each
        with link.transaction(principal="large", hook=hook) as tx:
            for r in new:
                tx.create("erp", "Customers", r)
        assert steps == list(live.TWO_PHASE_STEPS)
        assert crm_rows["decided"] == []
        assert {key(r) for r in new} <= set(pair.customers())
        assert {key(r) for r in new} <= set(pair.accounts())
        audit = [a for a in link.state.audit() if a["principal"] == "large"]
        assert len(audit) == 2 * len(new)
        assert link.state.decision(audit[0]["xid"]) == "commit"
        # a small one goes on taking the last-resource path
        steps.clear()
        with link.transaction(principal="small", hook=hook) as tx:
            tx.create("erp", "Customers", erp_customer(850))
        assert steps == list(live.STEPS)
    assert not prepared_xacts(pair.erp)


def test_the_decision_record_limit_is_inside_mariadbs_packet_limit(
        make_backend: BackendFactory) -> None:
    """The limit keeps a decision row's INSERT (record, quoting and statement) inside the
    packet this server takes."""
    b = make_backend("mariadb", "dualwrite_test_a")
    [(packet,)] = b.sql("SELECT @@max_allowed_packet")
    # quoting at most doubles the record (every character a quote or a backslash)
    assert int(packet) >= 2 * live.DECISION_RECORD_LIMIT + 4096


def test_a_mariadb_last_resource_commits_with_its_decision_row_in_one_request(
        make_backend: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL <-> MariaDB: the right side's decision row, XA END and XA COMMIT ... ONE
    PHASE go in one request (one round trip, not three), and the row is committed with it."""
    import pymysql

    pair = make_pair(make_backend, tmp_path, "postgresql", "mariadb")
    seed_groups(pair)
    me = threading.get_ident()
    sent: list[str] = []
    counting = False
    query = pymysql.connections.Connection.query

    def counted(self: Any, sql: Any, unbuffered: bool = False) -> Any:
        if counting and threading.get_ident() == me:
            sent.append(sql.decode() if isinstance(sql, bytes) else str(sql))
        return query(self, sql, unbuffered)

    monkeypatch.setattr(pymysql.connections.Connection, "query", counted)
    seen: dict[str, Any] = {}

    def hook(step: str) -> None:
        nonlocal counting
        if step == "after_first_prepare":
            counting = True
        elif step == "after_decision":
            counting = False
            seen["decided"] = rows(pair)

    row = erp_customer(861)
    with pair.link() as link:
        link.start_maps()
        with link.transaction(principal="one-request", hook=hook) as tx:
            tx.create("erp", "Customers", row)
        [request] = sent
        assert request.startswith(f"INSERT INTO {DECISIONS_TABLE}")
        assert "; XA END " in request and request.endswith(" ONE PHASE")
        [(xid, outcome)] = seen["decided"]
        assert outcome == "commit" and f"'{xid}'" in request
        assert key(row) in pair.accounts()
        assert key(row) in pair.customers()
        assert link.state.decision(xid) == "commit"


def test_a_transaction_left_in_doubt_is_settled_by_another_process(
        pg_pair: tuple[Pair, FaultProxy]) -> None:
    """InDoubt is recorded in the state store too: `dualwrite recover` run by another
    process settles the transaction while the process that gave it up still runs (its pid
    alive in the xid: without the record, recovery would leave the branch to it), and that
    process forgets it at its next live transaction."""
    pair, proxy = pg_pair
    row = erp_customer(823)
    with pair.link() as link:
        branch = left_in_doubt(pair, proxy, link, row)
        assert live.abandoned_transactions()
        assert [x for x, _ in link.state.checkpoints_in_phase(live.ABANDONED)] == [branch[:-2]]
        proxy.set_mode(Mode.PASS)
        done = subprocess.run([sys.executable, "-m", "dualwrite.cli", "-c", str(pair.config),
                               "recover", "--json"], capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert [(a["xid"], a["action"]) for a in report["actions"]] == [(branch, "rolled back")]
        assert prepared_xacts(pair.erp) == []
        assert rows(pair) == [(branch[:-2], "abort")]
        assert link.state.checkpoints_in_phase(live.ABANDONED) == []
        assert key(row) not in pair.accounts()
        # this process's next live transaction finds it ended, and forgets it
        with link.transaction(principal="after") as tx:
            tx.create("erp", "Customers", erp_customer(825))
        assert not live.abandoned_transactions()
        assert key(erp_customer(825)) in pair.accounts()
