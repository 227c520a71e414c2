"""Initial sync's bulk path (dualwrite.engine.bulk) writes exactly what the row path writes.

Every test runs the same sync twice on real databases, once with the bulk path and once with
``sync: {bulk: false}``, and compares the target tables column by column and the error
inboxes entry by entry: value-map and lookup misses, values cased differently from a pair,
NULLs, text with every character COPY escapes, rows the target refuses, target rows already
in a range, and a sync stopped between a bulk load and its checkpoint.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

import dualwrite
from dualwrite.engine.bulk import BulkPath
from dualwrite.engine.state import StateStore
from dualwrite.model.values import canonical
from dualwrite.testing.backends import pair_id, pairs

from conftest import Backend, BackendFactory, guid_default

MAP = """
name: accts
left: Src
right: tacc
key: {left: [ACC], right: [acc]}
master: left
fields:
  - ACC = acc
  - NAME = name
  - CREDIT = credit
  - STATUS >< status: {values: {"No": 0, "Invoice": 1, "All": 2}}
  - GRP = grp.code
  - NOTE = note
  - BORN = born
  - none >> kind: {default: 3}
"""

TEXTS = ["plain", "tab\there", "new\nline", "back\\slash", "cr\rreturn", "form\x0cfeed",
         "vertical\x0btab", "bell\x08space", "emoji \U0001F600", "NULL", "\\N", "", None]


def source_md(scale: int, dialect: str) -> sa.MetaData:
    # MariaDB: a case-insensitive collation (the server's usual default), under which "g1"
    # equals "G1" for the database but not for the engine's lookups
    ci = "utf8mb4_general_ci" if dialect == "mysql" else None
    md = sa.MetaData()
    sa.Table("Src", md,
             sa.Column("ACC", sa.String(20), primary_key=True),
             sa.Column("NAME", sa.String(100), nullable=False),
             sa.Column("CREDIT", sa.Numeric(18, scale)),
             sa.Column("STATUS", sa.String(10, collation=ci)),
             sa.Column("GRP", sa.String(10, collation=ci)),
             sa.Column("NOTE", sa.Text),
             sa.Column("BORN", sa.Date))
    return md


def target_md(dialect: str) -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("tgroups", md,
             sa.Column("gid", sa.String(36), primary_key=True),
             sa.Column("code", sa.String(10), nullable=False, unique=True))
    sa.Table("tacc", md,
             sa.Column("id", sa.String(36), primary_key=True, server_default=guid_default(dialect)),
             sa.Column("acc", sa.String(20), nullable=False, unique=True),
             sa.Column("name", sa.String(60), nullable=False),
             sa.Column("credit", sa.Numeric(18, 2)),
             sa.Column("status", sa.Integer),
             sa.Column("grp", sa.String(36), sa.ForeignKey("tgroups.gid")),
             sa.Column("note", sa.Text),
             sa.Column("born", sa.Date),
             sa.Column("kind", sa.Integer))
    return md


def source_rows(n: int, credit_scale: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        status = ["No", "Invoice", "All", None][i % 4]
        grp = ["G1", "G2", None][i % 3]
        credit: Decimal | None = Decimal(i * 25) / 4 if i % 5 else None
        rows.append({"ACC": f"A{i:04d}", "NAME": f"Account {i}", "CREDIT": credit,
                     "STATUS": status, "GRP": grp, "NOTE": TEXTS[i % len(TEXTS)],
                     "BORN": dt.date(1990, 1, 1) + dt.timedelta(days=i * 37) if i % 7 else None})
    # the row path's cases, spread over the bulk ranges
    rows[3]["STATUS"] = "Nope"  # a value-map miss: inbox
    rows[17]["STATUS"] = "no"  # matches "No" as the engine matches: written as 0
    rows[29]["GRP"] = "G9"  # an unresolved lookup: inbox
    rows[23]["GRP"] = "g1"  # not G1 for the engine (natural keys match exactly): inbox
    rows[52]["NAME"] = "N" * 80  # longer than the target's 60: the target refuses the range
    if credit_scale > 2:
        rows[66]["CREDIT"] = Decimal("1.2345")  # more scale than the target: refused
    return rows


class Setup:
    def __init__(self, src: Backend, dst: Backend, tmp: Path, scale: int, n: int) -> None:
        self.src, self.dst, self.tmp = src, dst, tmp
        src.connector.clear_link()
        dst.connector.clear_link()
        src.create(source_md(scale, src.dialect))
        src.insert("Src", source_rows(n, scale))
        (tmp / "maps").mkdir(exist_ok=True)
        (tmp / "maps" / "accts.yaml").write_text(MAP)
        self.runs = 0

    def reset_target(self, existing: list[dict[str, Any]] = ()) -> None:  # type: ignore[assignment]
        self.src.connector.clear_link()
        self.dst.connector.clear_link()
        self.dst.create(target_md(self.dst.dialect))
        self.dst.insert("tgroups", [{"gid": "gid-1", "code": "G1"}, {"gid": "gid-2", "code": "G2"},
                                    {"gid": "gid-3", "code": "G3"}])
        if existing:
            self.dst.insert("tacc", existing)

    def config(self, bulk: bool) -> Path:
        self.runs += 1
        cfg = {"environments": {"erp": {"url": self.src.url}, "crm": {"url": self.dst.url}},
               "link": {"left": "erp", "right": "crm"},
               "state": f"sqlite:///{self.tmp / f'state{self.runs}.db'}",
               "maps": ["maps/*.yaml"], "sync": {"batch_size": 4, "bulk": bulk}}
        path = self.tmp / f"dualwrite{self.runs}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def outcome(self, config: Path) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
        cols = ["acc", "name", "credit", "status", "grp", "note", "born", "kind"]
        rows = [{c: canonical(v) if c == "credit" else v for c, v in r.items()}
                for r in self.dst.rows("tacc", ["acc"], cols)]
        with dualwrite.open(str(config)) as link:
            inbox = sorted((e.side, tuple(e.key), e.operation, e.reason)
                           for e in link.state.errors("accts"))
        return rows, inbox

    def sync(self, bulk: bool) -> tuple[Any, Path]:
        config = self.config(bulk)
        with dualwrite.open(str(config)) as link:
            [res] = link.sync_initial(["accts"])
        return res, config


@pytest.fixture(params=pairs(needs=("bulk",), both_ways=True), ids=pair_id)
def setup(request: pytest.FixtureRequest, make_backend: BackendFactory,
          tmp_path: Path) -> Setup:
    source, target = request.param
    src = make_backend(source, "dualwrite_test_a")
    dst = make_backend(target, "dualwrite_test_b" if target == source else "dualwrite_test_a")
    # MariaDB's LOAD DATA reports a rounded decimal, so a scale the target lacks is left to
    # it there; PostgreSQL's COPY would round silently, so that map stays on the row path
    scale = 4 if dst.spec.capabilities.bulk_load_checks else 2
    return Setup(src, dst, tmp_path, scale, n=130)


def test_bulk_path_writes_what_the_row_path_writes(setup: Setup) -> None:
    setup.reset_target()
    res, config = setup.sync(bulk=True)
    assert res.path.startswith("bulk (left to right"), res.path
    assert res.bulk_rows >= 30  # a third of the rows or more went by the bulk path ...
    bulk_rows, bulk_inbox = setup.outcome(config)

    setup.reset_target()
    row_res, row_config = setup.sync(bulk=False)
    assert row_res.path == "rows (sync.bulk is off)" and row_res.bulk_rows == 0
    rows, inbox = setup.outcome(row_config)

    assert bulk_rows == rows  # ... and wrote exactly what the row path writes
    assert bulk_inbox == inbox
    assert res.created == row_res.created and res.errors == row_res.errors
    failing = {k[0] for _s, k, _o, _r in inbox}
    expected = {"A0003", "A0023", "A0029", "A0052"} | (
        {"A0066"} if setup.dst.spec.capabilities.bulk_load_checks else set())
    assert failing == expected, inbox
    by_acc = {r["acc"]: r for r in rows}
    assert by_acc["A0017"]["status"] == 0  # the cased variant, mapped by the row path
    assert by_acc["A0001"]["grp"] == "gid-2" and by_acc["A0001"]["kind"] == 3
    notes = {r["note"] for r in rows}
    assert set(TEXTS) <= notes  # every escaped character arrived as it was


def test_ranges_the_target_already_holds_go_by_the_row_path(setup: Setup) -> None:
    existing = [{"id": f"pre-{i}", "acc": f"A{i:04d}", "name": f"old {i}", "kind": 9}
                for i in (10, 11, 60)]
    setup.reset_target(existing)
    res, config = setup.sync(bulk=True)
    assert res.bulk_rows > 0
    assert res.updated["right"] == 3  # master left: the existing rows were merged, not doubled
    bulk_rows, bulk_inbox = setup.outcome(config)

    setup.reset_target(existing)
    _res, row_config = setup.sync(bulk=False)
    assert (bulk_rows, bulk_inbox) == setup.outcome(row_config)


def test_a_sync_stopped_between_load_and_checkpoint_resumes_without_doubles(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    setup.reset_target()
    config = setup.config(bulk=True)
    chunk, put = BulkPath.chunk, StateStore.put_checkpoint
    seen = {"loads": 0, "killed": 0}

    def counted(self: BulkPath, after: Any) -> Any:
        got = chunk(self, after)
        if got is not None:
            seen["loads"] += 1
        return got

    def dies_after_second_load(self: StateStore, *args: Any, **kwargs: Any) -> None:
        if seen["loads"] == 2 and not seen["killed"]:
            seen["killed"] = 1  # the second bulk range is loaded, its checkpoint never stored
            raise KeyboardInterrupt("killed")
        put(self, *args, **kwargs)

    monkeypatch.setattr(BulkPath, "chunk", counted)
    monkeypatch.setattr(StateStore, "put_checkpoint", dies_after_second_load)
    with dualwrite.open(str(config)) as link, pytest.raises(KeyboardInterrupt):
        link.sync_initial(["accts"])
    assert seen["killed"]
    with dualwrite.open(str(config)) as link:
        [res] = link.sync_initial(["accts"])
    assert res.resumed_from is not None
    bulk_rows, bulk_inbox = setup.outcome(config)

    setup.reset_target()
    _res, row_config = setup.sync(bulk=False)
    assert (bulk_rows, bulk_inbox) == setup.outcome(row_config)


def test_plan_names_the_path_and_why(setup: Setup) -> None:
    setup.reset_target()
    config = setup.config(bulk=True)
    with dualwrite.open(str(config)) as link:
        [plan] = link.plan(["accts"])
    assert plan.path.startswith("bulk (left to right")
    # a date written into a text column: converted per row
    (setup.tmp / "maps" / "accts.yaml").write_text(MAP.replace(
        "  - NOTE = note\n  - BORN = born\n", "  - BORN > note\n"))
    with dualwrite.open(str(setup.config(bulk=True))) as link:
        [plan] = link.plan(["accts"])
    assert plan.path.startswith("rows ("), plan.path
