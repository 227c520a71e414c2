"""The entity data model of one environment's OData service, derived from the backend.

Each exposed table is one entity type and one entity set of the same name; each column is one
property, and a lookup column (a foreign key to another exposed table) is also a navigation
property of the column's name, its value then published as ``_<column>_value``. OData names
must be CSDL simple identifiers (letters, digits, underscore; not starting with a digit; at
most 128 characters), so a table or column whose name is not one is published under a
sanitised name (``"order lines"`` -> ``order_lines``); the model maps names both ways so that
nothing else in the layer has to care.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from dualwrite.api.backend import ODataBackend
from dualwrite.model.schema import Column, Kind, TableSchema

__all__ = ["EntitySetInfo", "NavigationInfo", "PropertyInfo", "ServiceModel", "build_model",
           "decimal_facets", "edm_type", "odata_identifier", "published_column",
           "temporal_precision"]

_IDENTIFIER = re.compile(r"[^\W\d]\w{0,127}")


def odata_identifier(name: str, taken: Iterable[str] = ()) -> str:
    """``name`` if it is a valid CSDL simple identifier not in ``taken``, else a sanitised,
    unique variant (invalid characters become ``_``; a numeric suffix resolves clashes)."""
    used = {t.casefold() for t in taken}
    if _IDENTIFIER.fullmatch(name) and not name.startswith("$") and name.casefold() not in used:
        return name
    base = re.sub(r"\W", "_", name)[:120] or "_"
    if base[0].isdigit():
        base = "_" + base
    candidate, n = base, 1
    while candidate.casefold() in used:
        n += 1
        candidate = f"{base}_{n}"
    return candidate


@dataclass(frozen=True)
class PropertyInfo:
    """One structural property: its OData name and the backend column behind it."""

    name: str
    column: Column


@dataclass(frozen=True)
class NavigationInfo:
    """A single-valued navigation property: the lookup column ``column`` of this entity set
    holds ``target_column`` of a row of the entity set ``target`` (the referential
    constraint). It is named as the lookup column; the column's value is published as the
    structural property ``_<column>_value``, as Dataverse's Web API does."""

    name: str
    column: str
    target: str
    target_column: str
    nullable: bool = True


@dataclass
class EntitySetInfo:
    """One entity set (and its entity type, of the same name)."""

    name: str
    table: str
    schema: TableSchema
    properties: dict[str, PropertyInfo]
    #: the entity key, as property names
    key: tuple[str, ...]
    #: alternate keys, as tuples of property names
    alternate_keys: list[tuple[str, ...]] = field(default_factory=list)
    #: navigation properties by name
    navigations: dict[str, NavigationInfo] = field(default_factory=dict)
    _by_fold: dict[str, PropertyInfo] = field(default_factory=dict, repr=False)
    _by_column: dict[str, PropertyInfo] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_fold = {p.name.casefold(): p for p in self.properties.values()}
        self._by_column = {p.column.name: p for p in self.properties.values()}

    def prop(self, name: str) -> PropertyInfo | None:
        """A property by OData name: exact, then case-insensitively (OData 4.01 allows
        case-insensitive names, and ERP column names are upper case)."""
        return self.properties.get(name) or self._by_fold.get(name.casefold())

    def by_column(self, column: str) -> PropertyInfo | None:
        return self._by_column.get(column)

    def navigation(self, name: str) -> NavigationInfo | None:
        """A navigation property by name: exact, then case-insensitively."""
        found = self.navigations.get(name)
        if found is not None:
            return found
        return next((n for n in self.navigations.values()
                     if n.name.casefold() == name.casefold()), None)

    @property
    def key_columns(self) -> tuple[str, ...]:
        return tuple(self.properties[k].column.name for k in self.key)


@dataclass
class ServiceModel:
    """The OData model of one environment."""

    env: str
    namespace: str
    sets: dict[str, EntitySetInfo]
    container: str = "Container"

    def entity_set(self, name: str) -> EntitySetInfo | None:
        """An entity set by name: exact, then case-insensitively."""
        found = self.sets.get(name)
        if found is not None:
            return found
        folded = name.casefold()
        for info in self.sets.values():
            if info.name.casefold() == folded:
                return info
        return None


def build_model(backend: ODataBackend, env: str) -> ServiceModel:
    """The model of ``env`` as the backend describes it now.

    A table with neither a primary key nor an alternate key is left out: every OData entity
    type needs a key to address its entities. Without a primary key, the first alternate key
    whose columns are all NOT NULL serves as the entity key.
    """
    namespace = "dualwrite." + odata_identifier(env)
    sets: dict[str, EntitySetInfo] = {}
    schemas = backend.entity_sets(env)
    for schema in schemas:
        info = _entity_set(backend, env, schema, sets.keys())
        if info is not None:
            sets[info.name] = info
    # a lookup to a table the service publishes becomes a navigation property
    by_table = {es.table: es for es in sets.values()}
    for es in sets.values():
        taken = {p.casefold() for p in es.properties}
        renames: dict[str, str] = {}
        for fk in es.schema.foreign_keys:
            target = by_table.get(fk.table)
            if len(fk.columns) != 1 or target is None or \
                    target.by_column(fk.ref_columns[0]) is None:
                continue
            prop = es.by_column(fk.columns[0])
            if prop is None or prop.name in es.key or prop.name in renames or \
                    any(prop.name in alt for alt in es.alternate_keys):
                continue  # a key is addressed by value; it stays a plain property
            value_name = odata_identifier(f"_{prop.name}_value", taken)
            taken.add(value_name.casefold())
            renames[prop.name] = value_name
            es.navigations[prop.name] = NavigationInfo(
                prop.name, prop.column.name, target.name, fk.ref_columns[0],
                prop.column.nullable)
        if renames:
            es.properties = {renames.get(n, n): PropertyInfo(renames.get(n, n), p.column)
                             for n, p in es.properties.items()}
            es.__post_init__()
    return ServiceModel(env=env, namespace=namespace, sets=sets)


def _entity_set(backend: ODataBackend, env: str, schema: TableSchema,
                taken: Iterable[str]) -> EntitySetInfo | None:
    # "Container" would clash with the entity container's name in CSDL JSON
    name = odata_identifier(schema.name, [*taken, "Container"])
    props: dict[str, PropertyInfo] = {}
    for column in schema.columns.values():
        pname = odata_identifier(column.name, props.keys())
        props[pname] = PropertyInfo(pname, published_column(column))
    by_column = {p.column.name.casefold(): p.name for p in props.values()}

    def names(columns: Iterable[str]) -> tuple[str, ...] | None:
        out = tuple(by_column.get(c.casefold(), "") for c in columns)
        return out if out and all(out) else None

    alternates: list[tuple[str, ...]] = []
    for cols in backend.alternate_keys(env, schema.name):
        mapped = names(cols)
        if mapped is not None and mapped not in alternates:
            alternates.append(mapped)
    key = names(schema.primary_key)
    if key is None:
        key = next((a for a in alternates
                    if all(not props[p].column.nullable for p in a)), None)
        if key is None:
            return None
        alternates.remove(key)
    return EntitySetInfo(name=name, table=schema.name, schema=schema, properties=props,
                         key=key, alternate_keys=alternates)


def published_column(column: Column) -> Column:
    """The column as the service publishes it: the connector's column, except that MariaDB's
    ``tinyint(1)`` (what ``BOOLEAN`` is there) is a boolean. The property's values are then
    read as true/false, written as true/false (the driver stores 1/0) and filtered with
    ``true``/``false`` literals, never as numbers."""
    if column.kind is Kind.INTEGER and column.sql_type.replace(" ", "").upper() == "TINYINT(1)":
        return dataclasses.replace(column, kind=Kind.BOOLEAN)
    return column


def edm_type(column: Column) -> str:
    """The Edm type that carries a column of this kind, exactly.

    Integers are Edm.Int32 when they have 32 bits or fewer and are signed (the declared SQL
    type says so where the connector gave no bits: INT, INTEGER, SMALLINT, TINYINT,
    MEDIUMINT) and Edm.Int64 otherwise: choosing the wider type when unsure never truncates
    a value. A single-precision float is Edm.Single; an interval (and MariaDB's TIME, a
    duration) Edm.Duration; an array a Collection of its elements' type. A time with an
    offset (timetz), network addresses, JSON documents and unknown kinds travel as
    Edm.String holding their text.
    """
    kind = column.kind
    f = column.facets
    if kind is Kind.INTEGER:
        if f.precision is not None:
            return "Edm.Int32" if f.precision < 32 or (f.precision == 32 and not f.unsigned) \
                else "Edm.Int64"
        sql = column.sql_type.upper()
        return "Edm.Int32" if "INT" in sql and "BIG" not in sql else "Edm.Int64"
    if kind is Kind.FLOAT and f.precision is not None and f.precision <= 24:
        return "Edm.Single"
    if kind is Kind.TIME:
        if f.duration:
            return "Edm.Duration"
        if f.time_zone:
            return "Edm.String"
    if kind is Kind.ARRAY:
        element = Column(column.name, f.element or Kind.OTHER,
                         facets=f.element_facets or type(f)())
        return f"Collection({edm_type(element)})"
    return _EDM_TYPES[kind]


_EDM_TYPES: dict[Kind, str] = {
    Kind.STRING: "Edm.String",
    Kind.DECIMAL: "Edm.Decimal",
    Kind.FLOAT: "Edm.Double",
    Kind.BOOLEAN: "Edm.Boolean",
    Kind.DATE: "Edm.Date",
    Kind.DATETIME: "Edm.DateTimeOffset",
    Kind.TIME: "Edm.TimeOfDay",
    Kind.INTERVAL: "Edm.Duration",
    Kind.BINARY: "Edm.Binary",
    Kind.UUID: "Edm.Guid",
    Kind.JSON: "Edm.String",
    Kind.ARRAY: "Collection(Edm.String)",
    Kind.NETWORK: "Edm.String",
    Kind.OTHER: "Edm.String",
}


def temporal_precision(column: Column) -> int | None:
    """Digits of fractional seconds of an Edm.DateTimeOffset, Edm.TimeOfDay or Edm.Duration
    property (CSDL's default, 0, would say the values have none)."""
    if edm_type(column) not in ("Edm.DateTimeOffset", "Edm.TimeOfDay", "Edm.Duration"):
        return None
    f = column.facets
    return f.fraction if f.fraction is not None else 6


_DECIMAL_FACETS = re.compile(r"\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)")


def decimal_facets(column: Column) -> tuple[int | None, int | None]:
    """(precision, scale) of the column (the connector's facets, else as declared in its SQL
    type, e.g. NUMERIC(18, 2))."""
    f = column.facets
    if f.precision is not None:
        return f.precision, f.scale if f.scale is not None else 0
    if f.database and f.scale is None:
        return None, None
    m = _DECIMAL_FACETS.search(column.sql_type)
    if not m:
        return None, None
    return int(m.group(1)), int(m.group(2) or 0)
