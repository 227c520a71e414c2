"""Live sync: a write made through dualwrite commits with its mirrored twins on both sides, or
on neither.

:class:`LiveTransaction` applies each create/update/delete to its own table and, through every
running map on that table, to the other side, inside one branch per side. :class:`Coordinator`
commits the branches with two-phase commit (PostgreSQL ``PREPARE TRANSACTION``, MariaDB
``XA``), logging the decision durably in the state store before the first branch commits; two
SQLite files share one connection instead (the right file ATTACHed). :func:`recover` ends every
branch a dead coordinator left prepared, from that log: commit where the decision was logged,
roll back where it was not (presumed abort).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import threading
from collections.abc import Callable, Collection, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from dualwrite.connectors.base import Branch, Connector, FoldedLookup, Row, WriteSession
from dualwrite.engine.lookups import LookupResolver, SessionLookups
from dualwrite.engine.rows import CompiledMap, Folded, Resolved, coerce
from dualwrite.engine.security import Principal
from dualwrite.engine.state import AuditEntry, StateStore
from dualwrite.engine.state.codec import now_iso
from dualwrite.engine.state.decisions import AuditRow, Decided, audit_rows
from dualwrite.errors import (
    ConfigError,
    ConnectorError,
    ConstraintViolation,
    InDoubt,
    LicenceError,
    RowError,
    RowNotFound,
)
from dualwrite.model.binding import BoundMap
from dualwrite.model.filters import evaluate
from dualwrite.model.maps import Side
from dualwrite.model.schema import Kind, TableSchema
from dualwrite.model.values import Infinite, TemporalText

if TYPE_CHECKING:
    from dualwrite.engine.link import Link

log = logging.getLogger(__name__)

#: hook(step) called at each step of the commit protocol; tests use it to crash the process
StepHook = Callable[[str], None]
#: the steps of the last-resource commit (two databases that keep decision rows): the other
#: branch prepared; the last resource committed with the decision; the prepared one committed
STEPS = ("after_first_prepare", "after_decision", "after_first_commit")
#: the largest decision record (characters: it is ASCII JSON) that rides in a decision row:
#: 4 MiB, some 10,000 to 40,000 written rows' audit. A larger transaction commits in two
#: phases with its decision in the state store, well inside MariaDB's max_allowed_packet
#: (16 MiB by default), which bounds one statement and so one row.
DECISION_RECORD_LIMIT = 4 * 1024 * 1024
#: the steps of the two-phase commit with the decision in the state store (connectors that
#: keep no decision rows, the in-memory one; a transaction over DECISION_RECORD_LIMIT)
TWO_PHASE_STEPS = ("after_first_prepare", "after_both_prepares", "after_decision",
                   "after_first_commit")


# -- business rules -------------------------------------------------------------------------
@dataclass
class RuleContext:
    """What a business rule sees: it may change ``values`` or raise RowError to reject."""

    operation: str  # "create" | "update" | "delete"
    environment: str
    table: str
    values: dict[str, Any]
    before: dict[str, Any] | None
    principal: str
    #: a change captured on the other side, about to be applied here: a rule may reject it
    #: (it is parked in the inbox with the rule's message), not change its values (the row
    #: must stay the twin of its source)
    captured: bool = False


Rule = Callable[[RuleContext], None]


class Rules:
    """Before-write hooks per (environment, table), run in registration order inside the
    transaction, before the write and its mirroring. A rule rejects by raising RowError
    (``dualwrite.RowError("credit limit over 1M", field="CREDITLIMIT", value=v)``)."""

    def __init__(self) -> None:
        self._rules: dict[tuple[str, str], list[Rule]] = {}

    def register(self, environment: str, table: str, rule: Rule) -> None:
        self._rules.setdefault((environment, table.casefold()), []).append(rule)

    def before_write(self, environment: str, table: str) -> Callable[[Rule], Rule]:
        """Decorator form of :meth:`register`."""
        def wrap(rule: Rule) -> Rule:
            self.register(environment, table, rule)
            return rule
        return wrap

    def covers(self, environment: str, table: str) -> bool:
        """Whether any rule is registered for writes to ``table`` of ``environment``."""
        return (environment, table.casefold()) in self._rules

    def run(self, ctx: RuleContext) -> None:
        for rule in self._rules.get((ctx.environment, ctx.table.casefold()), []):
            try:
                rule(ctx)
            except RowError as exc:
                raise RowError(f"business rule {getattr(rule, '__name__', 'rule')!r} rejected "
                               f"the {ctx.operation}: {exc.reason}", side=None,
                               table=ctx.table, key=None, field=exc.field, value=exc.value,
                               hint=exc.hint or "change the values so the rule accepts them"
                               ) from exc


# -- value checks before the database sees them -------------------------------------------
def check_values(schema: TableSchema, values: dict[str, Any], *, creating: bool,
                 env: str, key: Sequence[Any] | None) -> dict[str, Any]:
    """Names every value that cannot fit its column before any SQL runs, so that all three
    databases reject the same things with the same message (SQLite enforces neither types
    nor lengths). Returns the values coerced to the columns' kinds."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        col = schema.column(name)
        if col is None:
            raise RowError(f"table {schema.name!r} has no column {name!r}", side=env,
                           table=schema.name, key=key, field=name, value=value,
                           hint=f"columns: {', '.join(list(schema.columns)[:12])}")
        v = coerce(value, col.kind)
        if v is None:
            if not col.nullable and (not creating or not col.has_default):
                raise RowError("value is required (the column is NOT NULL)", side=env,
                               table=schema.name, key=key, field=col.name, value=value,
                               hint="give the field a value")
        elif not _fits(v, col.kind):
            raise RowError(f"value does not fit the column's type ({col.kind.value})",
                           side=env, table=schema.name, key=key, field=col.name, value=value,
                           hint=f"give a {col.kind.value} value")
        elif col.kind is Kind.STRING and col.length and len(str(v)) > col.length:
            raise RowError(f"value is {len(str(v))} characters long; the column holds "
                           f"{col.length}", side=env, table=schema.name, key=key,
                           field=col.name, value=value, hint="shorten the value")
        out[col.name] = v
    if creating:
        for col in schema.columns.values():
            if col.required and out.get(col.name) is None:
                raise RowError("value is required (the column is NOT NULL and has no "
                               "default)", side=env, table=schema.name, key=key,
                               field=col.name, value=None, hint="give the field a value")
    return out


def _fits(v: Any, kind: Kind) -> bool:
    if kind is Kind.INTEGER:
        return isinstance(v, int)
    if kind in (Kind.DECIMAL, Kind.FLOAT):
        if isinstance(v, bool):
            return False
        if isinstance(v, int | float | Decimal):
            return True
        try:
            Decimal(str(v))
        except InvalidOperation:
            return False
        return True
    if kind is Kind.BOOLEAN:
        return isinstance(v, bool | int)
    if kind is Kind.DATE:
        return isinstance(v, dt.date | Infinite | TemporalText)
    if kind is Kind.DATETIME:
        return isinstance(v, dt.datetime | Infinite | TemporalText)
    if kind is Kind.STRING:
        return isinstance(v, str)
    return True


def explain(exc: ConstraintViolation, values: dict[str, Any]) -> tuple[str | None, Any]:
    """The field (and value) a database's rejection names, where it names one: the column
    its backend read from the database's report (:class:`ConstraintViolation`), spelled as
    in ``values`` when they hold it, with the value given rather than the one printed."""
    if exc.column is None:
        return None, None
    for k, v in values.items():
        if k.casefold() == exc.column.casefold():
            return k, v
    return exc.column, exc.value


# -- the transaction ------------------------------------------------------------------------
@dataclass
class _Mirror:
    bound: BoundMap
    #: the map's row builder (the one every write path uses: see dualwrite.engine.rows)
    differ: CompiledMap
    side: Side  # the side the application wrote


class LiveTransaction:
    """Writes through dualwrite, inside one atomic transaction (see :class:`Coordinator`).

    Environments are named as in the config (``"erp"``, ``"crm"``); keys are dicts of column
    values that identify one row (the primary key or any unique key).
    """

    def __init__(self, link: Link, sessions: dict[Side, WriteSession],
                 principal: str | Principal, running: set[str]) -> None:
        self.link = link
        self.sessions = sessions
        if isinstance(principal, Principal):  # a token's: its own, possibly narrower, licences
            self.principal, self.licences = principal.name, principal.licences
            self.token_id = principal.token_id
        else:
            self.principal, self.token_id = principal, None
            _roles, self.licences = link.state.principal(principal, max_age=1.0)
        self.running = running
        self.queued = link.state.queued_maps(max_age=1.0)
        self._captured: set[Side] = set()
        self.audit: list[AuditEntry] = []
        self.resolver = LookupResolver({s: SessionLookups(sess)
                                        for s, sess in sessions.items()})
        self.writes = 0

    # -- helpers -----------------------------------------------------------------------------
    def _side(self, env: str) -> Side:
        for s in Side:
            if self.link.env_name(s) == env:
                return s
        raise ConfigError(f"no environment named {env!r} in this link",
                          hint=f"use {self.link.env_name(Side.LEFT)!r} or "
                          f"{self.link.env_name(Side.RIGHT)!r}", code="DW203")

    def _schema(self, side: Side, table: str) -> TableSchema:
        return self.link.connectors[side].describe(table)

    def _mirrors(self, side: Side, table: str) -> list[_Mirror]:
        out = []
        for b in self.link.live_maps():
            if b.name in self.running and b.table(side).casefold() == table.casefold():
                out.append(_Mirror(b, self.link.differ(b.name), side))
        return out

    def _queue_if_captured(self, side: Side, table: str) -> None:
        """A write to the table of a map that is captured but not running (initializing,
        paused, resuming) must queue like any application write, not slip past capture."""
        if side in self._captured or not self.queued:
            return
        for b in self.link.live_maps():
            if b.name in self.queued and b.table(side).casefold() == table.casefold():
                self.sessions[side].capture_own_writes()
                self._captured.add(side)
                return

    def _check_licence(self, side: Side, table: str, mirrors: list[_Mirror],
                       operation: str) -> None:
        needed = []
        for m in mirrors:
            if m.bound.spec.restricted:
                needed += [m.bound.table(side), m.bound.table(side.other)]
        for b in self.link.live_maps():
            if b.spec.restricted and b.name in self.running and \
                    b.table(side).casefold() == table.casefold():
                needed.append(b.table(side))
        for t in needed:
            if t not in self.licences and t.casefold() not in {x.casefold()
                                                               for x in self.licences}:
                exc = LicenceError(
                    f"principal {self.principal!r} holds no licence for restricted table "
                    f"{t!r}; nothing was written", principal=self.principal, licence=t)
                env = self.link.env_name(side)
                try:
                    self.link.state.add_refusal(
                        self.principal, f"{operation} {env}.{table}", f"licence {t}",
                        exc.message, token_id=self.token_id, environment=env)
                except Exception:  # the refusal stands even when its audit row cannot be kept
                    log.warning("could not audit a licence refusal", exc_info=True)
                raise exc

    def _write(self, side: Side, what: str, fn: Callable[[], Any], *, table: str,
               key: Sequence[Any] | None, values: dict[str, Any], map_name: str | None = None
               ) -> Any:
        try:
            return fn()
        except ConstraintViolation as exc:
            field_name, value = explain(exc, values)
            raise RowError(
                f"the database rejected the {what}: {exc.message}", map=map_name,
                side=self.link.env_name(side), table=table, key=key, field=field_name,
                value=value, hint=exc.hint) from exc

    def _rows(self, side: Side, table: str, key_cols: Sequence[str], keys: Sequence[Row],
              columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
        cols = list(columns or self._schema(side, table).columns)
        got = self.sessions[side].fetch(table, cols, key=list(key_cols), keys=list(keys))
        return [dict(zip(cols, r, strict=True)) for r in got]

    def _key_cols(self, side: Side, table: str, key: dict[str, Any]) -> tuple[list[str], Row]:
        schema = self._schema(side, table)
        cols, vals = [], []
        for k, v in key.items():
            c = schema.column(k)
            if c is None:
                raise RowError(f"key names column {k!r}, which table {table!r} does not have",
                               side=self.link.env_name(side), table=table, key=tuple(key.values()),
                               field=k, value=v, hint="name the key's columns")
            cols.append(c.name)
            vals.append(coerce(v, c.kind))
        return cols, tuple(vals)

    def _one(self, side: Side, table: str, key: dict[str, Any]) -> dict[str, Any]:
        cols, vals = self._key_cols(side, table, key)
        rows = self._rows(side, table, cols, [vals])
        if not rows:
            raise RowNotFound(self.link.env_name(side), table, key)
        if len(rows) > 1:
            raise RowError(f"key {key!r} matches {len(rows)} rows", side=self.link.env_name(side),
                           table=table, key=vals, hint="use the primary key or a unique key")
        return rows[0]

    # -- mirroring ---------------------------------------------------------------------------
    def _as_row(self, m: _Mirror, row: dict[str, Any]) -> Row:
        return m.differ.row_of(m.side, row)

    def _in_filter(self, m: _Mirror, row: dict[str, Any] | None) -> bool:
        if row is None:
            return False
        f = m.bound.filter(m.side)
        return f is None or evaluate(f, row)

    def _resolved(self, m: _Mirror, rows: list[Row]) -> Resolved:
        """The lookups building the twins of ``rows`` needs, read through this transaction's
        open branches (rows it created earlier resolve)."""
        return m.differ.resolve([(m.side, r) for r in rows], self.resolver)

    def _mirror_create(self, m: _Mirror, rows: list[dict[str, Any]]) -> None:
        t = m.side.other
        tuples = [self._as_row(m, r) for r in rows if self._in_filter(m, r)]
        if not tuples:
            return
        if len(tuples) == 1 and self.link.connectors[t].capabilities.insert_resolving and \
                m.differ.foldable(t) and self._create_folded(m, tuples[0]):
            return
        resolved = self._resolved(m, tuples)
        values, keys = [], []
        for r in tuples:
            key = m.differ.source_key(m.side, r)
            values.append(m.differ.create_values(t, r, resolved, key))
            keys.append(key)
        table = m.bound.table(t)
        cols = m.differ.insert_columns[t]
        self._write(t, "mirrored create", lambda: self.sessions[t].insert(table, cols, values),
                    table=table, key=keys[0] if len(keys) == 1 else None,
                    values=dict(zip(cols, values[0], strict=True)), map_name=m.bound.name)
        self.audit += [AuditEntry(self.link.env_name(t), table, k, "create", m.bound.name)
                       for k in keys]

    def _create_folded(self, m: _Mirror, row: Row) -> bool:
        """Create ``row``'s twin with its simple lookups found by the INSERT itself: one
        round trip instead of a lookup and an insert. False when it wrote nothing and the
        ordinary path must run: a value it does not fold, or a natural key with no row,
        which the ordinary path then names in its RowError (the transaction is as it was:
        the INSERT inserted nothing)."""
        t = m.side.other
        keys = m.differ.fold_keys(t, row)
        if not keys:
            return False
        resolved = m.differ.resolve([(m.side, row)], self.resolver,
                                    folded={(t, i) for i in keys})
        key = m.differ.source_key(m.side, row)
        values = m.differ.create_values(t, row, resolved, key)
        where = m.differ.foldable(t)
        lookups = [FoldedLookup(n, where[v.field].table, where[v.field].key, where[v.field].id,
                                keys[v.field])
                   for n, v in enumerate(values) if type(v) is Folded]
        if not lookups:
            return False
        table = m.bound.table(t)
        cols = m.differ.insert_columns[t]
        shown = {c: keys[v.field] if type(v) is Folded else v
                 for c, v in zip(cols, values, strict=True)}
        done = self._write(t, "mirrored create", lambda: self.sessions[t].insert_resolving(
            table, cols, values, lookups), table=table, key=key, values=shown,
            map_name=m.bound.name)
        if not done:
            return False
        self.audit.append(AuditEntry(self.link.env_name(t), table, key, "create",
                                     m.bound.name))
        return True

    def _mirror_update(self, m: _Mirror, before: dict[str, Any], after: dict[str, Any]) -> None:
        was, now = self._in_filter(m, before), self._in_filter(m, after)
        if not was and not now:
            return
        if now and not was:
            self._mirror_create(m, [after])
            return
        t = m.side.other
        table = m.bound.table(t)
        row = self._as_row(m, after if now else before)
        tkey = m.differ.target_key(m.side, row)
        if was and not now:
            self._write(t, "mirrored delete", lambda: self.sessions[t].delete(
                table, m.bound.key(t), [tkey]), table=table, key=tkey, values={},
                map_name=m.bound.name)
            self.audit.append(AuditEntry(self.link.env_name(t), table, tkey, "delete",
                                         m.bound.name))
            return
        resolved = self._resolved(m, [row])
        vals = m.differ.live_values(t, row, resolved)
        cols = m.differ.live_columns[t]
        n = self._write(t, "mirrored update", lambda: self.sessions[t].update(
            table, m.bound.key(t), cols, [(tkey, vals)]), table=table, key=tkey,
            values=dict(zip(cols, vals, strict=True)), map_name=m.bound.name)
        if n == 0:  # the twin is missing (never synced): create it rather than lose the change
            self._mirror_create(m, [after])
            return
        self.audit.append(AuditEntry(self.link.env_name(t), table, tkey, "update",
                                     m.bound.name))

    def _mirror_delete(self, m: _Mirror, before: dict[str, Any]) -> None:
        if not self._in_filter(m, before):
            return
        t = m.side.other
        table = m.bound.table(t)
        tkey = m.differ.target_key(m.side, self._as_row(m, before))
        self._write(t, "mirrored delete", lambda: self.sessions[t].delete(
            table, m.bound.key(t), [tkey]), table=table, key=tkey, values={},
            map_name=m.bound.name)
        self.audit.append(AuditEntry(self.link.env_name(t), table, tkey, "delete",
                                     m.bound.name))

    # -- the API -----------------------------------------------------------------------------
    def create(self, env: str, table: str, values: dict[str, Any]) -> dict[str, Any]:
        """Create one row and its twins; return the row as stored (defaults filled in)."""
        side = self._side(env)
        [row] = self._create(side, table, [values], read_back=True)
        return row

    def create_many(self, env: str, table: str, rows: Sequence[dict[str, Any]]) -> int:
        """Create many rows (and their twins) in bulk; returns how many."""
        self._create(self._side(env), table, list(rows), read_back=False)
        return len(rows)

    def _create(self, side: Side, table: str, rows: list[dict[str, Any]], *, read_back: bool
                ) -> list[dict[str, Any]]:
        schema = self._schema(side, table)
        env = self.link.env_name(side)
        mirrors = self._mirrors(side, table)
        self._check_licence(side, table, mirrors, "create")
        self._queue_if_captured(side, schema.name)
        checked = []
        for values in rows:
            ctx = RuleContext("create", env, schema.name, dict(values), None, self.principal)
            self.link.rules.run(ctx)
            key = tuple(ctx.values.get(k) for k in schema.primary_key) or None
            checked.append(check_values(schema, ctx.values, creating=True, env=env, key=key))
        pk = list(schema.primary_key) or [next(iter(schema.columns))]
        if read_back and len(checked) == 1:
            # one row: INSERT ... RETURNING gives the stored row (defaults and all) in the same
            # round trip, and it serves both the caller and the mirrors
            [values] = checked
            stored = [self._write(side, "create", lambda: self.sessions[side].insert_returning(
                schema.name, values), table=schema.name,
                key=tuple(values.get(k) for k in pk), values=values)]
        else:
            by_cols: dict[tuple[str, ...], list[Row]] = {}
            for v in checked:
                by_cols.setdefault(tuple(v), []).append(tuple(v.values()))
            for cols, tuples in by_cols.items():
                first = dict(zip(cols, tuples[0], strict=True))
                self._write(side, "create", lambda c=cols, t=tuples:  # type: ignore[misc]
                            self.sessions[side].insert(schema.name, list(c), t),
                            table=schema.name, key=tuple(first.get(k) for k in pk),
                            values=first)
            stored = []
        self.writes += len(checked)
        for m in mirrors:
            if stored:
                self._mirror_create(m, stored)
                continue
            kcols = list(m.bound.key(side))
            keys = [tuple(v.get(c) for c in kcols) for v in checked]
            self._mirror_create(m, self._rows(side, schema.name, kcols, keys))
        self.audit += [AuditEntry(env, schema.name, tuple(v.get(c) for c in pk), "create")
                       for v in (stored or checked)]
        return stored or checked

    def update(self, env: str, table: str, key: dict[str, Any], values: dict[str, Any]
               ) -> dict[str, Any]:
        """Update one row (found by ``key``) and its twins; return the row as stored."""
        side = self._side(env)
        schema = self._schema(side, table)
        mirrors = self._mirrors(side, table)
        self._check_licence(side, table, mirrors, "update")
        self._queue_if_captured(side, schema.name)
        before = self._one(side, table, key)
        ctx = RuleContext("update", env, schema.name, dict(values), before, self.principal)
        self.link.rules.run(ctx)
        kcols, kvals = self._key_cols(side, table, key)
        checked = check_values(schema, ctx.values, creating=False, env=env, key=kvals)
        for m in mirrors:
            for c in m.bound.key(side):
                if c in checked and checked[c] != before.get(c):
                    raise RowError("key fields are not editable: the key is how the twin on "
                                   "the other side is found", map=m.bound.name, side=env,
                                   table=schema.name, key=kvals, field=c, value=checked[c],
                                   hint="delete the row and create it with the new key")
        if checked:
            cols = list(checked)
            self._write(side, "update", lambda: self.sessions[side].update(
                schema.name, kcols, cols, [(kvals, tuple(checked.values()))]),
                table=schema.name, key=kvals, values=checked)
        after = {**before, **checked}
        self.writes += 1
        for m in mirrors:
            self._mirror_update(m, before, after)
        pk = list(schema.primary_key) or kcols
        self.audit.append(AuditEntry(env, schema.name, tuple(after.get(c) for c in pk),
                                     "update"))
        return after

    def delete(self, env: str, table: str, key: dict[str, Any]) -> None:
        """Delete one row (found by ``key``) and its twins."""
        side = self._side(env)
        schema = self._schema(side, table)
        mirrors = self._mirrors(side, table)
        self._check_licence(side, table, mirrors, "delete")
        self._queue_if_captured(side, schema.name)
        before = self._one(side, table, key)
        self.link.rules.run(RuleContext("delete", env, schema.name, {}, before,
                                        self.principal))
        kcols, kvals = self._key_cols(side, table, key)
        self._write(side, "delete", lambda: self.sessions[side].delete(
            schema.name, kcols, [kvals]), table=schema.name, key=kvals, values={})
        self.writes += 1
        for m in mirrors:
            self._mirror_delete(m, before)
        pk = list(schema.primary_key) or kcols
        self.audit.append(AuditEntry(env, schema.name, tuple(before.get(c) for c in pk),
                                     "delete"))

    def get(self, env: str, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        """The row as this transaction sees it, or None."""
        side = self._side(env)
        try:
            return self._one(side, table, key)
        except RowNotFound:
            return None


# -- the coordinator ------------------------------------------------------------------------
def _process_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


_OWN_START = _process_start(os.getpid()) or 0
_COUNTER = iter(range(1, 1 << 62))
_COUNTER_LOCK = threading.Lock()


def xid_prefix(link_id: str) -> str:
    return f"dw-{link_id.replace('-', '')[:8]}-"


def new_xid(link_id: str) -> str:
    """dw-<link>-<pid>-<process start>-<n>: recovery can tell whether the coordinator that
    prepared a branch is still alive (and so must not be second-guessed)."""
    with _COUNTER_LOCK:
        n = next(_COUNTER)
    return f"{xid_prefix(link_id)}{os.getpid():x}-{_OWN_START:x}-{n:x}-{os.urandom(3).hex()}"


def branch_xid(xid: str, side: Side) -> str:
    return f"{xid}-{side.value[0]}"


def transaction_of(branch: str) -> str:
    """The transaction (decision log) xid of a branch xid."""
    return branch[:-2] if branch[-2:] in ("-l", "-r") else branch


#: transactions this process's coordinators gave up deciding (InDoubt): their branches are
#: recovery's to end, even in this process (see recover)
_ABANDONED: set[str] = set()


#: the state store's record (a checkpoint under this phase, named by the transaction) of a
#: transaction its coordinator gave up deciding: any process's recovery may end it, where a
#: running coordinator's transactions are otherwise left alone
ABANDONED = "live-in-doubt"


def abandoned_transactions() -> bool:
    """Whether this process left a transaction in doubt that recovery has not ended yet."""
    return bool(_ABANDONED)


def coordinator_alive(xid: str) -> bool:
    """Whether the coordinator that made ``xid`` is still at work on it: its process is
    running, and it did not give the transaction up (InDoubt)."""
    if transaction_of(xid) in _ABANDONED:
        return False
    parts = xid.split("-")
    try:
        pid, start = int(parts[2], 16), int(parts[3], 16)
    except (IndexError, ValueError):
        return False
    return _process_start(pid) == start


def decision_record(participants: Sequence[str], principal: str,
                    audit: list[AuditRow]) -> str:
    """What a decision row carries, so that the audit trail survives a crash before the
    decision reaches the state store (:func:`read_decision_record` reads it)."""
    return json.dumps([list(participants), principal, audit], separators=(",", ":"))


def read_decision_record(record: str | None) -> tuple[list[str], str, list[AuditRow]]:
    """(participants, principal, audit rows) of a decision row's record."""
    if not record:
        return [], "recover", []
    participants, principal, audit = json.loads(record)
    return list(participants), str(principal), [list(a) for a in audit]


class Coordinator:
    """Runs one live transaction: opens a branch per side, lets the caller write, then
    commits both or neither.

    Between two databases that keep decision rows (``capabilities.last_resource``:
    PostgreSQL, MariaDB) the commit is a *last-resource* commit: the left branch is
    prepared, the right one commits in one phase with the transaction's decision row
    inserted inside it (:meth:`Branch.commit_deciding`), then the left one commits. The
    right side's COMMIT is the decision: one prepare, one flush and one local ``fdatasync``
    fewer than a two-phase commit with the decision in the state store, which learns it
    (and its audit rows) a moment later, off the transaction's path. Recovery of a prepared
    left branch reads the right side's row, or fences a commit still under way by inserting
    an abort row (:meth:`Connector.settle_decision`). A transaction that wrote on one side
    only commits that side in one phase, with its decision row there.

    Otherwise (a connector without decision rows, or a decision record over
    :data:`DECISION_RECORD_LIMIT`) it is a two-phase commit: both branches
    prepared, the decision logged durably in the state store, both committed.
    """

    def __init__(self, link: Link, principal: str | Principal,
                 hook: StepHook | None = None) -> None:
        self.link = link
        self.principal = principal.name if isinstance(principal, Principal) else principal
        self.hook = hook or (lambda step: None)
        self.stack = ExitStack()
        self.branches: dict[Side, Branch] = {}
        left, right = link.connectors[Side.LEFT], link.connectors[Side.RIGHT]
        self.xid = new_xid(link.link_id)
        self.last_resource = (left.capabilities.last_resource
                              and right.capabilities.last_resource
                              and not (left.capabilities.attach and right.capabilities.attach))
        if self.last_resource:
            # before any branch: creating it commits MariaDB's transaction (once per process)
            for c in (left, right):
                c.ensure_decisions()
        if left.capabilities.attach and right.capabilities.attach:
            ls, rs = self.stack.enter_context(left.attached_transaction(right))
            sessions = {Side.LEFT: ls, Side.RIGHT: rs}
        else:
            for c in (left, right):
                if not c.capabilities.two_phase:
                    raise ConfigError(
                        f"environment {c.name!r} ({type(c).__name__}) cannot take part in a "
                        "two-phase commit, so writes through dualwrite could not be atomic",
                        hint="live sync pairs PostgreSQL and MariaDB with each other, or two "
                        "SQLite files", code="DW204")
            try:
                for side, c in ((Side.LEFT, left), (Side.RIGHT, right)):
                    # one name per branch: both sides may live on one server, where prepared
                    # transaction names must be unique
                    self.branches[side] = c.begin_branch(branch_xid(self.xid, side))
            except BaseException:
                self._rollback()
                raise
            sessions = {s: b.session for s, b in self.branches.items()}
        self.tx = LiveTransaction(link, sessions, principal, link.state.running_maps())

    def _rollback(self) -> None:
        for b in self.branches.values():
            # A prepared branch we cannot reach now is ended by recovery (no decision: abort);
            # rolling back the other branch must not wait for that.
            with contextlib.suppress(ConnectorError):
                b.rollback()
        self.stack.close()

    def abort(self) -> None:
        if self.branches:
            self._rollback()
        else:
            # attached SQLite: leaving the context with an exception rolls back
            self.stack.__exit__(RuntimeError, RuntimeError("abort"), None)

    def commit(self) -> None:
        if not self.branches:  # attached SQLite: one connection, one COMMIT
            self.stack.close()
            if self.tx.audit:  # already committed: the log here is the audit trail
                self.link.state.log_commit_decision(self.xid, [], self.principal,
                                                    self.tx.audit)
                self.link.state.complete(self.xid)
            return
        if not self.tx.audit:
            self._rollback()
            return
        if self.last_resource:
            participants = [self.link.env_name(s) for s in Side]
            audit = audit_rows(self.tx.audit)
            record = decision_record(participants, self.principal, audit)
            if len(record) <= DECISION_RECORD_LIMIT:
                self._commit_last_resource(participants, audit, record)
                return
            # too large to ride in one row (MariaDB's max_allowed_packet bounds a statement):
            # two phases, the decision in the state store, as between other databases
        left, right = self.branches[Side.LEFT], self.branches[Side.RIGHT]
        try:
            # Both prepares are in flight at once (each costs its server a WAL flush); the
            # left one is confirmed first.
            left.start_prepare()
            try:
                right.start_prepare()
            finally:
                left.finish_prepare()
            self.hook("after_first_prepare")
            right.finish_prepare()
            self.hook("after_both_prepares")
            self.link.state.log_commit_decision(
                self.xid, [self.link.env_name(s) for s in Side], self.principal,
                self.tx.audit)
        except BaseException:
            self._rollback()
            raise
        self.hook("after_decision")
        # From here the transaction is committed: a branch that fails to commit now is
        # finished by recovery, never rolled back. Both commits are in flight at once too.
        pending: list[Side] = []
        started: list[tuple[Side, Branch]] = []
        for side, b in ((Side.LEFT, left), (Side.RIGHT, right)):
            try:
                b.start_commit()
                started.append((side, b))
            except ConnectorError:
                pending.append(side)
        for i, (side, b) in enumerate(started):
            try:
                b.finish_commit()
            except ConnectorError:
                pending.append(side)
            if i == 0:
                self.hook("after_first_commit")
        for side in pending:
            try:
                self.link.connectors[side].finish_prepared(branch_xid(self.xid, side),
                                                           commit=True)
            except ConnectorError:
                return  # left for `dualwrite recover` / the next start
        self.link.state.complete(self.xid)


    def _commit_last_resource(self, participants: list[str], audit: list[AuditRow],
                              record: str) -> None:
        """Prepare the left branch, commit the right one with the decision (``record``),
        commit the left one; a transaction that wrote on one side only commits it in one
        phase."""
        state = self.link.state
        used = [s for s in Side if self.branches[s].touched()]
        last = Side.RIGHT if Side.RIGHT in used or not used else Side.LEFT
        other = last.other if last.other in used else None
        lr, ob = self.branches[last], self.branches[last.other]
        if other is None:  # nothing written there: its BEGIN is ended
            with contextlib.suppress(ConnectorError):
                ob.rollback()
        else:
            try:
                ob.prepare()
            except BaseException:
                self._rollback()
                raise
        self.hook("after_first_prepare")
        try:
            lr.commit_deciding(self.xid, record)
        except BaseException as exc:
            outcome = self._settle(last, exc)
            if outcome != "commit":
                if other is not None:
                    with contextlib.suppress(ConnectorError):
                        ob.rollback()
                raise
            log.warning("%s: the commit of transaction %s failed as it was sent (%s); its "
                        "decision row says it committed", self.link.env_name(last), self.xid,
                        exc)
        self.hook("after_decision")
        # committed from here: a prepared branch that fails to commit now is finished by
        # recovery (the decision row says commit), never rolled back
        completed = True
        if other is not None:
            try:
                ob.commit()
            except ConnectorError:
                try:
                    self.link.connectors[other].finish_prepared(
                        branch_xid(self.xid, other), commit=True)
                except ConnectorError:
                    completed = False  # left for `dualwrite recover` / the next start
            self.hook("after_first_commit")
        state.note_decision(self.xid, participants, self.principal, audit,
                            completed=completed,
                            forget=self.link.connectors[last].forget_decisions)

    def _settle(self, last: Side, exc: BaseException) -> str:
        """What became of a last resource's commit that raised ``exc``: settled by its
        decision row (an abort row fences it where there is none). Raises InDoubt, leaving
        the other branch prepared for recovery, where the database cannot be asked."""
        try:
            outcome, _ = self.link.connectors[last].settle_decision(self.xid)
            return outcome
        except ConnectorError as settle:
            for b in self.branches.values():
                b.release()
            _ABANDONED.add(self.xid)
            try:  # so that recovery in another process may end it too
                self.link.state.put_checkpoint(self.xid, ABANDONED, None,
                                               {"environment": self.link.env_name(last)})
            except Exception:
                log.warning("could not record transaction %s as in doubt in the state store: "
                            "only this process settles it", self.xid, exc_info=True)
            raise InDoubt(
                f"the commit of transaction {self.xid} in {self.link.env_name(last)!r} "
                f"failed ({exc}) and whether it happened cannot be found out now "
                f"({settle.message}): the other side stays prepared (its rows locked) until "
                "it is", environment=self.link.env_name(last),
                hint="this process settles it by the decision row at its next live "
                "transaction once the database answers; so does `dualwrite recover`, run "
                "anywhere") from exc


@dataclass
class RecoveryAction:
    xid: str
    environment: str
    action: str  # "committed" | "rolled back" | "skipped (coordinator alive)"

    def as_dict(self) -> dict[str, str]:
        return {"xid": self.xid, "environment": self.environment, "action": self.action}


@dataclass
class RecoveryReport:
    actions: list[RecoveryAction] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    #: decisions read from last resources' decision rows into the state store
    imported: list[str] = field(default_factory=list)


def _decided(transaction: str, record: str | None, where: Connector) -> Decided:
    """A decision row read back, as the state store imports it (completion unknown: noted
    once no branch of it is left prepared)."""
    participants, principal, audit = read_decision_record(record)
    return (now_iso(), transaction, participants, principal, audit, False,
            where.forget_decisions)


def recover(link_id: str, connectors: dict[Side, Connector], state: StateStore,
            *, in_doubt: Collection[str] = ()) -> RecoveryReport:
    """Commit or roll back every branch of this link left prepared by a coordinator that is
    no longer running, according to the decision log (presumed abort). Transactions
    ``in_doubt`` (an OData service's answer still unknown: see
    :mod:`dualwrite.engine.live_odata`) are left prepared."""
    report = RecoveryReport()
    prefix = xid_prefix(link_id)
    # given up before the branches are listed (so a branch of theirs still prepared is listed)
    given_up = {t for t in _ABANDONED if t.startswith(prefix)}
    abandoned = {x for x, _ in state.checkpoints_in_phase(ABANDONED) if x.startswith(prefix)}

    def gone(xid: str) -> bool:
        """Nobody is at work on ``xid``: its coordinator stopped, or gave it up (InDoubt),
        in this process or, as the state store says, in another."""
        return transaction_of(xid) in abandoned or not coordinator_alive(xid)

    # Decision rows left by coordinators that are gone (a crash before their decision
    # reached the state store): into it, with their audit rows. A live coordinator's rows
    # are on their way already.
    for conn in connectors.values():
        if not conn.capabilities.last_resource:
            continue
        left = [(x, r) for x, outcome, r in conn.decisions(prefix)
                if outcome == "commit" and gone(x)]
        if left:
            state.import_decisions([_decided(x, r, conn) for x, r in left])
            report.imported += [x for x, _ in left]
    prepared_anywhere: set[str] = set()
    ended: set[str] = set()
    for side, conn in connectors.items():
        for xid in conn.recover(prefix):
            transaction = transaction_of(xid)
            prepared_anywhere.add(transaction)
            if transaction in in_doubt:
                report.actions.append(RecoveryAction(xid, conn.name, "left in doubt"))
                continue
            if not gone(xid):
                report.actions.append(RecoveryAction(xid, conn.name,
                                                     "skipped (coordinator alive)"))
                continue
            commit = state.decision(transaction) == "commit"
            last = connectors[side.other]
            if not commit and last.capabilities.last_resource:
                # a last-resource commit: its row decides; where there is none, an abort
                # row fences a commit still under way (which then fails on the key)
                outcome, record = last.settle_decision(transaction)
                if outcome == "commit":
                    state.import_decisions([_decided(transaction, record, last)])
                    report.imported.append(transaction)
                    commit = True
            conn.finish_prepared(xid, commit=commit)
            ended.add(transaction)
            report.actions.append(RecoveryAction(xid, conn.name,
                                                 "committed" if commit else "rolled back"))
    # given-up transactions with nothing left prepared (ended here, or by another process);
    # one given up since the listing is not known to be ended: the next recovery's
    for transaction in [t for t in abandoned | given_up
                        if t in ended or t not in prepared_anywhere]:
        if transaction in abandoned:
            state.clear_checkpoint(transaction, ABANDONED)
        _ABANDONED.discard(transaction)
    state.flush_completions()
    for xid in state.incomplete_decisions():
        if xid.startswith(prefix) and (xid not in prepared_anywhere or gone(xid)):
            state.complete(xid, now=True)
            report.completed.append(xid)
    return report


__all__ = ["STEPS", "Coordinator", "LiveTransaction", "RecoveryReport", "RuleContext", "Rules",
           "recover"]
