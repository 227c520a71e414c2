"""The type matrix's data: for each pair of databases, the column types mapped to each other
and about twenty edge values of each, with what must happen to every value on every path
(imported by tests/engine/test_type_matrix.py, which also renders the table in docs/maps.md).

A value is written by the application as an SQL literal (``sql``); ``py`` is what the source
connector must read for it; ``to`` is what must arrive on the other side: the same value
(``SAME``), another value (a stated conversion: a timestamp with a zone in UTC, CHAR padding),
or a refusal (``Refused``: its row goes to the inbox with a reason naming the column, and
nothing else is stopped).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from dualwrite.model.values import (
    END_OF_DAY,
    INFINITY,
    MINUS_INFINITY,
    EndOfDay,
    Interval,
    JsonText,
    TemporalText,
)


class _Same:
    def __repr__(self) -> str:
        return "SAME"


SAME: Any = _Same()
UNSET: Any = object()


@dataclass(frozen=True)
class Refused:
    """The value's row is refused: the reason names this."""

    reason: str


@dataclass(frozen=True)
class V:
    sql: str
    py: Any
    to: Any = SAME
    #: the value's OData JSON on the source side, where it is worth saying
    odata: Any = UNSET

    def arrives(self) -> Any:
        return self.py if self.to is SAME else self.to


@dataclass(frozen=True)
class Case:
    """One map: ``tm_<name>``'s column ``v`` of type ``left`` on the left and ``right`` on the
    right. ``forth`` is written on the left, ``back`` (default: ``forth``) on the right."""

    name: str
    left: str
    right: str
    forth: list[V]
    back: list[V] | None = None
    #: options of the field line (``{specials: null}``)
    options: str = ""
    #: the field line's direction: ``=`` (both ways) or ``>`` (left to right only)
    line: str = "="
    #: validate's codes for left -> right and right -> left
    codes: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
    #: validate only: the pair cannot run (an error), so no sync path is taken
    runs: bool = True
    #: the Edm type $metadata declares for the left column
    edm: str = ""
    #: the cells expected to fail for a reason outside this work (marked xfail, strict)
    xfail: dict[str, str] = field(default_factory=dict)

    @property
    def back_values(self) -> list[V]:
        return self.back if self.back is not None else self.forth


def codes(forth: str = "", back: str = "") -> tuple[frozenset[str], frozenset[str]]:
    return frozenset(forth.split()), frozenset(back.split())


NAN = math.nan
INF = math.inf
NULL = V("NULL", None)
PLUS2 = dt.timezone(dt.timedelta(hours=2))
MINUS530 = dt.timezone(-dt.timedelta(hours=5, minutes=30))
U1 = uuid.UUID("d1b6a1e2-1234-4abc-8def-0123456789ab")
U0 = uuid.UUID(int=0)
UMAX = uuid.UUID("ffffffff-ffff-ffff-ffff-ffffffffffff")

# -- value lists ----------------------------------------------------------------------------------

def doubles(*, pg: bool, neg_zero_to: Any = SAME, specials: Any = SAME) -> list[V]:
    """double precision / DOUBLE: extremes, subnormals, precision, specials."""
    out = [
        V("0", 0.0), V("1", 1.0), V("-1", -1.0), V("0.1", 0.1, odata=0.1),
        V("0.3333333333333333", 0.3333333333333333),
        V("3.141592653589793", 3.141592653589793),
        V("1.7976931348623157e308", 1.7976931348623157e308),
        V("-1.7976931348623157e308", -1.7976931348623157e308),
        V("5e-324", 5e-324), V("2.2250738585072014e-308", 2.2250738585072014e-308),
        V("2.225073858507201e-308", 2.225073858507201e-308), V("-1e-300", -1e-300),
        V("123456789.12345679", 123456789.12345679), V("9007199254740992", 9007199254740992.0),
        V("1e-10", 1e-10), V("1e22", 1e22), NULL,
    ]
    if pg:
        out += [V("'-0'", -0.0, neg_zero_to), V("'NaN'", NAN, specials, odata="NaN"),
                V("'Infinity'", INF, specials, odata="INF"),
                V("'-Infinity'", -INF, specials, odata="-INF")]
    return out


def reals(*, pg: bool, specials: Any = SAME) -> list[V]:
    """real / FLOAT (24-bit mantissa): read as the double holding its exact binary value."""
    out = [
        V("0", 0.0), V("0.1", 0.10000000149011612), V("16777216", 16777216.0),
        V("16777217", 16777216.0), V("-1.5", -1.5), V("3.4028234e38", 3.4028234663852886e38),
        V("1.1754944e-38", 1.1754943508222875e-38), V("0.33333334", 0.3333333432674408),
        V("1e-10", 1.000000013351432e-10), V("65504", 65504.0), V("100000", 100000.0),
        V("-123.25", -123.25), V("7", 7.0), V("2e-45", 1.401298464324817e-45), NULL,
    ]
    if pg:
        out += [V("'NaN'", NAN, specials), V("'Infinity'", INF, specials),
                V("'-Infinity'", -INF, specials)]
    return out


def decimals(scale: int | None, *, nan_to: Any = SAME, inf: bool = False, inf_to: Any = SAME,
             deep_to: Any = SAME) -> list[V]:
    out = [
        V("0", Decimal("0")), V("1.5", Decimal("1.5")), V("-1.25", Decimal("-1.25")),
        V("0.01", Decimal("0.01")), V("12345678.99", Decimal("12345678.99")),
        V("-99999999.99", Decimal("-99999999.99")), V("100", Decimal("100")),
        V("0.1", Decimal("0.1"), odata=Decimal("0.1")), V("2.50", Decimal("2.50")), NULL,
        V("'NaN'", Decimal("NaN"), nan_to, odata="NaN"),
    ]
    if scale is None:
        out += [V("12345678901234567890.123456789012345678",
                  Decimal("12345678901234567890.123456789012345678")),
                V("0.000000000000000000000000000001", Decimal("1E-30")),
                V("1e-40", Decimal("1E-40"), deep_to)]
    if inf:
        out += [V("'Infinity'", Decimal("Infinity"), inf_to),
                V("'-Infinity'", Decimal("-Infinity"), inf_to)]
    if scale is not None:
        out = [v if v.py is None or not v.py.is_finite() else
               V(v.sql, v.py.quantize(Decimal(1).scaleb(-scale)), v.to, v.odata) for v in out]
    return out


TEXTS = [
    V("''", ""), V("'a'", "a"), V("'O''Neil'", "O'Neil"), V("'ñandú café Größe'",
                                                             "ñandú café Größe"),
    V("'☃ 😀 𝄞'", "☃ 😀 𝄞"), V("'back\\slash'", "back\\slash"), V("'line\nbreak'", "line\nbreak"),
    V("'tab\there'", "tab\there"), V("'  spaced  '", "  spaced  "), V("'trailing '", "trailing "),
    V("'\"quoted\"'", '"quoted"'), V("'%_like'", "%_like"), V("'{\"a\": 1}'", '{"a": 1}'),
    V("'null'", "null"), V("'NULL'", "NULL"), V("'x" + "y" * 300 + "'", "x" + "y" * 300),
    V("'日本語のテキスト'", "日本語のテキスト"), V("'\\x00ff'", "\\x00ff"), NULL,
]


def dates(*, pg: bool, special_to: Any = SAME) -> list[V]:
    out = [
        V("'2024-02-29'", dt.date(2024, 2, 29), odata="2024-02-29"),
        V("'0001-01-01'", dt.date(1, 1, 1)), V("'9999-12-31'", dt.date(9999, 12, 31)),
        V("'1970-01-01'", dt.date(1970, 1, 1)), V("'2000-01-01'", dt.date(2000, 1, 1)),
        V("'1582-10-15'", dt.date(1582, 10, 15)), V("'1900-02-28'", dt.date(1900, 2, 28)),
        V("'1000-01-01'", dt.date(1000, 1, 1)), V("'2038-01-19'", dt.date(2038, 1, 19)),
        V("'1999-12-31'", dt.date(1999, 12, 31)), NULL,
    ]
    if pg:
        out += [
            V("'infinity'", INFINITY, special_to, odata="infinity"),
            V("'-infinity'", MINUS_INFINITY, special_to),
            V("'0044-03-15 BC'", TemporalText("0044-03-15 BC"), special_to),
            V("'12000-01-01'", TemporalText("12000-01-01"), special_to),
        ]
    return out


def timestamps(*, pg: bool, special_to: Any = SAME, frac_to: Any = SAME) -> list[V]:
    d = dt.datetime
    out = [
        V("'2024-02-29 12:34:56'", d(2024, 2, 29, 12, 34, 56)),
        V("'0001-01-01 00:00:00'", d(1, 1, 1)),
        V("'9999-12-31 23:59:59'", d(9999, 12, 31, 23, 59, 59)),
        V("'1970-01-01 00:00:00'", d(1970, 1, 1)), V("'2000-01-01 00:00:00'", d(2000, 1, 1)),
        V("'2024-03-31 02:30:00'", d(2024, 3, 31, 2, 30)),
        V("'2024-01-01 10:00:00.123456'", d(2024, 1, 1, 10, 0, 0, 123456), frac_to,
          odata="2024-01-01T10:00:00.123456Z"),
        V("'2024-01-01 10:00:00.5'", d(2024, 1, 1, 10, 0, 0, 500000), frac_to),
        V("'2024-01-01 10:00:00.000001'", d(2024, 1, 1, 10, 0, 0, 1), frac_to),
        V("'2038-01-19 03:14:08'", d(2038, 1, 19, 3, 14, 8)), NULL,
    ]
    if pg:
        out += [V("'infinity'", INFINITY, special_to), V("'-infinity'", MINUS_INFINITY, special_to),
                V("'0044-03-15 12:00:00 BC'", TemporalText("0044-03-15 12:00:00 BC"), special_to)]
    return out


def timestamptzs(*, to_naive: bool, special_to: Any = SAME) -> list[V]:
    """timestamptz: the instant; into a column without a zone, that instant in UTC."""
    utc = dt.UTC

    def v(sql: str, moment: dt.datetime, **kw: Any) -> V:
        return V(sql, moment, moment.replace(tzinfo=None) if to_naive else SAME, **kw)

    d = dt.datetime
    return [
        v("'2024-01-01 10:00:00+02'", d(2024, 1, 1, 8, tzinfo=utc),
          odata="2024-01-01T08:00:00Z"),
        v("'2024-01-01 10:00:00-05:30'", d(2024, 1, 1, 15, 30, tzinfo=utc)),
        v("'2024-06-30 23:59:59.999999+00'", d(2024, 6, 30, 23, 59, 59, 999999, tzinfo=utc)),
        v("'1970-01-01 00:00:00+00'", d(1970, 1, 1, tzinfo=utc)),
        v("'2000-02-29 12:00:00+14'", d(2000, 2, 28, 22, tzinfo=utc)),
        v("'2024-03-31 01:30:00+00'", d(2024, 3, 31, 1, 30, tzinfo=utc)),
        v("'0001-01-01 00:00:00+00'", d(1, 1, 1, tzinfo=utc)),
        v("'9999-12-31 23:59:59+00'", d(9999, 12, 31, 23, 59, 59, tzinfo=utc)),
        v("'2024-01-01 00:00:00.5+01'", d(2023, 12, 31, 23, 0, 0, 500000, tzinfo=utc)),
        v("'2038-01-19 03:14:08+00'", d(2038, 1, 19, 3, 14, 8, tzinfo=utc)), NULL,
        V("'infinity'", INFINITY, special_to), V("'-infinity'", MINUS_INFINITY, special_to),
    ]


def times(*, pg: bool, frac_to: Any = SAME) -> list[V]:
    t = dt.time
    out = [
        V("'00:00:00'", t(0)), V("'12:34:56'", t(12, 34, 56), odata="12:34:56"),
        V("'23:59:59'", t(23, 59, 59)), V("'23:59:59.999999'", t(23, 59, 59, 999999), frac_to),
        V("'00:00:00.000001'", t(0, 0, 0, 1), frac_to), V("'12:00:00.5'", t(12, 0, 0, 500000),
                                                           frac_to),
        V("'24:00:00'", END_OF_DAY, odata="24:00:00"), V("'01:02:03'", t(1, 2, 3)),
        V("'18:30:00'", t(18, 30)), V("'06:00:00'", t(6)), NULL,
    ]
    return out


def timetzs(*, utc: bool) -> list[V]:
    t = dt.time

    def v(sql: str, value: Any, as_utc: Any) -> V:
        return V(sql, value, as_utc if utc else SAME)

    return [
        v("'10:00:00+02'", t(10, tzinfo=PLUS2), t(8)),
        v("'10:00:00-05:30'", t(10, tzinfo=MINUS530), t(15, 30)),
        v("'01:00:00+02'", t(1, tzinfo=PLUS2), t(23)),
        v("'00:00:00+00'", t(0, tzinfo=dt.UTC), t(0)),
        v("'23:59:59+00'", t(23, 59, 59, tzinfo=dt.UTC), t(23, 59, 59)),
        v("'12:00:00+14'", t(12, tzinfo=dt.timezone(dt.timedelta(hours=14))), t(22)),
        v("'12:00:00-12'", t(12, tzinfo=dt.timezone(-dt.timedelta(hours=12))), t(0)),
        v("'24:00:00+02'", EndOfDay(7200), t(22)),
        v("'06:30:00+05:45'", t(6, 30, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=45))),
          t(0, 45)),
        NULL,
    ]


INTERVALS = [
    V("'1 year 2 mons 3 days 04:05:06.789'", Interval(14, 3, 14_706_789_000),
      odata="P1Y2M3DT4H5M6.789S"),
    V("'1 mon'", Interval(1, 0, 0), odata="P1M"), V("'30 days'", Interval(0, 30, 0)),
    V("'178000000 years'", Interval(2_136_000_000, 0, 0)),
    V("'-178000000 years'", Interval(-2_136_000_000, 0, 0)),
    V("'-1 mon +2 days -00:00:01'", Interval(-1, 2, -1_000_000)),
    V("'00:00:00'", Interval(0, 0, 0), odata="PT0S"),
    V("'25:00:00'", Interval(0, 0, 90_000_000_000)),
    V("'1 day -01:00:00'", Interval(0, 1, -3_600_000_000)),
    V("'0.000001 seconds'", Interval(0, 0, 1)), V("'1 week'", Interval(0, 7, 0)),
    V("'-1 days'", Interval(0, -1, 0), odata="-P1D"),
    V("'2 hours 30 minutes'", Interval(0, 0, 9_000_000_000)),
    V("'100 years'", Interval(1200, 0, 0)), V("'1 mon -30 days'", Interval(1, -30, 0)),
    V("'-00:00:00.5'", Interval(0, 0, -500_000)), NULL,
]


def interval_text(values: list[V]) -> list[V]:
    return [V(v.sql, v.py, str(v.py) if v.py is not None else SAME) for v in values]


BYTES = [
    V("'\\x'", b"", odata=""), V("'\\x00'", b"\x00", odata="AA=="),
    V("'\\x00ff00'", b"\x00\xff\x00", odata="AP8A"),
    V("'\\x5c78303066663030'", b"\\x00ff00"),  # the text of a bytea literal, as bytes
    V("'\\xdeadbeef'", b"\xde\xad\xbe\xef"), V("'\\xc328'", b"\xc3\x28"),  # not UTF-8
    V("'\\xfffefd'", b"\xff\xfe\xfd"), V("'\\x0a0d09'", b"\n\r\t"),
    V("'\\x" + bytes(range(256)).hex() + "'", bytes(range(256))),
    V("'\\x27'", b"'"), V("'\\x5c'", b"\\"), V("'\\x" + "00" * 300 + "'", b"\x00" * 300),
    V("'\\xe29883'", "☃".encode()), NULL,
]


def my_bytes(values: list[V]) -> list[V]:
    """The same bytes as MariaDB hex literals."""
    out = []
    for v in values:
        if v.py is None:
            out.append(v)
        else:
            out.append(V(f"x'{v.py.hex()}'", v.py))
    return out


UUIDS = [
    V(f"'{U1}'", U1, odata=str(U1)), V(f"'{U0}'", U0), V(f"'{UMAX}'", UMAX),
    V("'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
      uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
    V("'123e4567-e89b-12d3-a456-426614174000'", uuid.UUID("123e4567-e89b-12d3-a456-426614174000")),
    V("'00000000-0000-0000-0000-000000000001'", uuid.UUID(int=1)), NULL,
]

JSONS = [
    V("'null'", JsonText("null"), odata="null"), V("'{}'", JsonText("{}")),
    V("'[]'", JsonText("[]")), V("'\"s\"'", JsonText('"s"')), V("'0'", JsonText("0")),
    V("'-0'", JsonText("-0")), V("'1.0'", JsonText("1.0")), V("'true'", JsonText("true")),
    V("'false'", JsonText("false")), V("'12345678901234567890.1234567890'",
                                         JsonText("12345678901234567890.1234567890")),
    V("'{\"a\": [1, 2.50, null], \"b\": {\"c\": \"d\"}}'",
      JsonText('{"a": [1, 2.50, null], "b": {"c": "d"}}'),
      odata='{"a": [1, 2.50, null], "b": {"c": "d"}}'),
    V("'\"ñandú ☃ 😀\"'", JsonText('"ñandú ☃ 😀"')), V("'[null, null]'", JsonText("[null, null]")),
    V("'{\"z\": 1, \"a\": 2}'", JsonText('{"z": 1, "a": 2}')),
    V("'\"line\\nbreak\"'", JsonText('"line\\nbreak"')), V("'1e3'", JsonText("1e3")),
    V("'[[[]]]'", JsonText("[[[]]]")), NULL,
]

INT_ARRAYS = [
    V("'{}'", [], odata=[]), V("'{1,2,NULL}'", [1, 2, None], odata=[1, 2, None]),
    V("'{{1,2},{3,4}}'", [[1, 2], [3, 4]]), V("'{-2147483648,2147483647}'",
                                               [-2147483648, 2147483647]),
    V("'{0}'", [0]), V("'{NULL}'", [None]), NULL,
]
TEXT_ARRAYS = [
    V(r"""'{"a,b","",NULL,"\""}'""", ["a,b", "", None, '"']),
    V("'{ñandú,☃}'", ["ñandú", "☃"]), V("'{\"NULL\"}'", ["NULL"]), NULL,
]

INETS = [
    V("'10.0.0.1'", ipaddress.ip_address("10.0.0.1"), odata="10.0.0.1"),
    V("'10.0.0.1/8'", ipaddress.ip_interface("10.0.0.1/8")),
    V("'::1'", ipaddress.ip_address("::1")),
    V("'2001:db8::1'", ipaddress.ip_address("2001:db8::1")),
    V("'2001:db8::1/64'", ipaddress.ip_interface("2001:db8::1/64")),
    V("'::ffff:10.0.0.1'", ipaddress.ip_address("::ffff:10.0.0.1")),
    V("'0.0.0.0'", ipaddress.ip_address("0.0.0.0")), NULL,
]


def inet6(values: list[V]) -> list[V]:
    """inet -> MariaDB INET6: IPv6 host addresses arrive, the rest is refused."""
    out = []
    for v in values:
        if v.py is None or type(v.py) is ipaddress.IPv6Address:
            out.append(v)
        else:
            out.append(V(v.sql, v.py, Refused("is not an IPv6 host address")))
    return out


MONEY = [
    V("0", Decimal("0.00")), V("12.34", Decimal("12.34"), odata=Decimal("12.34")),
    V("-5.5", Decimal("-5.50")), V("1234567.89", Decimal("1234567.89")),
    V("-92233720368547758.08", Decimal("-92233720368547758.08")),
    V("92233720368547758.07", Decimal("92233720368547758.07")), V("0.01", Decimal("0.01")),
    V("1000000", Decimal("1000000.00")), NULL,
]

BOOLS = [V("true", True, odata=True), V("false", False), NULL]
BIGINTS = [
    V("0", 0), V("1", 1), V("-1", -1), V("9223372036854775807", 9223372036854775807,
                                          odata=9223372036854775807),
    V("-9223372036854775808", -9223372036854775808), V("2147483648", 2147483648),
    V("-2147483649", -2147483649), V("4294967296", 4294967296), V("1000000", 1000000), NULL,
]


def chars5(*, pg: bool) -> list[V]:
    """CHAR(5): PostgreSQL reads the padding, MariaDB strips it: the padding is not the
    value, so every row compares equal whichever side holds it."""
    rows = [("''", ""), ("'a'", "a"), ("'ab'", "ab"), ("'abcde'", "abcde"), ("' a'", " a"),
            ("'ñ☃'", "ñ☃"), ("'ab   '", "ab")]
    out = []
    for sql, value in rows:
        padded = value.ljust(5)
        out.append(V(sql, padded if pg else value, value if pg else padded))
    return [*out, NULL]


def padded_into_char(values: list[V]) -> list[V]:
    """VARCHAR -> MariaDB CHAR: trailing spaces are not significant there (stated)."""
    return [V(v.sql, v.py, v.py.rstrip(" ") if isinstance(v.py, str) else SAME) for v in values]


# -- the cases, per pair of databases ------------------------------------------------------------

def refused(reason: str) -> Refused:
    return Refused(reason)


PG_PG = [
    Case("double", "double precision", "double precision", doubles(pg=True),
         edm="Edm.Double"),
    Case("real", "real", "real", [*reals(pg=True), V("'-0'", -0.0)], edm="Edm.Single"),
    Case("real_double", "real", "double precision", reals(pg=True),
         back=[V("0", 0.0), V("1.5", 1.5), V("16777216", 16777216.0), V("'-0'", -0.0),
               V("16777217", 16777217.0, refused("would be rounded to 16777216.0")),
               V("0.1", 0.1, refused("would be rounded")),
               V("1e300", 1e300, refused("out of the range of real")),
               V("'NaN'", NAN), V("'Infinity'", INF), NULL],
         codes=codes("", "DW116")),
    Case("numeric", "numeric", "numeric", decimals(None, inf=True), edm="Edm.Decimal"),
    Case("numeric_10_2", "numeric(10,2)", "numeric(10,2)", decimals(2)),
    Case("money", "money", "money", MONEY, edm="Edm.Decimal"),
    Case("bigint", "bigint", "bigint", BIGINTS, edm="Edm.Int64"),
    Case("boolean", "boolean", "boolean", BOOLS, edm="Edm.Boolean"),
    Case("text", "text", "text", TEXTS, edm="Edm.String"),
    Case("char5", "char(5)", "char(5)",
         [V(v.sql, v.py) for v in chars5(pg=True)], edm="Edm.String"),
    Case("date", "date", "date", dates(pg=True), edm="Edm.Date"),
    Case("timestamp", "timestamp", "timestamp", timestamps(pg=True),
         edm="Edm.DateTimeOffset"),
    Case("timestamptz", "timestamptz", "timestamptz", timestamptzs(to_naive=False),
         edm="Edm.DateTimeOffset"),
    Case("time", "time", "time", times(pg=True), edm="Edm.TimeOfDay"),
    Case("timetz", "timetz", "timetz", timetzs(utc=False), edm="Edm.String"),
    Case("interval", "interval", "interval", INTERVALS, edm="Edm.Duration"),
    Case("bytea", "bytea", "bytea", BYTES, edm="Edm.Binary"),
    Case("uuid", "uuid", "uuid", UUIDS, edm="Edm.Guid"),
    Case("json", "json", "json", JSONS, edm="Edm.String"),
    Case("jsonb", "jsonb", "jsonb", JSONS, edm="Edm.String"),
    Case("json_jsonb", "json", "jsonb", JSONS, codes=codes("DW117", "")),
    Case("int_array", "integer[]", "integer[]", INT_ARRAYS, edm="Collection(Edm.Int32)"),
    Case("text_array", "text[]", "text[]", TEXT_ARRAYS, edm="Collection(Edm.String)"),
    Case("inet", "inet", "inet", INETS, edm="Edm.String"),
]


PG_MY = [
    Case("double", "double precision", "DOUBLE",
         doubles(pg=True, neg_zero_to=0.0, specials=refused("cannot be held by DOUBLE")),
         back=doubles(pg=False), codes=codes("DW116 DW117", ""), edm="Edm.Double"),
    Case("double_null", "double precision", "DOUBLE",
         [v for v in doubles(pg=True, neg_zero_to=0.0, specials=None)],
         back=doubles(pg=False), options="{specials: null}", codes=codes("DW117 DW118", "")),
    Case("real", "real", "FLOAT",
         reals(pg=True, specials=refused("cannot be held by FLOAT")), back=reals(pg=False),
         codes=codes("DW116 DW117", ""), edm="Edm.Single"),
    Case("numeric_10_2", "numeric(10,2)", "DECIMAL(10,2)",
         decimals(2, nan_to=refused("NaN cannot be held by DECIMAL(10,2)")),
         back=[v for v in decimals(2) if v.sql != "'NaN'"], codes=codes("DW116", "")),
    Case("numeric", "numeric", "DECIMAL(65,30)",
         decimals(None, inf=True, nan_to=refused("NaN cannot be held"),
                  inf_to=refused("Infinity cannot be held"),
                  deep_to=refused("more than 30 digits after the point")),
         back=[v for v in decimals(None) if v.sql not in ("'NaN'", "1e-40")],
         codes=codes("DW116", "")),
    Case("money", "money", "DECIMAL(19,2)", MONEY, edm="Edm.Decimal"),
    Case("bigint", "bigint", "BIGINT", BIGINTS),
    Case("boolean", "boolean", "BOOLEAN", [V("true", True, 1), V("false", False, 0), NULL],
         back=[V("1", 1, True), V("0", 0, False), V("2", 2, refused("is not 0 or 1")), NULL],
         codes=codes("DW117", "DW116")),
    Case("text", "text", "LONGTEXT", TEXTS,
         back=[*TEXTS[:-1], V("CONCAT('nul', CHAR(0), 'char')", "nul\x00char",
                              refused("U+0000 (0x00)")), NULL]),
    Case("char5", "char(5)", "CHAR(5)", chars5(pg=True), back=chars5(pg=False)),
    Case("varchar_char", "varchar(20)", "CHAR(20)",
         padded_into_char([V("'ab '", "ab "), V("'ab'", "ab"), V("''", ""),
                           V("'  x  '", "  x  "), NULL]),
         back=[V("'ab'", "ab"), V("''", ""), NULL], codes=codes("DW117", "DW117")),
    Case("date", "date", "DATE", dates(pg=True, special_to=refused("DATE (MariaDB)")),
         back=[*dates(pg=False), V("'0000-00-00'", TemporalText("0000-00-00"),
                                   refused("is not a date date (PostgreSQL) holds"))],
         codes=codes("DW116", "DW116")),
    Case("timestamp", "timestamp", "DATETIME(6)",
         timestamps(pg=True, special_to=refused("DATETIME(6) (MariaDB)")),
         back=timestamps(pg=False), codes=codes("DW116", "DW116")),
    Case("timestamp_s", "timestamp", "DATETIME",
         timestamps(pg=False, frac_to=refused("would round away")),
         back=[v for v in timestamps(pg=False) if v.py is None or v.py.microsecond == 0],
         codes=codes("DW116", "DW116")),
    Case("timestamptz", "timestamptz", "DATETIME(6)",
         timestamptzs(to_naive=True, special_to=refused("DATETIME(6) (MariaDB)")),
         back=[V("'2024-01-01 08:00:00'", dt.datetime(2024, 1, 1, 8),
                 dt.datetime(2024, 1, 1, 8, tzinfo=dt.UTC)),
               V("'1970-01-01 00:00:00.5'", dt.datetime(1970, 1, 1, 0, 0, 0, 500000),
                 dt.datetime(1970, 1, 1, 0, 0, 0, 500000, tzinfo=dt.UTC)),
               V("'9999-12-31 23:59:59.999999'", dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
                 dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)), NULL],
         codes=codes("DW116 DW117", "DW116 DW117")),
    Case("time", "time", "TIME(6)", times(pg=True),
         back=[*times(pg=False), V("'-00:00:01'", -dt.timedelta(seconds=1),
                                   refused("is a duration")),
               V("'838:59:59'", dt.timedelta(hours=838, minutes=59, seconds=59),
                 refused("is a duration"))],
         codes=codes("", "DW116")),
    Case("timetz", "timetz", "TIME(6)", timetzs(utc=True), options="{convert: utc}",
         back=[V("'08:00:00'", dt.time(8), dt.time(8, tzinfo=dt.UTC)), NULL],
         codes=codes("DW117", "DW116 DW117")),
    Case("timetz_refused", "timetz", "TIME", [], codes=codes("DW115", "DW116 DW117"),
         runs=False),
    Case("interval_text", "interval", "VARCHAR(100)", interval_text(INTERVALS),
         back=[V("'1 mon'", "1 mon", refused("cannot hold text"))],
         codes=codes("DW117", "DW106"), runs=False),
    Case("interval_text_forth", "interval", "VARCHAR(100)", interval_text(INTERVALS),
         back=[], line=">", codes=codes("DW117", "")),
    Case("interval_bigint", "interval", "BIGINT", [], runs=False,
         codes=codes("DW106", "DW106")),
    Case("array", "integer[]", "LONGTEXT", [], runs=False, codes=codes("DW106", "DW106")),
    Case("cidr", "cidr", "INET6", [], runs=False, codes=codes("DW106", "DW116")),
    Case("bytea", "bytea", "LONGBLOB", BYTES, back=my_bytes(BYTES), edm="Edm.Binary"),
    Case("uuid", "uuid", "UUID", UUIDS, edm="Edm.Guid"),
    Case("json", "json", "JSON", JSONS),
    Case("jsonb", "jsonb", "JSON", JSONS, codes=codes("", "DW117")),
    Case("inet", "inet", "INET6", inet6(INETS),
         back=[v for v in INETS if type(v.py) is ipaddress.IPv6Address] + [NULL],
         codes=codes("DW116", "")),
]

SQLITE_SQLITE = [
    Case("integer", "INTEGER", "INTEGER", BIGINTS, edm="Edm.Int64"),
    Case("real", "REAL", "REAL",
         [*doubles(pg=False), V("9e999", INF, odata="INF"), V("-9e999", -INF)],
         edm="Edm.Double"),
    Case("numeric", "NUMERIC(18,2)", "NUMERIC(18,2)",
         [V("0", Decimal(0)), V("1.5", Decimal("1.5")), V("'NaN'", Decimal("NaN")),
          V("123456789012.34", Decimal("123456789012.34")), V("-0.01", Decimal("-0.01")),
          V("0.1", Decimal("0.1")), V("'Infinity'", Decimal("Infinity")), NULL],
         edm="Edm.Decimal"),
    Case("text", "TEXT", "TEXT", [v for v in TEXTS if "repeat" not in v.sql] +
         [V("'nul' || char(0) || 'char'", "nul\x00char")], edm="Edm.String"),
    Case("blob", "BLOB", "BLOB", my_bytes(BYTES), edm="Edm.Binary"),
    Case("date", "DATE", "DATE",
         [V("'2024-02-29'", dt.date(2024, 2, 29)), V("'0001-01-01'", dt.date(1, 1, 1)),
          V("'infinity'", INFINITY), V("'soon'", TemporalText("soon")),
          V("'2024-13-01'", TemporalText("2024-13-01")), NULL], edm="Edm.Date"),
    Case("datetime", "DATETIME", "DATETIME",
         [V("'2024-02-29 12:34:56.123456'", dt.datetime(2024, 2, 29, 12, 34, 56, 123456)),
          V("'2024-02-29 12:34:56'", dt.datetime(2024, 2, 29, 12, 34, 56)),
          V("'-infinity'", MINUS_INFINITY), V("'later'", TemporalText("later")), NULL]),
    Case("time", "TIME", "TIME",
         [V("'24:00:00'", END_OF_DAY), V("'10:30:00.5'", dt.time(10, 30, 0, 500000)),
          V("'00:00:00'", dt.time(0)), NULL], edm="Edm.TimeOfDay"),
    Case("boolean", "BOOLEAN", "BOOLEAN", [V("1", True), V("0", False), NULL]),
    # SQLite gives a column declared JSON numeric affinity: a document that is a bare number
    # is kept as an INTEGER or a REAL (15 digits), so the long number is left out here
    Case("json", "JSON", "JSON", [v for v in JSONS if "12345678901234567890" not in v.sql]),
]

PAIRS: dict[str, tuple[str, str, list[Case]]] = {
    "postgresql-postgresql": ("postgresql", "postgresql", PG_PG),
    "postgresql-mariadb": ("postgresql", "mariadb", PG_MY),
    "sqlite-sqlite": ("sqlite", "sqlite", SQLITE_SQLITE),
}
