"""An in-memory connector with fault injection, for engine unit tests.

It behaves like a database for everything the engine relies on: declared schemas, canonical
key order, NOT NULL / unique / foreign-key checks, atomic transactions (changes become
visible only on commit). It never replaces the real-database tests.

Fault injection, per connector (a link's own connectors: ``link.connectors[side]``):
``fail_next(op, table, exc, after=n)`` makes the matching operation after the next ``n``
raise ``exc``; ``fail_when(predicate)`` rejects each written row for which
``predicate(table, row_dict)`` returns a reason, as a ConstraintViolation saying it.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from dualwrite.connectors.base import (
    Branch,
    Capabilities,
    Connector,
    LinkRecord,
    Row,
    WriteSession,
)
from dualwrite.errors import ConstraintViolation, TerminalConnectorError
from dualwrite.model.filters import Expr, evaluate
from dualwrite.model.schema import TableSchema
from dualwrite.model.values import canonical

RowPredicate = Callable[[str, dict[str, Any]], str | None]

_REGISTRY: dict[str, dict[str, Any]] = {}
_REGISTRY_LOCK = threading.Lock()


def _key_of(row: dict[str, Any], key: Sequence[str]) -> tuple[Any, ...]:
    return tuple(canonical(row[k]) for k in key)


class _Store:
    """The shared state of one memory database (by URL), so two connectors see the same data."""

    def __init__(self) -> None:
        self.schemas: dict[str, TableSchema] = {}
        self.rows: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
        self.link: LinkRecord | None = None
        self.prepared: dict[str, dict[str, dict[tuple[Any, ...], dict[str, Any]]]] = {}
        self.lock = threading.RLock()
        self.serial = 0


class MemoryWriteSession(WriteSession):
    def __init__(self, connector: MemoryConnector, rows: dict[str, dict[tuple[Any, ...],
                                                                        dict[str, Any]]]) -> None:
        self.c = connector
        self.rows = rows
        self._index: dict[tuple[str, tuple[str, ...]], set[tuple[Any, ...]]] = {}

    def _check(self, table: str, row: dict[str, Any]) -> None:
        schema = self.c.describe(table)
        for col in schema.columns.values():
            if row.get(col.name) is None and not col.nullable:
                if col.has_default and col.name not in row:
                    continue
                raise ConstraintViolation(
                    f"NOT NULL constraint failed: {table}.{col.name}",
                    hint="give the column a value", environment=self.c.name, kind="not_null")
        for fk in schema.foreign_keys:
            vals = tuple(row.get(c) for c in fk.columns)
            if any(v is None for v in vals):
                continue
            wanted = tuple(canonical(v) for v in vals)
            if wanted not in self._referenced(fk.table, fk.ref_columns):
                raise ConstraintViolation(
                    f"FOREIGN KEY constraint failed: {table}.{','.join(fk.columns)} -> "
                    f"{fk.table}", hint="create the referenced row first",
                    environment=self.c.name, kind="foreign_key")
        reason = self.c._reject(table, row)
        if reason:
            raise ConstraintViolation(reason, environment=self.c.name)

    def _referenced(self, table: str, columns: tuple[str, ...]) -> set[tuple[Any, ...]]:
        """Key values present in ``table`` (cached per session; invalidated on writes)."""
        ck = (table, columns)
        got = self._index.get(ck)
        if got is None:
            got = {tuple(canonical(r.get(c)) for c in columns)
                   for r in self.rows.get(table, {}).values()}
            self._index[ck] = got
        return got

    def _fill_defaults(self, table: str, row: dict[str, Any]) -> None:
        schema = self.c.describe(table)
        for col in schema.columns.values():
            if col.name not in row:
                if col.has_default:
                    self.c.store.serial += 1
                    row[col.name] = f"{self.c.store.serial:032x}" if col.kind.value in (
                        "string", "uuid") else self.c.store.serial
                else:
                    row[col.name] = None

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        self.c._maybe_fail("insert", table)
        schema = self.c.describe(table)
        data = self.rows.setdefault(table, {})
        for r in rows:
            row = dict(zip(columns, r, strict=True))
            self._fill_defaults(table, row)
            self._check(table, row)
            pk = _key_of(row, schema.primary_key)
            if pk in data:
                raise ConstraintViolation(f"UNIQUE constraint failed: {table} primary key {pk}",
                                          hint="the row exists already", environment=self.c.name,
                                          kind="unique")
            for uniq in schema.unique:
                uk = _key_of(row, uniq)
                taken = self._referenced(table, tuple(uniq))
                if None not in uk and uk in taken:
                    raise ConstraintViolation(
                        f"UNIQUE constraint failed: {table}.{','.join(uniq)}",
                        environment=self.c.name, kind="unique")
            data[pk] = row
            for (t, cols), keys in self._index.items():  # keep the table's indexes current
                if t == table:
                    keys.add(tuple(canonical(row.get(c)) for c in cols))

    def insert_returning(self, table: str, values: dict[str, Any]) -> dict[str, Any]:
        self.insert(table, list(values), [tuple(values.values())])
        pk = self.c.describe(table).primary_key
        row = dict(values)
        self._fill_defaults(table, row)
        stored = self.rows[table].get(_key_of(row, pk)) if all(
            values.get(k) is not None for k in pk) else None
        if stored is None:  # generated key: the newest row is ours (the store is locked)
            stored = list(self.rows[table].values())[-1]
        return dict(stored)

    def update(self, table: str, key: Sequence[str], columns: Sequence[str],
               rows: Sequence[tuple[Row, Row]]) -> int:
        self.c._maybe_fail("update", table)
        data = self.rows.setdefault(table, {})
        n = 0
        for k, vals in rows:
            wanted = tuple(canonical(v) for v in k)
            for pk, row in list(data.items()):
                if _key_of(row, key) == wanted:
                    new = {**row, **dict(zip(columns, vals, strict=True))}
                    self._check(table, new)
                    data[pk] = new
                    n += 1
        self._index = {k: v for k, v in self._index.items() if k[0] != table}
        return n

    def delete(self, table: str, key: Sequence[str], keys: Sequence[Row]) -> int:
        self.c._maybe_fail("delete", table)
        data = self.rows.setdefault(table, {})
        wanted = {tuple(canonical(v) for v in k) for k in keys}
        doomed = [pk for pk, row in data.items() if _key_of(row, key) in wanted]
        for pk in doomed:
            del data[pk]
        self._index = {k: v for k, v in self._index.items() if k[0] != table}
        return len(doomed)

    def fetch(self, table: str, columns: Sequence[str], *, key: Sequence[str],
              keys: Sequence[Row]) -> list[Row]:
        wanted = {tuple(canonical(v) for v in k) for k in keys}
        return [tuple(r[c] for c in columns) for r in self.rows.get(table, {}).values()
                if _key_of(r, key) in wanted]

    def lookup(self, table: str, match: str, values: Iterable[Any], returning: str
               ) -> dict[Any, Any]:
        return _lookup(self.rows.get(table, {}).values(), match, values, returning)


def _sort_key(col: str) -> Callable[[dict[str, Any]], tuple[bool, Any]]:
    return lambda r: (r[col] is not None, canonical(r[col]))


def _lookup(rows: Iterable[dict[str, Any]], match: str, values: Iterable[Any], returning: str
            ) -> dict[Any, Any]:
    wanted = {canonical(v) for v in values if v is not None}
    found: dict[Any, Any] = {}
    for r in sorted(rows, key=lambda r: _key_of(r, [returning])):
        m = canonical(r.get(match))
        if m in wanted:
            found.setdefault(m, r[returning])
    return found


class MemoryBranch(Branch):
    """A fake two-phase branch: the working copy is kept in the store when prepared, so a
    'crashed' coordinator's branch can be found and finished by recovery."""

    def __init__(self, connector: MemoryConnector, xid: str) -> None:
        self.c = connector
        self.xid = xid
        connector.store.lock.acquire()
        self.session = MemoryWriteSession(connector, copy.deepcopy(connector.store.rows))
        self.state = "active"

    def prepare(self) -> None:
        self.c._maybe_fail("prepare", None)
        assert isinstance(self.session, MemoryWriteSession)
        self.c.store.prepared[self.xid] = self.session.rows
        self.state = "prepared"

    def commit(self) -> None:
        try:
            self.c._maybe_fail("commit", None)
            self.c.finish_prepared(self.xid, commit=True)
        finally:
            self._release()

    def rollback(self) -> None:
        try:
            self.c.store.prepared.pop(self.xid, None)
        finally:
            self._release()

    def _release(self) -> None:
        if self.state != "done":
            self.state = "done"
            self.c.store.lock.release()


class MemoryConnector(Connector):
    """``memory://NAME``: connectors with the same URL share one database."""

    capabilities = Capabilities(two_phase=True)

    def __init__(self, name: str, url: str) -> None:
        super().__init__(name, url)
        with _REGISTRY_LOCK:
            self.store: _Store = _REGISTRY.setdefault(url, {}).setdefault("store", _Store())
        self._failures: list[list[Any]] = []  # [op, table, exc, matches still let pass]
        self._predicates: list[RowPredicate] = []

    @staticmethod
    def reset(url: str) -> None:
        """Forget the database at ``url`` (tests)."""
        with _REGISTRY_LOCK:
            _REGISTRY.pop(url, None)

    # -- set-up and fault injection ---------------------------------------------------------
    def create_table(self, schema: TableSchema) -> None:
        with self.store.lock:
            self.store.schemas[schema.name] = schema
            self.store.rows.setdefault(schema.name, {})

    def fail_next(self, op: str, table: str | None, exc: BaseException, *,
                  after: int = 0) -> None:
        """Make the next ``op`` ('insert', 'update', 'delete', 'read'; 'prepare' and 'commit',
        of any table) on ``table`` (None: any table) raise ``exc``, once, after letting
        ``after`` such operations pass. Faults for one operation fire in the order given:
        five calls ``fail_next("commit", None, exc, after=3)``, then four with ``after=0``,
        fail the fourth commit and the four after it."""
        self._failures.append([op, table, exc, after])

    def fail_when(self, predicate: RowPredicate) -> None:
        """Reject every row written to this connector (insert, update) for which
        ``predicate(table, row)`` returns a reason: ConstraintViolation with that reason."""
        self._predicates.append(predicate)

    def _maybe_fail(self, op: str, table: str | None) -> None:
        for i, fault in enumerate(self._failures):
            fop, ftable, exc, after = fault
            if fop == op and (ftable is None or ftable == table):
                if after:
                    fault[3] = after - 1
                    return
                del self._failures[i]
                raise exc

    def _reject(self, table: str, row: dict[str, Any]) -> str | None:
        for p in self._predicates:
            reason = p(table, row)
            if reason:
                return reason
        return None

    # -- schema ------------------------------------------------------------------------------
    def tables(self) -> list[str]:
        return sorted(self.store.schemas)

    def describe(self, table: str) -> TableSchema:
        try:
            return self.store.schemas[table]
        except KeyError:
            raise TerminalConnectorError(
                f"table {table!r} does not exist", environment=self.name,
                hint="create it, or correct the table name in the map") from None

    # -- reads -------------------------------------------------------------------------------
    def _sorted(self, table: str, key: Sequence[str], where: Expr | None) -> list[dict[str, Any]]:
        self.describe(table)
        with self.store.lock:
            rows = [dict(r) for r in self.store.rows[table].values()]
        rows = [r for r in rows if all(r.get(k) is not None for k in key)]
        if where is not None:
            rows = [r for r in rows if evaluate(where, r)]
        rows.sort(key=lambda r: _key_of(r, key))
        return rows

    def read(self, table: str, columns: Sequence[str], *, key: Sequence[str],
             where: Expr | None = None, after: Row | None = None,
             batch_size: int = 5000) -> Iterator[list[Row]]:
        self._maybe_fail("read", table)
        rows = self._sorted(table, key, where)
        if after is not None:
            a = tuple(canonical(v) for v in after)
            rows = [r for r in rows if _key_of(r, key) > a]
        for start in range(0, len(rows), batch_size):
            yield [tuple(r[c] for c in columns) for r in rows[start:start + batch_size]]

    def fetch(self, table: str, columns: Sequence[str], *, key: Sequence[str],
              keys: Sequence[Row]) -> list[Row]:
        wanted = {tuple(canonical(v) for v in k) for k in keys}
        return [tuple(r[c] for c in columns) for r in self._sorted(table, key, None)
                if _key_of(r, key) in wanted]

    def query(self, table: str, columns: Sequence[str], *, where: Expr | None = None,
              order_by: Sequence[tuple[str, bool]] = (), limit: int | None = None,
              offset: int = 0) -> list[Row]:
        rows = self._sorted(table, list(self.describe(table).primary_key), where)
        for col, desc in reversed(list(order_by)):  # stable sorts, last key first
            rows.sort(key=_sort_key(col), reverse=desc)
        rows = rows[offset:offset + limit if limit is not None else None]
        return [tuple(r[c] for c in columns) for r in rows]

    def lookup(self, table: str, match: str, values: Iterable[Any], returning: str
               ) -> dict[Any, Any]:
        return _lookup(self._sorted(table, [returning], None), match, values, returning)

    # -- two-phase commit --------------------------------------------------------------------
    def begin_branch(self, xid: str) -> Branch:
        return MemoryBranch(self, xid)

    def recover(self, prefix: str) -> list[str]:
        return sorted(x for x in self.store.prepared if x.startswith(prefix))

    def finish_prepared(self, xid: str, *, commit: bool) -> None:
        with self.store.lock:
            rows = self.store.prepared.pop(xid, None)
            if commit and rows is not None:
                self.store.rows = rows

    # -- writes ------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[WriteSession]:
        with self.store.lock:
            working = copy.deepcopy(self.store.rows)
            yield MemoryWriteSession(self, working)
            self._maybe_fail("commit", None)
            self.store.rows = working

    # -- link --------------------------------------------------------------------------------
    def get_link(self) -> LinkRecord | None:
        return self.store.link

    def set_link(self, record: LinkRecord) -> None:
        self.store.link = record

    def clear_link(self) -> None:
        self.store.link = None


__all__ = ["MemoryConnector"]
