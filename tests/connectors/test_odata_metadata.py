"""$metadata (CSDL XML) to table descriptions, and OData JSON values to the model's kinds:
pure functions, no service."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest

from dualwrite.connectors.odata.connector import ServiceAddress, decode, dumps, encode, literal
from dualwrite.connectors.odata.metadata import MetadataError, parse_metadata
from dualwrite.errors import ConfigError
from dualwrite.model.schema import ForeignKey, Kind

CSDL = """<?xml version="1.0" encoding="utf-8"?>
<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">
  <edmx:Reference Uri="https://example.org/Org.OData.Core.V1.xml">
    <edmx:Include Alias="C" Namespace="Org.OData.Core.V1"/>
  </edmx:Reference>
  <edmx:DataServices>
    <Schema Namespace="Sales.Model" Alias="S" xmlns="http://docs.oasis-open.org/odata/ns/edm">
      <EntityType Name="Base" Abstract="true">
        <Key><PropertyRef Name="company"/><PropertyRef Name="no"/></Key>
        <Property Name="company" Type="Edm.String" MaxLength="4" Nullable="false"/>
        <Property Name="no" Type="Edm.Int64" Nullable="false"/>
        <Property Name="changed" Type="Edm.DateTimeOffset" Precision="3">
          <Annotation Term="C.Computed" Bool="true"/>
        </Property>
      </EntityType>
      <EntityType Name="Order" BaseType="S.Base">
        <Property Name="ref" Type="Edm.Guid"/>
        <Property Name="amount" Type="Edm.Decimal" Precision="18" Scale="4"/>
        <Property Name="rate" Type="Edm.Double"/>
        <Property Name="blob" Type="Edm.Binary" MaxLength="16"/>
        <Property Name="status" Type="Edm.Byte" DefaultValue="1"/>
        <Property Name="group_id" Type="Edm.Int32"/>
        <NavigationProperty Name="group" Type="Sales.Model.Group">
          <ReferentialConstraint Property="group_id" ReferencedProperty="id"/>
        </NavigationProperty>
        <NavigationProperty Name="lines" Type="Collection(Sales.Model.Group)"/>
      </EntityType>
      <EntityType Name="Group">
        <Key><PropertyRef Name="id"/></Key>
        <Property Name="id" Type="Edm.Int32" Nullable="false"/>
        <Property Name="code" Type="Edm.String"/>
      </EntityType>
      <EntityContainer Name="Service">
        <EntitySet Name="Orders" EntityType="S.Order">
          <NavigationPropertyBinding Path="group" Target="Groups"/>
          <Annotation Term="Org.OData.Core.V1.OptimisticConcurrency">
            <Collection><PropertyPath>changed</PropertyPath></Collection>
          </Annotation>
        </EntitySet>
        <EntitySet Name="Groups" EntityType="Sales.Model.Group"/>
        <Annotation Term="Org.OData.Capabilities.V1.BatchSupported" Bool="false"/>
      </EntityContainer>
      <Annotations Target="S.Group">
        <Annotation Term="C.AlternateKeys">
          <Collection>
            <Record Type="Org.OData.Core.V1.AlternateKey">
              <PropertyValue Property="Key">
                <Collection>
                  <Record Type="Org.OData.Core.V1.PropertyRef">
                    <PropertyValue Property="Name" PropertyPath="code"/>
                  </Record>
                </Collection>
              </PropertyValue>
            </Record>
          </Collection>
        </Annotation>
      </Annotations>
    </Schema>
  </edmx:DataServices>
</edmx:Edmx>"""


def test_entity_sets_become_tables_with_kinds_keys_and_alternate_keys() -> None:
    meta = parse_metadata(CSDL)
    assert sorted(meta.sets) == ["Groups", "Orders"]
    assert meta.batch is False
    orders = meta.sets["Orders"]
    s = orders.schema
    assert s.primary_key == ("company", "no")  # from the base type
    assert orders.etags
    cols = s.columns
    assert (cols["company"].kind, cols["company"].length, cols["company"].nullable) == (
        Kind.STRING, 4, False)
    assert cols["no"].kind is Kind.INTEGER and cols["no"].facets.precision == 64
    assert cols["changed"].kind is Kind.DATETIME and cols["changed"].has_default
    assert cols["changed"].facets.time_zone and cols["changed"].facets.fraction == 3
    assert cols["ref"].kind is Kind.UUID
    assert (cols["amount"].facets.precision, cols["amount"].facets.scale) == (18, 4)
    assert cols["rate"].kind is Kind.FLOAT and cols["rate"].facets.holds("NaN")
    assert cols["blob"].kind is Kind.BINARY and cols["blob"].length == 16
    assert cols["status"].has_default and cols["status"].facets.unsigned
    assert s.foreign_keys == [ForeignKey(("group_id",), "Groups", ("id",))]
    assert "lines" not in cols and "group" not in cols
    assert meta.sets["Groups"].schema.unique == [("code",)]
    assert not meta.sets["Groups"].etags


@pytest.mark.parametrize(("text", "words"), [
    ("<html>not it</html>", "not an OData v4 CSDL document"),
    ("<edmx:Edmx", "not well-formed XML"),
    (CSDL.replace('EntityType="S.Order"', 'EntityType="S.Nope"'), "S.Nope"),
    (CSDL.replace('<PropertyRef Name="id"/>', ""), "has no Key"),
])
def test_what_is_not_csdl_is_named(text: str, words: str) -> None:
    with pytest.raises(MetadataError, match=words):
        parse_metadata(text)


def test_values_round_trip_through_their_edm_types() -> None:
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    cases = [("Edm.Decimal", Decimal("12345678901234567.0001")), ("Edm.Int64", 2**60),
             ("Edm.Date", dt.date(2024, 2, 29)), ("Edm.DateTimeOffset", when),
             ("Edm.TimeOfDay", dt.time(23, 59, 59, 5)), ("Edm.Guid", uuid.uuid4()),
             ("Edm.Binary", b"\x00\xff?>"), ("Edm.Boolean", False), ("Edm.String", "x'y")]
    for edm, value in cases:
        assert decode(edm, encode(edm, value)) == value, edm
    assert decode("Edm.DateTimeOffset", "2024-05-06T09:08:09.1234567+02:00") == when.replace(
        microsecond=123456)
    assert encode("Edm.DateTimeOffset", dt.datetime(2024, 1, 1)) == "2024-01-01T00:00:00Z"
    assert decode("Edm.Double", "NaN") != decode("Edm.Double", "NaN")  # a NaN
    assert encode("Edm.Double", float("-inf")) == "-INF"
    assert decode("Edm.Decimal", "1.10") == Decimal("1.10")  # IEEE754Compatible strings
    with pytest.raises(ValueError):
        decode("Edm.Int32", "x1")


def test_decimals_are_written_exactly_and_literals_typed() -> None:
    assert dumps({"a": Decimal("0.1000000000000000000001"), "b": [Decimal("-5")]}) == \
        '{"a": 0.1000000000000000000001, "b": [-5]}'
    assert literal("Edm.String", "O'Neil") == "'O''Neil'"
    assert literal("Edm.Int32", 5) == "5"
    assert literal("Edm.Date", dt.date(2024, 1, 2)) == "2024-01-02"
    assert literal("Edm.DateTimeOffset", dt.datetime(2024, 1, 2, 3)) == "2024-01-02T03:00:00Z"
    assert literal("Edm.Guid", uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"


def test_the_url_gives_root_credentials_and_options_and_never_shows_a_secret() -> None:
    a = ServiceAddress("erp", "odata+https://me:p%40ss@h.example:8443/sap/erp?timeout=5")
    assert (a.root, a.user, a.password, a.timeout, a.token) == (
        "https://h.example:8443/sap/erp/", "me", "p@ss", 5.0, None)
    b = ServiceAddress("erp", "odata+http://h/svc/?token=abc&retries=2")
    assert (b.token, b.retries, b.user) == ("abc", 2, None)
    with pytest.raises(ConfigError) as info:
        ServiceAddress("erp", "odata+http://h/svc/?tokne=secret-value")
    assert "tokne" in str(info.value) and "secret-value" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        ServiceAddress("erp", "odata+ftp://me:secret-value@h/")
    assert "secret-value" not in str(info.value)
