"""How a value of one column becomes a value of another: exactly, by a stated conversion, or
refused. Pure (no I/O).

Every path that moves a value between the two sides (initial sync, live sync through the
Python API or OData, capture) converts it here, so that a value arrives the same way
whichever path carries it:

* :func:`plan` judges a pair of columns once (``validate`` reports the verdict) and gives the
  function that converts each value, or ``None`` where a copy needs no work at all (the
  common case: initial sync then fetches such fields with one ``itemgetter``);
* the function raises :class:`ValueRefused` for a value the target cannot hold (NaN into a
  DECIMAL, ``infinity`` into MariaDB's DATE, a fraction of a second a ``DATETIME`` would round
  away): the engine sends that row to the error inbox, naming the column, value and reason,
  and carries on with the others;
* :func:`from_log` turns a value as a change log's JSON carries it into the value a connector
  reads for that column (bytes from ``"\\x..."``, intervals from their text, documents as
  :class:`~dualwrite.model.values.JsonText`); it, and every other conversion of one value
  between Python, JSON and text that the steps here use (:func:`text_of`, the parsers), is
  defined in :mod:`dualwrite.model.codec` and named here too for the callers that import it
  from this module;
* :func:`comparator` says whether two values of a pair of columns are the same value
  (``verify``: NaN equals NaN, CHAR padding is not significant, documents compare by
  meaning, a timestamp with a zone and one without compare by the instant);
* :func:`fit` is the lenient coercion of constants (defaults, value-map entries) and of
  values given through the APIs to a column's kind.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any

from dualwrite.model.codec import (
    TEXT_PARSERS,
    Convert,
    ValueRefused,
    decimal_of_float,
    duration_text,
    duration_value,
    from_log,
    map_array,
    parse_date,
    parse_datetime,
    parse_duration,
    parse_float,
    parse_json,
    parse_money,
    parse_time,
    single,
    text_of,
)
from dualwrite.model.schema import (
    END_OF_DAY as END_OF_DAY_SPECIAL,
)
from dualwrite.model.schema import (
    INF,
    INFINITE,
    NAN,
    NEG_INF,
    NEG_INFINITE,
    NEG_ZERO,
    Column,
    Facets,
    Kind,
    can_hold,
)
from dualwrite.model.values import (
    END_OF_DAY,
    EndOfDay,
    Infinite,
    Interval,
    JsonText,
    TemporalText,
    canonical,
    value_key,
)

#: called with a message each time a special value is written as NULL (``specials: null``)
Notify = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    """A field line's explicit choices about values (map and field options)."""

    #: ``specials: null``: special values the target cannot hold (NaN, ±Infinity, the dates
    #: ±infinity) are written as NULL, with a warning, instead of refusing their rows
    specials_to_null: bool = False
    #: ``convert: utc``: a time with an offset (timetz) is converted to UTC for a column
    #: without one, instead of the pair being refused
    utc: bool = False


class Verdict(Enum):
    """How the values of one column arrive in another."""

    #: every value arrives as it is
    EXACT = "exact"
    #: every value arrives, converted as stated (its meaning kept)
    CONVERTED = "converted"
    #: the values the target cannot hold (listed) are refused at their row; the rest arrive
    PARTIAL = "partial"
    #: no value can be written (or the pair needs an option to say how)
    IMPOSSIBLE = "impossible"


@dataclass(frozen=True)
class Plan:
    """The verdict on one pair of columns and the conversion of each value."""

    source: Column
    target: Column
    verdict: Verdict
    #: conversions made, as stated by ``validate`` ("written as UTC")
    notes: tuple[str, ...] = ()
    #: values refused at their row ("NaN", "more than 2 digits after the point")
    refused: tuple[str, ...] = ()
    #: special values written as NULL (``specials: null``)
    nulled: tuple[str, ...] = ()
    #: IMPOSSIBLE: why
    reason: str = ""
    #: IMPOSSIBLE only for want of an option: the option that makes it possible
    needs: str = ""
    #: the conversion of one value (raises ValueRefused); None: values are copied as they are
    convert: Convert | None = None
    #: ``convert`` when it is one step, for callers that pass no None (the hot path of
    #: initial sync: one call less per value)
    step: Convert | None = None
    #: whether the values may instead reach the target as their text, read by the target
    #: database's own input function: nothing is converted or stated, and what ``convert``
    #: refuses, the database refuses too (a date that is none), loudly, at the row
    text_safe: bool = True
    #: whether every step at most refuses a value, never changes one: the values may reach
    #: a target as their text where the target's loader reports every value it would store
    #: differently (MariaDB's LOAD DATA warnings), which then refuses them instead
    refuses_only: bool = True

    @property
    def pair(self) -> str:
        """``timetz (PostgreSQL) -> TIME (MariaDB)``"""
        return f"{type_label(self.source)} -> {type_label(self.target)}"


def type_label(column: Column) -> str:
    """A column's real type and database, for messages: ``timetz (PostgreSQL)``."""
    f = column.facets
    name = f.type_name or column.sql_type or column.kind.value
    return f"{name} ({f.database})" if f.database else name


# -- the plan ---------------------------------------------------------------------------------


def plan(source: Column, target: Column, options: Options | None = None,
         notify: Notify | None = None) -> Plan:
    """Judge how the values of ``source`` become values of ``target``. ``notify`` hears of
    each special value written as NULL (with ``options.specials_to_null``)."""
    b = _Builder(source, target, options or Options(), notify)
    sk, tk = source.kind, target.kind
    if sk is Kind.OTHER or tk is Kind.OTHER:
        b.other()
    elif sk is tk:
        _SAME[sk](b)
    elif tk is Kind.STRING:
        b.to_text()
    elif sk is Kind.STRING:
        b.from_text()
    elif can_hold(tk, sk):
        _CROSS[(sk, tk)](b)
    else:
        b.impossible(f"{type_label(target)} cannot hold {sk.value} values")
    return b.result()


@dataclass
class _Builder:
    source: Column
    target: Column
    options: Options
    notify: Notify | None

    def __post_init__(self) -> None:
        self.steps: list[Convert] = []
        self.notes: list[str] = []
        self.refused: list[str] = []
        self.nulled: list[str] = []
        self.reason = ""
        self.needs = ""
        #: steps that only refuse what the target database would refuse itself
        self.guards: list[Convert] = []
        #: steps that refuse values (or pass them unchanged), whatever the database does
        self.refusers: list[Convert] = []
        self.unsafe_notes = False
        self.sf: Facets = self.source.facets
        self.tf: Facets = self.target.facets

    # -- outcome -------------------------------------------------------------------------------
    def impossible(self, reason: str, needs: str = "") -> None:
        self.reason = reason
        self.needs = needs

    def result(self) -> Plan:
        if self.reason:
            return Plan(self.source, self.target, Verdict.IMPOSSIBLE, tuple(self.notes),
                        reason=self.reason, needs=self.needs)
        verdict = Verdict.PARTIAL if self.refused else \
            Verdict.CONVERTED if (self.notes or self.nulled) else Verdict.EXACT
        text_safe = not self.unsafe_notes and not self.nulled and all(
            step in self.guards for step in self.steps)
        refuses_only = not self.unsafe_notes and not self.nulled and all(
            step in self.guards or step in self.refusers for step in self.steps)
        return Plan(self.source, self.target, verdict, tuple(self.notes), tuple(self.refused),
                    tuple(self.nulled), convert=_compose(self.steps),
                    step=self.steps[0] if len(self.steps) == 1 else None, text_safe=text_safe,
                    refuses_only=refuses_only)

    def refuse(self, what: str) -> None:
        if what not in self.refused:
            self.refused.append(what)

    def note(self, what: str, *, as_text: bool = False) -> None:
        """State a conversion. ``as_text``: the target database makes the same conversion
        when it reads the value's text itself (see Plan.text_safe)."""
        if what not in self.notes:
            self.notes.append(what)
        if not as_text:
            self.unsafe_notes = True

    @property
    def tl(self) -> str:
        return type_label(self.target)

    # -- special values ------------------------------------------------------------------------
    def specials(self, missing: Sequence[str], is_special: Callable[[Any], str | None]) -> None:
        """Values in ``missing`` (special values the source may hold and the target cannot)
        are refused, or written as NULL with ``specials: null``. ``is_special`` names the
        special value a value is, or None."""
        if not missing:
            return
        shown = ", ".join(missing)
        tl, notify = self.tl, self.notify
        if self.options.specials_to_null:
            self.nulled.extend(missing)

            def to_null(v: Any) -> Any:
                name = is_special(v)
                if name is None:
                    return v
                if notify is not None:
                    notify(f"{name} written as NULL: {tl} cannot hold it (specials: null)")
                return None

            self.steps.append(to_null)
            return
        self.refuse(shown)

        def refuse(v: Any) -> Any:
            # the common case first, without a call: a finite number (x - x is 0 but for
            # NaN and the infinities)
            cls = v.__class__
            if (cls is float and v - v == 0.0) or (cls is Decimal and v.is_finite()):
                return v
            name = is_special(v)
            if name is not None:
                raise ValueRefused(
                    f"{name} cannot be held by {tl}",
                    hint="map the field to a column that holds it, or add `specials: null` "
                    "to the field line to write NULL instead")
            return v

        self.steps.append(refuse)
        self.refusers.append(refuse)

    # -- kinds ---------------------------------------------------------------------------------
    def other(self) -> None:
        s, t = self.source, self.target
        same_type = (s.facets.database == t.facets.database and
                     (s.facets.type_name or s.sql_type).casefold() ==
                     (t.facets.type_name or t.sql_type).casefold())
        if s.kind is t.kind and same_type:
            return
        if t.kind is Kind.STRING:
            self.note("as its text")
            self.refuse("values that are not text")

            def text_only(v: Any) -> Any:
                if isinstance(v, str):
                    return v
                raise ValueRefused(f"{type_label(s)} values of this kind have no text form",
                                   hint="map the field to a column of the same type")

            self.steps.append(text_only)
            self.string_checks(None)
            return
        self.impossible(f"{self.tl} cannot hold {type_label(s)} values: dualwrite knows no "
                        "exact conversion between them")

    def strings(self) -> None:
        if self.sf.fixed and not self.tf.fixed:
            self.note("the CHAR padding (trailing spaces) is removed")
            self.steps.append(_rstrip)
        self.string_checks(self.source.length)

    def string_checks(self, source_length: int | None) -> None:
        """Text into a CHAR(n): its trailing spaces are not significant there. A text too
        long for its column is refused by the database itself, loudly, at its row; one
        holding U+0000, which PostgreSQL cannot hold, is refused here, naming the column
        (a guard, not worth a warning at validate: such text is rare)."""
        if self.tf.fixed and not self.sf.fixed:
            self.note(f"trailing spaces are not significant in {self.tl}", as_text=True)
        if not self.tf.nul and self.sf.nul:
            tl = self.tl

            def no_nul(v: Any) -> Any:
                if "\x00" in v:
                    raise ValueRefused(f"the text holds the character U+0000 (0x00), which "
                                       f"{tl} cannot hold", hint="remove it at the source")
                return v

            self.steps.append(no_nul)
            self.guards.append(no_nul)

    def integers(self) -> None:
        """Integers copy as they are: one out of the target's range is refused by the
        database, at its row."""
        return

    def decimals(self) -> None:
        missing = [x for x in (NAN, INF, NEG_INF)
                   if self.sf.holds(x) and not self.tf.holds(x)]
        self.specials(missing, _decimal_special)
        self.decimal_digits(self.sf.precision, self.sf.scale, self.sf.significant)

    def decimal_digits(self, sp: int | None, ss: int | None, ssig: int | None) -> None:
        tf, tl = self.tf, self.tl
        ts, tsig = tf.scale, tf.significant
        if ts is not None and (ss is None or ss > ts):
            self.refuse(f"more than {ts} digits after the point")

            def scale(v: Any) -> Any:
                if isinstance(v, Decimal) and v.is_finite() and v != 0 and \
                        -v.normalize().as_tuple().exponent > ts:  # type: ignore[operator]
                    raise ValueRefused(
                        f"{v} has more than {ts} digits after the point; {tl} would round it",
                        hint="round it at the source, or give the column more scale")
                return v

            self.steps.append(scale)
            self.refusers.append(scale)
        if tsig is not None and (ssig is None or ssig > tsig) and \
                (sp is None or sp > tsig):
            self.refuse(f"more than {tsig} significant digits")

            def significant(v: Any) -> Any:
                if isinstance(v, Decimal) and v.is_finite() and \
                        len(v.normalize().as_tuple().digits) > tsig:
                    raise ValueRefused(f"{v} has more than {tsig} significant digits; {tl} "
                                       "keeps no more", hint="store it as text instead")
                return v

            self.steps.append(significant)
            self.refusers.append(significant)

    def floats(self) -> None:
        missing = [x for x in (NAN, INF, NEG_INF)
                   if self.sf.holds(x) and not self.tf.holds(x)]
        self.specials(missing, _float_special)
        if self.sf.holds(NEG_ZERO) and not self.tf.holds(NEG_ZERO):
            self.note(f"-0.0 arrives as 0 ({self.tl} has no negative zero)")
        self.float_precision(self.sf.precision or 53)

    def float_precision(self, source_bits: int) -> None:
        if (self.tf.precision or 53) < source_bits:
            self.refuse("numbers a single-precision float cannot hold exactly")
            tl = self.tl

            def to_single(v: Any) -> Any:
                if not isinstance(v, float) or v != v or math.isinf(v):
                    return v
                try:
                    r = single(v)
                except OverflowError:
                    raise ValueRefused(f"{v!r} is out of the range of {tl}",
                                       hint="use a double-precision column") from None
                if r != v:
                    raise ValueRefused(f"{v!r} is not a value of {tl}: it would be rounded to "
                                       f"{r!r}", hint="use a double-precision column")
                return v

            self.steps.append(to_single)

    def temporal_specials(self) -> None:
        """Dates and timestamps Python has no type for: ±infinity (refused, or NULL with
        ``specials: null``, where the target cannot hold them) and TemporalText (copied
        only to a column of the same database). Years the target does not hold (MariaDB's
        TIMESTAMP before 1970) are refused by the database itself, at their row."""
        tf, tl = self.tf, self.tl
        missing = [x for x in (INFINITE, NEG_INFINITE)
                   if self.sf.holds(x) and not tf.holds(x)]
        text_ok = bool(self.sf.database) and self.sf.database == tf.database
        if not missing and text_ok:
            return
        if missing:
            if self.options.specials_to_null:
                self.nulled.extend(missing)
            else:
                self.refuse(", ".join(missing))
        if not text_ok:
            self.refuse("values that are no date of the years 1-9999 (0044-03-15 BC, "
                        "0000-00-00)")
        to_null, notify = self.options.specials_to_null, self.notify
        plain = (dt.date, dt.datetime)

        def admit(v: Any) -> Any:
            if type(v) in plain:
                return v
            if isinstance(v, Infinite):
                name = INFINITE if v.sign > 0 else NEG_INFINITE
                if name not in missing:
                    return v
                if to_null:
                    if notify is not None:
                        notify(f"{name} written as NULL: {tl} cannot hold it (specials: null)")
                    return None
                raise ValueRefused(
                    f"{name} cannot be held by {tl}",
                    hint="map the field to a column that holds it, or add `specials: null` "
                    "to the field line to write NULL instead")
            if isinstance(v, TemporalText | str) and not text_ok:
                raise ValueRefused(f"{v} is not a date {tl} holds",
                                   hint="correct the value at the source")
            return v

        self.steps.append(admit)
        if not missing:  # it refuses only what the target cannot read as a date either
            self.guards.append(admit)
        if not to_null:
            self.refusers.append(admit)

    def fraction(self) -> None:
        t_digits = self.tf.fraction if self.tf.fraction is not None else 6
        s_digits = self.sf.fraction if self.sf.fraction is not None else 6
        if t_digits >= s_digits:
            return
        unit = 10 ** (6 - t_digits)
        tl = self.tl
        self.refuse(f"more than {t_digits} digits of fractional seconds")

        def fits(v: Any) -> Any:
            micro = v.microsecond if isinstance(v, dt.datetime | dt.time) else \
                v.microseconds if isinstance(v, dt.timedelta) else 0
            if micro % unit:
                raise ValueRefused(f"{v} has fractional seconds {tl} would round away (it "
                                   f"keeps {t_digits} digits)",
                                   hint="give the column more fractional digits "
                                   "(e.g. DATETIME(6))")
            return v

        self.steps.append(fits)

    def dates(self) -> None:
        self.temporal_specials()

    def datetimes(self) -> None:
        if self.sf.time_zone and not self.tf.time_zone:
            self.note("written as UTC")
        elif self.tf.time_zone and not self.sf.time_zone:
            self.note("taken as UTC", as_text=True)  # dualwrite's sessions run in UTC
        self.temporal_specials()
        self.fraction()

    def times(self) -> None:
        tl = self.tl
        if self.sf.time_zone and not self.tf.time_zone:
            if not self.options.utc:
                self.impossible(f"{tl} has no offset: {type_label(self.source)} values would "
                                "lose theirs", needs="convert: utc")
                return
            self.note("converted to UTC (the offset is not kept)")
            self.steps.append(_time_to_utc)
        elif self.tf.time_zone and not self.sf.time_zone:
            self.note("taken as UTC", as_text=True)
        if self.sf.duration and not self.tf.duration:
            self.refuse("durations that are not a time of day (negative, or past 24:00:00)")

            def time_of_day(v: Any) -> Any:
                if isinstance(v, dt.timedelta):
                    raise ValueRefused(f"{duration_text(v)} is a duration, not a time of day "
                                       f"{tl} holds", hint="correct the value at the source")
                return v

            self.steps.append(time_of_day)
        if self.sf.holds(END_OF_DAY_SPECIAL) and not self.tf.holds(END_OF_DAY_SPECIAL):
            self.specials([END_OF_DAY_SPECIAL],
                          lambda v: END_OF_DAY_SPECIAL if isinstance(v, EndOfDay) else None)
        self.fraction()

    def intervals(self) -> None:
        return

    def binaries(self) -> None:
        length, tl = self.target.length, self.tl
        if self.tf.fixed and not (self.sf.fixed and self.source.length == length):
            self.refuse(f"bytes of a length other than {length}")

            def exact_length(v: Any) -> Any:
                if len(v) != length:
                    raise ValueRefused(f"{len(v)} bytes: {tl} holds exactly {length} (it would "
                                       "pad them with zero bytes)", hint="use a VARBINARY column")
                return v

            self.steps.append(exact_length)

    def uuids(self) -> None:
        return

    def booleans(self) -> None:
        return

    def documents(self) -> None:
        if self.tf.normalised and not self.sf.normalised:
            self.note(f"{self.tl} normalises the document (member order, spacing and duplicate "
                      "members are not kept; its meaning is)", as_text=True)

    def arrays(self) -> None:
        se, te = self.sf.element, self.tf.element
        if se is None or te is None:
            self.impossible("the arrays' element types are unknown")
            return
        inner = plan(Column("element", se, facets=self.sf.element_facets or Facets()),
                     Column("element", te, facets=self.tf.element_facets or Facets()),
                     self.options, self.notify)
        if inner.verdict is Verdict.IMPOSSIBLE:
            self.impossible(f"their elements cannot be converted: {inner.reason}")
            return
        self.notes.extend(f"elements: {n}" for n in inner.notes)
        self.refused.extend(f"arrays holding {r}" for r in inner.refused)
        if inner.convert is not None:
            conv = inner.convert

            def each(v: Any) -> Any:
                return map_array(v, conv)

            self.steps.append(each)

    def networks(self) -> None:
        s, t, tl = self.sf.network, self.tf.network, self.tl
        if s == t or (s == "cidr" and t == "inet"):
            return
        if t == "inet6" and s == "inet":
            self.refuse("IPv4 addresses and addresses with a prefix length")

            def host6(v: Any) -> Any:
                if type(v) is ipaddress.IPv6Address:  # (an IPv6Interface is one too)
                    return v
                net = v.network if isinstance(v, ipaddress.IPv6Interface) else v
                if isinstance(net, ipaddress.IPv6Network) and net.prefixlen == 128:
                    return net.network_address
                raise ValueRefused(f"{v} is not an IPv6 host address; {tl} holds only those",
                                   hint="map the field to an inet or text column")

            self.steps.append(host6)
            return
        if t == "cidr" and s in ("inet", "inet6"):
            self.refuse("addresses with bits set right of the prefix")

            def network(v: Any) -> Any:
                try:
                    return ipaddress.ip_network(str(v), strict=True)
                except ValueError:
                    raise ValueRefused(f"{v} has bits set right of its prefix; {tl} holds "
                                       "networks only", hint="map the field to an inet column"
                                       ) from None

            self.steps.append(network)
            return
        if t == "inet" and s == "inet6":
            return
        self.impossible(f"{tl} cannot hold {s} values")

    # -- across kinds ----------------------------------------------------------------------------
    def to_text(self) -> None:
        sk = self.source.kind
        if sk in (Kind.BINARY, Kind.ARRAY):
            self.impossible(f"{self.tl} cannot hold {type_label(self.source)} values: they "
                            "have no exact text form here")
            return
        self.note("as its text")
        if self.sf.fixed and sk is Kind.STRING:
            self.steps.append(_rstrip)
        self.steps.append(text_of)
        self.string_checks(None)

    def from_text(self) -> None:
        tk = self.target.kind
        parse = TEXT_PARSERS.get(tk)
        if parse is None or not can_hold(tk, Kind.STRING):
            self.impossible(f"{self.tl} cannot hold text values (a value map, `><`, can "
                            "translate them)")
            return
        self.note("from its text")
        self.refuse(f"text that is not a {tk.value}")
        tl = self.tl

        def parsed(v: Any) -> Any:
            try:
                return parse(v)
            except (ValueError, InvalidOperation):
                raise ValueRefused(f"{v!r} is not a {tk.value} {tl} holds",
                                   hint="correct the value at the source") from None

        self.steps.append(parsed)
        if tk is Kind.UUID:
            return
        if tk is Kind.JSON:
            self.documents()

    def int_to_decimal(self) -> None:
        self.steps.append(lambda v: Decimal(v) if isinstance(v, int) else v)
        bits = self.sf.precision
        digits = None if bits is None else len(str(2 ** bits))
        self.decimal_digits(digits, 0, digits)

    def int_to_float(self) -> None:
        bits = self.sf.precision
        mantissa = self.tf.precision or 53
        if bits is not None and bits <= mantissa:
            self.steps.append(float)
            return
        self.refuse(f"integers a {mantissa}-bit mantissa cannot hold exactly")
        tl = self.tl

        def exact(v: Any) -> Any:
            f = float(v) if mantissa == 53 else single(float(v))
            if int(f) != v:
                raise ValueRefused(f"{v} is not exactly a value of {tl}",
                                   hint="use a decimal or integer column")
            return f

        self.steps.append(exact)

    def int_to_bool(self) -> None:
        self.refuse("integers other than 0 and 1")
        tl = self.tl

        def boolean(v: Any) -> Any:
            if v in (0, 1):
                return bool(v)
            raise ValueRefused(f"{v} is not 0 or 1, so not a value of {tl}",
                               hint="use a value map (`><`) to translate it")

        self.steps.append(boolean)

    def bool_to_int(self) -> None:
        self.note("true as 1, false as 0")
        self.steps.append(int)

    def decimal_to_int(self) -> None:
        self.refuse("numbers that are not whole")
        tl = self.tl

        def whole(v: Any) -> Any:
            if not v.is_finite() or v != v.to_integral_value():
                raise ValueRefused(f"{v} is not a whole number, so not a value of {tl}",
                                   hint="round it at the source, or use a decimal column")
            return int(v)

        self.steps.append(whole)

    def decimal_to_float(self) -> None:
        missing = [x for x in (NAN, INF, NEG_INF) if self.sf.holds(x) and not self.tf.holds(x)]
        self.specials(missing, _decimal_special)
        self.refuse("numbers a double cannot hold exactly")
        tl, bits = self.tl, self.tf.precision or 53

        def double(v: Any) -> Any:
            if not isinstance(v, Decimal):
                return v
            f = float(v)
            if not v.is_finite():
                return f
            if bits < 53:
                try:
                    f = single(f)
                except OverflowError:
                    raise ValueRefused(f"{v} is out of the range of {tl}") from None
            if math.isinf(f) or decimal_of_float(f) != v:
                raise ValueRefused(f"{v} is not exactly a value of {tl}: it would become "
                                   f"{f!r}", hint="use a decimal column")
            return f

        self.steps.append(double)

    def float_to_decimal(self) -> None:
        missing = [x for x in (NAN, INF, NEG_INF) if self.sf.holds(x) and not self.tf.holds(x)]
        self.specials(missing, _float_special)
        if self.sf.holds(NEG_ZERO):
            self.note("-0.0 arrives as 0")
        self.note("as the shortest decimal that reads back as the same double")
        self.steps.append(decimal_of_float)
        self.decimal_digits(None, None, None)

    def float_to_int(self) -> None:
        self.refuse("numbers that are not whole")
        tl = self.tl

        def whole(v: Any) -> Any:
            if not isinstance(v, float):
                return v
            if not math.isfinite(v) or not v.is_integer():
                raise ValueRefused(f"{v!r} is not a whole number, so not a value of {tl}",
                                   hint="round it at the source, or use a float column")
            return int(v)

        self.steps.append(whole)

    def date_to_datetime(self) -> None:
        self.note("at midnight UTC")
        self.steps.append(_date_to_datetime)
        self.temporal_specials()

    def datetime_to_date(self) -> None:
        self.refuse("timestamps that are not at midnight (UTC)")
        tl = self.tl

        def midnight(v: Any) -> Any:
            if not isinstance(v, dt.datetime):
                return v
            u = v if v.tzinfo is None else v.astimezone(dt.UTC)
            if u.time() != dt.time():
                raise ValueRefused(f"{v} is not at midnight UTC: {tl} would lose its time of "
                                   "day", hint="map it to a timestamp column")
            return u.date()

        self.steps.append(midnight)
        self.temporal_specials()


def _compose(steps: list[Convert]) -> Convert | None:
    if not steps:
        return None
    if len(steps) == 1:
        only = steps[0]

        def one(v: Any) -> Any:
            return None if v is None else only(v)

        return one
    chain = tuple(steps)

    def run(v: Any) -> Any:
        for step in chain:
            if v is None:
                return None
            v = step(v)
        return v

    return run


_SAME: dict[Kind, Callable[[_Builder], None]] = {
    Kind.STRING: _Builder.strings, Kind.INTEGER: _Builder.integers,
    Kind.DECIMAL: _Builder.decimals, Kind.FLOAT: _Builder.floats,
    Kind.BOOLEAN: _Builder.booleans, Kind.DATE: _Builder.dates,
    Kind.DATETIME: _Builder.datetimes, Kind.TIME: _Builder.times,
    Kind.INTERVAL: _Builder.intervals, Kind.BINARY: _Builder.binaries,
    Kind.UUID: _Builder.uuids, Kind.JSON: _Builder.documents, Kind.ARRAY: _Builder.arrays,
    Kind.NETWORK: _Builder.networks,
}

_CROSS: dict[tuple[Kind, Kind], Callable[[_Builder], None]] = {
    (Kind.INTEGER, Kind.DECIMAL): _Builder.int_to_decimal,
    (Kind.INTEGER, Kind.FLOAT): _Builder.int_to_float,
    (Kind.INTEGER, Kind.BOOLEAN): _Builder.int_to_bool,
    (Kind.BOOLEAN, Kind.INTEGER): _Builder.bool_to_int,
    (Kind.DECIMAL, Kind.INTEGER): _Builder.decimal_to_int,
    (Kind.DECIMAL, Kind.FLOAT): _Builder.decimal_to_float,
    (Kind.FLOAT, Kind.DECIMAL): _Builder.float_to_decimal,
    (Kind.FLOAT, Kind.INTEGER): _Builder.float_to_int,
    (Kind.DATE, Kind.DATETIME): _Builder.date_to_datetime,
    (Kind.DATETIME, Kind.DATE): _Builder.datetime_to_date,
}


# -- value helpers ------------------------------------------------------------------------------


def _rstrip(v: Any) -> Any:
    return v.rstrip(" ") if isinstance(v, str) else v


def _float_special(v: Any) -> str | None:
    if isinstance(v, float) and not math.isfinite(v):
        return NAN if v != v else (INF if v > 0 else NEG_INF)
    return None


def _decimal_special(v: Any) -> str | None:
    if isinstance(v, Decimal) and not v.is_finite():
        return NAN if v.is_nan() else (INF if v > 0 else NEG_INF)
    if isinstance(v, float):
        return _float_special(v)
    return None


def _date_to_datetime(v: Any) -> Any:
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        return dt.datetime.combine(v, dt.time())
    return v


def _time_to_utc(v: Any) -> Any:
    if isinstance(v, EndOfDay):
        if not v.offset:
            return v
        return (dt.datetime(2000, 1, 2) - dt.timedelta(seconds=v.offset)).time()
    if isinstance(v, dt.time) and v.tzinfo is not None:
        off = v.utcoffset() or dt.timedelta()
        return (dt.datetime.combine(dt.date(2000, 1, 2), v.replace(tzinfo=None)) - off).time()
    return v


# -- lenient fitting (constants, API values) ---------------------------------------------------


def fit(value: Any, kind: Kind) -> Any:
    """A constant or an API value in the Python type of ``kind`` where it has an obvious one
    (value maps carry text like 'False' or '3'; a JSON document may be given as a dict);
    otherwise unchanged, for the column's own checks to judge. (Called per value for value
    maps and lookups: a value already of its kind's type returns at once.)"""
    if value is None:
        return None
    cls = value.__class__
    if cls is str and kind is Kind.STRING:
        return value
    fitter = _FIT.get(kind)
    if fitter is None:
        return value
    try:
        return fitter(value, cls)
    except (ValueError, InvalidOperation, TypeError):
        return value


def _fit_boolean(value: Any, cls: type) -> Any:
    if cls is bool:
        return value
    k = value_key(value)
    if k in ("1", "0"):
        return k == "1"
    if k in ("yes", "no"):
        return k == "yes"
    return value


def _fit_integer(value: Any, cls: type) -> Any:
    if cls is int or isinstance(value, int):
        return value
    if isinstance(value, str | Decimal | float):
        d = Decimal(str(value).strip())
        return int(d) if d.is_finite() and d == d.to_integral_value() else value
    return value


def _fit_decimal(value: Any, cls: type) -> Any:
    if cls is float:
        return decimal_of_float(value)
    if isinstance(value, str | int) and not isinstance(value, bool):
        return Decimal(str(value).strip())
    return value


def _fit_float(value: Any, cls: type) -> Any:
    return parse_float(value) if isinstance(value, str | Decimal) else value


def _fit_string(value: Any, cls: type) -> Any:
    if isinstance(value, str | bytes | bytearray | memoryview):
        return value
    return text_of(value)


def _fit_date(value: Any, cls: type) -> Any:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, str):
        return parse_date(value[:10] if value[:1].isdigit() else value)
    return value


def _fit_interval(value: Any, cls: type) -> Any:
    if isinstance(value, str):
        return Interval.parse(value)
    if isinstance(value, dt.timedelta):
        return Interval.from_timedelta(value)
    return value


def _fit_json(value: Any, cls: type) -> Any:
    if isinstance(value, JsonText):
        return value
    return parse_json(value) if isinstance(value, str) else JsonText.of(value)


def _fit_network(value: Any, cls: type) -> Any:
    if isinstance(value, str):
        return ipaddress.ip_interface(value) if "/" in value else ipaddress.ip_address(value)
    return value


def _when_text(parse: Callable[[Any], Any]) -> Callable[[Any, type], Any]:
    return lambda value, cls: parse(value) if cls is str else value


_FIT: dict[Kind, Callable[[Any, type], Any]] = {
    Kind.BOOLEAN: _fit_boolean, Kind.INTEGER: _fit_integer, Kind.DECIMAL: _fit_decimal,
    Kind.FLOAT: _fit_float, Kind.STRING: _fit_string, Kind.DATE: _fit_date,
    Kind.DATETIME: _when_text(parse_datetime), Kind.TIME: _when_text(parse_time),
    Kind.INTERVAL: _fit_interval,
    Kind.UUID: _when_text(lambda v: uuid.UUID(v.strip())), Kind.JSON: _fit_json,
    Kind.BINARY: lambda value, cls: bytes(value) if isinstance(value, memoryview | bytearray)
    else value,
    Kind.NETWORK: _fit_network,
}




# -- comparing -----------------------------------------------------------------------------------


Same = Callable[[Any, Any], bool]


def comparator(left: Column, right: Column, options: Options | None = None) -> Same:
    """Whether a value of ``left`` and one of ``right`` are the same value: the left one is
    converted as :func:`plan` converts it to ``right`` (one that cannot be is different),
    then both compare by the right column's kind. With ``specials: null``, a special value
    the right column holds as NULL is the same as that NULL."""
    same = _comparator(left, right)
    if options is None or not options.specials_to_null:
        return same
    nulled = plan(left, right, options).convert
    if nulled is None:
        return same
    conv = nulled

    def or_null(lv: Any, rv: Any) -> bool:
        if rv is None and lv is not None:
            try:
                return conv(lv) is None
            except ValueRefused:
                return False
        return same(lv, rv)

    return or_null


def _comparator(left: Column, right: Column) -> Same:
    if left.kind is not right.kind or left.kind is Kind.OTHER:
        p = plan(left, right)
        same = _same_kind(right, right)
        conv = p.convert
        if conv is None:
            return same

        def converted(lv: Any, rv: Any) -> bool:
            try:
                return same(conv(lv), rv)
            except (ValueRefused, ValueError, TypeError, InvalidOperation):
                return False

        return converted
    return _same_kind(left, right)


def _plain_same(a: Any, b: Any) -> bool:
    if type(a) is str and type(b) is str:
        return a == b
    return bool(canonical(a) == canonical(b))


def _same_kind(left: Column, right: Column) -> Same:
    k = left.kind
    lf, rf = left.facets, right.facets
    if k is Kind.STRING and (lf.fixed or rf.fixed):
        def padded(a: Any, b: Any) -> bool:
            if isinstance(a, str) and isinstance(b, str):
                return a.rstrip(" ") == b.rstrip(" ")
            return _plain_same(a, b)

        return padded
    if k is Kind.FLOAT:
        signed = lf.holds(NEG_ZERO) and rf.holds(NEG_ZERO)
        return _float_same_signed if signed else _float_same
    if k is Kind.JSON:
        return _json_same
    if k is Kind.TIME:
        utc = lf.time_zone != rf.time_zone
        return _time_same_utc if utc else _time_same
    if k is Kind.ARRAY and lf.element is not None and rf.element is not None:
        inner = _same_kind(Column("e", lf.element, facets=lf.element_facets or Facets()),
                           Column("e", rf.element, facets=rf.element_facets or Facets()))

        def arrays(a: Any, b: Any) -> bool:
            if isinstance(a, list) and isinstance(b, list):
                return len(a) == len(b) and all(
                    (x is None and y is None) or (x is not None and y is not None and
                                                  arrays(x, y)) for x, y in zip(a, b, strict=True))
            return inner(a, b)

        return arrays
    return _plain_same


def _float_same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b)
    return _plain_same(a, b)


def _float_same_signed(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if a != a or b != b:
            return a != a and b != b
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return _plain_same(a, b)


def _json_same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return JsonText(a) == JsonText(b)
    return _plain_same(a, b)


def _time_key(v: Any, utc: bool) -> Any:
    if isinstance(v, dt.timedelta):
        v = duration_value(v.days * 86_400_000_000 + v.seconds * 1_000_000 + v.microseconds)
    if utc:
        v = _time_to_utc(v)
    if isinstance(v, EndOfDay) and (utc or v.offset is None):
        return END_OF_DAY
    return v


def _time_same(a: Any, b: Any) -> bool:
    return bool(_time_key(a, False) == _time_key(b, False))


def _time_same_utc(a: Any, b: Any) -> bool:
    return bool(_time_key(a, True) == _time_key(b, True))


__all__ = ["Convert", "Options", "Plan", "ValueRefused", "Verdict", "comparator",
           "duration_value", "fit", "from_log", "parse_duration", "parse_money", "parse_time",
           "plan", "single", "text_of", "type_label"]
