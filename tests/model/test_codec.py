"""The value-conversion module (dualwrite.model.codec): each kind's value survives each of its
forms (text, a change log's JSON, the state store's JSON) exactly, edge values included."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest

from dualwrite.model import codec
from dualwrite.model.schema import Column, Facets, Kind
from dualwrite.model.values import (
    END_OF_DAY,
    INFINITY,
    MINUS_INFINITY,
    EndOfDay,
    Interval,
    JsonText,
    TemporalText,
)

PLUS_2 = dt.timezone(dt.timedelta(hours=2))


def _same(a: Any, b: Any) -> bool:
    """Equal, of the same type, and for Decimals with the same digits and exponent; NaN is
    itself and a float zero keeps its sign."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple()
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# -- text --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "value"), [
    (Kind.INTEGER, 2**53 + 1),
    (Kind.INTEGER, -(2**63)),
    (Kind.INTEGER, 2**80),
    (Kind.DECIMAL, Decimal("1.50")),
    (Kind.DECIMAL, Decimal("-0.000000000000000000001")),
    (Kind.DECIMAL, Decimal("12345678901234567890.123456789")),
    (Kind.DECIMAL, Decimal("NaN")),
    (Kind.DECIMAL, Decimal("-Infinity")),
    (Kind.FLOAT, 0.1),
    (Kind.FLOAT, -0.0),
    (Kind.FLOAT, 5e-324),
    (Kind.FLOAT, 1.7976931348623157e308),
    (Kind.FLOAT, math.inf),
    (Kind.FLOAT, -math.inf),
    (Kind.FLOAT, math.nan),
    (Kind.BOOLEAN, True),
    (Kind.BOOLEAN, False),
    (Kind.DATE, dt.date(1, 1, 1)),
    (Kind.DATE, dt.date(9999, 12, 31)),
    (Kind.DATE, INFINITY),
    (Kind.DATE, MINUS_INFINITY),
    (Kind.DATETIME, dt.datetime(2024, 2, 29, 23, 59, 59, 999999)),
    (Kind.DATETIME, dt.datetime(2024, 1, 1, 10, 0, tzinfo=PLUS_2)),
    (Kind.DATETIME, INFINITY),
    (Kind.TIME, dt.time(0, 0)),
    (Kind.TIME, dt.time(23, 59, 59, 1)),
    (Kind.TIME, dt.time(10, 30, tzinfo=PLUS_2)),
    (Kind.TIME, END_OF_DAY),
    (Kind.TIME, EndOfDay(7200)),
    (Kind.UUID, uuid.UUID("01234567-89ab-cdef-0123-456789abcdef")),
    (Kind.JSON, JsonText('{"a": [1, 2.50, null]}')),
    (Kind.JSON, JsonText("null")),
])
def test_each_kind_survives_its_text(kind: Kind, value: Any) -> None:
    text = codec.text_of(value)
    assert isinstance(text, str)
    back = codec.TEXT_PARSERS[kind](text)
    if kind is Kind.DECIMAL and not value.is_finite():
        assert str(back) == str(value)  # NaN is itself
    elif kind in (Kind.DATE, Kind.DATETIME, Kind.TIME, Kind.JSON):
        assert back == value and type(back) is type(value)
    else:
        assert _same(back, value), (text, back)


def test_text_of_writes_numbers_without_exponents_where_they_are_whole() -> None:
    assert codec.text_of(Decimal("1E+3")) == "1000"
    assert codec.text_of(Decimal("1.50")) == "1.50"  # the scale is the value's
    assert codec.text_of(True) == "true" and codec.text_of(1) == "1"


def test_text_of_bytes_is_refused_with_a_hint() -> None:
    with pytest.raises(codec.ValueRefused, match="bytes have no text form") as got:
        codec.text_of(b"\x00")
    assert "binary column" in got.value.hint


def test_text_parsers_refuse_what_is_not_of_their_kind() -> None:
    for kind, text in [(Kind.INTEGER, "1.5"), (Kind.BOOLEAN, "maybe"), (Kind.DATE, "soon"),
                       (Kind.UUID, "not-a-uuid"), (Kind.JSON, "{")]:
        with pytest.raises(ValueError):
            codec.TEXT_PARSERS[kind](text)


# -- the state store's JSON ----------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    Decimal("1.50"), Decimal("-0"), Decimal("1E+400"), 2**70, -(2**63), 0.1, -0.0,
    math.inf, -math.inf, True, "", "text with \u0000 and \U0001f600",
    dt.date(1, 1, 1), dt.datetime(2024, 1, 1, 10, 0, tzinfo=PLUS_2),
    dt.datetime(9999, 12, 31, 23, 59, 59, 999999), dt.time(10, 30, 0, 5),
    dt.time(10, 30, tzinfo=PLUS_2), uuid.UUID(int=2**128 - 1), b"", b"\x00\xff",
    Interval(14, -3, 1), INFINITY, MINUS_INFINITY, END_OF_DAY, EndOfDay(-3600),
    TemporalText("0044-03-15 BC"), JsonText("null"), dt.timedelta(hours=-838),
    [Decimal("1.0"), None, [b"\x01"]],
])
def test_values_survive_the_state_store_s_json_exactly(value: Any) -> None:
    text = json.dumps(codec.tag_value(value), separators=(",", ":"))
    assert _same(codec.untag_value(json.loads(text)), value)


def test_nan_survives_the_state_store_s_json() -> None:
    back = codec.untag_value(json.loads(json.dumps(codec.tag_value(math.nan))))
    assert isinstance(back, float) and math.isnan(back)


def test_a_member_named_like_a_tag_with_more_members_is_no_tag() -> None:
    doc = {"$d": "1", "other": 2}
    assert codec.untag_value(doc) == doc


# -- a change log's JSON ---------------------------------------------------------------------------

def test_log_json_keeps_numbers_exact_and_negative_zero_signed() -> None:
    got = codec.decode_json('{"a": 9007199254740993, "b": 0.1000, "c": -0, "d": [-0, 1]}')
    assert got["a"] == 2**53 + 1 and type(got["a"]) is int
    assert _same(got["b"], Decimal("0.1000"))
    assert _same(got["c"], Decimal("-0")) and _same(got["d"][0], Decimal("-0"))
    assert codec.decode_json('{"s": "-0"}') == {"s": "-0"}  # in a string, text
    assert codec.decode_json(None) is None
    assert codec.decode_json({"already": "decoded"}) == {"already": "decoded"}


def _col(kind: Kind, database: str = "PostgreSQL", **facets: Any) -> Column:
    return Column("c", kind, facets=Facets(database, kind.value, **facets))


@pytest.mark.parametrize(("column", "logged", "value"), [
    (_col(Kind.DECIMAL), "1.50", Decimal("1.50")),
    (_col(Kind.DECIMAL), 12, Decimal(12)),
    (_col(Kind.DECIMAL, money=True), "-$1,234.56", Decimal("-1234.56")),
    (_col(Kind.DECIMAL, "SQLite"), Decimal("0.100000000000000006"), Decimal("0.1")),
    (_col(Kind.FLOAT), "-Infinity", -math.inf),
    (_col(Kind.FLOAT), Decimal("0.1"), 0.1),
    (_col(Kind.FLOAT, precision=24), Decimal("0.1"), codec.single(0.1)),
    (_col(Kind.BOOLEAN, "MariaDB"), 1, True),
    (_col(Kind.BOOLEAN), False, False),
    (_col(Kind.DATE), "infinity", INFINITY),
    (_col(Kind.DATE), "0044-03-15 BC", TemporalText("0044-03-15 BC")),
    (_col(Kind.DATETIME), "2024-01-01T10:00:00", dt.datetime(2024, 1, 1, 10)),
    (_col(Kind.TIME), "24:00:00", END_OF_DAY),
    (_col(Kind.TIME, "MariaDB", duration=True), "-838:59:59", dt.timedelta(hours=-838,
                                                                           minutes=-59,
                                                                           seconds=-59)),
    (_col(Kind.INTERVAL), "1 mon 2 days", Interval(1, 2, 0)),
    (_col(Kind.BINARY), "\\x00ff", b"\x00\xff"),
    (_col(Kind.UUID), "01234567-89ab-cdef-0123-456789abcdef",
     uuid.UUID("01234567-89ab-cdef-0123-456789abcdef")),
    (_col(Kind.JSON), "null", JsonText("null")),
])
def test_each_kind_comes_back_from_a_change_log(column: Column, logged: Any, value: Any
                                                ) -> None:
    decode = codec.from_log(column)
    assert decode is not None
    got = decode(logged)
    assert _same(got, value) or (got == value and type(got) is type(value)), got
    assert decode(None) is None  # SQL NULL stays NULL (JSON null is the text "null")


def test_log_values_a_kind_cannot_read_are_left_for_the_target_to_refuse() -> None:
    decode = codec.from_log(_col(Kind.UUID))
    assert decode is not None and decode("nope") == "nope"
    assert codec.from_log(_col(Kind.STRING)) is None  # JSON carries text as it is
    assert codec.from_log(_col(Kind.INTEGER)) is None  # and integers, of any size


# -- the primitives the OData formats share --------------------------------------------------------

def test_utc_text_writes_z_for_utc_and_keeps_other_offsets() -> None:
    assert codec.utc_text(dt.datetime(2024, 1, 1, 10, 0)) == "2024-01-01T10:00:00Z"
    assert codec.utc_text(dt.datetime(2024, 1, 1, 10, 0, 0, 5, tzinfo=dt.UTC)) == \
        "2024-01-01T10:00:00.000005Z"
    assert codec.utc_text(dt.datetime(2024, 1, 1, 10, 0, tzinfo=PLUS_2)) == \
        "2024-01-01T10:00:00+02:00"
    assert codec.parse_instant("2024-01-01T10:00:00") == \
        dt.datetime(2024, 1, 1, 10, 0, tzinfo=dt.UTC)
    assert codec.parse_instant(codec.utc_text(dt.datetime(2024, 1, 1, 10, 0, tzinfo=PLUS_2))
                               ) == dt.datetime(2024, 1, 1, 8, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize("us", [0, 1, -1, 86_400_000_000, 86_400_000_001,
                                -3_020_399_000_000, 3_020_399_999_999])
def test_durations_survive_iso_and_clock_text(us: int) -> None:
    iso = codec.duration_iso(us)
    back = Interval.parse(iso)
    assert back.months == 0 and back.days * 86_400_000_000 + back.microseconds == us
    td = dt.timedelta(microseconds=us)
    assert codec.micros(td) == us
    value = codec.parse_duration(codec.duration_text(td))
    got = codec.micros(value) if isinstance(value, dt.timedelta | dt.time) else 86_400_000_000
    assert got == us
    assert codec.duration_value(us) == value


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xfb\xff", bytes(range(256))])
def test_bytes_survive_base64url_padded_or_not(data: bytes) -> None:
    for padded in (True, False):
        text = codec.base64url_text(data, padded=padded)
        assert "+" not in text and "/" not in text
        assert padded or not text.endswith("=")
        assert codec.from_base64(text) == data
    assert codec.from_base64(__import__("base64").b64encode(data).decode()) == data


def test_from_base64_refuses_what_is_no_base64() -> None:
    with pytest.raises(ValueError):
        codec.from_base64("a*b")


def test_floats_become_the_decimal_of_their_shortest_text() -> None:
    assert _same(codec.decimal_of_float(0.1), Decimal("0.1"))
    assert _same(codec.decimal_of_float(-0.0), Decimal("-0.0"))
    assert codec.decimal_of_float(math.inf) == Decimal("Infinity")
    assert codec.decimal_of_float(math.nan).is_nan()
    assert codec.decimal_of_float("1.5") == "1.5"  # not a float: as it is
