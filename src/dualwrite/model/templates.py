"""Import of published dual-write template tables into dualwrite map documents. Pure.

The published templates (see ``shared/data/msdocs-dualwrite-templates/README.md``) are markdown
files: a heading naming the template, optional ``Source filter:`` / ``Reversed source filter:``
lines, and a table ``F&O field | Map type | other app field | Default value``. Two layouts occur:

- ``## Customers V3 to accounts`` (file ``CustomersV3-accounts.md``): the right table follows
  ``to``; the left entity is the file name's first segment.
- ``### <a name="217"></a>CDS sales order headers (salesorders)`` (file
  ``mt-217-cds-sales-order-headers-salesorders.md``): the right table is in parentheses; the
  left entity is not named anywhere, so a CamelCase name is made of the title words
  (``CdsSalesOrderHeaders``).

The pipeline, every step text in, data out (reading and writing files is the caller's job)::

    t = parse_template(text, source="CustomersV3-accounts.md")
    doc = template_to_map(t)
    yaml_text = render_map_yaml(doc, comments=template_comments(t))

``yaml_text`` loads with :func:`dualwrite.model.yamlio.load_yaml` and
:func:`dualwrite.model.maps.parse_map_document`. Templates do not state the integration key, so
:func:`guess_key` picks one and the rendered header says it must be checked. A ``><`` value map
that is not one-to-one is imported as published, listed in :attr:`Template.warnings` and marked
with a comment in the YAML; ``dualwrite validate`` rejects it, which is where it gets fixed.
"""

from __future__ import annotations

import html
import posixpath
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from dualwrite.errors import MapSyntaxError, TemplateError
from dualwrite.model.notation import SYMBOLS, Direction, FieldLine, parse_field_line, parse_ref
from dualwrite.model.values import ValueMap, value_key

__all__ = [
    "KnownValues",
    "Template",
    "TemplateRow",
    "borrowed_values",
    "fo_filter_to_odata",
    "guess_key",
    "known_values",
    "parse_template",
    "render_map_yaml",
    "reversed_filter_to_odata",
    "template_comments",
    "template_to_map",
]


# ---------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class TemplateRow:
    """One row of a template table, unescaped but otherwise as published.

    ``left``/``right`` are field references (``CUSTOMERACCOUNT``, ``none``,
    ``transactioncurrencyid.isocurrencycode``, ``customerid.Account(accountnumber).Contact(…)``),
    ``symbol`` one of ``= >< > >> < <<``, ``default`` the Default value cell (``None`` when
    empty), ``values`` the value map of the Map type cell as (left value, right value) text pairs
    in published order, ``line`` the 1-based markdown line of the row.
    """

    left: str
    symbol: str
    right: str
    default: str | None
    values: tuple[tuple[str, str], ...]
    line: int

    @property
    def text(self) -> str:
        """The row as a field line: ``LEFT SYMBOL right``."""
        return f"{self.left} {self.symbol} {self.right}"

    @property
    def direction(self) -> Direction:
        return SYMBOLS[self.symbol]


@dataclass
class Template:
    """A parsed template file.

    ``left_table`` is the finance and operations entity (``CustomersV3``), ``right_table`` the
    customer engagement table (``accounts``). Filters are kept as published (surrounding
    whitespace removed), ``None`` when the file has none; ``*_filter_line`` are their markdown
    lines. ``rows`` holds every row of the mapping table, in order. ``warnings`` lists what
    imports but deserves a look (each names the markdown line).
    """

    title: str
    left_table: str
    right_table: str
    left_filter_raw: str | None
    right_filter_raw: str | None
    rows: list[TemplateRow]
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    left_filter_line: int | None = None
    right_filter_line: int | None = None
    header: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# markdown helpers

_MD_ESCAPE_RE = re.compile(r"\\([!-/:-@\[-`{-~])")
_BR_RE = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TAG_RE = re.compile(r"<[^>]*>")
_HEADING_RE = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SEPARATOR_RE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$")
_SOURCE_FILTER_RE = re.compile(r"^\s*source\s+filter\s*:\s*(.*?)\s*$", re.IGNORECASE)
_REVERSED_FILTER_RE = re.compile(r"^\s*reversed?\s+source\s+filter\s*:\s*(.*?)\s*$",
                                 re.IGNORECASE)
_PAIR_RE = re.compile(r"^\s*(`[^`]*`|[^`:]*?)\s*:\s*(`[^`]*`|[^`]*?)\s*$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAP_TYPE_HEADER_RE = re.compile(r"map(ping)?\s*type", re.IGNORECASE)
_MT_SOURCE_RE = re.compile(r"^mt-\d+-", re.IGNORECASE)
_TITLE_TO_RE = re.compile(r"^(?P<left>.+?)\s+to\s+(?P<right>[A-Za-z_][A-Za-z0-9_]*)$")
_TITLE_PAREN_RE = re.compile(r"^(?P<left>.+?)\s*\(\s*(?P<right>[A-Za-z_][A-Za-z0-9_]*)\s*\)$")


def _unescape(text: str) -> str:
    """Markdown cell text to plain text: HTML entities, backslash escapes, code-span ticks."""
    out = _MD_ESCAPE_RE.sub(r"\1", html.unescape(text)).strip()
    if len(out) >= 2 and out.startswith("`") and out.endswith("`"):
        out = out.strip("`").strip()
    return out


def _split_cells(line: str) -> list[str]:
    """Split a GFM table row on unescaped pipes, dropping one outer pipe on each side."""
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    cells: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body) and body[i + 1] == "|":
            current.append("\\|")
            i += 2
            continue
        if ch == "|":
            cells.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    cells.append("".join(current))
    return [c.strip() for c in cells]


def _camel(words_text: str) -> str:
    """``CDS sales order headers`` → ``CdsSalesOrderHeaders``, ``Customers V3`` → ``CustomersV3``.
    """
    words = re.findall(r"[A-Za-z0-9]+", words_text)
    name = "".join(w[0].upper() + w[1:].lower() for w in words)
    if name and name[0].isdigit():
        name = "T" + name
    return name


def _snake(text: str) -> str:
    """A map name: lower case letters, digits and ``_``."""
    name = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return name or "template"


# ---------------------------------------------------------------------------------------------
# parse_template


def _names(title: str, source: str) -> tuple[str, str]:
    """(left table, right table) from the title and the source file name.

    Right: the title's ``… to <table>`` or ``… (<table>)``, else the file name after its first
    ``-``. Left: the file name before its first ``-`` (``CustomersV3-accounts.md``), except for
    the ``mt-<n>-…`` files split out of ``mapping-tables.md``, whose left entity is named nowhere:
    then, as when there is no file name, the title words in CamelCase (``CdsSalesOrderHeaders``).
    """
    base = posixpath.basename(source.replace("\\", "/"))
    stem = base[:-3] if base.lower().endswith(".md") else base
    title_left = title_right = ""
    for regex in (_TITLE_PAREN_RE, _TITLE_TO_RE):
        m = regex.match(title)
        if m:
            title_left, title_right = m.group("left"), m.group("right")
            break
    left = right = ""
    if stem and not _MT_SOURCE_RE.match(stem) and "-" in stem:
        head, _, tail = stem.partition("-")
        if _IDENT_RE.match(head):
            left = head
        tail_name = tail.strip("-").replace("-", "_")
        if _IDENT_RE.match(tail_name):
            right = tail_name
    if title_right:
        right = title_right
    if not left:
        left = _camel(title_left or title)
    return left, right


def _parse_values(cell_parts: Sequence[str], *, file: str | None, line: int,
                  warnings: list[str]) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for part in cell_parts:
        if not part.strip():
            continue
        m = _PAIR_RE.match(part)
        if not m or not m.group(1).strip():
            raise TemplateError(
                f"value map entry {part.strip()!r} does not parse",
                hint="write each entry of a value map as `left value` : `right value`, "
                "entries separated by <br>",
                file=file, line=line, code="DW120",
            )
        raw_left, raw_right = m.group(1), m.group(2)
        for raw in (raw_left, raw_right):
            if not raw.startswith("`"):
                shown = raw.strip() or "(empty)"
                warnings.append(
                    f"line {line}: value map entry {part.strip()!r} has {shown!r}"
                    " without backticks; imported as the text "
                    f"{_unescape(raw)!r} - check whether an empty value is meant")
        pairs.append((_unescape(raw_left), _unescape(raw_right)))
    return tuple(pairs)


def _check_values(row: TemplateRow, warnings: list[str]) -> None:
    if not row.values:
        return
    seen_left: dict[str | None, str] = {}
    for left_value, _ in row.values:
        k = value_key(_typed(left_value))
        if k in seen_left:
            warnings.append(
                f"line {row.line}: `{row.text}` lists the left value {left_value!r} twice "
                f"(also as {seen_left[k]!r}); only the first entry is imported")
        else:
            seen_left[k] = left_value
    if row.symbol == "><":
        vm = ValueMap({_typed(a): _typed(b) for a, b in _first_pairs(row.values)})
        if not vm.invertible:
            clashes = "; ".join(f"{a!r} and {b!r} both map to {v!r}"
                                for a, b, v in vm.collisions)
            warnings.append(
                f"line {row.line}: `{row.text}` is bidirectional (><) but its value map is not "
                f"one-to-one ({clashes}); imported as published, `dualwrite validate` will "
                "reject it: make the map one-to-one or use >> / <<")


_MULTI_HOP_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){2,}$")


def _notation_reads(ref: str) -> bool:
    try:
        parse_ref(ref)
    except MapSyntaxError:
        return False
    return True


def _strip_code(message: str) -> str:
    """``"DW100 lookup ... does not parse"`` → ``"lookup ... does not parse"``."""
    head, _, rest = message.partition(" ")
    return rest if re.fullmatch(r"DW\d+", head) else message


def _check_row_line(row: TemplateRow, *, file: str | None, warnings: list[str]) -> FieldLine:
    """Check a row as a field line (symbol, `none` rules, lookups) and return it parsed.

    A multi-hop lookup path (``msdyn_productcategory.msdyn_hierarchy.msdyn_name``) is published
    in several templates; when the map notation cannot read it, the row is kept as published
    with a warning, and the rest of the row is checked with the path collapsed to one hop.
    """
    left, right = row.left, row.right
    for side, ref in (("left", row.left), ("right", row.right)):
        if _MULTI_HOP_RE.match(ref) and not _notation_reads(ref):
            warnings.append(
                f"line {row.line}: `{row.text}`: the lookup path {ref!r} goes through several "
                "tables, which the map notation cannot read yet; the row is kept as published "
                "and the map will not load until the notation supports such lookups")
            head, _, rest = ref.partition(".")
            first_hop = f"{head}.{rest.rsplit('.', 1)[-1]}"
            if side == "left":
                left = first_hop
            else:
                right = first_hop
    try:
        return parse_field_line(f"{left} {row.symbol} {right}")
    except MapSyntaxError as exc:
        raise TemplateError(
            f"row `{row.text}` is not a valid field line: {_strip_code(exc.message)}",
            hint=exc.hint, file=file, line=row.line, code="DW120",
        ) from exc


def _warning_line(warning: str) -> int:
    m = re.match(r"line (\d+)", warning)
    return int(m.group(1)) if m else 0


def _check_targets(rows: Sequence[TemplateRow], warnings: list[str]) -> None:
    """Warn when two rows write the same plain column (one of the values would be lost).

    Several lookup rows through one column (``invoiceid.msdyn_invoicedate`` and
    ``invoiceid.msdyn_invoicenumber``) are a composite natural key of the related row, not a
    clash, so only plain columns are checked."""
    writers: dict[tuple[str, str], TemplateRow] = {}
    for row in rows:
        direction = row.direction
        for side, ref, flows in (("right", row.right, direction.to_right),
                                 ("left", row.left, direction.to_left)):
            if not flows or not _is_plain(ref):
                continue
            column = ref
            first = writers.setdefault((side, column.lower()), row)
            if first is not row:
                warnings.append(
                    f"line {row.line}: `{row.text}` writes the {side} column {column!r}, which "
                    f"line {first.line} (`{first.text}`) writes too")


def parse_template(text: str, *, source: str = "") -> Template:
    """Parse one template markdown file.

    ``source`` is the file name (a path is fine), used for the left entity name and in errors.
    Every row of the mapping table becomes a :class:`TemplateRow`; each is checked to be a
    valid field line (``parse_field_line``).

    Raises :class:`TemplateError` (with file and line) when there is no mapping table, the
    table is empty, a row has the wrong number of cells, a map type symbol is unknown, a field
    does not parse, a value map entry does not parse, or the tables cannot be named.
    """
    file = source or None
    lines = text.splitlines()
    warnings: list[str] = []
    title = ""
    title_line: int | None = None
    left_filter: str | None = None
    right_filter: str | None = None
    left_filter_line: int | None = None
    right_filter_line: int | None = None
    header: list[str] | None = None
    sep_index: int | None = None

    for i, raw_line in enumerate(lines):
        if (m := _HEADING_RE.match(raw_line)) and not title:
            heading = _unescape(_TAG_RE.sub("", m.group(2))).strip()
            if heading:
                title, title_line = heading, i + 1
            continue
        if (m := _REVERSED_FILTER_RE.match(raw_line)) and right_filter is None:
            right_filter, right_filter_line = m.group(1).strip() or None, i + 1
            continue
        if (m := _SOURCE_FILTER_RE.match(raw_line)) and left_filter is None:
            left_filter, left_filter_line = m.group(1).strip() or None, i + 1
            continue
        if i > 0 and _SEPARATOR_RE.match(raw_line):
            cells = _split_cells(lines[i - 1])
            if len(cells) in (3, 4) and _MAP_TYPE_HEADER_RE.search(cells[1]):
                header, sep_index = cells, i
                break

    if header is None or sep_index is None:
        raise TemplateError(
            "no mapping table found",
            hint="a template needs a table headed `Finance and Operations field | Map type | "
            "Customer engagement field | Default value` followed by a `---|---|---|---` line",
            file=file, code="DW120",
        )

    rows: list[TemplateRow] = []
    n_cols = len(header)
    for i in range(sep_index + 1, len(lines)):
        raw_line = lines[i]
        if not raw_line.strip() or "|" not in raw_line:
            break
        line_no = i + 1
        cells = _split_cells(raw_line)
        if not 3 <= len(cells) <= n_cols:
            raise TemplateError(
                f"table row has {len(cells)} cell(s), expected "
                f"{'3 or 4' if n_cols == 4 else n_cols}: {raw_line.strip()!r}",
                hint="a row is `F&O field | map type | other field | default value`; escape a "
                "pipe inside a cell as \\|",
                file=file, line=line_no, code="DW120",
            )
        type_parts = _BR_RE.split(cells[1])
        symbol = _unescape(type_parts[0])
        if symbol not in SYMBOLS:
            raise TemplateError(
                f"unknown map type symbol {symbol!r}",
                hint="the map type is one of = >< > >> < << (see dual-write-symbols.md), "
                "optionally followed by a value map: ><<br>`no` : `False`",
                file=file, line=line_no, code="DW120",
            )
        left, right = _unescape(cells[0]), _unescape(cells[2])
        if not left or not right:
            raise TemplateError(
                f"the {'left' if not left else 'right'} field cell is empty: "
                f"{raw_line.strip()!r}",
                hint="name a field, or write `none` with a constant in Default value",
                file=file, line=line_no, code="DW120",
            )
        default_text = _unescape(cells[3]) if len(cells) > 3 else ""
        values = _parse_values(type_parts[1:], file=file, line=line_no, warnings=warnings)
        row = TemplateRow(left, symbol, right, default_text or None, values, line_no)
        parsed = _check_row_line(row, file=file, warnings=warnings)
        if values and not parsed.direction.transformed:
            raise TemplateError(
                f"row `{row.text}` carries a value map but its map type {symbol!r} is not a "
                "transformed one",
                hint="a value map goes with >< (both ways), >> or <<",
                file=file, line=line_no, code="DW120",
            )
        if (parsed.left.is_none or parsed.right.is_none) and row.default is None:
            raise TemplateError(
                f"row `{row.text}` maps `none` but has no default value",
                hint="put the constant in the Default value column",
                file=file, line=line_no, code="DW120",
            )
        if row.default is not None and not (parsed.left.is_none or parsed.right.is_none):
            warnings.append(
                f"line {line_no}: `{row.text}` has a default value ({row.default!r}) although "
                "both sides name a field; imported as the field's default")
        _check_values(row, warnings)
        rows.append(row)

    _check_targets(rows, warnings)
    warnings.sort(key=_warning_line)
    if not rows:
        raise TemplateError(
            "the mapping table has no rows",
            hint="add at least one `F&O field | map type | other field |` row",
            file=file, line=sep_index + 1, code="DW120",
        )

    left_table, right_table = _names(title, source)
    if not right_table or not left_table:
        raise TemplateError(
            "cannot tell which tables this template maps",
            hint="the title should read `<entity> to <table>` or `<entity> (<table>)`, or pass "
            "the file name as source (`CustomersV3-accounts.md`)",
            file=file, line=title_line, code="DW120",
        )
    return Template(
        title=title, left_table=left_table, right_table=right_table,
        left_filter_raw=left_filter, right_filter_raw=right_filter, rows=rows, source=source,
        warnings=warnings, left_filter_line=left_filter_line,
        right_filter_line=right_filter_line, header=tuple(header),
    )


# ---------------------------------------------------------------------------------------------
# filters

_FO_TOKEN_RE = re.compile(r"""
    (?P<ws>\s+)
  | (?P<op>==|!=|<>|<=|>=|&&|\|\||[=<>!()])
  | (?P<str>"(?:[^"\\]|\\.|"")*"|'(?:[^'\\]|\\.|'')*')
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
""", re.VERBOSE)

_COMPARE = {"==": "eq", "=": "eq", "!=": "ne", "<>": "ne", "<": "lt", "<=": "le", ">": "gt",
            ">=": "ge"}
_PREC_OR, _PREC_AND, _PREC_NOT, _PREC_COMPARE, _PREC_ATOM = 1, 2, 3, 4, 5


def _filter_error(message: str, text: str, position: int | None = None) -> TemplateError:
    where = f" at position {position}" if position is not None else ""
    return TemplateError(
        f"source filter {text!r} does not convert: {message}{where}",
        hint="write the finance and operations filter as comparisons joined by && and ||, "
        "e.g. ((PartyType == \"Organization\")) || (AssociatedContactType = 1)",
        code="DW121",
    )


def _odata_string(body: str) -> str:
    return "'" + body.replace("'", "''") + "'"


class _FoParser:
    """Recursive descent over the F&O query syntax; emits OData text with minimal parentheses.

    Each parse method returns ``(odata_text, precedence)``.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _FO_TOKEN_RE.match(text, pos)
            if not m:
                raise _filter_error(f"unexpected {text[pos]!r}", text, pos)
            kind = m.lastgroup or ""
            if kind != "ws":
                self.tokens.append((kind, m.group(), pos))
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            raise _filter_error("unexpected end", self.text, len(self.text))
        self.i += 1
        return tok

    def parse(self) -> str:
        if not self.tokens:
            raise _filter_error("the filter is empty", self.text)
        out, _ = self.parse_or()
        tok = self.peek()
        if tok is not None:
            raise _filter_error(f"unexpected {tok[1]!r}", self.text, tok[2])
        return out

    @staticmethod
    def wrap(part: tuple[str, int], min_prec: int) -> str:
        text, prec = part
        return f"({text})" if prec < min_prec else text

    def parse_or(self) -> tuple[str, int]:
        parts = [self.parse_and()]
        while (tok := self.peek()) is not None and tok[1] == "||":
            self.take()
            parts.append(self.parse_and())
        if len(parts) == 1:
            return parts[0]
        return " or ".join(self.wrap(p, _PREC_OR) for p in parts), _PREC_OR

    def parse_and(self) -> tuple[str, int]:
        parts = [self.parse_not()]
        while (tok := self.peek()) is not None and tok[1] == "&&":
            self.take()
            parts.append(self.parse_not())
        if len(parts) == 1:
            return parts[0]
        return " and ".join(self.wrap(p, _PREC_AND) for p in parts), _PREC_AND

    def parse_not(self) -> tuple[str, int]:
        tok = self.peek()
        if tok is not None and tok[1] == "!":
            self.take()
            inner = self.parse_not()
            # OData's `not` binds tighter than comparisons: parenthesise all but a bare operand
            return f"not {self.wrap(inner, _PREC_ATOM)}", _PREC_NOT
        return self.parse_primary()

    def parse_primary(self) -> tuple[str, int]:
        tok = self.peek()
        if tok is not None and tok[1] == "(":
            self.take()
            inner = self.parse_or()
            close = self.peek()
            if close is None:
                raise _filter_error("missing ')'", self.text, len(self.text))
            if close[1] != ")":
                raise _filter_error(f"expected ')' but found {close[1]!r}", self.text, close[2])
            self.take()
            return inner
        left = self.parse_operand()
        tok = self.peek()
        if tok is not None and tok[1] in _COMPARE:
            self.take()
            right = self.parse_operand()
            return f"{left} {_COMPARE[tok[1]]} {right}", _PREC_COMPARE
        return left, _PREC_ATOM

    def parse_operand(self) -> str:
        kind, value, pos = self.take()
        if kind == "str":
            quote, body = value[0], value[1:-1]
            body = body.replace(quote * 2, quote)
            body = re.sub(r"\\(.)", r"\1", body)
            return _odata_string(body)
        if kind == "num":
            return value
        if kind == "ident":
            low = value.lower()
            return low if low in ("true", "false", "null") else value
        raise _filter_error(f"expected a field or a value but found {value!r}", self.text, pos)


def _strip_ticks(text: str) -> str:
    out = text.strip()
    while len(out) >= 2 and out[0] == "`" and out[-1] == "`":
        out = out[1:-1].strip()
    return out


def fo_filter_to_odata(text: str) -> str:
    """Convert a finance and operations "Source filter:" to OData ``$filter`` text.

    Accepts the query syntax of the templates: comparisons ``==``, ``=``, ``!=``, ``<>``,
    ``<``, ``<=``, ``>``, ``>=``; ``&&``, ``||``, ``!``; parentheses; double- or single-quoted
    strings; numbers; field names; surrounding backticks. Returns OData with ``eq ne lt le gt
    ge and or not``, single-quoted strings and only the parentheses that precedence needs:
    ``((PartyType == "Organization"))`` → ``PartyType eq 'Organization'``. A blank input
    returns ``""``. Raises :class:`TemplateError` (code DW121) naming the position otherwise.
    """
    body = _strip_ticks(text)
    if not body:
        return ""
    return _FoParser(body).parse()


def reversed_filter_to_odata(text: str) -> str:
    """A "Reversed source filter:" is OData already: strip backticks and outer whitespace."""
    return _strip_ticks(text)


# ---------------------------------------------------------------------------------------------
# conversion to a map document

_INT_RE = re.compile(r"^-?(0|[1-9][0-9]*)$")
_FLOAT_RE = re.compile(r"^-?(0|[1-9][0-9]*)\.[0-9]+$")


def _typed(text: str) -> Any:
    """Template cell text to a YAML value: ``3`` → 3, ``1.50`` → 1.5, ``True``/``false`` → bool,
    anything else (``en-us``, ``no``, ``1/1/1900``, ``007``) stays a string."""
    if _INT_RE.match(text):
        return int(text)
    if _FLOAT_RE.match(text):
        return float(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _first_pairs(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Value-map pairs without repeated left values (first entry wins, as ValueMap matches)."""
    seen: set[str | None] = set()
    out: list[tuple[str, str]] = []
    for a, b in pairs:
        k = value_key(_typed(a))
        if k not in seen:
            seen.add(k)
            out.append((a, b))
    return out


_KEY_RANK = {"=": 0, ">": 1, "<": 1, "><": 2, ">>": 3, "<<": 3}


def guess_key(t: Template) -> tuple[TemplateRow, str]:
    """The row taken as integration key, and why (templates do not state the key).

    First choice: the first ``=`` row whose both sides are plain columns (no lookup, no
    ``none``). Failing that, the plain-column row with the best map type (``=``, then ``>``/``<``,
    then ``><``, then ``>>``/``<<``), earliest first; failing that, the first row naming a
    column on both sides (the right one through a lookup). Raises TemplateError when every row
    has ``none`` on one side.
    """
    plain = [r for r in t.rows if _is_plain(r.left) and _is_plain(r.right)]
    for r in plain:
        if r.symbol == "=":
            return r, "it is the first `=` row with plain columns on both sides"
    if plain:
        best = min(plain, key=lambda r: (_KEY_RANK[r.symbol], r.line))
        return best, (f"no `=` row has plain columns on both sides, so the first plain row of "
                      f"map type {best.symbol!r} was taken; key fields must be mapped both ways")
    for r in t.rows:
        if _column(r.left) and _column(r.right):
            return r, ("no row has plain columns on both sides, so the first row naming a "
                       "column on each side (through a lookup) was taken; replace it by the "
                       "real key columns")
    raise TemplateError(
        "no row names a field on both sides, so no integration key can be guessed",
        hint="add the key to the map by hand: key: {left: [FIELD], right: [field]}",
        file=t.source or None, code="DW120",
    )


def _column(ref: str) -> str | None:
    """The column a field reference reads (``col`` of ``col.key``), None for ``none``."""
    if ref.lower() == "none":
        return None
    return ref.split(".", 1)[0]


def _is_plain(ref: str) -> bool:
    return ref.lower() != "none" and _IDENT_RE.match(ref) is not None


def _key_columns(row: TemplateRow) -> tuple[str, str]:
    left, right = _column(row.left), _column(row.right)
    assert left is not None and right is not None  # guaranteed by guess_key
    return left, right


#: (left column, right column), casefolded -> (value pairs as published, the template's source)
KnownValues = Mapping[tuple[str, str], tuple[tuple[tuple[str, str], ...], str]]


def known_values(templates: Sequence[Template]) -> dict[tuple[str, str],
                                                        tuple[tuple[tuple[str, str], ...], str]]:
    """The value maps the templates publish, by the pair of columns they join: the first
    template (in the order given) whose row for that pair has one. Templates of one family
    often publish a field's values once (``ONHOLDSTATUS >< msdyn_onholdstatus`` has them in
    mt-101, not in CustomersV3-accounts)."""
    out: dict[tuple[str, str], tuple[tuple[tuple[str, str], ...], str]] = {}
    for t in templates:
        for row in t.rows:
            if row.values and _is_plain(row.left) and _is_plain(row.right):
                out.setdefault((row.left.casefold(), row.right.casefold()),
                               (row.values, t.source))
    return out


def borrowed_values(t: Template, known: KnownValues | None
                    ) -> list[tuple[TemplateRow, tuple[tuple[str, str], ...], str]]:
    """The transformed rows of ``t`` without a value map for which ``known`` has one: (row,
    value pairs, the template they come from)."""
    if not known:
        return []
    out = []
    for row in t.rows:
        if row.values or row.symbol not in ("><", ">>", "<<") or not (
                _is_plain(row.left) and _is_plain(row.right)):
            continue
        hit = known.get((row.left.casefold(), row.right.casefold()))
        if hit is not None and hit[1] != t.source:
            out.append((row, hit[0], hit[1]))
    return out


def template_to_map(t: Template, *, name: str | None = None,
                    known: KnownValues | None = None) -> dict[str, Any]:
    """A map document (as :func:`parse_map_document` reads it) for the template.

    ``name`` defaults to a snake_case form of the right table (``accounts``,
    ``msdyn_customergroups``). The key is :func:`guess_key`'s choice; ``master`` is ``left``.
    ``filter`` holds the converted source filter (``left``) and the reversed source filter
    (``right``) when the template has them. ``fields`` has one entry per template row, in
    order: a string ``"LEFT SYM right"``, or ``{"LEFT SYM right": {values: {...}}}`` /
    ``{...: {default: X}}`` with values and defaults typed by :func:`_typed` (``3`` → 3,
    ``en-us`` stays text, ``True`` → true). A transformed row without a value map takes the
    one ``known`` has for its two columns (see :func:`known_values`), if any. Raises
    TemplateError when a filter does not convert.
    """
    key_row, _ = guess_key(t)
    key_left, key_right = _key_columns(key_row)
    doc: dict[str, Any] = {
        "name": name if name is not None else _snake(t.right_table or t.title),
        "description": f"imported dual-write template: {t.title}" if t.title
        else "imported dual-write template",
        "left": t.left_table,
        "right": t.right_table,
        "key": {"left": [key_left], "right": [key_right]},
        "master": "left",
    }
    flt: dict[str, str] = {}
    if t.left_filter_raw:
        try:
            converted = fo_filter_to_odata(t.left_filter_raw)
        except TemplateError as exc:
            raise TemplateError(_strip_code(exc.message), hint=exc.hint,
                                file=t.source or None, line=t.left_filter_line,
                                code="DW121") from exc
        if converted:
            flt["left"] = converted
    if t.right_filter_raw:
        converted = reversed_filter_to_odata(t.right_filter_raw)
        if converted:
            flt["right"] = converted
    if flt:
        doc["filter"] = flt
    fields: list[Any] = []
    borrowed = {id(row): pairs for row, pairs, _ in borrowed_values(t, known)}
    for row in t.rows:
        options: dict[str, Any] = {}
        pairs = row.values or borrowed.get(id(row), ())
        if pairs:
            options["values"] = {_typed(a): _typed(b) for a, b in _first_pairs(pairs)}
        if row.default is not None:
            options["default"] = _typed(row.default)
        fields.append({row.text: options} if options else row.text)
    doc["fields"] = fields
    return doc


def template_comments(t: Template, known: KnownValues | None = None) -> list[str]:
    """Header comments for :func:`render_map_yaml`: the source, the guessed key, the value
    maps taken from other templates (``known``), the warnings."""
    key_row, why = guess_key(t)
    key_left, key_right = _key_columns(key_row)
    origin = t.source or "a dual-write template"
    out = [f"Imported from {origin}" + (f": {t.title}" if t.title else "") + "."]
    out.append(
        f"KEY GUESSED - CHECK IT: templates do not state the integration key. Took "
        f"{key_left} <-> {key_right} from line {key_row.line} (`{key_row.text}`): {why}. "
        "Set `key:` to the natural key before `dualwrite sync --initial`.")
    for row, _, source in borrowed_values(t, known):
        out.append(f"VALUES FROM ANOTHER TEMPLATE - CHECK THEM: `{row.text}` (line {row.line}) "
                   f"has no value map here; the one {posixpath.basename(source)} publishes for "
                   "the same columns was taken.")
    out.extend(f"warning: {w}" for w in t.warnings)
    return out


# ---------------------------------------------------------------------------------------------
# rendering

_FLOW_LIMIT = 100
_TOP_ORDER = ("name", "description", "left", "right", "key", "master", "conflict", "company",
              "restricted", "depends_on", "filter")


def _flow(value: Any) -> str:
    """One value in YAML flow style on one line (quoted where YAML needs it)."""
    multiline = isinstance(value, str) and ("\n" in value or "\r" in value)
    out = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 30,
                         allow_unicode=True, default_style='"' if multiline else None)
    out = out.strip()
    if out.endswith("\n..."):
        out = out[: -len("\n...")].rstrip()
    elif out.endswith("..."):
        out = out[:-3].rstrip()
    return out


def _block(value: Any, indent: int) -> list[str]:
    out = yaml.safe_dump(value, default_flow_style=False, sort_keys=False, width=1 << 30,
                         allow_unicode=True)
    pad = " " * indent
    return [pad + ln for ln in out.splitlines()]


def _comment_lines(text: str, indent: int = 0) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    for para in text.splitlines() or [""]:
        wrapped = textwrap.wrap(para, width=96 - indent, break_long_words=False,
                                break_on_hyphens=False) or [""]
        out.append(f"{pad}# {wrapped[0]}".rstrip())
        out.extend(f"{pad}#   {w}" for w in wrapped[1:])
    return out


def _field_warning(item: Any) -> str | None:
    """A comment for a field entry that needs a look: one ``validate`` will reject (a ``><``
    value map that is not one-to-one) or one the notation cannot read (a multi-hop lookup)."""
    text: Any
    options: Any
    if isinstance(item, str):
        text, options = item, {}
    elif isinstance(item, Mapping) and len(item) == 1:
        text, options = next(iter(item.items()))
    else:
        return None
    if not isinstance(text, str) or not isinstance(options, Mapping):
        return None
    hops = [ref for ref in text.split() if _MULTI_HOP_RE.match(ref) and not _notation_reads(ref)]
    if hops:
        return (f"WARNING: {hops[0]!r} is a lookup through several tables, which the map "
                "notation cannot read yet; kept as published in the template.")
    raw = options.get("values")
    if raw is None and isinstance(text, str):
        try:
            line = parse_field_line(text)
        except MapSyntaxError:
            return None
        if line.direction.transformed and not line.left.is_none and not line.right.is_none \
                and not line.left.is_lookup and not line.right.is_lookup:
            return (f"VALUE MAP TO FILL IN: the template gives none for `{text}`. If the two "
                    "columns hold different codes (an option set's numbers against an enum's "
                    "names), write them: `- " + text + ": {values: {LEFT_VALUE: right_value, "
                    "...}}`; `dualwrite validate` warns (DW134) while their kinds differ and "
                    "there is none.")
        return None
    if not isinstance(raw, Mapping) or not raw:
        return None
    try:
        direction = parse_field_line(text).direction
        vm = ValueMap(raw)
    except MapSyntaxError:
        return None
    if direction is Direction.BOTH_TRANSFORMED and not vm.invertible:
        clashes = "; ".join(f"{a!r} and {b!r} both map to {v!r}" for a, b, v in vm.collisions)
        return (f"WARNING: this >< value map is not one-to-one ({clashes}); `dualwrite "
                "validate` rejects it. Make it one-to-one or use >> / <<.")
    return None


def _render_field(item: Any) -> list[str]:
    lines: list[str] = []
    warning = _field_warning(item)
    if warning:
        lines.extend(_comment_lines(warning, indent=2))
    if not isinstance(item, Mapping):
        lines.append(f"  - {_flow(item)}")
        return lines
    for text, options in item.items():
        head = f"  - {_flow(text)}:"
        if options is None or (isinstance(options, Mapping) and not options):
            lines.append(f"{head} {{}}")
            continue
        one_line = f"{head} {_flow(options)}"
        if len(one_line) <= _FLOW_LIMIT or not isinstance(options, Mapping):
            lines.append(one_line)
            continue
        lines.append(head)
        for opt, value in options.items():
            entry = f"      {_flow(opt)}: {_flow(value)}"
            if len(entry) <= _FLOW_LIMIT or not isinstance(value, Mapping | list):
                lines.append(entry)
            else:
                lines.append(f"      {_flow(opt)}:")
                lines.extend(_block(value, indent=8))
    return lines


def render_map_yaml(doc: Mapping[str, Any], *, comments: Sequence[str]) -> str:
    """YAML text of a map document, with ``comments`` as a header (one ``#`` block each).

    Top-level keys come in a fixed, readable order (name, description, left, right, key,
    master, …, filter, any others, fields last); ``fields`` has one entry per line, small
    option mappings in flow style (``- LINE: {default: 3}``) and long ones in block style. A
    ``><`` field whose value map is not one-to-one gets a warning comment above it. The text
    loads back with ``load_yaml`` to a document equal to ``doc``.
    """
    out: list[str] = []
    for comment in comments:
        out.extend(_comment_lines(comment))
    if comments:
        out.append("")
    keys = [k for k in _TOP_ORDER if k in doc]
    keys += [k for k in doc if k not in keys and k != "fields"]
    if "fields" in doc:
        keys.append("fields")
    for k in keys:
        value = doc[k]
        if k == "fields" and isinstance(value, list):
            out.append("fields:")
            for item in value:
                out.extend(_render_field(item))
            continue
        line = f"{_flow(k)}: {_flow(value)}"
        if isinstance(value, Mapping | list) and value and len(line) > _FLOW_LIMIT:
            out.append(f"{_flow(k)}:")
            out.extend(_block(value, indent=2))
        else:
            out.append(line)
    return "\n".join(out) + "\n"
