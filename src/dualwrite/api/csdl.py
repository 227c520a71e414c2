"""``$metadata``: the CSDL document (EDMX XML, or CSDL JSON; of the version the response's
OData-Version header says) of an environment's service.

One schema (namespace ``dualwrite.<env>``) with one entity type per exposed table and one
entity container holding an entity set per type. Per property: the Edm type of the column's
kind and facets (:func:`~dualwrite.api.model.edm_type`), ``Nullable``, ``MaxLength`` for
strings and binary, ``Precision``/``Scale`` for decimals, ``Precision`` (fractional-second
digits) for timestamps, times and durations. A lookup is a ``NavigationProperty`` with its
``ReferentialConstraint``, bound to its target set by a ``NavigationPropertyBinding``.
Alternate keys are published with the ``Org.OData.Core.V1.AlternateKeys`` annotation, the
ETag's properties with ``Core.OptimisticConcurrency``, and what ``$batch`` supports with
``Org.OData.Capabilities.V1.BatchSupport``.

The XML validates against the OASIS ``edmx.xsd``/``edm.xsd`` (a test proves it).
"""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape, quoteattr

from dualwrite.api.model import (
    EntitySetInfo,
    NavigationInfo,
    PropertyInfo,
    ServiceModel,
    decimal_facets,
    edm_type,
    temporal_precision,
)
from dualwrite.model.schema import Kind

__all__ = ["CORE_VOCABULARY", "metadata_json", "metadata_xml"]

EDMX_NS = "http://docs.oasis-open.org/odata/ns/edmx"
EDM_NS = "http://docs.oasis-open.org/odata/ns/edm"
CORE_VOCABULARY = ("https://oasis-tcs.github.io/odata-vocabularies/vocabularies/"
                   "Org.OData.Core.V1")
CAPABILITIES_VOCABULARY = ("https://oasis-tcs.github.io/odata-vocabularies/vocabularies/"
                           "Org.OData.Capabilities.V1")

#: What the $batch endpoint supports, advertised as Capabilities.BatchSupport.
BATCH_SUPPORT: dict[str, Any] = {
    "Supported": True,
    "ContinueOnErrorSupported": True,
    "ReferencesInRequestBodiesSupported": True,
    "ReferencesAcrossChangeSetsSupported": True,
    "EtagReferencesSupported": True,
    "RequestDependencyConditionsSupported": False,
    "SupportedFormats": ["multipart/mixed", "application/json"],
}


def _facets(prop: PropertyInfo, *, key: bool) -> dict[str, str]:
    """Type and facet attributes of a property, as XML attribute name -> text."""
    column = prop.column
    attrs = {"Type": edm_type(column)}
    if key or not column.nullable:
        attrs["Nullable"] = "false"
    if column.kind in (Kind.STRING, Kind.BINARY) and column.length:
        attrs["MaxLength"] = str(column.length)
    if column.kind is Kind.DECIMAL:
        precision, scale = decimal_facets(column)
        if precision is not None:
            attrs["Precision"] = str(precision)
        # CSDL's default Scale is 0 (an integer); "variable" keeps the digits the database has
        attrs["Scale"] = str(scale) if scale is not None else "variable"
    digits = temporal_precision(column)
    if digits is not None:
        attrs["Precision"] = str(digits)
    return attrs


def _attrs(attrs: dict[str, str]) -> str:
    return "".join(f" {k}={quoteattr(v)}" for k, v in attrs.items())


def _alternate_keys_xml(entity_set: EntitySetInfo, indent: str) -> list[str]:
    lines = [f'{indent}<Annotation Term="Org.OData.Core.V1.AlternateKeys">',
             f"{indent}  <Collection>"]
    for alt in entity_set.alternate_keys:
        lines += [f'{indent}    <Record Type="Org.OData.Core.V1.AlternateKey">',
                  f'{indent}      <PropertyValue Property="Key">',
                  f"{indent}        <Collection>"]
        for name in alt:
            lines += [f'{indent}          <Record Type="Org.OData.Core.V1.PropertyRef">',
                      f'{indent}            <PropertyValue Property="Name" '
                      f'PropertyPath={quoteattr(name)}/>',
                      f'{indent}            <PropertyValue Property="Alias" '
                      f'String={quoteattr(name)}/>',
                      f"{indent}          </Record>"]
        lines += [f"{indent}        </Collection>", f"{indent}      </PropertyValue>",
                  f"{indent}    </Record>"]
    lines += [f"{indent}  </Collection>", f"{indent}</Annotation>"]
    return lines


def _batch_support_xml(indent: str) -> list[str]:
    lines = [f'{indent}<Annotation Term="Org.OData.Capabilities.V1.BatchSupport">',
             f'{indent}  <Record Type="Org.OData.Capabilities.V1.BatchSupportType">']
    for name, value in BATCH_SUPPORT.items():
        if isinstance(value, bool):
            lines.append(f'{indent}    <PropertyValue Property="{name}" '
                         f'Bool="{str(value).lower()}"/>')
        else:
            items = "".join(f"<String>{escape(v)}</String>" for v in value)
            lines.append(f'{indent}    <PropertyValue Property="{name}">'
                         f"<Collection>{items}</Collection></PropertyValue>")
    lines += [f"{indent}  </Record>", f"{indent}</Annotation>"]
    return lines


def metadata_xml(model: ServiceModel, version: str = "4.01") -> bytes:
    """The CSDL XML document of ``model``, of OData ``version`` (the one the response
    carries in its OData-Version header)."""
    ns = model.namespace
    out = ['<?xml version="1.0" encoding="utf-8"?>',
           f'<edmx:Edmx xmlns:edmx="{EDMX_NS}" Version="{version}">',
           f'  <edmx:Reference Uri="{CORE_VOCABULARY}.xml">',
           '    <edmx:Include Namespace="Org.OData.Core.V1" Alias="Core"/>',
           "  </edmx:Reference>",
           f'  <edmx:Reference Uri="{CAPABILITIES_VOCABULARY}.xml">',
           '    <edmx:Include Namespace="Org.OData.Capabilities.V1" Alias="Capabilities"/>',
           "  </edmx:Reference>",
           "  <edmx:DataServices>",
           f'    <Schema xmlns="{EDM_NS}" Namespace={quoteattr(ns)}>']
    for es in model.sets.values():
        out.append(f"      <EntityType Name={quoteattr(es.name)}>")
        out.append("        <Key>")
        out += [f"          <PropertyRef Name={quoteattr(k)}/>" for k in es.key]
        out.append("        </Key>")
        for name, prop in es.properties.items():
            attrs = {"Name": name, **_facets(prop, key=name in es.key)}
            out.append(f"        <Property{_attrs(attrs)}/>")
        for nav in es.navigations.values():
            attrs = {"Name": nav.name, "Type": f"{ns}.{nav.target}"}
            if not nav.nullable:
                attrs["Nullable"] = "false"
            own, referenced = _constraint(model, es, nav)
            out += [f"        <NavigationProperty{_attrs(attrs)}>",
                    f"          <ReferentialConstraint Property={quoteattr(own)} "
                    f"ReferencedProperty={quoteattr(referenced)}/>",
                    "        </NavigationProperty>"]
        if es.alternate_keys:
            out += _alternate_keys_xml(es, "        ")
        out.append("      </EntityType>")
    # CSDL requires at least one child in a container: an environment without tables has none
    if model.sets:
        out.append(f"      <EntityContainer Name={quoteattr(model.container)}>")
        out += _batch_support_xml("        ")
        for es in model.sets.values():
            out.append(f"        <EntitySet Name={quoteattr(es.name)} "
                       f"EntityType={quoteattr(ns + '.' + es.name)}>")
            out += [f"          <NavigationPropertyBinding Path={quoteattr(n.name)} "
                    f"Target={quoteattr(n.target)}/>" for n in es.navigations.values()]
            out.append('          <Annotation Term="Org.OData.Core.V1.OptimisticConcurrency">')
            out.append("            <Collection>")
            out += [f"              <PropertyPath>{escape(p)}</PropertyPath>"
                    for p in es.properties]
            out.append("            </Collection>")
            out.append("          </Annotation>")
            out.append("        </EntitySet>")
        out.append("      </EntityContainer>")
    out += ["    </Schema>", "  </edmx:DataServices>", "</edmx:Edmx>", ""]
    return "\n".join(out).encode("utf-8")


def _constraint(model: ServiceModel, es: EntitySetInfo, nav: NavigationInfo
                ) -> tuple[str, str]:
    """(property, referenced property) of a navigation property's referential constraint."""
    own = es.by_column(nav.column)
    referenced = model.sets[nav.target].by_column(nav.target_column)
    assert own is not None and referenced is not None  # build_model checked both
    return own.name, referenced.name


def _json_property(prop: PropertyInfo, *, key: bool) -> dict[str, Any]:
    """A property in CSDL JSON, where Edm.String is the default type and Nullable false."""
    column = prop.column
    out: dict[str, Any] = {}
    if edm_type(column) != "Edm.String":
        out["$Type"] = edm_type(column)
    if column.nullable and not key:
        out["$Nullable"] = True
    if column.kind in (Kind.STRING, Kind.BINARY) and column.length:
        out["$MaxLength"] = column.length
    if column.kind is Kind.DECIMAL:
        precision, scale = decimal_facets(column)
        if precision is not None:
            out["$Precision"] = precision
        out["$Scale"] = scale if scale is not None else "variable"
    digits = temporal_precision(column)
    if digits is not None:
        out["$Precision"] = digits
    if edm_type(column).startswith("Collection("):
        out["$Collection"] = True
        out["$Type"] = edm_type(column)[len("Collection("):-1]
    return out


def metadata_json(model: ServiceModel, version: str = "4.01") -> dict[str, Any]:
    """The CSDL JSON document of ``model`` (``$metadata?$format=json``)."""
    ns = model.namespace
    schema: dict[str, Any] = {}
    for es in model.sets.values():
        etype: dict[str, Any] = {"$Kind": "EntityType", "$Key": list(es.key)}
        for name, prop in es.properties.items():
            etype[name] = _json_property(prop, key=name in es.key)
        for nav in es.navigations.values():
            own, referenced = _constraint(model, es, nav)
            etype[nav.name] = {"$Kind": "NavigationProperty", "$Type": f"{ns}.{nav.target}",
                               "$ReferentialConstraint": {own: referenced}}
            if nav.nullable:
                etype[nav.name]["$Nullable"] = True
        if es.alternate_keys:
            etype["@Core.AlternateKeys"] = [
                {"Key": [{"Name": n, "Alias": n} for n in alt]} for alt in es.alternate_keys]
        schema[es.name] = etype
    doc: dict[str, Any] = {
        "$Version": version,
        "$Reference": {
            f"{CORE_VOCABULARY}.json": {
                "$Include": [{"$Namespace": "Org.OData.Core.V1", "$Alias": "Core"}]},
            f"{CAPABILITIES_VOCABULARY}.json": {
                "$Include": [{"$Namespace": "Org.OData.Capabilities.V1",
                              "$Alias": "Capabilities"}]},
        },
    }
    if model.sets:
        container: dict[str, Any] = {"$Kind": "EntityContainer",
                                     "@Capabilities.BatchSupport": dict(BATCH_SUPPORT)}
        for es in model.sets.values():
            container[es.name] = {"$Collection": True, "$Type": f"{ns}.{es.name}",
                                  "@Core.OptimisticConcurrency": list(es.properties)}
            if es.navigations:
                container[es.name]["$NavigationPropertyBinding"] = {
                    n.name: n.target for n in es.navigations.values()}
        schema[model.container] = container
        doc["$EntityContainer"] = f"{ns}.{model.container}"
    doc[ns] = schema
    return doc
