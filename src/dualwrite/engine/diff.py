"""Compare the two sides of a bound map, row by row, through the map.

The map's row builders are :class:`~dualwrite.engine.rows.CompiledMap`'s (one row builder for
every write path); :class:`MapDiffer` is that compiled map with the reading and comparing of
both sides added. Both sides are streamed in canonical key order and merge-joined
(:func:`merge`), so memory is bounded by the batch size, never by the table. A chunk of
merged entries is then classified (:meth:`MapDiffer.classify`): which rows must be created or
updated on which side, which are unchanged, which cannot be transformed (lookup or value-map
misses). Initial sync, plan and verify are three consumers of the same classification.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dualwrite.connectors.base import Connector, Row
from dualwrite.engine.lookups import RelatedKey
from dualwrite.engine.rows import MISSING, CompiledMap, Entry, Folded, coerce
from dualwrite.errors import RowError
from dualwrite.model import conversion
from dualwrite.model.binding import BoundMap
from dualwrite.model.filters import And, Compare, Expr, Literal, Or, Property
from dualwrite.model.maps import Side
from dualwrite.model.values import canonical, value_key

#: (side a row was created on, the row's merge key) -> {that side's column: digest of the
#: value the side filled itself, or None while not read back}; see :meth:`MapDiffer.classify`
CreatedDefaults = dict[tuple[Side, tuple[Any, ...]], dict[str, str | None]]


def digest(value: Any) -> str:
    """A short stable digest of a value as :func:`canonical` compares it (the state store
    keeps digests, not business values)."""
    return hashlib.blake2b(repr(canonical(value)).encode(), digest_size=16).hexdigest()


def key_digest(key: Row) -> str:
    return digest(tuple(key))


@dataclass
class FieldDiff:
    field: str
    left: Any
    right: Any


@dataclass
class Create:
    side: Side
    key: Row
    values: Row


@dataclass
class Update:
    side: Side
    key: Row
    target_key: Row
    values: Row
    diffs: list[FieldDiff]
    #: the target columns ``values`` are for, where not the map's whole update list (a row
    #: whose self-filled one-way fields keep their own side's value)
    columns: list[str] | None = None


@dataclass
class Failure:
    side: Side
    key: Row
    operation: str
    error: RowError
    payload: dict[str, Any] | None = None


@dataclass
class Classified:
    creates: dict[Side, list[Create]] = field(default_factory=lambda: {Side.LEFT: [],
                                                                        Side.RIGHT: []})
    updates: dict[Side, list[Update]] = field(default_factory=lambda: {Side.LEFT: [],
                                                                        Side.RIGHT: []})
    unchanged: int = 0
    failures: list[Failure] = field(default_factory=list)
    #: verify: keys whose compared fields differ, with every differing field
    differing: list[tuple[Row, list[FieldDiff]]] = field(default_factory=list)
    #: self-filled fields first seen since their row was created: (side, key, column, digest)
    adopted: list[tuple[Side, Row, str, str]] = field(default_factory=list)


def merge(left: Iterator[list[Row]], right: Iterator[list[Row]], lkey: Sequence[int],
          rkey: Sequence[int]) -> Iterator[Entry]:
    """Merge-join two streams of batches already sorted by canonical key."""

    def flat(batches: Iterator[list[Row]], idx: Sequence[int]
             ) -> Iterator[tuple[tuple[Any, ...], Row]]:
        if len(idx) == 1:
            (only,) = idx
            for batch in batches:
                for r in batch:
                    yield (canonical(r[only]),), r
            return
        for batch in batches:
            for r in batch:
                yield tuple([canonical(r[i]) for i in idx]), r

    li, ri = flat(left, lkey), flat(right, rkey)
    lcur = next(li, None)
    rcur = next(ri, None)
    while lcur is not None or rcur is not None:
        if rcur is None or (lcur is not None and lcur[0] < rcur[0]):
            assert lcur is not None
            yield Entry(tuple(lcur[1][i] for i in lkey), lcur[1], None)
            lcur = next(li, None)
        elif lcur is None or rcur[0] < lcur[0]:
            yield Entry(tuple(rcur[1][i] for i in rkey), None, rcur[1])
            rcur = next(ri, None)
        else:
            yield Entry(tuple(lcur[1][i] for i in lkey), lcur[1], rcur[1])
            lcur = next(li, None)
            rcur = next(ri, None)


class MapDiffer(CompiledMap):
    """A compiled map (:class:`~dualwrite.engine.rows.CompiledMap`: its row builders are the
    ones every write path uses) that also reads both sides of the map in key order and
    classifies merged entries (initial sync, plan and verify). Stateless between chunks but
    for the lookup cache."""

    def __init__(self, bound: BoundMap, connectors: dict[Side, Connector],
                 *, master: Side | None = None) -> None:
        super().__init__(bound, connectors, master=master)
        #: how each plain compared field's two values are judged the same (verify, initial
        #: sync): by the right column's kind, the left value converted first
        self.same = {i: conversion.comparator(self.cols[Side.LEFT][f.left.column or ""],
                                              self.cols[Side.RIGHT][f.right.column or ""],
                                              f.options)
                     for i, f in enumerate(bound.fields)
                     if f.compared and not f.left.is_lookup and not f.right.is_lookup}
        #: side -> one-way fields flowing out of that side only: a row that initial sync
        #: creates there gets their value from the side itself (a column default, a trigger)
        self.self_filled = {s: [i for i in self.compared if i not in bound.key_fields
                                and self.one_way_source.get(i) is s] for s in Side}
        self.self_filled_columns = {s: [bound.fields[i].end(s).column or ""
                                        for i in self.self_filled[s]] for s in Side}

    # -- streaming ---------------------------------------------------------------------------
    def entries(self, *, after: Row | None, batch_size: int) -> Iterator[Entry]:
        b = self.bound
        streams = {
            s: self.connectors[s].read(b.table(s), self.columns[s], key=b.key(s),
                                       where=b.filter(s), after=after, batch_size=batch_size)
            for s in Side}
        return merge(streams[Side.LEFT], streams[Side.RIGHT], self.key_idx[Side.LEFT],
                     self.key_idx[Side.RIGHT])

    def count(self, side: Side) -> int:
        return self.connectors[side].count(self.bound.table(side), where=self.bound.filter(side))

    def null_keys(self, side: Side) -> int:
        """How many rows inside ``side``'s filter have a null in a key column: no sync can
        pair or copy them (they are never read), so plan, sync and verify report them."""
        nullable = [c for c in self.bound.key(side) if self.cols[side][c].nullable]
        if not nullable:
            return 0  # a primary key: the database holds no nulls there
        cond: Expr = Compare("eq", Property(nullable[0]), Literal(None))
        for c in nullable[1:]:
            cond = Or(cond, Compare("eq", Property(c), Literal(None)))
        where = self.bound.filter(side)
        return self.connectors[side].count(self.bound.table(side),
                                           where=cond if where is None else And(where, cond))

    def null_key_warning(self, side: Side, n: int) -> str:
        """What to tell the user about ``n`` rows of ``side`` without a key."""
        key = self.bound.key(side)
        table = self.bound.table(side)
        cols = " or ".join(key)
        excl = " and ".join(f"{c} ne null" for c in key if self.cols[side][c].nullable)
        return (f"{n:,} row(s) of {table} ({side.value}) have no key ({cols} is null): no "
                f"sync can pair or copy them, so they are left out; give them a key, or leave "
                f"them out explicitly with the map's {side.value} filter (`{excl}`)")

    def _equal(self, i: int, lv: Any, rv: Any) -> bool:
        f = self.bound.fields[i]
        if lv is MISSING or rv is MISSING:
            return False
        if i in self.scoped_fields and (type(lv) is RelatedKey or type(rv) is RelatedKey):
            # a row linked to another company's row: equal only to a link to that same row
            return type(lv) is type(rv) and (canonical(lv.company), canonical(lv.key)) == \
                (canonical(rv.company), canonical(rv.key))
        if f.spec.values is not None:
            found, back = f.spec.values.to_left(rv)
            return found and value_key(back) == value_key(lv)
        same = self.same.get(i)
        if same is not None:
            return same(lv, rv)
        if isinstance(lv, str) and isinstance(rv, str):
            return lv == rv
        return bool(canonical(lv) == canonical(rv))

    def _shown(self, s: Side, i: int, row: Row, v: Any) -> Any:
        """Field ``i``'s value on side ``s`` as a difference names it: the raw id of a lookup
        that does not resolve; for a lookup found within the company, the whole natural key,
        ``G10 (company demf)``, so that a link to another company's row reads as such."""
        if v is MISSING:
            return row[self.pos[s][self.bound.fields[i].end(s).column or ""]]
        if i in self.scoped_fields and v is not None:
            if type(v) is RelatedKey:
                return str(v)
            return str(RelatedKey(row[self.company_pos[s]], v))
        return v

    def _self_filled(self, s: Side, i: int, row: Row | None, key: Row,
                     filled: dict[str, str | None], out: Classified) -> bool:
        """Whether field ``i`` of ``row`` (side ``s``, its source) still holds the value its
        side filled in when initial sync created the row; a value not read back yet is
        adopted as that value."""
        col = self.bound.fields[i].end(s).column or ""
        if row is None or col not in filled:
            return False
        now = digest(row[self.pos[s][col]])
        if filled[col] is None:
            out.adopted.append((s, key, col, now))
            return True
        return filled[col] == now

    # -- classification ----------------------------------------------------------------------
    def classify(self, entries: Sequence[Entry], *, report_all: bool = False,
                 created: CreatedDefaults | None = None) -> Classified:
        """Decide what each entry needs. With ``report_all`` (verify) every differing compared
        field is reported, whatever the directions and master say.

        ``created`` names the one-way fields that a row created by initial sync got from its
        own side (:attr:`self_filled`). Such a field is not compared while it still holds
        the value it got then (digest equal, or not read back yet): that value is the
        side's default, not a value its source has to give, so the other side keeps its
        own. Once the source changes it, it flows as the map says."""
        out = Classified()
        resolved = self._prefetch(entries)
        for e in entries:
            if e.left is None or e.right is None:
                s = Side.LEFT if e.left is not None else Side.RIGHT
                row = e.left if e.left is not None else e.right
                assert row is not None
                t = s.other
                try:
                    vals = self.build_create[t](row, e.key, resolved)
                except RowError as err:
                    out.failures.append(Failure(t, e.key, "create", err,
                                                dict(zip(self.columns[s], row, strict=True))))
                    continue
                out.creates[t].append(Create(t, e.key, vals))
                continue
            rows = {Side.LEFT: e.left, Side.RIGHT: e.right}
            diffs: dict[int, FieldDiff] = {}
            filled: dict[Side, dict[str, str | None]] = {}
            kept: set[int] = set()  # self-filled fields left out of this row's updates
            if created:
                k = tuple(e.key)
                for s in Side:
                    got = created.get((s, k))
                    if got:
                        filled[s] = got
            for i in self.compared:
                lv = self._logical(Side.LEFT, i, e.left, resolved)
                rv = self._logical(Side.RIGHT, i, e.right, resolved)
                src = self.one_way_source.get(i)
                if (src is Side.LEFT and lv is None) or (src is Side.RIGHT and rv is None):
                    # A one-way field with nothing at its source is not compared: initial
                    # sync never erases the target's value with nothing (a row created from
                    # the other side has no value to give).
                    continue
                if src is not None and src in filled and self._self_filled(
                        src, i, rows[src], e.key, filled[src], out):
                    kept.add(i)
                    continue
                if not self._equal(i, lv, rv):
                    diffs[i] = FieldDiff(self.bound.fields[i].spec.text,
                                         self._shown(Side.LEFT, i, e.left, lv),
                                         self._shown(Side.RIGHT, i, e.right, rv))
            if report_all:
                if diffs:
                    out.differing.append((e.key, list(diffs.values())))
                else:
                    out.unchanged += 1
                continue
            changed = False
            for t in Side:
                s = t.other
                todo = [i for i in self.update_into[t] if i in diffs]
                if not todo:
                    continue
                changed = True
                skip = kept.intersection(self.update_into[t])
                build, columns = (self.build_update[t], None) if not skip else \
                    self._partial_update(t, frozenset(skip))
                try:
                    vals = build(rows[s], e.key, resolved)
                except RowError as err:
                    out.failures.append(Failure(t, e.key, "update", err))
                    continue
                trow = rows[t]
                assert trow is not None
                tkey = tuple(trow[i] for i in self.key_idx[t])
                out.updates[t].append(Update(t, e.key, tkey, vals, [diffs[i] for i in todo],
                                             columns))
            if not changed:
                out.unchanged += 1
        return out


__all__ = ["Classified", "CompiledMap", "Create", "CreatedDefaults", "Entry", "Failure",
           "FieldDiff", "Folded", "MapDiffer", "Update", "coerce", "digest", "key_digest",
           "merge"]
