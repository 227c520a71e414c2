"""Test data for the OData layer's tests: a fake backend with two environments, and clients.

Not a conftest.py: a second module named ``conftest`` would shadow ``tests/conftest.py`` for
the other test packages that import from it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

from fake_backend import FakeBackend
from starlette.testclient import TestClient

from dualwrite.api import Principal, create_app
from dualwrite.model.schema import Column, Kind, TableSchema

ADMIN = "admin-token"
CLERK = "clerk-token"  # a writer without the finance licence
READER = "reader-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
CLERK_AUTH = {"Authorization": f"Bearer {CLERK}"}
READER_AUTH = {"Authorization": f"Bearer {READER}"}
#: page size of the test app: small, so that paging is exercised with little data
PAGE = 10
SCHEMAS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "odata-csdl-schemas"


def account_id(n: int) -> uuid.UUID:
    return uuid.UUID(f"00000000-0000-4000-8000-{n:012d}")


def accounts_schema() -> TableSchema:
    cols = [
        Column("accountid", Kind.UUID, nullable=False, has_default=True, primary_key=True,
               sql_type="UUID"),
        Column("accountnumber", Kind.STRING, nullable=False, length=20, sql_type="VARCHAR(20)"),
        Column("name", Kind.STRING, nullable=False, length=160, sql_type="VARCHAR(160)"),
        Column("creditlimit", Kind.DECIMAL, sql_type="NUMERIC(18, 2)"),
        Column("revenue", Kind.FLOAT, sql_type="DOUBLE PRECISION"),
        Column("numberofemployees", Kind.INTEGER, sql_type="INTEGER"),
        Column("customertypecode", Kind.INTEGER, sql_type="BIGINT"),
        Column("donotemail", Kind.BOOLEAN, has_default=True, sql_type="BOOLEAN"),
        Column("createdon", Kind.DATETIME, sql_type="TIMESTAMP WITH TIME ZONE"),
        Column("foundedon", Kind.DATE, sql_type="DATE"),
        Column("opensat", Kind.TIME, sql_type="TIME"),
        Column("logo", Kind.BINARY, length=1000, sql_type="BYTEA"),
        Column("settings", Kind.JSON, sql_type="JSON"),
    ]
    return TableSchema("accounts", {c.name: c for c in cols}, ("accountid",))


def account_rows() -> list[dict[str, object]]:
    names = ["Contoso", "Fabrikam", "Litware", "Adventure Works", "O'Brien & Sons"]
    rows: list[dict[str, object]] = []
    for n, name in enumerate(names, start=1):
        rows.append({
            "accountid": account_id(n), "accountnumber": f"C-100{n}", "name": name,
            "creditlimit": Decimal(f"{n * 1000}.50"), "revenue": n * 1.5,
            "numberofemployees": n * 10 if n != 3 else None, "customertypecode": n % 2 + 1,
            "donotemail": n % 2 == 0,
            "createdon": dt.datetime(2024, 1, n, 9, 30, tzinfo=dt.UTC),
            "foundedon": dt.date(2000 + n, 1, 31), "opensat": dt.time(8, n),
            "logo": bytes([n, 255, 0]), "settings": {"tier": n},
        })
    return rows


def customers_schema() -> TableSchema:
    cols = [
        Column("dataAreaId", Kind.STRING, nullable=False, primary_key=True, length=4,
               sql_type="VARCHAR(4)"),
        Column("CUSTOMERACCOUNT", Kind.STRING, nullable=False, primary_key=True, length=20,
               sql_type="VARCHAR(20)"),
        Column("NAME", Kind.STRING, nullable=False, length=100, sql_type="VARCHAR(100)"),
        Column("CREDITLIMIT", Kind.DECIMAL, sql_type="DECIMAL(32,6)"),
        Column("CUSTOMERGROUPID", Kind.STRING, length=10, sql_type="VARCHAR(10)"),
    ]
    return TableSchema("CustCustomerV3", {c.name: c for c in cols},
                       ("dataAreaId", "CUSTOMERACCOUNT"))


def products_schema() -> TableSchema:
    cols = [
        Column("productid", Kind.INTEGER, nullable=False, has_default=True, primary_key=True,
               sql_type="INTEGER"),
        Column("name", Kind.STRING, nullable=False, length=50, sql_type="VARCHAR(50)"),
        Column("price", Kind.DECIMAL, sql_type="NUMERIC(10,2)"),
    ]
    return TableSchema("products", {c.name: c for c in cols}, ("productid",))


def make_backend() -> FakeBackend:
    b = FakeBackend()
    b.tokens[ADMIN] = Principal("admin", "admin", frozenset({"finance"}))
    b.tokens[CLERK] = Principal("clerk", "writer", frozenset())
    b.tokens[READER] = Principal("reader", "reader", frozenset({"finance"}))
    b.add_table("crm", accounts_schema(), account_rows(), alternate_keys=[("accountnumber",)])
    lines = TableSchema("order lines", {
        "line id": Column("line id", Kind.INTEGER, nullable=False, primary_key=True),
        "order no": Column("order no", Kind.STRING, length=10),
    }, ("line id",))
    b.add_table("crm", lines, [{"line id": 1, "order no": "SO-1"}])
    b.add_table("crm", TableSchema("audit_log", {"msg": Column("msg", Kind.STRING)}),
                [{"msg": "x"}])
    b.add_table("erp", customers_schema(), [
        {"dataAreaId": "usmf", "CUSTOMERACCOUNT": "C-1", "NAME": "Contoso US",
         "CREDITLIMIT": Decimal("1000.000000"), "CUSTOMERGROUPID": "10"},
        {"dataAreaId": "usmf", "CUSTOMERACCOUNT": "C-2", "NAME": "Fabrikam US",
         "CREDITLIMIT": Decimal("2000"), "CUSTOMERGROUPID": "20"},
        {"dataAreaId": "demf", "CUSTOMERACCOUNT": "C-1", "NAME": "Contoso DE",
         "CREDITLIMIT": None, "CUSTOMERGROUPID": "10"},
        {"dataAreaId": "usmf", "CUSTOMERACCOUNT": "O'NEIL/1", "NAME": "O'Neil",
         "CREDITLIMIT": Decimal(5), "CUSTOMERGROUPID": None},
    ])
    b.add_table("erp", products_schema(), [
        {"productid": n, "name": f"Product {n:02d}", "price": Decimal(n) * Decimal("1.25")}
        for n in range(1, 26)])
    invoices = TableSchema("invoices", {
        "invoiceid": Column("invoiceid", Kind.STRING, nullable=False, primary_key=True,
                            length=20),
        "amount": Column("amount", Kind.DECIMAL, sql_type="NUMERIC(12,2)"),
    }, ("invoiceid",))
    b.add_table("erp", invoices, [{"invoiceid": "INV-1", "amount": Decimal("10.00")}],
                licence="finance")
    return b


def open_client(backend: FakeBackend, *, token: str | None = ADMIN) -> Iterator[TestClient]:
    """A test client of an app over ``backend`` sending ``token`` (none if None)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with TestClient(create_app(backend, page_size=PAGE), base_url="http://testserver",
                    headers=headers) as c:
        yield c
