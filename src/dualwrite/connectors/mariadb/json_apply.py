"""The applier's set-based path into MariaDB (``supports_json_apply``): a run of captured
versions, still as the change log's JSON text, read by ``JSON_TABLE`` and written in one
statement (:meth:`WriteSession.insert_json`, :meth:`WriteSession.update_if_json`).

Exactness first. Every member is taken as its text (a ``LONGTEXT`` column: a ``VARCHAR(n)``
of JSON_TABLE cuts a longer text silently, whatever ``ON ERROR`` says; compared byte for byte,
``utf8mb4_nopad_bin``: no case folding, no padding) and converted by the INSERT or UPDATE as
the row path's literal would be, under the session's strict mode (a value the column cannot
hold fails the statement, loudly, and the applier applies the batch again row by row).
Where MariaDB would read the text otherwise than the row builders convert the value, the
statement converts it itself or leaves the row out (not written: it takes the row path,
which writes it or parks it with the row path's error):

* a datetime: ISO text, with ``T`` or a space; an offset (PostgreSQL's ``timestamptz``)
  subtracted, so that it lands in UTC as :func:`_escape_datetime` writes it; text of another
  shape (``infinity``, a BC date, a five-digit year) leaves the row out;
* a date, a decimal: text of the plain shape only (``infinity``, ``NaN`` leave the row out);
* a text compared (a key, a natural key of a lookup, a value map's spelling, the guarded
  update's old version): byte for byte, as Python compares them, never by the column's
  case-insensitive, space-padding collation.

Which pairs of columns may come this way at all is :meth:`MySqlConnector.reads_log_text`
(the conversion plan's ``text_safe``, or the same plan without what the statement converts or
guards here).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from dualwrite.connectors.base import JsonSource
from dualwrite.model.schema import Column, Kind

#: a JSON_TABLE column holding a member's text as it is (see the module docstring)
TEXT = "LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin"
#: the shapes of text a column of these kinds takes from a captured version; anything else
#: leaves its row to the row path
DATETIME_TEXT = ("^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]{1,6})?"
                 "([+-][0-9]{2}(:[0-9]{2}){0,2})?$")
DATE_TEXT = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
DECIMAL_TEXT = "^-?[0-9]+([.][0-9]+)?$"
INTEGER_TEXT = "^-?[0-9]+$"
#: kinds whose members the statements copy (converted as above)
#: (MariaDB has no boolean kind: its BOOL is a TINYINT, an integer to dualwrite)
COPIED = frozenset({Kind.STRING, Kind.INTEGER, Kind.DECIMAL, Kind.FLOAT, Kind.DATE,
                    Kind.DATETIME, Kind.TIME, Kind.UUID})
#: kinds a key column may have on this path (matched by value, text byte for byte)
KEYED = frozenset({Kind.STRING, Kind.INTEGER, Kind.UUID})


class Declined(Exception):
    """A statement this path cannot make exactly: the caller returns None (the row path)."""


class Rows:
    """The rows of one JSON array read by ``JSON_TABLE`` (alias ``n``), and per written
    column the SQL expression of its value, with the conditions under which each value was
    found or is of a shape the statement reads exactly (``guards``).

    ``describe(table)`` gives a table's columns; ``table_sql(table)`` its quoted name;
    ``literal(value)`` a constant as an SQL literal; ``collation(table, column)`` a text
    column's collation where it is one of utf8mb4, else None (a natural key compared with a
    member must be: the member's text is cast to that collation, so that the column's index
    serves, then compared byte for byte; two implicit collations would be an error)."""

    def __init__(self, quote: Callable[[str], str], literal: Callable[[Any], str],
                 describe: Callable[[str], dict[str, Column]], table_sql: Callable[[str], str],
                 collation: Callable[[str, str], str | None]) -> None:
        self.quote, self.literal, self.describe = quote, literal, describe
        self.table_sql, self.collation = table_sql, collation
        #: JSON path -> the JSON_TABLE column reading it
        self.members: dict[str, str] = {}
        self.joins: list[str] = []
        self.guards: list[str] = []

    def member(self, prefix: str, name: str) -> str:
        """The text of member ``name`` of each object (``prefix``: where the object is in
        each element of the array, ``$`` or ``$[0]``)."""
        if any(ch in name for ch in "\"\\'%"):
            raise Declined  # would need escaping inside a JSON path inside a literal
        path = f'{prefix}."{name}"'
        if path not in self.members:
            self.members[path] = f"n.c{len(self.members)}"
        return self.members[path]

    def table_function(self, param: str) -> str:
        """``JSON_TABLE(%(<param>)s, '$[*]' COLUMNS (dw_ord FOR ORDINALITY, c0 ...)) n``."""
        cols = ", ".join(f"{alias[2:]} {TEXT} PATH '{path}'"
                         for path, alias in self.members.items())
        return (f"JSON_TABLE(%({param})s, '$[*]' COLUMNS (dw_ord FOR ORDINALITY"
                f"{', ' + cols if cols else ''})) n")

    def value(self, column: Column, src: JsonSource, prefix: str) -> str:
        """The SQL expression of ``column``'s value from source ``src`` of each object."""
        kind = column.kind
        if isinstance(src, str):
            if kind not in COPIED:
                raise Declined
            return self.copied(kind, self.member(prefix, src))
        if src.how == "constant":
            return self.literal(src.value)
        if src.how == "mapped":
            got = self.member(prefix, src.source)
            m = f"m{len(self.joins)}"
            # a value map's pairs (few), or a source lookup's resolved ids: [text, value]
            self.joins.append(
                f" LEFT JOIN JSON_TABLE(%(m{src.mapping})s, '$[*]' COLUMNS (k {TEXT} "
                f"PATH '$[0]', v {TEXT} PATH '$[1]')) {m} ON {m}.k = {got}")
            self.guards.append(f"({got} IS NULL OR {m}.k IS NOT NULL)")
            return f"{m}.v"
        if src.how == "lookup":
            return self.lookup(src, self.member(prefix, src.source))
        raise Declined

    def copied(self, kind: Kind, got: str) -> str:
        if kind is Kind.DATETIME:
            # The shape is checked first (the guard); then an offset, if any, starts at the
            # first sign after the 19 characters of date and time (the fraction has none):
            # found by position, a regular expression per row costs more than the insert.
            pos = f"(LOCATE('+', {got}, 20) + LOCATE('-', {got}, 20))"
            # the offset as seconds (RPAD: '01' and '01:00' as '01:00:00'), subtracted: UTC
            v = (f"(CASE WHEN {pos} = 0 THEN CAST({got} AS DATETIME(6)) ELSE "
                 f"CAST(LEFT({got}, {pos} - 1) AS DATETIME(6)) - INTERVAL "
                 f"IF(SUBSTRING({got}, {pos}, 1) = '-', -1, 1) * "
                 f"TIME_TO_SEC(RPAD(SUBSTRING({got}, {pos} + 1), 8, ':00')) SECOND END)")
            # a date out of range after the shift is NULL: its row takes the row path
            self.guards.append(f"({got} IS NULL OR ({got} REGEXP '{DATETIME_TEXT}' AND "
                               f"{v} IS NOT NULL))")
            return v
        if kind is Kind.DATE:
            self.guards.append(f"({got} IS NULL OR {got} REGEXP '{DATE_TEXT}')")
        elif kind is Kind.DECIMAL:
            self.guards.append(f"({got} IS NULL OR {got} REGEXP '{DECIMAL_TEXT}')")
        return got

    def lookup(self, src: Any, got: str) -> str:
        """The ``returning`` column of the row of ``src.table`` whose ``match`` equals the
        member (of several, the smallest, as Connector.lookup picks); compared by value, a
        text byte for byte (the row path's lookup keeps only exact matches)."""
        cols = self.describe(src.table)
        match, ret = cols.get(src.match), cols.get(src.returning)
        if match is None or ret is None:
            raise Declined
        mq, rq = f"x.{self.quote(src.match)}", f"x.{self.quote(src.returning)}"
        if match.kind is Kind.INTEGER:
            self.guards.append(f"({got} IS NULL OR {got} REGEXP '{INTEGER_TEXT}')")
            cond = f"{mq} = CAST({got} AS DECIMAL(65,0))"
        elif match.kind is Kind.STRING:
            cond = text_match(mq, got, self.collation(src.table, src.match))
        else:
            raise Declined
        v = (f"(SELECT {rq} FROM {self.table_sql(src.table)} x WHERE {cond} "
             f"ORDER BY {rq} LIMIT 1)")
        self.guards.append(f"({got} IS NULL OR {v} IS NOT NULL)")
        return v


def same(column: Column, current: str, expr: str) -> str:
    """SQL: whether ``current`` (a column of the target row) holds the value ``expr`` (as
    written into that column) stands for, as the row path compares them in Python: NULL-safe,
    by value, a text byte for byte."""
    kind, f = column.kind, column.facets
    if kind is Kind.STRING:
        return (f"CAST(CONVERT({current} USING utf8mb4) AS BINARY) <=> "
                f"CAST(CONVERT({expr} USING utf8mb4) AS BINARY)")
    if kind is Kind.INTEGER:
        return f"{current} <=> CAST({expr} AS DECIMAL(65,0))"
    if kind is Kind.DECIMAL:
        scale = f.scale if f.scale is not None else 30
        return f"{current} <=> CAST({expr} AS DECIMAL(65,{min(scale, 38)}))"
    if kind is Kind.FLOAT:
        # a FLOAT column compares as the double it widens to: equal only where exact
        return f"{current} <=> CAST({expr} AS DOUBLE)"
    if kind is Kind.DATE:
        return f"{current} <=> CAST({expr} AS DATE)"
    if kind is Kind.DATETIME:
        return f"{current} <=> CAST({expr} AS DATETIME(6))"
    if kind is Kind.TIME:
        return f"{current} <=> CAST({expr} AS TIME(6))"
    if kind is Kind.UUID:
        return f"{current} <=> {expr}"
    raise Declined


def key_match(column: Column, current: str, expr: str, collation: str | None) -> str:
    """SQL: the target row whose key column ``current`` equals ``expr``, by its index
    (``collation``: a text key's, see :class:`Rows`)."""
    if column.kind is Kind.INTEGER:
        return f"{current} = CAST({expr} AS DECIMAL(65,0))"
    if column.kind is Kind.STRING:
        return text_match(current, expr, collation)
    if column.kind is Kind.UUID:
        return f"{current} = {expr}"
    raise Declined


def text_match(column: str, expr: str, collation: str | None) -> str:
    """SQL: text column ``column`` equals ``expr`` byte for byte; the first test (in the
    column's own collation) lets its index find the candidates."""
    if collation is None or not re.fullmatch(r"utf8mb4_[a-z0-9_]+", collation):
        raise Declined
    return (f"{column} = {expr} COLLATE {collation} AND "
            f"CAST({column} AS BINARY) = CAST({expr} AS BINARY)")


def mapping_params(mappings: Sequence[Sequence[tuple[str, Any]]],
                   escape: Callable[[Any], Any]) -> dict[str, str]:
    """Each mapping as an SQL literal of the JSON text of an array of [text, value] pairs
    (``escape``: the driver's quoting), named as the statements' placeholders name them;
    the value as the text MariaDB reads into the column as the row path's literal (a
    boolean as 1/0)."""
    def text(v: Any) -> str | None:
        if v is None:
            return None
        if isinstance(v, bool):
            return "1" if v else "0"
        return str(v)

    return {f"m{i}": str(escape(json.dumps([[k, text(v)] for k, v in pairs])))
            for i, pairs in enumerate(mappings)}


#: the most pairs a mapping may have on this path: MariaDB joins a mapping's JSON_TABLE with
#: the versions' in a nested loop (no index, and its hash join does not help here), so 5,000
#: pairs against 5,000 versions took 2.8 s, 3 pairs 0.06 s, 100 pairs about 0.1 s. A larger
#: mapping (a source lookup's resolved ids, rarely a value map) takes the row path.
MAX_PAIRS = 100


def small_mappings(mappings: Sequence[Sequence[tuple[str, Any]]]) -> bool:
    """Whether every mapping is small enough for the set-based statements (MAX_PAIRS)."""
    return all(len(pairs) <= MAX_PAIRS for pairs in mappings)


def json_literal(objects: Sequence[str]) -> str:
    """JSON texts as the SQL literal of one JSON array of them: hexadecimal bytes read as
    utf8mb4 (no quoting to escape; encoding is many times faster than the driver's
    escaping of a large text)."""
    return "CONVERT(X'" + ("[" + ",".join(objects) + "]").encode().hex() + "' USING utf8mb4)"
