"""Compile a parsed OData ``$filter`` (:mod:`dualwrite.model.filters`) into a SQLAlchemy Core
boolean expression that runs on SQLite, PostgreSQL and MariaDB/MySQL.

The SQL selects exactly the rows :func:`dualwrite.model.filters.evaluate` accepts, so a row is
in or out of a map's scope the same way whether the database or Python decides. What that
takes, beyond the obvious operator mapping:

* every literal from the filter text is a bound parameter, never pasted into SQL;
* ``x eq null`` is ``IS NULL``; other comparisons with null are false (SQL's unknown);
  conditions under ``not`` or used as values are made two-valued with ``coalesce(p, false)``,
  because OData's ``not`` of unknown is true where SQL's is unknown;
* ``contains``/``startswith``/``endswith`` use ``LIKE`` with ``%``, ``_`` and the escape
  character escaped; on SQLite, whose ``LIKE`` ignores ASCII case, exact ``instr``/``substr``
  tests are used instead;
* ``div`` of two integer expressions truncates toward zero (``DIV`` on MariaDB, whose ``/``
  does not truncate); division and ``mod`` by zero give null on every backend;
* parts of the filter that name no column are computed in Python and bound as one value.

String comparison follows the column's collation, which agrees with Python's code-point order
only for binary collations (PostgreSQL ``"C"``, MariaDB ``utf8mb4_nopad_bin``, SQLite's
default). A naive DATETIME column is taken to hold UTC.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from dualwrite.errors import ConfigError, RowError
from dualwrite.model.filters import (
    And,
    Arith,
    Call,
    Compare,
    Expr,
    In,
    Literal,
    Neg,
    Not,
    Or,
    Property,
    evaluate_value,
    is_condition,
    to_odata,
)

__all__ = ["LIKE_ESCAPE", "compile_filter", "like_escape"]

#: The LIKE escape character. Not backslash: MariaDB also treats backslash as an escape
#: inside string literals, and SQLAlchemy renders the ESCAPE clause as a literal.
LIKE_ESCAPE = "/"

ColumnResolver = Callable[[str], sa.ColumnElement[Any]]


def like_escape(text: str) -> str:
    """``text`` with LIKE's wildcards and the escape character escaped by :data:`LIKE_ESCAPE`."""
    for ch in (LIKE_ESCAPE, "%", "_"):
        text = text.replace(ch, LIKE_ESCAPE + ch)
    return text


def compile_filter(expr: Expr, column: ColumnResolver) -> sa.ColumnElement[bool]:
    """A SQLAlchemy boolean expression selecting the rows for which ``evaluate(expr, row)``
    is true. ``column(name)`` resolves a property name to a column (and raises for an unknown
    one). Raises :class:`ConfigError` for a column-free part of the filter that cannot be
    computed (``1 add 'a'``)."""
    return _Compiler(column).condition(expr)


# --------------------------------------------------------------------------------------------
# Dialect-specific constructs. Each is a FunctionElement so that SQLAlchemy's statement cache
# covers it (inherit_cache) and compiles its arguments; each renders its own parentheses.


class _CharLength(FunctionElement[int]):
    """Length in characters: ``char_length`` (MariaDB's ``length`` counts bytes); SQLite has
    only ``length``, which counts characters."""

    type = sa.Integer()
    name = "char_length"
    inherit_cache = True


@compiles(_CharLength)
def _char_length(element: _CharLength, compiler: SQLCompiler, **kw: Any) -> str:
    return f"char_length({compiler.process(element.clauses, **kw)})"


@compiles(_CharLength, "sqlite")
def _char_length_sqlite(element: _CharLength, compiler: SQLCompiler, **kw: Any) -> str:
    return f"length({compiler.process(element.clauses, **kw)})"


class _Instr(FunctionElement[int]):
    """1-based position of the second argument in the first, 0 when absent."""

    type = sa.Integer()
    name = "instr"
    inherit_cache = True


@compiles(_Instr)
def _instr(element: _Instr, compiler: SQLCompiler, **kw: Any) -> str:
    return f"instr({compiler.process(element.clauses, **kw)})"


@compiles(_Instr, "postgresql")
def _instr_pg(element: _Instr, compiler: SQLCompiler, **kw: Any) -> str:
    return f"strpos({compiler.process(element.clauses, **kw)})"


class _IntDiv(FunctionElement[int]):
    """Integer division truncating toward zero. SQLAlchemy's ``//`` floors on MariaDB."""

    type = sa.Integer()
    name = "intdiv"
    inherit_cache = True


def _two_args(element: FunctionElement[Any], compiler: SQLCompiler,
              **kw: Any) -> tuple[str, str]:
    left, right = element.clauses.clauses
    return compiler.process(left, **kw), compiler.process(right, **kw)


@compiles(_IntDiv)
def _int_div(element: _IntDiv, compiler: SQLCompiler, **kw: Any) -> str:
    left, right = _two_args(element, compiler, **kw)
    return f"(({left}) / ({right}))"  # integer / integer truncates on SQLite and PostgreSQL


@compiles(_IntDiv, "mysql")
def _int_div_mysql(element: _IntDiv, compiler: SQLCompiler, **kw: Any) -> str:
    left, right = _two_args(element, compiler, **kw)
    return f"(({left}) DIV ({right}))"


class _TextMatch(FunctionElement[bool]):
    """``contains``/``startswith``/``endswith``. Arguments: haystack, needle, and the LIKE
    pattern for the needle (already escaped and wrapped in ``%``)."""

    type = sa.Boolean()
    name = "textmatch"
    inherit_cache = True
    kind = ""


class _Contains(_TextMatch):
    kind = "contains"
    inherit_cache = True


class _StartsWith(_TextMatch):
    kind = "startswith"
    inherit_cache = True


class _EndsWith(_TextMatch):
    kind = "endswith"
    inherit_cache = True


@compiles(_TextMatch)
def _text_match(element: _TextMatch, compiler: SQLCompiler, **kw: Any) -> str:
    haystack, _needle, pattern = element.clauses.clauses
    like = sa.type_coerce(haystack, sa.String()).like(pattern, escape=LIKE_ESCAPE)
    return f"({compiler.process(like, **kw)})"


@compiles(_TextMatch, "sqlite")
def _text_match_sqlite(element: _TextMatch, compiler: SQLCompiler, **kw: Any) -> str:
    h, n, _pattern = (compiler.process(c, **kw) for c in element.clauses.clauses)
    if element.kind == "contains":
        return f"(instr({h}, {n}) > 0)"
    if element.kind == "startswith":
        return f"(substr({h}, 1, length({n})) = {n})"
    return f"(length({h}) >= length({n}) AND substr({h}, length({h}) - length({n}) + 1) = {n})"


_TEXT_MATCH: dict[str, type[_TextMatch]] = {
    "contains": _Contains, "startswith": _StartsWith, "endswith": _EndsWith}


# --------------------------------------------------------------------------------------------
# The compiler


def _is_integer(expr: sa.ColumnElement[Any]) -> bool:
    return isinstance(expr.type, sa.Integer)


def _bind(value: Any, peer: sa.ColumnElement[Any] | None = None) -> sa.ColumnElement[Any]:
    """A bound parameter for ``value``, typed to suit the expression it is compared with."""
    if value is None:
        return sa.null()
    peer_type = peer.type if peer is not None else sa.types.NULLTYPE
    type_: sa.types.TypeEngine[Any]
    if isinstance(value, uuid.UUID):
        if isinstance(peer_type, sa.Uuid):
            return sa.literal(value, peer_type)
        return sa.literal(str(value), sa.String())
    if isinstance(value, dt.datetime):
        if isinstance(peer_type, sa.DateTime):
            if not peer_type.timezone and value.tzinfo is not None:
                value = value.astimezone(dt.UTC).replace(tzinfo=None)
            type_ = peer_type
        else:
            type_ = sa.DateTime(timezone=value.tzinfo is not None)
    elif isinstance(value, dt.date):
        if isinstance(peer_type, sa.DateTime):
            # a date against a datetime means its midnight, as in evaluate(); bound as a bare
            # date SQLite would compare the text '2024-01-31' with '2024-01-31 00:00:00...'
            value = dt.datetime.combine(value, dt.time())
            type_ = peer_type
        else:
            type_ = sa.Date()
    elif isinstance(value, bool) or (isinstance(peer_type, sa.Boolean) and value in (0, 1)):
        # `flag eq 1` holds in evaluate(); PostgreSQL has no boolean = integer operator
        value = bool(value)
        type_ = sa.Boolean()
    elif isinstance(value, int):
        type_ = sa.Integer()
    elif isinstance(value, Decimal | float):
        type_ = sa.Numeric()
    elif isinstance(value, str):
        type_ = sa.String()
    else:
        type_ = sa.types.NULLTYPE
    return sa.literal(value, type_)


def _guid_text(value: Any, peer: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """``peer`` made comparable with a GUID literal: GUIDs kept as text may be in upper case,
    and evaluate() compares GUIDs case-insensitively, so text is compared lower-cased."""
    if isinstance(value, uuid.UUID) and not isinstance(peer.type, sa.Uuid):
        return sa.func.lower(peer, type_=sa.String())
    return peer


def _two_valued(cond: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    """``cond`` with unknown (NULL) turned into false."""
    return sa.func.coalesce(cond, sa.false(), type_=sa.Boolean())


class _Compiler:
    def __init__(self, column: ColumnResolver) -> None:
        self.column = column

    def constant(self, expr: Expr) -> Any:
        try:
            return evaluate_value(expr, {})
        except RowError as exc:
            raise ConfigError(f"the filter part {to_odata(expr)!r} cannot be computed: "
                              f"{exc.reason}", hint=exc.hint, code="DW109") from None

    # -- conditions: the result only needs to be right where true; NULL may stand for false

    def condition(self, expr: Expr) -> sa.ColumnElement[bool]:
        if not expr.properties():
            return sa.true() if self.constant(expr) is True else sa.false()
        if isinstance(expr, And):
            return sa.and_(self.condition(expr.left), self.condition(expr.right))
        if isinstance(expr, Or):
            return sa.or_(self.condition(expr.left), self.condition(expr.right))
        if isinstance(expr, Not):
            return sa.not_(_two_valued(self.condition(expr.operand)))
        if isinstance(expr, Compare):
            return self.compare(expr)
        if isinstance(expr, In):
            return self.in_(expr)
        if isinstance(expr, Call) and is_condition(expr):
            return self.text_match(expr)
        # a boolean column (or any value) standing as a condition
        value: sa.ColumnElement[bool] = self.value(expr)
        return value

    def compare(self, expr: Compare) -> sa.ColumnElement[bool]:
        left_null = isinstance(expr.left, Literal) and expr.left.value is None
        right_null = isinstance(expr.right, Literal) and expr.right.value is None
        if left_null or right_null:
            if expr.op not in ("eq", "ne"):
                return sa.false()
            other = self.value(expr.right if left_null else expr.left)
            return other.is_(None) if expr.op == "eq" else other.is_not(None)
        left, right = self.operands(expr.left, expr.right)
        ops: dict[str, Callable[[Any, Any], sa.ColumnElement[bool]]] = {
            "eq": lambda a, b: a == b, "ne": lambda a, b: a != b,
            "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
            "lt": lambda a, b: a < b, "le": lambda a, b: a <= b,
        }
        return ops[expr.op](left, right)

    def operands(self, left: Expr, right: Expr) -> tuple[sa.ColumnElement[Any],
                                                         sa.ColumnElement[Any]]:
        """Both sides compiled; a column-free side is bound with the other side's type."""
        if not left.properties() and right.properties():
            value = self.constant(left)
            r = _guid_text(value, self.value(right))
            return _bind(value, r), r
        left_sql = self.value(left)
        if not right.properties():
            value = self.constant(right)
            left_sql = _guid_text(value, left_sql)
            return left_sql, _bind(value, left_sql)
        return left_sql, self.value(right)

    def in_(self, expr: In) -> sa.ColumnElement[bool]:
        left = self.value(expr.expr)
        values = [v.value for v in expr.values]
        guids = [v for v in values if isinstance(v, uuid.UUID)]
        present = [v for v in values if v is not None and not isinstance(v, uuid.UUID)]
        parts: list[sa.ColumnElement[bool]] = []
        if guids:
            guid_left = _guid_text(guids[0], left)
            parts.append(guid_left.in_([_bind(v, guid_left) for v in guids]))
        if present:
            parts.append(left.in_([_bind(v, left) for v in present]))
        if None in values:
            parts.append(left.is_(None))
        return sa.or_(*parts)

    def text_match(self, expr: Call) -> sa.ColumnElement[bool]:
        haystack_expr, needle_expr = expr.args
        haystack = self.value(haystack_expr)
        prefix = "" if expr.name == "startswith" else "%"
        suffix = "" if expr.name == "endswith" else "%"
        if needle_expr.properties():
            needle = self.value(needle_expr)
            escaped: sa.ColumnElement[Any] = needle
            for ch in (LIKE_ESCAPE, "%", "_"):
                escaped = sa.func.replace(escaped, _bind(ch), _bind(LIKE_ESCAPE + ch),
                                          type_=sa.String())
            pattern = sa.literal(prefix, sa.String()) + escaped + sa.literal(suffix, sa.String())
        else:
            text = self.constant(needle_expr)
            if text is None:
                return sa.false()
            if not isinstance(text, str):
                raise ConfigError(f"{expr.name}() needs text to look for, not {text!r}",
                                  hint=f"quote it: {expr.name}(..., '{text}')", code="DW109")
            needle = _bind(text)
            pattern = _bind(prefix + like_escape(text) + suffix)
        return _TEXT_MATCH[expr.name](haystack, needle, pattern)

    # -- values

    def value(self, expr: Expr) -> sa.ColumnElement[Any]:
        if not expr.properties():
            return _bind(self.constant(expr))
        if isinstance(expr, Property):
            return self.column(expr.name)
        if is_condition(expr):
            # a condition used as a value (`contains(a, 'x') eq false`) must not be NULL
            return _two_valued(self.condition(expr))
        if isinstance(expr, Neg):
            return -self.value(expr.operand)
        if isinstance(expr, Arith):
            return self.arith(expr)
        if isinstance(expr, Call):
            return self.call(expr)
        raise TypeError(f"cannot compile {expr!r}")  # pragma: no cover - Literal is constant

    def arith(self, expr: Arith) -> sa.ColumnElement[Any]:
        left, right = self.operands(expr.left, expr.right)
        op = expr.op
        if op == "add":
            return left + right
        if op == "sub":
            return left - right
        if op == "mul":
            return left * right
        # divide by NULLIF(d, 0): a null result everywhere, where PostgreSQL would raise
        if not (isinstance(expr.right, Literal) and expr.right.value):
            right = sa.func.nullif(right, _bind(0), type_=right.type)
        if op == "mod":
            return left % right
        if op == "div" and _is_integer(left) and _is_integer(right):
            return _IntDiv(left, right)
        return left / right

    def call(self, expr: Call) -> sa.ColumnElement[Any]:
        name = expr.name
        if name in ("year", "month", "day", "hour", "minute", "second"):
            return sa.extract(name, self.value(expr.args[0]))
        if name == "substring":
            args = [self.value(expr.args[0])]
            start = expr.args[1]
            if start.properties():
                args.append(self.value(start) + _bind(1))
            else:
                # OData counts from 0, SQL from 1; a negative start means the beginning
                args.append(_bind(max(int(self.constant(start)), 0) + 1))
            args.extend(self.value(a) for a in expr.args[2:])
            return sa.func.substr(*args, type_=sa.String())
        args = [self.value(a) for a in expr.args]
        if name == "tolower":
            return sa.func.lower(args[0], type_=sa.String())
        if name == "toupper":
            return sa.func.upper(args[0], type_=sa.String())
        if name == "trim":
            return sa.func.trim(args[0], type_=sa.String())
        if name == "length":
            return _CharLength(args[0])
        if name == "indexof":
            return _Instr(*args) - _bind(1)
        if name == "concat":
            # `||` on SQLite/PostgreSQL, concat() on MariaDB: null if either side is null
            return sa.type_coerce(args[0], sa.String()).concat(sa.type_coerce(args[1],
                                                                               sa.String()))
        raise ConfigError(f"function {name!r} cannot be used as a value here",
                          code="DW109")  # pragma: no cover - parser admits no other names
