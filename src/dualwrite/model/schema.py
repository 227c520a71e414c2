"""What a connector tells about a table: columns, types, keys, foreign keys. Pure data."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Kind(Enum):
    """A portable column type family; enough to check that two columns can hold each other."""

    STRING = "string"
    INTEGER = "integer"
    DECIMAL = "decimal"
    FLOAT = "float"
    BOOLEAN = "boolean"
    DATE = "date"
    DATETIME = "datetime"
    TIME = "time"
    BINARY = "binary"
    UUID = "uuid"
    JSON = "json"
    OTHER = "other"


# Which kinds can carry a value of which other kind without loss of meaning. A value map
# ("><") may bridge any pair, so this is only checked for untransformed lines.
_COMPATIBLE: dict[Kind, frozenset[Kind]] = {
    Kind.STRING: frozenset({Kind.STRING, Kind.UUID, Kind.INTEGER, Kind.DECIMAL, Kind.DATE,
                            Kind.DATETIME, Kind.TIME, Kind.BOOLEAN, Kind.JSON}),
    Kind.INTEGER: frozenset({Kind.INTEGER, Kind.DECIMAL, Kind.FLOAT, Kind.BOOLEAN}),
    Kind.DECIMAL: frozenset({Kind.INTEGER, Kind.DECIMAL, Kind.FLOAT}),
    Kind.FLOAT: frozenset({Kind.INTEGER, Kind.DECIMAL, Kind.FLOAT}),
    Kind.BOOLEAN: frozenset({Kind.BOOLEAN, Kind.INTEGER}),
    Kind.DATE: frozenset({Kind.DATE, Kind.DATETIME}),
    Kind.DATETIME: frozenset({Kind.DATETIME, Kind.DATE}),
    Kind.TIME: frozenset({Kind.TIME}),
    Kind.BINARY: frozenset({Kind.BINARY}),
    Kind.UUID: frozenset({Kind.UUID, Kind.STRING}),
    Kind.JSON: frozenset({Kind.JSON, Kind.STRING}),
    Kind.OTHER: frozenset(Kind),
}


def can_hold(target: Kind, source: Kind) -> bool:
    """True when a column of kind ``target`` can store values read from kind ``source``."""
    return target is Kind.OTHER or source in _COMPATIBLE[target]


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    nullable: bool = True
    has_default: bool = False
    primary_key: bool = False
    length: int | None = None
    sql_type: str = ""

    @property
    def required(self) -> bool:
        """A write that creates a row must supply this column."""
        return not self.nullable and not self.has_default


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    table: str
    ref_columns: tuple[str, ...]


@dataclass
class TableSchema:
    name: str
    columns: dict[str, Column]
    primary_key: tuple[str, ...] = ()
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    unique: list[tuple[str, ...]] = field(default_factory=list)

    def column(self, name: str) -> Column | None:
        """Find a column by exact name, then case-insensitively (FO names are upper case)."""
        col = self.columns.get(name)
        if col is not None:
            return col
        folded = name.casefold()
        for cname, c in self.columns.items():
            if cname.casefold() == folded:
                return c
        return None

    def references(self, column: str) -> ForeignKey | None:
        """The single-column foreign key through ``column``, if any."""
        for fk in self.foreign_keys:
            if len(fk.columns) == 1 and fk.columns[0].casefold() == column.casefold():
                return fk
        return None


def find_table(names: list[str] | set[str], wanted: str) -> str | None:
    """Resolve a table name exactly, then case-insensitively, then as a plural/singular
    (polymorphic lookups name entities, ``Account``, whose tables are often ``accounts``)."""
    if wanted in names:
        return wanted
    folded = {n.casefold(): n for n in names}
    w = wanted.casefold()
    for cand in (w, w + "s", w + "es", w.removesuffix("s")):
        if cand in folded:
            return folded[cand]
    return None
