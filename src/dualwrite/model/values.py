"""Values: the types dualwrite carries where Python has none, canonical forms, value maps.
Pure.

Two databases hand back the same value as different Python objects (``Decimal('5.00')`` from
PostgreSQL, ``5.0`` from SQLite, ``1`` for ``True`` from MariaDB). :func:`canonical` maps each to
one comparable form so that diffing and value maps agree across backends.

Where Python has no type for a database value, dualwrite carries one of its own, so that the
value is read, compared and written exactly instead of failing or changing:

* :class:`Interval`: PostgreSQL's ``interval`` (months, days and time apart: ``1 mon`` is not
  ``30 days``);
* :data:`INFINITY` / :data:`MINUS_INFINITY`: the dates and timestamps ``infinity`` and
  ``-infinity``;
* :data:`END_OF_DAY`: the time ``24:00:00`` (:class:`EndOfDay`, with an offset for timetz);
* :class:`TemporalText`: a date or timestamp outside Python's years 1-9999 (``0044-03-15 BC``),
  or a text that a SQLite date column holds, kept as its database's text;
* :class:`JsonText`: a JSON document, as its text, compared by meaning (key order, spacing and
  number spelling aside). JSON ``null`` is the text ``null``; SQL NULL is ``None``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from dualwrite.errors import MapSyntaxError

# -- values Python has no type for -----------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A PostgreSQL ``interval``: months, days and microseconds, each with its own sign, as the
    database keeps them (a month is not a number of days, nor a day a number of hours)."""

    months: int = 0
    days: int = 0
    microseconds: int = 0

    @classmethod
    def parse(cls, text: str) -> Interval:
        """An interval from PostgreSQL's text in any ``IntervalStyle`` (postgres,
        postgres_verbose, iso_8601, sql_standard). Raises ValueError if it is not one."""
        return _parse_interval(text)

    @classmethod
    def from_timedelta(cls, td: dt.timedelta) -> Interval:
        return cls(0, td.days, td.seconds * 1_000_000 + td.microseconds)

    def pg_text(self) -> str:
        """PostgreSQL's own output (``IntervalStyle = postgres``), which it reads back exactly:
        ``1 year 2 mons 3 days 04:05:06.789``."""
        out: list[str] = []
        state = {"zero": True, "before": False}

        def part(value: int, unit: str) -> None:
            if value == 0:
                return
            plus = "+" if state["before"] and value > 0 else ""
            out.append(f"{'' if state['zero'] else ' '}{plus}{value} {unit}"
                       f"{'' if value == 1 else 's'}")
            state["before"] = value < 0
            state["zero"] = False

        years, months = _ctrunc(self.months, 12), _crem(self.months, 12)
        part(years, "year")
        part(months, "mon")
        part(self.days, "day")
        us = self.microseconds
        if state["zero"] or us != 0:
            minus = us < 0
            a = abs(us)
            hours, rest = divmod(a, 3_600_000_000)
            mins, rest = divmod(rest, 60_000_000)
            secs, frac = divmod(rest, 1_000_000)
            sign = "-" if minus else ("+" if state["before"] else "")
            text = f"{'' if state['zero'] else ' '}{sign}{hours:02d}:{mins:02d}:{secs:02d}"
            if frac:
                text += f".{frac:06d}".rstrip("0")
            out.append(text)
        return "".join(out)

    def iso(self) -> str:
        """ISO 8601: ``P1Y2M3DT4H5M6.789S``, ``PT0S`` for zero; a negative interval as
        ``-P1D`` (OData's Edm.Duration), one with fields of both signs as PostgreSQL's
        ``iso_8601`` style writes it, each field with its own sign (``P-1M2D``)."""
        if min(self.months, self.days, self.microseconds) < 0 and \
                max(self.months, self.days, self.microseconds) <= 0:
            return "-" + Interval(-self.months, -self.days, -self.microseconds).iso()
        years, months = _ctrunc(self.months, 12), _crem(self.months, 12)
        out = "P"
        if years:
            out += f"{years}Y"
        if months:
            out += f"{months}M"
        if self.days:
            out += f"{self.days}D"
        us = self.microseconds
        if us or out == "P":
            out += "T"
            sign = "-" if us < 0 else ""
            a = abs(us)
            hours, rest = divmod(a, 3_600_000_000)
            mins, rest = divmod(rest, 60_000_000)
            secs, frac = divmod(rest, 1_000_000)
            if hours:
                out += f"{sign}{hours}H"
            if mins:
                out += f"{sign}{mins}M"
            if secs or frac or (not hours and not mins):
                text = f"{secs}" + (f".{frac:06d}".rstrip("0") if frac else "")
                out += f"{sign if (secs or frac) else ''}{text}S"
        return out

    def __str__(self) -> str:
        return self.pg_text()


def _ctrunc(a: int, b: int) -> int:
    """a / b truncated towards zero, as C divides."""
    q = abs(a) // b
    return q if a >= 0 else -q


def _crem(a: int, b: int) -> int:
    return a - b * _ctrunc(a, b)


_UNITS = {
    "microsecond": ("us", 1), "microseconds": ("us", 1), "us": ("us", 1), "usec": ("us", 1),
    "usecs": ("us", 1),
    "millisecond": ("us", 1000), "milliseconds": ("us", 1000), "ms": ("us", 1000),
    "msec": ("us", 1000), "msecs": ("us", 1000),
    "second": ("us", 1_000_000), "seconds": ("us", 1_000_000), "sec": ("us", 1_000_000),
    "secs": ("us", 1_000_000), "s": ("us", 1_000_000),
    "minute": ("us", 60_000_000), "minutes": ("us", 60_000_000), "min": ("us", 60_000_000),
    "mins": ("us", 60_000_000), "m": ("us", 60_000_000),
    "hour": ("us", 3_600_000_000), "hours": ("us", 3_600_000_000),
    "hr": ("us", 3_600_000_000), "hrs": ("us", 3_600_000_000), "h": ("us", 3_600_000_000),
    "day": ("d", 1), "days": ("d", 1), "d": ("d", 1),
    "week": ("d", 7), "weeks": ("d", 7), "w": ("d", 7),
    "mon": ("m", 1), "mons": ("m", 1), "month": ("m", 1), "months": ("m", 1),
    "year": ("m", 12), "years": ("m", 12), "yr": ("m", 12), "yrs": ("m", 12), "y": ("m", 12),
    "decade": ("m", 120), "decades": ("m", 120),
    "century": ("m", 1200), "centuries": ("m", 1200),
    "millennium": ("m", 12000), "millennia": ("m", 12000),
}
_ISO = re.compile(r"P(?:(?P<Y>[-+]?\d+)Y)?(?:(?P<M>[-+]?\d+)M)?(?:(?P<W>[-+]?\d+)W)?"
                  r"(?:(?P<D>[-+]?\d+)D)?(?:T(?:(?P<h>[-+]?\d+)H)?(?:(?P<m>[-+]?\d+)M)?"
                  r"(?:(?P<s>[-+]?\d+(?:\.\d+)?)S)?)?")
_CLOCK = re.compile(r"([-+]?)(\d+):(\d{1,2})(?::(\d{1,2}(?:\.\d*)?))?")
_SQL_YM = re.compile(r"([-+]?)(\d+)-(\d+)")


def _seconds_us(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole or 0) * 1_000_000 + int((frac + "000000")[:6] or 0)


def _parse_interval(text: str) -> Interval:
    t = text.strip()
    if not t:
        raise ValueError("an empty text is not an interval")
    if t.startswith(("P", "-P", "+P")):
        m = _ISO.fullmatch(t.lstrip("+-"))
        if not m or t.lstrip("+-") == "P" or t.endswith("T"):
            raise ValueError(f"{text!r} is not an ISO 8601 duration")
        neg = -1 if t.startswith("-") else 1
        g = {k: v for k, v in m.groupdict().items() if v is not None}
        months = int(g.get("Y", 0)) * 12 + int(g.get("M", 0))
        days = int(g.get("W", 0)) * 7 + int(g.get("D", 0))
        s = g.get("s", "0")
        sneg = -1 if s.startswith("-") else 1
        us = int(g.get("h", 0)) * 3_600_000_000 + int(g.get("m", 0)) * 60_000_000 + \
            sneg * _seconds_us(s.lstrip("+-"))
        return Interval(neg * months, neg * days, neg * us)
    ago = False
    if t.startswith("@"):
        t = t[1:].strip()
    if t.endswith(" ago"):
        ago, t = True, t[:-4].strip()
    tokens = t.split()
    months = days = us = 0
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        clock = _CLOCK.fullmatch(tok)
        if clock:
            sign = -1 if clock.group(1) == "-" else 1
            us += sign * (int(clock.group(2)) * 3_600_000_000 + int(clock.group(3)) * 60_000_000
                          + _seconds_us(clock.group(4) or "0"))
            i += 1
            continue
        ym = _SQL_YM.fullmatch(tok)
        if ym:  # sql_standard: years-months
            sign = -1 if ym.group(1) == "-" else 1
            months += sign * (int(ym.group(2)) * 12 + int(ym.group(3)))
            i += 1
            continue
        try:
            number = Decimal(tok)
        except InvalidOperation:
            raise ValueError(f"{text!r} is not an interval ({tok!r})") from None
        unit = tokens[i + 1].lower() if i + 1 < len(tokens) else None
        if unit is None or unit not in _UNITS:
            if (unit is None or _CLOCK.fullmatch(unit)) and \
                    number == number.to_integral_value():
                # sql_standard: a lone number is days ("1-2 3 4:05:06")
                days += int(number)
                i += 1
                continue
            raise ValueError(f"{text!r} is not an interval (unit {unit!r})")
        field, scale = _UNITS[unit]
        value = number * scale
        if value != value.to_integral_value():
            raise ValueError(f"{text!r}: a fraction of a {unit} is not kept exactly")
        if field == "m":
            months += int(value)
        elif field == "d":
            days += int(value)
        else:
            us += int(value)
        i += 2
    if ago:
        months, days, us = -months, -days, -us
    return Interval(months, days, us)


@dataclass(frozen=True)
class Infinite:
    """PostgreSQL's date or timestamp ``infinity`` (sign 1) or ``-infinity`` (sign -1)."""

    sign: int

    def __str__(self) -> str:
        return "infinity" if self.sign > 0 else "-infinity"


INFINITY = Infinite(1)
MINUS_INFINITY = Infinite(-1)


@dataclass(frozen=True)
class EndOfDay:
    """The time ``24:00:00`` (PostgreSQL's time and timetz, MariaDB's TIME hold it; Python's
    ``datetime.time`` does not). ``offset``: seconds east of UTC, for a timetz."""

    offset: int | None = None

    def __str__(self) -> str:
        if self.offset is None:
            return "24:00:00"
        sign = "-" if self.offset < 0 else "+"
        h, rest = divmod(abs(self.offset), 3600)
        m, s = divmod(rest, 60)
        return f"24:00:00{sign}{h:02d}" + (f":{m:02d}" if m or s else "") + \
            (f":{s:02d}" if s else "")


END_OF_DAY = EndOfDay()


@dataclass(frozen=True)
class TemporalText:
    """A date, timestamp or time that Python cannot hold (``0044-03-15 BC``, the year
    12000, a SQLite date column holding ``'soon'``), kept as its database's text: it is
    copied exactly to a column of the same database and type, and refused elsewhere."""

    text: str

    def __str__(self) -> str:
        return self.text


class JsonText(str):
    """A JSON document as its text. Two documents are equal when they mean the same: object
    member order, spacing and the spelling of numbers (``1.0``, ``1``, ``1e0``) aside."""

    __slots__ = ("_canon",)

    @staticmethod
    def of(document: Any) -> JsonText:
        """The text of a parsed document (numbers as Decimal stay exact)."""
        return JsonText(json_text(document))

    def parsed(self) -> Any:
        return _JSON.decode(str(self))

    def canonical(self) -> Any:
        try:
            return self._canon  # type: ignore[has-type]
        except AttributeError:
            try:
                c: Any = _json_canon(self.parsed())
            except ValueError:
                c = ("text", str(self))
            self._canon = c
            return c

    def __eq__(self, other: object) -> bool:
        if isinstance(other, JsonText):
            return bool(self.canonical() == other.canonical())
        if isinstance(other, str):
            return bool(self.canonical() == JsonText(other).canonical())
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        return hash(self.canonical())

    def __repr__(self) -> str:
        return f"JsonText({str(self)!r})"


_JSON = json.JSONDecoder(parse_float=Decimal)


def json_text(document: Any) -> str:
    """JSON text for a parsed document: Decimals written exactly, non-ASCII kept."""
    out: list[str] = []
    _json_write(document, out)
    return "".join(out)


def _json_write(obj: Any, out: list[str]) -> None:
    if obj is None or obj is True or obj is False or isinstance(obj, str | int):
        out.append(json.dumps(obj, ensure_ascii=False))
    elif isinstance(obj, Decimal):
        if not obj.is_finite():
            raise ValueError(f"{obj} is not a JSON number")
        out.append(str(obj))
    elif isinstance(obj, float):
        if obj != obj or obj in (float("inf"), float("-inf")):
            raise ValueError(f"{obj} is not a JSON number")
        out.append(repr(obj))
    elif isinstance(obj, Mapping):
        out.append("{")
        for i, (k, v) in enumerate(obj.items()):
            out.append(", " if i else "")
            out.append(json.dumps(str(k), ensure_ascii=False) + ": ")
            _json_write(v, out)
        out.append("}")
    elif isinstance(obj, list | tuple):
        out.append("[")
        for i, v in enumerate(obj):
            out.append(", " if i else "")
            _json_write(v, out)
        out.append("]")
    else:
        raise ValueError(f"{type(obj).__name__} is not a JSON value")


def _json_canon(doc: Any) -> Any:
    if isinstance(doc, dict):
        return ("o", tuple(sorted((k, _json_canon(v)) for k, v in doc.items())))
    if isinstance(doc, list):
        return ("a", tuple(_json_canon(v) for v in doc))
    if isinstance(doc, bool) or doc is None or isinstance(doc, str):
        return doc
    if isinstance(doc, int | Decimal):
        return ("n", Decimal(doc).normalize())
    return doc


class _NotANumber:
    """The canonical form of every NaN (float or Decimal): equal to itself, unlike NaN."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NaN"

    def __reduce__(self) -> str:
        return "NAN_KEY"


NAN_KEY = _NotANumber()


def canonical(value: Any) -> Any:
    """A hashable, comparable form: numbers as normalised Decimal, bools as 0/1 Decimals,
    every NaN as :data:`NAN_KEY`, datetimes as naive UTC (a column without a zone is taken to
    hold UTC, as dualwrite writes it: PostgreSQL's ``timestamptz`` and MariaDB's
    ``DATETIME`` then compare by the instant), UUIDs as lower-case strings, bytes unchanged,
    lists as tuples of canonical elements. JSON documents (:class:`JsonText`) compare by
    meaning already, and are returned as they are."""
    if value is None or type(value) is str:  # the common case first: keys are mostly text
        return value
    if isinstance(value, bool):
        return Decimal(int(value))
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if value != value:
            return NAN_KEY
        # repr() gives the shortest string that round-trips: 0.1 -> '0.1', not its binary value
        # (codec.decimal_of_float's rule, spelled here: codec builds on this module, and this
        # is the hottest path of all)
        return Decimal(repr(value)).normalize()
    if isinstance(value, Decimal):
        if value.is_nan():
            return NAN_KEY
        return value.normalize() if value.is_finite() else value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is None else \
            value.astimezone(dt.UTC).replace(tzinfo=None)
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    if isinstance(value, list | tuple):
        return tuple(canonical(v) for v in value)
    return value


# -- values for people ------------------------------------------------------------------------

def readable(value: Any) -> Any:
    """A value as people read it and JSON can hold it (what ``errors show``, ``verify`` and
    ``plan`` print): numbers as plain decimals (``9.99``, never ``Decimal('9.99')``), dates
    and times in ISO 8601, bytes in hex, dualwrite's own types as their text; values JSON
    has (text, numbers, booleans, null) as they are."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else str(value)
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


def shown(value: Any) -> str:
    """One value in a line of text, as :func:`readable` gives it: text in double quotes (so
    that ``""`` and ``" "`` show), ``null``, ``true``/``false``, numbers and times bare."""
    r = readable(value)
    if r is None or isinstance(r, bool) or (isinstance(r, str) and r is value):
        return json.dumps(r, ensure_ascii=False)
    return str(r)


def value_key(value: Any) -> str | None:
    """A string key under which value-map entries match regardless of the driver's type and
    of letter case: ``False``, ``'False'``, ``0`` and ``'0'`` all key as ``'0'``... except that
    strings stay strings: ``'no'`` and ``'No'`` both key as ``'no'``."""
    if value is None:
        return None
    if isinstance(value, str):
        low = value.strip().casefold()
        if low in ("true", "false"):
            return "1" if low == "true" else "0"
        try:
            return _number_key(Decimal(low))
        except InvalidOperation:
            return low
    c = canonical(value)
    if isinstance(c, Decimal):
        return _number_key(c)
    return str(c).casefold()


def _number_key(d: Decimal) -> str:
    """Plain positional text of a number, the same for 10, '10', 10.0 and Decimal('1E+1')."""
    if not d.is_finite():
        return str(d).casefold()
    text = format(d.normalize(), "f")
    return "0" if text in ("-0", "0") else text


class ValueMap:
    """A one-to-one (for ``><``) or many-to-one (for ``>>``/``<<``) table of left ↔ right values.

    Entries are written left value → right value. Matching ignores case and driver type.
    """

    def __init__(self, pairs: Mapping[Any, Any]) -> None:
        if not pairs:
            raise MapSyntaxError("a value map is empty",
                                 hint="list left: right pairs, e.g. {No: 0, Yes: 1}")
        self.pairs: dict[Any, Any] = dict(pairs)
        self._forward = {value_key(k): v for k, v in self.pairs.items()}
        self._backward: dict[str | None, Any] = {}
        self.collisions: list[tuple[Any, Any, Any]] = []
        self._right_memo: dict[tuple[type, Any], tuple[bool, Any]] = {}
        self._left_memo: dict[tuple[type, Any], tuple[bool, Any]] = {}
        for k, v in self.pairs.items():
            rk = value_key(v)
            if rk in self._backward:
                self.collisions.append((self._backward[rk], k, v))
            else:
                self._backward[rk] = k

    @property
    def invertible(self) -> bool:
        return not self.collisions

    def to_right(self, left_value: Any) -> tuple[bool, Any]:
        """(found, right value). None maps to None."""
        return self._memo(self._right_memo, self._forward, left_value)

    def to_left(self, right_value: Any) -> tuple[bool, Any]:
        """(found, left value). None maps to None."""
        return self._memo(self._left_memo, self._backward, right_value)

    @staticmethod
    def _memo(memo: dict[tuple[type, Any], tuple[bool, Any]], table: dict[str | None, Any],
              value: Any) -> tuple[bool, Any]:
        # Value maps see few distinct values over millions of rows: remember each answer by
        # (type, value) so the normalisation in value_key runs once per distinct value.
        if value is None:
            return True, None
        mk = (type(value), value)
        try:
            hit = memo.get(mk)
        except TypeError:  # unhashable (a JSON document): no memo
            k = value_key(value)
            return (True, table[k]) if k in table else (False, None)
        if hit is None:
            k = value_key(value)
            hit = (True, table[k]) if k in table else (False, None)
            if len(memo) < 10_000:
                memo[mk] = hit
        return hit

    def __repr__(self) -> str:
        return f"ValueMap({self.pairs!r})"
