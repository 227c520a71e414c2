"""Issue 10 §1: an initial sync converges, and plan predicts what sync then does.

One-way fields whose target filled a value from its own column default (``now()``, a price
of 0.0000) must not show as differences after the sync, nor be written over the other side's
value by a re-run; rows whose key is null are counted, never skipped silently; plan accounts
for the rows that maps earlier in ``depends_on`` order would create.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from dualwrite.engine.link import Link
from dualwrite.model.values import canonical

from conftest import Backend, BackendFactory, guid_default

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

CONVERGE_PAIRS = [("postgresql", "mariadb"), ("postgresql", "postgresql")]


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
             sa.Column("accountnumber", sa.String(20), nullable=False, unique=True),
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


@pytest.fixture(params=CONVERGE_PAIRS, ids=[f"{a}-{b}" for a, b in CONVERGE_PAIRS])
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
