"""JSON payloads: property values in and out, entity bodies, ETags, exact JSON encoding.

Values go out in the OData JSON format of their Edm type (dates and times as ISO 8601 text,
binary as base64url, decimals as exact JSON numbers, or as strings with
``IEEE754Compatible=true``) and come in checked against the column's kind. Request bodies are
parsed with decimals kept exact (never through float) and duplicate names rejected.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from dualwrite.api.errors import ODataError, bad_request
from dualwrite.api.literals import (
    lookup_key,
    parse_key_predicate,
    parse_temporal,
    split_path,
)
from dualwrite.api.model import EntitySetInfo, PropertyInfo, edm_type
from dualwrite.model.codec import (
    base64url_text,
    decimal_of_float,
    duration_iso,
    duration_value,
    from_base64,
    micros,
    parse_time,
    utc_text,
)
from dualwrite.model.conversion import fit
from dualwrite.model.schema import Column, Facets, Kind, TableSchema
from dualwrite.model.values import (
    INFINITY,
    MINUS_INFINITY,
    EndOfDay,
    Infinite,
    Interval,
    JsonText,
    TemporalText,
    canonical,
)

#: Decimal exponents beyond this are refused: no column holds such a number, and arithmetic
#: on it (even normalising it) overflows Python's decimal context.
MAX_EXPONENT = 1000
INT64 = 2**63

__all__ = [
    "dumps",
    "entity_values",
    "etag_matches",
    "etag_of",
    "from_json",
    "loads",
    "parse_entity_body",
    "to_json",
]

# --------------------------------------------------------------------------------------------
# Exact JSON text


def dumps(obj: Any) -> bytes:
    """UTF-8 JSON for ``obj``; a Decimal is written as the exact JSON number it holds."""
    out: list[str] = []
    _encode(obj, out)
    return "".join(out).encode("utf-8")


def _encode(obj: Any, out: list[str]) -> None:
    if obj is None:
        out.append("null")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif isinstance(obj, str):
        out.append(json.dumps(obj, ensure_ascii=False))
    elif isinstance(obj, int):
        out.append(str(int(obj)))
    elif isinstance(obj, float):
        # OData writes the IEEE specials as strings; JSON has no literal for them
        if math.isnan(obj):
            out.append('"NaN"')
        elif math.isinf(obj):
            out.append('"INF"' if obj > 0 else '"-INF"')
        else:
            out.append(repr(obj))
    elif isinstance(obj, Decimal):
        out.append(str(obj) if obj.is_finite() else json.dumps(str(obj)))
    elif isinstance(obj, Mapping):
        out.append("{")
        for i, (k, v) in enumerate(obj.items()):
            if i:
                out.append(",")
            out.append(json.dumps(str(k), ensure_ascii=False))
            out.append(":")
            _encode(v, out)
        out.append("}")
    elif isinstance(obj, list | tuple):
        out.append("[")
        for i, v in enumerate(obj):
            if i:
                out.append(",")
            _encode(v, out)
        out.append("]")
    else:
        out.append(json.dumps(str(obj), ensure_ascii=False))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the name {k!r} appears twice in one JSON object")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_text(value: Any, what: str) -> None:
    """Refuse a string holding a lone surrogate (JSON's ``"\\ud800"`` escape without its
    pair): it is no Unicode character, and no database can store it."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                shown = item.encode("utf-8", "backslashreplace").decode("ascii", "replace")
                raise bad_request(
                    f"the {what} holds a lone surrogate (\\u{ord(item[exc.start]):04x}) in "
                    f"the string {shown[:60]!r}, which is not a Unicode character",
                    code="InvalidJson", hint="send UTF-16 surrogates only in pairs (one "
                    "character above U+FFFF), or the character itself") from None


def loads(body: bytes | str, *, what: str = "request body") -> Any:
    """Parse JSON text exactly (decimals as Decimal); a 400 ODataError if it is not JSON."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        value = json.loads(text, parse_float=Decimal, object_pairs_hook=_no_duplicates,
                           parse_constant=_reject_constant)
        _check_text(value, what)
        return value
    except UnicodeDecodeError:
        raise bad_request(f"the {what} is not UTF-8 text", code="InvalidJson") from None
    except RecursionError:
        raise bad_request(f"the {what} nests too deeply", code="InvalidJson") from None
    except ValueError as exc:
        raise bad_request(f"the {what} is not valid JSON: {exc}", code="InvalidJson") from None


# --------------------------------------------------------------------------------------------
# Values out


def to_json(value: Any, column: Column, *, ieee754: bool = False) -> Any:
    """The JSON value (as Python) of ``value`` from ``column``, per its Edm type.
    ``ieee754`` writes Edm.Int64 and Edm.Decimal as strings (``IEEE754Compatible=true``).

    Values Edm has no literal for are written as PostgreSQL writes them: the dates and
    timestamps ``infinity``/``-infinity``, the time ``24:00:00``, ``NaN``/``Infinity`` of an
    Edm.Decimal, a date outside the years 1-9999 as its database's text."""
    if value is None:
        return None
    kind = column.kind
    if isinstance(value, Infinite | TemporalText | EndOfDay) and not column.facets.duration:
        return str(value)
    if kind is Kind.STRING or kind is Kind.OTHER or kind is Kind.NETWORK:
        return value if isinstance(value, str) else str(value)
    if kind is Kind.INTEGER:
        number = int(value)
        return str(number) if ieee754 and edm_type(column) == "Edm.Int64" else number
    if kind is Kind.DECIMAL:
        d = value if isinstance(value, Decimal) else decimal_of_float(value) \
            if isinstance(value, float) else Decimal(str(value))
        return str(d) if ieee754 or not d.is_finite() else d
    if kind is Kind.FLOAT:
        return float(value)
    if kind is Kind.BOOLEAN:
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "t", "yes", "y")
        return bool(value)
    if kind is Kind.DATE:
        if isinstance(value, dt.datetime):
            return value.date().isoformat()
        return value.isoformat() if isinstance(value, dt.date) else str(value)
    if kind is Kind.DATETIME:
        if isinstance(value, dt.datetime):
            return utc_text(value)
        if isinstance(value, dt.date):
            return utc_text(dt.datetime.combine(value, dt.time()))
        return str(value)
    if kind is Kind.TIME:
        if column.facets.duration:  # MariaDB's TIME: a duration, Edm.Duration
            if isinstance(value, EndOfDay):
                return "PT24H"
            return duration_iso(micros(value)) if isinstance(value, dt.timedelta | dt.time) \
                else str(value)
        if isinstance(value, dt.timedelta):
            value = duration_value(micros(value))
        return value.isoformat() if isinstance(value, dt.time) else str(value)
    if kind is Kind.INTERVAL:
        return value.iso() if isinstance(value, Interval) else str(value)
    if kind is Kind.BINARY:
        if isinstance(value, bytes | bytearray | memoryview):
            return base64url_text(value)
        return str(value)
    if kind is Kind.UUID:
        return str(value).lower() if isinstance(value, uuid.UUID) else str(value)
    if kind is Kind.ARRAY:
        if not isinstance(value, list):
            return str(value)
        element = _element(column)
        return [None if v is None else to_json(v, column if isinstance(v, list) else element,
                                               ieee754=ieee754) for v in value]
    # Kind.JSON travels as Edm.String holding the JSON text
    return value if isinstance(value, str) else dumps(value).decode("utf-8")


def _element(column: Column) -> Column:
    """A column standing for one element of an array column (a nested array is an array)."""
    f = column.facets
    if isinstance(f.element, Kind):
        return Column(column.name, f.element, facets=f.element_facets or Facets())
    return Column(column.name, Kind.OTHER)


def entity_values(entity_set: EntitySetInfo, row: Mapping[str, Any],
                  select: Sequence[str] | None = None, *,
                  ieee754: bool = False) -> dict[str, Any]:
    """The properties of ``row`` as an OData JSON object (property order as in the table).
    ``select`` limits it to those property names; a column the row lacks is left out."""
    wanted = set(select) if select is not None else None
    out: dict[str, Any] = {}
    for name, prop in entity_set.properties.items():
        if wanted is not None and name not in wanted:
            continue
        column = prop.column.name
        if column in row:
            out[name] = to_json(row[column], prop.column, ieee754=ieee754)
    return out


# --------------------------------------------------------------------------------------------
# ETags


def _etag_value(value: Any) -> Any:
    c = canonical(value)
    if c is None:
        return None
    if isinstance(c, dt.datetime) and c.tzinfo is not None:
        # one instant, one text: drivers differ in whether they hand back the offset
        c = c.astimezone(dt.UTC).replace(tzinfo=None)
    if isinstance(c, bytes | bytearray):
        return "b:" + bytes(c).hex()
    if isinstance(c, dt.timedelta):
        return "t:" + str(c.total_seconds())
    if isinstance(c, dict | list):
        return "j:" + dumps(c).decode("utf-8")
    if isinstance(c, JsonText):  # by meaning: jsonb hands the text back normalised
        return "j:" + dumps(c.canonical()).decode("utf-8")
    if isinstance(c, tuple):
        return [_etag_value(v) for v in c]
    return f"{type(c).__name__[:1]}:{c}"


def etag_of(schema: TableSchema, row: Mapping[str, Any]) -> str:
    """The weak ETag of a row: ``W/"<sha1>"`` of its canonical column values.

    Canonical values (:func:`dualwrite.model.values.canonical`) make the tag the same
    whichever driver read the row (``Decimal('5.00')`` and ``5.0``, ``True`` and ``1``), so
    a tag read through one path matches the row read through another. Columns the schema
    does not declare are ignored.
    """
    folded = {str(k).casefold(): k for k in row}
    items = []
    for name in schema.columns:
        key = name if name in row else folded.get(name.casefold())
        items.append([name, _etag_value(row[key]) if key is not None else None])
    digest = hashlib.sha1(json.dumps(items, ensure_ascii=True).encode("ascii"),
                          usedforsecurity=False).hexdigest()
    return f'W/"{digest}"'


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag[:2] in ('W/', 'w/') else tag


def etag_matches(header: str, etag: str) -> bool:
    """Whether an ``If-Match``/``If-None-Match`` header value (``*`` or a comma-separated list
    of tags) matches ``etag``. Tags compare by their opaque part, so ``"x"`` matches
    ``W/"x"``: our tags are weak, and clients echo them with or without the prefix."""
    if header.strip() == "*":
        return True
    want = _opaque(etag)
    return any(_opaque(t) == want for t in header.split(",") if t.strip())


# --------------------------------------------------------------------------------------------
# Values in


def _bad_value(prop: PropertyInfo, value: Any, expected: str) -> ODataError:
    shown = value if not isinstance(value, str) or len(value) <= 60 else value[:57] + "..."
    return ODataError(400, "InvalidValue",
                      f"property {prop.name!r}: {shown!r} is not {expected}", target=prop.name)


def from_json(value: Any, prop: PropertyInfo) -> Any:
    """The Python value for the backend of JSON ``value`` sent for ``prop``; a 400 naming the
    property if it does not fit the property's type."""
    column = prop.column
    if value is None:
        if not column.nullable:
            raise ODataError(400, "InvalidValue",
                             f"property {prop.name!r} cannot be null", target=prop.name)
        return None
    kind = column.kind
    if kind is Kind.STRING or kind is Kind.OTHER:
        if isinstance(value, str):
            return value
        raise _bad_value(prop, value, "a string")
    if kind is Kind.JSON:
        if isinstance(value, str):
            return JsonText.of(loads(value, what=f"JSON text of property {prop.name!r}"))
        return JsonText.of(value)
    if kind is Kind.ARRAY:
        if not isinstance(value, list):
            raise _bad_value(prop, value, "a collection (a JSON array)")
        element = PropertyInfo(prop.name, _element(column))
        return [None if v is None else from_json(v, prop if isinstance(v, list) else element)
                for v in value]
    if kind is Kind.NETWORK:
        if not isinstance(value, str):
            raise _bad_value(prop, value, "a string holding an address")
        got = fit(value, Kind.NETWORK) if column.facets.network != "macaddr" else value
        if isinstance(got, str) and column.facets.network != "macaddr":
            raise _bad_value(prop, value, "an IP address or network")
        return got
    if kind is Kind.INTERVAL or (kind is Kind.TIME and column.facets.duration):
        if not isinstance(value, str):
            raise _bad_value(prop, value, "a duration such as P1DT2H30M")
        try:
            interval = Interval.parse(value)
        except ValueError:
            raise _bad_value(prop, value, "a duration such as P1DT2H30M") from None
        if kind is Kind.INTERVAL:
            return interval
        if interval.months:
            raise _bad_value(prop, value, "a duration in days and time (no months)")
        return duration_value(interval.days * 86_400_000_000 + interval.microseconds)
    if isinstance(value, str) and kind in (Kind.DATE, Kind.DATETIME) and \
            value in ("infinity", "-infinity"):
        return INFINITY if value == "infinity" else MINUS_INFINITY
    if isinstance(value, str) and kind is Kind.TIME and \
            (column.facets.time_zone or value.startswith("24:00")):
        try:
            return parse_time(value)
        except ValueError:
            raise _bad_value(prop, value, "a time of day such as 10:30:00+02:00") from None
    if kind is Kind.BOOLEAN:
        if isinstance(value, bool):
            return value
        raise _bad_value(prop, value, "true or false")
    if kind in (Kind.INTEGER, Kind.DECIMAL, Kind.FLOAT):
        return _number_in(value, prop)
    if not isinstance(value, str):
        raise _bad_value(prop, value, f"a string holding {edm_type(column)}")
    if kind is Kind.UUID:
        try:
            return uuid.UUID(value)
        except ValueError:
            raise _bad_value(prop, value, "a GUID") from None
    if kind is Kind.BINARY:
        try:
            return from_base64(value)
        except ValueError:
            raise _bad_value(prop, value, "base64url-encoded binary") from None
    try:
        return parse_temporal(value, kind)
    except ValueError:
        expected = {Kind.DATE: "a date such as 2024-01-31",
                    Kind.DATETIME: "a date and time with offset such as 2024-01-31T10:00:00Z",
                    Kind.TIME: "a time of day such as 10:30:00"}.get(kind, edm_type(column))
        raise _bad_value(prop, value, expected) from None


def _number_in(value: Any, prop: PropertyInfo) -> Any:
    kind = prop.column.kind
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise _bad_value(prop, value, "a number")
    if isinstance(value, str):
        # IEEE754Compatible clients send Int64 and Decimal as strings; doubles may be special
        if kind is Kind.FLOAT and value in ("NaN", "INF", "-INF"):
            return {"NaN": math.nan, "INF": math.inf, "-INF": -math.inf}[value]
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise _bad_value(prop, value, "a number") from None
        if not number.is_finite():
            raise _bad_value(prop, value, "a finite number")
        value = number
    if isinstance(value, Decimal) and abs(value.adjusted()) > MAX_EXPONENT:
        raise _bad_value(prop, value, "a number in range")
    if kind is Kind.FLOAT:
        double = float(value)
        if math.isinf(double):
            raise _bad_value(prop, value, "a number in the range of Edm.Double")
        return double
    if kind is Kind.DECIMAL:
        return value if isinstance(value, Decimal) else Decimal(value)
    if isinstance(value, Decimal):
        if value != value.to_integral_value():
            raise _bad_value(prop, value, "a whole number")
        value = int(value)
    if not -INT64 <= value < INT64:
        raise _bad_value(prop, value, "a whole number in the range of Edm.Int64")
    return value


def _bound_value(entity_set: EntitySetInfo, name: str, value: Any,
                 sets: Mapping[str, EntitySetInfo]) -> tuple[str, Any]:
    """(column, value) a navigation binding ``nav@odata.bind: "target(key)"`` sets: the
    lookup column takes the referenced value of the entity the binding names."""
    nav_name = name.rsplit("@", 1)[0]
    nav = entity_set.navigation(nav_name)
    if nav is None:
        raise ODataError(400, "UnknownProperty", f"{name!r}: entity set {entity_set.name!r} "
                         f"has no navigation property {nav_name!r}", target=name)
    target = sets[nav.target]
    if value is None:
        return nav.column, None
    text = value if isinstance(value, str) else ""
    start = text.find(f"{target.name}(")
    segments = split_path(text[start:]) if start >= 0 else []
    if len(segments) != 1 or segments[0].key is None:
        raise ODataError(400, "InvalidValue", f"{name!r}: {value!r} does not name an entity "
                         f"of {target.name!r}, e.g. {target.name}(<key>)", target=name)
    key, primary = lookup_key(target, parse_key_predicate(segments[0].key))
    if not primary or list(key) != [nav.target_column]:
        raise ODataError(400, "InvalidValue", f"{name!r}: bind {nav.name!r} by the key of "
                         f"{target.name!r}, which its lookup column holds", target=name)
    return nav.column, key[nav.target_column]


def parse_entity_body(entity_set: EntitySetInfo, body: Any,
                      sets: Mapping[str, EntitySetInfo] | None = None) -> dict[str, Any]:
    """Column -> value for an entity sent in a request body.

    Instance annotations (``@odata.type``, ``x@odata.etag``...) are ignored. A navigation
    binding (``nav@odata.bind: "target(<key>)"``) sets the lookup column (``sets``: the
    entity sets by name, to find the target; without them, 501). An unknown property is a
    400 naming it.
    """
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object holding the entity's "
                          "properties", code="InvalidBody")
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for name, value in body.items():
        if "@" in name:
            if name.endswith("@odata.bind") or name.endswith("@bind"):
                if sets is None:
                    raise ODataError(501, "NotImplemented", f"{name!r}: binding navigation "
                                     "properties is not supported here", target=name)
                column, bound = _bound_value(entity_set, name, value, sets)
                prop = entity_set.by_column(column)
                assert prop is not None  # build_model made the navigation from this column
                if prop.name in seen:
                    raise bad_request(f"{prop.name!r} is given twice ({seen[prop.name]!r} "
                                      f"and {name!r})", target=name, code="InvalidBody")
                seen[prop.name] = name
                values[column] = from_json(to_json(bound, prop.column), prop)
            continue
        prop = entity_set.prop(name)
        if prop is None:
            raise ODataError(400, "UnknownProperty",
                             f"entity set {entity_set.name!r} has no property {name!r}",
                             target=name)
        if prop.name in seen:
            raise bad_request(f"property {prop.name!r} is given twice ({seen[prop.name]!r} and "
                              f"{name!r})", target=name, code="InvalidBody")
        seen[prop.name] = name
        if isinstance(value, dict | list) and prop.column.kind not in (Kind.JSON, Kind.ARRAY):
            raise _bad_value(prop, value, "a primitive value (nested entities and collections "
                             "are not supported)")
        values[prop.column.name] = from_json(value, prop)
    return values
