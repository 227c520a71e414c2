"""Initial sync's bulk path: rows streamed between the databases' own bulk paths.

The row path (:mod:`dualwrite.engine.initial_sync`) reads both sides, merges them by key and
builds every row in Python. Where a range of keys exists on one side only — the first sync
into an empty application, the common case — every row of the range is a create on the other
side, built the same way. The bulk path then compiles the map into the source's export query:
a copied column as itself, a value map or a lookup into the target as a ``CASE`` over its
pairs, a default as a constant, and the source's filter as its ``WHERE``; the rows stream
from the source's bulk export (PostgreSQL ``COPY ... TO STDOUT``) into the target's bulk load
(``COPY ... FROM STDIN``, MariaDB ``LOAD DATA LOCAL INFILE``) and are never decoded in
Python.

Exactness is the contract: a row goes through the bulk path only where the row builders
would write exactly what the database writes from the export's text. So a field is compiled
only when its value needs no conversion in Python (same kind on both ends, a plan whose
steps at most refuse a value, a kind whose text the target reads back exactly), and a value
map or lookup only over the pairs whose answer the engine computed itself (the value map's
own answers, the target's lookup table read whole). A row whose value is in no pair (a
miss: a value-map miss, an unresolved lookup, a value cased differently from the pair) is
left out of the stream and comes back through the row path, which gives it its exact value
or its precise inbox entry.
A chunk whose load the target rejects (a constraint, a value too long) is rolled back and
written by the row path instead, so errors reach the inbox row by row as before.

A map the bulk path cannot compile (a lookup out of the source, a lookup with candidates or
within a company, company striping, self-filled one-way fields, a conversion) syncs by the
row path, as before; ``plan`` and the sync's result say which path ran and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from dualwrite.connectors.base import BULK_FORMATS, BulkField, Connector, Row
from dualwrite.engine.diff import Entry, MapDiffer, coerce
from dualwrite.errors import DualwriteError
from dualwrite.model.maps import Side
from dualwrite.model.schema import Kind
from dualwrite.model.values import canonical

#: kinds whose text each format carries exactly from source to target (same kind both ends).
#: Not FLOAT: a ``real`` written as text reads back into a ``double`` as its shortest decimal
#: (0.1), where the engine writes the real's binary value (0.10000000149011612).
_KINDS = {
    "copy-text": frozenset({Kind.STRING, Kind.INTEGER, Kind.DECIMAL, Kind.BOOLEAN,
                            Kind.DATE, Kind.DATETIME, Kind.TIME, Kind.UUID}),
    "copy-text-portable": frozenset({Kind.STRING, Kind.INTEGER, Kind.DECIMAL, Kind.DATE,
                                     Kind.DATETIME}),
}
#: kinds matched by the database's equality exactly as the engine matches them (value-map
#: keys and lookup natural keys)
_MATCHED = frozenset({Kind.STRING, Kind.INTEGER})
#: kinds a key may have for the range checks of the other side
_KEY_KINDS = frozenset({Kind.STRING, Kind.INTEGER})
#: a lookup table read whole into the export query at most this big
LOOKUP_PAIRS_MAX = 20_000
#: a bulk chunk is this many times the sync's batch size (its rows are never in memory;
#: the checkpoint is stored after each)
CHUNK_FACTOR = 10


class _NotBulk(Exception):
    """Why a map cannot take the bulk path (a message for ``plan``)."""


@dataclass
class BulkChunk:
    """One range (after, upto] written by the bulk path."""

    upto: Row | None
    loaded: int
    #: rows of the range the export left out, as entries for the row path
    misses: list[Entry]


class BulkPath:
    """The bulk path of one map from ``source`` to the other side."""

    def __init__(self, differ: MapDiffer, source: Side, fmt: str, fields: list[BulkField],
                 limit: int) -> None:
        self.differ = differ
        self.source = source
        self.fmt = fmt
        self.fields = fields
        self.limit = limit

    @classmethod
    def compile(cls, differ: MapDiffer, source: Side, limit: int) -> BulkPath | str:
        """The bulk path from ``source``, or why there is none."""
        try:
            return cls._compile(differ, source, limit)
        except _NotBulk as exc:
            return str(exc)

    @classmethod
    def _compile(cls, differ: MapDiffer, s: Side, limit: int) -> BulkPath:
        t = s.other
        src, dst = differ.connectors[s], differ.connectors[t]
        fmt = next((f for f in BULK_FORMATS if f in src.capabilities.bulk_export
                    and f in dst.capabilities.bulk_import), None)
        if fmt is None:
            raise _NotBulk(f"no bulk format from {src.name} to {dst.name}")
        b = differ.bound
        if differ.company_cols[t]:
            raise _NotBulk("the map is striped by company")
        if differ.self_filled_columns[t]:
            raise _NotBulk(f"{t.value} fills one-way fields itself (read back per row)")
        for i, k in zip(differ.key_idx[s], b.key(t), strict=True):
            ks, kt = differ.kinds[s][differ.columns[s][i]], differ.kinds[t][k]
            if ks is not kt or ks not in _KEY_KINDS:
                raise _NotBulk(f"key {k} is not text or integer on both sides")
        fields = [cls._field(differ, s, i, fmt) for i in differ.create_into[t]]
        return cls(differ, s, fmt, fields, limit)

    @staticmethod
    def _field(differ: MapDiffer, s: Side, i: int, fmt: str) -> BulkField:
        t = s.other
        f = differ.bound.fields[i]
        src, dst = f.end(s), f.end(t)
        kind_t = differ.kinds[t][dst.column or ""]
        line = f.spec.text
        if src.column is None:
            return BulkField(constant=_literal(coerce(f.spec.default, kind_t), fmt, line))
        if src.is_lookup:
            raise _NotBulk(f"{line}: a lookup out of {s.value} is resolved per row")
        kind_s = differ.kinds[s][src.column]
        vm = f.spec.values
        if vm is None and not dst.is_lookup:
            p = differ.plan(s, t, src.column, dst.column or "", i)
            # a plan whose steps only refuse values leaves the refusing to the target, whose
            # rejection sends the chunk to the row path: the target refuses the same values
            # itself (text_safe), or its loader reports every value it changes
            exact = p.text_safe or (p.refuses_only and
                                    differ.connectors[t].capabilities.bulk_load_checks)
            if kind_s is not kind_t or kind_t not in _KINDS[fmt] or not exact:
                raise _NotBulk(f"{line}: {p.pair} is converted per row")
            return BulkField(column=src.column)
        if kind_s not in _MATCHED:
            raise _NotBulk(f"{line}: values of kind {kind_s.value} are matched per row")
        # the source values to match, each with the answer the row builders give it
        answers: dict[Any, Any] = {}
        if vm is not None:
            mapping = vm.to_right if s is Side.LEFT else vm.to_left
            for candidate in (vm.pairs if s is Side.LEFT else vm.pairs.values()):
                try:
                    v = coerce(candidate, kind_s)
                except (DualwriteError, ValueError, TypeError, ArithmeticError):
                    continue  # no value of the column equals it
                found, out = mapping(v)
                if found and v is not None:
                    answers[v] = out
        if dst.is_lookup:
            if len(dst.targets) != 1 or dst.scoped or dst.targets[0].next is not None:
                raise _NotBulk(f"{line}: a lookup with candidates or hops is resolved per row")
            ids = _lookup_pairs(differ.connectors[t], dst.targets[0].table,
                                dst.targets[0].key, dst.targets[0].id, line)
            if vm is None:
                answers = {}
                for natural, ident in ids.items():
                    try:
                        v = coerce(natural, kind_s)
                    except (DualwriteError, ValueError, TypeError, ArithmeticError):
                        continue
                    if canonical(v) == natural:
                        answers[v] = ident
            else:
                answers = {v: ids[canonical(out)] for v, out in answers.items()
                           if out is not None and canonical(out) in ids}
            pairs = tuple((v, _literal(ident, fmt, line)) for v, ident in answers.items())
        else:
            pairs = tuple((v, _literal(coerce(out, kind_t), fmt, line))
                          for v, out in answers.items())
        return BulkField(column=src.column, pairs=pairs)

    # -- running -----------------------------------------------------------------------------
    def chunk(self, after: Row | None) -> BulkChunk | None:
        """Write the next range after ``after`` by the bulk path, or None (having written
        nothing) when the other side has rows in it: the row path merges those."""
        d, s = self.differ, self.source
        t = s.other
        b = d.bound
        src, dst = d.connectors[s], d.connectors[t]
        key_s, key_t = list(b.key(s)), list(b.key(t))
        upto = src.bulk_boundary(b.table(s), key_s, where=b.filter(s), after=after,
                                 limit=self.limit)
        if dst.has_rows(b.table(t), key_t, after=after, upto=upto):
            return None
        with src.bulk_export(b.table(s), self.fields, key=key_s, where=b.filter(s),
                             after=after, upto=upto, fmt=self.fmt) as blocks:
            loaded = dst.bulk_load(b.table(t), d.insert_columns[t], blocks, fmt=self.fmt)
        rows = src.bulk_misses(b.table(s), d.columns[s], self.fields, key=key_s,
                               where=b.filter(s), after=after, upto=upto, fmt=self.fmt)
        kidx = d.key_idx[s]
        misses = [Entry(tuple(r[i] for i in kidx), r if s is Side.LEFT else None,
                        r if s is Side.RIGHT else None) for r in rows]
        return BulkChunk(upto, loaded, misses)


def _literal(value: Any, fmt: str, line: str) -> Any:
    """``value`` as a constant of the export query, where the format writes it exactly."""
    ok = value is None or type(value) in (str, int, Decimal) or (
        type(value) is bool and fmt == "copy-text")
    if not ok:
        raise _NotBulk(f"{line}: a {type(value).__name__} value is written per row")
    return value


def _lookup_pairs(conn: Connector, table: str, key: str, ident: str, line: str
                  ) -> dict[Any, Any]:
    """canonical(natural key) -> id of every row of a small lookup table, as the resolver
    would answer (a natural key held by several rows is not compiled)."""
    if conn.count(table) > LOOKUP_PAIRS_MAX:
        raise _NotBulk(f"{line}: lookup table {table} has more than {LOOKUP_PAIRS_MAX:,} rows")
    pk: Sequence[str] = conn.describe(table).primary_key or (ident,)
    out: dict[Any, Any] = {}
    for batch in conn.read(table, [*pk, key, ident], key=list(pk)):
        for r in batch:
            natural, value = r[len(pk)], r[len(pk) + 1]
            if natural is None or value is None:
                continue
            ck = canonical(natural)
            if ck in out:
                raise _NotBulk(f"{line}: natural key {natural!r} names several rows of {table}")
            out[ck] = value
    return out
