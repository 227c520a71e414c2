"""Initial sync, plan and verify end to end, on real database pairs and the memory fake."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from dualwrite.errors import LinkError, TransientConnectorError
from dualwrite.model.values import canonical
from dualwrite.testing.backends import pair_id

from conftest import PAIRS, BackendFactory
from sync_fixtures import Pair, crm_account, erp_customer, make_pair, seed_groups


@pytest.fixture(params=PAIRS, ids=pair_id)
def pair(request: pytest.FixtureRequest, make_backend: BackendFactory, tmp_path: Path) -> Pair:
    left, right = request.param
    return make_pair(make_backend, tmp_path, left, right)


def seed_customers(pair: Pair) -> None:
    """ERP 0..59 (+ Person 90..94), CRM 20..79 (+ one outside the CRM filter).

    20..39 equal; 40..49 differ in name; 50..54 differ in credit (one-way to CRM);
    55..59 differ in phone (one-way to ERP)."""
    gid = pair.group_ids()
    erp = []
    for i in range(60):
        phone = None if 55 <= i <= 59 else f"+1 555 {i:04d}"
        erp.append(erp_customer(i, PHONE=phone))
    erp += [erp_customer(i, PARTYTYPE="Person") for i in range(90, 95)]
    pair.erp.insert("Customers", erp)
    crm = []
    for i in range(20, 80):
        over: dict[str, object] = {}
        if 40 <= i <= 49:
            over["name"] = f"CRM name {i}"
        if 50 <= i <= 54:
            over["creditlimit"] = Decimal("1.00")
        crm.append(crm_account(i, gid, **over))
    crm.append(crm_account(99, gid, typecode=2))
    pair.crm.insert("accounts", crm)


def test_initial_sync_plan_sync_verify(pair: Pair) -> None:
    seed_groups(pair)
    with pair.link() as link:
        [g] = link.sync_initial(["groups"])
        assert (g.created, g.updated) == ({"left": 1, "right": 2}, {"left": 0, "right": 1})
        seed_customers(pair)
        before_erp, before_crm = pair.customers(), pair.accounts()

        [plan] = link.plan(["customers"])
        assert plan.created == {"left": 20, "right": 20}
        assert plan.updated == {"left": 5, "right": 15}
        assert plan.unchanged == 20 and plan.errors == {"left": 0, "right": 0}
        assert pair.customers() == before_erp and pair.accounts() == before_crm  # wrote nothing

        [res] = link.sync_initial(["customers"])
        assert res.created == plan.created and res.updated == plan.updated
        assert res.unchanged == plan.unchanged

        verified = link.verify()
        assert all(v.ok for v in verified), [d.as_dict() for v in verified for d in v.details]

        erp, crm, gid = pair.customers(), pair.accounts(), pair.group_ids()
        # ERP-only row created in the CRM: value map, lookup to a GUID, default, company
        c1 = crm[("usmf", "C-0001")]
        assert c1["onhold"] == 1 and c1["typecode"] == 3 and c1["groupref"] == gid["G10"]
        assert c1["name"] == "Customer 1" and canonical(c1["creditlimit"]) == canonical(
            Decimal(1001) / 4)
        # CRM-only row created in the ERP: reverse value map, lookup back to the code, defaults
        e60 = erp[("demf", "C-0060")]
        assert e60["STATUS"] == "No" and e60["GROUPID"] == "G30"
        assert e60["LANGUAGEID"] == "en-us" and e60["PARTYTYPE"] == "Organization"
        assert e60["PHONE"] == "+1 555 0060" and e60["CREDIT"] is None  # CREDIT only flows >
        # master left: the ERP's name wins; one-way fields flow their own way only
        assert crm[("usmf", "C-0045")]["name"] == "Customer 45"
        assert canonical(crm[("demf", "C-0052")]["creditlimit"]) == canonical(
            Decimal(1052) / 4)
        assert erp[("usmf", "C-0057")]["PHONE"] == "+1 555 0057"
        # filters: Person customers and the CRM row outside its filter are not synced
        assert ("demf", "C-0090") not in crm and ("usmf", "C-0099") not in erp
        assert len(crm) == 80 + 1 and len(erp) == 80 + 5

        [again] = link.sync_initial(["customers"])
        assert again.created == {"left": 0, "right": 0}
        assert again.updated == {"left": 0, "right": 0} and again.unchanged == 80


def test_verify_names_each_differing_key_and_field(pair: Pair) -> None:
    seed_groups(pair)
    with pair.link() as link:
        link.sync_initial(["groups"])
        seed_customers(pair)
        link.sync_initial()
        with pair.crm.connector.transaction() as tx:
            tx.update("accounts", ["company", "accountnumber"], ["name", "onhold"],
                      [(("usmf", "C-0021"), ("Changed in CRM", 2))])
            tx.delete("accounts", ["company", "accountnumber"], [("demf", "C-0022")])
        [v] = link.verify(["customers"])
        assert not v.ok and v.differences == 2
        by_key = {tuple(d.key): d for d in v.details}
        d21 = by_key[("usmf", "C-0021")]
        assert d21.kind == "differs"
        assert {f["field"] for f in d21.fields} == {"NAME = name", "STATUS >< onhold"}
        name = next(f for f in d21.fields if f["field"] == "NAME = name")
        assert (name["left"], name["right"]) == ("Customer 21", "Changed in CRM")
        assert by_key[("demf", "C-0022")].kind == "missing-right"


def test_master_right_takes_the_crm_values(pair: Pair) -> None:
    seed_groups(pair)
    with pair.link() as link:
        link.sync_initial(["groups"])
        seed_customers(pair)
        [res] = link.sync_initial(["customers"], master="right")
        # names 40..49 now flow to the ERP; credit (one-way >) still flows to the CRM
        assert res.updated == {"left": 15, "right": 5}
        assert pair.customers()[("demf", "C-0044")]["NAME"] == "CRM name 44"
        assert all(v.ok for v in link.verify())


def test_rows_that_cannot_be_written_go_to_the_inbox_and_the_rest_continue(pair: Pair) -> None:
    seed_groups(pair)
    with pair.link() as link:
        link.sync_initial(["groups"])
        pair.erp.insert("Customers", [erp_customer(i) for i in range(30)] + [
            erp_customer(100, GROUPID="G99"),  # lookup that does not resolve in the CRM
            erp_customer(101, NAME=None),  # the CRM requires a name: NOT NULL constraint
        ])
        [res] = link.sync_initial(["customers"])
        assert res.created == {"left": 0, "right": 30}
        assert res.errors == {"left": 0, "right": 2}
        inbox = {e.key: e for e in link.state.errors("customers")}
        assert set(inbox) == {("demf", "C-0100"), ("usmf", "C-0101")}
        lookup = inbox[("demf", "C-0100")]
        assert lookup.side == "right" and lookup.operation == "create"
        assert "G99" in lookup.reason and "does not resolve" in lookup.reason
        assert "customers" in lookup.reason and "groupref" in lookup.reason
        constraint = inbox[("usmf", "C-0101")]
        assert "name" in constraint.reason.lower() and constraint.payload is not None
        [v] = link.verify(["customers"])
        assert v.differences == 2

        # fix the source rows; the rerun syncs them and closes their inbox entries
        with pair.erp.connector.transaction() as tx:
            tx.update("Customers", ["dataAreaId", "ACCOUNT"], ["GROUPID"],
                      [(("demf", "C-0100"), ("G30",))])  # a group of its own company
            tx.update("Customers", ["dataAreaId", "ACCOUNT"], ["NAME"],
                      [(("usmf", "C-0101"), ("Now named",))])
        [res2] = link.sync_initial(["customers"])
        assert res2.created == {"left": 0, "right": 2} and res2.errors["right"] == 0
        assert link.state.errors("customers") == []
        assert all(v.ok for v in link.verify())


def test_sync_resumes_from_its_checkpoint_after_a_failure(make_backend: BackendFactory,
                                                          tmp_path: Path) -> None:
    pair = make_pair(make_backend, tmp_path, "memory", "memory", batch_size=10)
    seed_groups(pair)
    with pair.link() as link:
        link.sync_initial(["groups"])
        pair.erp.insert("Customers", [erp_customer(i) for i in range(100)])
        from dualwrite.connectors.memory import MemoryConnector
        from dualwrite.model.maps import Side

        crm = link.connectors[Side.RIGHT]  # the link's own connector to the CRM

        assert isinstance(crm, MemoryConnector)
        # the 4th chunk's commit fails for good (after all retries)
        for i in range(5):
            crm.fail_next("commit", None, TransientConnectorError("connection lost"),
                          after=3 if i == 0 else 0)
        with pytest.raises(TransientConnectorError):
            link.sync_initial(["customers"])
        position, stats = link.state.get_checkpoint("customers", "initial")
        assert position is not None and stats["created"]["right"] == 30
        assert len(pair.accounts()) == 30

        [res] = link.sync_initial(["customers"])
        assert res.resumed_from == position
        assert res.created == {"left": 0, "right": 100}  # totals include the first run's
        assert len(pair.accounts()) == 100
        assert link.state.get_checkpoint("customers", "initial") == (None, {})
        assert all(v.ok for v in link.verify())


def test_an_environment_belongs_to_one_link_only(make_backend: BackendFactory,
                                                 tmp_path: Path) -> None:
    pair = make_pair(make_backend, tmp_path / "one", "sqlite", "sqlite") if (
        (tmp_path / "one").mkdir() or True) else None
    assert pair is not None
    with pair.link() as link:
        first_id = link.ensure_linked()
        assert link.ensure_linked() == first_id  # idempotent
        assert pair.erp.connector.get_link() is not None
    # a second link (another config, another state store) using the same ERP
    other_dir = tmp_path / "two"
    other_dir.mkdir()
    other_crm = make_backend("sqlite", "other_crm")
    cfg = pair.config.read_text().replace(pair.crm.url, other_crm.url).replace(
        "left: erp", "left: erp\n  name: erp-to-other").replace(
        str(tmp_path / "one" / "state.db"), str(other_dir / "state.db"))
    (other_dir / "dualwrite.yaml").write_text(cfg)
    (other_dir / "maps").symlink_to(tmp_path / "one" / "maps")
    from dualwrite.engine.link import Link

    with Link.open(other_dir / "dualwrite.yaml") as other:
        with pytest.raises(LinkError, match=r"already belongs to link 'erp<->crm'"):
            other.ensure_linked()
        assert other_crm.connector.get_link() is None  # refused as a whole
    with pair.link() as link:
        assert set(link.unlink()) == {"erp", "crm"}
    with Link.open(other_dir / "dualwrite.yaml") as other:
        other.ensure_linked()
        rec = pair.erp.connector.get_link()
        assert rec is not None and rec.link_name == "erp-to-other"
