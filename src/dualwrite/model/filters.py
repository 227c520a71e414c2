"""OData v4 ``$filter`` expressions: parser, Python evaluator, printer. Pure: no I/O.

``parse_filter("customertypecode eq 3 and name ne null")`` returns a small AST of frozen
dataclasses (:class:`Expr` and its subclasses). :func:`evaluate` decides whether a row (a dict)
passes the filter; :func:`to_odata` prints an AST back to canonical filter text;
``dualwrite.connectors.sqlfilter.compile_filter`` turns the same AST into SQL.

The subset of OData v4.01 understood here:

* comparison ``eq ne gt ge lt le``, membership ``x in ('a', 'b')``, logic ``and or not``,
  arithmetic ``add sub mul div divby mod`` and unary ``-``, parentheses;
* literals: ``'it''s'``, ``42``, ``1.5``, ``1.5e3``, ``true``, ``false``, ``null``,
  ``2024-01-31``, ``2024-01-31T10:00:00Z``, GUIDs;
* column names (no ``/`` navigation paths) and the functions in :data:`FUNCTIONS`.

Precedence, tightest first, as in OData: ``not`` and unary ``-``; ``mul div divby mod``;
``add sub``; ``gt ge lt le in``; ``eq ne``; ``and``; ``or``. So ``not a eq b`` means
``(not a) eq b``; write ``not (a eq b)`` to negate a comparison.

Null semantics (shared with the SQL compiler so that a row is in or out of scope the same way
in Python and in the database):

* ``x eq null`` / ``x ne null`` (a literal ``null``) test for null, like SQL ``IS [NOT] NULL``;
* any other comparison involving a null value is false; arithmetic and functions of null
  give null; ``x in (a, null)`` means ``x eq a or x eq null``;
* a condition (comparison, ``in``, ``and``/``or``/``not``, ``contains``/``startswith``/
  ``endswith``) is always true or false, never null: a null value where a condition is
  needed counts as false, so ``not (x gt 5)`` is true when ``x`` is null.
"""

from __future__ import annotations

import datetime as dt
import operator
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, DivisionByZero, InvalidOperation
from typing import Any, ClassVar

from dualwrite.errors import FilterSyntaxError, RowError
from dualwrite.model.codec import decimal_of_float
from dualwrite.model.values import canonical

__all__ = [
    "ARITHMETIC_OPS",
    "COMPARISON_OPS",
    "FUNCTIONS",
    "And",
    "Arith",
    "Call",
    "Compare",
    "Expr",
    "In",
    "Literal",
    "Neg",
    "Not",
    "Or",
    "Property",
    "evaluate",
    "evaluate_value",
    "is_condition",
    "parse_filter",
    "to_odata",
]

COMPARISON_OPS: frozenset[str] = frozenset({"eq", "ne", "gt", "ge", "lt", "le"})
ARITHMETIC_OPS: frozenset[str] = frozenset({"add", "sub", "mul", "div", "divby", "mod"})

#: Supported functions and how many arguments each takes (min, max).
FUNCTIONS: Mapping[str, tuple[int, int]] = {
    "contains": (2, 2), "startswith": (2, 2), "endswith": (2, 2),
    "tolower": (1, 1), "toupper": (1, 1), "length": (1, 1), "trim": (1, 1),
    "concat": (2, 2), "indexof": (2, 2), "substring": (2, 3),
    "year": (1, 1), "month": (1, 1), "day": (1, 1),
    "hour": (1, 1), "minute": (1, 1), "second": (1, 1),
}
_CONDITION_FUNCTIONS = frozenset({"contains", "startswith", "endswith"})

# Every word the grammar reserves. A column spelled like one of them in another letter case
# ("AND", "Null") is rejected rather than silently read as a column: OData keywords are
# case-sensitive, and that spelling is far more likely a keyword typo than a column name.
_KEYWORDS = frozenset({"and", "or", "not", "in", "has", "true", "false", "null"}
                      | COMPARISON_OPS | ARITHMETIC_OPS)

# Printing and parsing share one precedence table (higher binds tighter).
_P_OR, _P_AND, _P_EQ, _P_REL, _P_ADD, _P_MUL, _P_UNARY, _P_PRIMARY = range(1, 9)
_PRECEDENCE = {"eq": _P_EQ, "ne": _P_EQ, "gt": _P_REL, "ge": _P_REL, "lt": _P_REL, "le": _P_REL,
               "add": _P_ADD, "sub": _P_ADD,
               "mul": _P_MUL, "div": _P_MUL, "divby": _P_MUL, "mod": _P_MUL}


# --------------------------------------------------------------------------------------------
# AST


class Expr:
    """Base of every filter AST node. Nodes are immutable and compare by value."""

    def children(self) -> tuple[Expr, ...]:
        """The direct sub-expressions, left to right."""
        return ()

    def walk(self) -> Iterator[Expr]:
        """This node and every node below it, depth first."""
        yield self
        for child in self.children():
            yield from child.walk()

    def properties(self) -> set[str]:
        """The property (column) names referenced anywhere in the expression, as written."""
        return {node.name for node in self.walk() if isinstance(node, Property)}

    def __str__(self) -> str:
        return to_odata(self)


@dataclass(frozen=True)
class Literal(Expr):
    """A constant: None, bool, int, Decimal, str, date, datetime or UUID."""

    value: Any


@dataclass(frozen=True)
class Property(Expr):
    """A column of the row, by name (case-preserving)."""

    name: str


@dataclass(frozen=True)
class Compare(Expr):
    """``left op right`` with ``op`` one of :data:`COMPARISON_OPS`."""

    op: str
    left: Expr
    right: Expr

    def __post_init__(self) -> None:
        if self.op not in COMPARISON_OPS:
            raise ValueError(f"unknown comparison operator {self.op!r}")

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)


@dataclass(frozen=True)
class In(Expr):
    """``expr in (v1, v2, ...)``: true when ``expr eq v`` for some listed literal ``v``."""

    expr: Expr
    values: tuple[Literal, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("an 'in' list needs at least one value")

    def children(self) -> tuple[Expr, ...]:
        return (self.expr, *self.values)


@dataclass(frozen=True)
class And(Expr):
    left: Expr
    right: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)


@dataclass(frozen=True)
class Or(Expr):
    left: Expr
    right: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)


@dataclass(frozen=True)
class Not(Expr):
    operand: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.operand,)


@dataclass(frozen=True)
class Arith(Expr):
    """``left op right`` with ``op`` one of :data:`ARITHMETIC_OPS`."""

    op: str
    left: Expr
    right: Expr

    def __post_init__(self) -> None:
        if self.op not in ARITHMETIC_OPS:
            raise ValueError(f"unknown arithmetic operator {self.op!r}")

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)


@dataclass(frozen=True)
class Neg(Expr):
    """Unary minus."""

    operand: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.operand,)


@dataclass(frozen=True)
class Call(Expr):
    """``name(arg, ...)`` with ``name`` a key of :data:`FUNCTIONS`."""

    name: str
    args: tuple[Expr, ...]

    def __post_init__(self) -> None:
        if self.name not in FUNCTIONS:
            raise ValueError(f"unknown function {self.name!r}")

    def children(self) -> tuple[Expr, ...]:
        return self.args


def is_condition(expr: Expr) -> bool:
    """True for nodes whose value is always true or false, never null: comparisons, ``in``,
    ``and``/``or``/``not`` and the ``contains``/``startswith``/``endswith`` functions."""
    if isinstance(expr, Compare | In | And | Or | Not):
        return True
    return isinstance(expr, Call) and expr.name in _CONDITION_FUNCTIONS


def _may_be_boolean(expr: Expr) -> bool:
    """Whether ``expr`` can stand where a condition is needed: a condition, a (boolean)
    column, or a ``true``/``false``/``null`` literal."""
    if is_condition(expr) or isinstance(expr, Property):
        return True
    return isinstance(expr, Literal) and (expr.value is None or isinstance(expr.value, bool))


# --------------------------------------------------------------------------------------------
# Lexer


@dataclass(frozen=True)
class _Token:
    kind: str  # str num date datetime guid ident ( ) , - end
    text: str
    pos: int
    value: Any = None


_WS = re.compile(r"\s+")
_STRING = re.compile(r"'(?:[^']|'')*'", re.DOTALL)
_GUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
                   r"(?!\w)")
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,12}))?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?(?![\w:.])")
_NUMBER = re.compile(r"\d+(\.\d+)?([eE][+-]?\d+)?")
_IDENT = re.compile(r"[^\W\d]\w*")
_SYMBOL = re.compile(r"==|!=|<>|<=|>=|&&|\|\||[=<>!+*/%&|]")
_SYMBOL_HINTS = {"==": "eq", "=": "eq", "!=": "ne", "<>": "ne", "<": "lt", "<=": "le",
                 ">": "gt", ">=": "ge", "&&": "and", "&": "and", "||": "or", "|": "or",
                 "!": "not", "+": "add", "*": "mul", "/": "div", "%": "mod"}
_OPERATOR_HINT = ("OData operators are words: eq ne gt ge lt le, and or not, "
                  "add sub mul div divby mod, in")


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        if m := _WS.match(text, pos):
            pos = m.end()
            continue
        ch = text[pos]
        if ch in "(),-":
            tokens.append(_Token(ch, ch, pos))
            pos += 1
            continue
        if ch == "'":
            m = _STRING.match(text, pos)
            if not m:
                raise FilterSyntaxError(
                    "unterminated string: the quote opened here has no closing '", text=text,
                    position=pos, hint="close the string with ' and write a quote inside "
                    "a string as '' (two quotes), e.g. 'O''Brien'")
            tokens.append(_Token("str", m.group(), pos, m.group()[1:-1].replace("''", "'")))
            pos = m.end()
            continue
        if m := _GUID.match(text, pos):
            tokens.append(_Token("guid", m.group(), pos, uuid.UUID(m.group())))
            pos = m.end()
            continue
        if m := _DATETIME.match(text, pos):
            tokens.append(_date_token(text, m))
            pos = m.end()
            continue
        if m := _NUMBER.match(text, pos):
            if m.end() < len(text) and (text[m.end()].isalnum() or text[m.end()] in "_."):
                raise FilterSyntaxError(
                    f"unexpected {text[m.end()]!r} after the number {m.group()!r}", text=text,
                    position=m.end())
            num = m.group()
            value: int | Decimal = Decimal(num) if m.group(1) or m.group(2) else int(num)
            tokens.append(_Token("num", num, pos, value))
            pos = m.end()
            continue
        if m := _IDENT.match(text, pos):
            tokens.append(_Token("ident", m.group(), pos))
            pos = m.end()
            continue
        if m := _SYMBOL.match(text, pos):
            sym = m.group()
            if (sym == "/" and tokens and tokens[-1].kind == "ident"
                    and tokens[-1].pos + len(tokens[-1].text) == pos):
                raise FilterSyntaxError(
                    f"property paths such as '{tokens[-1].text}/...' are not supported",
                    text=text, position=pos,
                    hint="filter on a column of the mapped table itself")
            word = _SYMBOL_HINTS[sym]
            raise FilterSyntaxError(f"{sym!r} is not an OData operator: use {word!r}",
                                    text=text, position=pos, hint=_OPERATOR_HINT)
        raise FilterSyntaxError(f"unexpected character {ch!r}", text=text, position=pos)
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _date_token(text: str, m: re.Match[str]) -> _Token:
    year, month, day, hour, minute, second, frac, tz = m.groups()
    try:
        if hour is None:
            return _Token("date", m.group(), m.start(), dt.date(int(year), int(month), int(day)))
        tzinfo: dt.tzinfo | None = None
        if tz == "Z":
            tzinfo = dt.UTC
        elif tz:
            sign = -1 if tz[0] == "-" else 1
            tzinfo = dt.timezone(sign * dt.timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
        micro = int((frac or "").ljust(6, "0")[:6])
        value = dt.datetime(int(year), int(month), int(day), int(hour), int(minute),
                            int(second or 0), micro, tzinfo=tzinfo)
    except ValueError as exc:
        raise FilterSyntaxError(f"{m.group()!r} is not a valid date or time ({exc})",
                                text=text, position=m.start(),
                                hint="write dates as 2024-01-31 and times as "
                                "2024-01-31T10:00:00Z") from None
    return _Token("datetime", m.group(), m.start(), value)


# --------------------------------------------------------------------------------------------
# Parser


def parse_filter(text: str) -> Expr:
    """Parse OData ``$filter`` text into an AST.

    Raises :class:`FilterSyntaxError` (with ``text`` and a 0-based ``position``) saying what
    was expected wherever the text does not parse, or when it is a value rather than a
    condition (``name add 1``).
    """
    return _Parser(text).parse()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    # -- token helpers

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != "end":
            self.i += 1
        return tok

    def keyword(self, *words: str) -> str | None:
        """The current token's keyword if it is one of ``words`` (exact, lower case)."""
        tok = self.tok
        return tok.text if tok.kind == "ident" and tok.text in words else None

    def error(self, message: str, position: int, hint: str = "") -> FilterSyntaxError:
        return FilterSyntaxError(message, text=self.text, position=position, hint=hint)

    @staticmethod
    def describe(tok: _Token) -> str:
        return "the end of the filter" if tok.kind == "end" else repr(tok.text)

    # -- entry

    def parse(self) -> Expr:
        if self.tok.kind == "end":
            raise self.error("the filter is empty: expected a condition such as "
                             "'statecode eq 0'", 0)
        expr = self.condition(self.or_expr, "at the start of the filter", after=None)
        if self.tok.kind != "end":
            raise self.unexpected("after a complete condition")
        return expr

    def condition(self, parse: Callable[[], Expr], where: str, after: _Token | None) -> Expr:
        """Parse with ``parse`` and insist the result can be true or false."""
        start = self.tok
        self.expect_value(after, condition=True)
        expr = parse()
        if not _may_be_boolean(expr):
            raise self.error(
                f"expected a condition {where}, but {to_odata(expr)!r} is a value",
                start.pos, hint="compare it with something, e.g. 'length(name) gt 3'")
        return expr

    def expect_value(self, after: _Token | None, *, condition: bool = False) -> None:
        """Fail unless the current token can start an operand."""
        tok = self.tok
        starts = tok.kind in ("str", "num", "date", "datetime", "guid", "(", "-") or (
            tok.kind == "ident" and (tok.text not in _KEYWORDS
                                     or tok.text in ("true", "false", "null", "not")))
        if starts:
            return
        what = "a condition" if condition else "a value"
        if after is not None:
            what += f" after {after.text!r}"
        raise self.error(f"expected {what}, found {self.describe(tok)}", tok.pos)

    def unexpected(self, where: str) -> FilterSyntaxError:
        """The error for a token that cannot follow a complete operand."""
        tok = self.tok
        if tok.kind == ")":
            return self.error("unbalanced parenthesis: this ')' has no matching '('", tok.pos)
        if tok.kind == "ident" and tok.text == "has":
            return self.error("the 'has' operator is not supported", tok.pos,
                              hint="compare the column with eq, or list values with in")
        if tok.kind == "ident" and tok.text != tok.text.lower() and \
                tok.text.lower() in _KEYWORDS:
            return self.error(f"keywords are lower case: write {tok.text.lower()!r}, "
                              f"not {tok.text!r}", tok.pos)
        return self.error(
            f"expected an operator (eq, ne, gt, ge, lt, le, in, and, or, add, ...) {where}, "
            f"found {self.describe(tok)}", tok.pos, hint=_OPERATOR_HINT)

    # -- precedence levels, loosest first

    def or_expr(self) -> Expr:
        left = self.and_expr()
        while self.keyword("or"):
            tok = self.advance()
            right = self.condition(self.and_expr, "after 'or'", tok)
            left = Or(left, right)
        return left

    def and_expr(self) -> Expr:
        first = self.tok
        left = self.equality()
        while self.keyword("and"):
            if not _may_be_boolean(left):
                raise self.error(f"expected a condition before 'and', but "
                                 f"{to_odata(left)!r} is a value", first.pos)
            tok = self.advance()
            right = self.condition(self.equality, "after 'and'", tok)
            left = And(left, right)
        if self.keyword("or") and not _may_be_boolean(left):
            raise self.error(f"expected a condition before 'or', but {to_odata(left)!r} "
                             f"is a value", first.pos)
        return left

    def equality(self) -> Expr:
        left = self.relational()
        while op := self.keyword("eq", "ne"):
            tok = self.advance()
            self.expect_value(tok)
            left = self.checked_compare(op, left, self.relational(), tok)
        return left

    def relational(self) -> Expr:
        left = self.additive()
        while op := self.keyword("gt", "ge", "lt", "le", "in"):
            tok = self.advance()
            if op == "in":
                self.reject_not_operand(left, "in", tok)
                left = In(left, self.in_list())
            else:
                self.expect_value(tok)
                left = self.checked_compare(op, left, self.additive(), tok)
        return left

    def checked_compare(self, op: str, left: Expr, right: Expr, tok: _Token) -> Compare:
        # `not x eq 5` parses as `(not x) eq 5` (OData precedence); comparing a negated
        # operand with anything but true/false/null is almost always a missing parenthesis.
        if isinstance(left, Not) and not _may_be_boolean(right):
            self.reject_not_operand(left, op, tok)
        return Compare(op, left, right)

    def reject_not_operand(self, left: Expr, op: str, tok: _Token) -> None:
        if isinstance(left, Not):
            raise self.error(
                f"'not' binds tighter than {op!r}: it negates only {to_odata(left.operand)!r}",
                tok.pos, hint=f"to negate the whole comparison write "
                f"'not ({to_odata(left.operand)} {op} ...)'")

    def additive(self) -> Expr:
        left = self.multiplicative()
        while op := self.keyword("add", "sub"):
            tok = self.advance()
            self.expect_value(tok)
            left = Arith(op, left, self.multiplicative())
        return left

    def multiplicative(self) -> Expr:
        left = self.unary()
        while op := self.keyword("mul", "div", "divby", "mod"):
            tok = self.advance()
            self.expect_value(tok)
            left = Arith(op, left, self.unary())
        return left

    def unary(self) -> Expr:
        tok = self.tok
        if tok.kind == "-":
            self.advance()
            nxt = self.tok
            # "-5" is a negative literal (OData's int/decimal grammar); "-x" and "- 5" negate.
            if nxt.kind == "num" and nxt.pos == tok.pos + 1:
                self.advance()
                value = nxt.value
                # copy_negate is exact; unary minus would round to the decimal context
                return Literal(value.copy_negate() if isinstance(value, Decimal) else -value)
            self.expect_value(tok)
            return Neg(self.unary())
        if self.keyword("not"):
            self.advance()
            return Not(self.condition(self.unary, "after 'not'", tok))
        return self.primary()

    def primary(self) -> Expr:
        tok = self.advance()
        if tok.kind in ("str", "num", "date", "datetime", "guid"):
            return Literal(tok.value)
        if tok.kind == "(":
            self.expect_value(tok)
            inner = self.or_expr()
            self.close(tok, f"the '(' at position {tok.pos} is not closed")
            return inner
        if tok.kind == "ident":
            word = tok.text
            if word in ("true", "false", "null"):
                return Literal({"true": True, "false": False, "null": None}[word])
            if word.lower() in _KEYWORDS:
                raise self.error(f"keywords are lower case: write {word.lower()!r}, "
                                 f"not {word!r}", tok.pos)
            if self.tok.kind == "(":
                return self.call(tok)
            return Property(word)
        raise AssertionError(f"expect_value let {tok!r} through")  # pragma: no cover

    def close(self, opening: _Token, message: str) -> None:
        if self.tok.kind == ")":
            self.advance()
            return
        if self.tok.kind == "end":
            raise self.error(f"unbalanced parenthesis: {message}", opening.pos,
                             hint="add the missing ')'")
        raise self.unexpected("or ')'")

    def call(self, name_tok: _Token) -> Call:
        name = name_tok.text
        if name not in FUNCTIONS:
            if name.lower() in FUNCTIONS:
                raise self.error(f"function names are lower case: write {name.lower()!r}, "
                                 f"not {name!r}", name_tok.pos)
            raise self.error(f"unknown function {name!r}", name_tok.pos,
                             hint="supported functions: " + ", ".join(sorted(FUNCTIONS)))
        opening = self.advance()
        args: list[Expr] = []
        after = opening
        if self.tok.kind != ")":
            while True:
                self.expect_value(after)
                args.append(self.or_expr())
                if self.tok.kind != ",":
                    break
                after = self.advance()
        self.close(opening, f"the '(' of {name}( at position {opening.pos} is not closed")
        low, high = FUNCTIONS[name]
        if not low <= len(args) <= high:
            want = str(low) if low == high else f"{low} or {high}"
            raise self.error(f"function {name!r} takes {want} argument"
                             f"{'' if want == '1' else 's'}, got {len(args)}", name_tok.pos)
        return Call(name, tuple(args))

    def in_list(self) -> tuple[Literal, ...]:
        opening = self.tok
        if opening.kind != "(":
            raise self.error(f"expected '(' and a list of values after 'in', found "
                             f"{self.describe(opening)}", opening.pos,
                             hint="e.g. code in ('a', 'b')")
        self.advance()
        values: list[Literal] = []
        after = opening
        if self.tok.kind == ")":
            raise self.error("an 'in' list needs at least one value", self.tok.pos,
                             hint="e.g. code in ('a', 'b')")
        while True:
            tok = self.tok
            self.expect_value(after)
            value = self.unary()
            if not isinstance(value, Literal):
                raise self.error(f"an 'in' list takes literal values only, found "
                                 f"{to_odata(value)!r}", tok.pos,
                                 hint="e.g. code in ('a', 'b', 3)")
            values.append(value)
            if self.tok.kind != ",":
                break
            after = self.advance()
        if self.tok.kind == "end":
            raise self.error(f"unbalanced parenthesis: the '(' of the 'in' list at position "
                             f"{opening.pos} is not closed", opening.pos)
        if self.tok.kind != ")":
            raise self.error(f"expected ',' or ')' in the 'in' list, found "
                             f"{self.describe(self.tok)}", self.tok.pos)
        self.advance()
        return tuple(values)


# --------------------------------------------------------------------------------------------
# Printer


def to_odata(expr: Expr) -> str:
    """Canonical filter text for ``expr``: single spaces, lower-case keywords, and only the
    parentheses precedence requires. ``parse_filter(to_odata(e)) == e`` for every AST the
    parser can produce."""
    return _print(expr)[0]


def _print(expr: Expr) -> tuple[str, int]:
    """(text, precedence of the text's top operator)."""
    if isinstance(expr, Literal):
        text = _literal_text(expr.value)
        # a negative number must be parenthesised where a '-' would otherwise merge with it
        return text, (_P_UNARY if text.startswith("-") else _P_PRIMARY)
    if isinstance(expr, Property):
        return expr.name, _P_PRIMARY
    if isinstance(expr, Call):
        return f"{expr.name}({', '.join(_print(a)[0] for a in expr.args)})", _P_PRIMARY
    if isinstance(expr, Or | And | Compare | Arith):
        if isinstance(expr, Or):
            op, prec = "or", _P_OR
        elif isinstance(expr, And):
            op, prec = "and", _P_AND
        else:
            op, prec = expr.op, _PRECEDENCE[expr.op]
        return f"{_operand(expr.left, prec)} {op} {_operand(expr.right, prec + 1)}", prec
    if isinstance(expr, In):
        values = ", ".join(_literal_text(v.value) for v in expr.values)
        return f"{_operand(expr.expr, _P_REL)} in ({values})", _P_REL
    if isinstance(expr, Not):
        return f"not {_operand(expr.operand, _P_UNARY)}", _P_UNARY
    if isinstance(expr, Neg):
        inner, prec = _print(expr.operand)
        # "-5" would read back as a negative literal, "--x" is hard to read: parenthesise both
        if prec < _P_UNARY or isinstance(expr.operand, Neg | Literal):
            inner = f"({inner})"
        return f"-{inner}", _P_UNARY
    raise TypeError(f"not a filter expression: {expr!r}")


def _operand(expr: Expr, min_prec: int) -> str:
    text, prec = _print(expr)
    return f"({text})" if prec < min_prec else text


def _literal_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        value = decimal_of_float(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} has no OData filter literal")
        text = str(value)
        # keep it a decimal when read back: 5 would parse as an integer, and `div` on two
        # integers truncates while on decimals it does not
        return text if any(c in text for c in ".Ee") else text + ".0"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, dt.datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{value!r} ({type(value).__name__}) has no OData filter literal")


# --------------------------------------------------------------------------------------------
# Evaluator


def evaluate(expr: Expr, row: Mapping[str, Any]) -> bool:
    """Whether ``row`` passes the filter ``expr``.

    Properties are looked up by exact key, then case-insensitively. Numbers of any Python type
    compare by value (via :func:`~dualwrite.model.values.canonical`); strings compare by code
    point; a naive datetime is taken to be UTC when compared with an aware one; a date compared
    with a datetime is taken as its midnight. Null semantics are those in the module docstring.

    Raises :class:`RowError` when the row lacks a named column or a value has the wrong type
    for its operator (``'abc' gt 5``).
    """
    return _truth(_Evaluator(row).value(expr), expr)


def evaluate_value(expr: Expr, row: Mapping[str, Any]) -> Any:
    """The value of any expression (a condition gives True/False, a value expression may give
    None). Integer arithmetic stays int; anything involving a decimal gives Decimal."""
    return _Evaluator(row).value(expr)


def _fail(reason: str, expr: Expr) -> RowError:
    return RowError(f"filter {to_odata(expr)!r}: {reason}",
                    hint="check that the filter uses each column with values of its type")


def _truth(value: Any, expr: Expr) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    c = canonical(value)
    # MariaDB and SQLite hand booleans back as 0/1
    if isinstance(c, Decimal) and c in (0, 1):
        return bool(c)
    raise _fail(f"{value!r} is not true or false", expr)


_COMPARE: Mapping[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq, "ne": operator.ne, "gt": operator.gt,
    "ge": operator.ge, "lt": operator.lt, "le": operator.le,
}


class _Evaluator:
    _ARITH: ClassVar[dict[str, Callable[[Any, Any], Any]]] = {
        "add": operator.add, "sub": operator.sub, "mul": operator.mul,
    }

    def __init__(self, row: Mapping[str, Any]) -> None:
        self.row = row
        self._folded: dict[str, str] | None = None

    def lookup(self, expr: Property) -> Any:
        if expr.name in self.row:
            return self.row[expr.name]
        if self._folded is None:
            self._folded = {str(k).casefold(): k for k in self.row}
        key = self._folded.get(expr.name.casefold())
        if key is None:
            raise RowError(f"the filter names column {expr.name!r}, which the row does not have",
                           field=expr.name,
                           hint="check the filter's column names against the table")
        return self.row[key]

    def value(self, expr: Expr) -> Any:
        if isinstance(expr, Literal):
            return expr.value
        if isinstance(expr, Property):
            return self.lookup(expr)
        if isinstance(expr, And):
            return _truth(self.value(expr.left), expr.left) and \
                _truth(self.value(expr.right), expr.right)
        if isinstance(expr, Or):
            return _truth(self.value(expr.left), expr.left) or \
                _truth(self.value(expr.right), expr.right)
        if isinstance(expr, Not):
            return not _truth(self.value(expr.operand), expr.operand)
        if isinstance(expr, Compare):
            return self.compare(expr)
        if isinstance(expr, In):
            left = self.value(expr.expr)
            return any(self.equals_literal(expr, left, v) for v in expr.values)
        if isinstance(expr, Neg):
            v = self.value(expr.operand)
            if v is None:
                return None
            if isinstance(v, int) and not isinstance(v, bool):
                return -v
            return -self.number(v, expr)
        if isinstance(expr, Arith):
            return self.arith(expr)
        if isinstance(expr, Call):
            return self.call(expr)
        raise TypeError(f"not a filter expression: {expr!r}")

    def equals_literal(self, expr: Expr, left: Any, lit: Literal) -> bool:
        if lit.value is None:
            return left is None
        return _compare_values("eq", left, lit.value, expr)

    def compare(self, expr: Compare) -> bool:
        left_null = isinstance(expr.left, Literal) and expr.left.value is None
        right_null = isinstance(expr.right, Literal) and expr.right.value is None
        if left_null or right_null:
            # `x eq null` / `x ne null` test for null; ordering against null is never true
            if expr.op not in ("eq", "ne"):
                return False
            other = self.value(expr.left if right_null else expr.right)
            return (other is None) == (expr.op == "eq")
        return _compare_values(expr.op, self.value(expr.left), self.value(expr.right), expr)

    def number(self, value: Any, expr: Expr) -> Decimal:
        c = canonical(value)
        if not isinstance(c, Decimal):
            raise _fail(f"{value!r} is not a number", expr)
        return c

    def arith(self, expr: Arith) -> Any:
        left, right = self.value(expr.left), self.value(expr.right)
        if left is None or right is None:
            return None
        op = expr.op
        if _is_int(left) and _is_int(right) and op != "divby":
            a, b = int(left), int(right)
            if op in ("div", "mod"):
                if b == 0:
                    return None  # as SQLite and MariaDB do; the SQL compiler matches it
                # OData and SQL truncate integer division toward zero; Python floors
                q = abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)
                return q if op == "div" else a - b * q
            return self._ARITH[op](a, b)
        x, y = self.number(left, expr), self.number(right, expr)
        if op in ("div", "divby", "mod"):
            if y == 0:
                return None
            try:
                return x % y if op == "mod" else x / y
            except (DivisionByZero, InvalidOperation) as exc:  # pragma: no cover - guarded
                raise _fail(str(exc), expr) from None
        return self._ARITH[op](x, y)

    def call(self, expr: Call) -> Any:
        args = [self.value(a) for a in expr.args]
        name = expr.name
        if name in _CONDITION_FUNCTIONS:
            if args[0] is None or args[1] is None:
                return False
            s, sub = (self.text(a, expr) for a in args)
            if name == "contains":
                return sub in s
            return s.startswith(sub) if name == "startswith" else s.endswith(sub)
        if any(a is None for a in args):
            return None
        if name in ("year", "month", "day", "hour", "minute", "second"):
            moment = _as_temporal(args[0])
            if moment is None:
                raise _fail(f"{args[0]!r} is not a date or time", expr)
            if not isinstance(moment, dt.datetime) and name in ("hour", "minute", "second"):
                return 0
            return int(getattr(moment, name))
        if name == "concat":
            return self.text(args[0], expr) + self.text(args[1], expr)
        if name == "substring":
            s = self.text(args[0], expr)
            start = max(self.integer(args[1], expr), 0)
            if len(args) == 2:
                return s[start:]
            return s[start:start + max(self.integer(args[2], expr), 0)]
        s = self.text(args[0], expr)
        if name == "indexof":
            return s.find(self.text(args[1], expr))
        if name == "length":
            return len(s)
        if name == "trim":
            return s.strip(" ")  # SQL TRIM removes spaces only, not all whitespace
        return s.lower() if name == "tolower" else s.upper()

    def text(self, value: Any, expr: Expr) -> str:
        if not isinstance(value, str):
            raise _fail(f"{value!r} is not a string", expr)
        return value

    def integer(self, value: Any, expr: Expr) -> int:
        c = self.number(value, expr)
        if c != c.to_integral_value():
            raise _fail(f"{value!r} is not a whole number", expr)
        return int(c)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_temporal(value: Any) -> dt.date | None:
    """A date or datetime from a date/datetime or an ISO string (SQLite stores them as text)."""
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value) if len(value) > 10 \
                else dt.date.fromisoformat(value)
        except ValueError:
            return None
    return None


def _compare_values(op: str, left: Any, right: Any, expr: Expr) -> bool:
    if left is None or right is None:
        return False
    a, b = _comparable(left, right)
    try:
        return _COMPARE[op](a, b)
    except TypeError:
        raise _fail(f"cannot compare {left!r} with {right!r}", expr) from None


def _comparable(left: Any, right: Any) -> tuple[Any, Any]:
    a, b = canonical(left), canonical(right)
    # GUIDs: canonical() lower-cases UUID objects; a GUID held in a text column may not be
    if isinstance(left, uuid.UUID) and isinstance(b, str):
        b = b.lower()
    if isinstance(right, uuid.UUID) and isinstance(a, str):
        a = a.lower()
    if isinstance(a, str) and isinstance(b, dt.date):
        a = _as_temporal(a) or a
    if isinstance(b, str) and isinstance(a, dt.date):
        b = _as_temporal(b) or b
    if isinstance(a, dt.date) and isinstance(b, dt.date):
        a, b = _align_temporal(a, b)
    return a, b


def _align_temporal(a: dt.date, b: dt.date) -> tuple[dt.date, dt.date]:
    """Make two dates/datetimes comparable: a date becomes its midnight next to a datetime,
    and a naive datetime is read as UTC next to an aware one."""
    if isinstance(a, dt.datetime) != isinstance(b, dt.datetime):
        if isinstance(a, dt.datetime):
            b = dt.datetime.combine(b, dt.time(), tzinfo=a.tzinfo)
        elif isinstance(b, dt.datetime):
            a = dt.datetime.combine(a, dt.time(), tzinfo=b.tzinfo)
    if isinstance(a, dt.datetime) and isinstance(b, dt.datetime) and \
            (a.tzinfo is None) != (b.tzinfo is None):
        if a.tzinfo is None:
            a = a.replace(tzinfo=dt.UTC)
        else:
            b = b.replace(tzinfo=dt.UTC)
    return a, b
