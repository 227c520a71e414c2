"""Kill the process (SIGKILL, a real subprocess) at each step of the commit protocol; after
recovery both sides agree with each other and with the decision (the last resource's
decision row), no prepared transaction is left behind, and the audit trail holds the
committed transaction."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from dualwrite.cli import main
from dualwrite.engine.live import STEPS, xid_prefix
from dualwrite.errors import TransientConnectorError
from dualwrite.testing.backends import pairs

from conftest import BackendFactory, fresh_state_url
from faultproxy import FaultProxy, Mode
from sync_fixtures import Pair, erp_customer, make_pair, seed_groups

CHILD = textwrap.dedent("""
    import os, signal, sys
    import dualwrite
    from sync_fixtures import erp_customer

    step = sys.argv[2]

    def hook(at):
        if at == step:
            os.kill(os.getpid(), signal.SIGKILL)

    with dualwrite.open(sys.argv[1]) as link:
        with link.transaction(principal="crash-test", hook=hook) as tx:
            tx.create("erp", "Customers", erp_customer(801))
            tx.update("crm", "accounts", {"company": "usmf", "accountnumber": "C-0001"},
                      {"name": "Changed by the killed transaction"})
    print("committed")
""")

PAIRS = pairs(needs=("two_phase", "sql"))


def prepared(pair: Pair) -> list[str]:
    out = []
    for b in (pair.erp, pair.crm):
        if b.kind == "postgresql":
            out += [r[0] for r in b.sql("SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'dw-%' "
                                           "AND database = current_database()")]
        else:
            # XA RECOVER lists the whole server's branches (other workers', other
            # checkouts'): this link's only
            record = b.connector.get_link()
            assert record is not None
            out += [x for x in (r[3].decode() if isinstance(r[3], bytes) else str(r[3])
                                for r in b.sql("XA RECOVER"))
                    if x.startswith(xid_prefix(record.link_id))]
    return out


def decision_rows(pair: Pair) -> list[tuple[str, str]]:
    """The right side's decision rows of this link: (transaction, outcome)."""
    record = pair.crm.connector.get_link()
    assert record is not None
    return [(x, o) for x, o, _ in pair.crm.connector.decisions(xid_prefix(record.link_id))]


#: (left, right, state store): every pair with a SQLite state store (its decision journal),
#: and one with a PostgreSQL state store (decisions committed there directly)
CASES = [(a, b, "sqlite") for a, b in PAIRS] + [
    (a, b, "postgresql") for a, b in pairs(needs=("two_phase", "sql"), same="none")[:1]]


@pytest.mark.parametrize("left, right, store", CASES, ids=[f"{a}-{b}-state_{s}"
                                                          for a, b, s in CASES])
@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_each_step_then_recover(make_backend: BackendFactory, tmp_path: Path,
                                           left: str, right: str, store: str, step: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    state_url = fresh_state_url(store, tmp_path)
    pair = make_pair(make_backend, tmp_path, left, right, batch_size=500,
                     extra=lambda cfg: cfg.update(state=state_url))
    seed_groups(pair)
    pair.erp.insert("Customers", [erp_customer(i) for i in range(5)])
    with pair.link() as link:
        link.start_maps()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    tests_dir = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, str(script), str(pair.config), step],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={"PYTHONPATH": tests_dir, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left_behind = prepared(pair)
    # The last-resource commit: the left branch is prepared, the right one commits in one
    # phase with the decision row, then the left one commits. The right branch is never
    # prepared; the left one is until its commit.
    assert sorted(x[-1] for x in left_behind) == ([] if step == "after_first_commit"
                                                  else ["l"])
    committed = step in ("after_decision", "after_first_commit")
    # the killed coordinator's decision, where it made one, is the right side's row alone
    xid = None
    if committed:
        [(xid, outcome)] = decision_rows(pair)
        assert outcome == "commit"
    else:
        assert decision_rows(pair) == []

    capsys.readouterr()
    assert main(["-c", str(pair.config), "recover", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = "committed" if committed else "rolled back"
    assert [a["action"] for a in report["actions"]] == [expected] * len(left_behind)
    assert prepared(pair) == []  # nothing left in pg_prepared_xacts / XA RECOVER
    # the decision row went into the state store (then deleted); a rolled-back branch
    # leaves an abort row, so that its right side's commit can never land after
    assert report["imported"] == ([xid] if committed else [])
    after = decision_rows(pair)
    if committed:
        assert after == []
    else:
        assert [o for _, o in after] == ["abort"]
        assert after[0][0] == left_behind[0][:-2]

    erp, crm = pair.customers(), pair.accounts()
    assert (("usmf", "C-0801") in erp) == committed
    assert (("usmf", "C-0801") in crm) == committed  # the twin follows the same decision
    changed = crm[("usmf", "C-0001")]["name"] == "Changed by the killed transaction"
    assert changed == committed
    assert (erp[("usmf", "C-0001")]["NAME"] == "Changed by the killed transaction") == committed
    with pair.link() as link:
        assert all(v.ok for v in link.verify())
        state = sa.create_engine(state_url)
        with state.connect() as conn:
            pending = conn.execute(sa.text(
                "SELECT count(*) FROM coordinator_log WHERE completed_at IS NULL")).scalar()
            audited = conn.execute(sa.text(
                "SELECT count(*) FROM audit_log WHERE principal = 'crash-test'")).scalar()
        state.dispose()
        assert pending == 0
        assert (audited > 0) == committed  # the audit row is logged with the decision


def test_a_state_store_away_at_the_commit_loses_no_decision_and_no_audit_row(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    """The PostgreSQL state store goes away as the transaction commits (through a fault
    proxy): the last resource's decision row makes the commit durable without it, so the
    transaction commits on both sides; its decision and audit rows wait (the background
    drain fails and keeps them) and reach the store once it answers again, after which the
    decision row is deleted."""
    state_url = fresh_state_url("postgresql", tmp_path)
    with FaultProxy(5432) as proxy:
        pair = make_pair(make_backend, tmp_path, "postgresql", "mariadb", batch_size=500,
                         extra=lambda cfg: cfg.update(state=proxy.url(state_url)))
        seed_groups(pair)
        with pair.link() as link:
            link.start_maps()

            def hook(step: str) -> None:
                if step == "after_first_prepare":
                    proxy.set_mode(Mode.REFUSE)

            row = erp_customer(802)
            with link.transaction(principal="lost-store", hook=hook) as tx:
                tx.create("erp", "Customers", row)
            assert prepared(pair) == []
            key = (row["dataAreaId"], row["ACCOUNT"])
            assert key in pair.customers()
            assert key in pair.accounts()
            with pytest.raises(TransientConnectorError, match="state store cannot be reached"):
                link.state.flush_decided()
            [(xid, outcome)] = decision_rows(pair)
            assert outcome == "commit"

            proxy.set_mode(Mode.PASS)
            link.state.flush_decided()
            assert link.state.decision(xid) == "commit"
            assert decision_rows(pair) == []
    state = sa.create_engine(state_url, poolclass=sa.pool.NullPool)
    with state.connect() as conn:
        principals = set(conn.execute(sa.text("SELECT principal FROM audit_log")).scalars())
        pending = conn.execute(sa.text(
            "SELECT count(*) FROM coordinator_log WHERE completed_at IS NULL")).scalar()
    state.dispose()
    assert principals == {"lost-store"}
    assert pending == 0
