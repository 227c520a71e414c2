"""The connector compliance suite: every test takes the backend's ``harness`` fixture.

Import everything from this module into a test module that defines ``harness`` (see
:mod:`dualwrite.testing`). What the suite checks is what the engine relies on: tables
described with kinds, keys and foreign keys; reads in canonical key order, resumable, with
filters pushed down and Python's semantics; lookups and fetches by key; transactions that
commit whole or leave nothing; constraint violations translated into the one error tree;
the link record; and, where the backend declares them, two-phase commit with recovery by a
second process, the bulk path of initial sync, and change capture: the change log
(:class:`dualwrite.connectors.changelog.ChangeLog`) read in commit order, applied positions
that commit and roll back with the session that writes them, fences, and waiting for changes.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal

import pytest
import sqlalchemy as sa

from dualwrite.connectors.base import BULK_FORMATS, BulkField, LinkRecord
from dualwrite.connectors.changelog import WATERMARK, CaptureSpec, Change, ChangeLog
from dualwrite.errors import ConstraintViolation, LeaseLost, TerminalConnectorError
from dualwrite.model.filters import parse_filter
from dualwrite.model.schema import Kind
from dualwrite.model.values import canonical
from dualwrite.testing.harness import Harness

NAMES = ["b", "B", "a", "A", "é", "z", "Z", "ab", "a b", "_x", "%y", "ü", "Ä", "0", "9", "10"]


def metadata(harness: Harness) -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("suite_groups", md,
             sa.Column("gid", sa.String(36), primary_key=True,
                       server_default=harness.guid_default()),
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
    # the bulk path's target: the items' columns, loaded from an export of suite_items
    sa.Table("suite_copies", md,
             sa.Column("code", sa.String(40), primary_key=True),
             sa.Column("name", sa.String(30), nullable=False),
             sa.Column("amount", sa.Numeric(18, 2)),
             sa.Column("status", sa.Integer),
             sa.Column("kind", sa.Integer))
    return md


@pytest.fixture
def db(harness: Harness) -> Harness:
    harness.create(metadata(harness))
    return harness


def _seed(db: Harness) -> None:
    db.insert("suite_groups", [{"gid": f"g{i}", "code": f"G{i}", "label": f"group {i}"}
                               for i in range(3)])
    db.insert("suite_items", [
        {"company": c, "code": n, "name": f"item {n}", "amount": Decimal(i) + Decimal("0.25"),
         "qty": i, "active": i % 2 == 0, "born": dt.date(2024, 1, 1 + i % 28), "gid": f"g{i % 3}"}
        for c in ("usmf", "demf") for i, n in enumerate(NAMES)])


# -- schema ----------------------------------------------------------------------------------
def test_describe_reports_kinds_keys_and_foreign_keys(db: Harness) -> None:
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


def test_describe_unknown_table_is_a_clear_terminal_error(db: Harness) -> None:
    with pytest.raises(TerminalConnectorError, match="'no_such_table' does not exist"):
        db.connector.describe("no_such_table")


# -- reads -----------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 3, 1000])
def test_read_streams_in_canonical_key_order_in_batches(db: Harness, batch: int) -> None:
    _seed(db)
    batches = list(db.connector.read("suite_items", ["company", "code", "qty"],
                                     key=["company", "code"], batch_size=batch))
    assert all(len(b) <= batch for b in batches)
    rows = [r for b in batches for r in b]
    keys = [(r[0], r[1]) for r in rows]
    assert keys == sorted(keys)  # Python's str order is code point order
    assert len(keys) == 2 * len(NAMES)
    assert keys[0] == ("demf", "%y")


def test_read_after_resumes_strictly_after_the_key(db: Harness) -> None:
    _seed(db)
    all_keys = [(r[0], r[1]) for b in db.connector.read(
        "suite_items", ["company", "code"], key=["company", "code"]) for r in b]
    mid = all_keys[len(all_keys) // 2]
    rest = [(r[0], r[1]) for b in db.connector.read(
        "suite_items", ["company", "code"], key=["company", "code"], after=mid, batch_size=4)
        for r in b]
    assert rest == all_keys[len(all_keys) // 2 + 1:]


def test_read_filter_is_pushed_down_and_matches_python_semantics(db: Harness) -> None:
    _seed(db)
    expr = parse_filter("company eq 'usmf' and (qty ge 10 or startswith(code, 'a'))")
    got = {r[0] for b in db.connector.read("suite_items", ["code"], key=["company", "code"],
                                           where=expr) for r in b}
    expected = {n for i, n in enumerate(NAMES) if i >= 10 or n.startswith("a")}
    assert got == expected
    assert db.connector.count("suite_items", where=expr) == len(expected)
    assert db.connector.count("suite_items") == 2 * len(NAMES)


def test_lookup_resolves_in_batches_and_omits_unknown_values(db: Harness) -> None:
    _seed(db)
    found = db.connector.lookup("suite_groups", "code", ["G0", "G2", "nope", None], "gid")
    assert found == {"G0": "g0", "G2": "g2"}
    back = db.connector.lookup("suite_groups", "gid", ["g1"], "code")
    assert back == {"g1": "G1"}


def test_fetch_by_keys(db: Harness) -> None:
    _seed(db)
    rows = db.connector.fetch("suite_items", ["company", "code", "qty"], key=["company", "code"],
                              keys=[("usmf", "z"), ("demf", "A"), ("usmf", "missing")])
    assert sorted(rows) == [("demf", "A", NAMES.index("A")), ("usmf", "z", NAMES.index("z"))]


# -- writes ----------------------------------------------------------------------------------
def test_update_and_delete_in_one_transaction(db: Harness) -> None:
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


def test_a_failed_transaction_leaves_nothing_behind(db: Harness) -> None:
    _seed(db)
    before = db.rows("suite_items", ["company", "code"])
    with pytest.raises(ConstraintViolation), db.connector.transaction() as tx:
        tx.insert("suite_items", ["company", "code", "name"], [("usmf", "new1", "fine")])
        tx.update("suite_items", ["company", "code"], ["name"], [(("usmf", "a"), ("changed",))])
        tx.insert("suite_items", ["company", "code", "name"], [("usmf", "new2", None)])
    assert db.rows("suite_items", ["company", "code"]) == before


@pytest.mark.parametrize("row, words, kind", [
    ({"company": "usmf", "code": "n1", "name": None}, ["name"], "not_null"),
    ({"company": "usmf", "code": "a", "name": "dup"}, [], "unique"),
    ({"company": "usmf", "code": "n2", "name": "x", "gid": "no-such-group"}, [], "foreign_key"),
])
def test_constraint_violations_are_translated(db: Harness, row: dict[str, object],
                                              words: list[str], kind: str) -> None:
    _seed(db)
    with pytest.raises(ConstraintViolation) as info:
        db.insert("suite_items", [row])
    assert info.value.environment == db.connector.name
    assert info.value.kind == kind
    for w in words:
        assert w in str(info.value).lower()


def test_check_constraints_and_lengths_the_database_enforces(db: Harness) -> None:
    if not db.enforces:
        pytest.skip("the harness declares no CHECK or length enforcement")
    if "check" in db.enforces:
        with pytest.raises(ConstraintViolation, match=r"(?i)ck_suite_qty|check"):
            db.insert("suite_items", [{"company": "c", "code": "q", "name": "n", "qty": -1}])
    if "length" in db.enforces:
        with pytest.raises(ConstraintViolation):
            db.insert("suite_items", [{"company": "c", "code": "q", "name": "x" * 31}])


def test_server_default_generates_guid_keys(db: Harness) -> None:
    db.insert("suite_groups", [{"code": "A1"}, {"code": "A2"}])
    rows = db.rows("suite_groups", ["code"])
    assert len({r["gid"] for r in rows}) == 2 and all(r["gid"] for r in rows)


def test_link_record_round_trip(db: Harness) -> None:
    db.connector.clear_link()
    assert db.connector.get_link() is None
    rec = LinkRecord("id-1", "erp<->crm", "erp", "2026-11-25T00:00:00+00:00")
    db.connector.set_link(rec)
    assert db.connector.get_link() == rec
    assert "dualwrite_link" not in db.connector.tables()
    db.connector.clear_link()
    assert db.connector.get_link() is None


# -- two-phase commit ------------------------------------------------------------------------
def _two_phase(db: Harness) -> None:
    if not db.connector.capabilities.two_phase:
        pytest.skip(f"{type(db.connector).__name__} declares no two-phase commit")


def _xid() -> str:
    return f"dw-suite-{uuid.uuid4().hex[:16]}"


def test_two_phase_branch_commits_only_when_told(db: Harness) -> None:
    _two_phase(db)
    _seed(db)
    branch = db.connector.begin_branch(xid := _xid())
    branch.session.insert("suite_items", ["company", "code", "name"], [("usmf", "2pc", "x")])
    branch.prepare()
    assert xid in db.connector.recover("dw-suite-")
    assert ("usmf", "2pc") not in {(r["company"], r["code"]) for r in
                                   db.rows("suite_items", ["company", "code"])}
    branch.commit()
    assert xid not in db.connector.recover("dw-suite-")
    assert ("usmf", "2pc") in {(r["company"], r["code"]) for r in
                               db.rows("suite_items", ["company", "code"])}


def test_two_phase_rollback_from_any_state_leaves_nothing(db: Harness) -> None:
    _two_phase(db)
    _seed(db)
    before = db.rows("suite_items", ["company", "code"])
    for prepare in (False, True):
        branch = db.connector.begin_branch(xid := _xid())
        branch.session.insert("suite_items", ["company", "code", "name"],
                              [("usmf", f"rb{prepare}", "x")])
        if prepare:
            branch.prepare()
        branch.rollback()
        assert xid not in db.connector.recover("dw-suite-")
    assert db.rows("suite_items", ["company", "code"]) == before


@pytest.mark.parametrize("commit", [True, False])
def test_a_prepared_branch_outlives_its_connector_and_is_finished_by_another(
        db: Harness, commit: bool) -> None:
    _two_phase(db)
    _seed(db)
    branch = db.connector.begin_branch(xid := _xid())
    branch.session.insert("suite_items", ["company", "code", "name"], [("usmf", "orphan", "x")])
    branch.prepare()
    db.abandon(branch)  # the coordinator dies between PREPARE and its decision
    db.connector.close()
    other = db.reopen()
    try:
        assert xid in other.recover("dw-suite-")
        other.finish_prepared(xid, commit=commit)
        assert xid not in other.recover("dw-suite-")
        keys = {r[1] for b in other.read("suite_items", ["company", "code"],
                                         key=["company", "code"]) for r in b}
        assert ("orphan" in keys) is commit
    finally:
        other.close()


# -- the bulk path of initial sync -----------------------------------------------------------
def _bulk_format(db: Harness) -> str:
    caps = db.connector.capabilities
    fmt = next((f for f in BULK_FORMATS if f in caps.bulk_export and f in caps.bulk_import),
               None)
    if fmt is None:
        pytest.skip(f"{type(db.connector).__name__} declares no bulk format it both exports "
                    "and loads")
    return fmt


BULK_FIELDS = [BulkField(column="code"), BulkField(column="name"),
               BulkField(column="amount"),
               BulkField(column="gid", pairs=(("g0", 10), ("g1", 11))),  # g2: a miss
               BulkField(constant=3)]
BULK_COLUMNS = ["code", "name", "amount", "status", "kind"]


def test_bulk_boundary_and_range_probe(db: Harness) -> None:
    _bulk_format(db)
    _seed(db)
    key = ["company", "code"]
    keys = [(r[0], r[1]) for b in db.connector.read("suite_items", key, key=key) for r in b]
    upto = db.connector.bulk_boundary("suite_items", key, where=None, after=keys[2], limit=5)
    assert upto == keys[7]
    assert db.connector.bulk_boundary("suite_items", key, where=None, after=keys[-3],
                                      limit=5) is None
    assert db.connector.has_rows("suite_items", key, after=keys[2], upto=keys[3])
    assert not db.connector.has_rows("suite_items", key, after=keys[-1], upto=None)


def test_bulk_export_and_load_write_every_exact_row_and_return_the_misses(db: Harness) -> None:
    fmt = _bulk_format(db)
    _seed(db)
    key = ["company", "code"]
    where = parse_filter("company eq 'usmf'")
    with db.connector.bulk_export("suite_items", BULK_FIELDS, key=key, where=where, after=None,
                                  upto=None, fmt=fmt) as blocks:
        loaded = db.connector.bulk_load("suite_copies", BULK_COLUMNS, blocks, fmt=fmt)
    misses = db.connector.bulk_misses("suite_items", ["code", "gid"], BULK_FIELDS, key=key,
                                      where=where, after=None, upto=None, fmt=fmt)
    expected_misses = sorted((n, "g2") for i, n in enumerate(NAMES) if i % 3 == 2)
    assert sorted(misses) == expected_misses
    assert loaded == len(NAMES) - len(expected_misses)
    copies = {r["code"]: r for r in db.rows("suite_copies", ["code"])}
    assert set(copies) == {n for i, n in enumerate(NAMES) if i % 3 != 2}
    for i, n in enumerate(NAMES):
        if n in copies:
            c = copies[n]
            assert c["name"] == f"item {n}" and c["kind"] == 3
            assert canonical(c["amount"]) == canonical(Decimal(i) + Decimal("0.25"))
            assert c["status"] == (10 if i % 3 == 0 else 11)


def test_a_refused_bulk_load_leaves_nothing_behind(db: Harness) -> None:
    fmt = _bulk_format(db)
    _seed(db)
    db.insert("suite_copies", [{"code": "b", "name": "already here"}])  # b is exported
    with pytest.raises(ConstraintViolation), db.connector.bulk_export(
            "suite_items", BULK_FIELDS, key=["company", "code"],
            where=parse_filter("company eq 'usmf'"), after=None, upto=None,
            fmt=fmt) as blocks:
        db.connector.bulk_load("suite_copies", BULK_COLUMNS, blocks, fmt=fmt)
    assert [r["code"] for r in db.rows("suite_copies", ["code"])] == ["b"]


# -- change capture --------------------------------------------------------------------------
@pytest.fixture
def change_log(db: Harness) -> Iterator[tuple[ChangeLog, CaptureSpec]]:
    """The backend's change log, capturing a map of its own (a new name each time: what an
    earlier test left queued is of another map) on ``suite_groups``; removed afterwards."""
    if not db.connector.capabilities.capture:
        pytest.skip(f"{type(db.connector).__name__} declares no change capture")
    log = db.connector.change_log()
    assert isinstance(log, ChangeLog)
    spec = CaptureSpec(f"suite_{uuid.uuid4().hex[:8]}", "suite_groups", ("gid",),
                       ("gid", "code", "label"), "v1")
    log.ensure()
    log.install(spec)
    try:
        yield log, spec
    finally:
        log.remove(spec)


def _app_write(db: Harness, inserts: Sequence[dict[str, object]] = (),
               updates: Sequence[tuple[str, str]] = (), deletes: Sequence[str] = ()) -> None:
    """One transaction whose writes capture records, as an application's (dualwrite's own
    writes are invisible to capture unless the session asks: no echo)."""
    with db.connector.transaction() as tx:
        tx.capture_own_writes()
        if inserts:
            cols = list(inserts[0])
            tx.insert("suite_groups", cols, [tuple(r[c] for c in cols) for r in inserts])
        if updates:
            tx.update("suite_groups", ["gid"], ["label"], [((g, ), (label,)) for g, label
                                                           in updates])
        if deletes:
            tx.delete("suite_groups", ["gid"], [(g,) for g in deletes])
    # a log filled after the commit (logical decoding) holds the changes once caught up
    db.connector.change_log().catch_up()


def _is_applied(done: set[tuple[str, str]], marks: dict[str, int], c: Change) -> bool:
    return (c.map, c.txid) in done or (c.txid == WATERMARK and c.seq <= marks.get(c.map, -1))


def test_change_log_reads_captured_changes_in_commit_order(
        db: Harness, change_log: tuple[ChangeLog, CaptureSpec]) -> None:
    log, spec = change_log
    _app_write(db, inserts=[{"gid": "g1", "code": "C1", "label": "one"},
                            {"gid": "g2", "code": "C2", "label": "two"}])
    _app_write(db, updates=[("g1", "uno")], deletes=["g2"])
    db.insert("suite_groups", [{"gid": "g3", "code": "C3", "label": "own"}])  # not captured
    log.catch_up()
    got = log.read([spec.map], 100)
    assert [(c.op, c.key) for c in got] == [("I", ("g1",)), ("I", ("g2",)), ("U", ("g1",)),
                                            ("D", ("g2",))]
    assert [c.seq for c in got] == sorted(c.seq for c in got)
    assert all(c.map == spec.map and c.version == "v1" for c in got)
    if log.has_txid:  # one source transaction each, told apart
        assert got[0].txid == got[1].txid != got[2].txid == got[3].txid
    assert got[2].old is not None and got[2].old["label"] == "one"
    assert got[2].new is not None and got[2].new["label"] == "uno"
    assert got[3].new is None and got[3].old is not None and got[3].old["code"] == "C2"
    assert log.read(["suite_other_map"], 100) == []


def test_applied_positions_commit_and_roll_back_with_their_session(
        db: Harness, change_log: tuple[ChangeLog, CaptureSpec]) -> None:
    """The applied position (and forgetting the change) inside a write session that rolls
    back leaves the change queued and unmarked; in one that commits, the change is marked
    and never read again."""
    log, spec = change_log
    _app_write(db, inserts=[{"gid": "g1", "code": "C1", "label": "one"}])
    got = log.read([spec.map], 100)
    assert len(got) == 1
    positions = [(c.map, c.txid, c.seq) for c in got]
    pairs = [(c.map, c.txid) for c in got]
    with pytest.raises(RuntimeError), db.connector.transaction() as sess:
        log.finish_apply(sess, "suite_source", positions, [], None)
        log.forget([c.seq for c in got], sess)
        raise RuntimeError("the target write failed")
    with db.connector.transaction() as sess:
        done, marks = log.applied(sess, "suite_source", pairs)
    assert not any(_is_applied(done, marks, c) for c in got)
    assert [c.seq for c in log.read([spec.map], 100)] == [c.seq for c in got]
    with db.connector.transaction() as sess:
        # the probe of the queue, asked with the bookkeeping, sees the change still queued
        assert log.finish_apply(sess, "suite_source", positions, [], None,
                                [spec.map, "no such map"]) == {spec.map}
        log.forget([c.seq for c in got], sess)
    with db.connector.transaction() as sess:
        done, marks = log.applied(sess, "suite_source", pairs)
        assert all(_is_applied(done, marks, c) for c in got)
        assert log.finish_apply(sess, "suite_source", [], [], None, [spec.map]) == set()
        assert log.pending(sess, spec.map, [("g1",)],
                           [db.connector.describe("suite_groups").columns["gid"]]) == []
    assert log.read([spec.map], 100) == []


def test_pending_finds_queued_changes_by_key_inside_a_session(
        db: Harness, change_log: tuple[ChangeLog, CaptureSpec]) -> None:
    log, spec = change_log
    _app_write(db, inserts=[{"gid": "g1", "code": "C1", "label": "one"},
                            {"gid": "g2", "code": "C2", "label": "two"}])
    gid = db.connector.describe("suite_groups").columns["gid"]
    with db.connector.transaction() as sess:
        found = log.pending(sess, spec.map, [("g2",), ("g9",)], [gid])
        assert [c.key for c in found] == [("g2",)]
        assert log.queues(sess, spec.map) and log.queued(sess, [spec.map, "x"]) == {spec.map}


def test_a_fence_holds_out_older_epochs(
        db: Harness, change_log: tuple[ChangeLog, CaptureSpec]) -> None:
    log, spec = change_log
    link = f"suite-link-{spec.map}"
    with db.connector.transaction() as sess:
        log.fence(sess, link, 2)
    with pytest.raises(LeaseLost), db.connector.transaction() as sess:
        log.fence(sess, link, 1)
    with db.connector.transaction() as sess:
        assert log.fence_epoch(sess, link) == 2
        log.fence(sess, link, 3)  # a later epoch takes over
    with db.connector.transaction() as sess:
        assert log.fence_epoch(sess, link) == 3


def test_wait_returns_on_a_new_change(
        db: Harness, change_log: tuple[ChangeLog, CaptureSpec]) -> None:
    """``wait`` watches from its first call; a change committed since returns it early
    (the deadline is only an upper bound, never reached when it works)."""
    log, spec = change_log
    log.wait(0)
    _app_write(db, inserts=[{"gid": "g1", "code": "C1", "label": "one"}])
    assert log.wait(60) is True
    assert [c.key for c in log.read([spec.map], 10)] == [("g1",)]


__all__ = ["metadata", "db", "change_log", "NAMES"] + [
    name for name, value in list(globals().items())
    if name.startswith("test_") and callable(value)]
