"""Lookup resolution in batches, with a bounded cache.

A lookup column stores the id of a related row; the map speaks of that row's natural key.
``to_ids`` turns natural keys into ids on a side (for writing), ``to_keys`` turns ids into
natural keys (for comparing and for writing to the other side). Polymorphic lookups try each
candidate table in the order the map lists them.

A target with a company column (:attr:`LookupTarget.scoped`) has the natural key (company,
key): ``to_ids`` is then given (company, key) pairs and finds each row within its company,
and ``to_keys`` answers :class:`RelatedKey` values that carry the related row's company.
Either way one query per table and batch, whatever the number of rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dualwrite.connectors.base import Row, WriteSession
from dualwrite.model.binding import LookupTarget
from dualwrite.model.maps import Side
from dualwrite.model.values import canonical

#: entries kept per (side, table, column) cache before it is dropped; bounds memory on huge
#: related tables while keeping small reference tables (currencies, groups) fully cached
CACHE_LIMIT = 200_000


class LookupSource(Protocol):
    """What resolving reads: a connector, or an open write session (:class:`SessionLookups`)."""

    def lookup(self, table: str, match: str, values: Iterable[Any], returning: str
               ) -> dict[Any, Any]: ...

    def fetch(self, table: str, columns: Sequence[str], *, key: Sequence[str],
              keys: Sequence[Row]) -> list[Row]: ...


class SessionLookups:
    """Lets a LookupResolver read through an open write session, so that it sees the
    transaction's own rows (live transactions, the capture applier)."""

    def __init__(self, session: WriteSession) -> None:
        self.session = session

    def lookup(self, table: str, match: str, values: Iterable[Any], returning: str
               ) -> dict[Any, Any]:
        return self.session.lookup(table, match, values, returning)

    def fetch(self, table: str, columns: Sequence[str], *, key: Sequence[str],
              keys: Sequence[Row]) -> list[Row]:
        return self.session.fetch(table, columns, key=key, keys=keys)


@dataclass(frozen=True)
class RelatedKey:
    """The natural key of a row found through a lookup whose values are (company, key):
    ``company`` is the related row's company, or None (``scoped`` False) for a candidate
    table of a polymorphic lookup that has no company."""

    company: Any
    key: Any
    scoped: bool = True

    def __str__(self) -> str:
        return f"{self.key} (company {self.company})" if self.scoped else str(self.key)


class LookupResolver:
    def __init__(self, connectors: Mapping[Side, LookupSource]) -> None:
        self.connectors = connectors
        self._cache: dict[tuple[Side, str, tuple[str, ...], tuple[str, ...]],
                          dict[Any, Any]] = {}
        self._misses: dict[tuple[Side, str, tuple[str, ...], tuple[str, ...]], set[Any]] = {}
        self.queries = 0

    def _resolve(self, side: Side, table: str, match: tuple[str, ...],
                 returning: tuple[str, ...], values: Iterable[Any]) -> dict[Any, Any]:
        """The cache of ``match`` -> ``returning`` in ``table``, holding ``values``' answers.
        With several ``match`` columns each value is a tuple and the cache is keyed by the
        tuple of canonical forms; with several ``returning`` columns the answers are tuples."""
        ck = (side, table, match, returning)
        cache = self._cache.setdefault(ck, {})
        misses = self._misses.setdefault(ck, set())
        composite = len(match) > 1
        want = {}
        for v in values:
            if v is None or (composite and None in v):
                continue
            c = tuple([canonical(x) for x in v]) if composite else canonical(v)
            if c not in cache and c not in misses:
                want[c] = v
        if want:
            if len(cache) + len(want) > CACHE_LIMIT:
                cache.clear()
                misses.clear()
            self.queries += 1
            if composite or len(returning) > 1:
                found = self._fetch(side, table, match, returning, list(want.values()))
            else:
                found = self.connectors[side].lookup(table, match[0], want.values(),
                                                     returning[0])
            cache.update(found)
            misses.update(k for k in want if k not in found)
        return cache

    def _fetch(self, side: Side, table: str, match: tuple[str, ...],
               returning: tuple[str, ...], values: list[Any]) -> dict[Any, Any]:
        """As the connectors' ``lookup`` (the first match in ``returning`` order wins), for
        several match or returning columns."""
        n = len(match)
        keys = [tuple(v) for v in values] if n > 1 else [(v,) for v in values]
        rows = self.connectors[side].fetch(table, [*match, *returning], key=list(match),
                                           keys=keys)
        rows.sort(key=lambda r: tuple([(x is not None, canonical(x)) for x in r[n:]]))
        found: dict[Any, Any] = {}
        for r in rows:
            m = tuple([canonical(x) for x in r[:n]]) if n > 1 else canonical(r[0])
            found.setdefault(m, tuple(r[n:]) if len(returning) > 1 else r[n])
        return found

    # -- natural keys -> ids -------------------------------------------------------------------
    def to_ids(self, side: Side, targets: tuple[LookupTarget, ...], keys: Iterable[Any],
               *, scoped: bool = False) -> dict[Any, Any]:
        """canonical(natural key) -> id, trying each candidate table in order.

        With ``scoped`` (the endpoint's :attr:`Endpoint.scoped`) each key is a (company, key)
        pair and the answer is keyed by ``(canonical(company), canonical(key))``: a candidate
        table with a company column is searched within that company, one without it by the
        key alone."""
        if scoped:
            pending = {(canonical(c), canonical(k)): (c, k) for c, k in keys if k is not None}
        else:
            pending = {canonical(k): k for k in keys if k is not None}
        out: dict[Any, Any] = {}
        for t in targets:
            if not pending:
                break
            for ck, found in self._ids_in(side, t, pending, scoped).items():
                out[ck] = found
                del pending[ck]
        return out

    def _ids_in(self, side: Side, t: LookupTarget, pending: dict[Any, Any], scoped: bool
                ) -> dict[Any, Any]:
        """The ids of ``t.table``'s rows for the pending natural keys (keyed as given)."""
        if t.next is not None:
            # chained: natural key -> id one table further -> the row here pointing at it
            inner = self._ids_in(side, t.next, pending, scoped)
            cache = self._resolve(side, t.table, (t.key,), (t.id,), inner.values())
            return {ck: cache[c] for ck, nid in inner.items() if (c := canonical(nid)) in cache}
        if t.company is not None:
            cache = self._resolve(side, t.table, (t.company, t.key), (t.id,), pending.values())
            return {ck: cache[ck] for ck in pending if ck in cache}
        if scoped:  # a candidate without a company, in a lookup by (company, key)
            cache = self._resolve(side, t.table, (t.key,), (t.id,),
                                  [v[1] for v in pending.values()])
            return {ck: cache[ck[1]] for ck in pending if ck[1] in cache}
        cache = self._resolve(side, t.table, (t.key,), (t.id,), pending.values())
        return {ck: cache[ck] for ck in pending if ck in cache}

    # -- ids -> natural keys -------------------------------------------------------------------
    def to_keys(self, side: Side, targets: tuple[LookupTarget, ...], ids: Iterable[Any]
                ) -> dict[Any, Any]:
        """canonical(id) -> natural key, trying each candidate table in order. Where a
        candidate is :attr:`LookupTarget.scoped`, every answer is a :class:`RelatedKey`."""
        pending = {canonical(i): i for i in ids if i is not None}
        scoped = any(t.scoped for t in targets)
        out: dict[Any, Any] = {}
        for t in targets:
            if not pending:
                break
            found = self._keys_in(side, t, pending)
            for c, key in found.items():
                if not scoped:
                    out[c] = key
                elif t.scoped:
                    out[c] = RelatedKey(key[0], key[1])
                else:
                    out[c] = RelatedKey(None, key, scoped=False)
                del pending[c]
        return out

    def _keys_in(self, side: Side, t: LookupTarget, pending: dict[Any, Any]) -> dict[Any, Any]:
        """canonical(id) -> the natural key (a (company, key) tuple where ``t`` is scoped)
        of ``t.table``'s rows with the pending ids."""
        if t.next is not None:
            # chained: the column here holds an id of the next table; follow it
            cache = self._resolve(side, t.table, (t.id,), (t.key,), pending.values())
            hop = {c: cache[c] for c in pending if c in cache and cache[c] is not None}
            inner = self._keys_in(side, t.next, {canonical(n): n for n in hop.values()})
            return {c: inner[cn] for c, n in hop.items() if (cn := canonical(n)) in inner}
        returning = (t.company, t.key) if t.company is not None else (t.key,)
        cache = self._resolve(side, t.table, (t.id,), returning, pending.values())
        return {c: cache[c] for c in pending if c in cache}

    def forget(self) -> None:
        """Drop cached resolutions (the related tables may have changed)."""
        self._cache.clear()
        self._misses.clear()


class _Planned:
    """The id a lookup gets for a row that plan predicts an earlier map would create (plan
    writes nothing, so the row has no id yet)."""

    def __repr__(self) -> str:
        return "<planned row>"


PLANNED_ID = _Planned()


class PlannedRows:
    """Rows that plan predicts the maps before this one (in ``depends_on`` order) would
    create, indexed by the columns lookups find rows by: ``(side, table, columns)`` -> the
    canonical values of those columns. Only the columns some lookup matches on are kept."""

    def __init__(self, targets: Iterable[tuple[Side, LookupTarget]]) -> None:
        self._wanted: dict[tuple[Side, str], set[tuple[str, ...]]] = {}
        for side, target in targets:
            hop: LookupTarget | None = target
            while hop is not None:
                # a hop is found by its key, within the company where it has one; a
                # candidate without a company may also be asked by the key alone
                for match in ((hop.key,), (hop.company, hop.key) if hop.company else None):
                    if match is not None:
                        self._wanted.setdefault((side, hop.table.lower()), set()).add(
                            tuple(c.lower() for c in match))
                hop = hop.next
        self._index: dict[tuple[Side, str, tuple[str, ...]], set[Any]] = {}

    def add(self, side: Side, table: str, columns: Sequence[str], rows: Iterable[Row]) -> None:
        """Note rows that would be created in ``table`` on ``side`` (values in ``columns``'
        order)."""
        wanted = self._wanted.get((side, table.lower()))
        if not wanted:
            return
        pos = {c.lower(): i for i, c in enumerate(columns)}
        matches = [(m, [pos[c] for c in m]) for m in wanted if all(c in pos for c in m)]
        if not matches:
            return
        rows = list(rows)
        for match, idx in matches:
            index = self._index.setdefault((side, table.lower(), match), set())
            if len(idx) == 1:
                (only,) = idx
                index.update(canonical(r[only]) for r in rows)
            else:
                index.update(tuple([canonical(r[i]) for i in idx]) for r in rows)

    def find(self, side: Side, table: str, match: Sequence[str]) -> set[Any]:
        """The canonical values (tuples for several columns) of the planned rows."""
        return self._index.get((side, table.lower(), tuple(c.lower() for c in match)), set())


class PlannedLookups(LookupResolver):
    """A resolver for plan: a natural key that no row has yet but that an earlier map's
    planned creates have resolves to :data:`PLANNED_ID`, as it will once sync has run
    those maps first."""

    def __init__(self, connectors: Mapping[Side, LookupSource], planned: PlannedRows) -> None:
        super().__init__(connectors)
        self.planned = planned

    def _resolve(self, side: Side, table: str, match: tuple[str, ...],
                 returning: tuple[str, ...], values: Iterable[Any]) -> dict[Any, Any]:
        values = list(values)
        cache = super()._resolve(side, table, match, returning, values)
        planned = self.planned.find(side, table, match)
        if not planned:
            return cache
        composite = len(match) > 1
        answer = PLANNED_ID if len(returning) == 1 else (PLANNED_ID,) * len(returning)
        for v in values:
            if v is None or (composite and None in v):
                continue
            c = tuple([canonical(x) for x in v]) if composite else canonical(v)
            if c not in cache and c in planned:
                cache[c] = answer
        return cache
