"""Faults the engine must survive, injected into the memory connector (its fault injection:
``fail_next``, ``fail_when``) on the connectors the link itself uses: a branch that cannot
prepare, a COMMIT lost after the decision, a row the database rejects. The real databases'
faults (lost connections, deadlocks, killed processes) are tested against them through
fault proxies and real processes; these pin down the engine's part alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from dualwrite.connectors.memory import MemoryConnector
from dualwrite.errors import ConstraintViolation, TransientConnectorError
from dualwrite.model.maps import Side

from conftest import BackendFactory
from sync_fixtures import Pair, erp_customer, make_pair, seed_groups


@pytest.fixture
def pair(make_backend: BackendFactory, tmp_path: Path) -> Pair:
    p = make_pair(make_backend, tmp_path, "memory", "memory", batch_size=10)
    seed_groups(p)
    p.erp.insert("Customers", [erp_customer(i) for i in range(6)])
    with p.link() as link:
        link.start_maps()
    return p


def _memory(connector: object) -> MemoryConnector:
    assert isinstance(connector, MemoryConnector)
    return connector


def test_a_branch_that_cannot_prepare_leaves_both_sides_as_they_were(pair: Pair) -> None:
    before = (pair.customers(), pair.accounts())
    with pair.link() as link:
        crm = _memory(link.connectors[Side.RIGHT])
        crm.fail_next("prepare", None, TransientConnectorError("connection lost",
                                                               environment="crm"))
        with pytest.raises(TransientConnectorError, match="connection lost"), \
                link.transaction() as tx:
            tx.update("erp", "Customers", {"dataAreaId": "usmf", "ACCOUNT": "C-0001"},
                      {"NAME": "never stays"})
        assert (pair.customers(), pair.accounts()) == before
        assert crm.recover("dw-") == [] and _memory(link.connectors[Side.LEFT]).recover(
            "dw-") == []  # no branch left prepared on either side
        # the fault fired once: the next transaction goes through
        with link.transaction() as tx:
            tx.update("erp", "Customers", {"dataAreaId": "usmf", "ACCOUNT": "C-0001"},
                      {"NAME": "stays"})
        assert pair.accounts()[("usmf", "C-0001")]["name"] == "stays"


def test_a_commit_lost_after_the_decision_is_finished_from_the_prepared_branch(
        pair: Pair) -> None:
    with pair.link() as link:
        crm = _memory(link.connectors[Side.RIGHT])
        lost = TransientConnectorError("connection lost", environment="crm")
        crm.fail_next("commit", None, lost)
        with link.transaction() as tx:  # committed: the decision was logged before
            tx.update("erp", "Customers", {"dataAreaId": "usmf", "ACCOUNT": "C-0003"},
                      {"NAME": "on both sides"})
        assert lost.__traceback__ is not None  # the CRM branch's COMMIT did fail
        assert pair.customers()[("usmf", "C-0003")]["NAME"] == "on both sides"
        assert pair.accounts()[("usmf", "C-0003")]["name"] == "on both sides"
        assert crm.recover("dw-") == []
        assert link.state.incomplete_decisions() == []
        assert all(v.ok for v in link.verify())


def test_a_row_the_database_rejects_goes_to_the_inbox_and_only_that_row(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    p = make_pair(make_backend, tmp_path, "memory", "memory", batch_size=10)
    seed_groups(p)
    p.erp.insert("Customers", [erp_customer(i) for i in range(25)])
    with p.link() as link:
        crm = _memory(link.connectors[Side.RIGHT])
        crm.fail_when(lambda table, row: "name refused by a trigger" if (
            table == "accounts" and row.get("name") == "Customer 7") else None)
        link.sync_initial(["groups", "customers"])
        [entry] = link.state.errors("customers")
        assert "name refused by a trigger" in entry.reason and "C-0007" in entry.key
        assert ("usmf", "C-0007") not in p.accounts()
        assert len(p.accounts()) == 24  # the chunk it was in went in without it


def test_fail_next_lets_the_given_number_of_operations_pass_first(
        make_backend: BackendFactory) -> None:
    b = make_backend("memory", "dualwrite_test_a")
    c = _memory(b.connector)
    md = sa.MetaData()
    sa.Table("t", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False))
    b.create(md)
    c.fail_next("insert", "t", ConstraintViolation("second insert", environment="a"), after=1)
    c.fail_next("insert", "t", ConstraintViolation("third insert", environment="a"))
    b.insert("t", [{"id": 1}])
    with pytest.raises(ConstraintViolation, match="second insert"):
        b.insert("t", [{"id": 2}])
    with pytest.raises(ConstraintViolation, match="third insert"):
        b.insert("t", [{"id": 3}])
    b.insert("t", [{"id": 4}])
    assert [r["id"] for r in b.rows("t", ["id"])] == [1, 4]
