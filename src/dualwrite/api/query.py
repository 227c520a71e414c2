"""System query options, preferences and media types of one request.

Only parsing and checking happens here: ``$filter`` becomes the :mod:`dualwrite.model.filters`
AST with property names replaced by real column names (so the backend, and its SQL compiler,
get an AST that names only real columns, with every literal a typed value - nothing from the
URL is ever pasted into SQL); ``$select``/``$orderby`` become property lists; numbers are
checked. Every failure is a 400 (or 501 for an option the service does not implement, 406 for
a format it cannot produce).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from urllib.parse import quote, unquote, unquote_plus

from dualwrite.api.errors import ODataError, bad_request
from dualwrite.api.model import EntitySetInfo, NavigationInfo, edm_type
from dualwrite.errors import FilterSyntaxError
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
    is_condition,
    parse_filter,
    to_odata,
)

__all__ = [
    "Format",
    "Preferences",
    "Query",
    "accepts",
    "decode_path",
    "encode_query",
    "parse_bool_option",
    "parse_count_number",
    "parse_expand",
    "parse_orderby",
    "parse_prefer",
    "parse_query",
    "parse_select",
    "parse_where",
    "response_format",
    "substitute_outside_quotes",
]

#: System query options the service implements.
SUPPORTED = frozenset({"$filter", "$select", "$orderby", "$top", "$skip", "$count",
                       "$skiptoken", "$format", "$expand", "$deltatoken"})
#: Options OData defines that the service does not implement: 501 Not Implemented.
UNSUPPORTED = frozenset({"$search", "$apply", "$compute", "$levels", "$index",
                         "$schemaversion", "$id"})
#: Above this a $top/$skip/$skiptoken is refused: no table is that large, and a database
#: driver would overflow on it.
MAX_NUMBER = 2**62
#: Longest $filter accepted, in characters; a longer one is almost certainly not written by
#: hand, and the parser is recursive.
MAX_FILTER_LENGTH = 16_384

_QUERY_SAFE = "$'(),:@!*;/?=-._~"


@dataclass
class Query:
    """The query string of a request: system options (lower-case names, ``$`` included),
    parameter aliases (``@name``) and the decoded pairs in their original order."""

    options: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    pairs: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        return self.options.get(name)

    def only(self, allowed: set[str] | frozenset[str], where: str) -> None:
        """Refuse (400) any system option outside ``allowed`` for this kind of resource."""
        for name in self.options:
            if name not in allowed:
                raise bad_request(f"the system query option {name} does not apply to {where}",
                                  target=name, code="InvalidQueryOption")


def parse_query(raw: str) -> Query:
    """Parse a raw (percent-encoded) query string. ``+`` is read as a space, as HTML forms
    and most HTTP clients encode it; a literal plus (a time zone offset) must be ``%2B``."""
    q = Query()
    for part in raw.split("&"):
        if not part:
            continue
        rawname, _, rawvalue = part.partition("=")
        name, value = unquote_plus(rawname), unquote_plus(rawvalue)
        q.pairs.append((name, value))
        if name.startswith("$"):
            key = name.lower()
            if key in UNSUPPORTED:
                raise ODataError(501, "NotImplemented",
                                 f"the system query option {name} is not supported by this "
                                 "service", target=name)
            if key not in SUPPORTED:
                raise bad_request(f"unknown system query option {name!r}; supported: "
                                  + ", ".join(sorted(SUPPORTED)), target=name,
                                  code="InvalidQueryOption")
            if key in q.options:
                raise bad_request(f"the system query option {name} is given twice",
                                  target=name, code="InvalidQueryOption")
            q.options[key] = value
        elif name.startswith("@"):
            q.aliases[name] = value
        # anything else is a custom query option, which this service ignores
    return q


def encode_query(pairs: list[tuple[str, str]]) -> str:
    """A query string from decoded pairs (for next links and rewritten batch URLs)."""
    return "&".join(quote(n, safe="$@") + "=" + quote(v, safe=_QUERY_SAFE) for n, v in pairs)


def substitute_outside_quotes(text: str, pattern: re.Pattern[str],
                              replace: Callable[[re.Match[str]], str]) -> str:
    """Replace matches of ``pattern`` in ``text`` except inside single-quoted literals."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "'":
            j = i + 1
            while j < len(text):
                if text[j] == "'":
                    if j + 1 < len(text) and text[j + 1] == "'":
                        j += 2
                        continue
                    break
                j += 1
            out.append(text[i:j + 1])
            i = j + 1
            continue
        m = pattern.match(text, i)
        if m and m.end() > i:
            out.append(replace(m))
            i = m.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


_ALIAS = re.compile(r"@[A-Za-z_]\w*")
_IDENTIFIER = re.compile(r"[^\W\d]\w*")


def _map_properties(expr: Expr, fn: Callable[[Property], Expr]) -> Expr:
    """The same AST with every property node replaced by ``fn(node)``."""
    if isinstance(expr, Property):
        return fn(expr)
    changes: dict[str, object] = {}
    for f in dataclasses.fields(expr):  # type: ignore[arg-type]  # every Expr is a dataclass
        value = getattr(expr, f.name)
        if isinstance(value, Expr):
            changes[f.name] = _map_properties(value, fn)
        elif isinstance(value, tuple) and any(isinstance(v, Expr) for v in value):
            changes[f.name] = tuple(_map_properties(v, fn) if isinstance(v, Expr) else v
                                    for v in value)
    return dataclasses.replace(expr, **changes) if changes else expr  # type: ignore[type-var]


def resolve_properties(expr: Expr, es: EntitySetInfo) -> Expr:
    """The same AST with every property name replaced by its column name."""
    def column(node: Property) -> Property:
        prop = es.prop(node.name)
        if prop is None:
            what = "navigation property" if es.navigation(node.name) else "property"
            raise ODataError(400, "UnknownProperty",
                             f"$filter names {what} {node.name!r}, which entity set "
                             f"{es.name!r} does not have as a property", target=node.name,
                             hint="filter through a navigation property with a path: "
                             "nav/property eq value" if what != "property" else "")
        return Property(prop.column.name)
    return _map_properties(expr, column)


#: ``nav/property`` in $filter text (outside string literals)
_NAV_PATH = re.compile(r"([^\W\d]\w*)/([^\W\d]\w*)")
#: Given a navigation property and a condition over its target's properties (as named in the
#: URL), an equivalent condition over this entity set's properties.
NavigationJoin = Callable[[NavigationInfo, Expr], Expr]


def _through_navigations(expr: Expr, es: EntitySetInfo,
                         paths: Mapping[str, tuple[NavigationInfo, str]],
                         join: NavigationJoin) -> Expr:
    """Replace every condition on ``nav/property`` paths (placeholders in ``paths``) by
    ``join``'s condition on this entity set."""
    used = {paths[p][0].name for p in expr.properties() if p in paths}
    if not used:
        return expr
    if isinstance(expr, And | Or):
        return type(expr)(_through_navigations(expr.left, es, paths, join),
                          _through_navigations(expr.right, es, paths, join))
    if isinstance(expr, Not):
        return Not(_through_navigations(expr.operand, es, paths, join))
    if is_condition(expr) and len(used) == 1 and all(p in paths for p in expr.properties()):
        nav = paths[next(p for p in expr.properties() if p in paths)][0]
        return join(nav, _map_properties(expr, lambda node: Property(paths[node.name][1])))
    raise bad_request(f"$filter condition {to_odata(expr)!r} mixes properties of "
                      f"{', '.join(sorted(used))} with others: a condition through a "
                      "navigation property may use only that property's entity",
                      target="$filter", code="InvalidFilter",
                      hint="split it into conditions joined by and/or")


def parse_where(text: str, es: EntitySetInfo, aliases: Mapping[str, str],
                join: NavigationJoin | None = None) -> Expr:
    """``$filter`` text -> AST over real column names. Parameter aliases (``@p``) are
    replaced by their values first. A path ``nav/property`` through a navigation property
    is allowed when ``join`` is given: each condition on such paths becomes the condition
    ``join`` makes of it."""
    if aliases:
        def alias(m: re.Match[str]) -> str:
            if m.group() not in aliases:
                raise bad_request(f"$filter uses the parameter alias {m.group()}, which the "
                                  "query string does not define", target="$filter",
                                  code="InvalidFilter")
            return aliases[m.group()]
        text = substitute_outside_quotes(text, _ALIAS, alias)
    if len(text) > MAX_FILTER_LENGTH:
        raise bad_request(f"$filter is longer than {MAX_FILTER_LENGTH} characters",
                          target="$filter", code="InvalidFilter")
    paths: dict[str, tuple[NavigationInfo, str]] = {}

    def path(m: re.Match[str]) -> str:
        nav = es.navigation(m.group(1))
        if nav is None or join is None:
            raise bad_request(f"$filter path {m.group()!r}: entity set {es.name!r} has no "
                              f"navigation property {m.group(1)!r}", target="$filter",
                              code="InvalidFilter", hint="navigation properties: " + (
                                  ", ".join(es.navigations) or "none"))
        placeholder = f"__path{len(paths)}__"
        paths[placeholder] = (nav, m.group(2))
        return placeholder

    if "/" in text:
        text = substitute_outside_quotes(text, _NAV_PATH, path)
    try:
        expr = parse_filter(text)
    except FilterSyntaxError as exc:
        raise ODataError(400, "InvalidFilter", exc.detail, target="$filter",
                         hint=exc.hint) from None
    except RecursionError:
        raise bad_request("$filter nests too deeply", target="$filter",
                          code="InvalidFilter") from None
    for node in expr.walk():
        if isinstance(node, Literal) and not _in_range(node.value):
            raise bad_request(f"the number {node.value} in $filter is out of range",
                              target="$filter", code="InvalidFilter")
    if paths:
        assert join is not None
        expr = _through_navigations(expr, es, paths, join)
    resolved = resolve_properties(expr, es)
    check_types(expr, es)
    return resolved


# --------------------------------------------------------------------------------------------
# Types of $filter expressions

#: Edm types that promote to one another in comparisons and arithmetic (OData's binary
#: numeric promotion); no other type promotes: a string is never a date or a number.
_NUMERIC = frozenset({"Edm.Byte", "Edm.SByte", "Edm.Int16", "Edm.Int32", "Edm.Int64",
                      "Edm.Decimal", "Edm.Single", "Edm.Double"})
_BOOLEAN = "Edm.Boolean"
_STRING = "Edm.String"
_INT = "Edm.Int32"
_NULL = "null"

#: argument types and result type of each function
_SIGNATURES: dict[str, tuple[tuple[frozenset[str], ...], str]] = {
    "contains": ((frozenset({_STRING}), frozenset({_STRING})), _BOOLEAN),
    "startswith": ((frozenset({_STRING}), frozenset({_STRING})), _BOOLEAN),
    "endswith": ((frozenset({_STRING}), frozenset({_STRING})), _BOOLEAN),
    "tolower": ((frozenset({_STRING}),), _STRING),
    "toupper": ((frozenset({_STRING}),), _STRING),
    "trim": ((frozenset({_STRING}),), _STRING),
    "length": ((frozenset({_STRING}),), _INT),
    "concat": ((frozenset({_STRING}), frozenset({_STRING})), _STRING),
    "indexof": ((frozenset({_STRING}), frozenset({_STRING})), _INT),
    "substring": ((frozenset({_STRING}), _NUMERIC, _NUMERIC), _STRING),
    "year": ((frozenset({"Edm.Date", "Edm.DateTimeOffset"}),), _INT),
    "month": ((frozenset({"Edm.Date", "Edm.DateTimeOffset"}),), _INT),
    "day": ((frozenset({"Edm.Date", "Edm.DateTimeOffset"}),), _INT),
    "hour": ((frozenset({"Edm.DateTimeOffset", "Edm.TimeOfDay"}),), _INT),
    "minute": ((frozenset({"Edm.DateTimeOffset", "Edm.TimeOfDay"}),), _INT),
    "second": ((frozenset({"Edm.DateTimeOffset", "Edm.TimeOfDay"}),), _INT),
}


def _literal_type(value: object) -> str:
    if value is None:
        return _NULL
    if isinstance(value, bool):
        return _BOOLEAN
    if isinstance(value, int):
        return "Edm.Int64"
    if isinstance(value, Decimal):
        return "Edm.Decimal"
    if isinstance(value, float):
        return "Edm.Double"
    if isinstance(value, str):
        return _STRING
    if isinstance(value, dt.datetime):
        return "Edm.DateTimeOffset"
    if isinstance(value, dt.date):
        return "Edm.Date"
    if isinstance(value, dt.time):
        return "Edm.TimeOfDay"
    if isinstance(value, uuid.UUID):
        return "Edm.Guid"
    return type(value).__name__  # pragma: no cover - the parser makes only the types above


def _compatible(a: str, b: str) -> bool:
    return a == b or _NULL in (a, b) or (a in _NUMERIC and b in _NUMERIC)


def _type_error(message: str, hint: str = "") -> ODataError:
    return ODataError(400, "InvalidFilter", message, target="$filter",
                      hint=hint or "write each literal in its property's type: 'text' for "
                      "Edm.String, 12.5 for numbers, true/false for Edm.Boolean, 2024-01-31 "
                      "for Edm.Date, 2024-01-31T10:00:00Z for Edm.DateTimeOffset")


def _described(expr: Expr, type_: str) -> str:
    what = "property" if isinstance(expr, Property) else "literal" \
        if isinstance(expr, Literal) else "expression"
    return f"{what} {to_odata(expr)} ({type_})"


def check_types(expr: Expr, es: EntitySetInfo) -> None:
    """Refuse (400, target ``$filter``) a filter whose operands do not fit together: every
    literal is checked against the Edm type of what it is compared with or passed to, with
    OData's numeric promotion and nothing else (a string is never a date, a number or a
    boolean). ``expr`` names properties as the client wrote them; the filter must be a
    condition (an Edm.Boolean)."""
    result = _type_of(expr, es)
    if result not in (_BOOLEAN, _NULL):
        raise _type_error(f"$filter must be a condition, but {_described(expr, result)} is "
                          "not a boolean", hint="compare it with something, e.g. 'x eq 1'")


def _type_of(expr: Expr, es: EntitySetInfo) -> str:
    """The Edm type of ``expr`` ("null" for the null literal), checking its operands."""
    if isinstance(expr, Literal):
        return _literal_type(expr.value)
    if isinstance(expr, Property):
        prop = es.prop(expr.name)
        assert prop is not None  # _resolve_properties has refused unknown names
        return edm_type(prop.column)
    if isinstance(expr, Compare):
        left, right = _type_of(expr.left, es), _type_of(expr.right, es)
        if not _compatible(left, right):
            raise _type_error(f"$filter compares {_described(expr.left, left)} with "
                              f"{_described(expr.right, right)}: the types do not match")
        if left.startswith("Collection(") or right.startswith("Collection("):
            raise _type_error(f"$filter cannot compare the collection {to_odata(expr.left)}")
        return _BOOLEAN
    if isinstance(expr, In):
        left = _type_of(expr.expr, es)
        for value in expr.values:
            right = _type_of(value, es)
            if not _compatible(left, right):
                raise _type_error(f"$filter looks for {_described(value, right)} in "
                                  f"{_described(expr.expr, left)}: the types do not match")
        return _BOOLEAN
    if isinstance(expr, And | Or | Not):
        for operand in expr.children():
            got = _type_of(operand, es)
            if got not in (_BOOLEAN, _NULL):
                word = type(expr).__name__.lower()
                raise _type_error(f"'{word}' needs conditions, but "
                                  f"{_described(operand, got)} is not a boolean")
        return _BOOLEAN
    if isinstance(expr, Arith | Neg):
        types = [_type_of(operand, es) for operand in expr.children()]
        for operand, got in zip(expr.children(), types, strict=True):
            if got not in _NUMERIC and got != _NULL:
                raise _type_error(f"arithmetic needs numbers, but {_described(operand, got)} "
                                  "is not one")
        if "Edm.Double" in types or "Edm.Single" in types:
            return "Edm.Double"
        return "Edm.Decimal" if "Edm.Decimal" in types else "Edm.Int64"
    if isinstance(expr, Call):
        params, result = _SIGNATURES[expr.name]
        for n, (arg, allowed) in enumerate(zip(expr.args, params, strict=False), start=1):
            got = _type_of(arg, es)
            if got != _NULL and got not in allowed:
                names = " or ".join(sorted(allowed)) if allowed is not _NUMERIC else "a number"
                raise _type_error(f"argument {n} of {expr.name}() must be {names}, but "
                                  f"{_described(arg, got)} is not")
        return result
    raise _type_error(f"$filter uses {to_odata(expr)!r}, which this service cannot type")


def _in_range(value: object) -> bool:
    """Whether a filter literal is a number a database can hold (Int64, or a decimal of sane
    magnitude): a larger one would overflow the database or Python's decimal context."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, Decimal):
        return not value.is_finite() or abs(value.adjusted()) <= 1000
    return True


def _split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",")]


def parse_select(text: str, es: EntitySetInfo) -> list[str] | None:
    """``$select`` -> property names in the entity type's order; None means all."""
    names: set[str] = set()
    for item in _split_list(text):
        if item == "*":
            return None
        if not item:
            raise bad_request("$select has an empty item", target="$select",
                              code="InvalidSelect")
        prop = es.prop(item)
        if prop is None:
            what = "a property path" if "/" in item or "(" in item else "property"
            raise ODataError(400, "UnknownProperty",
                             f"$select names {what} {item!r}, which entity set {es.name!r} "
                             "does not have", target=item)
        names.add(prop.name)
    return [n for n in es.properties if n in names]


_ORDER_ITEM = re.compile(r"(\S+?)(?:\s+(asc|desc))?", re.IGNORECASE)


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside parentheses and string literals."""
    parts: list[str] = []
    depth, start, in_quote = 0, 0, False
    for i, c in enumerate(text):
        if c == "'":
            in_quote = not in_quote
        elif not in_quote and c == "(":
            depth += 1
        elif not in_quote and c == ")":
            depth -= 1
        elif not in_quote and c == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


_EXPAND_ITEM = re.compile(r"([^\W\d]\w*|\*)(?:\((.*)\))?", re.DOTALL)


def parse_expand(text: str, es: EntitySetInfo,
                 targets: Mapping[str, EntitySetInfo]) -> list[tuple[NavigationInfo,
                                                                      list[str] | None]]:
    """``$expand`` -> (navigation property, ``$select`` of its entity or None for all),
    one level deep: the only option inside parentheses is ``$select``. ``targets`` are the
    entity sets by name. ``*`` expands every navigation property."""
    out: dict[str, tuple[NavigationInfo, list[str] | None]] = {}
    for item in _split_top_level(text):
        m = _EXPAND_ITEM.fullmatch(item)
        if not item or not m:
            raise bad_request(f"$expand item {item!r} is not 'navigation' or "
                              "'navigation($select=...)'", target="$expand",
                              code="InvalidExpand")
        if m.group(1) == "*":
            navs = list(es.navigations.values())
        else:
            nav = es.navigation(m.group(1))
            if nav is None:
                raise ODataError(400, "UnknownProperty",
                                 f"$expand names {m.group(1)!r}, which is no navigation "
                                 f"property of {es.name!r}; navigation properties: "
                                 + (", ".join(es.navigations) or "none"), target=m.group(1))
            navs = [nav]
        select: list[str] | None = None
        if m.group(2) is not None and m.group(2).strip():
            for option in m.group(2).split(";"):
                name, eq, value = option.partition("=")
                if name.strip().lower() != "$select" or not eq:
                    raise ODataError(501, "NotImplemented",
                                     f"$expand option {name.strip()!r} is not supported: "
                                     "inside $expand only $select is (one level deep)",
                                     target="$expand")
                select = parse_select(value, targets[navs[0].target])
        for nav in navs:
            out[nav.name] = (nav, select)
    return list(out.values())


def parse_orderby(text: str, es: EntitySetInfo) -> list[tuple[str, bool]]:
    """``$orderby`` -> (column, descending) pairs."""
    out: list[tuple[str, bool]] = []
    for item in _split_list(text):
        m = _ORDER_ITEM.fullmatch(item)
        if not m or not _IDENTIFIER.fullmatch(m.group(1)):
            raise bad_request(f"$orderby item {item!r} is not 'property [asc|desc]'; only "
                              "properties can be ordered by", target="$orderby",
                              code="InvalidOrderBy")
        prop = es.prop(m.group(1))
        if prop is None:
            raise ODataError(400, "UnknownProperty",
                             f"$orderby names property {m.group(1)!r}, which entity set "
                             f"{es.name!r} does not have", target=m.group(1))
        out.append((prop.column.name, (m.group(2) or "asc").lower() == "desc"))
    return out


def parse_count_number(name: str, text: str) -> int:
    """A non-negative integer option ($top, $skip, $skiptoken)."""
    if not re.fullmatch(r"\d{1,19}", text) or int(text) > MAX_NUMBER:
        raise bad_request(f"{name} must be a non-negative whole number, not {text!r}",
                          target=name, code="InvalidQueryOption")
    return int(text)


def parse_bool_option(name: str, text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise bad_request(f"{name} must be true or false, not {text!r}", target=name,
                          code="InvalidQueryOption")
    return text.lower() == "true"


# --------------------------------------------------------------------------------------------
# Media types and preferences


def _media_params(text: str) -> tuple[str, dict[str, str]]:
    """('type/subtype', {param: value}) of one media type; names lower-case."""
    head, *params = text.split(";")
    out: dict[str, str] = {}
    for p in params:
        name, _, value = p.partition("=")
        out[name.strip().lower()] = value.strip().strip('"')
    return head.strip().lower(), out


def accepts(accept: str | None, media: str) -> bool:
    """Whether an Accept header admits ``media`` (no header admits everything)."""
    if accept is None or not accept.strip():
        return True
    main, _, sub = media.partition("/")
    for item in accept.split(","):
        rng, params = _media_params(item)
        try:
            if Decimal(params.get("q", "1")) <= 0:
                continue
        except InvalidOperation:
            continue
        rmain, _, rsub = rng.partition("/")
        if rng in ("*/*", "*") or (rmain == main and rsub in ("*", sub)):
            return True
    return False


@dataclass(frozen=True)
class Format:
    """How JSON responses are written: ``metadata`` is minimal, full or none."""

    metadata: str = "minimal"
    ieee754: bool = False

    @property
    def content_type(self) -> str:
        return (f"application/json;odata.metadata={self.metadata};odata.streaming=true;"
                f"IEEE754Compatible={'true' if self.ieee754 else 'false'}")


_FORMAT_ALIASES = {"json": "application/json", "xml": "application/xml",
                   "atom": "application/atom+xml"}


def response_format(query: Query, accept: str | None) -> Format:
    """The JSON format asked for by ``$format`` (first) or ``Accept``; 406 when the request
    admits no JSON at all."""
    fmt = query.get("$format")
    if fmt is not None:
        media, params = _media_params(_FORMAT_ALIASES.get(fmt.lower(), fmt))
        if media != "application/json":
            raise ODataError(406, "NotAcceptable",
                             f"$format={fmt} is not available: this resource is served as "
                             "application/json", target="$format")
    elif accepts(accept, "application/json"):
        params = {}
        for item in (accept or "").split(","):
            media, p = _media_params(item)
            if media == "application/json":
                params = p
                break
    else:
        raise ODataError(406, "NotAcceptable",
                         f"cannot answer with any media type in Accept: {accept}; this "
                         "resource is served as application/json")
    metadata = params.get("odata.metadata", params.get("metadata", "minimal")).lower()
    if metadata not in ("minimal", "full", "none"):
        raise bad_request(f"odata.metadata={metadata} is not one of minimal, full, none",
                          code="InvalidFormat")
    ieee = params.get("ieee754compatible", "false").lower() == "true"
    return Format(metadata=metadata, ieee754=ieee)


@dataclass(frozen=True)
class Preferences:
    """The ``Prefer`` header items this service acts on."""

    return_: str | None = None
    maxpagesize: int | None = None
    continue_on_error: bool | None = None
    track_changes: bool = False


def parse_prefer(header: str | None) -> Preferences:
    """Parse ``Prefer``. Preferences are hints: an item that does not parse is ignored."""
    if not header:
        return Preferences()
    return_: str | None = None
    maxpagesize: int | None = None
    continue_on_error: bool | None = None
    track_changes = False
    for item in header.split(","):
        name, _, value = item.split(";")[0].partition("=")
        name, value = name.strip().lower(), value.strip().strip('"').lower()
        if name == "return" and value in ("minimal", "representation"):
            return_ = value
        elif name in ("odata.maxpagesize", "maxpagesize") and value.isdigit() and \
                0 < int(value) <= MAX_NUMBER:
            maxpagesize = int(value)
        elif name in ("odata.continue-on-error", "continue-on-error"):
            continue_on_error = value in ("", "true")
        elif name in ("odata.track-changes", "track-changes"):
            track_changes = True
    return Preferences(return_=return_, maxpagesize=maxpagesize,
                       continue_on_error=continue_on_error, track_changes=track_changes)


def decode_path(path: str) -> str:
    """Percent-decode a URL path (``+`` stays a plus in paths)."""
    return unquote(path)
