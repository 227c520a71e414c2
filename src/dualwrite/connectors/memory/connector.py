"""An in-memory connector with fault injection, for engine unit tests.

It behaves like a database for everything the engine relies on: declared schemas, canonical
key order, NOT NULL / unique / foreign-key checks, atomic transactions (changes become
visible only on commit). It never replaces the real-database tests.

Fault injection, per connector (a link's own connectors: ``link.connectors[side]``):
``fail_next(op, table, exc, after=n)`` makes the matching operation after the next ``n``
raise ``exc``; ``fail_when(predicate)`` rejects each written row for which
``predicate(table, row_dict)`` returns a reason, as a ConstraintViolation saying it.

Change capture (opt-in: ``memory://name?capture=on``): :class:`MemoryChangeLog` implements
the change-log seam (:class:`dualwrite.connectors.changelog.ChangeLog`) the way the SQL logs
do, over the same transactions: an *application's* transaction (:meth:`MemoryConnector.
app_transaction`, or a dualwrite session after ``capture_own_writes``) appends one change per
changed row of each installed map when it commits; dualwrite's own writes are not captured (no
echo). The log and the applied positions live in the transaction's working copy, so they
commit and roll back with the rows. Its operations can fail on purpose too: ``fail_next`` with
``"read_log"``, ``"mark_applied"`` (the apply transaction's last step) or ``"forget"``.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from dualwrite.connectors.base import (
    Branch,
    Capabilities,
    Connector,
    LinkRecord,
    Row,
    WriteSession,
)
from dualwrite.connectors.changelog import FENCE_SOURCE, CaptureSpec, Change, ChangeSignal
from dualwrite.errors import ConstraintViolation, LeaseLost, TerminalConnectorError
from dualwrite.model.filters import Expr, evaluate
from dualwrite.model.schema import Column, TableSchema
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
        #: the maps whose changes are captured (see MemoryChangeLog.install)
        self.specs: dict[str, CaptureSpec] = {}
        #: the last seq and source transaction id handed out (never reused)
        self.seq = 0
        self.txid = 0
        #: notified at each commit that captured changes (MemoryChangeLog.wait)
        self.changed = threading.Condition(self.lock)
        self.commits = 0


class MemoryWriteSession(WriteSession):
    def __init__(self, connector: MemoryConnector, rows: dict[str, dict[tuple[Any, ...],
                                                                        dict[str, Any]]]) -> None:
        self.c = connector
        self.rows = rows
        self._index: dict[tuple[str, tuple[str, ...]], set[tuple[Any, ...]]] = {}
        #: whether change capture records this transaction's writes (an application's)
        self.captured = False

    def _check(self, table: str, row: dict[str, Any]) -> None:
        schema = self.c.describe(table)
        for col in schema.columns.values():
            if row.get(col.name) is None and not col.nullable:
                if col.has_default and col.name not in row:
                    continue
                raise ConstraintViolation(
                    f"NOT NULL constraint failed: {table}.{col.name}",
                    hint="give the column a value", environment=self.c.name, kind="not_null",
                    column=col.name)
        for fk in schema.foreign_keys:
            vals = tuple(row.get(c) for c in fk.columns)
            if any(v is None for v in vals):
                continue
            wanted = tuple(canonical(v) for v in vals)
            if wanted not in self._referenced(fk.table, fk.ref_columns):
                raise ConstraintViolation(
                    f"FOREIGN KEY constraint failed: {table}.{','.join(fk.columns)} -> "
                    f"{fk.table}", hint="create the referenced row first",
                    environment=self.c.name, kind="foreign_key", column=fk.columns[0])
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

    def capture_own_writes(self) -> None:
        self.captured = True


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
        if "capture=on" in url.partition("?")[2].split("&"):
            self.capabilities = Capabilities(two_phase=True, capture=True)
        self._log: MemoryChangeLog | None = None

    def change_log(self) -> MemoryChangeLog:
        if not self.capabilities.capture:
            return super().change_log()  # type: ignore[return-value]  # (it raises)
        if self._log is None:
            self._log = MemoryChangeLog(self)
        return self._log

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
        of any table; the change log's 'read_log', 'mark_applied' and 'forget', see
        MemoryChangeLog) on ``table`` (None: any table) raise ``exc``, once, after letting
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
            sess = MemoryWriteSession(self, working)
            yield sess
            self._maybe_fail("commit", None)
            if sess.captured:
                _capture(self.store, self.store.rows, working)
            self.store.rows = working
            self.store.commits += 1
            self.store.changed.notify_all()

    @contextmanager
    def app_transaction(self) -> Iterator[WriteSession]:
        """A transaction of an application (tests): its writes are captured, as the triggers
        of a SQL database capture what bypasses dualwrite."""
        with self.transaction() as sess:
            sess.capture_own_writes()
            yield sess

    # -- link --------------------------------------------------------------------------------
    def get_link(self) -> LinkRecord | None:
        return self.store.link

    def set_link(self, record: LinkRecord) -> None:
        self.store.link = record

    def clear_link(self) -> None:
        self.store.link = None


# -- change capture ---------------------------------------------------------------------------
#: the log's and the applied positions' "tables" in a store's rows (never in its schemas)
_LOG = "dualwrite_changes"
_APPLIED = "dualwrite_applied"


def _encode(value: Any) -> Any:
    """A value as the SQL logs' JSON carries it (see dualwrite.connectors.capture): numbers
    as numbers, binary as ``"\\x<hex>"``, times as ISO text, what JSON has no number for as
    text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, Decimal):
        return _Number(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


class _Number(float):
    """A Decimal written by json as its own digits (json writes a float subclass with
    ``float.__repr__``, so the digits are kept by :func:`_dumps` instead)."""

    def __new__(cls, value: Decimal) -> _Number:
        out = super().__new__(cls, float(value))
        out.text = str(value)
        return out

    text: str


def _dumps(value: Any) -> str:
    """JSON text of an encoded value (a Decimal's own digits kept)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_dumps(v) for v in value) + "]"
    if isinstance(value, _Number):
        return value.text
    return json.dumps(value)


def _key_text(values: Sequence[Any]) -> str:
    return _dumps([_encode(v) for v in values])


def _capture(store: _Store, before: dict[str, dict[tuple[Any, ...], dict[str, Any]]],
             after: dict[str, dict[tuple[Any, ...], dict[str, Any]]]) -> None:
    """Append to ``after``'s log one change per row of an installed map that differs between
    ``before`` and ``after`` (one new source transaction): what a SQL database's capture
    triggers do at commit. A row whose key changed is a delete and an insert."""
    txid = None
    log = after.setdefault(_LOG, {})
    now = dt.datetime.now(dt.UTC)
    for spec in store.specs.values():
        def keyed(rows: dict[tuple[Any, ...], dict[str, Any]], spec: CaptureSpec = spec
                  ) -> dict[tuple[Any, ...], dict[str, Any]]:
            return {_key_of(r, spec.key): r for r in rows.values()}

        was, now_rows = keyed(before.get(spec.table, {})), keyed(after.get(spec.table, {}))
        for k in sorted(set(was) | set(now_rows), key=repr):
            old, new = was.get(k), now_rows.get(k)
            old_v = None if old is None else {c: _encode(old.get(c)) for c in spec.columns}
            new_v = None if new is None else {c: _encode(new.get(c)) for c in spec.columns}
            if old_v is not None and new_v is not None and _dumps(old_v) == _dumps(new_v):
                continue
            if txid is None:
                store.txid += 1
                txid = str(store.txid)
            store.seq += 1
            row = new if new is not None else old
            assert row is not None
            log[(store.seq,)] = {
                "seq": store.seq, "map": spec.map, "txid": txid,
                "op": "I" if old is None else "D" if new is None else "U",
                "k": _key_text([row.get(c) for c in spec.key]),
                "old": None if old_v is None else _dumps(old_v),
                "new": None if new_v is None else _dumps(new_v), "at": now,
                "v": spec.version}


def _change(r: dict[str, Any]) -> Change:
    c = Change(r["seq"], r["map"], r["txid"], r["op"], r["k"], at=r["at"],
               old_json=r["old"], new_json=r["new"])
    c.version = r["v"]
    return c


class MemoryChangeLog:
    """The change log of a memory database (see the module doc): the change-log seam without
    SQL, with fault injection (``fail_next("read_log" | "mark_applied" | "forget", None,
    exc)``)."""

    has_txid = True
    needs_purge = False

    def __init__(self, connector: MemoryConnector) -> None:
        self.c = connector
        self.store = connector.store
        self._seen = -1

    # -- capture ------------------------------------------------------------------------------
    def ensure(self) -> None:
        """Nothing to make: the log lives in the store's rows."""

    def capture_requirements(self) -> list[str]:
        return []

    def capture_warnings(self, *, before_install: bool = False) -> list[str]:
        return []

    def install(self, spec: CaptureSpec) -> None:
        schema = self.c.describe(spec.table)
        gone = [col for col in spec.needed if col not in schema.columns]
        if gone:
            raise TerminalConnectorError(
                f"cannot capture map {spec.map!r}: table {spec.table!r} has no column(s) "
                f"{', '.join(repr(g) for g in gone)}", environment=self.c.name,
                hint="correct the map's field lines, or the table, and start the map again")
        with self.store.lock:
            self.store.specs[spec.map] = spec

    def remove(self, spec: CaptureSpec) -> None:
        with self.store.lock:
            self.store.specs.pop(spec.map, None)
            log = self.store.rows.get(_LOG, {})
            for k in [k for k, r in log.items() if r["map"] == spec.map]:
                del log[k]

    def check(self, spec: CaptureSpec) -> list[str]:
        where = f"map {spec.map!r}, table {spec.table!r}"
        if self.store.specs.get(spec.map) != spec:
            return [f"{where}: capture is not installed (or for another version)"]
        schema = self.store.schemas.get(spec.table)
        if schema is None:
            return [f"{where}: the table does not exist"]
        gone = [col for col in spec.needed if col not in schema.columns]
        return [f"{where}: column(s) {', '.join(map(repr, gone))} gone from the table"] \
            if gone else []

    def uninstall(self, *, dry_run: bool = False) -> list[str]:
        found = [f"capture of map {m}" for m in sorted(self.store.specs)]
        if not dry_run:
            with self.store.lock:
                self.store.specs.clear()
                self.store.rows.pop(_LOG, None)
                self.store.rows.pop(_APPLIED, None)
        return found

    # -- reading ------------------------------------------------------------------------------
    def _committed(self, maps: Sequence[str]) -> list[dict[str, Any]]:
        with self.store.lock:
            return sorted((dict(r) for r in self.store.rows.get(_LOG, {}).values()
                           if r["map"] in maps), key=lambda r: r["seq"])

    def read(self, maps: Sequence[str], limit: int) -> list[Change]:
        self.c._maybe_fail("read_log", None)
        rows = self._committed(maps)
        first = rows[:limit]
        txids = {r["txid"] for r in first}
        # whole transactions: the rest of those the limit cut
        return [_change(r) for r in first] + [_change(r) for r in rows[limit:]
                                              if r["txid"] in txids]

    def read_start(self, maps: Sequence[str], limit: int
                   ) -> tuple[list[Change], Future[list[Change]] | None]:
        return self.read(maps, limit), None

    def transactions(self, maps: Sequence[str], after: int, limit: int
                     ) -> list[tuple[int, str]]:
        return [(r["seq"], r["txid"]) for r in self._committed(maps) if r["seq"] > after
                ][:limit]

    def read_transactions(self, maps: Sequence[str], txids: Sequence[str]) -> list[Change]:
        wanted = set(txids)
        return [_change(r) for r in self._committed(maps) if r["txid"] in wanted]

    def peek(self, map_name: str, *, key_contains: str | None = None, limit: int = 50,
             offset: int = 0) -> tuple[list[Change], int]:
        rows = [r for r in self._committed([map_name])
                if not key_contains or key_contains in r["k"]]
        return [_change(r) for r in rows[offset:offset + limit]], len(rows)

    def stats(self) -> dict[str, tuple[int, int, dt.datetime | None]]:
        out: dict[str, tuple[int, int, dt.datetime | None]] = {}
        with self.store.lock:
            rows = list(self.store.rows.get(_LOG, {}).values())
        for r in rows:
            n, size, oldest = out.get(r["map"], (0, 0, None))
            out[r["map"]] = (n + 1, size + len(r["k"]) + len(r["old"] or "") +
                             len(r["new"] or ""), r["at"] if oldest is None else
                             min(oldest, r["at"]))
        return out

    def txids_present(self, txids: Sequence[str]) -> set[str]:
        with self.store.lock:
            present = {r["txid"] for r in self.store.rows.get(_LOG, {}).values()}
        return present & set(txids)

    # -- inside a write session ---------------------------------------------------------------
    def _rows(self, sess: WriteSession, table: str) -> dict[tuple[Any, ...], dict[str, Any]]:
        if not isinstance(sess, MemoryWriteSession) or sess.c.store is not self.store:
            raise TypeError(f"a memory change log was handed a {type(sess).__name__} of "
                            "another database")
        return sess.rows.setdefault(table, {})

    def pending(self, sess: WriteSession, map_name: str, keys: Sequence[tuple[Any, ...]],
                columns: Sequence[Column]) -> list[Change]:
        wanted = {_key_text(k) for k in keys}
        return [_change(r) for r in sorted(self._rows(sess, _LOG).values(),
                                           key=lambda r: r["seq"])
                if r["map"] == map_name and r["k"] in wanted]

    def queues(self, sess: WriteSession, map_name: str) -> bool:
        return any(r["map"] == map_name for r in self._rows(sess, _LOG).values())

    def queued(self, sess: WriteSession, maps: Sequence[str]) -> set[str]:
        return {r["map"] for r in self._rows(sess, _LOG).values()} & set(maps)

    def applied(self, sess: WriteSession, source: str, pairs: Sequence[tuple[str, str]]
                ) -> tuple[set[tuple[str, str]], dict[str, int]]:
        marks = self._rows(sess, _APPLIED)
        return {(m, t) for m, t in pairs if (source, m, t) in marks}, {}

    def mark_applied(self, sess: WriteSession, source: str,
                     positions: Sequence[tuple[str, str, int]]) -> None:
        self.c._maybe_fail("mark_applied", None)
        marks = self._rows(sess, _APPLIED)
        for m, t, q in positions:
            if (source, m, t) in marks:
                raise ConstraintViolation(f"applied position {(source, m, t)} exists already",
                                          environment=self.c.name, kind="unique")
            marks[(source, m, t)] = {"seq": q}

    def unmark(self, sess: WriteSession, source: str, pairs: Sequence[tuple[str, str]]
               ) -> None:
        marks = self._rows(sess, _APPLIED)
        for m, t in pairs:
            marks.pop((source, m, t), None)

    def finish_apply(self, sess: WriteSession, source: str,
                     positions: Sequence[tuple[str, str, int]],
                     prune: Sequence[tuple[str, str]], fence: tuple[str, int] | None,
                     probe: Sequence[str] = ()) -> set[str]:
        if fence is not None:
            self.fence(sess, *fence)
        self.mark_applied(sess, source, positions)
        self.unmark(sess, source, prune)
        return self.queued(sess, probe) if probe else set()

    def fence(self, sess: WriteSession, link: str, epoch: int) -> None:
        marks = self._rows(sess, _APPLIED)
        held = marks.get((FENCE_SOURCE, link, ""), {}).get("seq", 0)
        if held > epoch:
            raise LeaseLost(
                f"link {link!r}: a newer applier (lease epoch {held}) applies in "
                f"{self.c.name}; this one (epoch {epoch}) lost its lease and commits "
                "nothing more", hint="nothing to do: this process stands by again")
        marks[(FENCE_SOURCE, link, "")] = {"seq": epoch}

    def fence_epoch(self, sess: WriteSession, link: str) -> int:
        return int(self._rows(sess, _APPLIED).get((FENCE_SOURCE, link, ""), {}).get("seq", 0))

    # -- forgetting ---------------------------------------------------------------------------
    def forget(self, seqs: Sequence[int], sess: WriteSession | None = None, *,
               fence: tuple[str, int] | None = None) -> None:
        if not seqs:
            return
        if sess is None:
            self.c._maybe_fail("forget", None)
            with self.c.transaction() as own:
                self.forget(seqs, own, fence=fence)
            return
        if fence is not None:
            self.fence(sess, *fence)
        log = self._rows(sess, _LOG)
        for s in seqs:
            log.pop((s,), None)

    def forget_transactions(self, pairs: Sequence[tuple[str, str]], *,
                            fence: tuple[str, int] | None = None) -> None:
        wanted = set(pairs)
        with self.c.transaction() as sess:
            if fence is not None:
                self.fence(sess, *fence)
            log = self._rows(sess, _LOG)
            for k in [k for k, r in log.items() if (r["map"], r["txid"]) in wanted]:
                del log[k]

    def all_marks(self) -> list[tuple[str, str, str]]:
        with self.store.lock:
            return [k for k in self.store.rows.get(_APPLIED, {}) if k[2] != ""]

    def purge(self) -> None:
        """Nothing is left behind."""

    # -- waiting ------------------------------------------------------------------------------
    def listen(self) -> ChangeSignal | None:
        return None  # waited for in-process (wait)

    def catch_up(self, sess: WriteSession | None = None) -> bool:
        """Captured at commit, in the writer's transaction: nothing to wait for."""
        return False

    def wait(self, timeout: float) -> bool:
        with self.store.changed:
            if self._seen < 0:
                self._seen = self.store.seq
            woken = self.store.changed.wait_for(lambda: self.store.seq > self._seen, timeout)
            self._seen = self.store.seq
            return bool(woken)


__all__ = ["MemoryChangeLog", "MemoryConnector"]
