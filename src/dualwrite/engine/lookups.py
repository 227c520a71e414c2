"""Lookup resolution in batches, with a bounded cache.

A lookup column stores the id of a related row; the map speaks of that row's natural key.
``to_ids`` turns natural keys into ids on a side (for writing), ``to_keys`` turns ids into
natural keys (for comparing and for writing to the other side). Polymorphic lookups try each
candidate table in the order the map lists them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dualwrite.connectors.base import Connector, WriteSession
from dualwrite.model.binding import LookupTarget
from dualwrite.model.maps import Side
from dualwrite.model.values import canonical

#: entries kept per (side, table, column) cache before it is dropped; bounds memory on huge
#: related tables while keeping small reference tables (currencies, groups) fully cached
CACHE_LIMIT = 200_000


class SessionLookups:
    """Lets a LookupResolver read through an open write session, so that it sees the
    transaction's own rows (live transactions, the capture applier)."""

    def __init__(self, session: WriteSession) -> None:
        self.session = session

    def lookup(self, table: str, match: str, values: Iterable[Any], returning: str
               ) -> dict[Any, Any]:
        return self.session.lookup(table, match, values, returning)


class LookupResolver:
    def __init__(self, connectors: dict[Side, Connector]) -> None:
        self.connectors = connectors
        self._cache: dict[tuple[Side, str, str, str], dict[Any, Any]] = {}
        self._misses: dict[tuple[Side, str, str, str], set[Any]] = {}
        self.queries = 0

    def _resolve(self, side: Side, table: str, match: str, returning: str,
                 values: Iterable[Any]) -> dict[Any, Any]:
        ck = (side, table, match, returning)
        cache = self._cache.setdefault(ck, {})
        misses = self._misses.setdefault(ck, set())
        want = {}
        for v in values:
            if v is None:
                continue
            c = canonical(v)
            if c not in cache and c not in misses:
                want[c] = v
        if want:
            if len(cache) + len(want) > CACHE_LIMIT:
                cache.clear()
                misses.clear()
            self.queries += 1
            found = self.connectors[side].lookup(table, match, want.values(), returning)
            cache.update(found)
            misses.update(k for k in want if k not in found)
        return cache

    def to_ids(self, side: Side, targets: tuple[LookupTarget, ...], keys: Iterable[Any]
               ) -> dict[Any, Any]:
        """canonical(natural key) -> id, trying each candidate table in order."""
        pending = {canonical(k): k for k in keys if k is not None}
        out: dict[Any, Any] = {}
        for t in targets:
            if not pending:
                break
            if t.next is not None:
                # chained: natural key -> id one table further -> the row here pointing at it
                inner = self.to_ids(side, (t.next,), pending.values())
                cache = self._resolve(side, t.table, t.key, t.id, inner.values())
                for c in list(pending):
                    if c in inner and canonical(inner[c]) in cache:
                        out[c] = cache[canonical(inner[c])]
                        del pending[c]
                continue
            cache = self._resolve(side, t.table, t.key, t.id, pending.values())
            for c in list(pending):
                if c in cache:
                    out[c] = cache[c]
                    del pending[c]
        return out

    def to_keys(self, side: Side, targets: tuple[LookupTarget, ...], ids: Iterable[Any]
                ) -> dict[Any, Any]:
        """canonical(id) -> natural key, trying each candidate table in order."""
        pending = {canonical(i): i for i in ids if i is not None}
        out: dict[Any, Any] = {}
        for t in targets:
            if not pending:
                break
            cache = self._resolve(side, t.table, t.id, t.key, pending.values())
            if t.next is not None:
                # chained: the column here holds an id of the next table; follow it
                inner = self.to_keys(side, (t.next,), [cache[c] for c in pending if c in cache])
                for c in list(pending):
                    if c in cache and canonical(cache[c]) in inner:
                        out[c] = inner[canonical(cache[c])]
                        del pending[c]
                continue
            for c in list(pending):
                if c in cache:
                    out[c] = cache[c]
                    del pending[c]
        return out

    def forget(self) -> None:
        """Drop cached resolutions (the related tables may have changed)."""
        self._cache.clear()
        self._misses.clear()
