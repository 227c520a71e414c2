"""Live sync with SAP CAP as the OData side (the last resource of the commit), PostgreSQL the
other: a transaction's writes and their twins commit on both, a change set CAP refuses
leaves both as they were, and a lost answer is decided by reading the rows back."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from cap_process import Cap, cap_client, cap_rows, fresh_crm, running_cap, write_config
from dualwrite.engine.link import Link
from dualwrite.errors import RowError
from httpfaults import HttpFaults

from conftest import Backend, BackendFactory


@pytest.fixture
def cap(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cap]:
    yield from running_cap(monkeypatch)


@pytest.fixture
def crm(make_backend: BackendFactory) -> Backend:
    return fresh_crm(make_backend)


def seeded(cap: Cap, crm: Backend) -> None:
    rows = [{"id": i, "name": f"customer {i}", "credit": Decimal(i), "active": True,
             "since": dt.date(2024, 1, i)} for i in range(1, 4)]
    crm.insert("customers", rows)
    with cap_client(cap) as c:
        for r in rows:
            got = c.post("Customers", json={"ID": r["id"], "name": r["name"],
                                            "credit": int(r["credit"]), "active": True,
                                            "since": r["since"].isoformat()})
            assert got.status_code == 201, got.text


def crm_rows(crm: Backend) -> dict[int, tuple[str, Decimal | None]]:
    return {int(r["id"]): (r["name"], r["credit"]) for r in crm.rows("customers", ["id"])}


def cap_view(cap: Cap) -> dict[int, tuple[str, Decimal | None]]:
    return {i: (e["name"], None if e["credit"] is None else Decimal(str(e["credit"])))
            for i, e in cap_rows(cap).items()}


def test_a_transaction_commits_in_postgresql_and_in_cap(cap: Cap, crm: Backend,
                                                        tmp_path: Path) -> None:
    seeded(cap, crm)
    with HttpFaults(cap.root) as proxy, \
            Link.open(write_config(tmp_path, cap.env_url().replace(
                cap.root.split("://")[1], proxy.root.split("://")[1]), crm)) as link:
        with link.transaction("clerk") as tx:
            tx.create("crm", "customers", {"id": 10, "name": "new in crm",
                                           "credit": Decimal("12.50"), "active": False,
                                           "since": dt.date(2025, 2, 1)})
            tx.update("crm", "customers", {"id": 2}, {"name": "renamed in crm"})
            tx.delete("crm", "customers", {"id": 3})
        with link.transaction("clerk") as tx:  # and from CAP's side
            tx.update("erp", "Customers", {"ID": 1}, {"credit": Decimal("99.99")})
        # the first change set's answer is lost: the rows read back decide (committed)
        proxy.fail("POST", r"\$batch", "lost")
        with link.transaction("clerk") as tx:
            tx.create("crm", "customers", {"id": 11, "name": "answer lost", "credit": 1})
        assert proxy.pending() == 0
        [v] = link.verify()
        assert v.ok, v.as_dict()
    want = {1: ("customer 1", Decimal("99.99")), 2: ("renamed in crm", Decimal(2)),
            10: ("new in crm", Decimal("12.50")), 11: ("answer lost", Decimal(1))}
    assert crm_rows(crm) == cap_view(cap) == want


def test_a_change_set_cap_refuses_leaves_both_sides_as_they_were(cap: Cap, crm: Backend,
                                                                 tmp_path: Path) -> None:
    seeded(cap, crm)
    before = crm_rows(crm)
    with Link.open(write_config(tmp_path, cap.env_url(), crm)) as link:
        with pytest.raises(RowError) as caught, link.transaction() as tx:
            tx.update("crm", "customers", {"id": 1}, {"name": "not kept"})
            tx.update("crm", "customers", {"id": 2}, {"credit": Decimal(-5)})  # @assert.range
        assert caught.value.map == "customers" and caught.value.side == "erp"
        assert caught.value.table == "Customers" and caught.value.key == (2,)
        assert "nothing was written" in caught.value.message
    assert crm_rows(crm) == cap_view(cap) == before
