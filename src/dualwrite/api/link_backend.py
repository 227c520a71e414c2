"""The OData backend over a dualwrite link: reads through the connectors, writes through
live transactions (every change set is one atomic, dual-written transaction)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from dualwrite.api.backend import WriteOp
from dualwrite.api.errors import PreconditionFailed
from dualwrite.api.payload import etag_matches, etag_of
from dualwrite.engine.delta import ChangeFeed, DeltaPage
from dualwrite.engine.link import Link
from dualwrite.engine.security import Principal, authenticate
from dualwrite.errors import ConfigError, DualwriteError
from dualwrite.model.filters import Expr
from dualwrite.model.maps import Side
from dualwrite.model.schema import ForeignKey, TableSchema


class LinkBackend:
    """Implements :class:`dualwrite.api.backend.ODataBackend` for a :class:`Link`, and
    :class:`dualwrite.api.backend.ChangeTracking` over its :class:`ChangeFeed`.

    An environment exposes the tables its maps use (both the mapped tables and the tables
    their lookups point to) plus those listed under ``serve.expose`` in the config.
    """

    def __init__(self, link: Link) -> None:
        self.link = link
        self._sides = {link.env_name(s): s for s in Side}
        #: per environment: the tables it exposes, and the maps (validated list) they were
        #: read from
        self._tables: dict[str, tuple[object, list[str]]] = {}
        self.feed = ChangeFeed(link)

    def _side(self, env: str) -> Side:
        try:
            return self._sides[env]
        except KeyError:
            raise ConfigError(f"no environment named {env!r}",
                              hint=f"use one of {', '.join(self._sides)}",
                              code="DW203") from None

    def environments(self) -> list[str]:
        return list(self._sides)

    def _table_names(self, env: str) -> list[str]:
        # the link keeps its validated maps in one list until they change (a map reloaded,
        # a table described anew): a new list, new tables
        bound = self.link.validate()[0]
        cached = self._tables.get(env)
        if cached is not None and cached[0] is bound:
            return cached[1]
        side = self._side(env)
        names: list[str] = []
        for b in self.link.bound_maps():
            names.append(b.table(side))
            for f in b.fields:
                names += [t.table for t in f.end(side).targets]
        names += self.link.config.model.serve.expose.get(env, [])
        tables = sorted(set(names), key=names.index)
        self._tables[env] = (bound, tables)
        return tables

    def model_version(self, env: str) -> tuple[object, ...]:
        # The validated maps (a new list when they change) and each exposed table's schema
        # as the connector keeps it (a new object when described anew): what entity_sets
        # and alternate_keys read.
        conn = self.link.connectors[self._side(env)]
        return (self.link.validate()[0], *(conn.describe(t) for t in self._table_names(env)))

    def entity_sets(self, env: str) -> list[TableSchema]:
        """The tables, each with the lookups the maps make from it among its foreign keys
        (so that the OData model publishes them as navigation properties)."""
        side = self._side(env)
        conn = self.link.connectors[side]
        out = []
        for table in self._table_names(env):
            schema = conn.describe(table)
            fks = list(schema.foreign_keys)
            for b in self.link.bound_maps():
                if b.table(side) != table:
                    continue
                for f in b.fields:
                    end = f.end(side)
                    if end.column is None or len(end.targets) != 1 or \
                            end.targets[0].next is not None:
                        continue  # polymorphic and chained lookups are not navigations
                    fk = ForeignKey((end.column,), end.targets[0].table, (end.targets[0].id,))
                    if fk not in fks:
                        fks.append(fk)
            out.append(dataclasses.replace(schema, foreign_keys=fks))
        return out

    def alternate_keys(self, env: str, table: str) -> list[tuple[str, ...]]:
        side = self._side(env)
        schema = self.link.connectors[side].describe(table)
        keys = [u for u in schema.unique if u and u != schema.primary_key]
        for b in self.link.bound_maps():
            k = b.key(side)
            if b.table(side) == table and k != schema.primary_key and k not in keys:
                keys.append(k)
        return keys

    def query(self, env: str, table: str, *, columns: Sequence[str] | None, where: Expr | None,
              order_by: Sequence[tuple[str, bool]], limit: int | None, offset: int
              ) -> list[dict[str, Any]]:
        conn = self.link.connectors[self._side(env)]
        cols = list(columns or conn.describe(table).columns)
        rows = conn.query(table, cols, where=where, order_by=order_by, limit=limit,
                          offset=offset)
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def count(self, env: str, table: str, *, where: Expr | None) -> int:
        return self.link.connectors[self._side(env)].count(table, where=where)

    def get(self, env: str, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        conn = self.link.connectors[self._side(env)]
        cols = list(conn.describe(table).columns)
        rows = conn.fetch(table, cols, key=list(key), keys=[tuple(key.values())])
        return dict(zip(cols, rows[0], strict=True)) if rows else None

    def apply(self, env: str, principal: Principal, ops: Sequence[WriteOp]
              ) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        index = 0
        try:
            with self.link.transaction(principal=principal) as tx:
                for i, op in enumerate(ops):
                    index = i  # which op failed, for the batch response
                    op = op.resolved(out, self.link.connectors[self._side(env)]
                                     .describe(op.table).primary_key)
                    if op.if_match is not None and op.key is not None:
                        current = tx.get(env, op.table, op.key)
                        schema = self.link.connectors[self._side(env)].describe(op.table)
                        if current is None or not etag_matches(op.if_match,
                                                               etag_of(schema, current)):
                            raise PreconditionFailed(
                                f"the entity of {op.table!r} with key {op.key!r} changed "
                                "since it was read (If-Match does not match)")
                    if op.kind == "create":
                        out.append(tx.create(env, op.table, dict(op.values)))
                    elif op.kind in ("update", "replace"):
                        assert op.key is not None
                        values = {k: v for k, v in op.values.items() if k not in op.key}
                        out.append(tx.update(env, op.table, op.key, values))
                    else:
                        assert op.key is not None
                        tx.delete(env, op.table, op.key)
                        out.append(None)
        except DualwriteError as exc:
            exc.op_index = index  # type: ignore[attr-defined]
            raise
        return out

    def track_changes(self, env: str, table: str, key: Sequence[str]) -> str | None:
        return self.feed.start(self._side(env), table, key)

    def changes_since(self, env: str, table: str, key: Sequence[str], position: str,
                      limit: int) -> DeltaPage:
        return self.feed.read(self._side(env), table, key, position, limit)

    def authenticate(self, token: str) -> Principal | None:
        return authenticate(self.link.state, token)

    def refused(self, principal: Principal, environment: str | None, request: str,
                needed: str, reason: str) -> None:
        self.link.state.add_refusal(principal.name, request, needed, reason,
                                    token_id=principal.token_id, environment=environment)
