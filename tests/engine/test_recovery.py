"""Kill the process (SIGKILL, a real subprocess) at each step of the commit protocol; after
recovery both sides agree with each other and with the logged decision, and no prepared
transaction is left behind."""

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
    # The coordinator has both branches' prepares (and later both commits) in flight at
    # once, and confirms the left one first: at "after_first_prepare" the left branch is
    # prepared and the right one may be too; at "after_first_commit" the left branch is
    # committed and the right one may still be prepared.
    branch_sides = sorted(x[-1] for x in left_behind)
    if step == "after_first_commit":
        assert branch_sides in ([], ["r"])
    elif step == "after_first_prepare":
        assert branch_sides in (["l"], ["l", "r"])
    else:
        assert branch_sides == ["l", "r"]

    capsys.readouterr()
    assert main(["-c", str(pair.config), "recover", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    committed = step in ("after_decision", "after_first_commit")
    expected = "committed" if committed else "rolled back"
    assert [a["action"] for a in report["actions"]] == [expected] * len(left_behind)
    assert prepared(pair) == []  # nothing left in pg_prepared_xacts / XA RECOVER

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


def test_a_decision_the_state_store_cannot_take_leaves_both_sides_as_they_were(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    """The PostgreSQL state store goes away between the prepares and the decision (through a
    fault proxy): the transaction fails as transient (the caller may retry), both branches
    are rolled back, no decision and no audit row is written, and the next transaction
    commits once the store answers again."""
    state_url = fresh_state_url("postgresql", tmp_path)
    with FaultProxy(5432) as proxy:
        pair = make_pair(make_backend, tmp_path, "postgresql", "mariadb", batch_size=500,
                         extra=lambda cfg: cfg.update(state=proxy.url(state_url)))
        seed_groups(pair)
        with pair.link() as link:
            link.start_maps()

            def hook(step: str) -> None:
                if step == "after_both_prepares":
                    proxy.set_mode(Mode.REFUSE)

            with (pytest.raises(TransientConnectorError, match="state store cannot be reached"),
                  link.transaction(principal="lost-store", hook=hook) as tx):
                tx.create("erp", "Customers", erp_customer(802))
            assert prepared(pair) == []
            assert ("usmf", "C-0802") not in pair.customers()
            assert ("usmf", "C-0802") not in pair.accounts()

            proxy.set_mode(Mode.PASS)
            with link.transaction(principal="store-back") as tx:
                tx.create("erp", "Customers", erp_customer(803))
            assert ("usmf", "C-0803") in pair.accounts()
    state = sa.create_engine(state_url, poolclass=sa.pool.NullPool)
    with state.connect() as conn:
        principals = set(conn.execute(sa.text("SELECT principal FROM audit_log")).scalars())
    state.dispose()
    assert principals == {"store-back"}
