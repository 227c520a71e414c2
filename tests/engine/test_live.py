"""Live sync: writes through dualwrite commit with their twins on both sides, or on neither."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from dualwrite.errors import ConfigError, LicenceError, RowError, RowNotFound
from dualwrite.model.values import canonical
from dualwrite.testing.backends import pair_id, pairs

from conftest import BackendFactory
from sync_fixtures import Pair, erp_customer, make_pair, seed_groups

LIVE_PAIRS = pairs(same="all")


@pytest.fixture(params=LIVE_PAIRS, ids=pair_id)
def pair(request: pytest.FixtureRequest, make_backend: BackendFactory, tmp_path: Path) -> Pair:
    left, right = request.param
    p = make_pair(make_backend, tmp_path, left, right, batch_size=500)
    seed_groups(p)
    p.erp.insert("Customers", [erp_customer(i) for i in range(10)])
    with p.link() as link:
        link.start_maps()  # runs initial sync first, then marks the maps running
    return p


def both(pair: Pair) -> tuple[dict[tuple[str, str], dict[str, object]],
                              dict[tuple[str, str], dict[str, object]]]:
    return pair.customers(), pair.accounts()


def test_create_update_delete_are_mirrored(pair: Pair) -> None:
    with pair.link() as link:
        gid = pair.group_ids()
        with link.transaction(principal="alice") as tx:
            row = tx.create("crm", "accounts", {
                "company": "usmf", "accountnumber": "C-1001", "name": "Contoso",
                "onhold": 2, "groupref": gid["G20"], "typecode": 3,
                "telephone1": "+1 555 1001", "created": dt.date(2026, 1, 2)})
            assert row["accountid"]  # the server default filled the GUID key
            tx.update("erp", "Customers", {"dataAreaId": "usmf", "ACCOUNT": "C-0001"},
                      {"NAME": "Renamed in ERP", "CREDIT": Decimal("5000")})
            tx.delete("crm", "accounts", {"company": "usmf", "accountnumber": "C-0003"})
        erp, crm = both(pair)
        new = erp[("usmf", "C-1001")]
        assert new["NAME"] == "Contoso" and new["STATUS"] == "All" and new["GROUPID"] == "G20"
        assert new["PHONE"] == "+1 555 1001" and new["PARTYTYPE"] == "Organization"
        assert crm[("usmf", "C-0001")]["name"] == "Renamed in ERP"
        assert canonical(crm[("usmf", "C-0001")]["creditlimit"]) == canonical(5000)
        assert ("usmf", "C-0003") not in erp and ("usmf", "C-0003") not in crm
        assert all(v.ok for v in link.verify())
        audit = link.state.audit()
        ops = {(a["environment"], a["table_name"], a["operation"], a["map"]) for a in audit}
        assert ("crm", "accounts", "create", None) in ops
        assert ("erp", "Customers", "create", "customers") in ops
        assert ("erp", "Customers", "delete", "customers") in ops
        assert {a["principal"] for a in audit} == {"alice"}


def test_a_failing_write_leaves_both_sides_as_they_were(pair: Pair) -> None:
    before = both(pair)
    with pair.link() as link:
        with pytest.raises(RowError) as info, link.transaction() as tx:
            tx.update("erp", "Customers", {"dataAreaId": "usmf", "ACCOUNT": "C-0001"},
                      {"NAME": "will not stay"})
            tx.create("erp", "Customers", erp_customer(500, GROUPID="G99"))
        err = info.value
        assert err.map == "customers" and err.field == "groupref.groupcode"
        assert err.value == "G99" and "does not resolve" in err.reason
        assert both(pair) == before
        with pytest.raises(RowError) as info2, link.transaction() as tx:
            tx.create("crm", "accounts", {"company": "usmf", "accountnumber": "C-2000",
                                          "name": "x" * 101, "typecode": 3})
        assert info2.value.field == "name" and "101 characters" in info2.value.reason
        with pytest.raises(RowError) as info3, link.transaction() as tx:
            tx.create("crm", "accounts", {"company": "usmf", "accountnumber": "C-2001",
                                          "name": "Dup", "typecode": 3})
            tx.create("crm", "accounts", {"company": "usmf", "accountnumber": "C-2001",
                                          "name": "Dup again", "typecode": 3})
        assert info3.value.table == "accounts"
        assert both(pair) == before
        with pytest.raises(RowNotFound), link.transaction() as tx:
            tx.delete("erp", "Customers", {"dataAreaId": "usmf", "ACCOUNT": "nope"})


def test_filters_decide_whether_twins_exist(pair: Pair) -> None:
    with pair.link() as link:
        with link.transaction() as tx:  # outside the left filter: not mirrored
            tx.create("erp", "Customers", erp_customer(700, PARTYTYPE="Person", dataAreaId="usmf"))
        assert ("usmf", "C-0700") not in pair.accounts()
        with link.transaction() as tx:  # moves into the filter: the twin is created
            tx.update("erp", "Customers", {"dataAreaId": "usmf", "ACCOUNT": "C-0700"},
                      {"PARTYTYPE": "Organization"})
        assert pair.accounts()[("usmf", "C-0700")]["name"] == "Customer 700"
        with link.transaction() as tx:  # moves out of it: the twin is deleted
            tx.update("erp", "Customers", {"dataAreaId": "usmf", "ACCOUNT": "C-0700"},
                      {"PARTYTYPE": "Person"})
        assert ("usmf", "C-0700") not in pair.accounts()
        with pytest.raises(RowError, match="key fields are not editable"), \
                link.transaction() as tx:
            tx.update("erp", "Customers", {"dataAreaId": "usmf", "ACCOUNT": "C-0001"},
                      {"ACCOUNT": "C-9999"})


def test_ten_thousand_rows_in_one_transaction(pair: Pair) -> None:
    n = 10_000
    with pair.link() as link, link.transaction() as tx:
        tx.create_many("erp", "Groups", [{"dataAreaId": "usmf", "GROUPID": f"B{i}"}
                                         for i in range(50)])
        tx.create_many("erp", "Customers", [
            erp_customer(10_000 + i, GROUPID=f"B{i % 50}", dataAreaId="usmf")
            for i in range(n - 50)])
    erp, crm = both(pair)
    new_keys = {("usmf", f"C-{10_000 + i:04d}") for i in range(n - 50)}
    assert new_keys <= set(erp) and new_keys <= set(crm)  # every row and its twin
    assert len(crm) == 10 + len(new_keys) and len(erp) == len(crm)
    assert {f"B{i}" for i in range(50)} <= set(pair.group_ids())  # groups mirrored too
    with pair.link() as link:
        assert all(v.ok for v in link.verify())


def test_business_rules_adjust_or_reject(pair: Pair) -> None:
    with pair.link() as link:
        @link.rules.before_write("erp", "Customers")
        def credit_cap(ctx):  # type: ignore[no-untyped-def]
            credit = ctx.values.get("CREDIT")
            if credit is not None and Decimal(credit) > 1_000_000:
                raise RowError("credit limit over 1,000,000", field="CREDIT", value=credit)
            if "NAME" in ctx.values:
                ctx.values["NAME"] = ctx.values["NAME"].strip()

        before = both(pair)
        with pytest.raises(RowError, match=r"credit_cap.*over 1,000,000"), \
                link.transaction() as tx:
            tx.update("erp", "Customers", {"dataAreaId": "usmf", "ACCOUNT": "C-0001"},
                      {"CREDIT": Decimal("2000000")})
        assert both(pair) == before
        with link.transaction() as tx:
            tx.update("erp", "Customers", {"dataAreaId": "usmf", "ACCOUNT": "C-0001"},
                      {"NAME": "  Trimmed  "})
        assert pair.accounts()[("usmf", "C-0001")]["name"] == "Trimmed"


def test_restricted_maps_need_a_licence(make_backend: BackendFactory, tmp_path: Path) -> None:
    p = make_pair(make_backend, tmp_path, "sqlite", "sqlite")
    maps = tmp_path / "maps" / "customers.yaml"
    maps.write_text(maps.read_text().replace("master: left", "master: left\nrestricted: true"))
    seed_groups(p)
    with p.link() as link:
        link.start_maps()
        before = both(p)
        with pytest.raises(LicenceError, match="no licence for restricted table 'Customers'"), \
                link.transaction(principal="bob") as tx:
            tx.create("erp", "Customers", erp_customer(1))
        assert both(p) == before
        link.state.grant("carol", [], ["Customers", "accounts"])
        with link.transaction(principal="carol") as tx:
            tx.create("erp", "Customers", erp_customer(1))
        assert ("usmf", "C-0001") in p.accounts()


def test_sqlite_in_wal_mode_is_refused(make_backend: BackendFactory, tmp_path: Path) -> None:
    p = make_pair(make_backend, tmp_path, "sqlite", "sqlite")
    p.crm.sql("PRAGMA journal_mode=WAL")
    with p.link() as link, pytest.raises(ConfigError, match="WAL mode"), \
            link.transaction() as tx:
        tx.create("erp", "Groups", {"dataAreaId": "usmf", "GROUPID": "G1"})
