"""Table maps: the declarative pairing of a left table with a right table. Pure.

``parse_map_document(data, file=...)`` turns one YAML map document (as loaded by
:func:`dualwrite.model.yamlio.load_yaml`, which keeps line numbers) into a :class:`TableMap`.
Syntax is checked here; whether the tables and columns exist is checked by
:mod:`dualwrite.model.validate` against the real schemas.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from dualwrite.errors import MapSyntaxError
from dualwrite.model.notation import Direction, FieldLine, FieldRef, parse_field_line
from dualwrite.model.values import ValueMap
from dualwrite.model.yamlio import line_of


class Side(Enum):
    LEFT = "left"
    RIGHT = "right"

    @property
    def other(self) -> Side:
        return Side.RIGHT if self is Side.LEFT else Side.LEFT


class ConflictPolicy(Enum):
    LEFT_WINS = "left-wins"
    RIGHT_WINS = "right-wins"
    NEWEST_WINS = "newest-wins"
    MANUAL = "manual"


@dataclass(frozen=True)
class FieldMap:
    """One field line with its options."""

    left: FieldRef
    direction: Direction
    right: FieldRef
    text: str
    values: ValueMap | None = None
    default: Any = None
    has_default: bool = False
    line: int | None = None
    lookup_tables: tuple[tuple[Side, str], ...] = ()
    #: ``specials:`` of the field line: "null" (write special values the target cannot hold
    #: as NULL), "refuse" (refuse their rows), or None (the map's choice)
    specials: str | None = None
    #: ``convert:`` of the field line: "utc" (a time with an offset to a column without)
    convert: str | None = None

    def ref(self, side: Side) -> FieldRef:
        return self.left if side is Side.LEFT else self.right

    def flows_to(self, side: Side) -> bool:
        return self.direction.to_right if side is Side.RIGHT else self.direction.to_left

    def lookup_table(self, side: Side) -> str | None:
        """The related table named in the map (``lookup: {right: table}``), if any."""
        for s, t in self.lookup_tables:
            if s is side:
                return t
        return None


@dataclass(frozen=True)
class Pair:
    """Something that exists on both sides (key fields, the company column)."""

    left: tuple[str, ...]
    right: tuple[str, ...]

    def of(self, side: Side) -> tuple[str, ...]:
        return self.left if side is Side.LEFT else self.right


@dataclass
class TableMap:
    name: str
    left: str
    right: str
    key: Pair
    fields: list[FieldMap]
    master: Side = Side.LEFT
    filter_left: str | None = None
    filter_right: str | None = None
    company: Pair | None = None
    depends_on: list[str] = field(default_factory=list)
    restricted: bool = False
    conflict: ConflictPolicy = ConflictPolicy.LEFT_WINS
    #: ``specials:`` of the map, for field lines that do not say: "null" or "refuse"
    specials: str = "refuse"
    #: ``modified:``: per side, the modified-timestamp property whose polling reads the
    #: changes of an OData environment (over the environment's own ``modified:``)
    modified_left: str | None = None
    modified_right: str | None = None
    file: str | None = None
    line: int | None = None
    lines: dict[str, int] = field(default_factory=dict)
    #: the text the map was read from (its version is a digest of it)
    source: str | None = None

    @property
    def version(self) -> str:
        """A short digest of the map's text: two texts that differ are two versions."""
        import hashlib

        return hashlib.sha256((self.source or "").encode()).hexdigest()[:12]

    def table(self, side: Side) -> str:
        return self.left if side is Side.LEFT else self.right

    def filter(self, side: Side) -> str | None:
        return self.filter_left if side is Side.LEFT else self.filter_right

    def modified(self, side: Side) -> str | None:
        return self.modified_left if side is Side.LEFT else self.modified_right

    def key_columns(self, side: Side) -> tuple[str, ...]:
        """The full key on one side: the company column first when the map is striped."""
        company = self.company.of(side) if self.company else ()
        return company + self.key.of(side)

    def line_of(self, what: str) -> int | None:
        return self.lines.get(what, self.line)


_TOP_KEYS = {"name", "left", "right", "key", "master", "filter", "company", "depends_on",
             "restricted", "fields", "conflict", "description", "specials", "modified"}
_FIELD_OPTIONS = {"values", "default", "lookup", "specials", "convert"}
_OPTIONS_HINT = "allowed options: values, default, lookup, specials, convert"


def _specials(data: Mapping[str, Any], where: str, file: str | None, line: int | None
              ) -> str | None:
    """The ``specials:`` option: null (YAML's null or the word) or refuse."""
    if "specials" not in data:
        return None
    raw = data["specials"]
    value = "null" if raw is None else str(raw).strip().lower()
    if value not in ("null", "refuse"):
        raise _err(f"`specials` of {where} is {raw!r}: it must be `null` or `refuse`",
                   "specials: null writes NaN, ±Infinity or ±infinity as NULL where the "
                   "target cannot hold them; refuse (the default) sends their rows to the "
                   "inbox", file, line)
    return value


def _err(msg: str, hint: str, file: str | None, line: int | None) -> MapSyntaxError:
    return MapSyntaxError(msg, hint=hint, file=file, line=line, code="DW001")


def _pair(data: Any, what: str, file: str | None, line: int | None) -> Pair:
    if not isinstance(data, Mapping) or set(data) != {"left", "right"}:
        raise _err(f"`{what}` must have exactly `left` and `right`",
                   f"write {what}: {{left: [COLUMN], right: [column]}}", file, line)
    def cols(v: Any) -> tuple[str, ...]:
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not items or not all(
                isinstance(c, str) and c for c in items):
            raise _err(f"`{what}` sides must be a column name or a list of column names",
                       f"write {what}: {{left: [COLUMN], right: [column]}}", file, line)
        return tuple(items)
    left, right = cols(data["left"]), cols(data["right"])
    if len(left) != len(right):
        raise _err(f"`{what}` has {len(left)} column(s) on the left and {len(right)} on the right",
                   "pair the columns one to one, in the same order", file, line)
    return Pair(left, right)


def _field(item: Any, file: str | None, line: int | None) -> FieldMap:
    options: Mapping[str, Any] = {}
    if isinstance(item, Mapping):
        if len(item) != 1:
            raise _err("a field entry with options must be `LINE: {options}`",
                       "e.g. `- ONHOLDSTATUS >< msdyn_onholdstatus: {values: {No: 0}}`",
                       file, line)
        text, options = next(iter(item.items()))
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise _err(f"options of field {text!r} must be a mapping", _OPTIONS_HINT, file,
                       line)
    else:
        text = item
    if not isinstance(text, str):
        raise _err(f"field entry {item!r} is not a field line",
                   "write `LEFTFIELD SYMBOL rightfield`", file, line)
    unknown = set(options) - _FIELD_OPTIONS
    if unknown:
        raise _err(f"field {text!r} has unknown option(s) {sorted(unknown)}", _OPTIONS_HINT,
                   file, line)
    try:
        parsed: FieldLine = parse_field_line(text)
    except MapSyntaxError as exc:
        raise _err(exc.detail, exc.hint, file, line) from exc
    values = None
    if "values" in options:
        raw = options["values"]
        if not isinstance(raw, Mapping):
            raise _err(f"`values` of field {text!r} must map left values to right values",
                       "e.g. values: {No: 0, Yes: 1}", file, line)
        try:
            values = ValueMap(raw)
        except MapSyntaxError as exc:
            raise _err(f"field {text!r}: {exc.detail}", exc.hint, file, line) from exc
        if not parsed.direction.transformed:
            raise _err(
                f"field {text!r} has a value map but uses {parsed.direction.value!r}",
                "use `><` (both ways), `>>` or `<<` for a transformed field", file, line)
    lookup_tables: list[tuple[Side, str]] = []
    if "lookup" in options:
        raw = options["lookup"]
        if not isinstance(raw, Mapping) or not set(raw) <= {"left", "right"}:
            raise _err(f"`lookup` of field {text!r} must be {{left|right: TABLE}}",
                       "name the related table when the column has no foreign key",
                       file, line)
        lookup_tables = [(Side(k), str(v)) for k, v in raw.items()]
    has_default = "default" in options
    if (parsed.left.is_none or parsed.right.is_none) and not has_default:
        raise _err(f"field {text!r} maps `none` but gives no default",
                   "add the constant: `- none >> customertypecode: {default: 3}`", file, line)
    convert = options.get("convert")
    if convert is not None and str(convert).strip().lower() != "utc":
        raise _err(f"`convert` of field {text!r} is {convert!r}: the one conversion to ask "
                   "for is `utc`", "convert: utc stores a time with an offset (timetz) in UTC "
                   "in a column without one", file, line)
    return FieldMap(parsed.left, parsed.direction, parsed.right, parsed.text, values,
                    options.get("default"), has_default, line, tuple(lookup_tables),
                    _specials(options, f"field {text!r}", file, line),
                    "utc" if convert is not None else None)


def parse_map_document(data: Any, *, file: str | None = None) -> TableMap:
    """Check a map document's structure and field syntax; return the TableMap.

    Raises MapSyntaxError (code DW001) with file and line: the first problem, with every
    problem found in ``problems`` (see :func:`parse_map_problems`).
    """
    m, problems = parse_map_problems(data, file=file)
    if problems:
        first = problems[0]
        first.problems = problems
        raise first
    assert m is not None
    return m


def parse_map_problems(data: Any, *, file: str | None = None
                       ) -> tuple[TableMap | None, list[MapSyntaxError]]:
    """Check a map document and report every problem, not just the first: unknown keys,
    each field line that does not parse, options, key, filter... Returns the map (None when
    there are problems) and the problems, each with file and line."""
    problems: list[MapSyntaxError] = []

    def attempt(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except MapSyntaxError as exc:
            problems.append(exc)
            return None

    top_line = line_of(data)
    if not isinstance(data, Mapping):
        return None, [_err("a map file must be a YAML mapping", "start with `name: ...`", file,
                           top_line)]
    unknown = set(data) - _TOP_KEYS
    for key in sorted(unknown, key=str):
        problems.append(_err(f"unknown key {key!r}",
                             f"allowed keys: {', '.join(sorted(_TOP_KEYS))}", file,
                             line_of(data, key)))
    missing = [k for k in ("name", "left", "right", "key", "fields") if k not in data]
    if missing:
        problems.append(_err(f"missing {', '.join(f'`{k}`' for k in missing)}",
                             "a map needs name, left, right, key and fields", file, top_line))
    name = data.get("name")
    if "name" in data and (not isinstance(name, str) or
                           not name.replace("_", "").replace("-", "").isalnum()):
        problems.append(_err(f"map name {name!r} must be letters, digits, `_` or `-`",
                             "e.g. name: customers", file, line_of(data, "name")))
    for side in ("left", "right"):
        if side in data and (not isinstance(data[side], str) or not data[side]):
            problems.append(_err(f"`{side}` must be a table name",
                                 f"e.g. {side}: CustomersV3 (or schema.table)", file,
                                 line_of(data, side)))
    key = attempt(_pair, data["key"], "key", file, line_of(data, "key")) \
        if "key" in data else None
    company = attempt(_pair, data["company"], "company", file, line_of(data, "company")) \
        if data.get("company") is not None else None
    if company and len(company.left) != 1:
        problems.append(_err("`company` names one column per side",
                             "e.g. company: {left: dataAreaId, right: company}", file,
                             line_of(data, "company")))
    master = data.get("master", "left")
    if master not in ("left", "right"):
        problems.append(_err(f"master {master!r} must be `left` or `right`",
                             "name the side whose values win in initial sync", file,
                             line_of(data, "master")))
        master = "left"
    conflict = data.get("conflict", "left-wins" if master == "left" else "right-wins")
    try:
        policy = ConflictPolicy(conflict)
    except ValueError:
        problems.append(_err(f"conflict policy {conflict!r} is unknown",
                             "use left-wins, right-wins, newest-wins or manual", file,
                             line_of(data, "conflict")))
        policy = ConflictPolicy.LEFT_WINS
    flt = data.get("filter") or {}
    if not isinstance(flt, Mapping) or not set(flt) <= {"left", "right"}:
        problems.append(_err("`filter` takes `left` and/or `right`",
                             "e.g. filter: {right: \"customertypecode eq 3\"}", file,
                             line_of(data, "filter")))
        flt = {}
    modified = data.get("modified") or {}
    if not isinstance(modified, Mapping) or not set(modified) <= {"left", "right"} or not all(
            isinstance(v, str) and v for v in modified.values()):
        problems.append(_err("`modified` takes `left` and/or `right`, each a property name",
                             "e.g. modified: {left: modifiedAt}", file,
                             line_of(data, "modified")))
        modified = {}
    depends = data.get("depends_on") or []
    if isinstance(depends, str):
        depends = [depends]
    if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends):
        problems.append(_err("`depends_on` must be a list of map names",
                             "e.g. depends_on: [currencies, customer_groups]", file,
                             line_of(data, "depends_on")))
        depends = []
    raw_fields = data.get("fields")
    fields: list[FieldMap] = []
    if "fields" in data and (not isinstance(raw_fields, list) or not raw_fields):
        problems.append(_err("`fields` must be a non-empty list of field lines",
                             "e.g. - CUSTOMERACCOUNT = accountnumber", file,
                             line_of(data, "fields")))
    elif isinstance(raw_fields, list):
        for i, item in enumerate(raw_fields):
            f = attempt(_field, item, file, line_of(raw_fields, i))
            if f is not None:
                fields.append(f)
    specials = attempt(_specials, data, "the map", file, line_of(data, "specials"))
    if problems:
        return None, problems
    lines = {k: ln for k in data if (ln := line_of(data, k)) is not None}
    assert key is not None
    return TableMap(
        name=str(name), left=data["left"], right=data["right"], key=key, fields=fields,
        master=Side(master), filter_left=flt.get("left"), filter_right=flt.get("right"),
        company=company, depends_on=list(depends), restricted=bool(data.get("restricted", False)),
        conflict=policy, specials=specials or "refuse", modified_left=modified.get("left"),
        modified_right=modified.get("right"), file=file, line=top_line, lines=lines,
    ), []


def dependency_order(maps: list[TableMap]) -> list[TableMap]:
    """Maps in ``depends_on`` order (dependencies first), stable for independent maps.

    Assumes no cycle and no unknown names (validation reports those); ignores unknown names.
    """
    by_name = {m.name: m for m in maps}
    out: list[TableMap] = []
    seen: set[str] = set()

    def visit(m: TableMap, stack: tuple[str, ...]) -> None:
        if m.name in seen or m.name in stack:
            return
        for dep in m.depends_on:
            if dep in by_name:
                visit(by_name[dep], (*stack, m.name))
        seen.add(m.name)
        out.append(m)

    for m in maps:
        visit(m, ())
    return out


def find_cycles(maps: list[TableMap]) -> Iterator[list[str]]:
    """Yield each ``depends_on`` cycle once, as the list of map names around it."""
    by_name = {m.name: m for m in maps}
    state: dict[str, int] = {}
    reported: set[frozenset[str]] = set()

    def visit(name: str, path: list[str]) -> Iterator[list[str]]:
        state[name] = 1
        for dep in by_name[name].depends_on:
            if dep not in by_name:
                continue
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep):], dep]
                sig = frozenset(cycle)
                if sig not in reported:
                    reported.add(sig)
                    yield cycle
            elif dep not in state:
                yield from visit(dep, [*path, dep])
        state[name] = 2

    for m in maps:
        if m.name not in state:
            yield from visit(m.name, [m.name])
