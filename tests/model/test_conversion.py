"""The type system's pure parts: dualwrite's own value types, the verdict on a pair of
columns, each value's conversion or refusal, the log decoders, and comparison by kind."""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest

from dualwrite.model.codec import tag, untag
from dualwrite.model.conversion import (
    Options,
    ValueRefused,
    Verdict,
    comparator,
    fit,
    from_log,
    parse_money,
    plan,
    text_of,
)
from dualwrite.model.schema import (
    END_OF_DAY,
    FLOAT_SPECIALS,
    INF,
    NAN,
    NEG_INF,
    TEMPORAL_SPECIALS,
    Column,
    Facets,
    Kind,
)
from dualwrite.model.values import (
    END_OF_DAY as EOD,
)
from dualwrite.model.values import (
    INFINITY,
    MINUS_INFINITY,
    NAN_KEY,
    EndOfDay,
    Interval,
    JsonText,
    TemporalText,
    canonical,
)


def pg(kind: Kind, name: str, **facets: Any) -> Column:
    return Column("c", kind, facets=Facets("PostgreSQL", name, **facets))


def my(kind: Kind, name: str, **facets: Any) -> Column:
    return Column("c", kind, facets=Facets("MariaDB", name, **facets))


PG_DOUBLE = pg(Kind.FLOAT, "double precision", precision=53, specials=FLOAT_SPECIALS)
PG_REAL = pg(Kind.FLOAT, "real", precision=24, specials=FLOAT_SPECIALS)
MY_DOUBLE = my(Kind.FLOAT, "DOUBLE", precision=53)
PG_NUMERIC = pg(Kind.DECIMAL, "numeric", specials=frozenset({NAN, INF, NEG_INF}))
MY_DECIMAL = my(Kind.DECIMAL, "DECIMAL(10,2)", precision=10, scale=2)
PG_DATE = pg(Kind.DATE, "date", specials=TEMPORAL_SPECIALS)
MY_DATE = my(Kind.DATE, "DATE")
PG_TIMETZ = pg(Kind.TIME, "timetz", time_zone=True, specials=frozenset({END_OF_DAY}))
MY_TIME = my(Kind.TIME, "TIME", fraction=0, duration=True, specials=frozenset({END_OF_DAY}))


def refused(convert: Any, value: Any) -> str:
    with pytest.raises(ValueRefused) as info:
        convert(value)
    assert info.value.hint
    return info.value.reason


# -- values Python has no type for ------------------------------------------------------------

@pytest.mark.parametrize("text, months, days, micros, back", [
    ("1 year 2 mons 3 days 04:05:06.789", 14, 3, 14_706_789_000,
     "1 year 2 mons 3 days 04:05:06.789"),
    ("1 mon", 1, 0, 0, "1 mon"),                       # a month is not 30 days
    ("178000000 years", 2_136_000_000, 0, 0, "178000000 years"),  # no 32-bit wraparound
    ("-1 mons +2 days -00:00:01", -1, 2, -1_000_000, "-1 mons +2 days -00:00:01"),
    ("00:00:00", 0, 0, 0, "00:00:00"),
    ("25:00:00", 0, 0, 90_000_000_000, "25:00:00"),    # 25 hours are not a day and an hour
    ("@ 1 mon 2 days 1 sec ago", -1, -2, -1_000_000, "-1 mons -2 days -00:00:01"),
    ("P1Y2M3DT4H5M6.789S", 14, 3, 14_706_789_000, "1 year 2 mons 3 days 04:05:06.789"),
    ("-P1D", 0, -1, 0, "-1 days"),
    ("1-2 3 4:05:06.789", 14, 3, 14_706_789_000, "1 year 2 mons 3 days 04:05:06.789"),
    ("0.000001 secs", 0, 0, 1, "00:00:00.000001"),
])
def test_interval_reads_every_style_and_writes_postgresql_s_own(
        text: str, months: int, days: int, micros: int, back: str) -> None:
    i = Interval.parse(text)
    assert (i.months, i.days, i.microseconds) == (months, days, micros)
    assert i.pg_text() == back
    assert Interval.parse(i.pg_text()) == i and Interval.parse(i.iso()) == i


def test_interval_iso_is_an_edm_duration_where_it_can_be() -> None:
    assert Interval(14, 3, 14_706_789_000).iso() == "P1Y2M3DT4H5M6.789S"
    assert Interval(0, 0, 0).iso() == "PT0S"
    assert Interval(0, -1, -3_600_000_000).iso() == "-P1DT1H"
    assert Interval(-1, 2, -1_000_000).iso() == "P-1M2DT-1S"  # mixed signs: field by field
    with pytest.raises(ValueError):
        Interval.parse("1 fortnight")


def test_json_text_compares_by_meaning_and_keeps_null_apart_from_sql_null() -> None:
    a = JsonText('{"a": 1.0, "b": [1, 2.50, null]}')
    assert a == JsonText('{"b":[1,2.5,null],"a":1}') and hash(a) == hash(
        JsonText('{"b":[1,2.5,null],"a":1}'))
    assert a != JsonText('{"a": 1, "b": [1, 2.5]}')
    assert JsonText("null") != JsonText('"null"') and JsonText("null") is not None
    assert JsonText.of({"n": Decimal("0.10000000000000000001")}) == \
        '{"n": 0.10000000000000000001}'


def test_canonical_makes_nan_equal_to_itself() -> None:
    assert canonical(float("nan")) is NAN_KEY and canonical(Decimal("NaN")) is NAN_KEY
    assert (1, float("nan")) != (1, float("nan")) or True  # Python's own NaN rule, for contrast
    assert canonical([1, None, 2.5]) == (Decimal(1), None, Decimal("2.5"))


@pytest.mark.parametrize("value", [
    Interval(14, 3, 1), INFINITY, MINUS_INFINITY, EOD, EndOfDay(7200),
    TemporalText("0044-03-15 BC"), JsonText("null"), dt.timedelta(hours=-1),
    ipaddress.ip_address("10.0.0.1"), ipaddress.ip_interface("::1/64"),
    ipaddress.ip_network("10.0.0.0/8"), float("inf"),
])
def test_values_survive_the_state_store_s_json(value: Any) -> None:
    import json

    assert untag(json.loads(json.dumps(tag(value)))) == value


# -- verdicts ---------------------------------------------------------------------------------

def test_double_to_mariadb_refuses_nan_and_infinities_and_states_negative_zero() -> None:
    p = plan(PG_DOUBLE, MY_DOUBLE)
    assert p.verdict is Verdict.PARTIAL and p.pair == \
        "double precision (PostgreSQL) -> DOUBLE (MariaDB)"
    assert p.refused == ("NaN, Infinity, -Infinity",)
    assert any("-0.0 arrives as 0" in n for n in p.notes)
    assert p.convert is not None
    assert refused(p.convert, math.nan) == "NaN cannot be held by DOUBLE (MariaDB)"
    assert "Infinity" in refused(p.convert, -math.inf)
    assert p.convert(5e-324) == 5e-324 and p.convert(None) is None


def test_specials_null_writes_null_and_says_so_each_time() -> None:
    heard: list[str] = []
    p = plan(PG_DOUBLE, MY_DOUBLE, Options(specials_to_null=True), heard.append)
    assert p.verdict is Verdict.CONVERTED and p.nulled == (NAN, INF, NEG_INF)
    assert p.convert is not None
    assert p.convert(math.nan) is None and p.convert(2.5) == 2.5
    assert heard == ["NaN written as NULL: DOUBLE (MariaDB) cannot hold it (specials: null)"]
    p = plan(PG_DATE, MY_DATE, Options(specials_to_null=True), heard.append)
    assert p.convert is not None and p.convert(INFINITY) is None


def test_same_types_need_no_conversion_at_all() -> None:
    assert plan(PG_DOUBLE, PG_DOUBLE).convert is None
    assert plan(PG_DOUBLE, PG_DOUBLE).verdict is Verdict.EXACT
    assert plan(PG_DATE, PG_DATE).convert is None
    assert plan(MY_DECIMAL, MY_DECIMAL).convert is None


def test_decimal_scale_that_would_be_rounded_is_refused() -> None:
    p = plan(PG_NUMERIC, MY_DECIMAL)
    assert p.verdict is Verdict.PARTIAL and p.convert is not None
    assert "more than 2 digits after the point" in p.refused
    assert "would round it" in refused(p.convert, Decimal("1.239"))
    assert p.convert(Decimal("1.50")) == Decimal("1.50")
    assert refused(p.convert, Decimal("NaN")) == "NaN cannot be held by DECIMAL(10,2) (MariaDB)"


def test_single_precision_takes_only_values_it_holds_exactly() -> None:
    p = plan(PG_DOUBLE, PG_REAL)
    assert p.convert is not None
    assert p.convert(16777216.0) == 16777216.0
    assert "rounded to 16777216.0" in refused(p.convert, 16777217.0)
    assert "out of the range" in refused(p.convert, 1e300)
    assert plan(PG_REAL, PG_DOUBLE).convert is None  # a real is exactly some double


def test_timetz_to_a_time_without_offset_needs_convert_utc() -> None:
    p = plan(PG_TIMETZ, MY_TIME)
    assert p.verdict is Verdict.IMPOSSIBLE and p.needs == "convert: utc"
    assert p.pair == "timetz (PostgreSQL) -> TIME (MariaDB)"
    p = plan(PG_TIMETZ, MY_TIME, Options(utc=True))
    assert p.verdict is Verdict.PARTIAL and p.convert is not None
    plus2 = dt.timezone(dt.timedelta(hours=2))
    assert p.convert(dt.time(10, tzinfo=plus2)) == dt.time(8)
    assert p.convert(dt.time(1, tzinfo=plus2)) == dt.time(23)  # round the clock, as a time does
    assert p.convert(EndOfDay(7200)) == dt.time(22)
    assert "fractional seconds" in refused(p.convert, dt.time(10, 0, 0, 5, tzinfo=plus2))


def test_dates_python_cannot_hold_go_only_to_the_same_database() -> None:
    p = plan(PG_DATE, MY_DATE)
    assert p.convert is not None
    assert refused(p.convert, INFINITY) == "infinity cannot be held by DATE (MariaDB)"
    assert "is not a date" in refused(p.convert, TemporalText("0044-03-15 BC"))
    assert p.convert(dt.date(1, 1, 1)) == dt.date(1, 1, 1)
    assert plan(PG_DATE, PG_DATE).convert is None  # TemporalText and infinity copy as text


def test_mariadb_durations_are_no_time_of_day() -> None:
    p = plan(MY_TIME, pg(Kind.TIME, "time", specials=frozenset({END_OF_DAY})))
    assert p.convert is not None
    assert "-00:00:01 is a duration" in refused(p.convert, dt.timedelta(seconds=-1))
    assert p.convert(EOD) is EOD and p.convert(dt.time(10)) == dt.time(10)


def test_impossible_pairs_name_both_real_types() -> None:
    interval = pg(Kind.INTERVAL, "interval")
    p = plan(interval, my(Kind.INTEGER, "BIGINT", precision=64))
    assert p.verdict is Verdict.IMPOSSIBLE
    assert p.reason == "BIGINT (MariaDB) cannot hold interval values"
    arr = pg(Kind.ARRAY, "integer[]", element=Kind.INTEGER, element_facets=Facets("PostgreSQL"))
    assert plan(arr, my(Kind.STRING, "VARCHAR(100)")).verdict is Verdict.IMPOSSIBLE
    assert "no exact text form" in plan(arr, my(Kind.STRING, "VARCHAR(100)")).reason


def test_text_forms_are_exact() -> None:
    p = plan(pg(Kind.INTERVAL, "interval"), my(Kind.STRING, "VARCHAR(100)"))
    assert p.verdict is Verdict.CONVERTED and p.convert is not None
    assert p.convert(Interval(14, 3, 0)) == "1 year 2 mons 3 days"
    assert text_of(-0.0) == "-0.0" and text_of(Decimal("NaN")) == "NaN"
    assert text_of(INFINITY) == "infinity"


def test_char_padding_is_removed_for_a_column_without_it() -> None:
    char = pg(Kind.STRING, "char(5)", fixed=True, nul=False)
    p = plan(char, my(Kind.STRING, "VARCHAR(5)"))
    assert p.convert is not None and p.convert("ab   ") == "ab"
    assert plan(my(Kind.STRING, "VARCHAR(5)"), my(Kind.STRING, "CHAR(5)", fixed=True)).notes


def test_inet_to_inet6_takes_ipv6_hosts_only() -> None:
    inet = pg(Kind.NETWORK, "inet", network="inet")
    p = plan(inet, my(Kind.NETWORK, "INET6", network="inet6"))
    assert p.verdict is Verdict.PARTIAL and p.convert is not None
    assert p.convert(ipaddress.ip_address("::1")) == ipaddress.ip_address("::1")
    assert "not an IPv6 host" in refused(p.convert, ipaddress.ip_address("10.0.0.1"))
    assert "not an IPv6 host" in refused(p.convert, ipaddress.ip_interface("::1/64"))


# -- comparing ----------------------------------------------------------------------------------

def test_comparison_by_kind() -> None:
    same = comparator(PG_DOUBLE, PG_DOUBLE)
    assert same(math.nan, math.nan) and not same(-0.0, 0.0) and same(5e-324, 5e-324)
    assert comparator(PG_DOUBLE, MY_DOUBLE)(-0.0, 0.0)  # MariaDB has no -0: 0 is the value
    assert not comparator(PG_DOUBLE, MY_DOUBLE)(math.nan, 0.0)
    char = comparator(pg(Kind.STRING, "char(5)", fixed=True), my(Kind.STRING, "CHAR(5)",
                                                                  fixed=True))
    assert char("ab   ", "ab") and not char("ab", "abc")
    doc = comparator(pg(Kind.JSON, "jsonb"), my(Kind.JSON, "JSON"))
    assert doc(JsonText('{"b": 1, "a": 2}'), JsonText('{"a":2,"b":1.0}'))
    assert not doc(JsonText("null"), None)
    assert comparator(PG_NUMERIC, PG_NUMERIC)(Decimal("NaN"), Decimal("NaN"))
    utc = comparator(PG_TIMETZ, MY_TIME)
    assert utc(dt.time(10, tzinfo=dt.timezone(dt.timedelta(hours=2))), dt.time(8))
    assert comparator(MY_TIME, MY_TIME)(dt.timedelta(hours=10), dt.time(10))


# -- decoding a change log's values ------------------------------------------------------------

@pytest.mark.parametrize("column, logged, value", [
    (pg(Kind.BINARY, "bytea"), "\\x00ff00", b"\x00\xff\x00"),
    (pg(Kind.INTERVAL, "interval"), "1 mon", Interval(1, 0, 0)),
    (pg(Kind.JSON, "jsonb"), {"a": [1, Decimal("2.50"), None]},
     JsonText('{"a": [1, 2.50, null]}')),
    # a document is logged as its text: here the JSON string "s"
    (pg(Kind.JSON, "jsonb"), '"s"', JsonText('"s"')),
    (pg(Kind.UUID, "uuid"), "d1b6a1e2-1234-4abc-8def-0123456789ab",
     uuid.UUID("d1b6a1e2-1234-4abc-8def-0123456789ab")),
    (PG_DOUBLE, "NaN", math.nan),
    (PG_DOUBLE, Decimal("-0"), -0.0),
    (PG_DOUBLE, "-Infinity", -math.inf),
    (PG_REAL, Decimal("0.1"), 0.10000000149011612),
    (PG_NUMERIC, "NaN", Decimal("NaN")),
    (pg(Kind.DECIMAL, "money", money=True, scale=2), "-$1,234.50", Decimal("-1234.50")),
    (PG_DATE, "infinity", INFINITY),
    (PG_DATE, "0044-03-15 BC", TemporalText("0044-03-15 BC")),
    (pg(Kind.DATETIME, "timestamptz", time_zone=True), "2024-01-01T10:00:00+02:00",
     dt.datetime(2024, 1, 1, 8, tzinfo=dt.UTC)),
    (pg(Kind.TIME, "time"), "24:00:00", EOD),
    (PG_TIMETZ, "24:00:00+02", EndOfDay(7200)),
    (MY_TIME, "-838:59:59", -dt.timedelta(hours=838, minutes=59, seconds=59)),
    (pg(Kind.NETWORK, "inet", network="inet"), "10.0.0.1/8",
     ipaddress.ip_interface("10.0.0.1/8")),
    (pg(Kind.ARRAY, "date[]", element=Kind.DATE, element_facets=Facets("PostgreSQL", "date")),
     ["2024-01-01", None, "infinity"], [dt.date(2024, 1, 1), None, INFINITY]),
])
def test_log_values_decode_to_what_the_connector_reads(column: Column, logged: Any,
                                                       value: Any) -> None:
    decode = from_log(column)
    assert decode is not None
    got = decode(logged)
    if isinstance(value, float | Decimal) and value != value:
        assert type(got) is type(value) and got != got
    else:
        assert got == value and type(got) is type(value)
        if isinstance(value, float):
            assert math.copysign(1, got) == math.copysign(1, value)


def test_a_log_value_that_does_not_decode_is_left_for_the_row_to_refuse() -> None:
    decode = from_log(pg(Kind.UUID, "uuid"))
    assert decode is not None and decode("not a uuid") == "not a uuid"
    assert from_log(pg(Kind.STRING, "text")) is None  # JSON carries text as it is


def test_fit_and_money() -> None:
    assert fit({"a": 1}, Kind.JSON) == JsonText('{"a": 1}')
    assert fit("1 mon", Kind.INTERVAL) == Interval(1, 0, 0)
    assert fit(dt.timedelta(days=1), Kind.INTERVAL) == Interval(0, 1, 0)
    assert fit("infinity", Kind.DATE) is INFINITY
    assert fit("24:00:00", Kind.TIME) is EOD
    assert parse_money("$1,234.56") == Decimal("1234.56")
    assert parse_money("($5.50)") == Decimal("-5.50")


def test_text_safe_says_when_the_target_may_read_a_value_s_text_itself() -> None:
    """The applier's set-based path hands log text to PostgreSQL: only where PostgreSQL's
    own reading of it makes no conversion the row builders would make differently."""
    my_dt6 = my(Kind.DATETIME, "DATETIME(6)", fraction=6)
    pg_tstz = pg(Kind.DATETIME, "timestamptz", time_zone=True, specials=TEMPORAL_SPECIALS)
    pg_ts = pg(Kind.DATETIME, "timestamp", specials=TEMPORAL_SPECIALS)
    assert plan(my_dt6, pg_tstz).text_safe  # naive text read in a UTC session: as UTC
    assert not plan(pg_tstz, pg_ts).text_safe  # timestamp input would drop the offset
    assert plan(MY_DATE, PG_DATE).text_safe  # a zero date: PostgreSQL refuses it as well
    assert plan(PG_DATE, PG_DATE).text_safe
    numeric_2 = pg(Kind.DECIMAL, "numeric(10,2)", precision=10, scale=2,
                   specials=frozenset({NAN}))
    assert not plan(PG_NUMERIC, numeric_2).text_safe  # it would round 1.239 silently
    assert not plan(PG_DOUBLE, PG_REAL).text_safe
