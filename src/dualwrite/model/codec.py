"""Values between Python, JSON and text: each conversion defined once, here. Pure (no I/O).

A value of each :class:`~dualwrite.model.schema.Kind` is one Python object (see ``Kind``). It
travels in three other forms, and every module that writes or reads one of them calls the
functions below rather than spelling the conversion itself:

=========  ===========================  ==============================  ========================
Kind       a change log's JSON          the state store's JSON          text
           (:func:`from_log`)           (:func:`tag_value`)             (:func:`text_of`, parse)
=========  ===========================  ==============================  ========================
INTEGER    number (exact, any size)     number                          ``12``
DECIMAL    number, read as Decimal;     ``{"$d": "1.50"}``              ``1.50``, ``NaN``,
           money as ``$1,234.56``                                       ``Infinity``
FLOAT      number (shortest repr);      number; ``{"$nan": true}``,     ``0.1``, ``NaN``,
           specials as text             ``{"$inf": -1}``                ``-Infinity``
BOOLEAN    true/false or 1/0            true/false                      ``true``, ``false``
DATE       ISO text, ``infinity``;      ``{"$date": ...}``,             ISO 8601
           BC dates as TemporalText     ``$infinite``, ``$temporal``
DATETIME   ISO text (naive: UTC)        ``{"$dt": ...}``                ISO 8601
TIME       ISO text, ``24:00:00``,      ``{"$t": ...}``, ``$eod``,      ISO 8601, MariaDB's
           MariaDB's durations          ``$td``                         ``-838:59:59``
INTERVAL   PostgreSQL's text            ``{"$interval": ...}``          ``1 mon 2 days``
BINARY     ``"\\x0a0b"``                ``{"$b": base64}``              none (refused)
UUID       text                         ``{"$u": ...}``                 text
JSON       the document's text          ``{"$json": text}``             the document's text
=========  ===========================  ==============================  ========================

The OData JSON format (Edm types, ``IEEE754Compatible``, ``INF``) is a different *format*
over the same values: :mod:`dualwrite.api.payload` (the service) and
:mod:`dualwrite.connectors.odata` (the client) keep their Edm rules and call the primitives
here for what the formats share (UTC instants, durations, base64, exact numbers).

What converts a value of one *column* into a value of another (refusing what the target
cannot hold) is :mod:`dualwrite.model.conversion`, built on these.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import json
import math
import re
import struct
import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from dualwrite.model.schema import Column, Facets, Kind
from dualwrite.model.values import (
    END_OF_DAY,
    INFINITY,
    MINUS_INFINITY,
    EndOfDay,
    Infinite,
    Interval,
    JsonText,
    TemporalText,
    value_key,
)

Convert = Callable[[Any], Any]


class ValueRefused(ValueError):
    """A value the target column cannot hold. ``reason`` says why, ``hint`` what to do."""

    def __init__(self, reason: str, hint: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


# -- numbers ------------------------------------------------------------------------------


def single(v: float) -> float:
    """The double holding exactly the single-precision float nearest ``v`` (how dualwrite
    carries a REAL/FLOAT value: its exact binary value). Raises OverflowError out of its
    range."""
    return float(struct.unpack("<f", struct.pack("<f", v))[0])


def decimal_of_float(v: Any) -> Any:
    """A float as the Decimal of its shortest text (``0.1`` -> ``Decimal('0.1')``, not the
    binary value's 55 digits), NaN and the infinities as Decimal's; anything else as it is."""
    if not isinstance(v, float):
        return v
    if v != v:
        return Decimal("NaN")
    if math.isinf(v):
        return Decimal("Infinity") if v > 0 else Decimal("-Infinity")
    return Decimal(repr(v))


# -- durations and text ---------------------------------------------------------------------


def duration_text(v: dt.timedelta) -> str:
    """A duration as MariaDB's TIME writes it: ``-838:59:59.5``, ``25:00:00``."""
    us = v.days * 86_400_000_000 + v.seconds * 1_000_000 + v.microseconds
    sign = "-" if us < 0 else ""
    h, rest = divmod(abs(us), 3_600_000_000)
    m, rest = divmod(rest, 60_000_000)
    s, frac = divmod(rest, 1_000_000)
    return f"{sign}{h:02d}:{m:02d}:{s:02d}" + (f".{frac:06d}".rstrip("0") if frac else "")


def map_array(v: Any, conv: Convert) -> Any:
    """``conv`` applied to every element of a (nested) array, its NULLs kept."""
    if isinstance(v, list):
        return [None if x is None else map_array(x, conv) for x in v]
    return conv(v)


def text_of(v: Any) -> Any:
    """The exact text of a value of any kind (what a text column on the other side holds)."""
    if isinstance(v, str):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, Decimal):
        if not v.is_finite():
            return "NaN" if v.is_nan() else ("Infinity" if v > 0 else "-Infinity")
        return format(v.normalize(), "f") if v == v.to_integral_value() else str(v)
    if isinstance(v, float):
        if v != v:
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return repr(v)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return duration_text(v)
    if isinstance(v, bytes | bytearray | memoryview):
        raise ValueRefused("bytes have no text form here", hint="map them to a binary column")
    return str(v)


# -- text to values, per kind --------------------------------------------------------------


def parse_int(v: Any) -> int:
    if isinstance(v, int):
        return v
    return int(str(v).strip())


def parse_decimal(v: Any) -> Decimal:
    d = Decimal(str(v).strip())
    return d


def parse_float(v: Any) -> float:
    text = str(v).strip()
    return float({"Infinity": "inf", "-Infinity": "-inf"}.get(text, text))


def parse_bool(v: Any) -> bool:
    k = value_key(v)
    if k in ("1", "0", "yes", "no", "t", "f"):
        return k in ("1", "yes", "t")
    raise ValueError(f"{v!r} is not a boolean")


def parse_date(v: Any) -> Any:
    text = str(v).strip()
    special = {"infinity": INFINITY, "-infinity": MINUS_INFINITY}.get(text.lower())
    return special if special is not None else dt.date.fromisoformat(text)


def parse_datetime(v: Any) -> Any:
    text = str(v).strip()
    special = {"infinity": INFINITY, "-infinity": MINUS_INFINITY}.get(text.lower())
    return special if special is not None else dt.datetime.fromisoformat(text)


def parse_time(v: Any) -> Any:
    """A time of day from its ISO text (with an offset for a timetz); ``24:00:00`` is
    END_OF_DAY. Raises ValueError if it is not one."""
    text = str(v).strip()
    if text.startswith("24:00:00") or text == "24:00":
        rest = text[8:] if text.startswith("24:00:00") else ""
        if rest.strip("0.") == "":
            return END_OF_DAY
        off = dt.datetime.fromisoformat("2000-01-01T00:00:00" + rest.lstrip("0.") if rest
                                        else "").utcoffset()
        return EndOfDay(int(off.total_seconds()) if off is not None else None)
    return dt.time.fromisoformat(text)


def parse_json(v: Any) -> JsonText:
    doc = JsonText(str(v))
    doc.parsed()  # raises ValueError when it is not JSON
    return doc


def parse_uuid(v: Any) -> uuid.UUID:
    return v if isinstance(v, uuid.UUID) else uuid.UUID(str(v).strip())


TEXT_PARSERS: dict[Kind, Callable[[Any], Any]] = {
    Kind.INTEGER: parse_int, Kind.DECIMAL: parse_decimal, Kind.FLOAT: parse_float,
    Kind.BOOLEAN: parse_bool, Kind.DATE: parse_date, Kind.DATETIME: parse_datetime,
    Kind.TIME: parse_time, Kind.UUID: parse_uuid, Kind.JSON: parse_json,
}


# -- values from a change log ------------------------------------------------------------------


def from_log(column: Column) -> Convert | None:
    """The decoder of ``column``'s values as a change log's JSON carries them (numbers as
    Decimal, everything else JSON has no type for as text), giving the value a connector
    reads for that column; None where JSON carries it as it is. A value it cannot read is
    returned as it is, for the conversion to refuse at its row."""
    f = column.facets
    if column.kind is Kind.FLOAT and (f.precision or 53) < 53:
        def real(v: Any) -> Any:
            x = _log_float(v)
            try:
                return single(x) if isinstance(x, float) and math.isfinite(x) else x
            except OverflowError:
                return x

        return _lenient(real)
    if column.kind is Kind.DECIMAL and f.money:
        return _lenient(_log_money)
    if column.kind is Kind.DECIMAL and f.database == "SQLite":
        # SQLite logs a real with 18 digits, to carry its double exactly: the value read is
        # that double, in its shortest form; an integer or a text is exact as it is
        return _lenient(_log_sqlite_decimal)
    if column.kind is Kind.OTHER and f.type_name.upper().startswith("BIT"):
        # MariaDB's BIT is logged as a number, and read as its bytes
        size = max(1, ((column.length or 1) + 7) // 8)
        return _lenient(lambda v: int(v).to_bytes(size, "big")
                        if isinstance(v, int | Decimal) and not isinstance(v, bool) else v)
    if column.kind is Kind.NETWORK:
        net = f.network

        def address(v: Any) -> Any:
            if not isinstance(v, str) or net == "macaddr":
                return v
            if net == "cidr":
                return ipaddress.ip_network(v)
            return ipaddress.ip_interface(v) if "/" in v else ipaddress.ip_address(v)

        return _lenient(address)
    if column.kind is Kind.ARRAY:
        inner = from_log(Column("element", f.element or Kind.OTHER,
                                facets=f.element_facets or Facets()))
        if inner is None:
            return None
        conv = inner

        def each(v: Any) -> Any:
            return map_array(v, conv) if isinstance(v, list) else v

        return each
    dec = _LOG.get(column.kind)
    return None if dec is None else _lenient(dec)


def _lenient(fn: Convert) -> Convert:
    def decode(v: Any) -> Any:
        if v is None:
            return None
        try:
            return fn(v)
        except (ValueError, InvalidOperation, TypeError, OverflowError):
            return v

    return decode


def _log_decimal(v: Any) -> Any:
    if isinstance(v, Decimal):
        return v
    if isinstance(v, int | str) and not isinstance(v, bool):
        return Decimal(str(v).strip())
    return v


def _log_money(v: Any) -> Any:
    if isinstance(v, Decimal | int):
        return Decimal(v)
    if isinstance(v, str):
        return parse_money(v)
    return v


def parse_money(text: str) -> Decimal:
    """PostgreSQL's money text (``$1,234.56``, ``-$5.50``, ``($5.50)``) as a Decimal; the
    group separator is the one that is not followed by exactly two final digits."""
    t = text.strip()
    neg = t.startswith("-") or (t.startswith("(") and t.endswith(")")) or t.endswith("-")
    digits = "".join(c for c in t if c.isdigit() or c in ".,")
    if len(digits) > 3 and digits[-3] in ".,":
        whole, frac = digits[:-3], digits[-2:]
    else:
        whole, frac = digits, ""
    whole = whole.replace(",", "").replace(".", "")
    d = Decimal(f"{whole or '0'}.{frac or '00'}")
    return -d if neg else d


def _log_float(v: Any) -> Any:
    if isinstance(v, float):
        return v
    if isinstance(v, Decimal | int) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        return parse_float(v)
    return v


def _log_bool(v: Any) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, int | Decimal):
        return bool(v)
    return parse_bool(v)


def _log_date(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    try:
        return parse_date(v)
    except ValueError:
        return TemporalText(v)


def _log_datetime(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    try:
        return parse_datetime(v)
    except ValueError:
        return TemporalText(v)


def _log_time(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    try:
        return parse_time(v)
    except ValueError:
        return parse_duration(v)


def parse_duration(text: str) -> Any:
    """MariaDB's TIME text (``-838:59:59.5``, ``25:00:00``) as a time of day when it is one
    (``24:00:00`` as END_OF_DAY), else a ``timedelta``."""
    t = text.strip()
    neg = t.startswith("-")
    parts = t.lstrip("+-").split(":")
    if len(parts) != 3:
        raise ValueError(f"{text!r} is not a TIME value")
    whole, _, frac = parts[2].partition(".")
    us = (int(parts[0]) * 3600 + int(parts[1]) * 60 + int(whole)) * 1_000_000 + \
        int((frac + "000000")[:6] or 0)
    return duration_value(-us if neg else us)


def duration_value(us: int) -> Any:
    """A MariaDB TIME of ``us`` microseconds: a ``time`` within the day, END_OF_DAY at 24:00,
    else a ``timedelta`` (a duration)."""
    if 0 <= us < 86_400_000_000:
        h, rest = divmod(us, 3_600_000_000)
        m, rest = divmod(rest, 60_000_000)
        s, micro = divmod(rest, 1_000_000)
        return dt.time(h, m, s, micro)
    if us == 86_400_000_000:
        return END_OF_DAY
    return dt.timedelta(microseconds=us)


def _log_interval(v: Any) -> Any:
    return Interval.parse(v) if isinstance(v, str) else v


def _log_binary(v: Any) -> Any:
    if isinstance(v, str) and v.startswith("\\x"):
        return bytes.fromhex(v[2:])
    return v


def _log_uuid(v: Any) -> Any:
    return uuid.UUID(v) if isinstance(v, str) else v


def _log_json(v: Any) -> Any:
    # a change log carries a JSON document as its text (a JSON string), so that JSON null
    # stays apart from SQL NULL; a value that is no text came from an older log
    if isinstance(v, JsonText):
        return v
    return JsonText(v) if isinstance(v, str) else JsonText.of(v)


def _log_sqlite_decimal(v: Any) -> Any:
    # a JSON number with a point or an exponent (a real), or SQLite's Inf: the double
    if isinstance(v, Decimal | float) or (isinstance(v, str) and v[-3:].lower() == "inf"):
        return Decimal(repr(float(v)))
    return _log_decimal(v)


_LOG: dict[Kind, Convert] = {
    Kind.DECIMAL: _log_decimal, Kind.FLOAT: _log_float, Kind.BOOLEAN: _log_bool,
    Kind.DATE: _log_date, Kind.DATETIME: _log_datetime, Kind.TIME: _log_time,
    Kind.INTERVAL: _log_interval, Kind.BINARY: _log_binary, Kind.UUID: _log_uuid,
    Kind.JSON: _log_json,
}


# -- JSON text (change logs, messages) -----------------------------------------------------------

#: one decoder for every log row: json.loads(parse_float=...) would build one per call
_DECODER = json.JSONDecoder(parse_float=Decimal)


def _parse_json_int(text: str) -> Any:
    # JSON's -0 is an integer token, and int("-0") is 0: keep its sign (it is a float's)
    return Decimal(text) if text == "-0" else int(text)


#: the decoder for texts holding a -0 (rare: the default's integer parsing is C, this one's
#: calls back into Python for every integer)
_SIGNED_ZERO_DECODER = json.JSONDecoder(parse_float=Decimal, parse_int=_parse_json_int)
#: a -0 number token: after a member's colon, a comma or an opening bracket (the databases
#: write no space there), before a comma or a closing bracket; inside a string it only costs
#: the slower decoder
_SIGNED_ZERO = re.compile(r"[:,\[]\s*-0\s*[,}\]]")


def decode_json(text: Any) -> Any:
    """JSON from a log column: numbers as Decimal (exact, ``-0`` included), the rest as JSON
    has them."""
    if text is None:
        return None
    if isinstance(text, dict | list):  # psycopg decodes json columns itself
        return text
    if "-0" in text and _SIGNED_ZERO.search(text):
        return _SIGNED_ZERO_DECODER.decode(text)
    return _DECODER.decode(text)


# -- instants ------------------------------------------------------------------------------------


def parse_instant(value: Any) -> dt.datetime:
    """An aware datetime from a datetime or its ISO text; one without a zone is UTC (how
    dualwrite writes its own timestamps: change logs, the state store)."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    t = dt.datetime.fromisoformat(str(value))
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def utc_text(value: dt.datetime) -> str:
    """ISO 8601 text of a datetime with its offset, ``Z`` for UTC; one without a zone is UTC
    (a column without a zone holds UTC: see Kind.DATETIME). The offset is kept as it is:
    convert first (``value.astimezone(dt.UTC)``) for UTC text."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


# -- durations -----------------------------------------------------------------------------------


def micros(v: dt.timedelta | dt.time) -> int:
    """Microseconds of a duration, or of a time of day since midnight."""
    if isinstance(v, dt.time):
        return ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond
    return (v.days * 86_400 + v.seconds) * 1_000_000 + v.microseconds


def duration_iso(us: int) -> str:
    """ISO 8601 days and time (OData's Edm.Duration) of ``us`` microseconds: ``P1DT2H``,
    ``-PT0.5S``."""
    days, rest = divmod(abs(us), 86_400_000_000)
    return ("-" if us < 0 else "") + Interval(0, days, rest).iso()


# -- bytes ---------------------------------------------------------------------------------------


def base64url_text(value: bytes | bytearray | memoryview, *, padded: bool = True) -> str:
    """base64url (OData's binary encoding) of bytes, with its ``=`` padding or without."""
    text = base64.urlsafe_b64encode(bytes(value)).decode("ascii")
    return text if padded else text.rstrip("=")


def from_base64(text: str) -> bytes:
    """Bytes from base64url (OData's binary encoding) or plain base64, padded or not.
    Raises ValueError if it is neither."""
    cleaned = text.replace("-", "+").replace("_", "/").rstrip("=")
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(str(exc)) from None


# -- values in dualwrite's own JSON (the state store: keys, inbox entries, parked changes) ------

_IP_TYPES: dict[str, Any] = {
    "IPv4Address": ipaddress.IPv4Address, "IPv6Address": ipaddress.IPv6Address,
    "IPv4Interface": ipaddress.IPv4Interface, "IPv6Interface": ipaddress.IPv6Interface,
    "IPv4Network": ipaddress.IPv4Network, "IPv6Network": ipaddress.IPv6Network,
}


def tag(value: Any) -> Any:
    """A JSON-ready stand-in for a value of one of dualwrite's own types, a duration or an
    address (one-member objects with a ``$`` name, read back by :func:`untag`); other values
    as they are. :func:`tag_value` covers the database types JSON has not, and falls back to
    this."""
    if isinstance(value, Interval):
        return {"$interval": value.pg_text()}
    if isinstance(value, Infinite):
        return {"$infinite": value.sign}
    if isinstance(value, EndOfDay):
        return {"$eod": value.offset}
    if isinstance(value, TemporalText):
        return {"$temporal": value.text}
    if isinstance(value, JsonText):
        return {"$json": str(value)}
    if isinstance(value, dt.timedelta):
        return {"$td": [value.days, value.seconds, value.microseconds]}
    if type(value).__name__ in _IP_TYPES:
        return {"$ip": [type(value).__name__, str(value)]}
    if isinstance(value, set | frozenset):
        return sorted(tag(v) for v in value)
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return {"$inf": 1 if value > 0 else -1}
    return value


def untag(value: Any) -> Any:
    """The value :func:`tag` stood in for (anything else unchanged)."""
    if not isinstance(value, dict) or len(value) != 1:
        return value
    (k, x), = value.items()
    if k == "$interval":
        return Interval.parse(x)
    if k == "$infinite":
        return INFINITY if x > 0 else MINUS_INFINITY
    if k == "$eod":
        return EndOfDay(x)
    if k == "$temporal":
        return TemporalText(x)
    if k == "$json":
        return JsonText(x)
    if k == "$td":
        return dt.timedelta(days=x[0], seconds=x[1], microseconds=x[2])
    if k == "$ip" and x[0] in _IP_TYPES:
        return _IP_TYPES[x[0]](x[1])
    if k == "$inf":
        return float("inf") if x > 0 else float("-inf")
    return value


def tag_value(v: Any) -> Any:
    """A database value (or a list of them) as JSON that :func:`untag_value` reads back with
    the Python type it had: how the state store keeps keys and rows."""
    if isinstance(v, Decimal):
        return {"$d": str(v)}
    if isinstance(v, dt.datetime):
        return {"$dt": v.isoformat()}
    if isinstance(v, dt.date):
        return {"$date": v.isoformat()}
    if isinstance(v, dt.time):
        return {"$t": v.isoformat()}
    if isinstance(v, uuid.UUID):
        return {"$u": str(v)}
    if isinstance(v, bytes | memoryview):
        return {"$b": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, float) and v != v:
        return {"$nan": True}
    if isinstance(v, list):
        return [tag_value(x) for x in v]
    return tag(v)  # dualwrite's own value types, addresses, durations


def untag_value(v: Any) -> Any:
    """The value :func:`tag_value` stood in for (anything else unchanged)."""
    if isinstance(v, list):
        return [untag_value(x) for x in v]
    if isinstance(v, dict) and len(v) == 1:
        (k, x), = v.items()
        if k == "$d":
            return Decimal(x)
        if k == "$dt":
            return dt.datetime.fromisoformat(x)
        if k == "$date":
            return dt.date.fromisoformat(x)
        if k == "$t":
            return dt.time.fromisoformat(x)
        if k == "$u":
            return uuid.UUID(x)
        if k == "$b":
            return base64.b64decode(x)
        if k == "$nan":
            return float("nan")
        return untag(v)
    return v
