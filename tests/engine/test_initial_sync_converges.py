"""Issue 10 §1: an initial sync converges, and plan predicts what sync then does.

One-way fields whose target filled a value from its own column default (``now()``, a price
of 0.0000) must not show as differences after the sync, nor be written over the other side's
value by a re-run; rows whose key is null are counted, never skipped silently; plan accounts
for the rows that maps earlier in ``depends_on`` order would create.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from dualwrite.cli import main
from dualwrite.engine.link import Link
from dualwrite.model.values import canonical
from dualwrite.testing.backends import pair_id, pairs

from conftest import Backend, BackendFactory, guid_default
from sync_fixtures import Pair, erp_customer, make_pair, seed_groups

CUSTS_MAP = """
name: custs
left: CustTable
right: account
key: {left: [ACCOUNTNUM], right: [accountnumber]}
fields:
  - ACCOUNTNUM = accountnumber
  - NAME = name
  - CREATEDDATETIME > createdon
  - PRICE > price
  - RATING < rating
"""

ERP_CREATED = dt.datetime(2021, 3, 4, 5, 6, 7)
CRM_CREATED = dt.datetime(2020, 1, 2, 3, 4, 5)

CONVERGE_PAIRS = pairs(needs=("server",))


def erp_md() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("CustTable", md,
             sa.Column("ACCOUNTNUM", sa.String(20), primary_key=True),
             sa.Column("NAME", sa.String(100)),
             sa.Column("CREATEDDATETIME", sa.DateTime, nullable=False,
                       server_default=sa.func.now()),
             sa.Column("PRICE", sa.Numeric(18, 4), nullable=False, server_default="0"),
             sa.Column("RATING", sa.Integer))
    return md


def crm_md(dialect: str) -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("account", md,
             sa.Column("accountid", sa.String(36), primary_key=True,
                       server_default=guid_default(dialect)),
             sa.Column("accountnumber", sa.String(20), unique=True),  # NULL: not numbered yet
             sa.Column("name", sa.String(100)),
             sa.Column("createdon", sa.DateTime),
             sa.Column("price", sa.Numeric(18, 2)),
             sa.Column("rating", sa.Integer, nullable=False, server_default="1"))
    return md


class Custs:
    def __init__(self, erp: Backend, crm: Backend, config: Path) -> None:
        self.erp, self.crm, self.config = erp, crm, config

    def link(self) -> Link:
        return Link.open(self.config)

    def erp_rows(self) -> dict[str, dict[str, Any]]:
        return {r["ACCOUNTNUM"]: r for r in self.erp.rows("CustTable", ["ACCOUNTNUM"])}

    def crm_rows(self) -> dict[str, dict[str, Any]]:
        return {r["accountnumber"]: r for r in self.crm.rows("account", ["accountnumber"])}


def make_custs(make_backend: BackendFactory, tmp_path: Path, left: str, right: str,
               maps: dict[str, str] | None = None) -> Custs:
    erp = make_backend(left, "dualwrite_test_a")
    crm = make_backend(right, "dualwrite_test_b" if right == left else "dualwrite_test_a")
    erp.connector.clear_link()
    crm.connector.clear_link()
    erp.create(erp_md())
    crm.create(crm_md(crm.dialect))
    (tmp_path / "maps").mkdir(exist_ok=True)
    for name, text in (maps or {"custs": CUSTS_MAP}).items():
        (tmp_path / "maps" / f"{name}.yaml").write_text(text)
    cfg = {"environments": {"erp": {"url": erp.url}, "crm": {"url": crm.url}},
           "link": {"left": "erp", "right": "crm"},
           "state": f"sqlite:///{tmp_path / 'state.db'}",
           "maps": ["maps/*.yaml"], "sync": {"batch_size": 4}}
    path = tmp_path / "dualwrite.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Custs(erp, crm, path)


@pytest.fixture(params=CONVERGE_PAIRS, ids=pair_id)
def custs(request: pytest.FixtureRequest, make_backend: BackendFactory,
          tmp_path: Path) -> Custs:
    left, right = request.param
    return make_custs(make_backend, tmp_path, left, right)


def seed(c: Custs) -> None:
    """ERP A-00..A-09, CRM A-05..A-14: five rows each side alone, five on both."""
    c.erp.insert("CustTable", [
        {"ACCOUNTNUM": f"A-{i:02d}", "NAME": f"Customer {i}", "CREATEDDATETIME": ERP_CREATED,
         "PRICE": Decimal("12.5"), "RATING": 5} for i in range(10)])
    c.crm.insert("account", [
        {"accountnumber": f"A-{i:02d}", "name": f"Customer {i}", "createdon": CRM_CREATED,
         "price": Decimal("9.99"), "rating": 3} for i in range(5, 15)])


def test_one_way_fields_with_target_defaults_converge(custs: Custs) -> None:
    seed(custs)
    with custs.link() as link:
        [first] = link.sync_initial()
        assert first.created == {"left": 5, "right": 5}
        # paired rows: createddatetime and price flow to the CRM, rating to the ERP
        assert first.updated == {"left": 5, "right": 5} and first.errors["left"] == 0

        erp, crm = custs.erp_rows(), custs.crm_rows()
        # CRM-only rows created in the ERP took the ERP's column defaults for the > fields
        assert canonical(erp["A-12"]["PRICE"]) == canonical(Decimal(0))
        assert erp["A-12"]["CREATEDDATETIME"] != CRM_CREATED
        # ERP-only rows created in the CRM took the CRM's default for the < field
        assert crm["A-02"]["rating"] == 1

        [v] = link.verify()
        assert v.ok, [d.as_dict() for d in v.details]

        [plan] = link.plan()
        assert plan.created == {"left": 0, "right": 0}
        assert plan.updated == {"left": 0, "right": 0} and plan.unchanged == 15

        [again] = link.sync_initial()
        assert again.created == {"left": 0, "right": 0}
        assert again.updated == {"left": 0, "right": 0} and again.unchanged == 15
        crm2, erp2 = custs.crm_rows(), custs.erp_rows()
        # the re-run kept what the other side holds: no default written over a real value
        assert canonical(crm2["A-12"]["price"]) == canonical(Decimal("9.99"))
        assert crm2["A-12"]["createdon"] == CRM_CREATED
        assert erp2["A-02"]["RATING"] == 5
        assert all(link.verify()[0].ok for _ in range(1))

        # once the source side changes a defaulted field, it flows as the map says
        with custs.erp.connector.transaction() as tx:
            tx.update("CustTable", ["ACCOUNTNUM"], ["PRICE"], [(("A-12",), (Decimal("7.25"),))])
        with custs.crm.connector.transaction() as tx:
            tx.update("account", ["accountnumber"], ["rating"], [(("A-02",), (4,))])
        [plan2] = link.plan()
        assert plan2.updated == {"left": 1, "right": 1}, (plan2.samples, custs.erp_rows()["A-12"])
        [third] = link.sync_initial()
        assert third.updated == {"left": 1, "right": 1}
        assert canonical(custs.crm_rows()["A-12"]["price"]) == canonical(Decimal("7.25"))
        assert custs.erp_rows()["A-02"]["RATING"] == 4
        assert link.verify()[0].ok
        [last] = link.plan()
        assert last.updated == {"left": 0, "right": 0}


@pytest.fixture(params=CONVERGE_PAIRS, ids=pair_id)
def shop(request: pytest.FixtureRequest, make_backend: BackendFactory, tmp_path: Path) -> Pair:
    left, right = request.param
    return make_pair(make_backend, tmp_path, left, right)


def test_plan_counts_lookups_to_rows_an_earlier_map_would_create(shop: Pair) -> None:
    """Customers refer to groups that only the groups map, earlier in depends_on order,
    would create in the CRM: plan must not predict lookup errors that sync then does not
    have, and must still predict the one that sync does have."""
    seed_groups(shop)
    shop.erp.insert("Customers", [erp_customer(i) for i in range(12)]
                    + [erp_customer(50, GROUPID="G99")])  # no such group anywhere
    with shop.link() as link:
        plans = {p.map: p for p in link.plan(errors=True)}
        assert plans["groups"].created == {"left": 1, "right": 2}
        customers = plans["customers"]
        assert customers.created == {"left": 0, "right": 12}
        assert customers.errors == {"left": 0, "right": 1}
        [failure] = customers.failures
        assert failure["key"] == ["demf", "C-0050"] and failure["side"] == "right"
        assert failure["operation"] == "create" and failure["value"] == "G99"
        assert "does not resolve" in failure["reason"]
        assert failure["hint"]

        results = {r.map: r for r in link.sync_initial()}
        assert results["customers"].created == customers.created
        assert results["customers"].errors == customers.errors


def test_rows_without_a_key_are_counted_and_reported_by_plan_sync_and_verify(
        custs: Custs, capsys: pytest.CaptureFixture[str]) -> None:
    seed(custs)
    custs.crm.insert("account", [{"accountnumber": None, "name": f"Lead {i}"} for i in range(3)])
    cfg = str(custs.config)
    with custs.link() as link:
        [plan] = link.plan()
        assert plan.null_keys == {"left": 0, "right": 3}
        [res] = link.sync_initial()
        assert res.null_keys == {"left": 0, "right": 3}
        assert res.created == {"left": 5, "right": 5}  # the keyless rows are not copied
        [v] = link.verify()
        assert v.differences == 0 and v.null_keys == {"left": 0, "right": 3} and not v.ok
        [warning] = v.warnings
        assert "3 row(s) of account (right) have no key (accountnumber is null)" in warning
        assert "`accountnumber ne null`" in warning

    capsys.readouterr()
    assert main(["-c", cfg, "plan"]) == 0
    assert "warning: 3 row(s) of account (right) have no key" in capsys.readouterr().out
    assert main(["-c", cfg, "sync", "--initial"]) == 0
    assert "warning: 3 row(s) of account (right) have no key" in capsys.readouterr().out
    assert main(["-c", cfg, "verify"]) == 1
    text = capsys.readouterr().out
    assert "warning: 3 row(s) of account (right) have no key" in text
    assert "verify: the sides differ" in text
    assert main(["-c", cfg, "verify", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["maps"][0]["null_keys"] == {"left": 0, "right": 3}

    # leaving them out explicitly, as the hint says, makes verify pass
    maps = custs.config.parent / "maps" / "custs.yaml"
    maps.write_text(CUSTS_MAP.replace("fields:", 'filter: {right: "accountnumber ne null"}\n'
                                      "fields:"))
    assert main(["-c", cfg, "verify"]) == 0
    assert "both sides agree" in capsys.readouterr().out


def test_verify_prints_values_as_written_sums_up_by_field_and_lists_rows(
        custs: Custs, capsys: pytest.CaptureFixture[str]) -> None:
    seed(custs)
    cfg = str(custs.config)
    assert main(["-c", cfg, "sync", "--initial"]) == 0
    with custs.crm.connector.transaction() as tx:
        tx.update("account", ["accountnumber"], ["name", "createdon", "price"], [
            ((f"A-{i:02d}",), (f"Renamed {i}", dt.datetime(2019, 5, 6, 7, 8, 9),
                               Decimal("1.50"))) for i in range(5, 10)])
    capsys.readouterr()
    assert main(["-c", cfg, "verify", "--limit", "2"]) == 1
    text = capsys.readouterr().out
    assert "custs: 15 key(s) compared, 5 difference(s)" in text
    for name in ("NAME = name", "CREATEDDATETIME > createdon", "PRICE > price"):
        assert f"  5 × {name}" in text
    assert ('  A-05: NAME = name: left "Customer 5", right "Renamed 5"; CREATEDDATETIME > '
            "createdon: left 2021-03-04T05:06:07, right 2019-05-06T07:08:09; PRICE > price: "
            "left 12.5000, right 1.50") in text
    assert "A-06:" in text and "A-07:" not in text
    assert "3 more row(s): `--limit N` lists more, `--json` lists every one" in text
    assert "Decimal(" not in text and "datetime." not in text

    assert main(["-c", cfg, "verify", "--json"]) == 1
    [m] = json.loads(capsys.readouterr().out)["maps"]
    assert len(m["details"]) == 5 and m["truncated"] is False
    assert m["by_field"] == {"NAME = name": 5, "CREATEDDATETIME > createdon": 5,
                             "PRICE > price": 5}
    first = {f["field"]: f for f in m["details"][0]["fields"]}
    assert first["PRICE > price"]["right"] == "1.50"
    assert first["CREATEDDATETIME > createdon"]["left"] == "2021-03-04T05:06:07"


def test_plan_errors_lists_every_row_predicted_to_fail(
        shop: Pair, capsys: pytest.CaptureFixture[str]) -> None:
    seed_groups(shop)
    shop.erp.insert("Customers", [erp_customer(i) for i in range(8)]
                    + [erp_customer(60 + i, GROUPID="G99") for i in range(7)])
    cfg = str(shop.config)
    capsys.readouterr()
    assert main(["-c", cfg, "plan"]) == 0
    text = capsys.readouterr().out
    assert "7 row(s) would fail: `dualwrite plan --errors` lists every one" in text
    assert main(["-c", cfg, "plan", "--errors"]) == 0
    text = capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if "does not resolve" in ln]
    assert len(lines) == 7
    assert any(ln.startswith("  customers: create right usmf, C-0061 groupref.groupcode "
                             '"G99": lookup') for ln in lines)
    assert "hint: create the related row on the right side first" in text
    assert main(["-c", cfg, "plan", "--errors", "--json"]) == 0
    plans = {m["map"]: m for m in json.loads(capsys.readouterr().out)["maps"]}
    assert len(plans["customers"]["failures"]) == 7
    assert plans["customers"]["errors"] == {"left": 0, "right": 7}


def test_a_sync_stopped_before_reading_back_still_keeps_the_other_sides_values(
        custs: Custs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after writing a chunk's creates, before reading back what the target's
    defaults gave them: the rerun must not write those defaults over the other side."""
    from dualwrite.engine.initial_sync import InitialSync

    seed(custs)

    def stop(*_a: object) -> None:
        raise KeyboardInterrupt("stopped between writing a chunk and reading it back")

    with custs.link() as link:
        monkeypatch.setattr(InitialSync, "_read_self_filled", stop)
        with pytest.raises(KeyboardInterrupt):
            link.sync_initial()
        monkeypatch.undo()
        # the first chunk (A-00..A-03, ERP only) created CRM rows with the CRM's rating
        created = [k for k, r in custs.crm_rows().items() if r["rating"] == 1]
        assert created == ["A-00", "A-01", "A-02", "A-03"]
        [res] = link.sync_initial()
        assert res.resumed_from is None  # the stopped chunk was not checkpointed
        assert res.created == {"left": 5, "right": 1}
        erp = custs.erp_rows()
        assert [erp[k]["RATING"] for k in created] == [5, 5, 5, 5]  # not the CRM's default
        [v] = link.verify()
        assert v.ok, [d.as_dict() for d in v.details]
        [plan] = link.plan()
        assert plan.updated == {"left": 0, "right": 0}
        assert plan.created == {"left": 0, "right": 0}
