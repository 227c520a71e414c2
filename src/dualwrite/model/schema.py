"""What a connector tells about a table: columns, types, keys, foreign keys. Pure data.

A column's type is a :class:`Kind` (a small set of portable families) with its
:class:`Facets` (what values of that kind this column holds, as its database defines them:
precision, scale, length, time zone, special values). Connectors fill both from reflection;
:mod:`dualwrite.model.conversion` decides from them how a value of one column becomes a value
of another, or that it cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Kind(Enum):
    """A portable column type family. The Python value a connector reads for each kind:

    STRING ``str`` · INTEGER ``int`` · DECIMAL ``Decimal`` (NaN and ±Infinity where the column
    holds them) · FLOAT ``float`` · BOOLEAN ``bool`` · DATE ``datetime.date`` · DATETIME
    ``datetime.datetime`` (without a zone: UTC) · TIME ``datetime.time`` (a duration outside a
    day, as MariaDB's TIME holds, is a ``timedelta``) · INTERVAL
    :class:`~dualwrite.model.values.Interval` · BINARY ``bytes`` · UUID ``uuid.UUID`` · JSON
    :class:`~dualwrite.model.values.JsonText` · ARRAY ``list`` of the element kind's values ·
    NETWORK an :mod:`ipaddress` object (or text for a MAC address) · OTHER whatever the driver
    gives. Temporal values Python cannot hold arrive as the special values of
    :mod:`dualwrite.model.values` (``INFINITY``, ``END_OF_DAY``, ``TemporalText``).
    """

    STRING = "string"
    INTEGER = "integer"
    DECIMAL = "decimal"
    FLOAT = "float"
    BOOLEAN = "boolean"
    DATE = "date"
    DATETIME = "datetime"
    TIME = "time"
    INTERVAL = "interval"
    BINARY = "binary"
    UUID = "uuid"
    JSON = "json"
    ARRAY = "array"
    NETWORK = "network"
    OTHER = "other"


# Special values a column may hold beyond the ordinary ones of its kind (Facets.specials).
NAN = "NaN"
INF = "Infinity"
NEG_INF = "-Infinity"
NEG_ZERO = "-0"
#: dates and timestamps: PostgreSQL's 'infinity' and '-infinity'
INFINITE = "infinity"
NEG_INFINITE = "-infinity"
#: times: 24:00:00, the end of the day
END_OF_DAY = "24:00:00"
#: the special values of each kind that exist at all
FLOAT_SPECIALS = frozenset({NAN, INF, NEG_INF, NEG_ZERO})
TEMPORAL_SPECIALS = frozenset({INFINITE, NEG_INFINITE})


@dataclass(frozen=True)
class Facets:
    """What one column holds beyond its kind, as its database defines it.

    ``None`` means unbounded (or unknown, which is treated alike: no check is made for it).
    """

    #: the database, for messages: PostgreSQL, MariaDB, SQLite, memory
    database: str = ""
    #: the column's type as its database names it, for messages: timetz, DOUBLE, CHAR(5)
    type_name: str = ""
    #: DECIMAL: total digits; FLOAT: mantissa bits (24 or 53); INTEGER: bits
    precision: int | None = None
    #: DECIMAL: digits after the point
    scale: int | None = None
    #: DECIMAL: at most this many significant digits in all (SQLite keeps 15)
    significant: int | None = None
    #: INTEGER, DECIMAL, FLOAT: no negative values
    unsigned: bool = False
    #: STRING, BINARY: padded to its length (CHAR(n), BINARY(n)); for text, trailing spaces
    #: are not significant
    fixed: bool = False
    #: STRING: whether it can hold U+0000 (PostgreSQL text cannot)
    nul: bool = True
    #: DATETIME, TIME: keeps an offset (timestamptz: an instant; timetz: a time and offset)
    time_zone: bool = False
    #: DATETIME, TIME: digits of fractional seconds kept (None: 6, all Python has)
    fraction: int | None = None
    #: DATE, DATETIME: (first, last) year held
    years: tuple[int, int] | None = None
    #: TIME: holds durations beyond a day, negative ones too (MariaDB's TIME)
    duration: bool = False
    #: special values held (the constants above)
    specials: frozenset[str] = frozenset()
    #: ARRAY: the elements' kind and facets
    element: Kind | None = None
    element_facets: Facets | None = None
    #: NETWORK: inet, cidr, macaddr, inet6
    network: str | None = None
    #: DECIMAL: PostgreSQL's money (a decimal with two digits after the point)
    money: bool = False
    #: JSON: the database stores the document normalised (jsonb: key order, spacing and
    #: duplicate keys are not kept)
    normalised: bool = False
    #: STRING: the column's collation as its database names it (None: unknown or default)
    collation: str | None = None
    #: STRING: its collation calls two texts equal that differ in letter case (MariaDB's
    #: ``*_ci``, SQLite's NOCASE, PostgreSQL's citext or a nondeterministic collation)
    folds_case: bool = False

    def holds(self, special: str) -> bool:
        return special in self.specials


# Which kinds can carry a value of which other kind without loss of meaning. A value map
# ("><") may bridge any pair, so this is only checked for untransformed lines. Keys use it;
# field lines are judged value by value by dualwrite.model.conversion.plan.
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
    Kind.INTERVAL: frozenset({Kind.INTERVAL}),
    Kind.BINARY: frozenset({Kind.BINARY}),
    Kind.UUID: frozenset({Kind.UUID, Kind.STRING}),
    Kind.JSON: frozenset({Kind.JSON, Kind.STRING}),
    Kind.ARRAY: frozenset({Kind.ARRAY}),
    Kind.NETWORK: frozenset({Kind.NETWORK}),
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
    facets: Facets = field(default_factory=Facets)

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
