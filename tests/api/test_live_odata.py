"""The OData service over a real link: writes are dual-written atomically, reads hit the
databases, tokens and licences guard it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from starlette.testclient import TestClient

from dualwrite.api import odata as odata_module
from dualwrite.api.server import create_server_app
from dualwrite.engine.security import create_token
from dualwrite.testing.backends import pair_id, pairs

from conftest import BackendFactory, shared_path
from sync_fixtures import Pair, erp_customer, make_pair, seed_groups

PAIRS = pairs(needs=("sql",), same="none")


@pytest.fixture(params=PAIRS, ids=pair_id)
def served(request: pytest.FixtureRequest, make_backend: BackendFactory,
           tmp_path: Path) -> Iterator[tuple[Pair, TestClient, dict[str, str]]]:
    left, right = request.param
    pair = make_pair(make_backend, tmp_path, left, right, batch_size=500)
    seed_groups(pair)
    pair.erp.insert("Customers", [erp_customer(i) for i in range(6)])
    with pair.link() as link:
        link.start_maps()
        token = create_token(link.state, "odata-user", role="writer", licences=["accounts"])
        with TestClient(create_server_app(link)) as client:
            yield pair, client, {"Authorization": f"Bearer {token}"}


def test_metadata_of_real_schemas_validates(served: tuple[Pair, TestClient, dict[str, str]]
                                            ) -> None:
    _, client, auth = served
    xsd = etree.XMLSchema(etree.parse(str(shared_path("data", "odata-csdl-schemas",
                                                      "edmx.xsd"))))
    for env, sets in (("erp", {"Customers", "Groups"}), ("crm", {"accounts", "groups"})):
        r = client.get(f"/odata/{env}/$metadata", headers=auth)
        assert r.status_code == 200, r.text
        doc = etree.fromstring(r.content)
        xsd.assertValid(doc)
        names = {e.get("Name") for e in doc.iter("{*}EntitySet")}
        assert sets <= names


def test_post_patch_delete_are_dual_written(served: tuple[Pair, TestClient, dict[str, str]]
                                            ) -> None:
    pair, client, auth = served
    r = client.post("/odata/crm/accounts", headers=auth, json={
        "company": "usmf", "accountnumber": "C-5000", "name": "Posted", "typecode": 3,
        "onhold": 1})
    assert r.status_code == 201, r.text
    assert r.json()["accountid"] and "@odata.etag" in r.json()
    assert pair.customers()[("usmf", "C-5000")]["STATUS"] == "Invoice"

    url = "/odata/erp/Customers(dataAreaId='usmf',ACCOUNT='C-0001')"
    etag = client.get(url, headers=auth).headers["ETag"]
    stale = client.patch(url, headers={**auth, "If-Match": 'W/"stale"'}, json={"NAME": "x"})
    assert stale.status_code == 412
    ok = client.patch(url, headers={**auth, "If-Match": etag,
                                    "Prefer": "return=representation"},
                      json={"NAME": "Patched over OData"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["NAME"] == "Patched over OData"
    assert pair.accounts()[("usmf", "C-0001")]["name"] == "Patched over OData"

    gone = client.delete("/odata/crm/accounts(company='usmf',accountnumber='C-5000')",
                         headers=auth)
    assert gone.status_code == 204, gone.text
    assert ("usmf", "C-5000") not in pair.customers()


def test_batch_change_set_is_atomic_across_both_databases(
        served: tuple[Pair, TestClient, dict[str, str]]) -> None:
    pair, client, auth = served
    before = (pair.customers(), pair.accounts())
    body = {"requests": [
        {"id": "1", "atomicityGroup": "g", "method": "PATCH",
         "url": "Customers(dataAreaId='usmf',ACCOUNT='C-0003')", "body": {"NAME": "in batch"}},
        {"id": "2", "atomicityGroup": "g", "method": "POST", "url": "Customers",
         "body": {"dataAreaId": "usmf", "ACCOUNT": "C-6000", "NAME": "bad group",
                  "GROUPID": "G99", "PARTYTYPE": "Organization"}},
    ]}
    r = client.post("/odata/erp/$batch", headers=auth, json=body)
    assert r.status_code == 200, r.text
    statuses = {x["id"]: x["status"] for x in r.json()["responses"]}
    assert statuses["2"] == 400 and statuses["1"] in (400, 424)
    err = next(x for x in r.json()["responses"] if x["id"] == "2")["body"]["error"]
    assert "G99" in err["message"] and "customers" in err["message"]
    assert (pair.customers(), pair.accounts()) == before  # neither side changed

    body["requests"][1]["body"]["GROUPID"] = "G10"
    r = client.post("/odata/erp/$batch", headers=auth, json=body)
    assert {x["status"] for x in r.json()["responses"]} <= {200, 201, 204}, r.text
    assert pair.accounts()[("usmf", "C-0003")]["name"] == "in batch"
    assert ("usmf", "C-6000") in pair.accounts()


def test_reads_filter_select_order_page(served: tuple[Pair, TestClient, dict[str, str]]
                                        ) -> None:
    _, client, auth = served
    r = client.get("/odata/crm/accounts", headers=auth, params={
        "$filter": "company eq 'usmf' and startswith(accountnumber, 'C-')",
        "$select": "accountnumber,name", "$orderby": "accountnumber desc", "$count": "true",
        "$top": "2"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["@odata.count"] == 3
    assert [v["accountnumber"] for v in doc["value"]] == ["C-0005", "C-0003"]
    assert set(doc["value"][0]) >= {"accountnumber", "name"}
    sneaky = client.get("/odata/crm/accounts", headers=auth,
                        params={"$filter": "name eq 'x'' or 1=1 --'"})
    assert sneaky.status_code == 200 and sneaky.json()["value"] == []


def test_tokens_health_and_revocation(served: tuple[Pair, TestClient, dict[str, str]]
                                      ) -> None:
    pair, client, auth = served
    assert client.get("/odata/erp/Customers").status_code == 401
    assert client.get("/odata/erp/Customers",
                      headers={"Authorization": "Bearer dw_nope_x"}).status_code == 401
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    with pair.link() as link:
        [tok] = [t for t in link.state.list_tokens() if t["principal"] == "odata-user"]
        assert link.state.revoke_token(tok["id"])
    assert client.get("/odata/erp/Customers", headers=auth).status_code == 401


def test_restricted_map_answers_403_and_writes_nothing(make_backend: BackendFactory,
                                                       tmp_path: Path) -> None:
    pair = make_pair(make_backend, tmp_path, "sqlite", "sqlite")
    f = tmp_path / "maps" / "customers.yaml"
    f.write_text(f.read_text().replace("master: left", "master: left\nrestricted: true"))
    seed_groups(pair)
    with pair.link() as link:
        link.start_maps()
        plain = create_token(link.state, "clerk", role="writer")
        licensed = create_token(link.state, "manager", role="writer",
                                licences=["Customers", "accounts"])
        with TestClient(create_server_app(link)) as client:
            row = {"dataAreaId": "usmf", "ACCOUNT": "C-7000", "NAME": "Restricted",
                   "PARTYTYPE": "Organization"}
            r = client.post("/odata/erp/Customers", json=row,
                            headers={"Authorization": f"Bearer {plain}"})
            assert r.status_code == 403, r.text
            assert "licence" in r.json()["error"]["message"]
            assert "Customers" in r.json()["error"]["message"]
            assert pair.customers() == {} and pair.accounts() == {}
            r = client.post("/odata/erp/Customers", json=row,
                            headers={"Authorization": f"Bearer {licensed}"})
            assert r.status_code == 201, r.text
            assert ("usmf", "C-7000") in pair.accounts()


@pytest.mark.parametrize("pair_kinds", PAIRS, ids=pair_id)
def test_the_model_is_built_once_and_again_when_a_table_is_described_anew(
        pair_kinds: tuple[str, str], make_backend: BackendFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request needs the environment's service model, and building it reads every
    exposed table's schema and every map (it was built for every request: about 1.6 ms
    with the demo's 13 maps). It is built once and kept while the link's maps and the tables'
    schemas are the same; once the link describes its tables anew (as it does after a map
    reload or a database error), a column added meanwhile is in the next response."""
    built: list[str] = []
    real = odata_module.build_model

    def counting(backend: Any, env: str) -> Any:
        built.append(env)
        return real(backend, env)

    monkeypatch.setattr(odata_module, "build_model", counting)
    pair = make_pair(make_backend, tmp_path, *pair_kinds, batch_size=500)
    seed_groups(pair)
    with pair.link() as link:
        link.start_maps()
        token = create_token(link.state, "odata-user", role="writer", licences=["accounts"])
        auth = {"Authorization": f"Bearer {token}"}
        with TestClient(create_server_app(link)) as client:
            for path in ("/odata/crm/accounts", "/odata/crm/$metadata", "/odata/crm/groups",
                         "/odata/erp/Customers", "/odata/crm/accounts?$top=1"):
                assert client.get(path, headers=auth).status_code == 200, path
            assert sorted(built) == ["crm", "erp"]
            r = client.post("/odata/crm/accounts", headers=auth, json={
                "company": "usmf", "accountnumber": "C-7000", "name": "Posted", "typecode": 3,
                "onhold": 1})
            assert r.status_code == 201, r.text
            assert sorted(built) == ["crm", "erp"]

            pair.crm.sql("ALTER TABLE accounts ADD COLUMN nickname VARCHAR(20)")
            link.forget_validation()
            r = client.get("/odata/crm/$metadata?$format=json", headers=auth)
            assert r.status_code == 200, r.text
            assert "nickname" in r.json()["dualwrite.crm"]["accounts"], r.json()
            assert sorted(built) == ["crm", "crm", "erp"]
            r = client.get("/odata/crm/accounts?$select=nickname&$top=1", headers=auth)
            assert r.status_code == 200, r.text
            assert sorted(built) == ["crm", "crm", "erp"]
