"""Value canonicalisation and value maps. Pure.

Two databases hand back the same value as different Python objects (``Decimal('5.00')`` from
PostgreSQL, ``5.0`` from SQLite, ``1`` for ``True`` from MariaDB). :func:`canonical` maps each to
one comparable form so that diffing and value maps agree across backends.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from dualwrite.errors import MapSyntaxError


def canonical(value: Any) -> Any:
    """A hashable, comparable form: numbers as normalised Decimal, bools as 0/1 Decimals,
    datetimes as naive UTC (a column without a zone is taken to hold UTC, as dualwrite writes
    it: PostgreSQL's ``timestamptz`` and MariaDB's ``DATETIME`` then compare by the instant),
    UUIDs as lower-case strings, bytes unchanged."""
    if value is None or type(value) is str:  # the common case first: keys are mostly text
        return value
    if isinstance(value, bool):
        return Decimal(int(value))
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        # repr() gives the shortest string that round-trips: 0.1 -> '0.1', not its binary value
        return Decimal(repr(value)).normalize()
    if isinstance(value, Decimal):
        return value.normalize() if value.is_finite() else value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is None else \
            value.astimezone(dt.UTC).replace(tzinfo=None)
    if isinstance(value, memoryview):
        return bytes(value)
    return value


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
