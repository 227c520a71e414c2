"""Initial sync and its dry run, plan.

Maps run in ``depends_on`` order. Each map is a merge of both sides in key order, processed in
chunks: the chunk's writes are committed on each side, failed rows go to the error inbox, and
only then is the checkpoint (the chunk's last key) stored. Killed at any point and run again,
the sync resumes after the checkpoint; whatever a killed chunk had already written compares
equal on the rerun, so nothing is duplicated or lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dualwrite.connectors.base import Connector, Row
from dualwrite.engine.bulk import CHUNK_FACTOR, BulkChunk, BulkPath
from dualwrite.engine.diff import (
    Classified,
    Create,
    CreatedDefaults,
    Entry,
    Failure,
    MapDiffer,
    Update,
    digest,
    key_digest,
)
from dualwrite.engine.live import explain
from dualwrite.engine.lookups import PlannedLookups, PlannedRows
from dualwrite.engine.state import MapState, StateStore
from dualwrite.errors import ConstraintViolation, RowError, TransientConnectorError
from dualwrite.model.binding import BoundMap
from dualwrite.model.maps import Side

PHASE = "initial"
TRANSIENT_RETRIES = 5

#: progress(map name, rows merged so far in this run, total expected or None)
Progress = Callable[[str, int, int | None], None]


@dataclass
class MapResult:
    map: str
    created: dict[str, int] = field(default_factory=lambda: {"left": 0, "right": 0})
    updated: dict[str, int] = field(default_factory=lambda: {"left": 0, "right": 0})
    unchanged: int = 0
    errors: dict[str, int] = field(default_factory=lambda: {"left": 0, "right": 0})
    resumed_from: Row | None = None
    seconds: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    #: plan with ``errors``: every row it predicts to fail
    failures: list[dict[str, Any]] = field(default_factory=list)
    #: rows inside each side's filter whose key is null (never read, never synced)
    null_keys: dict[str, int] = field(default_factory=lambda: {"left": 0, "right": 0})
    #: what the user should know beyond the counts (null keys, with what to do)
    warnings: list[str] = field(default_factory=list)
    #: which path wrote the rows: "bulk (...)" or "rows (why not bulk)"; empty for plan
    path: str = ""
    #: rows written by the bulk path
    bulk_rows: int = 0

    def note_null_keys(self, differ: MapDiffer) -> None:
        for s in Side:
            n = self.null_keys[s.value] = differ.null_keys(s)
            if n:
                self.warnings.append(differ.null_key_warning(s, n))

    def add(self, other: dict[str, Any]) -> None:
        for k in ("created", "updated", "errors"):
            for s in ("left", "right"):
                getattr(self, k)[s] += int(other.get(k, {}).get(s, 0))
        self.unchanged += int(other.get("unchanged", 0))

    def counts(self) -> dict[str, Any]:
        return {"created": dict(self.created), "updated": dict(self.updated),
                "unchanged": self.unchanged, "errors": dict(self.errors)}

    def as_dict(self) -> dict[str, Any]:
        return {"map": self.map, **self.counts(), "seconds": round(self.seconds, 3),
                "resumed": self.resumed_from is not None, "samples": self.samples,
                "failures": self.failures, "null_keys": dict(self.null_keys),
                "warnings": self.warnings, "path": self.path, "bulk_rows": self.bulk_rows}


def chunks(entries: Iterator[Entry], size: int) -> Iterator[list[Entry]]:
    chunk: list[Entry] = []
    for e in entries:
        chunk.append(e)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def failure_doc(f: Failure) -> dict[str, Any]:
    """A predicted or actual row failure as plan lists it."""
    e = f.error
    return {"key": list(f.key), "side": f.side.value, "operation": f.operation,
            "table": e.table, "field": e.field, "value": e.value, "reason": e.reason,
            "hint": e.hint}


def creating(state: StateStore, map_name: str) -> dict[Side, set[str]]:
    """Key digests of the rows a sync that stopped mid-chunk was creating, per side."""
    return {Side(s): keys for s, keys in state.creating(map_name).items()}


def created_defaults(state: StateStore, differ: MapDiffer, chunk: Sequence[Entry],
                     stopped: dict[Side, set[str]] | None = None) -> CreatedDefaults:
    """What the state store knows of the self-filled one-way fields of the chunk's paired
    rows (see :meth:`MapDiffer.classify`); nothing to read when the map has none. A row that
    a stopped sync was creating (``stopped``, from :func:`creating`) and whose values were
    not read back counts as self-filled, its values not known yet."""
    if not any(differ.self_filled.values()):
        return {}
    keys = {key_digest(e.key): tuple(e.key) for e in chunk
            if e.left is not None and e.right is not None}
    if not keys:
        return {}
    out: CreatedDefaults = {
        (Side(side), keys[kd]): fields for (side, kd), fields in
        state.created_defaults(differ.bound.name, list(keys)).items()}
    for s, digests in (stopped or {}).items():
        for kd in digests.intersection(keys):
            out.setdefault((s, keys[kd]), dict.fromkeys(differ.self_filled_columns[s]))
    return out


class InitialSync:
    """Runs initial sync (or its plan) for bound maps between two connectors."""

    def __init__(self, connectors: dict[Side, Connector], state: StateStore, *,
                 batch_size: int = 5000, progress: Progress | None = None,
                 bulk: bool = True) -> None:
        self.connectors = connectors
        self.state = state
        self.batch_size = batch_size
        #: whether one-sided key ranges may take the bulk path (dualwrite.engine.bulk)
        self.bulk = bulk
        self.progress = progress

    # -- plan --------------------------------------------------------------------------------
    def plan(self, bound: BoundMap, *, master: Side | None = None, samples: int = 5,
             planned: PlannedRows | None = None, errors: bool = False) -> MapResult:
        """What sync would do for one map, writing nothing. With ``planned`` (the rows that
        plans of maps earlier in ``depends_on`` order predict), lookups to those rows count
        as resolving, as they will when sync runs the maps in that order; this map's own
        creates are added to it. With ``errors``, every row predicted to fail is listed."""
        differ = MapDiffer(bound, self.connectors, master=master)
        if planned is not None:
            differ.resolver = PlannedLookups(self.connectors, planned)
        stopped = creating(self.state, bound.name)
        result = MapResult(bound.name)
        result.note_null_keys(differ)
        self._bulk_path(differ, result)
        started = time.monotonic()
        done = 0
        for chunk in chunks(differ.entries(after=None, batch_size=self.batch_size),
                            self.batch_size):
            c = differ.classify(chunk, created=created_defaults(self.state, differ, chunk,
                                                                stopped))
            for s in Side:
                result.created[s.value] += len(c.creates[s])
                result.updated[s.value] += len(c.updates[s])
                for u in c.updates[s]:
                    if len(result.samples) < samples:
                        result.samples.append({
                            "key": list(u.key), "side": s.value, "operation": "update",
                            "fields": [{"field": d.field, "left": d.left, "right": d.right}
                                       for d in u.diffs]})
                for cr in c.creates[s]:
                    if len(result.samples) < samples and not any(
                            x["operation"] == "create" and x["side"] == s.value
                            for x in result.samples):
                        result.samples.append({"key": list(cr.key), "side": s.value,
                                               "operation": "create"})
            if planned is not None:
                for s in Side:
                    planned.add(s, bound.table(s), differ.insert_columns[s],
                                [cr.values for cr in c.creates[s]])
            for f in c.failures:
                result.errors[f.side.value] += 1
                if errors:
                    result.failures.append(failure_doc(f))
                if len(result.samples) < samples:
                    result.samples.append({"key": list(f.key), "side": f.side.value,
                                           "operation": f.operation, "error": f.error.reason})
            result.unchanged += c.unchanged
            done += len(chunk)
            if self.progress:
                self.progress(bound.name, done, None)
        result.seconds = time.monotonic() - started
        return result

    # -- sync --------------------------------------------------------------------------------
    def run(self, bound: BoundMap, *, master: Side | None = None, resume: bool = True,
            skip_errors: bool = False) -> MapResult:
        """Sync one map. Resumes from the map's checkpoint when one exists. With
        ``skip_errors``, rows whose key has an open inbox entry are not tried again (they
        stay in the inbox, untouched)."""
        differ = MapDiffer(bound, self.connectors, master=master)
        result = MapResult(bound.name)
        result.note_null_keys(differ)
        after, stats = self.state.get_checkpoint(bound.name, PHASE) if resume else (None, {})
        if after is not None:
            result.resumed_from = after
            result.add(stats)
        stopped = creating(self.state, bound.name)
        open_errors = {(e.side, e.key) for e in self.state.errors(bound.name)}
        skipped = {tuple(k) for _s, k in open_errors} if skip_errors else set()
        started = time.monotonic()
        total = None
        if self.progress:
            total = max(differ.count(Side.LEFT), differ.count(Side.RIGHT))
        done = 0
        bulk = None if open_errors else self._bulk_path(differ, result)
        if bulk is not None:
            done = self._run_bulk(differ, bulk, result, after, stopped, total)
        else:
            for chunk in chunks(differ.entries(after=after, batch_size=self.batch_size),
                                self.batch_size):
                if skipped:
                    left = [e for e in chunk if tuple(e.key) not in skipped]
                    done += len(chunk) - len(left)
                    if not left:
                        if self.progress:
                            self.progress(bound.name, done, total)
                        continue
                    chunk = left
                self._rows(differ, chunk, result, stopped, open_errors)
                done += len(chunk)
                if self.progress:
                    self.progress(bound.name, done, total)
        self.state.clear_checkpoint(bound.name, PHASE)
        self.state.clear_creating(bound.name)
        self.state.set_map_state(bound.name, MapState.SYNCED, initial_synced=True)
        result.seconds = time.monotonic() - started
        return result

    def _rows(self, differ: MapDiffer, chunk: list[Entry], result: MapResult,
              stopped: dict[Side, set[str]], open_errors: set[tuple[str, Row]]) -> None:
        """The row path for one chunk: classify, write, record failures, checkpoint."""
        bound = differ.bound
        c = self._with_retries(
            lambda ch=chunk: differ.classify(  # type: ignore[misc]
                ch, created=created_defaults(self.state, differ, ch, stopped)))
        self._note_self_filled(differ, c)
        failed = self._apply(differ, c)
        self._read_self_filled(differ, c, failed)
        self._count(differ, c, failed, result)
        if open_errors:
            failed_keys = {(f.side.value, tuple(f.key)) for f in [*c.failures, *failed]}
            self._close_fixed(bound.name, chunk, open_errors, failed_keys)
        self.state.put_checkpoint(bound.name, PHASE, chunk[-1].key, result.counts())

    def _count(self, differ: MapDiffer, c: Classified, failed: list[Failure],
               result: MapResult) -> None:
        """Add a written chunk to the result; its failures to the inbox."""
        for f in [*c.failures, *failed]:
            result.errors[f.side.value] += 1
            self.state.add_error(differ.bound.name, f.side.value, f.key, f.operation,
                                 str(f.error.message), f.payload)
        for s in Side:
            result.created[s.value] += len(c.creates[s]) - sum(
                1 for f in failed if f.side is s and f.operation == "create")
            result.updated[s.value] += len(c.updates[s]) - sum(
                1 for f in failed if f.side is s and f.operation == "update")
        result.unchanged += c.unchanged

    def _bulk_path(self, differ: MapDiffer, result: MapResult) -> BulkPath | None:
        """The bulk path of the map from the side with more rows, where it compiles; the
        result says which path runs and why (``plan`` shows it)."""
        if not self.bulk:
            result.path = "rows (sync.bulk is off)"
            return None
        counts = {s: differ.count(s) for s in Side}
        source = Side.LEFT if counts[Side.LEFT] >= counts[Side.RIGHT] else Side.RIGHT
        got = BulkPath.compile(differ, source, self.batch_size * CHUNK_FACTOR)
        if isinstance(got, str):
            result.path = f"rows ({got})"
            return None
        result.path = f"bulk ({source.value} to {source.other.value}, {got.fmt})"
        return got

    def _run_bulk(self, differ: MapDiffer, bulk: BulkPath, result: MapResult,
                  after: Row | None, stopped: dict[Side, set[str]], total: int | None
                  ) -> int:
        """Sync the map range by range: a range with no rows on the target goes by the bulk
        path (its misses by the row path), any other by the row path until past it."""
        bound = differ.bound
        t = bulk.source.other
        done = 0
        while True:
            got: BulkChunk | None
            try:
                got = self._with_retries(lambda a=after: bulk.chunk(a))  # type: ignore[misc]
            except ConstraintViolation:
                got = None  # the target refused the load (rolled back): the row path says why
            if got is not None:
                result.created[t.value] += got.loaded
                result.bulk_rows += got.loaded
                if got.misses:
                    c = self._with_retries(
                        lambda m=got.misses: differ.classify(m))  # type: ignore[misc]
                    self._count(differ, c, self._apply(differ, c), result)
                done += got.loaded + len(got.misses)
                if got.upto is None:
                    return done
                after = got.upto
                self.state.put_checkpoint(bound.name, PHASE, after, result.counts())
            else:
                # the row path up to the range's end: one bulk range of row chunks
                n = 0
                for chunk in chunks(differ.entries(after=after, batch_size=self.batch_size),
                                    self.batch_size):
                    self._rows(differ, chunk, result, stopped, set())
                    done += len(chunk)
                    n += len(chunk)
                    after = chunk[-1].key
                    if self.progress:
                        self.progress(bound.name, done, total)
                    if n >= bulk.limit:
                        break
                else:
                    return done
            if self.progress:
                self.progress(bound.name, done, total)

    def _note_self_filled(self, differ: MapDiffer, c: Classified) -> None:
        """Before the chunk's creates are written: which rows it creates on a side with
        self-filled one-way fields, in one record per side (a sync stopped before
        :meth:`_read_self_filled` then adopts their values on the rerun, instead of writing
        them over the other side); and the values classify adopted."""
        name = differ.bound.name
        sides = {t.value: [key_digest(cr.key) for cr in c.creates[t]] for t in Side
                 if differ.self_filled_columns[t] and c.creates[t]}
        if sides:
            self.state.put_creating(name, sides)
        for t in Side:
            adopted = [(key_digest(k), {col: d}) for s, k, col, d in c.adopted if s is t]
            self.state.note_created_defaults(name, t.value, adopted)

    def _read_self_filled(self, differ: MapDiffer, c: Classified, failed: list[Failure]
                          ) -> None:
        """After the chunk's creates are written: read back the values each created row got
        for its self-filled one-way fields, and keep their digests."""
        name, bound = differ.bound.name, differ.bound
        for t in Side:
            cols = differ.self_filled_columns[t]
            lost = {tuple(f.key) for f in failed if f.side is t and f.operation == "create"}
            creates = [cr for cr in c.creates[t] if tuple(cr.key) not in lost]
            if not cols or not creates:
                continue
            key = list(bound.key(t))
            kpos = [differ.insert_columns[t].index(k) for k in key]
            targets = [tuple(cr.values[p] for p in kpos) for cr in creates]
            by_key = {key_digest(k): cr.key for k, cr in zip(targets, creates, strict=True)}
            rows = self._with_retries(
                lambda t=t, key=key, cols=cols, targets=targets:  # type: ignore[misc]
                self.connectors[t].fetch(bound.table(t), [*key, *cols], key=key, keys=targets))
            n = len(key)
            got = []
            for r in rows:
                origin = by_key.get(key_digest(tuple(r[:n])))
                if origin is not None:
                    got.append((key_digest(origin), {col: digest(v) for col, v in
                                                     zip(cols, r[n:], strict=True)}))
            self.state.note_created_defaults(name, t.value, got)

    def _close_fixed(self, map_name: str, chunk: Sequence[Entry],
                     open_errors: set[tuple[str, Row]], failed: set[tuple[str, Row]]) -> None:
        keys = {tuple(e.key) for e in chunk}
        for side, key in list(open_errors):
            if tuple(key) in keys and (side, tuple(key)) not in failed:
                self.state.clear_errors(map_name, side, key)
                open_errors.discard((side, key))

    def _with_retries(self, fn: Callable[[], Any]) -> Any:
        delay = 0.2
        for attempt in range(TRANSIENT_RETRIES):
            try:
                return fn()
            except TransientConnectorError:
                if attempt == TRANSIENT_RETRIES - 1:
                    raise
                time.sleep(delay)  # back off before retrying a lost connection or deadlock
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def write_classified(self, differ: MapDiffer, c: Classified) -> list[Failure]:
        """Write what ``c`` says (creates and updates on each side) as initial sync writes a
        chunk; returns the rows the databases refused (not yet in the inbox)."""
        return self._apply(differ, c)

    def _apply(self, differ: MapDiffer, c: Classified) -> list[Failure]:
        """Write one chunk: per side one transaction; when the database rejects it, write the
        rows one by one so that only the bad ones go to the inbox."""
        failed: list[Failure] = []
        for t in (Side.RIGHT, Side.LEFT):
            creates, updates = c.creates[t], c.updates[t]
            if not creates and not updates:
                continue
            try:
                self._with_retries(lambda t=t, cr=creates, up=updates:  # type: ignore[misc]
                                   self._write(differ, t, cr, up))
            except ConstraintViolation:
                for cr in creates:
                    try:
                        self._write(differ, t, [cr], [])
                    except ConstraintViolation as exc:
                        failed.append(self._failure(differ, t, cr.key, "create", exc,
                                                    differ.insert_columns[t], cr.values))
                for up in updates:
                    try:
                        self._write(differ, t, [], [up])
                    except ConstraintViolation as exc:
                        failed.append(self._failure(
                            differ, t, up.key, "update", exc,
                            up.columns or differ.update_columns[t], up.values))
        return failed

    @staticmethod
    def _failure(differ: MapDiffer, t: Side, key: Row, op: str, exc: ConstraintViolation,
                 columns: list[str], values: Row) -> Failure:
        payload = dict(zip(columns, values, strict=True))
        # the column (and value) the database's message names, where it names one
        column, value = explain(exc, payload)
        err = RowError(exc.message, map=differ.bound.name, side=t.value,
                       table=differ.bound.table(t), key=key, field=column, value=value,
                       hint=exc.hint)
        err.__cause__ = exc  # what the service or database said, kind and all
        return Failure(t, key, op, err, payload)

    def _write(self, differ: MapDiffer, t: Side, creates: list[Create],
               updates: list[Update]) -> None:
        table = differ.bound.table(t)
        with self.connectors[t].transaction() as tx:
            if creates:
                tx.insert(table, differ.insert_columns[t], [cr.values for cr in creates])
            groups: dict[tuple[str, ...], list[Update]] = {}
            for u in updates:
                groups.setdefault(tuple(u.columns if u.columns is not None
                                        else differ.update_columns[t]), []).append(u)
            for columns, group in groups.items():
                tx.update(table, differ.bound.key(t), list(columns),
                          [(u.target_key, u.values) for u in group])
