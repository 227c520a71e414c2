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
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from urllib.parse import quote, unquote, unquote_plus

from dualwrite.api.errors import ODataError, bad_request
from dualwrite.api.model import EntitySetInfo
from dualwrite.errors import FilterSyntaxError
from dualwrite.model.filters import Expr, Literal, Property, parse_filter

__all__ = [
    "Format",
    "Preferences",
    "Query",
    "accepts",
    "decode_path",
    "encode_query",
    "parse_bool_option",
    "parse_count_number",
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
                       "$skiptoken", "$format"})
#: Options OData defines that the service does not implement: 501 Not Implemented.
UNSUPPORTED = frozenset({"$expand", "$search", "$apply", "$compute", "$levels", "$index",
                         "$deltatoken", "$schemaversion", "$id"})
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


def _resolve_properties(expr: Expr, es: EntitySetInfo) -> Expr:
    """The same AST with every property name replaced by its column name."""
    if isinstance(expr, Property):
        prop = es.prop(expr.name)
        if prop is None:
            raise ODataError(400, "UnknownProperty",
                             f"$filter names property {expr.name!r}, which entity set "
                             f"{es.name!r} does not have", target=expr.name)
        return Property(prop.column.name)
    changes: dict[str, object] = {}
    for f in dataclasses.fields(expr):  # type: ignore[arg-type]  # every Expr is a dataclass
        value = getattr(expr, f.name)
        if isinstance(value, Expr):
            changes[f.name] = _resolve_properties(value, es)
        elif isinstance(value, tuple) and any(isinstance(v, Expr) for v in value):
            changes[f.name] = tuple(_resolve_properties(v, es) if isinstance(v, Expr) else v
                                    for v in value)
    return dataclasses.replace(expr, **changes) if changes else expr  # type: ignore[type-var]


def parse_where(text: str, es: EntitySetInfo, aliases: Mapping[str, str]) -> Expr:
    """``$filter`` text -> AST over real column names. Parameter aliases (``@p``) are
    replaced by their values first."""
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
    return _resolve_properties(expr, es)


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


def parse_prefer(header: str | None) -> Preferences:
    """Parse ``Prefer``. Preferences are hints: an item that does not parse is ignored."""
    if not header:
        return Preferences()
    return_: str | None = None
    maxpagesize: int | None = None
    continue_on_error: bool | None = None
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
    return Preferences(return_=return_, maxpagesize=maxpagesize,
                       continue_on_error=continue_on_error)


def decode_path(path: str) -> str:
    """Percent-decode a URL path (``+`` stays a plus in paths)."""
    return unquote(path)
