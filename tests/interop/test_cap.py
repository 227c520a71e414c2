"""Interop with a server nobody here wrote: a SAP CAP service (tests/interop/cap/, the
`managed` aspect on its Customers) as the ERP, PostgreSQL as the CRM. validate, initial sync
both ways and verify, over real HTTP with basic credentials from ``${CAP_PASSWORD}``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from cap_process import (
    CUSTOMERS_MAP,
    Cap,
    cap_client,
    cap_rows,
    fresh_crm,
    running_cap,
    write_config,
)
from dualwrite.engine.link import Link
from dualwrite.errors import Issue, LinkError, TerminalConnectorError, ValidationFailed

from conftest import Backend, BackendFactory


@pytest.fixture
def cap(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cap]:
    yield from running_cap(monkeypatch)


@pytest.fixture
def crm(make_backend: BackendFactory) -> Backend:
    return fresh_crm(make_backend)


def test_validate_describes_the_cap_service_from_its_metadata(cap: Cap, crm: Backend,
                                                             tmp_path: Path) -> None:
    with Link.open(write_config(tmp_path, cap.env_url(), crm)) as link:
        bound, issues = link.validate()
        assert [i for i in issues if i.is_error] == [], issues
        assert [b.name for b in bound] == ["customers"]
        schema = link.connectors[next(iter(link.connectors))].describe("Customers")
        assert schema.primary_key == ("ID",)
        # the managed aspect's fields are filled by CAP itself (Core.Computed)
        assert schema.columns["modifiedAt"].has_default
        assert schema.columns["name"].required and schema.columns["name"].facets.type_name \
            == "Edm.String" and schema.columns["name"].length == 100
        assert (schema.columns["credit"].facets.precision,
                schema.columns["credit"].facets.scale) == (12, 2)


def test_validate_names_a_missing_entity_set(cap: Cap, crm: Backend, tmp_path: Path) -> None:
    config = write_config(tmp_path, cap.env_url(), crm)
    (tmp_path / "maps" / "customers.yaml").write_text(
        CUSTOMERS_MAP.replace("left: Customers", "left: Clients"))
    with Link.open(config) as link:
        _, issues = link.validate()
        errors = [i for i in issues if i.is_error]
        assert errors and "Clients" in errors[0].message, errors


def test_initial_sync_both_ways_then_verify_clean(cap: Cap, crm: Backend,
                                                  tmp_path: Path) -> None:
    with cap_client(cap) as c:
        for i in range(1, 31):  # 1..30 on CAP; 21..30 are on both sides
            r = c.post("Customers", json={"ID": i, "name": f"erp {i}",
                                           "credit": f"{i}.25", "active": i % 2 == 0,
                                           "since": f"2024-01-{i % 28 + 1:02d}"})
            assert r.status_code == 201, r.text
    crm.insert("customers", [{"id": i, "name": f"erp {i}" if i != 25 else "crm wins not",
                              "credit": Decimal(f"{i}.25"), "active": i % 2 == 0,
                              "since": dt.date(2024, 1, i % 28 + 1)} for i in range(21, 31)]
               + [{"id": i, "name": f"crm {i}", "credit": None, "active": None,
                   "since": None} for i in range(31, 46)])
    with Link.open(write_config(tmp_path, cap.env_url(), crm)) as link:
        [result] = link.sync_initial()
        assert result.created == {"left": 15, "right": 20}, result.as_dict()
        assert result.updated == {"left": 0, "right": 1}, result.as_dict()
        assert result.errors == {"left": 0, "right": 0}, result.as_dict()
        [v] = link.verify()
        assert v.ok, v.as_dict()
    on_cap = cap_rows(cap)
    assert sorted(on_cap) == list(range(1, 46))
    assert on_cap[31] == {"ID": 31, "name": "crm 31", "credit": None, "active": None,
                          "since": None} | {k: v for k, v in on_cap[31].items()
                                            if k.startswith("@")}
    crm_rows = {r["id"]: tuple(r.values()) for r in crm.rows(
        "customers", ["id"], ["id", "name", "credit", "active", "since"])}
    assert sorted(crm_rows) == list(range(1, 46))
    assert crm_rows[25][1] == "erp 25"  # the master (CAP) side's value
    assert crm_rows[7][1:] == ("erp 7", Decimal("7.25"), False, dt.date(2024, 1, 8))

    # a change made through CAP's OData shows in verify (it reads the service, not a copy)
    with cap_client(cap) as c:
        assert c.patch("Customers(7)", json={"name": "changed in CAP"}).status_code == 200
    with Link.open(tmp_path / "dualwrite.yaml") as link:
        [v] = link.verify()
        assert not v.ok
        assert "changed in CAP" in repr(v.as_dict())


def test_wrong_password_is_a_terminal_error_naming_the_credentials(
        cap: Cap, crm: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAP_PASSWORD", "not-the-password")
    with Link.open(write_config(tmp_path, cap.env_url(), crm)) as link, \
            pytest.raises(TerminalConnectorError) as info:
        link.connectors[next(iter(link.connectors))].tables()
    text = str(info.value)
    assert "401" in text and "credentials" in text and "not-the-password" not in text


def test_maps_do_not_start_live_on_an_odata_environment_yet(cap: Cap, crm: Backend,
                                                            tmp_path: Path) -> None:
    with Link.open(write_config(tmp_path, cap.env_url(), crm)) as link, \
            pytest.raises(LinkError) as info:
        link.start_maps()
    assert "'erp' cannot run maps live" in str(info.value)
    assert "sync --initial" in info.value.hint


def test_validate_says_how_changes_of_the_service_would_be_read(cap: Cap, crm: Backend,
                                                                 tmp_path: Path) -> None:
    config = write_config(tmp_path, cap.env_url(), crm, modified=None)

    def said() -> list[Issue]:
        with Link.open(config) as link:
            _, issues = link.validate()
        return [i for i in issues if i.code in ("DW135", "DW136")]

    # CAP applies no change tracking, and no modified property is named: an error
    [issue] = said()
    assert (issue.code, issue.severity, issue.map) == ("DW136", "error", "customers")
    assert "no change tracking" in issue.message and "`modified:`" in issue.message
    assert "`erp: {url: ..., modified: modifiedAt}`" in issue.hint  # per environment
    assert "`modified: {left: modifiedAt}`" in issue.hint  # per map
    doc = yaml.safe_load(config.read_text())
    doc["environments"]["erp"]["modified"] = "modifiedAt"
    config.write_text(yaml.safe_dump(doc))
    assert [(i.code, i.severity, i.message) for i in said()] == [
        ("DW135", "note", "changes of 'Customers' (erp) are read by polling modifiedAt (the "
         "service offers no delta links)")]
    (tmp_path / "maps" / "customers.yaml").write_text(
        CUSTOMERS_MAP + "modified: {left: changedOn}\n")  # the map's own, wrong, wins
    [issue] = said()
    assert (issue.code, issue.severity) == ("DW136", "error")
    assert "no property 'changedOn'" in issue.message and issue.line is not None


def test_a_map_whose_changes_cannot_be_read_is_synced_and_verified_not_run_live(
        cap: Cap, crm: Backend, tmp_path: Path) -> None:
    """DW136 keeps a map from running live (a live transaction is refused naming it) but
    not from plan, initial sync and verify, which read no changes."""
    crm.insert("customers", [{"id": 1, "name": "from crm", "credit": Decimal(1)}])
    with Link.open(write_config(tmp_path, cap.env_url(), crm, modified=None)) as link:
        [planned] = link.plan()
        assert planned.created == {"left": 1, "right": 0}, planned.as_dict()
        [result] = link.sync_initial()
        assert result.created == {"left": 1, "right": 0}, result.as_dict()
        [v] = link.verify()
        assert v.ok, v.as_dict()
        with pytest.raises(ValidationFailed) as info, link.transaction("clerk") as tx:
            tx.update("crm", "customers", {"id": 1}, {"name": "not written"})
        assert [i.code for i in info.value.issues] == ["DW136"]
    assert cap_rows(cap)[1]["name"] == "from crm"
