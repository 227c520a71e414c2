"""Bind maps to real schemas, and report every problem at once. Pure.

:func:`bind_maps` takes the parsed maps and a :class:`SchemaSource` (which the engine backs
with the two connectors) and returns the bound maps plus a list of :class:`Issue`. A bound map
knows the actual column names (FO names match case-insensitively), the related table and id
column of every lookup, and the columns each side reads and writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from dualwrite.errors import FilterSyntaxError, Issue
from dualwrite.model.conversion import Options, Verdict, plan
from dualwrite.model.filters import Expr, parse_filter
from dualwrite.model.maps import FieldMap, Side, TableMap, find_cycles
from dualwrite.model.notation import FieldRef
from dualwrite.model.schema import Column, Kind, TableSchema, can_hold, find_table

#: (side, table) -> schema, or None when the table does not exist
SchemaSource = Callable[[Side, str], TableSchema | None]
#: side -> table names
TableLister = Callable[[Side], list[str]]


@dataclass(frozen=True)
class LookupTarget:
    """Where a lookup column points: rows of ``table`` found by ``key``; ``id`` is the
    referenced column whose value the lookup column stores. With ``next``, ``key`` is itself a
    lookup column of ``table`` and the natural key is found one table further.

    With ``company`` (the last hop's company column) the natural key is the pair (company,
    key): the related row is found within the referring row's own company. The binder sets it
    when the map is company-striped and ``table`` is the table of another striped map, or
    when the lookup names it, ``col.(company,key)``."""

    table: str
    key: str
    id: str
    key_kind: Kind
    next: LookupTarget | None = None
    company: str | None = None

    @property
    def final(self) -> LookupTarget:
        """The last hop: the table that holds the natural key."""
        t = self
        while t.next is not None:
            t = t.next
        return t

    @property
    def scoped(self) -> bool:
        """The natural key is (company, key): resolved within the row's company."""
        return self.final.company is not None

    def describe(self) -> str:
        """``table.key`` or ``table.(company,key)`` of the last hop, for messages."""
        f = self.final
        return f"{f.table}.({f.company},{f.key})" if f.company else f"{f.table}.{f.key}"


@dataclass(frozen=True)
class Endpoint:
    """One side of a bound field line."""

    column: str | None
    targets: tuple[LookupTarget, ...] = ()
    kind: Kind = Kind.OTHER
    #: the column itself (kind and facets), None for ``none``
    info: Column | None = None

    @property
    def is_lookup(self) -> bool:
        return bool(self.targets)

    @property
    def scoped(self) -> bool:
        """Some candidate table is found within the row's company: the lookup's values are
        (company, key) pairs."""
        return any(t.scoped for t in self.targets)


@dataclass(frozen=True)
class BoundField:
    spec: FieldMap
    left: Endpoint
    right: Endpoint
    #: the field line's choices about values it converts (``specials:``, ``convert:``)
    options: Options = field(default_factory=Options)

    def end(self, side: Side) -> Endpoint:
        return self.left if side is Side.LEFT else self.right

    @property
    def compared(self) -> bool:
        """Both sides hold a value: the field takes part in diffing."""
        return self.left.column is not None and self.right.column is not None


@dataclass
class BoundMap:
    spec: TableMap
    left_table: str
    right_table: str
    fields: list[BoundField]
    key_left: tuple[str, ...]
    key_right: tuple[str, ...]
    filter_left: Expr | None = None
    filter_right: Expr | None = None
    key_fields: set[int] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.spec.name

    def table(self, side: Side) -> str:
        return self.left_table if side is Side.LEFT else self.right_table

    def key(self, side: Side) -> tuple[str, ...]:
        """Full key on one side (company column first when striped)."""
        return self.key_left if side is Side.LEFT else self.key_right

    def filter(self, side: Side) -> Expr | None:
        return self.filter_left if side is Side.LEFT else self.filter_right

    def read_columns(self, side: Side) -> list[str]:
        """Key columns first, then every other column the map reads on ``side``."""
        cols = list(self.key(side))
        for f in self.fields:
            c = f.end(side).column
            if c is not None and c not in cols:
                cols.append(c)
        return cols

    def updatable_into(self, side: Side, master: Side | None = None) -> list[int]:
        """Indexes of fields that an update of an existing row writes into ``side``:
        one-way fields towards it always, bidirectional ones when the other side is master
        (the map's own, unless ``master`` overrides it). Key fields and ``none`` defaults
        never: keys are not editable, defaults are for creation."""
        master = master or self.spec.master
        out = []
        for i, f in enumerate(self.fields):
            if i in self.key_fields or not f.compared or not f.spec.flows_to(side):
                continue
            if f.spec.direction.bidirectional and master is side:
                continue
            out.append(i)
        return out

    def creatable_into(self, side: Side) -> list[int]:
        """Indexes of fields written when a row is created on ``side``."""
        return [i for i, f in enumerate(self.fields)
                if f.spec.flows_to(side) and f.end(side).column is not None]


def _stem(name: str) -> str:
    """A name without case, its publisher prefix (``msdyn_``, ``new_``: letters up to the
    first ``_``), its schema (``fin.``), and underscores: what two spellings of one column
    share (``msdyn_onholdstatus``, ``ONHOLDSTATUS``, ``on_hold_status``)."""
    n = name.casefold().rpartition(".")[2]
    head, sep, rest = n.partition("_")
    if sep and rest and head.isalpha() and len(head) <= 6:
        n = rest
    return n.replace("_", "")


def close_names(wanted: str, names: list[str] | set[str] | dict[str, object]) -> list[str]:
    """Every name in ``names`` that ``wanted`` may have meant, best first: the same stem
    (case, publisher prefix and underscores aside), one stem inside the other, or a close
    spelling. Never cut short: the caller lists them all."""
    import difflib

    def plain(n: str) -> str:
        return n.casefold().rpartition(".")[2].replace("_", "")

    def score(a: str, b: str) -> float:
        if not a or not b:
            return 0.0
        if a == b:
            return 2.0
        if len(min(a, b, key=len)) >= 4 and (a in b or b in a):
            return 1.5
        return difflib.SequenceMatcher(None, a, b).ratio()

    scored: list[tuple[float, str]] = []
    for n in names:
        best = max(score(_stem(wanted), _stem(n)), score(plain(wanted), plain(n)))
        if best >= 0.75:
            scored.append((best, n))
    return [n for _, n in sorted(scored, key=lambda x: (-x[0], x[1]))]


def listing(what: str, names: list[str], limit: int = 60) -> str:
    """``names`` for a hint: all of them, or the first ``limit`` saying how many there are
    (a list is never cut short silently)."""
    if len(names) <= limit:
        return f"{what}: {', '.join(names)}"
    return (f"{what} ({len(names)}; the first {limit}): {', '.join(names[:limit])}, "
            f"... ({len(names) - limit} more)")


def _coded_against(a: Kind, b: Kind) -> bool:
    """Two kinds of column whose values are codes of different vocabularies: text against a
    number or a flag (an enum's names against an option set's integers), or a number
    against a flag."""
    pair = {a, b}
    return len(pair) == 2 and (pair <= {Kind.STRING, Kind.INTEGER, Kind.BOOLEAN})


class _Binder:
    def __init__(self, schema: SchemaSource, tables: TableLister,
                 striped: dict[tuple[Side, str], str] | None = None) -> None:
        self.schema = schema
        self.tables = tables
        #: (side, casefolded table) -> company column, for the tables of striped maps
        self.striped = striped or {}
        self.issues: list[Issue] = []

    def issue(self, m: TableMap, code: str, message: str, hint: str, line: int | None,
              severity: str = "error") -> None:
        self.issues.append(Issue(code, message, hint, m.file, line, m.name, severity))

    def find(self, side: Side, name: str) -> str | None:
        """The real name of table ``name`` on ``side``: as listed (exactly, then ignoring
        case), or, for a name in another schema (``fin.currency``, a foreign key's target)
        that the list does not hold, the name itself if the schema source describes it."""
        real = find_table(self.tables(side), name)
        if real is None and "." in name and self.schema(side, name) is not None:
            return name
        return real

    def column(self, m: TableMap, side: Side, schema: TableSchema, name: str,
               line: int | None, what: str = "column") -> str | None:
        col = schema.column(name)
        if col is None:
            near = close_names(name, list(schema.columns))
            columns = listing(f"the {side.value} table's columns", list(schema.columns))
            hint = f"did you mean {' or '.join(near)}? ({columns})" if near else \
                f"check {columns}"
            self.issue(m, "DW102", f"{side.value} table {schema.name!r} has no {what} {name!r}",
                       hint, line)
            return None
        return col.name

    def lookup(self, m: TableMap, side: Side, schema: TableSchema, ref: FieldRef,
               f: FieldMap) -> tuple[LookupTarget, ...] | None:
        assert ref.column is not None
        line = f.line
        out: list[LookupTarget] = []
        for t in ref.targets:
            if t.table is None:
                named = f.lookup_table(side)
                fk = schema.references(ref.column)
                if named is None and fk is None:
                    self.issue(m, "DW107",
                               f"lookup {str(ref)!r}: column {ref.column!r} of {side.value} table "
                               f"{schema.name!r} has no foreign key, so its related table is "
                               "unknown",
                               "declare a foreign key on the column, or name the table: "
                               f"`- {f.text}: {{lookup: {{{side.value}: TABLE}}}}`", line)
                    return None
                table_name = named or (fk.table if fk else "")
                id_col = fk.ref_columns[0] if (fk and not named) else None
            else:
                table_name = t.table
                id_col = None
            real = self.find(side, table_name)
            related = self.schema(side, real) if real else None
            if related is None:
                near = close_names(table_name, self.tables(side))
                self.issue(m, "DW107", f"lookup {str(ref)!r}: related table {table_name!r} does "
                           f"not exist on the {side.value} side",
                           f"did you mean {' or '.join(near)}?" if near else
                           "create the table or correct the lookup (a table in another schema "
                           "is schema.table)", line)
                return None
            if id_col is None:
                if len(related.primary_key) != 1:
                    self.issue(m, "DW107", f"lookup {str(ref)!r}: related table {related.name!r} "
                               "needs a single-column primary key",
                               "give the related table a one-column primary key", line)
                    return None
                id_col = related.primary_key[0]
            target = self.hops(m, side, ref, related, id_col, t.key.split("."), line,
                               t.company)
            if target is None:
                return None
            out.append(target)
        return tuple(out)

    def hops(self, m: TableMap, side: Side, ref: FieldRef, related: TableSchema, id_col: str,
             path: list[str], line: int | None, company: str | None = None
             ) -> LookupTarget | None:
        """Bind ``path`` (``key`` or ``rel.….key``) starting at table ``related``; ``company``
        is the company column the lookup names for the last hop, if any."""
        key_col = related.column(path[0])
        if key_col is None:
            self.issue(m, "DW107", f"lookup {str(ref)!r}: related table {related.name!r} has "
                       f"no column {path[0]!r}",
                       "name a column of the related table that identifies its rows", line)
            return None
        if len(path) == 1:
            scope = self.scope(m, side, ref, related, key_col.name, company, line)
            if scope is False:
                return None
            return LookupTarget(related.name, key_col.name, id_col, key_col.kind,
                                company=scope or None)
        fk = related.references(key_col.name)
        nxt_schema = self.schema(side, fk.table) if fk else None
        if fk is None or nxt_schema is None:
            self.issue(m, "DW107", f"lookup {str(ref)!r}: column {related.name}.{key_col.name} "
                       "has no foreign key to follow to the next table",
                       "declare a foreign key on it, or shorten the lookup path", line)
            return None
        nxt = self.hops(m, side, ref, nxt_schema, fk.ref_columns[0], path[1:], line, company)
        if nxt is None:
            return None
        return LookupTarget(related.name, key_col.name, id_col, nxt.key_kind, nxt)

    def scope(self, m: TableMap, side: Side, ref: FieldRef, related: TableSchema, key: str,
              named: str | None, line: int | None) -> str | Literal[False]:
        """The company column of ``related`` that the natural key ``key`` is found within:
        the one the lookup names, or, in a striped map, the company column of the striped map
        whose table ``related`` is; ``""`` for none (checking that ``key`` alone is unique);
        False after an error."""
        if named is not None:
            col = related.column(named)
            if col is None:
                self.issue(m, "DW107", f"lookup {str(ref)!r}: related table {related.name!r} "
                           f"has no company column {named!r}",
                           "name the related table's company column first: "
                           f"{ref.column}.(company,{key})", line)
                return False
            if m.company is None:
                self.issue(m, "DW132", f"lookup {str(ref)!r} names the company column "
                           f"{col.name!r}, but map {m.name!r} is not company-striped, so a row "
                           "has no company to find the related row in",
                           "stripe the map (`company: {left: COLUMN, right: column}`), or "
                           f"drop the company from the lookup: {ref.column}.{key}", line)
                return False
            company = col.name
        else:
            implied = self.striped.get((side, related.name.casefold())) if m.company else None
            company = (c.name if implied and (c := related.column(implied)) else "")
        self.check_unique(m, side, ref, related, key, company, line)
        return company

    def check_unique(self, m: TableMap, side: Side, ref: FieldRef, related: TableSchema,
                     key: str, company: str, line: int | None) -> None:
        """Warn (DW130) when no primary key or unique index makes the natural key identify
        one row: a value would then match several rows, and the lookup take the first."""
        cols = {key.casefold()} | ({company.casefold()} if company else set())
        for unique in (related.primary_key, *related.unique):
            if unique and {c.casefold() for c in unique} <= cols:
                return
        if company:
            what = f"({company}, {key}) is not unique in {related.name!r}"
            hint = f"add a unique index on {related.name} ({company}, {key})"
        else:
            what = f"{key!r} is not unique in {related.name!r} on its own"
            hint = f"add a unique index on {related.name} ({key})"
            if m.company is None:
                hint += (", or stripe this map by company and name the related table's "
                         f"company column: {ref.column}.(company,{key})")
            else:
                hint += (", or find the row within the row's company: name the related "
                         f"table's company column, {ref.column}.(company,{key}), or map "
                         f"{related.name} with `company:`")
        self.issue(m, "DW130", f"lookup {str(ref)!r}: the natural key {what} (no primary key "
                   "or unique index on it), so a value may match several rows and the "
                   "lookup takes the first by id", hint, line, severity="warning")

    def endpoint(self, m: TableMap, side: Side, schema: TableSchema | None, ref: FieldRef,
                 f: FieldMap) -> Endpoint | None:
        if ref.column is None:
            return Endpoint(None)
        if schema is None:
            return None
        col = self.column(m, side, schema, ref.column, f.line)
        if col is None:
            return None
        info = schema.columns[col]
        if not ref.is_lookup:
            return Endpoint(col, (), info.kind, info)
        targets = self.lookup(m, side, schema, ref, f)
        if targets is None:
            return None
        return Endpoint(col, targets, targets[0].key_kind, info)

    def bind(self, m: TableMap) -> BoundMap | None:
        schemas: dict[Side, TableSchema | None] = {}
        for side in Side:
            name = m.table(side)
            real = self.find(side, name)
            schemas[side] = self.schema(side, real) if real == name or (
                real and real.casefold() == name.casefold()) else None
            if schemas[side] is None:
                near = close_names(name, self.tables(side))
                self.issue(m, "DW101", f"{side.value} table {name!r} does not exist",
                           f"did you mean {' or '.join(near)}?" if near else
                           f"create the table on the {side.value} side or correct "
                           f"`{side.value}:` (a table in another schema is schema.table); "
                           + listing(f"the {side.value} side's tables", self.tables(side)),
                           m.line_of(side.value))
        ok = True
        fields: list[BoundField] = []
        for f in m.fields:
            le = self.endpoint(m, Side.LEFT, schemas[Side.LEFT], f.left, f)
            re_ = self.endpoint(m, Side.RIGHT, schemas[Side.RIGHT], f.right, f)
            if le is None or re_ is None:
                ok = False
                continue
            options = Options(specials_to_null=(f.specials or m.specials) == "null",
                              utc=f.convert == "utc")
            fields.append(BoundField(f, le, re_, options))
            self.check_field(m, f, le, re_, options)
        if schemas[Side.LEFT] is None or schemas[Side.RIGHT] is None:
            return None
        left_s, right_s = schemas[Side.LEFT], schemas[Side.RIGHT]
        assert left_s is not None and right_s is not None
        keys: dict[Side, list[str]] = {Side.LEFT: [], Side.RIGHT: []}
        if m.company:
            for side, schema in ((Side.LEFT, left_s), (Side.RIGHT, right_s)):
                c = self.column(m, side, schema, m.company.of(side)[0], m.line_of("company"),
                                "company column")
                if c is None:
                    ok = False
                else:
                    keys[side].append(c)
            if len(keys[Side.LEFT]) == len(keys[Side.RIGHT]) == 1:
                self.check_collations(m, left_s.columns[keys[Side.LEFT][0]],
                                      right_s.columns[keys[Side.RIGHT][0]], "company")
        key_fields: set[int] = set()
        for kl, kr in zip(m.key.left, m.key.right, strict=True):
            if "." in kl or "." in kr:
                self.key_through_lookup(m, kl, kr, left_s, right_s)
                ok = False
                continue
            cl = self.column(m, Side.LEFT, left_s, kl, m.line_of("key"), "key column")
            cr = self.column(m, Side.RIGHT, right_s, kr, m.line_of("key"), "key column")
            if cl is None or cr is None:
                ok = False
                continue
            keys[Side.LEFT].append(cl)
            keys[Side.RIGHT].append(cr)
            idx = next((i for i, bf in enumerate(fields)
                        if bf.left.column == cl and bf.right.column == cr
                        and not bf.left.is_lookup and not bf.right.is_lookup
                        and bf.spec.direction.bidirectional), None)
            if idx is None:
                self.issue(m, "DW103", f"key field {kl} ↔ {kr} is not mapped both ways",
                           f"add the field line `{kl} = {kr}` (keys are mapped with `=`)",
                           m.line_of("key"))
                ok = False
            else:
                key_fields.add(idx)
                self.check_collations(m, left_s.columns[cl], right_s.columns[cr], "key")
                lk, rk = left_s.columns[cl].kind, right_s.columns[cr].kind
                if not (can_hold(lk, rk) and can_hold(rk, lk)) or {lk, rk} & {Kind.OTHER} \
                        or (lk is Kind.STRING) != (rk is Kind.STRING):
                    self.issue(m, "DW114", f"key {kl} ({lk.value}) and {kr} ({rk.value}) are of "
                               "different kinds, so the two sides cannot be ordered alike",
                               "use the same type family for both key columns",
                               m.line_of("key"))
        self.check_writes(m, fields, left_s, right_s, keys)
        filters: dict[Side, Expr | None] = {}
        for side, schema in ((Side.LEFT, left_s), (Side.RIGHT, right_s)):
            text = m.filter(side)
            filters[side] = None
            if not text:
                continue
            try:
                expr = parse_filter(text)
            except FilterSyntaxError as exc:
                self.issue(m, "DW109", f"{side.value} filter does not parse: {exc.detail}",
                           exc.hint, m.line_of("filter"))
                ok = False
                continue
            for name in sorted(expr.properties()):
                if schema.column(name) is None:
                    self.issue(m, "DW111", f"{side.value} filter names column {name!r}, which "
                               f"table {schema.name!r} does not have",
                               "correct the filter or the table", m.line_of("filter"))
                    ok = False
            filters[side] = expr
        if not ok:
            return None
        return BoundMap(m, left_s.name, right_s.name, fields, tuple(keys[Side.LEFT]),
                        tuple(keys[Side.RIGHT]), filters[Side.LEFT], filters[Side.RIGHT],
                        key_fields)

    def check_collations(self, m: TableMap, left: Column, right: Column, what: str) -> None:
        """DW133 (a warning): two key columns of text whose collations disagree about letter
        case. The side whose collation folds case holds one row where the other holds two
        (``c-00005``, ``C-00005``): the second key collides there (a duplicate key, or an
        update of the wrong twin), and the two sides order their keys differently."""
        if left.kind is not Kind.STRING or right.kind is not Kind.STRING or \
                left.facets.folds_case == right.facets.folds_case:
            return
        ci, cs = (left, right) if left.facets.folds_case else (right, left)
        ci_side, cs_side = ("left", "right") if ci is left else ("right", "left")

        def named(c: Column) -> str:
            db = f"{c.facets.database} " if c.facets.database else ""
            return f"{db}collation {c.facets.collation}" if c.facets.collation else \
                f"{db}default collation"

        self.issue(m, "DW133", f"{what} {left.name} ↔ {right.name}: the {ci_side} column "
                   f"{ci.name!r} ({named(ci)}) ignores letter case and the {cs_side} column "
                   f"{cs.name!r} ({named(cs)}) does not, so keys that differ only in case "
                   f"(c-00005, C-00005) are two rows on the {cs_side} side and collide as one "
                   f"on the {ci_side} side",
                   f"give {ci.name!r} a case-sensitive collation (MariaDB: utf8mb4_bin; SQLite: "
                   f"BINARY), or {cs.name!r} a case-insensitive one (PostgreSQL: citext or a "
                   "nondeterministic ICU collation), or keep keys that differ only in case out "
                   "of both applications", m.line_of("key" if what == "key" else "company"),
                   severity="warning")

    def key_through_lookup(self, m: TableMap, kl: str, kr: str, left_s: TableSchema,
                           right_s: TableSchema) -> None:
        """DW131: a key column reached through a lookup (``salesorderid.ordernumber``).
        Both sides are read and merge-joined in key order by the columns' own values, and
        captured changes, updates and deletes find the twin by them; a related row's key
        is none of these, so the map must carry it in a plain column."""
        side, dotted, other = (Side.LEFT, kl, kr) if "." in kl else (Side.RIGHT, kr, kl)
        table = (left_s if side is Side.LEFT else right_s).name
        plain = dotted.rsplit(".", 1)[-1]
        pair = f"{plain} = {other}" if side is Side.LEFT else f"{other} = {plain}"
        one_way = f"{dotted} < {other}" if side is Side.LEFT else f"{other} > {dotted}"
        self.issue(m, "DW131", f"key column {dotted!r} on the {side.value} side goes through a "
                   "lookup; a key must be a plain column of the table (both sides are read in "
                   "key order, and twins are found by the key's own values)",
                   f"carry the related row's key in a plain column of {table} (e.g. "
                   f"{plain!r}, filled by the application or a trigger), map it both ways "
                   f"(`- {pair}`) and put it in `key`; keep the lookup beside it, one way: "
                   f"`- {one_way}`", m.line_of("key"))

    def check_field(self, m: TableMap, f: FieldMap, le: Endpoint, re_: Endpoint,
                    options: Options) -> None:
        if f.values is not None and f.direction.bidirectional and not f.values.invertible:
            clashes = "; ".join(f"{a!r} and {b!r} both map to {v!r}"
                                for a, b, v in f.values.collisions)
            self.issue(m, "DW104", f"value map of `{f.text}` is not one-to-one: {clashes}",
                       "a `><` map must be invertible: give each left value its own right value,"
                       " or use `>>` if it only flows left to right", f.line)
        if f.values is None and le.info is not None and re_.info is not None and \
                not le.is_lookup and not re_.is_lookup and \
                (f.direction.transformed or not f.direction.bidirectional) and \
                _coded_against(le.kind, re_.kind):
            def typed(e: Endpoint) -> str:
                assert e.info is not None
                return f"{e.column!r} ({e.info.facets.type_name or e.kind.value})"

            self.issue(m, "DW134", f"`{f.text}` joins {typed(le)} and {typed(re_)} without a "
                       "value map: each value is copied as it is (an option set's number "
                       "written as an enum's text, or the other way), not translated, and "
                       "values the target cannot take are refused at their row",
                       f"add the value map: `- {f.text}: {{values: {{LEFT_VALUE: "
                       "right_value, ...}}` (`dualwrite import-template` writes the values a "
                       "published template has), or map columns of one kind", f.line,
                       severity="warning")
        if f.values is not None or le.column is None or re_.column is None:
            return
        for target, source, side in ((re_, le, Side.RIGHT), (le, re_, Side.LEFT)):
            if not f.flows_to(side):
                continue
            if source.is_lookup or target.is_lookup or source.info is None or \
                    target.info is None:
                # a lookup carries the related row's natural key: its kind is the key's
                if not can_hold(target.kind, source.kind):
                    self.issue(m, "DW106", f"`{f.text}`: {side.value} column {target.column!r} "
                               f"({target.kind.value}) cannot hold {source.kind.value} values "
                               f"from {source.column!r}",
                               "map compatible columns, or add a value map with `><`/`>>`/`<<`",
                               f.line)
                continue
            self.check_values(m, f, source.info, target.info, side, options)

    def check_values(self, m: TableMap, f: FieldMap, source: Column, target: Column,
                     side: Side, options: Options) -> None:
        """Say how the values of one direction of a plain field line arrive: exactly (say
        nothing), converted (DW117, a note), partly (DW116: which values are refused at their
        row; DW118: which are written as NULL), or not at all (DW106; DW115 where an option
        would make it possible)."""
        p = plan(source, target, options)
        where = f"`{f.text}` ({side.value}): {p.pair}"
        if p.verdict is Verdict.IMPOSSIBLE:
            if p.needs:
                self.issue(m, "DW115", f"{where}: {p.reason}",
                           f"add `{p.needs}` to the field line to convert the values: "
                           f"`- {f.text}: {{{p.needs}}}`, or map another column", f.line)
            else:
                self.issue(m, "DW106", f"{where}: {p.reason}",
                           "map compatible columns, or add a value map with `><`/`>>`/`<<`",
                           f.line)
            return
        if p.refused:
            specials = any(x in r for r in p.refused for x in ("NaN", "Infinity", "infinity"))
            self.issue(m, "DW116", f"{where}: values it cannot hold are refused at their row "
                       f"(sent to the error inbox): {'; '.join(p.refused)}",
                       ("add `specials: null` to the field line (or the map) to write NaN and "
                        "infinities as NULL instead, or map a column that holds them")
                       if specials else "map a column that holds them, or accept that such "
                       "rows wait in the inbox", f.line, "warning")
        if p.nulled:
            self.issue(m, "DW118", f"{where}: {', '.join(p.nulled)} are written as NULL "
                       "(specials: null), with a warning in the log each time",
                       "remove `specials: null` to send such rows to the inbox instead",
                       f.line, "warning")
        if p.notes:
            self.issue(m, "DW117", f"{where}: {'; '.join(p.notes)}",
                       "nothing to do: the values keep their meaning", f.line, "note")

    def check_writes(self, m: TableMap, fields: list[BoundField], left_s: TableSchema,
                     right_s: TableSchema, keys: dict[Side, list[str]]) -> None:
        for side, schema in ((Side.LEFT, left_s), (Side.RIGHT, right_s)):
            written: dict[str, FieldMap] = {}
            for bf in fields:
                col = bf.end(side).column
                if col is None or not bf.spec.flows_to(side):
                    continue
                if col in written:
                    self.issue(m, "DW112", f"{side.value} column {col!r} is written by two "
                               f"lines: `{written[col].text}` and `{bf.spec.text}`",
                               "let only one line flow into each column (make one of them "
                               "one-way the other way)", bf.spec.line)
                written[col] = bf.spec
            for c in schema.columns.values():
                if c.required and c.name not in written and c.name not in keys[side]:
                    line = f"- none >> {c.name}" if side is Side.RIGHT else \
                        f"- {c.name} << none"
                    self.issue(m, "DW105", f"{side.value} column {schema.name}.{c.name} is "
                               "required (NOT NULL, no default) but no field line fills it",
                               f"map a field into it, or add `{line}: {{default: ...}}`",
                               m.line_of("fields"))


def bind_maps(maps: list[TableMap], schema: SchemaSource, tables: TableLister,
              unparsed: frozenset[str] = frozenset()) -> tuple[list[BoundMap], list[Issue]]:
    """Bind every map; return the maps that bound cleanly and all issues found (warnings
    among them: ``Issue.is_error`` is False for those, and their maps are bound).
    ``unparsed``: names of maps whose files do not parse (their problems are reported
    already): a ``depends_on`` naming one is not called unknown."""
    striped = {(side, m.table(side).casefold()): m.company.of(side)[0]
               for m in maps if m.company for side in Side}
    binder = _Binder(schema, tables, striped)
    names: dict[str, TableMap] = {}
    for m in maps:
        if m.name in names:
            binder.issue(m, "DW113", f"map name {m.name!r} is used twice (also in "
                         f"{names[m.name].file})", "give each map its own name", m.line_of("name"))
        names[m.name] = m
    for m in maps:
        for dep in m.depends_on:
            if dep not in names and dep not in unparsed:
                binder.issue(m, "DW110", f"depends_on names unknown map {dep!r}",
                             f"known maps: {', '.join(sorted(names))}", m.line_of("depends_on"))
    for cycle in find_cycles(maps):
        first = names[cycle[0]]
        binder.issue(first, "DW108", f"depends_on has a cycle: {' -> '.join(cycle)}",
                     "remove one of the dependencies so the maps can run in order",
                     first.line_of("depends_on"))
    bound = [b for m in maps if (b := binder.bind(m)) is not None]
    return bound, binder.issues
