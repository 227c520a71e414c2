"""Field-line notation: ``LEFT SYMBOL RIGHT`` as in the published dual-write templates.

Pure: no I/O. ``parse_field_line("CUSTOMERGROUPID = msdyn_customergroupid.msdyn_groupid")``
returns a :class:`FieldLine`. Lookups (``col.key``) and polymorphic lookups
(``col.Table(key).Other(key2)``) are parsed into :class:`FieldRef`. Options (value maps,
defaults) are attached by the map loader, not here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from dualwrite.errors import MapSyntaxError


class Direction(Enum):
    """The six map types of the templates. Left is finance and operations, right is CE."""

    BOTH = "="
    BOTH_TRANSFORMED = "><"
    TO_RIGHT = ">"
    TO_RIGHT_TRANSFORMED = ">>"
    TO_LEFT = "<"
    TO_LEFT_TRANSFORMED = "<<"

    @property
    def to_right(self) -> bool:
        return self in (Direction.BOTH, Direction.BOTH_TRANSFORMED, Direction.TO_RIGHT,
                        Direction.TO_RIGHT_TRANSFORMED)

    @property
    def to_left(self) -> bool:
        return self in (Direction.BOTH, Direction.BOTH_TRANSFORMED, Direction.TO_LEFT,
                        Direction.TO_LEFT_TRANSFORMED)

    @property
    def bidirectional(self) -> bool:
        return self.to_left and self.to_right

    @property
    def transformed(self) -> bool:
        return self.value in ("><", ">>", "<<")


SYMBOLS = {d.value: d for d in Direction}


@dataclass(frozen=True)
class LookupTarget:
    """One table a lookup may point into, and the natural key column that finds the row.

    ``table`` is None for a plain dotted lookup (``col.key``): the related table is the one the
    column's foreign key references. Polymorphic lookups name each candidate table. A ``key``
    with dots (``col.rel.key``, as some templates have) hops through the related table's
    lookup column ``rel`` to the natural key ``key`` of the table that one references.
    """

    key: str
    table: str | None = None


@dataclass(frozen=True)
class FieldRef:
    """One side of a field line: a column, possibly a lookup through it, or ``none``."""

    column: str | None
    targets: tuple[LookupTarget, ...] = ()

    @property
    def is_none(self) -> bool:
        return self.column is None

    @property
    def is_lookup(self) -> bool:
        return bool(self.targets)

    @property
    def is_polymorphic(self) -> bool:
        return len(self.targets) > 1 or any(t.table for t in self.targets)

    def __str__(self) -> str:
        if self.column is None:
            return "none"
        if not self.targets:
            return self.column
        if self.is_polymorphic:
            return self.column + "".join(f".{t.table}({t.key})" for t in self.targets)
        return f"{self.column}.{self.targets[0].key}"


@dataclass(frozen=True)
class FieldLine:
    """A parsed field line without its options."""

    left: FieldRef
    direction: Direction
    right: FieldRef
    text: str


_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_IDENT_RE = re.compile(rf"^{_IDENT}$")
_POLY_RE = re.compile(rf"\.({_IDENT})\(({_IDENT})\)")
_LINE_RE = re.compile(r"^\s*(\S+)\s*(><|>>|<<|=|>|<)\s*(\S+)\s*$")


def parse_ref(text: str, *, line_text: str = "") -> FieldRef:
    """Parse one side: ``none``, ``COL``, ``col.key`` or ``col.Table(key).Table2(key2)``."""
    src = line_text or text
    if text.lower() == "none":
        return FieldRef(None)
    if _IDENT_RE.match(text):
        return FieldRef(text)
    head, sep, rest = text.partition(".")
    if not sep or not _IDENT_RE.match(head):
        raise MapSyntaxError(
            f"field {text!r} in {src!r} is not a column name, a lookup or `none`",
            hint="write COLUMN, column.naturalkey, or column.Table(key).Other(key)",
        )
    if all(_IDENT_RE.match(part) for part in rest.split(".")):
        return FieldRef(head, (LookupTarget(rest),))
    targets = []
    pos = 0
    tail = "." + rest
    for m in _POLY_RE.finditer(tail):
        if m.start() != pos:
            break
        targets.append(LookupTarget(m.group(2), m.group(1)))
        pos = m.end()
    if not targets or pos != len(tail):
        raise MapSyntaxError(
            f"lookup {text!r} in {src!r} does not parse",
            hint="a lookup is column.naturalkey; a polymorphic one is "
            "column.Table(key).Other(key), e.g. customerid.Account(accountnumber)."
            "Contact(msdyn_contactpersonid)",
        )
    return FieldRef(head, tuple(targets))


def parse_field_line(text: str) -> FieldLine:
    """Parse ``LEFT SYMBOL RIGHT``. Raises MapSyntaxError naming the line and what to fix."""
    m = _LINE_RE.match(text)
    if not m:
        raise MapSyntaxError(
            f"field line {text!r} does not parse",
            hint="write `LEFTFIELD SYMBOL rightfield` with SYMBOL one of = >< > >> < <<, "
            "e.g. `CUSTOMERACCOUNT = accountnumber`",
        )
    left_text, symbol, right_text = m.groups()
    direction = SYMBOLS[symbol]
    left = parse_ref(left_text, line_text=text)
    right = parse_ref(right_text, line_text=text)
    if left.is_none and right.is_none:
        raise MapSyntaxError(f"field line {text!r} has `none` on both sides",
                             hint="one side must name a field")
    if left.is_none and direction.to_left:
        raise MapSyntaxError(
            f"field line {text!r} writes into `none` on the left",
            hint="with `none` on the left use `>` or `>>` (a constant sent to the right)",
        )
    if right.is_none and direction.to_right:
        raise MapSyntaxError(
            f"field line {text!r} writes into `none` on the right",
            hint="with `none` on the right use `<` or `<<` (a constant sent to the left)",
        )
    return FieldLine(left, direction, right, text.strip())
