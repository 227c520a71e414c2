"""Service document and $metadata: CSDL XML valid against the OASIS schemas, and its content."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_backend import FakeBackend
from lxml import etree
from odata_fixtures import ADMIN, AUTH, PAGE, SCHEMAS, make_backend, open_client
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from dualwrite.api import Principal, create_app, odata_mount
from dualwrite.api.csdl import metadata_xml
from dualwrite.api.model import EntitySetInfo, PropertyInfo, ServiceModel
from dualwrite.model.schema import Column, Kind, TableSchema


@pytest.fixture
def backend() -> FakeBackend:
    return make_backend()


@pytest.fixture
def client(backend: FakeBackend) -> Iterator[TestClient]:
    yield from open_client(backend)


EDMX = "http://docs.oasis-open.org/odata/ns/edmx"
EDM = "http://docs.oasis-open.org/odata/ns/edm"
NS = {"edmx": EDMX, "edm": EDM}


@pytest.fixture(scope="module")
def edmx_schema() -> etree.XMLSchema:
    path = SCHEMAS / "edmx.xsd"
    if not path.exists():
        pytest.fail(f"{path} is missing: the shared folder must sit beside the checkout",
                    pytrace=False)
    # edmx.xsd imports edm.xsd by a relative schemaLocation, which lxml resolves on disk
    return etree.XMLSchema(etree.parse(str(path)))


def _metadata(client: TestClient, env: str) -> etree._Element:
    r = client.get(f"/odata/{env}/$metadata")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/xml")
    assert r.headers["odata-version"] == "4.01"
    return etree.fromstring(r.content)


def test_service_document_lists_entity_sets(client: TestClient) -> None:
    r = client.get("/odata/crm/")
    assert r.status_code == 200
    assert r.headers["odata-version"] == "4.01"
    assert r.headers["content-type"].startswith("application/json;odata.metadata=minimal")
    body = r.json()
    assert body["@odata.context"] == "http://testserver/odata/crm/$metadata"
    # audit_log has no key at all, so it cannot be an entity set; "order lines" is sanitised
    assert body["value"] == [
        {"name": "accounts", "kind": "EntitySet", "url": "accounts"},
        {"name": "order_lines", "kind": "EntitySet", "url": "order_lines"},
    ]
    assert client.get("/odata/crm").json() == body


def test_service_document_metadata_none(client: TestClient) -> None:
    r = client.get("/odata/erp/", headers={"Accept": "application/json;odata.metadata=none"})
    assert "@odata.context" not in r.json()
    assert [v["name"] for v in r.json()["value"]] == ["CustCustomerV3", "products", "invoices"]


@pytest.mark.parametrize("env", ["crm", "erp"])
def test_metadata_validates_against_oasis_schemas(client: TestClient, env: str,
                                                  edmx_schema: etree.XMLSchema) -> None:
    doc = _metadata(client, env)
    assert edmx_schema.validate(doc), edmx_schema.error_log


def test_the_validator_rejects_an_invalid_document(client: TestClient,
                                                   edmx_schema: etree.XMLSchema) -> None:
    """Negative control: the schema check above is not vacuous."""
    doc = _metadata(client, "crm")
    prop = doc.find(".//edm:Property", NS)
    assert prop is not None
    del prop.attrib["Type"]
    assert not edmx_schema.validate(doc)


def test_metadata_of_an_environment_without_tables_validates(
        edmx_schema: etree.XMLSchema) -> None:
    backend = FakeBackend()
    backend.schemas["empty"] = {}
    backend.data["empty"] = {}

    backend.tokens[ADMIN] = Principal("admin", "admin")
    with TestClient(create_app(backend, page_size=PAGE), headers=AUTH) as c:
        assert edmx_schema.validate(_metadata(c, "empty"))
        assert c.get("/odata/empty/").json()["value"] == []


def test_metadata_entity_types_keys_and_types(client: TestClient) -> None:
    doc = _metadata(client, "crm")
    schema = doc.find(".//edm:Schema", NS)
    assert schema is not None and schema.get("Namespace") == "dualwrite.crm"
    acc = schema.find("edm:EntityType[@Name='accounts']", NS)
    assert acc is not None
    assert [p.get("Name") for p in acc.findall("edm:Key/edm:PropertyRef", NS)] == ["accountid"]
    props = {p.get("Name"): dict(p.attrib) for p in acc.findall("edm:Property", NS)}
    assert props["accountid"] == {"Name": "accountid", "Type": "Edm.Guid", "Nullable": "false"}
    assert props["accountnumber"] == {"Name": "accountnumber", "Type": "Edm.String",
                                      "Nullable": "false", "MaxLength": "20"}
    assert props["name"]["MaxLength"] == "160"
    assert props["creditlimit"] == {"Name": "creditlimit", "Type": "Edm.Decimal",
                                    "Precision": "18", "Scale": "2"}
    expected = {"revenue": "Edm.Double", "numberofemployees": "Edm.Int32",
                "customertypecode": "Edm.Int64", "donotemail": "Edm.Boolean",
                "createdon": "Edm.DateTimeOffset", "foundedon": "Edm.Date",
                "opensat": "Edm.TimeOfDay", "logo": "Edm.Binary", "settings": "Edm.String"}
    assert {k: props[k]["Type"] for k in expected} == expected
    assert "Nullable" not in props["revenue"]  # nullable is the default
    assert props["logo"]["MaxLength"] == "1000"
    # sanitised names of "order lines" / "line id"
    lines = schema.find("edm:EntityType[@Name='order_lines']", NS)
    assert lines is not None
    assert [p.get("Name") for p in lines.findall("edm:Property", NS)] == ["line_id", "order_no"]


def test_metadata_composite_key_and_entity_sets(client: TestClient) -> None:
    doc = _metadata(client, "erp")
    cust = doc.find(".//edm:EntityType[@Name='CustCustomerV3']", NS)
    assert cust is not None
    assert [p.get("Name") for p in cust.findall("edm:Key/edm:PropertyRef", NS)] == \
        ["dataAreaId", "CUSTOMERACCOUNT"]
    credit = cust.find("edm:Property[@Name='CREDITLIMIT']", NS)
    assert credit is not None and credit.get("Precision") == "32" and credit.get("Scale") == "6"
    container = doc.find(".//edm:EntityContainer", NS)
    assert container is not None and container.get("Name") == "Container"
    sets = {s.get("Name"): s.get("EntityType") for s in container.findall("edm:EntitySet", NS)}
    assert sets == {"CustCustomerV3": "dualwrite.erp.CustCustomerV3",
                    "products": "dualwrite.erp.products", "invoices": "dualwrite.erp.invoices"}
    # the ETag covers every property, and the container says what $batch supports
    concurrency = container.findall(
        "edm:EntitySet[@Name='products']/edm:Annotation[@Term="
        "'Org.OData.Core.V1.OptimisticConcurrency']/edm:Collection/edm:PropertyPath", NS)
    assert [p.text for p in concurrency] == ["productid", "name", "price"]
    assert container.find("edm:Annotation[@Term='Org.OData.Capabilities.V1.BatchSupport']",
                          NS) is not None


def test_metadata_alternate_keys(client: TestClient) -> None:
    doc = _metadata(client, "crm")
    ann = doc.find(".//edm:EntityType[@Name='accounts']/edm:Annotation", NS)
    assert ann is not None and ann.get("Term") == "Org.OData.Core.V1.AlternateKeys"
    records = ann.findall("edm:Collection/edm:Record", NS)
    assert len(records) == 1 and records[0].get("Type") == "Org.OData.Core.V1.AlternateKey"
    refs = records[0].findall("edm:PropertyValue[@Property='Key']/edm:Collection/edm:Record",
                              NS)
    values = {pv.get("Property"): pv.get("PropertyPath") or pv.get("String")
              for pv in refs[0].findall("edm:PropertyValue", NS)}
    assert values == {"Name": "accountnumber", "Alias": "accountnumber"}
    refs_el = doc.findall("edmx:Reference/edmx:Include", NS)
    assert {r.get("Namespace") for r in refs_el} == {"Org.OData.Core.V1",
                                                     "Org.OData.Capabilities.V1"}


def test_metadata_json(client: TestClient) -> None:
    r = client.get("/odata/crm/$metadata?$format=json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["$EntityContainer"] == "dualwrite.crm.Container"
    acc = doc["dualwrite.crm"]["accounts"]
    assert acc["$Kind"] == "EntityType" and acc["$Key"] == ["accountid"]
    assert acc["accountid"] == {"$Type": "Edm.Guid"}
    assert acc["name"] == {"$MaxLength": 160}
    assert acc["revenue"] == {"$Type": "Edm.Double", "$Nullable": True}
    assert acc["creditlimit"]["$Scale"] == 2
    assert acc["@Core.AlternateKeys"] == [{"Key": [{"Name": "accountnumber",
                                                    "Alias": "accountnumber"}]}]
    container = doc["dualwrite.crm"]["Container"]
    assert container["accounts"]["$Collection"] is True
    assert client.get("/odata/crm/$metadata",
                      headers={"Accept": "application/json"}).json() == doc


@pytest.mark.parametrize(("url", "headers", "status"), [
    ("/odata/crm/$metadata?$format=atom", {}, 406),
    ("/odata/crm/$metadata", {"Accept": "text/html"}, 406),
    ("/odata/crm/$metadata?$top=1", {}, 400),
    ("/odata/crm/$metadata?$format=xml", {}, 200),
])
def test_metadata_formats(client: TestClient, url: str, headers: dict[str, str],
                          status: int) -> None:
    assert client.get(url, headers=headers).status_code == status


def test_decimal_without_declared_scale_is_variable(edmx_schema: etree.XMLSchema) -> None:
    col = Column("amount", Kind.DECIMAL)
    key = Column("id", Kind.INTEGER, nullable=False, primary_key=True)
    es = EntitySetInfo("t", "t", TableSchema("t", {"id": key, "amount": col}, ("id",)),
                       {"id": PropertyInfo("id", key), "amount": PropertyInfo("amount", col)},
                       ("id",))
    doc = etree.fromstring(metadata_xml(ServiceModel("x", "dualwrite.x", {"t": es})))
    amount = doc.find(".//edm:Property[@Name='amount']", NS)
    assert amount is not None and amount.get("Scale") == "variable"
    assert amount.get("Precision") is None
    ident = doc.find(".//edm:Property[@Name='id']", NS)
    assert ident is not None and ident.get("Type") == "Edm.Int64"  # no SQL type: the wider
    assert edmx_schema.validate(doc)


def test_mount_next_to_other_routes(backend: FakeBackend) -> None:
    app = Starlette(routes=[
        Route("/healthz", lambda request: PlainTextResponse("ok")),
        Mount("/api", routes=[odata_mount(backend, page_size=PAGE)]),
    ])
    with TestClient(app, headers=AUTH) as c:
        assert c.get("/healthz").text == "ok"
        body = c.get("/api/odata/crm/").json()
        assert body["@odata.context"] == "http://testserver/api/odata/crm/$metadata"
        r = c.post("/api/odata/erp/products", json={"name": "Mounted"})
        assert r.headers["location"] == "http://testserver/api/odata/erp/products(26)"
