"""An in-memory :class:`ODataBackend` for testing the OData layer on its own.

Tables are lists of dicts keyed by :class:`TableSchema`. ``query`` evaluates the filter AST with
:func:`dualwrite.model.filters.evaluate`; ``apply`` is atomic (copy every table, apply all ops,
swap the copy in only if every op succeeded) and raises the errors the engine raises:
``ConstraintViolation`` for NOT NULL / unique violations, ``RowNotFound`` for a missing row,
``PreconditionFailed`` when ``if_match`` no longer matches, ``LicenceError`` for a restricted
table. Each error carries ``op_index``. Every ``apply`` call is recorded in ``apply_calls``,
every refused request in ``refusals``.
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from dualwrite.api.backend import Principal, WriteOp
from dualwrite.api.errors import PreconditionFailed
from dualwrite.api.payload import etag_matches, etag_of
from dualwrite.errors import (
    ConstraintViolation,
    DualwriteError,
    LicenceError,
    RowError,
    RowNotFound,
)
from dualwrite.model.filters import Expr, evaluate
from dualwrite.model.schema import Kind, TableSchema
from dualwrite.model.values import canonical


class FakeBackend:
    """Environments of in-memory tables, bearer tokens and restricted tables."""

    def __init__(self) -> None:
        self.schemas: dict[str, dict[str, TableSchema]] = {}
        self.alternates: dict[tuple[str, str], list[tuple[str, ...]]] = {}
        self.data: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.tokens: dict[str, Principal] = {}
        self.licences: dict[tuple[str, str], str] = {}
        self.apply_calls: list[list[WriteOp]] = []
        self.refusals: list[dict[str, Any]] = []
        self.queries: list[dict[str, Any]] = []
        self.fail_next_apply: DualwriteError | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ setup

    def add_table(self, env: str, schema: TableSchema, rows: Iterable[dict[str, Any]] = (),
                  *, alternate_keys: Sequence[tuple[str, ...]] = (),
                  licence: str | None = None) -> None:
        self.schemas.setdefault(env, {})[schema.name] = schema
        self.data.setdefault(env, {})[schema.name] = [
            {c: r.get(c) for c in schema.columns} for r in rows]
        self.alternates[(env, schema.name)] = list(alternate_keys)
        if licence:
            self.licences[(env, schema.name)] = licence

    def rows(self, env: str, table: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self.data[env][table])

    # ------------------------------------------------------------------ protocol

    def environments(self) -> list[str]:
        return list(self.schemas)

    def entity_sets(self, env: str) -> list[TableSchema]:
        return list(self.schemas[env].values())

    def alternate_keys(self, env: str, table: str) -> list[tuple[str, ...]]:
        return list(self.alternates.get((env, table), []))

    def model_version(self, env: str) -> tuple[object, ...]:
        # tests change the tables between requests: the model is built for every request
        return (object(),)

    def query(self, env: str, table: str, *, columns: Sequence[str] | None, where: Expr | None,
              order_by: Sequence[tuple[str, bool]], limit: int | None,
              offset: int) -> list[dict[str, Any]]:
        self.queries.append({"env": env, "table": table, "columns": columns, "where": where,
                             "order_by": list(order_by), "limit": limit, "offset": offset})
        schema = self.schemas[env][table]
        for name in where.properties() if where is not None else ():
            if name not in schema.columns:  # the layer must pass real column names only
                raise AssertionError(f"query names unknown column {name!r}")
        rows = [r for r in self.data[env][table] if where is None or evaluate(where, r)]
        for column, descending in reversed(list(order_by)):
            rows.sort(key=_sort_key(column), reverse=descending)
        rows = rows[offset:]
        if limit is not None:
            rows = rows[:limit]
        if columns is not None:
            rows = [{c: r[c] for c in columns} for r in rows]
        return copy.deepcopy(rows)

    def count(self, env: str, table: str, *, where: Expr | None) -> int:
        return sum(1 for r in self.data[env][table] if where is None or evaluate(where, r))

    def get(self, env: str, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        schema = self.schemas[env][table]
        assert set(key) == set(schema.primary_key), key
        row = _find(self.data[env][table], key)
        return copy.deepcopy(row) if row is not None else None

    def authenticate(self, token: str) -> Principal | None:
        return self.tokens.get(token)

    def refused(self, principal: Principal, environment: str | None, request: str,
                needed: str, reason: str) -> None:
        self.refusals.append({"principal": principal.name, "environment": environment,
                              "request": request, "needed": needed, "reason": reason})

    def apply(self, env: str, principal: Principal,
              ops: Sequence[WriteOp]) -> list[dict[str, Any] | None]:
        with self._lock:
            self.apply_calls.append(list(ops))
            if self.fail_next_apply is not None:
                exc, self.fail_next_apply = self.fail_next_apply, None
                raise exc
            tables = copy.deepcopy(self.data[env])
            results: list[dict[str, Any] | None] = []
            for index, op in enumerate(ops):
                try:
                    op = op.resolved(results, self.schemas[env][op.table].primary_key)
                    results.append(self._apply_one(env, principal, tables, op))
                except DualwriteError as exc:
                    exc.op_index = index  # type: ignore[attr-defined]
                    raise
            self.data[env] = tables  # all or nothing: the copy replaces the data only now
            return copy.deepcopy(results)

    # ------------------------------------------------------------------ internals

    def _apply_one(self, env: str, principal: Principal,
                   tables: dict[str, list[dict[str, Any]]], op: WriteOp) -> dict[str, Any] | None:
        schema = self.schemas[env][op.table]
        licence = self.licences.get((env, op.table))
        if licence is not None and licence not in principal.licences:
            raise LicenceError(f"writing {op.table!r} needs the licence {licence!r}, which "
                               f"{principal.name!r} does not hold", principal=principal.name,
                               licence=licence)
        rows = tables[op.table]
        for column in op.values:
            if column not in schema.columns:
                raise RowError("no such column", table=op.table, field=column)
        if op.kind == "create":
            row = {c: None for c in schema.columns}
            for name, col in schema.columns.items():
                if col.has_default and name not in op.values:
                    row[name] = _default(col.kind, rows, name)
            row.update(op.values)
            self._check(env, schema, rows, row, None)
            rows.append(row)
            return dict(row)
        assert op.key is not None
        current = _find(rows, op.key)
        if current is None:
            raise RowNotFound(env, op.table, op.key)
        if op.if_match is not None and not etag_matches(op.if_match, etag_of(schema, current)):
            raise PreconditionFailed("the row changed since the ETag was read", table=op.table)
        if op.kind == "delete":
            rows.remove(current)
            return None
        updated = {**current, **op.values}
        self._check(env, schema, rows, updated, current)
        current.update(updated)
        return dict(current)

    def _check(self, env: str, schema: TableSchema, rows: list[dict[str, Any]],
               row: dict[str, Any], replacing: dict[str, Any] | None) -> None:
        for name, col in schema.columns.items():
            if row.get(name) is None and not col.nullable:
                raise ConstraintViolation(f"NOT NULL constraint failed: {schema.name}.{name}",
                                          kind="not_null")
            if col.length and isinstance(row.get(name), str) and len(row[name]) > col.length:
                raise RowError(f"longer than {col.length} characters", table=schema.name,
                               field=name, value=row[name])
        uniques = [schema.primary_key, *schema.unique,
                   *self.alternates.get((env, schema.name), [])]
        for cols in uniques:
            mine = tuple(canonical(row.get(c)) for c in cols)
            if any(v is None for v in mine):
                continue
            for other in rows:
                if other is replacing or other is row:
                    continue
                if tuple(canonical(other.get(c)) for c in cols) == mine:
                    raise ConstraintViolation(
                        f"UNIQUE constraint failed: {schema.name}.{','.join(cols)}",
                        kind="unique")


def _sort_key(column: str) -> Callable[[dict[str, Any]], tuple[bool, Any]]:
    # OData sorts null before any value in ascending order
    def key(row: dict[str, Any]) -> tuple[bool, Any]:
        return row[column] is not None, _sortable(row[column])
    return key


def _sortable(value: Any) -> Any:
    c = canonical(value)
    if isinstance(c, dt.datetime) and c.tzinfo is not None:
        return c.astimezone(dt.UTC).replace(tzinfo=None)
    return c


def _find(rows: list[dict[str, Any]], key: dict[str, Any]) -> dict[str, Any] | None:
    want = {c: canonical(v) for c, v in key.items()}
    for row in rows:
        if all(canonical(row.get(c)) == v for c, v in want.items()):
            return row
    return None


def _default(kind: Kind, rows: list[dict[str, Any]], column: str) -> Any:
    if kind is Kind.UUID:
        return uuid.uuid4()
    if kind is Kind.INTEGER:
        return max((r[column] for r in rows if r[column] is not None), default=0) + 1
    if kind is Kind.DATETIME:
        return dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    if kind is Kind.BOOLEAN:
        return False
    return None
