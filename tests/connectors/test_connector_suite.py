"""One compliance suite, run against the memory fake, SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import sqlalchemy as sa

from dualwrite.connectors.base import LinkRecord
from dualwrite.errors import ConstraintViolation, TerminalConnectorError
from dualwrite.model.filters import parse_filter
from dualwrite.model.schema import Kind
from dualwrite.model.values import canonical

from conftest import Backend, BackendFactory, guid_default

NAMES = ["b", "B", "a", "A", "é", "z", "Z", "ab", "a b", "_x", "%y", "ü", "Ä", "0", "9", "10"]


def metadata(dialect: str) -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("suite_groups", md,
             sa.Column("gid", sa.String(36), primary_key=True,
                       server_default=guid_default(dialect)),
             sa.Column("code", sa.String(20), nullable=False, unique=True),
             sa.Column("label", sa.String(50)))
    sa.Table("suite_items", md,
             sa.Column("company", sa.String(10), primary_key=True),
             sa.Column("code", sa.String(40), primary_key=True),
             sa.Column("name", sa.String(30), nullable=False),
             sa.Column("amount", sa.Numeric(18, 2)),
             sa.Column("qty", sa.Integer),
             sa.Column("active", sa.Boolean),
             sa.Column("born", sa.Date),
             sa.Column("gid", sa.String(36), sa.ForeignKey("suite_groups.gid")),
             sa.CheckConstraint("qty IS NULL OR qty >= 0", name="ck_suite_qty"))
    return md


@pytest.fixture
def db(backend: Backend) -> Backend:
    backend.create(metadata(backend.dialect))
    return backend


def _seed(db: Backend) -> None:
    db.insert("suite_groups", [{"gid": f"g{i}", "code": f"G{i}", "label": f"group {i}"}
                               for i in range(3)])
    db.insert("suite_items", [
        {"company": c, "code": n, "name": f"item {n}", "amount": Decimal(i) + Decimal("0.25"),
         "qty": i, "active": i % 2 == 0, "born": dt.date(2024, 1, 1 + i % 28), "gid": f"g{i % 3}"}
        for c in ("usmf", "demf") for i, n in enumerate(NAMES)])


def test_describe_reports_kinds_keys_and_foreign_keys(db: Backend) -> None:
    s = db.connector.describe("suite_items")
    assert s.primary_key == ("company", "code")
    assert s.columns["name"].kind is Kind.STRING and s.columns["name"].required
    assert s.columns["amount"].kind is Kind.DECIMAL and s.columns["amount"].nullable
    assert s.columns["qty"].kind is Kind.INTEGER
    assert s.columns["active"].kind in (Kind.BOOLEAN, Kind.INTEGER)  # MariaDB: TINYINT(1)
    assert s.columns["born"].kind is Kind.DATE
    fk = s.references("gid")
    assert fk is not None and fk.table == "suite_groups" and fk.ref_columns == ("gid",)
    g = db.connector.describe("suite_groups")
    assert g.columns["gid"].has_default and not g.columns["gid"].required
    assert ("code",) in g.unique
    assert "suite_items" in db.connector.tables()


def test_describe_unknown_table_is_a_clear_terminal_error(db: Backend) -> None:
    with pytest.raises(TerminalConnectorError, match="'no_such_table' does not exist"):
        db.connector.describe("no_such_table")


@pytest.mark.parametrize("batch", [1, 3, 1000])
def test_read_streams_in_canonical_key_order_in_batches(db: Backend, batch: int) -> None:
    _seed(db)
    batches = list(db.connector.read("suite_items", ["company", "code", "qty"],
                                     key=["company", "code"], batch_size=batch))
    assert all(len(b) <= batch for b in batches)
    rows = [r for b in batches for r in b]
    keys = [(r[0], r[1]) for r in rows]
    assert keys == sorted(keys)  # Python's str order is code point order
    assert len(keys) == 2 * len(NAMES)
    assert keys[0] == ("demf", "%y")


def test_read_after_resumes_strictly_after_the_key(db: Backend) -> None:
    _seed(db)
    all_keys = [(r[0], r[1]) for b in db.connector.read(
        "suite_items", ["company", "code"], key=["company", "code"]) for r in b]
    mid = all_keys[len(all_keys) // 2]
    rest = [(r[0], r[1]) for b in db.connector.read(
        "suite_items", ["company", "code"], key=["company", "code"], after=mid, batch_size=4)
        for r in b]
    assert rest == all_keys[len(all_keys) // 2 + 1:]


def test_read_filter_is_pushed_down_and_matches_python_semantics(db: Backend) -> None:
    _seed(db)
    expr = parse_filter("company eq 'usmf' and (qty ge 10 or startswith(code, 'a'))")
    got = {r[0] for b in db.connector.read("suite_items", ["code"], key=["company", "code"],
                                           where=expr) for r in b}
    expected = {n for i, n in enumerate(NAMES) if i >= 10 or n.startswith("a")}
    assert got == expected
    assert db.connector.count("suite_items", where=expr) == len(expected)
    assert db.connector.count("suite_items") == 2 * len(NAMES)


def test_lookup_resolves_in_batches_and_omits_unknown_values(db: Backend) -> None:
    _seed(db)
    found = db.connector.lookup("suite_groups", "code", ["G0", "G2", "nope", None], "gid")
    assert found == {"G0": "g0", "G2": "g2"}
    back = db.connector.lookup("suite_groups", "gid", ["g1"], "code")
    assert back == {"g1": "G1"}


def test_fetch_by_keys(db: Backend) -> None:
    _seed(db)
    rows = db.connector.fetch("suite_items", ["company", "code", "qty"], key=["company", "code"],
                              keys=[("usmf", "z"), ("demf", "A"), ("usmf", "missing")])
    assert sorted(rows) == [("demf", "A", NAMES.index("A")), ("usmf", "z", NAMES.index("z"))]


def test_update_and_delete_in_one_transaction(db: Backend) -> None:
    _seed(db)
    with db.connector.transaction() as tx:
        n = tx.update("suite_items", ["company", "code"], ["name", "amount"],
                      [(("usmf", "a"), ("renamed", Decimal("7.50"))),
                       (("usmf", "nope"), ("x", None))])
        assert n == 1
        assert tx.delete("suite_items", ["company", "code"], [("demf", "a"), ("demf", "b")]) == 2
    rows = {(r["company"], r["code"]): r for r in db.rows("suite_items", ["company", "code"])}
    assert rows[("usmf", "a")]["name"] == "renamed"
    assert canonical(rows[("usmf", "a")]["amount"]) == canonical(Decimal("7.5"))
    assert ("demf", "a") not in rows and ("demf", "b") not in rows
    assert len(rows) == 2 * len(NAMES) - 2


def test_a_failed_transaction_leaves_nothing_behind(db: Backend) -> None:
    _seed(db)
    before = db.rows("suite_items", ["company", "code"])
    with pytest.raises(ConstraintViolation), db.connector.transaction() as tx:
        tx.insert("suite_items", ["company", "code", "name"], [("usmf", "new1", "fine")])
        tx.update("suite_items", ["company", "code"], ["name"], [(("usmf", "a"), ("changed",))])
        tx.insert("suite_items", ["company", "code", "name"], [("usmf", "new2", None)])
    assert db.rows("suite_items", ["company", "code"]) == before


@pytest.mark.parametrize("row, words", [
    ({"company": "usmf", "code": "n1", "name": None}, ["name"]),  # not null
    ({"company": "usmf", "code": "a", "name": "dup"}, []),  # primary key
    ({"company": "usmf", "code": "n2", "name": "x", "gid": "no-such-group"}, []),  # foreign key
])
def test_constraint_violations_are_translated(db: Backend, row: dict[str, object],
                                              words: list[str]) -> None:
    _seed(db)
    with pytest.raises(ConstraintViolation) as info:
        db.insert("suite_items", [row])
    assert info.value.environment == db.connector.name
    for w in words:
        assert w in str(info.value).lower()


def test_check_constraint_and_length_are_enforced_by_real_databases(db: Backend) -> None:
    if db.kind in ("memory", "sqlite"):
        # SQLite does not enforce VARCHAR length; the memory fake only knows NOT NULL/unique/FK.
        # Check constraints: SQLite does enforce them, so test that part there.
        if db.kind == "sqlite":
            with pytest.raises(ConstraintViolation, match=r"ck_suite_qty|CHECK"):
                db.insert("suite_items", [{"company": "c", "code": "q", "name": "n", "qty": -1}])
        return
    with pytest.raises(ConstraintViolation):
        db.insert("suite_items", [{"company": "c", "code": "q", "name": "n", "qty": -1}])
    with pytest.raises(ConstraintViolation):
        db.insert("suite_items", [{"company": "c", "code": "q", "name": "x" * 31}])


def test_server_default_generates_guid_keys(db: Backend) -> None:
    db.insert("suite_groups", [{"code": "A1"}, {"code": "A2"}])
    rows = db.rows("suite_groups", ["code"])
    assert len({r["gid"] for r in rows}) == 2 and all(r["gid"] for r in rows)


def test_link_record_round_trip(db: Backend) -> None:
    db.connector.clear_link()
    assert db.connector.get_link() is None
    rec = LinkRecord("id-1", "erp<->crm", "erp", "2026-11-25T00:00:00+00:00")
    db.connector.set_link(rec)
    assert db.connector.get_link() == rec
    assert "dualwrite_link" not in db.connector.tables()
    db.connector.clear_link()
    assert db.connector.get_link() is None


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_non_binary_collation_is_still_read_in_code_point_order(
        make_backend: BackendFactory, kind: str) -> None:
    b = make_backend(kind, "dualwrite_test_a")
    md = sa.MetaData()
    coll = "und-x-icu" if kind == "postgresql" else "utf8mb4_general_ci"
    sa.Table("suite_coll", md, sa.Column("code", sa.String(20, collation=coll), primary_key=True),
             sa.Column("n", sa.Integer))
    b.create(md)
    b.insert("suite_coll", [{"code": n, "n": i} for i, n in enumerate(
        ["b", "C", "a", "é", "Z", "ab"])])
    keys = [r[0] for batch in b.connector.read("suite_coll", ["code"], key=["code"],
                                               batch_size=2) for r in batch]
    assert keys == sorted(keys) == ["C", "Z", "a", "ab", "b", "é"]
    after = [r[0] for batch in b.connector.read("suite_coll", ["code"], key=["code"],
                                                after=("Z",)) for r in batch]
    assert after == ["a", "ab", "b", "é"]


def test_catalog_json_is_read_the_drivers_way_and_documents_as_text(
        make_backend: BackendFactory) -> None:
    """SQLAlchemy reads a column's collation and identity options as JSON objects its
    catalog queries build, while dualwrite reads JSON documents as text: describing a table
    with both must work, and reading its JSON column afterwards must still give the text."""
    b = make_backend("postgresql", "dualwrite_test_a")
    md = sa.MetaData()
    sa.Table("suite_ident", md,
             sa.Column("id", sa.Integer, sa.Identity(always=True), primary_key=True),
             sa.Column("code", sa.String(20, collation="C")),
             sa.Column("doc", sa.JSON))
    b.create(md)
    schema = b.connector.describe("suite_ident")
    assert schema.primary_key == ("id",) and schema.columns["id"].has_default
    assert schema.columns["doc"].kind is Kind.JSON
    with b.connector.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO suite_ident (code, doc) VALUES ('a', 'null')")
    rows = [r for batch in b.connector.read("suite_ident", ["doc"], key=["id"]) for r in batch]
    # JSON null is a document, not SQL NULL: the text survives the catalog reads
    assert rows == [("null",)]
