"""Lookups resolve within the row's own company (issue 16, section 2).

Customer groups "G10" and "G20" exist in both usmf and demf. The CRM's group ids are chosen so
that usmf's sort first: a lookup by group code alone finds usmf's group for a demf customer.
Each path must link a row to its own company's group: initial sync and plan, live
transactions (API and OData `$batch`), capture, both directions, and verify must report a row
linked to the other company's group.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from capture_fixtures import drain
from dualwrite.api.server import create_server_app
from dualwrite.cli import main
from dualwrite.connectors import connect
from dualwrite.connectors.memory import MemoryConnector
from dualwrite.engine.lookups import LookupResolver, RelatedKey
from dualwrite.engine.security import create_token
from dualwrite.errors import RowError
from dualwrite.model.binding import LookupTarget as BoundTarget
from dualwrite.model.maps import Side
from dualwrite.model.schema import Column, ForeignKey, Kind, TableSchema
from dualwrite.testing.backends import pair_id, pairs

from conftest import BackendFactory
from sync_fixtures import Pair, erp_customer, make_pair

PAIRS = pairs(needs=("sql",))

#: (company, code) -> the CRM group's id; usmf's ids sort before demf's
GROUP = {("usmf", "G10"): "a-usmf-g10", ("usmf", "G20"): "a-usmf-g20",
         ("demf", "G10"): "b-demf-g10", ("demf", "G20"): "b-demf-g20"}


def seed_shared_codes(pair: Pair) -> None:
    """The same two group codes in both companies, already alike on both sides."""
    pair.erp.insert("Groups", [
        {"dataAreaId": c, "GROUPID": g, "DESCRIPTION": f"{g} of {c}"} for c, g in GROUP])
    pair.crm.insert("groups", [
        {"groupid": gid, "company": c, "groupcode": g, "description": f"{g} of {c}"}
        for (c, g), gid in GROUP.items()])


def customer(i: int, company: str, group: str, **over: Any) -> dict[str, Any]:
    return erp_customer(i, dataAreaId=company, GROUPID=group, **over)


def account(i: int, company: str, group_id: str | None, **over: Any) -> dict[str, Any]:
    row = {"company": company, "accountnumber": f"C-{i:04d}", "name": f"Customer {i}",
           "creditlimit": Decimal(1000 + i) / 4, "onhold": i % 3, "groupref": group_id,
           "created": dt.date(2024, 1 + i % 12, 1 + i % 28), "typecode": 3}
    row.update(over)
    return row


def links(pair: Pair) -> dict[tuple[str, str], Any]:
    """(company, account) -> the CRM account's group id."""
    return {k: r["groupref"] for k, r in pair.accounts().items()}


def groups_of(pair: Pair) -> dict[tuple[str, str], Any]:
    """(company, account) -> the ERP customer's group code."""
    return {k: r["GROUPID"] for k, r in pair.customers().items()}


@pytest.fixture(params=PAIRS, ids=pair_id)
def pair(request: pytest.FixtureRequest, make_backend: BackendFactory, tmp_path: Path) -> Pair:
    left, right = request.param
    p = make_pair(make_backend, tmp_path, left, right, batch_size=50)
    seed_shared_codes(p)
    return p


def test_initial_sync_links_rows_to_their_own_companys_group(pair: Pair) -> None:
    pair.erp.insert("Groups", [{"dataAreaId": "usmf", "GROUPID": "G50"}])
    pair.crm.insert("groups", [{"groupid": "a-usmf-g50", "company": "usmf", "groupcode": "G50"}])
    pair.erp.insert("Customers", [
        customer(i, "usmf" if i % 2 else "demf", "G10" if i % 4 < 2 else "G20")
        for i in range(1, 121)] + [customer(150, "demf", "G50")])  # G50 is usmf's only
    pair.crm.insert("accounts", [
        account(200, "demf", GROUP[("demf", "G20")]),  # only in the CRM: created in the ERP
        account(201, "usmf", GROUP[("usmf", "G10")]),
        # linked to usmf's G10 although the account is in demf: master left repairs it
        account(4, "demf", GROUP[("usmf", "G10")], name="Customer 4"),
    ])
    with pair.link() as link:
        [plan] = link.plan(["customers"])
        assert plan.created == {"left": 2, "right": 119}
        assert plan.updated == {"left": 0, "right": 1}, plan.samples
        assert plan.errors == {"left": 0, "right": 1}
        [g, c] = link.sync_initial()
        assert g.unchanged == 5 and c.errors == {"left": 0, "right": 1}
        assert c.created == plan.created and c.updated == plan.updated
        [entry] = link.state.errors("customers")
        assert entry.key == ("demf", "C-0150") and "does not resolve" in entry.reason
        assert "groups.(company,groupcode)" in entry.reason and "'demf'" in entry.reason
        linked = links(pair)
        for i in range(1, 121):
            company = "usmf" if i % 2 else "demf"
            code = "G10" if i % 4 < 2 else "G20"
            assert linked[(company, f"C-{i:04d}")] == GROUP[(company, code)], (company, i)
        erp = groups_of(pair)
        assert erp[("demf", "C-0200")] == "G20" and erp[("usmf", "C-0201")] == "G10"
        [v] = link.verify(["customers"])
        assert [(d.kind, tuple(d.key)) for d in v.details] == [("missing-right",
                                                                ("demf", "C-0150"))]
        [again] = link.sync_initial(["customers"])
        assert again.unchanged == 122 and again.updated == {"left": 0, "right": 0}


def test_verify_reports_a_row_linked_to_the_other_companys_group(pair: Pair) -> None:
    pair.erp.insert("Customers", [customer(i, "demf", "G10") for i in range(2, 12, 2)])
    with pair.link() as link:
        link.sync_initial()
        assert all(v.ok for v in link.verify())
        # the same code, the other company's row: invisible to a lookup by code alone
        with pair.crm.connector.transaction() as tx:
            tx.update("accounts", ["company", "accountnumber"], ["groupref"],
                      [(("demf", "C-0004"), (GROUP[("usmf", "G10")],))])
        [v] = link.verify(["customers"])
        assert not v.ok and v.differences == 1, v.as_dict()
        [d] = v.details
        assert d.kind == "differs" and tuple(d.key) == ("demf", "C-0004")
        [f] = d.fields
        assert f["field"] == "GROUPID = groupref.groupcode"
        assert (f["left"], f["right"]) == ("G10 (company demf)", "G10 (company usmf)")


def test_live_transactions_resolve_within_the_company(pair: Pair) -> None:
    with pair.link() as link:
        link.start_maps()
        with link.transaction() as tx:
            tx.create_many("erp", "Customers", [customer(1000 + i, "demf", "G20")
                                                for i in range(300)])
            tx.create("crm", "accounts", account(2000, "demf", GROUP[("demf", "G10")]))
        linked = links(pair)
        assert {linked[("demf", f"C-{1000 + i:04d}")] for i in range(300)} == {
            GROUP[("demf", "G20")]}
        assert groups_of(pair)[("demf", "C-2000")] == "G10"

        # the CRM links a demf account to usmf's group: the ERP cannot hold that link
        before = (pair.customers(), pair.accounts())
        with pytest.raises(RowError) as info, link.transaction() as tx:
            tx.create("crm", "accounts", account(2001, "demf", GROUP[("usmf", "G10")]))
        assert info.value.map == "customers" and "usmf" in info.value.reason
        assert "demf" in info.value.reason
        assert (pair.customers(), pair.accounts()) == before
        assert all(v.ok for v in link.verify())


def test_capture_resolves_within_the_company_both_ways(pair: Pair) -> None:
    quote = "`" if pair.erp.kind == "mariadb" else '"'
    pair.erp.insert("Customers", [customer(2, "demf", "G10"), customer(3, "usmf", "G10")])
    with pair.link() as link:
        link.start_maps()
        cols = '"dataAreaId", "ACCOUNT", "NAME", "STATUS", "GROUPID", "PARTYTYPE"'
        pair.erp.app_sql(
            f'INSERT INTO "Customers" ({cols}) VALUES (:c, :a, :n, :s, :g, :p)'.replace(
                '"', quote),
            [{"c": "demf", "a": f"C-{i:04d}", "n": f"Captured {i}", "s": "No", "g": "G10",
              "p": "Organization"} for i in range(300, 340)])
        pair.crm.app_sql("UPDATE accounts SET groupref = :g WHERE company = 'demf' AND "
                         "accountnumber = 'C-0002'", {"g": GROUP[("demf", "G20")]})
        drain(link.applier())
        linked = links(pair)
        assert {linked[("demf", f"C-{i:04d}")] for i in range(300, 340)} == {
            GROUP[("demf", "G10")]}
        assert groups_of(pair)[("demf", "C-0002")] == "G20"
        assert linked[("usmf", "C-0003")] == GROUP[("usmf", "G10")]

        # a demf account linked to usmf's group cannot reach the ERP: it goes to the inbox
        pair.crm.app_sql(
            "INSERT INTO accounts (accountid, company, accountnumber, name, groupref, typecode)"
            " VALUES ('x-2001', 'demf', 'C-2001', 'Cross', :g, 3)", {"g": GROUP[("usmf", "G10")]})
        drain(link.applier())
        assert ("demf", "C-2001") not in pair.customers()
        [entry] = [e for e in link.state.errors("customers") if e.key == ("demf", "C-2001")]
        assert "usmf" in entry.reason and "demf" in entry.reason


@pytest.fixture
def served(make_backend: BackendFactory, tmp_path: Path
           ) -> Iterator[tuple[Pair, TestClient, dict[str, str]]]:
    pair = make_pair(make_backend, tmp_path, "postgresql", "mariadb", batch_size=50)
    seed_shared_codes(pair)
    with pair.link() as link:
        link.start_maps()
        token = create_token(link.state, "odata-user", role="writer")
        with TestClient(create_server_app(link)) as client:
            yield pair, client, {"Authorization": f"Bearer {token}"}


def test_odata_batch_resolves_within_the_company(
        served: tuple[Pair, TestClient, dict[str, str]]) -> None:
    pair, client, auth = served
    body = {"requests": [
        {"id": str(i), "atomicityGroup": "g", "method": "POST", "url": "Customers",
         "body": {"dataAreaId": "demf", "ACCOUNT": f"C-{i:04d}", "NAME": f"Batch {i}",
                  "GROUPID": "G10", "PARTYTYPE": "Organization"}} for i in (700, 701)]}
    r = client.post("/odata/erp/$batch", headers=auth, json=body)
    assert {x["status"] for x in r.json()["responses"]} == {201}, r.text
    linked = links(pair)
    assert linked[("demf", "C-0700")] == linked[("demf", "C-0701")] == GROUP[("demf", "G10")]


def test_a_lookup_can_name_the_related_tables_company_column(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    """No map for the groups: `groupref.(company,groupcode)` says where the company is."""
    pair = make_pair(make_backend, tmp_path, "postgresql", "mariadb", batch_size=50)
    (tmp_path / "maps" / "groups.yaml").unlink()
    customers = tmp_path / "maps" / "customers.yaml"
    customers.write_text(customers.read_text().replace("depends_on: [groups]\n", "").replace(
        "GROUPID = groupref.groupcode", "GROUPID = groupref.( company, groupcode )"))
    seed_shared_codes(pair)
    pair.erp.insert("Customers", [customer(i, "demf", "G20") for i in range(2, 42, 2)])
    pair.crm.insert("accounts", [account(100, "demf", GROUP[("demf", "G10")])])
    with pair.link() as link:
        assert [i for i in link.validate()[1] if i.is_error] == []
        [res] = link.start_maps()  # initial sync, then live
        assert res.created == {"left": 1, "right": 20}
        assert set(links(pair).values()) == {GROUP[("demf", "G20")], GROUP[("demf", "G10")]}
        assert groups_of(pair)[("demf", "C-0100")] == "G10"
        with link.transaction() as tx:
            tx.create("erp", "Customers", customer(102, "demf", "G10"))
        assert links(pair)[("demf", "C-0102")] == GROUP[("demf", "G10")]
        with pair.crm.connector.transaction() as tx:
            tx.update("accounts", ["company", "accountnumber"], ["groupref"],
                      [(("demf", "C-0002"), (GROUP[("usmf", "G20")],))])
        [v] = link.verify()
        [d] = v.details
        assert d.fields[0]["field"] == "GROUPID = groupref.( company, groupcode )"
        assert d.fields[0]["right"] == "G20 (company usmf)"


@pytest.mark.parametrize("kinds", pairs(needs=("server",)), ids=pair_id)
def test_resolving_within_the_company_is_one_query_per_chunk(
        make_backend: BackendFactory, tmp_path: Path, kinds: tuple[str, str]) -> None:
    pair = make_pair(make_backend, tmp_path, *kinds, batch_size=500)
    seed_shared_codes(pair)
    pair.erp.insert("Customers", [
        customer(i, "usmf" if i % 2 else "demf", "G10" if i % 3 else "G20")
        for i in range(400)])
    pair.crm.insert("accounts", [account(i, "demf", GROUP[("demf", "G10")])
                                 for i in range(1000, 1300)])
    with pair.link() as link:
        differ = link.differ("customers")
        entries = list(differ.entries(after=None, batch_size=1000))
        assert len(entries) == 700
        c = differ.classify(entries)
        assert len(c.creates[Side.RIGHT]) == 400 and len(c.creates[Side.LEFT]) == 300
        assert not c.failures
        # the CRM's 300 group ids -> (company, code): one query; the ERP's 400 rows'
        # (company, code) -> id: one query, not one per row
        assert differ.resolver.queries == 2
        linked = {row[differ.insert_columns[Side.RIGHT].index("groupref")]
                  for row in (x.values for x in c.creates[Side.RIGHT])}
        assert linked == set(GROUP.values())
        differ.classify(entries)
        assert differ.resolver.queries == 2  # the second chunk alike: all cached


def test_validate_warns_about_a_lookup_key_that_is_not_unique(
        make_backend: BackendFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = make_pair(make_backend, tmp_path, "sqlite", "sqlite")
    # groups unmapped: nothing says that its rows are per company, and groupcode alone is
    # not unique in it (only per company)
    (tmp_path / "maps" / "groups.yaml").unlink()
    customers = tmp_path / "maps" / "customers.yaml"
    customers.write_text(customers.read_text().replace("depends_on: [groups]\n", ""))
    assert main(["-c", str(pair.config), "validate", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["maps"] == ["customers"]
    [warning] = out["issues"]
    assert warning["code"] == "DW130" and warning["severity"] == "warning"
    assert "'groupcode' is not unique in 'groups'" in warning["message"]
    assert "groupref.(company,groupcode)" in warning["hint"]
    assert main(["-c", str(pair.config), "validate"]) == 0
    text = capsys.readouterr().out
    assert "DW130 warning: [customers]" in text and "1 warning(s)" in text
    with pair.link() as link:
        assert [b.name for b in link.bound_maps()] == ["customers"]  # runs anyway


def test_validate_refuses_a_key_column_reached_through_a_lookup(
        make_backend: BackendFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = make_pair(make_backend, tmp_path, "postgresql", "mariadb")
    (tmp_path / "maps" / "groups_by_lookup.yaml").write_text(
        "name: customers_by_group\nleft: Customers\nright: accounts\n"
        "key: {left: [GROUPID, ACCOUNT], right: [groupref.groupcode, accountnumber]}\n"
        "company: {left: dataAreaId, right: company}\n"
        "fields:\n  - GROUPID = groupref.groupcode\n  - ACCOUNT = accountnumber\n"
        "  - NAME = name\n  - PARTYTYPE << none: {default: Organization}\n")
    assert main(["-c", str(pair.config), "validate", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    [error] = [i for i in out["issues"] if i["map"] == "customers_by_group"]
    assert error["code"] == "DW131" and error["severity"] == "error"
    assert error["line"] == 4 and "groupref.groupcode" in error["message"]
    assert "`- GROUPID = groupcode`" in error["hint"]
    assert "`- GROUPID > groupref.groupcode`" in error["hint"]


def test_resolver_within_the_company_through_chains_and_polymorphic_candidates() -> None:
    """The resolver on its own (the memory fake): a chained lookup whose last table holds
    (company, name), and a polymorphic one whose second candidate has no company."""
    crm = connect("crm", "memory://lookups-unit")
    try:
        crm.create_table(TableSchema("hierarchies", {c: Column(c, Kind.STRING) for c in (
            "hid", "company", "name")}, ("hid",), [], [("company", "name")]))
        crm.create_table(TableSchema("categories", {c: Column(c, Kind.STRING) for c in (
            "catid", "hierarchyref")}, ("catid",),
            [ForeignKey(("hierarchyref",), "hierarchies", ("hid",))]))
        crm.create_table(TableSchema("contacts", {c: Column(c, Kind.STRING) for c in (
            "cid", "number")}, ("cid",), [], [("number",)]))
        with crm.transaction() as tx:
            tx.insert("hierarchies", ["hid", "company", "name"],
                      [("h-us", "usmf", "H1"), ("h-de", "demf", "H1")])
            tx.insert("categories", ["catid", "hierarchyref"],
                      [("c-us", "h-us"), ("c-de", "h-de")])
            tx.insert("contacts", ["cid", "number"], [("k-1", "H1"), ("k-2", "K2")])
        chain = BoundTarget("categories", "hierarchyref", "catid", Kind.STRING,
                            BoundTarget("hierarchies", "name", "hid", Kind.STRING,
                                        company="company"))
        resolver = LookupResolver({Side.RIGHT: crm})
        ids = resolver.to_ids(Side.RIGHT, (chain,), [("demf", "H1"), ("usmf", "H1"),
                                                     ("frrt", "H1")], scoped=True)
        assert ids == {("demf", "H1"): "c-de", ("usmf", "H1"): "c-us"}
        assert resolver.queries == 2  # one per table of the chain, for all three keys
        keys = resolver.to_keys(Side.RIGHT, (chain,), ["c-de", "c-us"])
        assert keys == {"c-de": RelatedKey("demf", "H1"), "c-us": RelatedKey("usmf", "H1")}

        poly = (BoundTarget("hierarchies", "name", "hid", Kind.STRING, company="company"),
                BoundTarget("contacts", "number", "cid", Kind.STRING))
        ids = resolver.to_ids(Side.RIGHT, poly, [("frrt", "H1"), ("demf", "K2"),
                                                 ("demf", "H1")], scoped=True)
        # frrt has no H1 hierarchy: the contact without a company answers
        assert ids == {("frrt", "H1"): "k-1", ("demf", "K2"): "k-2", ("demf", "H1"): "h-de"}
        keys = resolver.to_keys(Side.RIGHT, poly, ["h-us", "k-2"])
        assert keys == {"h-us": RelatedKey("usmf", "H1"),
                        "k-2": RelatedKey(None, "K2", scoped=False)}
    finally:
        crm.close()
        MemoryConnector.reset("memory://lookups-unit")
