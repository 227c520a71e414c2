"""The demo's schemas, maps and seed data agree with each other.

Seeds two ERP/CRM pairs of SQLite files at scale 1 (once per module) and checks: the seed is
deterministic; every bundled map loads and names only columns the schemas have; lookups are
declared as foreign keys and every foreign-key value resolves; each map's rows split into
identical / ERP-only / CRM-only / differing in roughly the intended shares; rows outside the
maps' filters exist. Checks use the SQLAlchemy metadata directly, not the engine's validator.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dualwrite.demo.catalog import MAP_NAMES, map_texts
from dualwrite.demo.schema import crm_metadata, erp_metadata
from dualwrite.demo.seed import seed
from dualwrite.model.maps import Side, TableMap, find_cycles, parse_map_document
from dualwrite.model.notation import Direction, FieldRef
from dualwrite.model.schema import find_table
from dualwrite.model.values import canonical
from dualwrite.model.yamlio import load_yaml

ERP_MD = erp_metadata()
CRM_MD = crm_metadata()


@dataclass
class Pair:
    erp: sa.Engine
    crm: sa.Engine
    counts: dict[str, dict[str, int]]
    seconds: float


def _seed_pair(directory: Path) -> Pair:
    directory.mkdir(parents=True, exist_ok=True)
    erp = sa.create_engine(f"sqlite:///{directory / 'erp.db'}")
    crm = sa.create_engine(f"sqlite:///{directory / 'crm.db'}")
    erp_metadata().create_all(erp)
    crm_metadata().create_all(crm)
    started = time.monotonic()
    counts = seed(erp, crm, scale=1)
    return Pair(erp, crm, counts, time.monotonic() - started)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pair, Pair]]:
    base = tmp_path_factory.mktemp("demo-seed")
    a, b = _seed_pair(base / "a"), _seed_pair(base / "b")
    yield a, b
    for p in (a, b):
        p.erp.dispose()
        p.crm.dispose()


@pytest.fixture(scope="module")
def pair(pairs: tuple[Pair, Pair]) -> Pair:
    return pairs[0]


@pytest.fixture(scope="module")
def maps() -> list[TableMap]:
    return [parse_map_document(load_yaml(text, file=name), file=name)
            for name, text in map_texts().items()]


def _rows(engine: sa.Engine, table: sa.Table) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table))]


def _table_dump(engine: sa.Engine, table: sa.Table) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(table).order_by(*table.primary_key.columns))]


# --------------------------------------------------------------------------- seed basics


def test_seed_is_deterministic(pairs: tuple[Pair, Pair]) -> None:
    a, b = pairs
    assert a.counts == b.counts
    for md, side in ((ERP_MD, "erp"), (CRM_MD, "crm")):
        for table in md.sorted_tables:
            ea = a.erp if side == "erp" else a.crm
            eb = b.erp if side == "erp" else b.crm
            assert _table_dump(ea, table) == _table_dump(eb, table), table.name


def test_seed_volumes_and_speed(pair: Pair) -> None:
    erp, crm = pair.counts["erp"], pair.counts["crm"]
    assert set(erp) == set(ERP_MD.tables) and set(crm) == set(CRM_MD.tables)
    for md, engine, counts in ((ERP_MD, pair.erp, erp), (CRM_MD, pair.crm, crm)):
        with engine.connect() as conn:
            for t in md.sorted_tables:
                n = conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                assert n == counts[t.name], t.name
    expected = {  # ERP table: roughly how many rows at scale 1
        "Currencies": 10, "CustCustomerGroup": 6, "CustomersV3": 2000, "CDSContactsV2": 500,
        "EcoResReleasedDistinctProductCDSEntity": 1000, "AssetManagementAssets": 300,
        "PurchPurchaseOrderHeaderV2Entity": 400, "PurchPurchaseOrderLineCDSEntity": 1200,
        "InventOnHandEntryCDSEntity": 2000, "SalesOrderHeaderCDSEntity": 1500,
        "SalesOrderLineCDSEntity": 4500, "SalesInvoiceHeaderV2Entity": 1000,
        "SalesInvoiceLineV2Entity": 3000,
    }
    for table, n in expected.items():
        assert 0.8 * n <= erp[table] <= 1.25 * n, (table, erp[table])
    assert pair.seconds < 20, f"seeding scale 1 took {pair.seconds:.1f}s"


def test_seed_refuses_filled_tables(pair: Pair) -> None:
    with pytest.raises(ValueError, match="already has"):
        seed(pair.erp, pair.crm)


# --------------------------------------------------------------------------- maps vs schema


def test_every_bundled_map_loads(maps: list[TableMap]) -> None:
    assert sorted(m.name for m in maps) == sorted(MAP_NAMES)
    assert len(map_texts()) == len(MAP_NAMES)
    for name, text in map_texts().items():
        assert text.startswith("# Follows the published dual-write template"), name
        assert name == f"{parse_map_document(load_yaml(text)).name}.yaml"


def test_depends_on_is_a_dag_covering_lookups(maps: list[TableMap]) -> None:
    by_name = {m.name: m for m in maps}
    by_right = {m.right: m.name for m in maps}
    assert list(find_cycles(maps)) == []

    def closure(name: str) -> set[str]:
        out: set[str] = set()
        todo = list(by_name[name].depends_on)
        while todo:
            d = todo.pop()
            assert d in by_name, f"{name} depends on unknown map {d}"
            if d not in out:
                out.add(d)
                todo.extend(by_name[d].depends_on)
        return out

    for m in maps:
        deps = closure(m.name)
        for target in _lookup_tables(m):
            if target != m.right and target in by_right:
                assert by_right[target] in deps, f"{m.name} looks up {target} without depending"


def _lookup_tables(m: TableMap) -> list[str]:
    out = []
    for f in m.fields:
        ref = f.right
        if not ref.is_lookup:
            continue
        assert ref.column is not None
        if ref.is_polymorphic:
            for t in ref.targets:
                assert t.table is not None
                real = find_table(list(CRM_MD.tables), t.table)
                assert real is not None, t.table
                out.append(real)
        else:
            fk = next(iter(CRM_MD.tables[m.right].c[ref.column].foreign_keys))
            out.append(fk.column.table.name)
    return out


def _family(column: sa.Column[Any]) -> str:
    t = column.type
    if isinstance(t, sa.Boolean):
        return "bool"
    if isinstance(t, sa.Integer | sa.Numeric):
        return "number"
    if isinstance(t, sa.Date):
        return "date"
    if isinstance(t, sa.String):
        return "string"
    return "other"


def _filter_columns(text: str | None) -> set[str]:
    if not text:
        return set()
    words = set(re.findall(r"\b[A-Za-z_][A-Za-z0-9_]*\b", re.sub(r"'[^']*'", "", text)))
    return words - {"eq", "ne", "and", "or", "not", "null", "true", "false"}


def _ref_column(table: sa.Table, ref: FieldRef, where: str) -> sa.Column[Any] | None:
    """Check one side of a field line against its table; return the plain column."""
    if ref.column is None:
        return None
    assert ref.column in table.c, f"{where}: {table.name} has no column {ref.column}"
    col = table.c[ref.column]
    if not ref.is_lookup:
        return col
    assert table.name in CRM_MD.tables, f"{where}: lookups belong on the CRM side"
    if ref.is_polymorphic:
        assert not col.foreign_keys, f"{where}: a polymorphic lookup cannot have one FK"
        for t in ref.targets:
            assert t.table is not None
            real = find_table(list(CRM_MD.tables), t.table)
            assert real is not None, f"{where}: no table for {t.table}"
            assert t.key in CRM_MD.tables[real].c, f"{where}: {real} has no {t.key}"
    else:
        fks = list(col.foreign_keys)
        assert len(fks) == 1, f"{where}: lookup column {col.name} needs one foreign key"
        related = fks[0].column.table
        assert fks[0].column.primary_key, f"{where}: FK must reference the primary key"
        assert ref.targets[0].key in related.c, f"{where}: {related.name} lacks the key"
    return None


def test_every_map_column_exists_in_the_schemas(maps: list[TableMap]) -> None:
    for m in maps:
        assert m.left in ERP_MD.tables, m.left
        assert m.right in CRM_MD.tables, m.right
        left, right = ERP_MD.tables[m.left], CRM_MD.tables[m.right]
        assert m.company is not None or m.name == "currencies", m.name
        if m.company:
            assert m.company.left[0] in left.c and m.company.right[0] in right.c
        for side, table in ((Side.LEFT, left), (Side.RIGHT, right)):
            for name in _filter_columns(m.filter(side)):
                assert name in table.c, f"{m.name}: filter names {name}"
        written: dict[Side, set[str]] = {Side.LEFT: set(), Side.RIGHT: set()}
        for f in m.fields:
            where = f"{m.name}: `{f.text}`"
            lcol = _ref_column(left, f.left, where)
            rcol = _ref_column(right, f.right, where)
            for side in Side:
                col = f.ref(side).column
                if col is not None and f.flows_to(side):
                    assert col not in written[side], f"{where}: {col} written twice"
                    written[side].add(col)
            if lcol is not None and rcol is not None and f.values is None:
                assert _family(lcol) == _family(rcol), f"{where}: type families differ"
            if f.values is not None and f.direction is Direction.BOTH_TRANSFORMED:
                assert f.values.invertible, where
        for kl, kr in zip(m.key.left, m.key.right, strict=True):
            assert any(f.direction is Direction.BOTH and f.left.column == kl
                       and f.right.column == kr and not f.left.is_lookup
                       and not f.right.is_lookup for f in m.fields), f"{m.name}: key {kl}"
            assert _family(left.c[kl]) == _family(right.c[kr])
        # a row created on either side gets every NOT NULL column without a default
        for side, table in ((Side.LEFT, left), (Side.RIGHT, right)):
            fed = written[side] | set(m.key_columns(side))
            for c in table.columns:
                if not c.nullable and c.server_default is None:
                    assert c.name in fed, f"{m.name}: {table.name}.{c.name} is never written"


def test_map_features_are_all_used(maps: list[TableMap]) -> None:
    fields = [f for m in maps for f in m.fields]
    symbols = {f.direction for f in fields}
    assert symbols == set(Direction)
    assert sum(1 for f in fields if f.values is not None) >= 5
    assert any(f.left.is_none for f in fields) and any(f.right.is_none for f in fields)
    assert any(f.right.is_polymorphic for f in fields
               if f.right.column == "customerid")
    assert any(f.right.is_lookup and not f.right.is_polymorphic for f in fields)
    customers = next(m for m in maps if m.name == "customers")
    assert customers.filter_left and customers.filter_right


# --------------------------------------------------------------------------- data


def test_every_crm_foreign_key_resolves(pair: Pair) -> None:
    with pair.crm.connect() as conn:
        for table in CRM_MD.sorted_tables:
            for fk in table.foreign_keys:
                target = fk.column.table
                dangling = conn.execute(
                    sa.select(sa.func.count()).select_from(table).where(
                        fk.parent.is_not(None),
                        ~sa.exists().where(fk.column == fk.parent))).scalar_one()
                assert dangling == 0, f"{table.name}.{fk.parent.name} → {target.name}"
        accounts, contacts = CRM_MD.tables["accounts"], CRM_MD.tables["contacts"]
        for name in ("salesorders", "invoices"):
            t = CRM_MD.tables[name]
            bad = conn.execute(sa.select(sa.func.count()).select_from(t).where(
                t.c.customerid.is_not(None),
                t.c.customerid.not_in(sa.select(accounts.c.accountid)),
                t.c.customerid.not_in(sa.select(contacts.c.contactid)))).scalar_one()
            assert bad == 0, name
        used = conn.execute(sa.select(sa.func.count()).select_from(
            CRM_MD.tables["salesorders"]).where(CRM_MD.tables["salesorders"].c.customerid.in_(
                sa.select(contacts.c.contactid)))).scalar_one()
        assert used > 0, "some sales orders are for contacts"


def test_rows_outside_the_filters_exist(pair: Pair) -> None:
    customers = _rows(pair.erp, ERP_MD.tables["CustomersV3"])
    persons = {r["CUSTOMERACCOUNT"] for r in customers if r["PARTYTYPE"] == "Person"}
    assert len(persons) >= 50
    accounts = _rows(pair.crm, CRM_MD.tables["accounts"])
    assert not persons & {r["accountnumber"] for r in accounts}
    assert any(r["customertypecode"] != 3 for r in accounts)
    orders = _rows(pair.crm, CRM_MD.tables["salesorders"])
    assert any(r["msdyn_ordertype"] != 192350000 for r in orders)


@dataclass
class Split:
    erp_only: int = 0
    crm_only: int = 0
    identical: int = 0
    differing: int = 0
    fields: set[str] = field(default_factory=set)

    @property
    def total(self) -> int:
        return self.erp_only + self.crm_only + self.identical + self.differing


def _passes(text: str | None, row: dict[str, Any]) -> bool:
    """The demo filters are single `column eq literal` comparisons."""
    if not text:
        return True
    m = re.fullmatch(r"\s*(\w+)\s+eq\s+(?:'([^']*)'|(-?\d+))\s*", text)
    assert m, f"unexpected filter {text!r}"
    want: Any = m.group(2) if m.group(2) is not None else int(m.group(3))
    return bool(row[m.group(1)] == want)


class _Resolver:
    """GUID → natural key, for reading CRM lookups back."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.cache: dict[tuple[str, str], dict[Any, Any]] = {}

    def key_of(self, table: str, key: str, guid: Any) -> Any:
        if (table, key) not in self.cache:
            t = CRM_MD.tables[table]
            pk = next(iter(t.primary_key.columns))
            with self.engine.connect() as conn:
                self.cache[(table, key)] = {
                    guid: value for guid, value in conn.execute(sa.select(pk, t.c[key]))}
        return self.cache[(table, key)].get(guid)

    def natural(self, crm_table: str, ref: FieldRef, guid: Any) -> Any:
        if guid is None:
            return None
        assert ref.column is not None
        if ref.is_polymorphic:
            for t in ref.targets:
                assert t.table is not None
                real = find_table(list(CRM_MD.tables), t.table)
                assert real is not None
                hit = self.key_of(real, t.key, guid)
                if hit is not None:
                    return hit
            return None
        fk = next(iter(CRM_MD.tables[crm_table].c[ref.column].foreign_keys))
        return self.key_of(fk.column.table.name, ref.targets[0].key, guid)


def _split(pair: Pair, m: TableMap, resolver: _Resolver) -> Split:
    """Compare both sides through the map (a miniature `verify`)."""
    left = {tuple(r[c] for c in m.key_columns(Side.LEFT)): r
            for r in _rows(pair.erp, ERP_MD.tables[m.left]) if _passes(m.filter_left, r)}
    right = {tuple(r[c] for c in m.key_columns(Side.RIGHT)): r
             for r in _rows(pair.crm, CRM_MD.tables[m.right]) if _passes(m.filter_right, r)}
    out = Split(erp_only=len(left.keys() - right.keys()), crm_only=len(right.keys() - left.keys()))
    for key in left.keys() & right.keys():
        lrow, rrow = left[key], right[key]
        bad = set()
        for f in m.fields:
            if f.left.column is None:
                lval = f.default
            else:
                lval = lrow[f.left.column]
                if f.values is not None:
                    found, lval = f.values.to_right(lval)
                    assert found, f"{m.name}: `{f.text}` has no value for {lval!r}"
            if f.right.column is None:
                assert canonical(lrow[f.left.column or ""]) == canonical(f.default), f.text
                continue
            rval = rrow[f.right.column]
            if f.right.is_lookup:
                rval = resolver.natural(m.right, f.right, rval)
            if canonical(lval) != canonical(rval):
                bad.add(f.text)
        if bad:
            out.differing += 1
            out.fields |= bad
        else:
            out.identical += 1
    return out


def test_sides_split_in_the_intended_shares(pair: Pair, maps: list[TableMap]) -> None:
    resolver = _Resolver(pair.crm)
    for m in maps:
        s = _split(pair, m, resolver)
        assert s.erp_only and s.crm_only and s.differing, (m.name, s)
        equals = {f.text for f in m.fields if f.direction is Direction.BOTH}
        assert s.fields <= equals, f"{m.name}: differences outside `=` fields: {s.fields - equals}"
        if s.total < 100:
            continue
        for what, n in (("ERP-only", s.erp_only), ("CRM-only", s.crm_only),
                        ("differing", s.differing)):
            assert 0.02 <= n / s.total <= 0.09, f"{m.name}: {what} {n} of {s.total}"
        assert s.identical / s.total >= 0.75, (m.name, s)


def test_one_sided_rows_hold_only_what_sync_can_carry(pair: Pair, maps: list[TableMap]) -> None:
    for m in maps:
        left_fed = set(m.key_columns(Side.LEFT)) | {
            f.left.column for f in m.fields if f.left.column and f.flows_to(Side.LEFT)}
        right_keys = {tuple(r[c] for c in m.key_columns(Side.RIGHT))
                      for r in _rows(pair.crm, CRM_MD.tables[m.right])}
        left_keys = {tuple(r[c] for c in m.key_columns(Side.LEFT))
                     for r in _rows(pair.erp, ERP_MD.tables[m.left])}
        for r in _rows(pair.crm, CRM_MD.tables[m.right]):
            key = tuple(r[c] for c in m.key_columns(Side.RIGHT))
            if key in left_keys or not _passes(m.filter_right, r):
                continue
            for f in m.fields:
                if f.left.column and f.right.column and f.left.column not in left_fed:
                    assert r[f.right.column] is None, f"{m.name} CRM-only {key}: {f.text}"
        assert right_keys  # the CRM table is not empty
