"""The compiled map: one row builder for every path that writes a row into the other side.

A bound map is compiled once per link (:class:`CompiledMap`): for each direction, the
function that builds the values written into the target from a row of the source, as a
create (:attr:`~CompiledMap.build_create`), a live change (:attr:`~CompiledMap.build_live`)
and an initial-sync update (:attr:`~CompiledMap.build_update`), with each field's value map,
lookup, default and conversion (:func:`dualwrite.model.conversion.plan`) planned once; the
key of a row's twin (:meth:`~CompiledMap.target_key`); the lookups a batch of rows needs,
resolved in one query per lookup (:meth:`~CompiledMap.resolve`).

Every write path builds its rows here, so that a row arrives the same whichever path
carries it:

* initial sync and ``plan`` (through :class:`dualwrite.engine.diff.MapDiffer`, which adds the
  reading and classification of both sides) and its bulk path (:mod:`dualwrite.engine.bulk`,
  which compiles the same plans into COPY / LOAD DATA);
* the live mirror of a write made through dualwrite (:mod:`dualwrite.engine.live`);
* the applier of captured changes (:mod:`dualwrite.engine.capture`);
* settling a resolved conflict (``Applier._settle_key`` in :mod:`dualwrite.engine.capture`).

What is good here and kept on purpose: the builders are compiled closures, not interpreted
per row (plain fields whose kinds agree are fetched with one ``itemgetter``: the hot path of
initial sync); a value the target cannot hold raises a :class:`~dualwrite.errors.RowError`
that sends its row, and only its row, to the inbox.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dualwrite.connectors.base import Connector, Row
from dualwrite.engine.lookups import LookupResolver, RelatedKey
from dualwrite.errors import RowError
from dualwrite.model import conversion
from dualwrite.model.binding import BoundField, BoundMap, LookupTarget
from dualwrite.model.conversion import Convert, ValueRefused, from_log
from dualwrite.model.maps import Side
from dualwrite.model.schema import Column, Kind
from dualwrite.model.values import canonical

#: a lookup's answer that is not there (an id that resolves to no row), apart from None
MISSING = object()

log = logging.getLogger("dualwrite.values")

#: (side, field) -> {id: natural key} for lookups read on that side; (side, -1 - field) ->
#: {natural key: id} for lookups written into that side (see :meth:`CompiledMap.resolve`)
Resolved = dict[tuple[Side, int], dict[Any, Any]]


class Folded:
    """In a row built for a create, the id of lookup field ``field`` that the INSERT itself
    finds (:meth:`~dualwrite.connectors.base.WriteSession.insert_resolving`)."""

    __slots__ = ("field",)

    def __init__(self, field: int) -> None:
        self.field = field

    def __repr__(self) -> str:
        return f"<id found by the insert, field {self.field}>"


class _FoldedIds(dict[Any, Any]):
    """A lookup's resolved ids where the INSERT finds them: every natural key answers the
    field's :class:`Folded` marker."""

    def __init__(self, marker: Folded) -> None:
        super().__init__()
        self.marker = marker

    def get(self, key: Any, default: Any = None) -> Any:
        return self.marker


@dataclass
class Entry:
    """One merged key: the row on each side (None when absent)."""

    key: Row
    left: Row | None
    right: Row | None


#: fit a constant or an API value to a column's kind (value maps carry text like 'False' or
#: '3'): :func:`dualwrite.model.conversion.fit`, under the name the engine has used for it
coerce: Callable[[Any, Kind], Any] = conversion.fit


class CompiledMap:
    """One bound map compiled into its row builders (see the module docstring). Built once
    per map and link (:meth:`dualwrite.engine.link.Link.differ`) and shared by every path;
    stateless between batches but for its plans and the lookup cache."""

    def __init__(self, bound: BoundMap, connectors: dict[Side, Connector],
                 *, master: Side | None = None) -> None:
        self.bound = bound
        self.connectors = connectors
        self.resolver = LookupResolver(connectors)
        self.columns = {s: bound.read_columns(s) for s in Side}
        self.pos = {s: {c: i for i, c in enumerate(self.columns[s])} for s in Side}
        self.key_idx = {s: [self.pos[s][c] for c in bound.key(s)] for s in Side}
        #: column name -> Column (kind and facets), per side
        self.cols: dict[Side, dict[str, Column]] = {
            s: dict(connectors[s].describe(bound.table(s)).columns) for s in Side}
        self.kinds = {s: {c.name: c.kind for c in self.cols[s].values()} for s in Side}
        self.compared = [i for i, f in enumerate(bound.fields) if f.compared]
        self._plans: dict[tuple[Side, str, str, int | None], conversion.Plan] = {}
        self._target_keys: dict[Side, Callable[[Row], Row]] = {}
        #: whether any field is a lookup on either side (rows then need _prefetch first)
        self.has_lookups = any(f.end(s).is_lookup for f in bound.fields for s in Side)
        self.one_way_source = {
            i: Side.LEFT if f.spec.direction.to_right else Side.RIGHT
            for i, f in enumerate(bound.fields) if not f.spec.direction.bidirectional}
        self.update_into = {s: bound.updatable_into(s, master) for s in Side}
        self.create_into = {s: bound.creatable_into(s) for s in Side}
        company = len(bound.key(Side.LEFT)) - len(bound.spec.key.left)
        self.company_cols = {s: list(bound.key(s)[:company]) for s in Side}
        #: lookups found within the row's company: (side, field) of each scoped end
        self.scoped = {(s, i) for i, f in enumerate(bound.fields) for s in Side
                       if f.end(s).scoped}
        self.scoped_fields = {i for _s, i in self.scoped}
        #: side -> position of the company column in that side's rows (striped maps)
        self.company_pos = {s: self.pos[s][self.company_cols[s][0]] for s in Side
                            if self.company_cols[s]}
        self._companies = {(s, s.other): self._company_getter(s, s.other)
                           for s in self.company_pos}
        self.insert_columns = {
            s: self.company_cols[s] + [bound.fields[i].end(s).column or "" for i in
                                       self.create_into[s]] for s in Side}
        self.update_columns = {s: [bound.fields[i].end(s).column or "" for i in
                                   self.update_into[s]] for s in Side}
        self.build_create = {t: self._compile(t.other, t, self.create_into[t], company=True)
                             for t in Side}
        # Live sync: a change made on one side flows on every field towards the other side,
        # whoever is master (master only arbitrates initial sync).
        self.live_into = {t: [i for i in self.create_into[t]
                              if i not in bound.key_fields and bound.fields[i].compared]
                          for t in Side}
        self.live_columns = {t: [bound.fields[i].end(t).column or "" for i in self.live_into[t]]
                             for t in Side}
        self.build_live = {t: self._compile(t.other, t, self.live_into[t], company=False)
                           for t in Side}
        self.build_update = {t: self._compile(t.other, t, self.update_into[t], company=False)
                             for t in Side}
        self._live_pos = {t: [self.columns[t].index(c) for c in self.live_columns[t]]
                          for t in Side}
        self._foldable: dict[Side, dict[int, LookupTarget]] = {}
        # which fields _prefetch resolves, worked out once: (side, field, endpoint, position)
        # of each lookup id read on a side, (target side, field) of each id written
        self._lookups_read = [(s, i, end, self.pos[s][end.column])
                              for s in Side for i, f in enumerate(bound.fields)
                              if (end := f.end(s)).is_lookup and end.column is not None]
        self._lookups_written = [(t, i) for t in Side for i, f in enumerate(bound.fields)
                                 if f.end(t).is_lookup and f.spec.flows_to(t)
                                 and f.end(t.other).column is not None]
        self._partials: dict[tuple[Side, frozenset[int]], tuple[
            Callable[[Row, Row, dict[tuple[Side, int], dict[Any, Any]]], Row], list[str]]] = {}
        #: per target side: the columns a lock of target rows reads (the key, then the live
        #: columns not in it), and where the live columns are in such a row
        self.lock_columns = {t: list(bound.key(t)) + [c for c in self.live_columns[t]
                                                       if c not in bound.key(t)] for t in Side}
        self._locked_live_pos = {t: [self.lock_columns[t].index(c) for c in self.live_columns[t]]
                                 for t in Side}
        self._decoders: dict[Side, Callable[[Mapping[str, Any]], Row]] = {}
        self._key_decoders: dict[Side, tuple[list[tuple[int, Callable[[Any], Any]]],
                                             list[Kind] | None]] = {}

    # -- compiled row builders ---------------------------------------------------------------
    def _compile(self, s: Side, t: Side, fields: list[int], *, company: bool
                 ) -> Callable[[Row, Row, dict[tuple[Side, int], dict[Any, Any]]], Row]:
        """A function building the values written into side ``t`` from a row of side ``s``.

        This is the hot path of initial sync: plain fields whose kinds already agree are
        fetched with one ``itemgetter`` call; only lookups, value maps, defaults and fields
        that need coercion go through :meth:`transform`."""
        plain: list[int] = []
        fixups: list[tuple[int, Callable[[Row, Row, dict[tuple[Side, int], dict[Any, Any]]],
                                         Any]]] = []
        slots: list[int] = []
        if company:
            for c_s, c_t in zip(self.company_cols[s], self.company_cols[t], strict=True):
                plain.append(self.pos[s][c_s])
                slots.append(len(slots))
                p = self.plan(s, t, c_s, c_t)
                if p.convert is not None:
                    fixups.append((len(slots) - 1, self._checked(
                        t, self.pos[s][c_s], c_t, p)))
        for i in fields:
            f = self.bound.fields[i]
            slot = len(slots)
            slots.append(slot)
            src, dst = f.end(s), f.end(t)
            if src.column is None:
                plain.append(0)
                fixups.append((slot, self._constant(
                    coerce(f.spec.default, self.kinds[t][dst.column or ""]))))
                continue
            idx = self.pos[s][src.column]
            plain.append(idx)
            simple = (not src.is_lookup and not dst.is_lookup and f.spec.values is None
                      and self.plan(s, t, src.column, dst.column or "", i).convert is None)
            if not simple:
                fixups.append((slot, self._fast_transform(s, t, i, idx)))
        getter = operator.itemgetter(*plain) if plain else None
        width = len(plain)

        def build(row: Row, key: Row, resolved: dict[tuple[Side, int], dict[Any, Any]]) -> Row:
            if getter is None:
                return ()
            got = getter(row)
            values = list(got) if width > 1 else [got]
            for slot, fn in fixups:
                values[slot] = fn(row, key, resolved)
            return tuple(values)

        return build

    def plan(self, s: Side, t: Side, src: str, dst: str, i: int | None = None
             ) -> conversion.Plan:
        """How values of column ``src`` on side ``s`` become values of ``dst`` on ``t``
        (field ``i``'s options applied), planned once per pair."""
        key = (s, src, dst, i)
        got = self._plans.get(key)
        if got is None:
            options = self.bound.fields[i].options if i is not None else conversion.Options()
            name = self.bound.name

            def notify(message: str) -> None:
                log.warning("map %s, %s column %s: %s", name, t.value, dst, message)

            got = self._plans[key] = conversion.plan(self.cols[s][src], self.cols[t][dst],
                                                     options, notify)
        return got

    def _checked(self, t: Side, idx: int, column: str, p: conversion.Plan
                 ) -> Callable[[Row, Row, dict[tuple[Side, int], dict[Any, Any]]], Any]:
        """The value at ``idx`` converted for ``column`` on side ``t`` by plan ``p``; a value
        it cannot hold raises the RowError that sends its row, and only its row, to the
        inbox."""
        name, table = self.bound.name, self.bound.table(t)
        step = p.step
        conv: Convert = p.convert or (lambda v: v)

        def convert(r: Row, k: Row, _res: dict[tuple[Side, int], dict[Any, Any]]) -> Any:
            v = r[idx]
            if v is None:
                return None
            try:
                return step(v) if step is not None else conv(v)
            except ValueRefused as exc:
                raise RowError(exc.reason, map=name, side=t.value, table=table, key=k,
                               field=column, value=v, hint=exc.hint) from None

        return convert

    @staticmethod
    def _constant(value: Any) -> Callable[[Row, Row, dict[tuple[Side, int], dict[Any, Any]]],
                                          Any]:
        return lambda _r, _k, _res: value

    def _fast_transform(self, s: Side, t: Side, i: int, idx: int
                        ) -> Callable[[Row, Row, dict[tuple[Side, int], dict[Any, Any]]], Any]:
        """The per-row conversion of field ``i`` for the common shapes (a value map, a lookup
        on the target side, a coercion), falling back to :meth:`transform` — which raises
        the precise RowError — whenever the fast answer is missing."""
        f = self.bound.fields[i]
        src, dst = f.end(s), f.end(t)
        general = self.transform
        if src.is_lookup:
            return lambda r, k, res: general(s, i, r, k, res)
        vm = f.spec.values
        mapping = (vm.to_right if s is Side.LEFT else vm.to_left) if vm is not None else None
        kind = self.kinds[t][dst.column or ""]
        lookup_key = (t, -1 - i)
        if mapping is None and not dst.is_lookup:
            p = self.plan(s, t, src.column or "", dst.column or "", i)
            assert p.convert is not None  # a plain copy needing no conversion is no fixup
            return self._checked(t, idx, dst.column or "", p)
        # a lookup within the company is resolved by (the row's company, value)
        company = self._companies[(s, t)] if (t, i) in self.scoped else None

        def convert(r: Row, k: Row, res: dict[tuple[Side, int], dict[Any, Any]]) -> Any:
            v = r[idx]
            if v is None:
                return None
            if mapping is not None:
                found, v = mapping(v)
                if not found:
                    return general(s, i, r, k, res)
            if dst.is_lookup:
                if v is None:
                    return None
                ck = canonical(v) if company is None else (company(r), canonical(v))
                hit = res[lookup_key].get(ck, MISSING)
                return general(s, i, r, k, res) if hit is MISSING else hit
            return coerce(v, kind)

        return convert

    def _company_getter(self, s: Side, t: Side) -> Callable[[Row], Any]:
        """canonical(company) that a row of side ``s`` has on side ``t`` (coerced to the
        kind of ``t``'s company column, as the row builders write it)."""
        pos = self.company_pos[s]
        kind = self.kinds[t][self.company_cols[t][0]]
        if self.kinds[s][self.company_cols[s][0]] is kind:
            return lambda r: canonical(r[pos])
        return lambda r: canonical(coerce(r[pos], kind))

    def target_key(self, s: Side, row: Row) -> Row:
        """The key of ``row``'s twin on the other side, in that side's types."""
        fn = self._target_keys.get(s)
        if fn is None:
            t = s.other
            pairs = list(zip(self.key_idx[s], self.bound.key(t), strict=True))
            if all(self.kinds[s][self.columns[s][i]] is self.kinds[t][c] for i, c in pairs):
                getter = operator.itemgetter(*[i for i, _c in pairs])
                fn = (lambda r: getter(r)) if len(pairs) > 1 else (lambda r: (getter(r),))
            else:
                kinds = [(i, self.kinds[t][c]) for i, c in pairs]
                fn = lambda r: tuple(coerce(r[i], k) for i, k in kinds)  # noqa: E731
            self._target_keys[s] = fn
        return fn(row)

    # -- lookups the INSERT finds -------------------------------------------------------------
    def foldable(self, t: Side) -> dict[int, LookupTarget]:
        """Fields created into side ``t`` through a lookup that the INSERT itself may find
        (field -> where): one candidate table, no chain, no company, a natural key in a
        varchar or text column, the id of the lookup column's own kind, and the value read
        from a plain column of the other side. Others are resolved beforehand, as always."""
        got = self._foldable.get(t)
        if got is None:
            got = {}
            s = t.other
            for i in self.create_into[t]:
                f = self.bound.fields[i]
                src, dst = f.end(s), f.end(t)
                if not dst.is_lookup or src.is_lookup or src.column is None or \
                        (t, i) in self.scoped or len(dst.targets) != 1:
                    continue
                target = dst.targets[0]
                if target.next is not None or target.company is not None or \
                        target.key_kind is not Kind.STRING:
                    continue
                related = self.connectors[t].describe(target.table)
                id_col, key_col = related.column(target.id), related.column(target.key)
                if id_col is None or id_col.kind is not self.kinds[t][dst.column or ""]:
                    continue
                # the INSERT matches with SQL's `=`, the ordinary lookup by the exact text
                # too: only where the two agree (no padding CHAR(n), no case-blind citext)
                if key_col is None or key_col.facets.fixed or not \
                        key_col.facets.type_name.lower().startswith(("varchar", "text")):
                    continue
                got[i] = target
            self._foldable[t] = got
        return got

    def fold_keys(self, t: Side, row: Row) -> dict[int, str] | None:
        """The natural key each :meth:`foldable` field of ``row`` (a row of the other side)
        looks up on ``t``; a field whose value is None needs no lookup and is left out.
        None when some value is not text or not in its field's value map: that row takes
        the ordinary path, which converts the value or names the problem."""
        s = t.other
        out: dict[int, str] = {}
        for i in self.foldable(t):
            f = self.bound.fields[i]
            v = row[self.pos[s][f.end(s).column or ""]]
            if v is None:
                continue
            if f.spec.values is not None:
                found, v = self._mapped(s, f, v)
                if not found:
                    return None
                if v is None:
                    continue
            if type(v) is not str:
                return None
            out[i] = v
        return out

    # -- values ------------------------------------------------------------------------------
    def _prefetch(self, entries: Sequence[Entry], resolver: LookupResolver | None = None,
                  folded: Collection[tuple[Side, int]] = ()
                  ) -> dict[tuple[Side, int], dict[Any, Any]]:
        """Resolve, for the whole chunk, every lookup id read on either side to its natural
        key, and every natural key that will be written through a lookup to its id.
        ``resolver`` defaults to the differ's own (live transactions pass one that reads
        through their open branches, so rows created earlier in the transaction resolve).
        A ``folded`` (side, field)'s ids are left to the INSERT: the rows built from the
        answer hold the field's :class:`Folded` marker in their place."""
        resolver = resolver or self.resolver
        out: dict[tuple[Side, int], dict[Any, Any]] = {}
        for s, i, end, p in self._lookups_read:
            ids = {(e.left if s is Side.LEFT else e.right)[p]  # type: ignore[index]
                   for e in entries if (e.left if s is Side.LEFT else e.right) is not None}
            out[(s, i)] = resolver.to_keys(s, end.targets, ids)
        for t, i in self._lookups_written:
            s = t.other
            f = self.bound.fields[i]
            end_t = f.end(t)
            if (t, i) in folded:
                out[(t, -1 - i)] = _FoldedIds(Folded(i))
                continue
            scoped = (t, i) in self.scoped
            company = self._companies[(s, t)] if scoped else None
            keys: set[Any] = set()
            for e in entries:
                row = e.left if s is Side.LEFT else e.right
                if row is None:
                    continue
                v = self._logical(s, i, row, out)
                if v is MISSING or v is None or type(v) is RelatedKey:
                    continue  # transform names the problem
                v = self._mapped(s, f, v)[1] if f.spec.values else v
                keys.add((company(row), v) if company is not None else v)
            out[(t, -1 - i)] = resolver.to_ids(t, end_t.targets, keys, scoped=scoped)
        return out

    def _logical(self, s: Side, i: int, row: Row, resolved: dict[tuple[Side, int], dict[Any, Any]]
                 ) -> Any:
        """The value of field ``i`` on side ``s`` as the map speaks of it: the natural key for a
        lookup (``MISSING`` when the id does not resolve), the column value otherwise. A
        lookup found within the row's company that links to another company's row gives
        that row's :class:`RelatedKey` (equal to no plain value; transform refuses it)."""
        f = self.bound.fields[i]
        col = f.end(s).column
        if col is None:
            return f.spec.default
        v = row[self.pos[s][col]]
        if f.end(s).is_lookup and v is not None:
            found = resolved[(s, i)].get(canonical(v), MISSING)
            if type(found) is RelatedKey and (not found.scoped or canonical(found.company) ==
                                              canonical(row[self.company_pos[s]])):
                return found.key
            return found
        return v

    @staticmethod
    def _mapped(s: Side, f: BoundField, v: Any) -> tuple[bool, Any]:
        """Value map from side ``s`` towards the other side."""
        vm = f.spec.values
        if vm is None:
            return True, v
        return vm.to_right(v) if s is Side.LEFT else vm.to_left(v)

    def transform(self, s: Side, i: int, row: Row, key: Row,
                  resolved: dict[tuple[Side, int], dict[Any, Any]]) -> Any:
        """Field ``i``'s value written into the side opposite ``s``. Raises RowError naming the
        map, side, table, key, field and value when a lookup or value map has no answer."""
        t = s.other
        f = self.bound.fields[i]
        src_name = f.end(s).column or "none"
        v = self._logical(s, i, row, resolved)
        if v is MISSING:
            raw = row[self.pos[s][f.end(s).column or ""]]
            raise RowError(
                f"lookup {f.spec.ref(s)} does not resolve: no related row has id {raw!r}",
                map=self.bound.name, side=s.value, table=self.bound.table(s), key=key,
                field=src_name, value=raw, hint="create the related row, or correct the id",
                kind="lookup")
        if type(v) is RelatedKey:
            own = row[self.company_pos[s]]
            related = next(x.describe() for x in f.end(s).targets if x.scoped)
            raise RowError(
                f"lookup {f.spec.ref(s)} links this row of company {own!r} to the row of "
                f"company {v.company!r} with key {v.key!r}; a lookup resolves within the row's "
                "own company, so the other side cannot hold this link",
                map=self.bound.name, side=s.value, table=self.bound.table(s), key=key,
                field=src_name, value=row[self.pos[s][f.end(s).column or ""]],
                hint=f"link it to a row of {related} in company {own!r} (create that row "
                "first if it is missing)", kind="lookup")
        found, v = self._mapped(s, f, v)
        if not found:
            raise RowError(
                "value is not in the field's value map",
                map=self.bound.name, side=s.value, table=self.bound.table(s), key=key,
                field=src_name, value=self._logical(s, i, row, resolved),
                hint=f"add the value to `values:` of `{f.spec.text}`", kind="lookup")
        end_t = f.end(t)
        if end_t.is_lookup and v is not None:
            ids = resolved.get((t, -1 - i), {})
            scoped = (t, i) in self.scoped
            lk = (self._companies[(s, t)](row), canonical(v)) if scoped else canonical(v)
            vid = ids.get(lk, MISSING)
            if vid is MISSING:
                names = ", ".join(x.describe() for x in end_t.targets)
                within = f" in company {row[self.company_pos[s]]!r}" if scoped else ""
                raise RowError(
                    f"lookup {f.spec.ref(t)} does not resolve on the {t.value} side: no row of "
                    f"{names} has this value{within}",
                    map=self.bound.name, side=t.value, table=self.bound.table(t), key=key,
                    field=str(f.spec.ref(t)), value=v,
                    hint=f"create the related row on the {t.value} side first (sync the map "
                    "it belongs to), or correct the value", kind="lookup")
            return vid
        col = end_t.column
        return coerce(v, self.kinds[t][col]) if col else v

    def _partial_update(self, t: Side, skip: frozenset[int]
                        ) -> tuple[Callable[[Row, Row, dict[tuple[Side, int], dict[Any, Any]]],
                                            Row], list[str]]:
        """The row builder and columns of an update into ``t`` leaving out fields ``skip``."""
        got = self._partials.get((t, skip))
        if got is None:
            fields = [i for i in self.update_into[t] if i not in skip]
            got = self._partials[(t, skip)] = (
                self._compile(t.other, t, fields, company=False),
                [self.bound.fields[i].end(t).column or "" for i in fields])
        return got

    # -- rows for the write paths ------------------------------------------------------------
    def row_of(self, s: Side, values: Mapping[str, Any]) -> Row:
        """A row of side ``s`` as the builders read it (the map's read columns of ``s``, in
        order) from its column values; a column ``values`` lacks is None."""
        return tuple(values.get(c) for c in self.columns[s])

    def source_key(self, s: Side, row: Row) -> Row:
        """The key of ``row``, a row of side ``s``, in that side's own types."""
        return tuple(row[i] for i in self.key_idx[s])

    def row_of_key(self, s: Side, key: Sequence[Any]) -> Row:
        """A row of side ``s`` holding only ``key`` (its other columns None): enough for
        :meth:`target_key`."""
        row: list[Any] = [None] * len(self.columns[s])
        for i, v in zip(self.key_idx[s], key, strict=True):
            row[i] = v
        return tuple(row)

    def resolve(self, rows: Iterable[tuple[Side, Row | None]],
                resolver: LookupResolver | None = None,
                folded: Collection[tuple[Side, int]] = ()) -> Resolved:
        """Every lookup that building the twins of ``rows`` (each a row of its side; None
        rows are skipped) reads or writes, resolved for the whole batch: the ``resolved``
        the builders take. ``resolver`` and ``folded`` as for :meth:`_prefetch`."""
        entries = [Entry((), r, None) if s is Side.LEFT else Entry((), None, r)
                   for s, r in rows if r is not None]
        return self._prefetch(entries, resolver, folded)

    def create_values(self, t: Side, row: Row, resolved: Resolved, key: Row | None = None
                      ) -> Row:
        """The values (in :attr:`insert_columns` of ``t``) that create the twin of ``row``
        (a row of the other side) on ``t``. ``key``: the row's key, as errors name it
        (default: :meth:`source_key`). Raises RowError naming a value that cannot be
        written."""
        return self.build_create[t](row, self.source_key(t.other, row) if key is None
                                    else key, resolved)

    def live_values(self, t: Side, row: Row, resolved: Resolved, key: Row | None = None
                    ) -> Row:
        """The values (in :attr:`live_columns` of ``t``) a change of ``row`` (a row of the
        other side) writes into its twin on ``t``; as :meth:`create_values`."""
        return self.build_live[t](row, self.source_key(t.other, row) if key is None
                                  else key, resolved)

    def live_current(self, t: Side, row: Row) -> Row:
        """What ``row``, a row of side ``t``, holds in :attr:`live_columns` of ``t``: the
        values :meth:`live_values` are compared with."""
        return tuple(row[i] for i in self._live_pos[t])

    def locked_current(self, t: Side, row: Row) -> tuple[Row, Row]:
        """A row of side ``t`` read in :attr:`lock_columns` of ``t``: its key, and what it
        holds in :attr:`live_columns` (as :meth:`live_current`). Raw values: Python's ==
        already equates 5, 5.0 and Decimal('5.00')."""
        return tuple(row[:len(self.key_idx[t])]), tuple(row[i] for i in self._locked_live_pos[t])

    def keys_from_left(self, lkey: Sequence[Any]) -> dict[Side, Row]:
        """A row's key on each side, from its left key as the state store holds it (each
        value coerced to the left key column's kind first)."""
        left = tuple(coerce(v, self.kinds[Side.LEFT][c])
                     for v, c in zip(lkey, self.bound.key(Side.LEFT), strict=True))
        return {Side.LEFT: left,
                Side.RIGHT: self.target_key(Side.LEFT, self.row_of_key(Side.LEFT, left))}

    def terms(self, base: Side, key: Row, resolved: Resolved) -> Terms:
        """The map's rows in the terms of side ``base`` for the row of ``key`` (its key on
        ``base``), lookups as ``resolved`` answers them: see :class:`Terms`."""
        return Terms(self, base, key, resolved)

    # -- rows from a change log --------------------------------------------------------------
    def decoder(self, s: Side) -> Callable[[Mapping[str, Any]], Row]:
        """A function turning captured values of side ``s`` (a logged version, as JSON gave
        them) into a row of side ``s`` in its columns' kinds
        (:func:`dualwrite.model.conversion.from_log`); only kinds JSON cannot carry exactly
        are decoded. Built once per side."""
        fn = self._decoders.get(s)
        if fn is None:
            cols = self.columns[s]
            fix = [(i, f) for i, c in enumerate(cols)
                   if (f := from_log(self.cols[s][c])) is not None]

            def decode(values: Mapping[str, Any]) -> Row:
                row = [values.get(c) for c in cols]
                for i, f in fix:
                    if row[i] is not None:
                        row[i] = f(row[i])
                return tuple(row)

            fn = self._decoders[s] = decode
        return fn

    def key_decoders(self, s: Side
                     ) -> tuple[list[tuple[int, Callable[[Any], Any]]], list[Kind] | None]:
        """How a key of side ``s`` read from a change log becomes the source key (the
        decoders :meth:`decoder` applies to those columns, by position in the key) and the
        target key (None: the same values, the kinds agree; else the target kinds to coerce
        to, as :meth:`target_key` does). Built once per side."""
        got = self._key_decoders.get(s)
        if got is None:
            t = s.other
            cols = [self.cols[s][self.columns[s][i]] for i in self.key_idx[s]]
            src = [c.kind for c in cols]
            dst = [self.kinds[t][c] for c in self.bound.key(t)]
            keyfix = [(i, fn) for i, c in enumerate(cols) if (fn := from_log(c)) is not None]
            got = self._key_decoders[s] = (keyfix, None if src == dst else dst)
        return got


class Terms:
    """A map's rows in the terms of one side (``base``): each field's value as the base side's
    column holds it. A row of the other side is converted field by field as writing it into
    the base side would (lookups, value maps, defaults), fields that do not flow that way
    left out. What settling a resolved conflict compares and merges (see
    :mod:`dualwrite.engine.settle`)."""

    def __init__(self, d: CompiledMap, base: Side, key: Row, resolved: Resolved) -> None:
        self.d, self.base, self.key, self.resolved = d, base, key, resolved
        self.slots = [(i, d.pos[base][col]) for i, f in enumerate(d.bound.fields)
                      if (col := f.end(base).column) is not None]

    def fields(self, row: Row | None, side: Side) -> dict[int, Any] | None:
        """``row`` (a row of ``side``, or None) as field -> value in the base side's terms."""
        if row is None:
            return None
        if side is self.base:
            return {i: row[p] for i, p in self.slots}
        d = self.d
        return {i: d.transform(side, i, row, self.key, self.resolved) for i, _p in self.slots
                if d.bound.fields[i].spec.flows_to(self.base) or i in d.bound.key_fields}

    def row(self, fields: dict[int, Any] | None, current: Row | None) -> Row | None:
        """A base-side row (its read columns) holding ``fields``: the current row's other
        columns kept, its key as given."""
        if fields is None:
            return None
        d, base = self.d, self.base
        out = list(current) if current is not None else [None] * len(d.columns[base])
        for col, v in zip(d.bound.key(base), self.key, strict=True):
            out[d.pos[base][col]] = v
        for i, p in self.slots:
            if i in fields:
                out[p] = fields[i]
        return tuple(out)
