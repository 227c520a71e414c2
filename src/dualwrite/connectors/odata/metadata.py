"""An OData v4 service's ``$metadata`` (CSDL XML) as the connector seam's table descriptions.

Pure: text in, data out, no I/O. Each entity set is a table; its entity type's properties
are its columns, each a :class:`~dualwrite.model.schema.Kind` with the facets the Edm type
and its ``MaxLength``/``Precision``/``Scale`` give. The type's ``Key`` is the primary key,
``Core.AlternateKeys`` are its unique keys, ``Core.Computed`` (and a ``DefaultValue``) mark
what the service fills itself, and a single-valued navigation property with a
``ReferentialConstraint`` to another entity set is a foreign key. What the connector needs
beyond the schema (the Edm type of each property, to write its literals and decode its JSON
values; whether ``$batch`` and optimistic concurrency are advertised) is kept beside it in
:class:`EntitySet`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field

from dualwrite.model.schema import (
    FLOAT_SPECIALS,
    Column,
    Facets,
    ForeignKey,
    Kind,
    TableSchema,
)

EDMX = "http://docs.oasis-open.org/odata/ns/edmx"
EDM = "http://docs.oasis-open.org/odata/ns/edm"
CORE = "Org.OData.Core.V1"
CAPABILITIES = "Org.OData.Capabilities.V1"
DATABASE = "OData"

_INT_BITS = {"Edm.Byte": 8, "Edm.SByte": 8, "Edm.Int16": 16, "Edm.Int32": 32, "Edm.Int64": 64}


#: (element, its target path) -> the annotations on it, by full term name
Annotate = Callable[[ET.Element, str], dict[str, ET.Element]]


class MetadataError(ValueError):
    """The document is not CSDL this module can read; the message says what is wrong."""


@dataclass(frozen=True)
class EntitySet:
    """One entity set: its table description and what reading and writing it needs."""

    name: str
    schema: TableSchema
    #: property name -> its Edm type (``Edm.Int32``; an enum, complex or collection type as
    #: written, with kind OTHER)
    edm: dict[str, str]
    #: the set's entity type asks for If-Match (``Core.OptimisticConcurrency``)
    etags: bool = False


@dataclass
class ServiceMetadata:
    """What ``$metadata`` says: the entity sets by name, and whether ``$batch`` is offered."""

    sets: dict[str, EntitySet] = field(default_factory=dict)
    #: False only when the container says ``Capabilities.BatchSupported`` false
    batch: bool = True


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


class _Terms:
    """Annotation terms as written (``Core.Computed``, ``Org.OData.Core.V1.Computed``, or
    under any alias an ``edmx:Include`` gives the vocabulary), resolved to full names."""

    def __init__(self, root: ET.Element) -> None:
        self.alias: dict[str, str] = {}
        for inc in root.iter(_q(EDMX, "Include")):
            ns, alias = inc.get("Namespace"), inc.get("Alias")
            if ns and alias:
                self.alias[alias] = ns
        for schema in root.iter(_q(EDM, "Schema")):
            ns, alias = schema.get("Namespace"), schema.get("Alias")
            if ns and alias:
                self.alias[alias] = ns

    def full(self, name: str) -> str:
        prefix, _, last = name.rpartition(".")
        return f"{self.alias.get(prefix, prefix)}.{last}" if prefix else name


def _bool_annotation(el: ET.Element) -> bool:
    """The value of a Boolean annotation element (no ``Bool`` attribute means true)."""
    value = el.get("Bool")
    if value is None:
        inner = el.find(_q(EDM, "Bool"))
        value = inner.text if inner is not None else "true"
    return (value or "").strip().lower() == "true"


def _facets(edm: str, el: ET.Element) -> tuple[Kind, Facets, int | None]:
    """Kind, facets and length of a property of Edm type ``edm``."""

    def number(attr: str) -> int | None:
        v = el.get(attr)
        return int(v) if v is not None and v.isdigit() else None

    name = edm
    if edm in _INT_BITS:
        return Kind.INTEGER, Facets(database=DATABASE, type_name=name,
                                    precision=_INT_BITS[edm], unsigned=edm == "Edm.Byte"), None
    if edm == "Edm.String":
        length = number("MaxLength")
        return Kind.STRING, Facets(database=DATABASE, type_name=name), length
    if edm == "Edm.Decimal":
        return Kind.DECIMAL, Facets(database=DATABASE, type_name=name,
                                    precision=number("Precision"), scale=number("Scale")), None
    if edm in ("Edm.Double", "Edm.Single"):
        return Kind.FLOAT, Facets(database=DATABASE, type_name=name,
                                  precision=53 if edm == "Edm.Double" else 24,
                                  specials=FLOAT_SPECIALS - {"-0"}), None
    if edm == "Edm.Boolean":
        return Kind.BOOLEAN, Facets(database=DATABASE, type_name=name), None
    if edm == "Edm.Date":
        return Kind.DATE, Facets(database=DATABASE, type_name=name, years=(1, 9999)), None
    if edm == "Edm.DateTimeOffset":
        # CSDL: an absent Precision means no fractional seconds
        return Kind.DATETIME, Facets(database=DATABASE, type_name=name, time_zone=True,
                                     fraction=number("Precision") or 0,
                                     years=(1, 9999)), None
    if edm == "Edm.TimeOfDay":
        return Kind.TIME, Facets(database=DATABASE, type_name=name,
                                 fraction=number("Precision") or 0), None
    if edm == "Edm.Guid":
        return Kind.UUID, Facets(database=DATABASE, type_name=name), None
    if edm == "Edm.Binary":
        return Kind.BINARY, Facets(database=DATABASE, type_name=name), number("MaxLength")
    return Kind.OTHER, Facets(database=DATABASE, type_name=name), None


def parse_metadata(text: str | bytes) -> ServiceMetadata:
    """The entity sets of a CSDL XML document. Raises MetadataError when it is not one."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise MetadataError(f"$metadata is not well-formed XML ({exc})") from None
    if root.tag != _q(EDMX, "Edmx"):
        raise MetadataError(f"$metadata is not an OData v4 CSDL document (its root is "
                            f"{root.tag!r}, not edmx:Edmx)")
    terms = _Terms(root)
    types: dict[str, ET.Element] = {}
    for schema in root.iter(_q(EDM, "Schema")):
        ns = schema.get("Namespace", "")
        alias = schema.get("Alias")
        for et in schema.findall(_q(EDM, "EntityType")):
            for prefix in filter(None, (ns, alias)):
                types[f"{prefix}.{et.get('Name')}"] = et
    # annotations written apart from their target: <Annotations Target="ns.Type/prop">
    external: dict[str, list[ET.Element]] = {}
    for group in root.iter(_q(EDM, "Annotations")):
        target = group.get("Target", "")
        head, sep, tail = target.partition("/")
        full_target = terms.full(head) + sep + tail
        external.setdefault(full_target, []).extend(group.findall(_q(EDM, "Annotation")))

    def annotations(el: ET.Element, target: str) -> dict[str, ET.Element]:
        found = {terms.full(a.get("Term", "")): a for a in external.get(target, [])}
        found.update({terms.full(a.get("Term", "")): a for a in el.findall(_q(EDM, "Annotation"))})
        return found

    meta = ServiceMetadata()
    containers = list(root.iter(_q(EDM, "EntityContainer")))
    if not containers:
        raise MetadataError("$metadata has no EntityContainer: the service publishes no "
                            "entity sets")
    for container in containers:
        cname = container.get("Name", "")
        owner = next((s.get("Namespace", "") for s in root.iter(_q(EDM, "Schema"))
                      if container in list(s)), "")
        cann = annotations(container, f"{owner}.{cname}")
        batch = cann.get(f"{CAPABILITIES}.BatchSupported")
        if batch is not None and not _bool_annotation(batch):
            meta.batch = False
        for es in container.findall(_q(EDM, "EntitySet")):
            set_name = es.get("Name", "")
            found = types.get(es.get("EntityType", "")) or types.get(
                terms.full(es.get("EntityType", "")))
            if found is None:
                raise MetadataError(f"entity set {set_name!r} names entity type "
                                    f"{es.get('EntityType')!r}, which $metadata does not define")
            sann = annotations(es, f"{owner}.{cname}/{set_name}")
            meta.sets[set_name] = _entity_set(set_name, found, types, annotations, sann, es)
    return meta


def _chain(et: ET.Element, types: dict[str, ET.Element]) -> list[ET.Element]:
    """The entity type and its base types, base first."""
    out = [et]
    seen = {id(et)}
    while (base := out[0].get("BaseType")) and base in types and id(types[base]) not in seen:
        seen.add(id(types[base]))
        out.insert(0, types[base])
    return out


def _entity_set(name: str, et: ET.Element, types: dict[str, ET.Element],
                ann: Annotate, set_annotations: dict[str, ET.Element],
                es: ET.Element) -> EntitySet:
    chain = _chain(et, types)
    qualified = next((k for k, v in types.items() if v is et), name)
    key: list[str] = []
    columns: dict[str, Column] = {}
    edm: dict[str, str] = {}
    type_ann: dict[str, ET.Element] = {}
    for t in chain:
        tq = next((k for k, v in types.items() if v is t), name)
        type_ann.update(ann(t, tq))
        key_el = t.find(_q(EDM, "Key"))
        if key_el is not None:
            key = [r.get("Name", "") for r in key_el.findall(_q(EDM, "PropertyRef"))]
        for p in t.findall(_q(EDM, "Property")):
            pname = p.get("Name", "")
            ptype = p.get("Type", "")
            pann = ann(p, f"{tq}/{pname}")
            kind, facets, length = _facets(ptype, p)
            computed = any(pann.get(f"{CORE}.{term}") is not None
                           and _bool_annotation(pann[f"{CORE}.{term}"])
                           for term in ("Computed", "ComputedDefaultValue"))
            columns[pname] = Column(
                name=pname, kind=kind,
                nullable=p.get("Nullable", "true").lower() != "false",
                has_default=computed or p.get("DefaultValue") is not None,
                length=length, sql_type=ptype, facets=facets)
            edm[pname] = ptype
    if not key:
        raise MetadataError(f"the entity type of set {name!r} ({qualified}) has no Key")
    for k in key:
        if k not in columns:
            raise MetadataError(f"the key of entity set {name!r} names {k!r}, which is not a "
                                "property of its entity type (a key through a complex type is "
                                "not supported)")
        c = columns[k]
        columns[k] = Column(c.name, c.kind, nullable=False, has_default=c.has_default,
                            primary_key=True, length=c.length, sql_type=c.sql_type,
                            facets=c.facets)
    unique = _alternate_keys({**type_ann, **set_annotations}, columns)
    fks: list[ForeignKey] = []
    bindings = {b.get("Path", ""): b.get("Target", "")
                for b in es.findall(_q(EDM, "NavigationPropertyBinding"))}
    for t in chain:
        for nav in t.findall(_q(EDM, "NavigationProperty")):
            if nav.get("Type", "").startswith("Collection("):
                continue
            target = bindings.get(nav.get("Name", ""), "").rpartition("/")[2]
            pairs = [(r.get("Property", ""), r.get("ReferencedProperty", ""))
                     for r in nav.findall(_q(EDM, "ReferentialConstraint"))]
            if target and pairs and all(p in columns for p, _ in pairs):
                fks.append(ForeignKey(tuple(p for p, _ in pairs), target,
                                      tuple(r for _, r in pairs)))
    etags = f"{CORE}.OptimisticConcurrency" in set_annotations
    schema = TableSchema(name=name, columns=columns, primary_key=tuple(key), foreign_keys=fks,
                         unique=unique)
    return EntitySet(name, schema, edm, etags=etags)


def _alternate_keys(ann: dict[str, ET.Element], columns: dict[str, Column]
                    ) -> list[tuple[str, ...]]:
    """``Core.AlternateKeys``: each record's ``Key`` collection of ``PropertyRef`` records."""
    el = ann.get(f"{CORE}.AlternateKeys")
    if el is None:
        return []
    out: list[tuple[str, ...]] = []
    for record in el.iter(_q(EDM, "Record")):
        if not record.get("Type", "").endswith("AlternateKey") and record.find(
                f"{_q(EDM, 'PropertyValue')}[@Property='Key']") is None:
            continue
        names: list[str] = []
        for pv in record.iter(_q(EDM, "PropertyValue")):
            if pv.get("Property") == "Name":
                path = pv.get("PropertyPath")
                if path is None:
                    inner = pv.find(_q(EDM, "PropertyPath"))
                    path = inner.text if inner is not None else None
                if path:
                    names.append(path.strip())
        if names and all(n in columns for n in names) and tuple(names) not in out:
            out.append(tuple(names))
    return out
