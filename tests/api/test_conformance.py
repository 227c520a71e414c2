"""OData conformance faults foreign clients notice (issue 12 §1), on real PostgreSQL and
MariaDB. Each fault's test failed on the code before its fix, except two that guard what
already held: the promotions the type check must keep allowing, and the mirrored write of a
value the other side cannot take (the engine already answered 400 naming map, side, field
and value; the test keeps it so).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fake_backend import FakeBackend
from lxml import etree
from starlette.testclient import TestClient

from dualwrite.api import Principal, create_app
from dualwrite.api.server import create_server_app
from dualwrite.engine.security import create_token
from dualwrite.model.schema import Column, ForeignKey, Kind, TableSchema
from dualwrite.testing.backends import pair_id, pairs

from conftest import BackendFactory, guid_default, shared_path
from sync_fixtures import Pair, erp_customer, make_pair, seed_groups

PAIRS = pairs(needs=("sql", "two_phase"), same="none", both_ways=True)

FLAGS_MAP = """
name: flags
left: Flags
right: flags
key: {left: [CODE], right: [code]}
company: {left: dataAreaId, right: company}
fields:
  - CODE = code
  - LABEL = label
  - ISACTIVE = isactive
  - DONOTEMAIL = donotemail
"""


def _flag_tables(pair: Pair) -> None:
    """``Flags`` (ERP) <-> ``flags`` (CRM). ``DONOTEMAIL`` is a boolean on both sides (MariaDB:
    ``tinyint(1)``); ``ISACTIVE`` is a boolean on PostgreSQL and a plain integer on MariaDB,
    so that 7 is a value one side takes and the other cannot."""
    def isactive(name: str, dialect: str) -> sa.Column[Any]:
        return sa.Column(name, sa.Boolean if dialect == "postgresql" else sa.Integer)

    erp = sa.MetaData()
    sa.Table("Flags", erp,
             sa.Column("dataAreaId", sa.String(4), primary_key=True),
             sa.Column("CODE", sa.String(10), primary_key=True),
             sa.Column("LABEL", sa.String(40)),
             isactive("ISACTIVE", pair.erp.dialect),
             sa.Column("DONOTEMAIL", sa.Boolean))
    pair.erp.create(erp)
    crm = sa.MetaData()
    sa.Table("flags", crm,
             sa.Column("flagid", sa.String(36), primary_key=True,
                       server_default=guid_default(pair.crm.dialect)),
             sa.Column("company", sa.String(4), nullable=False),
             sa.Column("code", sa.String(10), nullable=False),
             sa.Column("label", sa.String(40)),
             isactive("isactive", pair.crm.dialect),
             sa.Column("donotemail", sa.Boolean),
             sa.UniqueConstraint("company", "code"))
    pair.crm.create(crm)
    (pair.config.parent / "maps" / "flags.yaml").write_text(FLAGS_MAP)


Served = tuple[Pair, TestClient, dict[str, str]]


@pytest.fixture(params=PAIRS, ids=pair_id)
def served(request: pytest.FixtureRequest, make_backend: BackendFactory,
           tmp_path: Path) -> Iterator[Served]:
    left, right = request.param
    with _serve(make_backend, tmp_path, left, right) as served:
        yield served


@contextmanager
def _serve(make_backend: BackendFactory, tmp_path: Path, left: str, right: str,
           serve: dict[str, Any] | None = None) -> Iterator[Served]:
    """The demo pair plus ``Flags``/``flags``, seeded, served with ``serve`` settings (a
    fresh ``tmp_path`` each time: the state store lives there)."""
    tmp_path.mkdir(exist_ok=True)
    def settings(cfg: dict[str, Any]) -> None:
        if serve is not None:
            cfg["serve"] = serve

    pair = make_pair(make_backend, tmp_path, left, right, batch_size=500, extra=settings)
    _flag_tables(pair)
    seed_groups(pair)
    pair.erp.insert("Customers", [erp_customer(i) for i in range(6)])
    pair.erp.insert("Flags", [
        {"dataAreaId": "usmf", "CODE": "F1", "LABEL": "one", "ISACTIVE": True,
         "DONOTEMAIL": False},
        {"dataAreaId": "usmf", "CODE": "F2", "LABEL": "two", "ISACTIVE": False,
         "DONOTEMAIL": True}])
    with pair.link() as link:
        link.start_maps()
        token = create_token(link.state, "odata-user", role="writer", licences=["accounts"])
        with TestClient(create_server_app(link)) as client:
            yield pair, client, {"Authorization": f"Bearer {token}"}


def _mariadb_env(pair: Pair) -> str:
    return "erp" if pair.erp.dialect == "mysql" else "crm"


def _error(r: Any, status: int) -> dict[str, Any]:
    """The OData error object of response ``r``, which must have ``status``."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] and error["message"]
    return error


def test_count_answers_text_plain_to_clients_accepting_json(served: Served) -> None:
    # python-odata's .count() and the SAP Cloud SDK's count() send Accept: application/json
    _, client, auth = served
    for accept in ("application/json", "application/json;odata.metadata=minimal",
                   "text/plain", "*/*"):
        r = client.get("/odata/erp/Customers/$count", headers={**auth, "Accept": accept})
        assert r.status_code == 200, (accept, r.text)
        assert r.headers["content-type"].startswith("text/plain")
        assert r.text == "6"
    r = client.get("/odata/erp/Customers/$count", headers={**auth, "Accept": "image/png"})
    _error(r, 406)


WRONG_TYPES = [
    ("erp", "Customers", "CREATED ge '2024-01-01'"),
    ("erp", "Customers", "CREDIT gt 'abc'"),
    ("erp", "Customers", "CREDIT gt '1'"),
    ("erp", "Customers", "NAME gt 5"),
    ("erp", "Customers", "contains(CREDIT,'1')"),
    ("erp", "Customers", "startswith(NAME,1)"),
    ("erp", "Customers", "NAME in ('Customer 1', 2)"),
    ("erp", "Customers", "CREATED eq 2024-01-01T00:00:00Z"),
    ("erp", "Customers", "year(NAME) eq 2024"),
    ("erp", "Customers", "CREDIT add 'x' gt 1"),
    ("erp", "Flags", "ISACTIVE eq 'x'"),
    ("erp", "Flags", "DONOTEMAIL eq 1"),
    ("crm", "flags", "donotemail eq 'x'"),
    ("crm", "flags", "donotemail eq 1"),
    ("crm", "accounts", "name eq 5"),
    ("crm", "accounts", "creditlimit gt true"),
]


def test_filter_literal_of_the_wrong_type_is_400(served: Served) -> None:
    # before: 500 with SQL text on PostgreSQL, 200 with wrong rows on MariaDB
    _, client, auth = served
    for env, entity_set, text in WRONG_TYPES:
        r = client.get(f"/odata/{env}/{entity_set}", headers=auth, params={"$filter": text})
        assert r.status_code == 400, (text, r.text)
        error = _error(r, 400)
        assert error["target"] == "$filter", text
        assert "SELECT" not in r.text and "WHERE" not in r.text


def test_filter_literals_promoted_by_the_standard_rules(served: Served) -> None:
    _, client, auth = served

    def accounts(env: str, entity_set: str, text: str, key: str) -> list[str]:
        r = client.get(f"/odata/{env}/{entity_set}", headers=auth,
                       params={"$filter": text, "$orderby": key})
        assert r.status_code == 200, (text, r.text)
        return [v[key] for v in r.json()["value"]]

    # Edm.Int32 and Edm.Decimal literals compare with an Edm.Decimal property
    assert accounts("erp", "Customers", "CREDIT gt 251", "ACCOUNT") == \
        ["C-0005"]
    assert accounts("erp", "Customers", "CREDIT le 250.25", "ACCOUNT") == \
        ["C-0000", "C-0001"]
    assert accounts("erp", "Customers", "CREATED ge 2024-05-01", "ACCOUNT") == \
        ["C-0004", "C-0005"]
    assert accounts("erp", "Customers", "contains(NAME,'mer 3')", "ACCOUNT") == ["C-0003"]
    assert accounts("erp", "Customers", "NAME eq null", "ACCOUNT") == []
    assert accounts("erp", "Flags", "DONOTEMAIL eq false", "CODE") == ["F1"]
    assert accounts("crm", "flags", "donotemail eq true", "code") == ["F2"]
    assert accounts("crm", "flags", "not donotemail", "code") == ["F1"]
    assert accounts("erp", "Flags", "DONOTEMAIL", "CODE") == ["F2"]


def test_mirrored_write_the_other_side_cannot_take_is_400_naming_it(served: Served) -> None:
    pair, client, auth = served
    env = _mariadb_env(pair)  # its ISACTIVE is an integer; the other side's a boolean
    entity_set, company, code, field = ("Flags", "dataAreaId", "CODE", "ISACTIVE") \
        if env == "erp" else ("flags", "company", "code", "isactive")
    other = "crm" if env == "erp" else "erp"
    before = (pair.erp.rows("Flags", ["CODE"]), pair.crm.rows("flags", ["code"]))
    r = client.post(f"/odata/{env}/{entity_set}", headers=auth,
                    json={company: "usmf", code: "F9", field.lower() if env == "crm"
                          else field: 7})
    error = _error(r, 400)
    message = error["message"]
    # the side at fault is the other one: the engine names it by its place in the link
    side = "left" if other == "erp" else "right"
    assert "map 'flags'" in message and f"side {side}" in message, message
    assert f"field '{field.upper() if other == 'erp' else field.lower()}'" in message
    assert "value 7" in message
    assert "INSERT" not in r.text and "insert into" not in r.text.lower()
    assert (pair.erp.rows("Flags", ["CODE"]), pair.crm.rows("flags", ["code"])) == before


def test_lone_surrogate_in_a_json_body_is_400(served: Served) -> None:
    pair, client, auth = served
    headers = {**auth, "Content-Type": "application/json"}
    for body in (b'{"dataAreaId": "usmf", "CODE": "F8", "LABEL": "\\ud800"}',
                 b'{"dataAreaId": "usmf", "CODE": "F8", "LABEL": "a\\udfffb"}',
                 b'{"dataAreaId": "usmf", "CODE": "F8", "\\ud800": "x"}'):
        _error(client.post("/odata/erp/Flags", content=body, headers=headers), 400)
    # a surrogate pair is one character, and fine
    r = client.post("/odata/erp/Flags", headers=headers,
                    content=b'{"dataAreaId": "usmf", "CODE": "F8", "LABEL": "\\ud83d\\ude00"}')
    assert r.status_code == 201, r.text
    assert r.json()["LABEL"] == "\U0001F600"
    r = client.post("/odata/erp/$batch", headers=headers, content=(
        b'{"requests": [{"id": "1", "method": "post", "url": "Flags", '
        b'"body": {"dataAreaId": "usmf", "CODE": "F7", "LABEL": "\\ud800"}}]}'))
    if r.status_code == 200:
        assert r.json()["responses"][0]["status"] == 400, r.text
    else:
        _error(r, 400)
    assert "F7" not in {row["CODE"] for row in pair.erp.rows("Flags", ["CODE"])}


def test_duplicate_key_is_409_on_either_side(served: Served) -> None:
    pair, client, auth = served
    r = client.post("/odata/erp/Customers", headers=auth, json={
        "dataAreaId": "usmf", "ACCOUNT": "C-0001", "NAME": "dup", "PARTYTYPE": "Organization"})
    assert _error(r, 409)["code"] == "Conflict"
    r = client.post("/odata/crm/accounts", headers=auth, json={
        "company": "usmf", "accountnumber": "C-0001", "name": "dup", "typecode": 3})
    assert _error(r, 409)["code"] == "Conflict"
    # the duplicate is on the mirrored side only: the CRM holds an account the ERP has not
    pair.crm.insert("accounts", [{"accountid": "a-900", "company": "usmf",
                                  "accountnumber": "C-0900", "name": "CRM only",
                                  "typecode": 3}])
    r = client.post("/odata/erp/Customers", headers=auth, json={
        "dataAreaId": "usmf", "ACCOUNT": "C-0900", "NAME": "dup", "PARTYTYPE": "Organization"})
    error = _error(r, 409)
    assert error["code"] == "Conflict" and "side crm" in error["message"]
    assert ("usmf", "C-0900") not in pair.customers()


def test_mariadb_tinyint1_is_an_edm_boolean_in_reads_writes_and_filters(served: Served
                                                                         ) -> None:
    pair, client, auth = served
    env = _mariadb_env(pair)
    entity_set, company, code, flag = ("Flags", "dataAreaId", "CODE", "DONOTEMAIL") \
        if env == "erp" else ("flags", "company", "code", "donotemail")
    xml = client.get(f"/odata/{env}/$metadata", headers=auth).text
    assert f'<Property Name="{flag}" Type="Edm.Boolean"' in xml
    doc = client.get(f"/odata/{env}/$metadata?$format=json", headers=auth).json()
    assert doc[f"dualwrite.{env}"][entity_set][flag]["$Type"] == "Edm.Boolean"
    rows = client.get(f"/odata/{env}/{entity_set}", headers=auth,
                      params={"$orderby": code}).json()["value"]
    assert [r[flag] for r in rows] == [False, True]
    r = client.post(f"/odata/{env}/{entity_set}", headers=auth,
                    json={company: "usmf", code: "F5", flag: True})
    assert r.status_code == 201, r.text
    assert r.json()[flag] is True
    erp = {row["CODE"]: row for row in pair.erp.rows("Flags", ["CODE"])}
    crm = {row["code"]: row for row in pair.crm.rows("flags", ["code"])}
    assert erp["F5"]["DONOTEMAIL"] == 1 and crm["F5"]["donotemail"] == 1  # True == 1
    error = _error(client.post(f"/odata/{env}/{entity_set}", headers=auth,
                               json={company: "usmf", code: "F6", flag: 7}), 400)
    assert error["target"] == flag
    r = client.get(f"/odata/{env}/{entity_set}", headers=auth,
                   params={"$filter": f"{flag} and {code} eq 'F5'"})
    assert [v[code] for v in r.json()["value"]] == ["F5"]


def test_change_set_addresses_rows_it_created_by_alternate_key_and_reference(
        served: Served) -> None:
    # before: the alternate key answered 404 (group rolled back) and $1 answered 400
    pair, client, auth = served
    r = client.post("/odata/crm/$batch", headers=auth, json={"requests": [
        {"id": "1", "atomicityGroup": "g", "method": "POST", "url": "accounts",
         "body": {"company": "usmf", "accountnumber": "C-0800", "name": "new",
                  "typecode": 3}},  # accountid: the database generates it
        {"id": "2", "atomicityGroup": "g", "method": "PATCH",
         "url": "accounts(company='usmf',accountnumber='C-0800')",
         "body": {"name": "by alternate key"}},
        {"id": "3", "atomicityGroup": "g", "dependsOn": ["1"], "method": "PATCH",
         "url": "$1", "body": {"telephone1": "+1 555 0800"},
         "headers": {"Prefer": "return=representation"}},
        {"id": "4", "atomicityGroup": "h", "method": "POST", "url": "accounts",
         "body": {"company": "usmf", "accountnumber": "C-0801", "name": "short-lived",
                  "typecode": 3}},
        {"id": "5", "atomicityGroup": "h", "dependsOn": ["4"], "method": "DELETE",
         "url": "$4"},
    ]})
    assert r.status_code == 200, r.text
    out = {x["id"]: x for x in r.json()["responses"]}
    assert [out[i]["status"] for i in "12345"] == [201, 204, 200, 201, 204], r.text
    account = pair.accounts()[("usmf", "C-0800")]
    assert out["3"]["body"]["accountid"] == account["accountid"]
    assert out["3"]["body"]["name"] == "by alternate key"
    assert (account["name"], account["telephone1"]) == ("by alternate key", "+1 555 0800")
    customer = pair.customers()[("usmf", "C-0800")]
    assert (customer["NAME"], customer["PHONE"]) == ("by alternate key", "+1 555 0800")
    assert ("usmf", "C-0801") not in pair.accounts()
    assert ("usmf", "C-0801") not in pair.customers()


def test_select_leaving_out_the_key_still_returns_it(served: Served) -> None:
    _, client, auth = served
    r = client.get("/odata/erp/Customers", headers=auth,
                   params={"$select": "NAME,ACCOUNT", "$orderby": "ACCOUNT", "$top": "1"})
    assert r.status_code == 200, r.text
    [entity] = r.json()["value"]
    assert entity["dataAreaId"] == "demf" and entity["ACCOUNT"] == "C-0000"
    assert r.json()["@odata.context"].endswith("#Customers(ACCOUNT,NAME)")
    url = "/odata/erp/Customers(dataAreaId='usmf',ACCOUNT='C-0001')"
    r = client.get(url, headers=auth, params={"$select": "NAME"})
    assert {k: v for k, v in r.json().items() if not k.startswith("@")} == {
        "dataAreaId": "usmf", "ACCOUNT": "C-0001", "NAME": "Customer 1"}


def test_xml_and_json_metadata_agree_with_the_version_header(served: Served) -> None:
    # before: the XML said Version="4.0", the JSON "$Version": "4.01", the header 4.0
    _, client, auth = served
    for headers, version in (({}, "4.01"), ({"OData-MaxVersion": "4.01"}, "4.01"),
                             ({"OData-MaxVersion": "4.0"}, "4.0")):
        xml = client.get("/odata/erp/$metadata", headers={**auth, **headers})
        js = client.get("/odata/erp/$metadata?$format=json", headers={**auth, **headers})
        assert xml.headers["odata-version"] == js.headers["odata-version"] == version
        assert f'Version="{version}"' in xml.text.split("\n")[1]
        assert js.json()["$Version"] == version
        data = client.get("/odata/erp/Customers/$count", headers={**auth, **headers})
        assert data.headers["odata-version"] == version


@pytest.mark.parametrize("left,right", PAIRS)
def test_if_match_required_when_configured(make_backend: BackendFactory, tmp_path: Path,
                                           left: str, right: str) -> None:
    url = "/odata/erp/Customers(dataAreaId='usmf',ACCOUNT='C-0001')"
    with _serve(make_backend, tmp_path, left, right) as (_, client, auth):
        # the default: no If-Match needed
        r = client.patch(url, headers=auth, json={"NAME": "without If-Match"})
        assert r.status_code == 204, r.text
    with _serve(make_backend, tmp_path / "required", left, right,
                serve={"require_if_match": True}) as (pair, client, auth):
        for method, body in (("PATCH", {"NAME": "x"}), ("PUT", {"NAME": "x"}),
                             ("DELETE", None)):
            r = client.request(method, url, headers=auth, json=body)
            error = _error(r, 428)
            assert error["code"] == "PreconditionRequired" and "If-Match" in error["message"]
        assert pair.customers()[("usmf", "C-0001")]["NAME"] == "Customer 1"
        etag = client.get(url, headers=auth).headers["ETag"]
        r = client.patch(url, headers={**auth, "If-Match": etag}, json={"NAME": "with it"})
        assert r.status_code == 204, r.text
        r = client.patch(url, headers={**auth, "If-Match": "*"}, json={"NAME": "any"})
        assert r.status_code == 204, r.text
        assert pair.accounts()[("usmf", "C-0001")]["name"] == "any"
        # creating needs no ETag, nor does a change to a row the same change set created
        r = client.post("/odata/erp/$batch", headers=auth, json={"requests": [
            {"id": "1", "atomicityGroup": "g", "method": "POST", "url": "Customers",
             "body": {"dataAreaId": "usmf", "ACCOUNT": "C-0700", "NAME": "new",
                      "PARTYTYPE": "Organization"}},
            {"id": "2", "atomicityGroup": "g", "method": "PATCH", "url": "$1",
             "body": {"NAME": "renamed"}}]})
        assert [x["status"] for x in r.json()["responses"]] == [201, 204], r.text
        assert pair.accounts()[("usmf", "C-0700")]["name"] == "renamed"


def test_upsert_on_by_default_and_off_when_configured(make_backend: BackendFactory,
                                                       tmp_path: Path) -> None:
    url = "/odata/erp/Customers(dataAreaId='usmf',ACCOUNT='C-0600')"
    body = {"NAME": "upserted", "PARTYTYPE": "Organization"}
    with _serve(make_backend, tmp_path, "postgresql", "mariadb") as (pair, client, auth):
        r = client.patch(url, headers=auth, json=body)
        assert r.status_code == 201, r.text
        assert pair.accounts()[("usmf", "C-0600")]["name"] == "upserted"
    with _serve(make_backend, tmp_path / "off", "mariadb", "postgresql",
                serve={"upsert": False}) as (pair, client, auth):
        for method in ("PATCH", "PUT"):
            _error(client.request(method, url, headers=auth, json=body), 404)
        assert ("usmf", "C-0600") not in pair.customers()
        assert ("usmf", "C-0600") not in pair.accounts()
        r = client.patch("/odata/erp/Customers(dataAreaId='usmf',ACCOUNT='C-0001')",
                         headers=auth, json={"NAME": "updates still work"})
        assert r.status_code == 204, r.text


def test_lookups_are_navigation_properties_with_expand_and_filter(served: Served) -> None:
    # before: no NavigationProperty, $expand answered 501, a path in $filter 400
    pair, client, auth = served
    xsd = etree.XMLSchema(etree.parse(str(shared_path("data", "odata-csdl-schemas",
                                                      "edmx.xsd"))))
    r = client.get("/odata/crm/$metadata", headers=auth)
    doc = etree.fromstring(r.content)
    xsd.assertValid(doc)
    [accounts] = [e for e in doc.iter("{*}EntityType") if e.get("Name") == "accounts"]
    [nav] = [n for n in accounts.iter("{*}NavigationProperty") if n.get("Name") == "groupref"]
    assert nav.get("Type") == "dualwrite.crm.groups"
    [constraint] = nav.iter("{*}ReferentialConstraint")
    assert (constraint.get("Property"), constraint.get("ReferencedProperty")) == \
        ("_groupref_value", "groupid")
    names = [p.get("Name") for p in accounts if p.get("Name")]
    assert len(names) == len(set(names))  # one namespace for properties and navigations
    [binding] = [b for s in doc.iter("{*}EntitySet") if s.get("Name") == "accounts"
                 for b in s.iter("{*}NavigationPropertyBinding")]
    assert (binding.get("Path"), binding.get("Target")) == ("groupref", "groups")
    js = client.get("/odata/crm/$metadata?$format=json", headers=auth).json()
    assert js["dualwrite.crm"]["accounts"]["groupref"] == {
        "$Kind": "NavigationProperty", "$Type": "dualwrite.crm.groups", "$Nullable": True,
        "$ReferentialConstraint": {"_groupref_value": "groupid"}}
    assert js["dualwrite.crm"]["Container"]["accounts"]["$NavigationPropertyBinding"] == \
        {"groupref": "groups"}

    groups = {"C-0000": "G30", "C-0001": "G10", "C-0002": "G40", "C-0003": "G20",
              "C-0004": "G30", "C-0005": "G10"}
    r = client.get("/odata/crm/accounts", headers=auth, params={
        "$expand": "groupref($select=groupcode)", "$orderby": "accountnumber",
        "$select": "accountnumber,_groupref_value"})
    assert r.status_code == 200, r.text
    values = r.json()["value"]
    assert {v["accountnumber"]: v["groupref"]["groupcode"] for v in values} == groups
    assert all(v["groupref"]["groupid"] == v["_groupref_value"] for v in values)

    def numbers(text: str) -> list[str]:
        r = client.get("/odata/crm/accounts", headers=auth,
                       params={"$filter": text, "$orderby": "accountnumber"})
        assert r.status_code == 200, (text, r.text)
        return [v["accountnumber"] for v in r.json()["value"]]

    assert numbers("groupref/groupcode eq 'G10'") == ["C-0001", "C-0005"]
    assert numbers("groupref/groupcode in ('G20', 'G40') and company eq 'usmf'") == \
        ["C-0003"]
    assert numbers("not (groupref/groupcode eq 'G30') and startswith(accountnumber,'C-')") \
        == ["C-0001", "C-0002", "C-0003", "C-0005"]
    assert numbers("groupref/groupcode eq 'G99'") == []
    assert numbers("startswith(groupref/description,'Whole')") == ["C-0001", "C-0005"]
    r = client.get("/odata/crm/accounts/$count", headers=auth,
                   params={"$filter": "groupref/groupcode eq 'G10'"})
    assert r.text == "2"
    for bad in ("groupref/groupcode eq 10", "groupref/nosuch eq 'x'",
                "nosuch/groupcode eq 'x'", "groupref/groupcode eq accountnumber",
                "groupref eq 'x'"):
        r = client.get("/odata/crm/accounts", headers=auth, params={"$filter": bad})
        assert _error(r, 400)["target"] in ("$filter", "groupref", "nosuch"), bad
    one = client.get("/odata/crm/accounts(company='usmf',accountnumber='C-0003')",
                     headers=auth, params={"$expand": "groupref"})
    assert one.status_code == 200, one.text
    assert one.json()["groupref"]["groupcode"] == "G20"
    assert one.json()["groupref"]["@odata.etag"]
    _error(client.get("/odata/crm/accounts", headers=auth,
                      params={"$expand": "groupref($expand=x)"}), 501)

    # a lookup is written by its value property or by binding the navigation property
    g20 = pair.group_ids()["G20"]
    r = client.post("/odata/crm/accounts", headers=auth, json={
        "company": "usmf", "accountnumber": "C-0810", "name": "bound", "typecode": 3,
        "groupref@odata.bind": f"groups('{g20}')"})
    assert r.status_code == 201, r.text
    assert r.json()["_groupref_value"] == g20
    assert pair.customers()[("usmf", "C-0810")]["GROUPID"] == "G20"
    r = client.patch("/odata/crm/accounts(company='usmf',accountnumber='C-0810')",
                     headers=auth, json={"_groupref_value": pair.group_ids()["G10"]})
    assert r.status_code == 204, r.text
    assert pair.customers()[("usmf", "C-0810")]["GROUPID"] == "G10"
    _error(client.post("/odata/crm/accounts", headers=auth, json={
        "company": "usmf", "accountnumber": "C-0811", "name": "bad", "typecode": 3,
        "groupref@odata.bind": "accounts('x')"}), 400)
    r = client.patch("/odata/crm/accounts(company='usmf',accountnumber='C-0810')",
                     headers={**auth, "Prefer": "return=representation"},
                     json={"groupref@odata.bind": None})
    assert r.status_code == 200 and r.json()["_groupref_value"] is None, r.text
    r = client.get("/odata/crm/accounts(company='usmf',accountnumber='C-0810')",
                   headers=auth, params={"$expand": "groupref"})
    assert r.json()["groupref"] is None
    _error(client.get("/odata/crm/accounts", headers=auth, params={"$expand": "name"}), 400)


def test_navigation_over_the_memory_backend() -> None:
    # the same model on the in-memory backend: a nullable lookup, $expand=*, and a filter
    # through it that matches nothing
    backend = FakeBackend()
    backend.tokens["t"] = Principal("t", "admin", frozenset())
    backend.add_table("crm", TableSchema("teams", {
        "teamid": Column("teamid", Kind.INTEGER, nullable=False, primary_key=True),
        "code": Column("code", Kind.STRING, length=10)}, ("teamid",)),
        [{"teamid": 1, "code": "red"}, {"teamid": 2, "code": "blue"}])
    backend.add_table("crm", TableSchema("members", {
        "memberid": Column("memberid", Kind.INTEGER, nullable=False, primary_key=True),
        "name": Column("name", Kind.STRING, length=20),
        "teamid": Column("teamid", Kind.INTEGER)}, ("memberid",),
        foreign_keys=[ForeignKey(("teamid",), "teams", ("teamid",))]),
        [{"memberid": 1, "name": "ann", "teamid": 2}, {"memberid": 2, "name": "bob",
                                                     "teamid": None}])
    with TestClient(create_app(backend), headers={"Authorization": "Bearer t"}) as client:
        r = client.get("/odata/crm/members", params={"$expand": "*", "$orderby": "memberid"})
        assert r.status_code == 200, r.text
        assert [(v["_teamid_value"], v["teamid"] and v["teamid"]["code"])
                for v in r.json()["value"]] == [(2, "blue"), (None, None)]
        r = client.get("/odata/crm/members", params={"$filter": "teamid/code eq 'red'"})
        assert r.json()["value"] == []
        r = client.get("/odata/crm/members", params={"$filter": "not (teamid/code eq 'red')",
                                                     "$select": "name"})
        assert [v["name"] for v in r.json()["value"]] == ["ann", "bob"]
        r = client.get("/odata/crm/members/$count", params={"$filter": "teamid/teamid eq 2"})
        assert r.text == "1"
        r = client.post("/odata/crm/members", json={"memberid": 3, "name": "cy",
                                                    "teamid@odata.bind": "teams(1)"})
        assert r.status_code == 201 and r.json()["_teamid_value"] == 1, r.text
