"""The layer's pure parts: literals, key predicates, names, ETags, JSON, multipart, Prefer."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest
from fake_backend import FakeBackend

from dualwrite.api import ODataBackend
from dualwrite.api.errors import ODataError
from dualwrite.api.literals import (
    format_literal,
    parse_key_predicate,
    parse_literal,
    split_path,
)
from dualwrite.api.model import PropertyInfo, odata_identifier
from dualwrite.api.multipart import (
    Part,
    boundary_of,
    parse_http_request,
    parse_multipart,
    render_multipart,
)
from dualwrite.api.payload import dumps, etag_matches, etag_of, loads
from dualwrite.api.query import accepts, parse_prefer
from dualwrite.model.schema import Column, Kind, TableSchema


def _prop(kind: Kind) -> PropertyInfo:
    return PropertyInfo("p", Column("p", kind))


def test_fake_backend_implements_the_protocol() -> None:
    assert isinstance(FakeBackend(), ODataBackend)


@pytest.mark.parametrize(("path", "expected"), [
    ("", []),
    ("accounts", [("accounts", None)]),
    ("accounts/", [("accounts", None)]),
    ("accounts('a/b')", [("accounts", "'a/b'")]),
    ("accounts('it''s)')/$count", [("accounts", "'it''s)'"), ("$count", None)]),
    ("T(a='x',b=1)", [("T", "a='x',b=1")]),
    ("$metadata", [("$metadata", None)]),
])
def test_split_path(path: str, expected: list[tuple[str, str | None]]) -> None:
    assert [(s.name, s.key) for s in split_path(path)] == expected


@pytest.mark.parametrize("path", ["a('x", "a(1)b", "a//b", "(1)", "/a"])
def test_split_path_errors(path: str) -> None:
    with pytest.raises(ODataError) as exc:
        split_path(path)
    assert exc.value.status == 400


@pytest.mark.parametrize(("text", "expected"), [
    ("'C-1'", [(None, "'C-1'")]),
    ("a='x,y',b=2", [("a", "'x,y'"), ("b", "2")]),
    ("a='x=y'", [("a", "'x=y'")]),
    (" a = 'x' ", [("a", "'x'")]),
])
def test_parse_key_predicate(text: str, expected: list[tuple[str | None, str]]) -> None:
    assert parse_key_predicate(text) == expected


@pytest.mark.parametrize("text", ["", "  ", "a='x',1", "=1", "a=b=c"])
def test_parse_key_predicate_errors(text: str) -> None:
    with pytest.raises(ODataError):
        parse_key_predicate(text)


@pytest.mark.parametrize(("kind", "raw", "value"), [
    (Kind.STRING, "'O''Neil'", "O'Neil"),
    (Kind.STRING, "''", ""),
    (Kind.STRING, "''''", "'"),
    (Kind.INTEGER, "-42", -42),
    (Kind.INTEGER, "+7", 7),
    (Kind.DECIMAL, "12.50", Decimal("12.50")),
    (Kind.DECIMAL, "-1e3", Decimal("-1e3")),
    (Kind.FLOAT, "1.5e3", 1500.0),
    (Kind.FLOAT, "-INF", -math.inf),
    (Kind.BOOLEAN, "true", True),
    (Kind.BOOLEAN, "FALSE", False),
    (Kind.UUID, "01234567-89AB-cdef-0123-456789abcdef",
     uuid.UUID("01234567-89ab-cdef-0123-456789abcdef")),
    (Kind.DATE, "2024-02-29", dt.date(2024, 2, 29)),
    (Kind.DATETIME, "2024-01-31T10:00:00Z", dt.datetime(2024, 1, 31, 10, tzinfo=dt.UTC)),
    (Kind.DATETIME, "2024-01-31T10:00:00.1234567+05:30",
     dt.datetime(2024, 1, 31, 10, 0, 0, 123456,
                 tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))),
    (Kind.DATETIME, "2024-01-31T10:00Z", dt.datetime(2024, 1, 31, 10, tzinfo=dt.UTC)),
    (Kind.TIME, "23:59:59.5", dt.time(23, 59, 59, 500000)),
    (Kind.TIME, "08:00", dt.time(8, 0)),
    (Kind.BINARY, "binary'AQID'", b"\x01\x02\x03"),
    (Kind.BINARY, "binary'-_8='", b"\xfb\xff"),
])
def test_parse_literal(kind: Kind, raw: str, value: Any) -> None:
    assert parse_literal(raw, _prop(kind)) == value


@pytest.mark.parametrize(("kind", "raw"), [
    (Kind.STRING, "abc"), (Kind.STRING, "'a'b'"), (Kind.STRING, "'abc"), (Kind.STRING, "null"),
    (Kind.INTEGER, "1.5"), (Kind.INTEGER, "9" * 30), (Kind.INTEGER, "'1'"),
    (Kind.DECIMAL, "1,5"), (Kind.DECIMAL, "1e99999"), (Kind.FLOAT, "1e999"),
    (Kind.BOOLEAN, "1"), (Kind.UUID, "1234"), (Kind.DATE, "2024-02-30"),
    (Kind.DATE, "31/01/2024"), (Kind.DATETIME, "2024-01-31T10:00:00"),
    (Kind.DATETIME, "2024-01-31T25:00:00Z"), (Kind.TIME, "24:00"), (Kind.BINARY, "AQID"),
    (Kind.BINARY, "binary'***'"),
])
def test_parse_literal_errors(kind: Kind, raw: str) -> None:
    with pytest.raises(ODataError) as exc:
        parse_literal(raw, _prop(kind))
    assert exc.value.status == 400 and exc.value.target == "p"


@pytest.mark.parametrize(("kind", "value"), [
    (Kind.STRING, "it's"), (Kind.INTEGER, -3), (Kind.DECIMAL, Decimal("1.50")),
    (Kind.FLOAT, 0.1), (Kind.BOOLEAN, True), (Kind.UUID, uuid.uuid4()),
    (Kind.DATE, dt.date(2024, 1, 2)), (Kind.DATETIME, dt.datetime(2024, 1, 2, 3, 4, 5,
                                                                   tzinfo=dt.UTC)),
    (Kind.TIME, dt.time(1, 2, 3)), (Kind.BINARY, b"\x00\xff"),
])
def test_format_then_parse_round_trips(kind: Kind, value: Any) -> None:
    prop = _prop(kind)
    assert parse_literal(format_literal(value, prop.column), prop) == value


def test_naive_datetime_formats_as_utc() -> None:
    col = Column("c", Kind.DATETIME)
    assert format_literal(dt.datetime(2024, 1, 2, 3, 4), col) == "2024-01-02T03:04:00Z"


@pytest.mark.parametrize(("name", "taken", "expected"), [
    ("accounts", [], "accounts"),
    ("order lines", [], "order_lines"),
    ("1st", [], "_1st"),
    ("a-b", ["a_b"], "a_b_2"),
    ("$x", [], "_x"),
    ("", [], "_"),
    ("Ünïcode", [], "Ünïcode"),
    ("x" * 200, [], "x" * 120),
])
def test_odata_identifier(name: str, taken: list[str], expected: str) -> None:
    assert odata_identifier(name, taken) == expected


def test_etag_is_stable_across_driver_representations() -> None:
    schema = TableSchema("t", {c: Column(c, k) for c, k in [
        ("n", Kind.DECIMAL), ("b", Kind.BOOLEAN), ("t", Kind.DATETIME), ("g", Kind.UUID)]})
    g = uuid.uuid4()
    a = {"n": Decimal("5.00"), "b": True, "t": dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC),
         "g": g}
    b = {"n": 5.0, "b": 1, "t": dt.datetime(2024, 1, 1, 14, tzinfo=dt.timezone(
        dt.timedelta(hours=2))), "g": g, "extra": "ignored"}
    assert etag_of(schema, a) == etag_of(schema, b)
    assert etag_of(schema, {**a, "n": Decimal("5.01")}) != etag_of(schema, a)
    assert etag_of(schema, {**a, "n": None}) != etag_of(schema, {**a, "n": "None"})
    assert etag_of(schema, a).startswith('W/"') and len(etag_of(schema, a)) == 44


@pytest.mark.parametrize(("header", "matches"), [
    ("*", True), ('W/"abc"', True), ('"abc"', True), ('"x", W/"abc"', True),
    ('W/"abd"', False), ("", False), ("abc", False),
])
def test_etag_matches(header: str, matches: bool) -> None:
    assert etag_matches(header, 'W/"abc"') is matches


def test_dumps_is_exact() -> None:
    assert dumps({"d": Decimal("1.10"), "f": 0.1, "i": 2**70, "s": "é\"", "n": None,
                  "l": [True, False], "nan": math.nan, "inf": -math.inf}) == \
        '{"d":1.10,"f":0.1,"i":1180591620717411303424,"s":"é\\"","n":null,"l":[true,false],' \
        '"nan":"NaN","inf":"-INF"}'.encode()


@pytest.mark.parametrize("text", [b'{"a": 1, "a": 2}', b"NaN", b"{", b"\xff", b"[" * 50000])
def test_loads_rejects(text: bytes) -> None:
    with pytest.raises(ODataError):
        loads(text)


def test_loads_keeps_decimals() -> None:
    assert loads(b'{"x": 0.1}') == {"x": Decimal("0.1")}


def test_multipart_round_trip() -> None:
    parts = [Part({"Content-Type": "text/plain"}, b"one\r\n"), Part({}, b""),
             Part({"X": "y"}, b"--notaboundary")]
    body = render_multipart(parts, "bnd")
    back = parse_multipart(b"preamble\r\n" + body + b"epilogue", "bnd")
    assert [(p.headers, p.body) for p in back] == [
        ({"content-type": "text/plain"}, b"one\r\n"), ({}, b""), ({"x": "y"}, b"--notaboundary")]


def test_parse_http_request() -> None:
    msg = parse_http_request(b"\r\nPATCH accounts(1) HTTP/1.1\r\nIf-Match: *\r\n"
                             b"Content-Type: application/json\r\n\r\n{\"a\": 1}")
    assert (msg.method, msg.url, msg.body) == ("PATCH", "accounts(1)", b'{"a": 1}')
    assert msg.headers == {"if-match": "*", "content-type": "application/json"}
    spaced = parse_http_request(b"GET a?$filter=x eq 1\n\n")
    assert spaced.url == "a?$filter=x eq 1"


@pytest.mark.parametrize(("content_type", "boundary"), [
    ("multipart/mixed; boundary=abc", "abc"),
    ('multipart/mixed;boundary="a b"', "a b"),
    ("multipart/mixed", None),
    ("multipart/mixed; boundary=", None),
])
def test_boundary_of(content_type: str, boundary: str | None) -> None:
    assert boundary_of(content_type) == boundary


def test_parse_prefer() -> None:
    p = parse_prefer("return=minimal, odata.maxpagesize=50;x=y, odata.continue-on-error")
    assert (p.return_, p.maxpagesize, p.continue_on_error) == ("minimal", 50, True)
    p = parse_prefer("return=other, maxpagesize=0, continue-on-error=false")
    assert (p.return_, p.maxpagesize, p.continue_on_error) == (None, None, False)
    assert parse_prefer(None).return_ is None


@pytest.mark.parametrize(("accept", "ok"), [
    (None, True), ("", True), ("application/json", True), ("application/*", True),
    ("*/*", True), ("text/html, application/json;q=0.1", True), ("application/xml", False),
    ("application/json;q=0", False), ("application/json;q=x", False),
])
def test_accepts_json(accept: str | None, ok: bool) -> None:
    assert accepts(accept, "application/json") is ok


# -- every kind in its EDM form -----------------------------------------------------------------

def _col(kind: Kind, database: str = "PostgreSQL", **facets: Any) -> Column:
    from dualwrite.model.schema import Facets

    return Column("p", kind, facets=Facets(database, **facets))


@pytest.mark.parametrize(("column", "edm", "value", "json_value"), [
    (_col(Kind.INTERVAL), "Edm.Duration", "1 year 2 mons 3 days 04:05:06.789",
     "P1Y2M3DT4H5M6.789S"),
    (_col(Kind.INTERVAL), "Edm.Duration", "-1 days", "-P1D"),
    (_col(Kind.ARRAY, element=Kind.INTEGER, element_facets=None), "Collection(Edm.Int64)",
     [1, None, 2], [1, None, 2]),
    (_col(Kind.FLOAT, precision=24), "Edm.Single", 0.5, 0.5),
    (_col(Kind.DECIMAL, precision=19, scale=2, money=True), "Edm.Decimal", Decimal("12.30"),
     Decimal("12.30")),
    (_col(Kind.DECIMAL), "Edm.Decimal", Decimal("NaN"), "NaN"),
    (_col(Kind.DATE), "Edm.Date", "infinity", "infinity"),
    (_col(Kind.TIME), "Edm.TimeOfDay", "24:00:00", "24:00:00"),
    (_col(Kind.TIME, time_zone=True), "Edm.String", "10:00:00+02:00", "10:00:00+02:00"),
    (_col(Kind.TIME, "MariaDB", duration=True), "Edm.Duration", dt.timedelta(hours=-1),
     "-PT1H"),
    (_col(Kind.NETWORK, network="inet"), "Edm.String", "10.0.0.1/8", "10.0.0.1/8"),
    (_col(Kind.JSON), "Edm.String", {"a": [1, None]}, '{"a": [1, null]}'),
])
def test_each_kind_renders_and_reads_in_its_edm_form(column: Column, edm: str, value: Any,
                                                     json_value: Any) -> None:
    from dualwrite.api.model import edm_type
    from dualwrite.api.payload import from_json, to_json
    from dualwrite.model.conversion import fit

    assert edm_type(column) == edm
    python = fit(value, column.kind) if not isinstance(value, dt.timedelta) else value
    out = to_json(python, column)
    assert out == json_value
    if column.kind is not Kind.DECIMAL or python.is_finite():
        back = from_json(loads(dumps(out)), PropertyInfo("p", column))  # as a request body
        assert back == python
