"""Field-line notation: ``LEFT SYMBOL RIGHT`` as in the published dual-write templates.

Pure: no I/O. ``parse_field_line("CUSTOMERGROUPID = msdyn_customergroupid.msdyn_groupid")``
returns a :class:`FieldLine`. Lookups (``col.key``), lookups by a company-scoped natural key
(``col.(company,key)``) and polymorphic lookups (``col.Table(key).Other(company,key2)``) are
parsed into :class:`FieldRef`. Options (value maps, defaults) are attached by the map loader,
not here.
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
    #: the related table's company column, when the natural key is written as a pair
    #: ``(company, key)``: the row is then found within the referring row's own company
    company: str | None = None

    def natural_key(self) -> str:
        """The natural key as written: ``key`` or ``(company,key)`` (the last hop of a chain
        carries the pair: ``rel.(company,key)``)."""
        if self.company is None:
            return self.key
        head, dot, last = self.key.rpartition(".")
        return f"{head}{dot}({self.company},{last})"


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
            return self.column + "".join(
                f".{t.table}({t.company + ',' if t.company else ''}{t.key})"
                for t in self.targets)
        return f"{self.column}.{self.targets[0].natural_key()}"


@dataclass(frozen=True)
class FieldLine:
    """A parsed field line without its options."""

    left: FieldRef
    direction: Direction
    right: FieldRef
    text: str


_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_IDENT_RE = re.compile(rf"^{_IDENT}$")
_POLY_RE = re.compile(rf"\.({_IDENT})\(([^()]*)\)")
_LINE_RE = re.compile(r"^\s*(\S+)\s*(><|>>|<<|=|>|<)\s*(\S+)\s*$")
#: a parenthesised list, with the spaces a writer may put inside it
_PARENS_RE = re.compile(r"\(([^()]*)\)")

_LOOKUP_HINT = ("a lookup is column.naturalkey, or column.(company,naturalkey) to find the row "
                "within the row's own company; a polymorphic one is column.Table(key)."
                "Other(key), e.g. customerid.Account(accountnumber).Contact("
                "msdyn_contactpersonid)")


def _tight(m: re.Match[str]) -> str:
    """``( a , b )`` -> ``(a,b)``."""
    return "(" + ",".join(p.strip() for p in m.group(1).split(",")) + ")"


def _natural_key(inner: str, text: str, src: str) -> tuple[str | None, str]:
    """``key`` or ``company,key`` (the inside of parentheses) -> (company column, key)."""
    names = [n.strip() for n in inner.split(",")]
    bad = [n for n in names if not _IDENT_RE.match(n)]
    if bad or len(names) > 2:
        what = (f"{len(names)} columns" if not bad else
                "an empty column name" if "" in bad else f"{bad[0]!r}, not a column name")
        raise MapSyntaxError(
            f"lookup {text!r} in {src!r}: the natural key ({inner}) has {what}",
            hint="in parentheses name the related table's company column, then its key "
            "column: column.(company,key) or column.Table(company,key), e.g. "
            "msdyn_customergroupid.(msdyn_company,msdyn_groupid)")
    if len(names) == 1:
        return None, names[0]
    return names[0], names[1]


def parse_ref(text: str, *, line_text: str = "") -> FieldRef:
    """Parse one side: ``none``, ``COL``, ``col.key``, ``col.rel.key``, ``col.(company,key)``
    or ``col.Table(key).Table2(company,key2)``."""
    src = line_text or text
    text = _PARENS_RE.sub(_tight, text.strip())
    if text.lower() == "none":
        return FieldRef(None)
    if _IDENT_RE.match(text):
        return FieldRef(text)
    head, sep, rest = text.partition(".")
    if not sep or not _IDENT_RE.match(head):
        raise MapSyntaxError(
            f"field {text!r} in {src!r} is not a column name, a lookup or `none`",
            hint="write COLUMN, column.naturalkey, column.(company,naturalkey), or "
            "column.Table(key).Other(key)",
        )
    if all(_IDENT_RE.match(part) for part in rest.split(".")):
        return FieldRef(head, (LookupTarget(rest),))
    path, dot, last = rest.rpartition(".")
    if last.startswith("(") and (not path or all(_IDENT_RE.match(p) for p in path.split("."))):
        # column.(company,key) or column.rel.(company,key)
        if not last.endswith(")") or last.count("(") != 1 or last.count(")") != 1:
            raise MapSyntaxError(f"lookup {text!r} in {src!r} does not parse: the natural key "
                                 f"{last!r} must be one parenthesised list",
                                 hint=_LOOKUP_HINT)
        company, key = _natural_key(last[1:-1], text, src)
        if company is None:
            raise MapSyntaxError(
                f"lookup {text!r} in {src!r}: parentheses hold a company column and a key "
                "column",
                hint=f"write {head}.{path}{dot}{key} for a natural key of one column, or "
                f"{head}.{path}{dot}(company,{key}) to find the row within the row's company")
        return FieldRef(head, (LookupTarget(f"{path}{dot}{key}", None, company),))
    targets = []
    pos = 0
    tail = "." + rest
    for m in _POLY_RE.finditer(tail):
        if m.start() != pos:
            break
        company, key = _natural_key(m.group(2), text, src)
        targets.append(LookupTarget(key, m.group(1), company))
        pos = m.end()
    if not targets or pos != len(tail):
        raise MapSyntaxError(f"lookup {text!r} in {src!r} does not parse", hint=_LOOKUP_HINT)
    return FieldRef(head, tuple(targets))


def parse_field_line(text: str) -> FieldLine:
    """Parse ``LEFT SYMBOL RIGHT``. Raises MapSyntaxError naming the line and what to fix."""
    m = _LINE_RE.match(_PARENS_RE.sub(_tight, text))
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
