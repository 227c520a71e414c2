"""A small ERP/CRM pair with the features initial sync must handle (imported by tests)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from dualwrite.engine.link import Link

from conftest import Backend, BackendFactory, guid_default

GROUPS_MAP = """
name: groups
left: Groups
right: groups
key: {left: [GROUPID], right: [groupcode]}
company: {left: dataAreaId, right: company}
fields:
  - GROUPID = groupcode
  - DESCRIPTION = description
"""

CUSTOMERS_MAP = """
name: customers
left: Customers
right: accounts
key: {left: [ACCOUNT], right: [accountnumber]}
company: {left: dataAreaId, right: company}
master: left
filter: {left: "PARTYTYPE eq 'Organization'", right: "typecode eq 3"}
depends_on: [groups]
fields:
  - ACCOUNT = accountnumber
  - NAME = name
  - CREDIT > creditlimit
  - PHONE < telephone1
  - STATUS >< onhold: {values: {"No": 0, "Invoice": 1, "All": 2}}
  - GROUPID = groupref.groupcode
  - CREATED = created
  - none >> typecode: {default: 3}
  - LANGUAGEID << none: {default: en-us}
  - PARTYTYPE << none: {default: Organization}
"""


def erp_metadata(dialect: str) -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("Groups", md,
             sa.Column("dataAreaId", sa.String(4), primary_key=True),
             sa.Column("GROUPID", sa.String(10), primary_key=True),
             sa.Column("DESCRIPTION", sa.String(60)))
    sa.Table("Customers", md,
             sa.Column("dataAreaId", sa.String(4), primary_key=True),
             sa.Column("ACCOUNT", sa.String(20), primary_key=True),
             sa.Column("NAME", sa.String(100)),
             sa.Column("CREDIT", sa.Numeric(18, 2)),
             sa.Column("PHONE", sa.String(30)),
             sa.Column("STATUS", sa.String(10)),
             sa.Column("GROUPID", sa.String(10)),
             sa.Column("CREATED", sa.Date),
             sa.Column("LANGUAGEID", sa.String(10)),
             sa.Column("PARTYTYPE", sa.String(20), nullable=False))
    return md


def crm_metadata(dialect: str) -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("groups", md,
             sa.Column("groupid", sa.String(36), primary_key=True,
                       server_default=guid_default(dialect)),
             sa.Column("company", sa.String(4), nullable=False),
             sa.Column("groupcode", sa.String(10), nullable=False),
             sa.Column("description", sa.String(60)),
             sa.UniqueConstraint("company", "groupcode"))
    sa.Table("accounts", md,
             sa.Column("accountid", sa.String(36), primary_key=True,
                       server_default=guid_default(dialect)),
             sa.Column("company", sa.String(4), nullable=False),
             sa.Column("accountnumber", sa.String(20), nullable=False),
             sa.Column("name", sa.String(100), nullable=False),
             sa.Column("creditlimit", sa.Numeric(18, 2)),
             sa.Column("telephone1", sa.String(30)),
             sa.Column("onhold", sa.Integer),
             sa.Column("groupref", sa.String(36), sa.ForeignKey("groups.groupid")),
             sa.Column("created", sa.Date),
             sa.Column("typecode", sa.Integer),
             sa.UniqueConstraint("company", "accountnumber"))
    return md


@dataclass
class Pair:
    erp: Backend
    crm: Backend
    config: Path

    def link(self) -> Link:
        return Link.open(self.config)

    def customers(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {(r["dataAreaId"], r["ACCOUNT"]): r
                for r in self.erp.rows("Customers", ["dataAreaId", "ACCOUNT"])}

    def accounts(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {(r["company"], r["accountnumber"]): r
                for r in self.crm.rows("accounts", ["company", "accountnumber"])}

    def group_ids(self) -> dict[str, str]:
        return {r["groupcode"]: r["groupid"] for r in self.crm.rows("groups", ["groupid"])}


def make_pair(make_backend: BackendFactory, tmp_path: Path, left: str, right: str,
              *, batch_size: int = 7, extra: Callable[[dict[str, Any]], None] | None = None
              ) -> Pair:
    erp = make_backend(left, "dualwrite_test_a")
    crm = make_backend(right, "dualwrite_test_b" if right == left else "dualwrite_test_a")
    erp.connector.clear_link()
    crm.connector.clear_link()
    crm.create(crm_metadata(crm.dialect))
    erp.create(erp_metadata(erp.dialect))
    (tmp_path / "maps").mkdir(exist_ok=True)
    (tmp_path / "maps" / "groups.yaml").write_text(GROUPS_MAP)
    (tmp_path / "maps" / "customers.yaml").write_text(CUSTOMERS_MAP)
    cfg: dict[str, Any] = {
        "environments": {"erp": {"url": erp.url}, "crm": {"url": crm.url}},
        "link": {"left": "erp", "right": "crm"},
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        "maps": ["maps/*.yaml"],
        "sync": {"batch_size": batch_size},
    }
    if extra:
        extra(cfg)
    path = tmp_path / "dualwrite.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Pair(erp, crm, path)


def seed_groups(pair: Pair) -> None:
    pair.erp.insert("Groups", [
        {"dataAreaId": "usmf", "GROUPID": "G10", "DESCRIPTION": "Wholesale"},
        {"dataAreaId": "usmf", "GROUPID": "G20", "DESCRIPTION": "Retail"},
        {"dataAreaId": "demf", "GROUPID": "G30", "DESCRIPTION": "Export"},
    ])
    pair.crm.insert("groups", [
        {"groupid": "g-20", "company": "usmf", "groupcode": "G20", "description": "Retail (CRM)"},
        {"groupid": "g-40", "company": "demf", "groupcode": "G40", "description": "Partners"},
    ])


#: each company's customer groups once seed_groups' rows are synced (lookups resolve within
#: the row's company, so a customer's group is one of its own company's)
GROUPS_OF = {"usmf": ("G10", "G20"), "demf": ("G30", "G40")}


def group_of(i: int, company: str) -> str:
    return GROUPS_OF[company][(i // 2) % 2]


def erp_customer(i: int, **over: Any) -> dict[str, Any]:
    row = {"dataAreaId": "usmf" if i % 2 else "demf", "ACCOUNT": f"C-{i:04d}",
           "NAME": f"Customer {i}", "CREDIT": Decimal(1000 + i) / 4, "PHONE": None,
           "STATUS": ["No", "Invoice", "All"][i % 3], "GROUPID": None,
           "CREATED": dt.date(2024, 1 + i % 12, 1 + i % 28), "LANGUAGEID": "en-us",
           "PARTYTYPE": "Organization"}
    row.update(over)
    if "GROUPID" not in over:
        row["GROUPID"] = group_of(i, row["dataAreaId"])
    return row


def crm_account(i: int, group_ids: dict[str, str], **over: Any) -> dict[str, Any]:
    row = {"company": "usmf" if i % 2 else "demf", "accountnumber": f"C-{i:04d}",
           "name": f"Customer {i}", "creditlimit": Decimal(1000 + i) / 4,
           "telephone1": f"+1 555 {i:04d}", "onhold": i % 3, "groupref": None,
           "created": dt.date(2024, 1 + i % 12, 1 + i % 28), "typecode": 3}
    row.update(over)
    if "groupref" not in over:
        row["groupref"] = group_ids.get(group_of(i, row["company"]))
    return row
