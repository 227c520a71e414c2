"""Reading: query options and their combinations, paging, key forms, ETags, formats."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import pytest
from fake_backend import FakeBackend
from odata_fixtures import PAGE, account_id, make_backend, open_client
from starlette.testclient import TestClient

from dualwrite.model.filters import Compare, Literal, Property


@pytest.fixture
def backend() -> FakeBackend:
    return make_backend()


@pytest.fixture
def client(backend: FakeBackend) -> Iterator[TestClient]:
    yield from open_client(backend)



def _values(client: TestClient, url: str, **kw: Any) -> list[dict[str, Any]]:
    r = client.get(url, **kw)
    assert r.status_code == 200, r.text
    value: list[dict[str, Any]] = r.json()["value"]
    return value


def _names(client: TestClient, url: str) -> list[str]:
    return [v["name"] for v in _values(client, url)]


def test_collection_format(client: TestClient) -> None:
    r = client.get("/odata/crm/accounts")
    body = r.json()
    assert body["@odata.context"] == "http://testserver/odata/crm/$metadata#accounts"
    assert "@odata.nextLink" not in body and "@odata.count" not in body
    first = body["value"][0]
    assert first["@odata.etag"].startswith('W/"')
    assert first == {
        "@odata.etag": first["@odata.etag"],
        "accountid": "00000000-0000-4000-8000-000000000001", "accountnumber": "C-1001",
        "name": "Contoso", "creditlimit": 1000.5, "revenue": 1.5, "numberofemployees": 10,
        "customertypecode": 2, "donotemail": False, "createdon": "2024-01-01T09:30:00Z",
        "foundedon": "2001-01-31", "opensat": "08:01:00", "logo": "Af8A",
        "settings": '{"tier":1}',
    }
    # decimals are exact JSON numbers, never rounded through float
    assert '"creditlimit":1000.50' in r.text


@pytest.mark.parametrize(("flt", "expected"), [
    ("name eq 'Contoso'", ["Contoso"]),
    ("NAME eq 'Contoso'", ["Contoso"]),  # property names are case-insensitive
    ("name eq 'O''Brien & Sons'", ["O'Brien & Sons"]),
    ("creditlimit gt 3500", ["Adventure Works", "O'Brien & Sons"]),
    ("creditlimit ge 3000.50 and donotemail eq false", ["Litware", "O'Brien & Sons"]),
    ("name eq 'Contoso' or name eq 'Litware'", ["Contoso", "Litware"]),
    ("not (customertypecode eq 2)", ["Fabrikam", "Adventure Works"]),
    ("contains(name, 'o')", ["Contoso", "Adventure Works", "O'Brien & Sons"]),
    ("startswith(name, 'Fab')", ["Fabrikam"]),
    ("endswith(tolower(name), 'sons')", ["O'Brien & Sons"]),
    ("numberofemployees eq null", ["Litware"]),
    ("numberofemployees ne null and numberofemployees lt 30", ["Contoso", "Fabrikam"]),
    ("accountnumber in ('C-1002', 'C-1005')", ["Fabrikam", "O'Brien & Sons"]),
    ("createdon lt 2024-01-03T00:00:00Z", ["Contoso", "Fabrikam"]),
    ("foundedon ge 2004-01-31", ["Adventure Works", "O'Brien & Sons"]),
    ("accountid eq 00000000-0000-4000-8000-000000000003", ["Litware"]),
    ("revenue mul 2 eq 6", ["Fabrikam"]),
    ("length(name) gt 10", ["Adventure Works", "O'Brien & Sons"]),
    ("year(createdon) eq 2024 and day(createdon) eq 4", ["Adventure Works"]),
])
def test_filter(client: TestClient, flt: str, expected: list[str]) -> None:
    assert _names(client, "/odata/crm/accounts?$filter=" + quote(flt)) == expected


def test_filter_reaches_the_backend_as_an_ast_of_real_columns(
        client: TestClient, backend: FakeBackend) -> None:
    r = client.get("/odata/erp/CustCustomerV3", params={"$filter": "customeraccount eq 'C-1'"})
    assert [v["NAME"] for v in r.json()["value"]] == ["Contoso DE", "Contoso US"]
    assert backend.queries[-1]["where"] == Compare("eq", Property("CUSTOMERACCOUNT"),
                                                   Literal("C-1"))


@pytest.mark.parametrize("flt", [
    "name eq 'x'' OR 1=1 --'",
    "name eq 'Robert''); DROP TABLE accounts;--'",
    "name eq '1'' or ''1''=''1'",
    "name eq ''''",
])
def test_injection_looking_filters_are_plain_literals(client: TestClient, backend: FakeBackend,
                                                      flt: str) -> None:
    before = backend.rows("crm", "accounts")
    r = client.get("/odata/crm/accounts", params={"$filter": flt})
    assert r.status_code == 200 and r.json()["value"] == []
    where = backend.queries[-1]["where"]
    assert isinstance(where, Compare) and where.left == Property("name")
    assert isinstance(where.right, Literal) and isinstance(where.right.value, str)
    assert backend.rows("crm", "accounts") == before


def test_parameter_alias(client: TestClient) -> None:
    assert _names(client, "/odata/crm/accounts?$filter=name%20eq%20@n&@n='Litware'") == \
        ["Litware"]
    r = client.get("/odata/crm/accounts?$filter=name%20eq%20@missing")
    assert r.status_code == 400


@pytest.mark.parametrize(("flt", "target"), [
    ("nosuch eq 1", "nosuch"),
    ("name eq 'x' and bogus gt 2", "bogus"),
])
def test_filter_unknown_property(client: TestClient, flt: str, target: str) -> None:
    r = client.get("/odata/crm/accounts", params={"$filter": flt})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "UnknownProperty" and err["target"] == target
    assert repr(target) in err["message"]


@pytest.mark.parametrize("flt", ["name eq", "name == 'x'", "(name eq 'x'", "name eq 'x",
                                 "", "name/x eq 1", "Name Eq 'x'", "name has 1"])
def test_filter_syntax_errors(client: TestClient, flt: str) -> None:
    r = client.get("/odata/crm/accounts", params={"$filter": flt})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["target"] == "$filter"


def test_filter_type_mismatch_is_400(client: TestClient) -> None:
    r = client.get("/odata/crm/accounts", params={"$filter": "name gt 5"})
    assert r.status_code == 400


def test_select(client: TestClient) -> None:
    r = client.get("/odata/crm/accounts?$select=name,ACCOUNTNUMBER&$top=1")
    body = r.json()
    assert body["@odata.context"] == \
        "http://testserver/odata/crm/$metadata#accounts(accountnumber,name)"
    # the key comes with every entity, selected or not
    assert set(body["value"][0]) == {"@odata.etag", "accountid", "accountnumber", "name"}
    assert set(_values(client, "/odata/crm/accounts?$select=*&$top=1")[0]) > {"logo", "name"}
    # the ETag does not depend on $select: it is the whole row's
    full = _values(client, "/odata/crm/accounts?$top=1")[0]
    assert body["value"][0]["@odata.etag"] == full["@odata.etag"]


@pytest.mark.parametrize("select", ["nosuch", "name,", "name/first", ""])
def test_select_errors(client: TestClient, select: str) -> None:
    assert client.get(f"/odata/crm/accounts?$select={select}").status_code == 400


@pytest.mark.parametrize(("orderby", "expected"), [
    ("name", ["Adventure Works", "Contoso", "Fabrikam", "Litware", "O'Brien & Sons"]),
    ("name desc", ["O'Brien & Sons", "Litware", "Fabrikam", "Contoso", "Adventure Works"]),
    ("customertypecode desc,name asc",
     ["Contoso", "Litware", "O'Brien & Sons", "Adventure Works", "Fabrikam"]),
    ("numberofemployees", ["Litware", "Contoso", "Fabrikam", "Adventure Works",
                           "O'Brien & Sons"]),  # null first in ascending order
    ("DoNotEmail DESC, createdon", ["Fabrikam", "Adventure Works", "Contoso", "Litware",
                                    "O'Brien & Sons"]),
])
def test_orderby(client: TestClient, orderby: str, expected: list[str]) -> None:
    assert _names(client, "/odata/crm/accounts?$orderby=" + quote(orderby)) == expected


@pytest.mark.parametrize("orderby", ["nosuch", "name up", "length(name)", "name asc desc", ","])
def test_orderby_errors(client: TestClient, orderby: str) -> None:
    assert client.get("/odata/crm/accounts?$orderby=" + quote(orderby)).status_code == 400


def test_orderby_adds_the_key_as_tie_breaker(client: TestClient, backend: FakeBackend) -> None:
    client.get("/odata/erp/CustCustomerV3?$orderby=CUSTOMERGROUPID")
    assert backend.queries[-1]["order_by"] == [
        ("CUSTOMERGROUPID", False), ("dataAreaId", False), ("CUSTOMERACCOUNT", False)]


@pytest.mark.parametrize(("query", "expected"), [
    ("$top=2", ["Product 01", "Product 02"]),
    ("$skip=23", ["Product 24", "Product 25"]),
    ("$top=2&$skip=5", ["Product 06", "Product 07"]),
    ("$top=0", []),
    ("$skip=100", []),
    ("$filter=price%20gt%2025&$orderby=name%20desc&$top=2&$skip=1",
     ["Product 24", "Product 23"]),
])
def test_top_skip(client: TestClient, query: str, expected: list[str]) -> None:
    assert _names(client, "/odata/erp/products?" + query) == expected


@pytest.mark.parametrize("query", ["$top=-1", "$top=abc", "$skip=1.5", "$top=", "$skip=-3",
                                   "$top=99999999999999999999", "$count=maybe",
                                   "$skiptoken=x", "$top=1&$top=2", "$TOP=1&$top=1"])
def test_bad_numbers_and_duplicates(client: TestClient, query: str) -> None:
    r = client.get("/odata/erp/products?" + query)
    assert r.status_code == 400, r.text


def test_count(client: TestClient) -> None:
    body = client.get("/odata/erp/products?$count=true&$top=3&$filter=price%20lt%2020").json()
    assert body["@odata.count"] == 15 and len(body["value"]) == 3
    assert "@odata.count" not in client.get("/odata/erp/products?$count=false").json()
    r = client.get("/odata/erp/products/$count?$filter=price%20lt%2020")
    assert r.status_code == 200 and r.text == "15"
    assert r.headers["content-type"].startswith("text/plain")
    assert client.get("/odata/crm/accounts/$count").text == "5"
    assert client.get("/odata/erp/products/$count?$top=1").status_code == 400


def _follow(client: TestClient, url: str, **kw: Any) -> list[dict[str, Any]]:
    pages: list[dict[str, Any]] = []
    while url:
        r = client.get(url, **kw)
        assert r.status_code == 200, r.text
        pages.append(r.json())
        url = r.json().get("@odata.nextLink", "")
        assert len(pages) < 50
    return pages


def test_paging_follows_next_links_to_the_end(client: TestClient) -> None:
    pages = _follow(client, "/odata/erp/products")
    assert [len(p["value"]) for p in pages] == [PAGE, PAGE, 5]
    ids = [v["productid"] for p in pages for v in p["value"]]
    assert ids == list(range(1, 26))
    link = pages[0]["@odata.nextLink"]
    assert link.startswith("http://testserver/odata/erp/products?") and "$skiptoken=" in link


def test_paging_keeps_filter_order_select_and_count(client: TestClient) -> None:
    url = ("/odata/erp/products?$filter=" + quote("price ge 5") +
           "&$orderby=" + quote("price desc") + "&$select=name&$count=true")
    pages = _follow(client, url)
    assert all(p["@odata.count"] == 22 for p in pages)
    names = [v["name"] for p in pages for v in p["value"]]
    assert names == [f"Product {n:02d}" for n in range(25, 3, -1)]
    assert all(set(v) == {"@odata.etag", "productid", "name"} for p in pages for v in p["value"])


def test_paging_within_top_and_skip(client: TestClient) -> None:
    pages = _follow(client, "/odata/erp/products?$top=15&$skip=2")
    assert [len(p["value"]) for p in pages] == [10, 5]
    assert [v["productid"] for p in pages for v in p["value"]] == list(range(3, 18))
    pages = _follow(client, "/odata/erp/products?$top=10")
    assert len(pages) == 1  # exactly one full page: no link to an empty page


def test_prefer_maxpagesize(client: TestClient) -> None:
    r = client.get("/odata/erp/products", headers={"Prefer": "odata.maxpagesize=4"})
    assert len(r.json()["value"]) == 4
    assert r.headers["preference-applied"] == "odata.maxpagesize=4"
    pages = _follow(client, "/odata/erp/products", headers={"Prefer": "odata.maxpagesize=4"})
    assert len(pages) == 7 and sum(len(p["value"]) for p in pages) == 25
    # a larger page than the server's is not granted
    r = client.get("/odata/erp/products", headers={"Prefer": "odata.maxpagesize=500"})
    assert len(r.json()["value"]) == PAGE and "preference-applied" not in r.headers


def test_paging_is_stable_on_duplicate_sort_values(client: TestClient) -> None:
    pages = _follow(client, "/odata/erp/CustCustomerV3?$orderby=CUSTOMERGROUPID",
                    headers={"Prefer": "odata.maxpagesize=1"})
    keys = [(v["dataAreaId"], v["CUSTOMERACCOUNT"]) for p in pages for v in p["value"]]
    assert len(keys) == 4 and len(set(keys)) == 4


@pytest.mark.parametrize(("path", "name_field", "expected"), [
    ("/odata/crm/accounts(00000000-0000-4000-8000-000000000002)", "name", "Fabrikam"),
    ("/odata/crm/accounts(accountid=00000000-0000-4000-8000-000000000002)", "name",
     "Fabrikam"),
    ("/odata/crm/accounts(accountnumber='C-1003')", "name", "Litware"),
    ("/odata/crm/accounts(ACCOUNTNUMBER='C-1003')", "name", "Litware"),
    ("/odata/erp/products(7)", "name", "Product 07"),
    ("/odata/erp/products(+7)", "name", "Product 07"),
    ("/odata/erp/CustCustomerV3(dataAreaId='usmf',CUSTOMERACCOUNT='C-1')", "NAME",
     "Contoso US"),
    ("/odata/erp/CustCustomerV3(CUSTOMERACCOUNT='C-1',dataAreaId='demf')", "NAME",
     "Contoso DE"),
    ("/odata/erp/CustCustomerV3(dataareaid='demf',customeraccount='C-1')", "NAME",
     "Contoso DE"),
    ("/odata/erp/CustCustomerV3(dataAreaId='usmf',CUSTOMERACCOUNT='O''NEIL%2F1')", "NAME",
     "O'Neil"),
    ("/odata/erp/CustCustomerV3(dataAreaId=%27usmf%27,CUSTOMERACCOUNT=%27O%27%27NEIL/1%27)",
     "NAME", "O'Neil"),
    ("/odata/crm/order_lines(1)", "order_no", "SO-1"),
])
def test_key_forms(client: TestClient, path: str, name_field: str, expected: str) -> None:
    r = client.get(path)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body[name_field] == expected
    assert body["@odata.context"].endswith("/$entity")
    assert r.headers["etag"] == body["@odata.etag"]


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/odata/erp/products('7')", 400, "InvalidLiteral"),
    ("/odata/erp/products(7.5)", 400, "InvalidLiteral"),
    ("/odata/erp/products(seven)", 400, "InvalidLiteral"),
    ("/odata/erp/products(99)", 404, "NotFound"),
    ("/odata/erp/products()", 400, "InvalidKey"),
    ("/odata/erp/products(1", 400, "BadRequest"),
    ("/odata/erp/products(1)x", 400, "BadRequest"),
    ("/odata/erp/CustCustomerV3('C-1')", 400, "InvalidKey"),
    ("/odata/erp/CustCustomerV3(dataAreaId='usmf')", 400, "InvalidKey"),
    ("/odata/erp/CustCustomerV3(dataAreaId='usmf',dataAreaId='usmf')", 400, "InvalidKey"),
    ("/odata/erp/CustCustomerV3(dataAreaId='usmf',nosuch='C-1')", 400, "UnknownProperty"),
    ("/odata/erp/CustCustomerV3(dataAreaId='usmf',CUSTOMERACCOUNT='C-9')", 404, "NotFound"),
    ("/odata/crm/accounts(name='Contoso')", 400, "InvalidKey"),
    ("/odata/crm/accounts(accountnumber='O'Brien')", 400, "InvalidLiteral"),
    ("/odata/crm/accounts(accountnumber='C-1099')", 404, "NotFound"),
    ("/odata/crm/accounts(12345)", 400, "InvalidLiteral"),
    ("/odata/crm/accounts(accountid=null)", 400, "InvalidLiteral"),
    ("/odata/crm/nosuch", 404, "NotFound"),
    ("/odata/crm/nosuch(1)", 404, "NotFound"),
    ("/odata/nosuchenv/accounts", 404, "NotFound"),
    ("/odata/erp/products/extra", 404, "NotFound"),
    ("/odata/erp/products(1)/name", 501, "NotImplemented"),
    ("/odata/erp/products(1)/nosuch", 404, "NotFound"),
    ("/odata/erp/$entity", 404, "NotFound"),
])
def test_key_errors(client: TestClient, path: str, status: int, code: str) -> None:
    r = client.get(path)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] in (code, "InvalidPath")


def test_single_entity_select_and_conditional_get(client: TestClient) -> None:
    r = client.get("/odata/erp/products(3)?$select=price")
    assert r.json() == {
        "@odata.context": "http://testserver/odata/erp/$metadata#products(price)/$entity",
        "@odata.etag": r.headers["etag"], "productid": 3, "price": 3.75}
    r304 = client.get("/odata/erp/products(3)", headers={"If-None-Match": r.headers["etag"]})
    assert r304.status_code == 304 and r304.content == b""
    assert client.get("/odata/erp/products(3)",
                      headers={"If-None-Match": 'W/"other"'}).status_code == 200
    assert client.get("/odata/erp/products(3)?$filter=price gt 1").status_code == 400
    assert client.get("/odata/erp/products(3)?$top=1").status_code == 400


def test_metadata_levels_and_ieee754(client: TestClient) -> None:
    url = "/odata/crm/accounts(accountnumber='C-1001')"
    none = client.get(url, headers={"Accept": "application/json;odata.metadata=none"}).json()
    assert not [k for k in none if k.startswith("@")]
    full = client.get(url + "?$format=application/json;odata.metadata=full").json()
    aid = account_id(1)
    assert full["@odata.id"] == f"http://testserver/odata/crm/accounts({aid})"
    assert full["@odata.editLink"] == f"accounts({aid})"
    assert full["@odata.type"] == "#dualwrite.crm.accounts"
    r = client.get(url, headers={"Accept": "application/json;IEEE754Compatible=true"})
    body = r.json()
    assert body["creditlimit"] == "1000.50" and body["customertypecode"] == "2"
    assert body["numberofemployees"] == 10  # Int32 stays a number
    assert "IEEE754Compatible=true" in r.headers["content-type"]
    assert client.get(url + "?$format=json").status_code == 200
    assert client.get(url, headers={"Accept": "application/json;odata.metadata=lots"}) \
        .status_code == 400


@pytest.mark.parametrize(("query", "status"), [
    ("$expand=contacts", 400), ("$search=blue", 501), ("$apply=groupby((name))", 501),
    ("$compute=a", 501), ("$nosuch=1", 400), ("$format=xml", 406), ("$format=atom", 406),
    ("custom=1", 200), ("$filter=name%20eq%20'x'&$orderby=name&$select=name&$top=1&$skip=0"
                        "&$count=true&$format=json", 200),
])
def test_query_option_support(client: TestClient, query: str, status: int) -> None:
    r = client.get("/odata/crm/accounts?" + query)
    assert r.status_code == status, r.text
    if status == 501:
        assert "not supported" in r.json()["error"]["message"]


def test_accept_without_json_is_406(client: TestClient) -> None:
    r = client.get("/odata/crm/accounts", headers={"Accept": "application/xml"})
    assert r.status_code == 406
    assert client.get("/odata/crm/accounts", headers={"Accept": "*/*"}).status_code == 200
    assert client.get("/odata/crm/accounts",
                      headers={"Accept": "application/*;q=0.5"}).status_code == 200


def test_plus_in_query_is_a_space_and_encoded_plus_a_plus(client: TestClient) -> None:
    assert _names(client, "/odata/crm/accounts?$filter=name+eq+'Contoso'") == ["Contoso"]
    assert _names(client, "/odata/crm/accounts?$filter=createdon%20eq%20"
                          "2024-01-01T10:30:00%2B01:00") == ["Contoso"]


def test_decimal_values_stay_exact(client: TestClient, backend: FakeBackend) -> None:
    backend.data["erp"]["products"][0]["price"] = Decimal("12345678901234567890.123456789")
    r = client.get("/odata/erp/products(1)")
    assert '"price":12345678901234567890.123456789' in r.text


def test_head_is_get_without_body(client: TestClient) -> None:
    r = client.head("/odata/erp/products(1)")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["etag"] == client.get("/odata/erp/products(1)").headers["etag"]
