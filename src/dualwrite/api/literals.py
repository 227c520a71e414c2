"""OData URL literals (OData ABNF): resource paths, key predicates, typed key values.

Parsing is typed by the column the literal is for: ``'C-1'`` for a string (a quote inside is
written ``''``), ``42`` for an integer, ``1.5`` / ``1e3`` for decimals and doubles (also
``INF``, ``-INF``, ``NaN``), ``true``/``false``, ``2024-01-31``, ``2024-01-31T10:00:00Z``,
``10:30:00``, a bare GUID, ``binary'AQID'`` (base64url). Every failure is a 400
:class:`~dualwrite.api.errors.ODataError` naming the property.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from dualwrite.api.errors import ODataError, bad_request
from dualwrite.api.model import EntitySetInfo, PropertyInfo
from dualwrite.model.codec import base64url_text, from_base64, utc_text
from dualwrite.model.schema import Column, Kind
from dualwrite.model.values import Interval

__all__ = [
    "Segment",
    "entity_path",
    "format_literal",
    "key_predicate",
    "lookup_key",
    "parse_key_predicate",
    "parse_literal",
    "parse_temporal",
    "split_path",
]

_INT = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|z|[+-]\d{2}:\d{2})")
_TIME = re.compile(r"(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?")
_GUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_BINARY = re.compile(r"(?:binary|X)'([A-Za-z0-9_\-+/=]*)'", re.IGNORECASE)
_DURATION = re.compile(r"duration'([-+]?P[0-9YMWDTHS.+-]*)'", re.IGNORECASE)
_INT64 = 2**63

#: Characters left as they are when a key literal goes into a URL path; the rest is
#: percent-encoded (so a '/' or '?' inside a string key cannot break the URL).
_PATH_SAFE = "'()=,:@!$*+;-._~"


@dataclass(frozen=True)
class Segment:
    """One resource path segment: a name and, if present, the text between the parentheses
    of a key predicate (``accounts('C-1')`` -> ``Segment("accounts", "'C-1'")``)."""

    name: str
    key: str | None = None


def _scan_parenthesis(text: str, start: int) -> int:
    """Index of the ')' closing the '(' at ``start``, skipping quoted strings."""
    i = start + 1
    in_quote = False
    while i < len(text):
        c = text[i]
        if in_quote:
            if c == "'":
                if i + 1 < len(text) and text[i + 1] == "'":
                    i += 2
                    continue
                in_quote = False
        elif c == "'":
            in_quote = True
        elif c == ")":
            return i
        i += 1
    raise bad_request(f"unbalanced parenthesis in the resource path {text!r}",
                      code="InvalidPath",
                      hint="close the key with ')' and write a quote inside a string as ''")


def split_path(path: str) -> list[Segment]:
    """Split a decoded resource path (relative to the service root) into segments. Slashes
    inside quoted key values do not split."""
    segments: list[Segment] = []
    i, n = 0, len(path)
    while i < n:
        start = i
        while i < n and path[i] not in "(/":
            i += 1
        name = path[start:i]
        key: str | None = None
        if i < n and path[i] == "(":
            end = _scan_parenthesis(path, i)
            key = path[i + 1:end]
            i = end + 1
            if i < n and path[i] != "/":
                raise bad_request(f"unexpected {path[i:]!r} after the key predicate in "
                                  f"{path!r}", code="InvalidPath")
        if not name and (key is not None or (i < n and path[i] == "/")):
            raise bad_request(f"empty segment in the resource path {path!r}",
                              code="InvalidPath")
        segments.append(Segment(name, key))
        if i < n and path[i] == "/":
            i += 1
    return [s for s in segments if s.name or s.key is not None]


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    in_quote = False
    for c in text:
        if c == "'":
            in_quote = not in_quote  # '' toggles twice, which is right for an escaped quote
        if c == sep and not in_quote:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(c)
    parts.append("".join(buf))
    return parts


def parse_key_predicate(text: str) -> list[tuple[str | None, str]]:
    """``'C-1'`` -> ``[(None, "'C-1'")]``; ``a='x',b=1`` -> ``[("a", "'x'"), ("b", "1")]``.
    Values stay raw literals, to be typed by :func:`parse_literal`."""
    if not text.strip():
        raise bad_request("empty key predicate '()': give the key value, e.g. accounts('C-1')",
                          code="InvalidKey")
    out: list[tuple[str | None, str]] = []
    for part in _split_outside_quotes(text, ","):
        pieces = _split_outside_quotes(part, "=")
        if len(pieces) == 1:
            out.append((None, part.strip()))
        elif len(pieces) == 2 and pieces[0].strip():
            out.append((pieces[0].strip(), pieces[1].strip()))
        else:
            raise bad_request(f"malformed key predicate ({text})", code="InvalidKey",
                              hint="write name=value pairs separated by commas, "
                              "e.g. (dataAreaId='usmf',ACCOUNT='C-1')")
    if len(out) > 1 and any(name is None for name, _ in out):
        raise bad_request(f"malformed key predicate ({text}): with several values, "
                          "name each one", code="InvalidKey")
    return out


def _bad_literal(raw: str, prop: PropertyInfo, expected: str) -> ODataError:
    return ODataError(400, "InvalidLiteral",
                      f"{raw!r} is not a valid literal for property {prop.name!r}: expected "
                      f"{expected}", target=prop.name)


def parse_literal(raw: str, prop: PropertyInfo) -> Any:
    """The Python value of URL literal ``raw`` for property ``prop`` (typed by its column)."""
    text = raw.strip()
    kind = prop.column.kind
    if text == "null":
        raise _bad_literal(raw, prop, "a value (null cannot address an entity)")
    if kind in (Kind.STRING, Kind.JSON, Kind.OTHER, Kind.NETWORK):
        if len(text) >= 2 and text[0] == "'" and text[-1] == "'":
            inner = text[1:-1]
            if "'" not in inner.replace("''", ""):
                return inner.replace("''", "'")
        raise _bad_literal(raw, prop, "a string in single quotes, e.g. 'C-1' (write a quote "
                           "inside it as '')")
    if kind is Kind.INTERVAL:
        m = _DURATION.fullmatch(text)
        if m:
            try:
                return Interval.parse(m.group(1))
            except ValueError:
                pass
        raise _bad_literal(raw, prop, "duration'P1DT2H' (ISO 8601)")
    if kind is Kind.ARRAY:
        raise _bad_literal(raw, prop, "a value of a primitive type (a collection cannot "
                           "address an entity)")
    if kind is Kind.INTEGER:
        if _INT.fullmatch(text):
            value = int(text)
            if -_INT64 <= value < _INT64:
                return value
        raise _bad_literal(raw, prop, "a whole number")
    if kind is Kind.DECIMAL:
        # beyond 1e1000 no column holds the number, and Python's decimal context overflows
        if _NUMBER.fullmatch(text) and abs(Decimal(text).adjusted()) <= 1000:
            return Decimal(text)
        raise _bad_literal(raw, prop, "a decimal number, e.g. 12.50")
    if kind is Kind.FLOAT:
        special = {"INF": math.inf, "-INF": -math.inf, "NaN": math.nan}
        if text in special:
            return special[text]
        if _NUMBER.fullmatch(text) and not math.isinf(float(text)):
            return float(text)
        raise _bad_literal(raw, prop, "a number, e.g. 1.5e3")
    if kind is Kind.BOOLEAN:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise _bad_literal(raw, prop, "true or false")
    if kind is Kind.UUID:
        if _GUID.fullmatch(text):
            return uuid.UUID(text)
        raise _bad_literal(raw, prop, "a GUID such as 01234567-89ab-cdef-0123-456789abcdef")
    if kind is Kind.BINARY:
        m = _BINARY.fullmatch(text)
        if m:
            try:
                return from_base64(m.group(1))
            except ValueError:
                pass
        raise _bad_literal(raw, prop, "binary'<base64url>'")
    try:
        return parse_temporal(text, kind)
    except ValueError:
        expected = {Kind.DATE: "a date such as 2024-01-31",
                    Kind.DATETIME: "a date and time with offset such as 2024-01-31T10:00:00Z",
                    Kind.TIME: "a time of day such as 10:30:00"}[kind]
        raise _bad_literal(raw, prop, expected) from None


def parse_temporal(text: str, kind: Kind) -> dt.date | dt.time:
    """A date (Edm.Date), aware datetime (Edm.DateTimeOffset) or time (Edm.TimeOfDay) from its
    ISO 8601 text as OData writes it. Raises ValueError if it is not one."""
    if kind is Kind.DATE:
        if not _DATE.fullmatch(text):
            raise ValueError(text)
        return dt.date.fromisoformat(text)
    if kind is Kind.DATETIME:
        m = _DATETIME.fullmatch(text)
        if not m:
            raise ValueError(text)
        day, hm, sec, frac, tz = m.groups()
        micro = (frac or "").ljust(6, "0")[:6]
        offset = "+00:00" if tz in ("Z", "z") else tz
        return dt.datetime.fromisoformat(f"{day}T{hm}:{sec or '00'}.{micro}{offset}")
    if kind is Kind.TIME:
        m = _TIME.fullmatch(text)
        if not m:
            raise ValueError(text)
        hh, mm, ss, frac = m.groups()
        return dt.time(int(hh), int(mm), int(ss or 0), int((frac or "").ljust(6, "0")[:6]))
    raise ValueError(f"{kind} is not temporal")  # pragma: no cover - callers pass temporal kinds


def format_literal(value: Any, column: Column) -> str:
    """The URL literal for ``value`` in ``column`` (inverse of :func:`parse_literal`)."""
    if value is None:
        return "null"
    kind = column.kind
    if kind is Kind.BOOLEAN:
        return "true" if value else "false"
    if kind is Kind.INTEGER and not isinstance(value, str):
        return str(int(value))
    if kind in (Kind.DECIMAL, Kind.FLOAT) and not isinstance(value, str):
        if isinstance(value, float):
            if math.isnan(value):
                return "NaN"
            if math.isinf(value):
                return "INF" if value > 0 else "-INF"
            return repr(value)
        return str(value)
    if kind is Kind.UUID:
        return str(value).lower()
    if kind is Kind.INTERVAL and isinstance(value, Interval):
        return f"duration'{value.iso()}'"
    if kind is Kind.DATE and isinstance(value, dt.date):
        return (value.date() if isinstance(value, dt.datetime) else value).isoformat()
    if kind is Kind.DATETIME and isinstance(value, dt.datetime):
        return utc_text(value)
    if kind is Kind.TIME and isinstance(value, dt.time):
        return value.isoformat()
    if kind is Kind.BINARY and isinstance(value, bytes | bytearray | memoryview):
        return "binary'" + base64url_text(value) + "'"
    if kind in (Kind.STRING, Kind.JSON, Kind.OTHER) or isinstance(value, str):
        return "'" + str(value).replace("'", "''") + "'"
    return str(value)


def key_predicate(entity_set: EntitySetInfo, row: Mapping[str, Any]) -> str:
    """``('C-1')`` or ``(dataAreaId='usmf',ACCOUNT='C-1')`` for the row's entity key, with
    each literal percent-encoded for use in a URL path."""
    parts: list[tuple[str, str]] = []
    for name in entity_set.key:
        prop = entity_set.properties[name]
        value = row.get(prop.column.name)
        parts.append((name, quote(format_literal(value, prop.column), safe=_PATH_SAFE)))
    if len(parts) == 1:
        return f"({parts[0][1]})"
    return "(" + ",".join(f"{n}={v}" for n, v in parts) + ")"


def entity_path(entity_set: EntitySetInfo, row: Mapping[str, Any]) -> str:
    """The canonical path of the row's entity relative to the service root."""
    return entity_set.name + key_predicate(entity_set, row)


def lookup_key(entity_set: EntitySetInfo,
               pairs: list[tuple[str | None, str]]) -> tuple[dict[str, Any], bool]:
    """Resolve a parsed key predicate: ``(column -> value, is_primary_key)``.

    A single unnamed value addresses a single-property entity key. Named values must name
    exactly the entity key's properties or one alternate key's (names case-insensitive).
    """
    if len(pairs) == 1 and pairs[0][0] is None:
        if len(entity_set.key) != 1:
            raise bad_request(
                f"entity set {entity_set.name!r} has a composite key "
                f"({', '.join(entity_set.key)}): name each key property, e.g. "
                f"{entity_set.name}({','.join(k + '=...' for k in entity_set.key)})",
                code="InvalidKey")
        only = entity_set.properties[entity_set.key[0]]
        return {only.column.name: parse_literal(pairs[0][1], only)}, True
    named: dict[str, tuple[PropertyInfo, str]] = {}
    for name, raw in pairs:
        assert name is not None  # parse_key_predicate names every value of a multi-value key
        found = entity_set.prop(name)
        if found is None:
            raise ODataError(400, "UnknownProperty",
                             f"entity set {entity_set.name!r} has no property {name!r} "
                             "to use in a key", target=name)
        if found.name in named:
            raise bad_request(f"key property {found.name!r} is given twice", code="InvalidKey",
                              target=found.name)
        named[found.name] = (found, raw)
    given = set(named)
    is_primary = given == set(entity_set.key)
    if not is_primary and not any(given == set(a) for a in entity_set.alternate_keys):
        keys = [entity_set.key, *entity_set.alternate_keys]
        raise bad_request(
            f"({', '.join(sorted(given))}) is neither the key nor an alternate key of "
            f"{entity_set.name!r}; keys: " + "; ".join("(" + ", ".join(k) + ")" for k in keys),
            code="InvalidKey")
    return {prop.column.name: parse_literal(raw, prop) for prop, raw in named.values()}, \
        is_primary
