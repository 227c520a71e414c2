"""Tokens over a real link: roles enforced and audited, per-token licences narrower than the
principal's, tokens made before roles, the admin endpoints and the `tokens` commands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from dualwrite.api.server import create_server_app
from dualwrite.cli import main
from dualwrite.engine.link import Link
from dualwrite.engine.security import authenticate, create_token, token_hash
from dualwrite.engine.state import StateStore
from dualwrite.testing.backends import pair_id, pairs

from conftest import BackendFactory
from sync_fixtures import Pair, make_pair, seed_groups

ROW = {"dataAreaId": "usmf", "ACCOUNT": "C-7000", "NAME": "Restricted",
       "PARTYTYPE": "Organization"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(params=pairs(needs=("sql",), same="none"), ids=pair_id)
def restricted(request: pytest.FixtureRequest, make_backend: BackendFactory,
               tmp_path: Path) -> Iterator[tuple[Pair, Link, TestClient]]:
    """Both maps running; customers restricted (a write needs Customers and accounts)."""
    pair = make_pair(make_backend, tmp_path, *request.param)
    f = tmp_path / "maps" / "customers.yaml"
    f.write_text(f.read_text().replace("master: left", "master: left\nrestricted: true"))
    seed_groups(pair)
    with pair.link() as link:
        link.start_maps()
        with TestClient(create_server_app(link)) as client:
            yield pair, link, client


def test_a_token_made_without_a_role_reads_and_is_refused_writes(
        restricted: tuple[Pair, Link, TestClient]) -> None:
    pair, link, client = restricted
    token = create_token(link.state, "alice", licences=["Customers", "accounts"])
    before = (pair.customers(), pair.accounts())
    assert client.get("/odata/erp/Customers", headers=bearer(token)).status_code == 200
    r = client.post("/odata/erp/Customers", json=ROW, headers=bearer(token))
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "Forbidden"
    assert "needs role writer" in r.json()["error"]["message"]
    assert (pair.customers(), pair.accounts()) == before  # nothing written on either side
    [refusal] = link.state.refusals()
    assert refusal["principal"] == "alice" and refusal["needed"] == "role writer"
    assert refusal["request"] == "POST /odata/erp/Customers"
    assert refusal["token_id"] == token.split("_")[1] and refusal["environment"] == "erp"


def test_a_narrower_token_holds_only_its_own_licences(
        restricted: tuple[Pair, Link, TestClient]) -> None:
    pair, link, client = restricted
    # alice holds both licences the restricted map needs; her second token only one of them
    wide = create_token(link.state, "alice", role="writer", licences=["Customers", "accounts"])
    narrow = create_token(link.state, "alice", role="writer", licences=["Customers"])
    everything = create_token(link.state, "alice", role="writer")  # no licences of its own
    r = client.post("/odata/erp/Customers", json=ROW, headers=bearer(narrow))
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "LicenceRequired"
    assert "'accounts'" in r.json()["error"]["message"]
    assert pair.customers() == {} and pair.accounts() == {}
    [refusal] = link.state.refusals()
    assert refusal["needed"] == "licence accounts"
    assert refusal["request"] == "create erp.Customers"
    assert refusal["token_id"] == narrow.split("_")[1]
    for n, token in enumerate((wide, everything)):
        r = client.post("/odata/erp/Customers", json={**ROW, "ACCOUNT": f"C-700{n}"},
                        headers=bearer(token))
        assert r.status_code == 201, r.text
    assert {("usmf", "C-7000"), ("usmf", "C-7001")} <= set(pair.accounts())


def test_a_tokens_licences_never_exceed_its_principals(tmp_path: Path) -> None:
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        state.grant("bob", [], ["invoices"])
        # a token record naming more than its principal holds (a licence withdrawn since)
        state.add_token("0badc0de", "bob", token_hash("dw_0badc0de_x"), role="writer",
                        licences=["invoices", "payroll"])
        p = authenticate(state, "dw_0badc0de_x")
        assert p is not None and p.licences == frozenset({"invoices"}) and p.role == "writer"
    finally:
        state.close()


OLD_TOKENS = """CREATE TABLE tokens (id VARCHAR(16) NOT NULL, principal VARCHAR(200) NOT NULL,
token_hash VARCHAR(64) NOT NULL, created_at VARCHAR(40) NOT NULL, revoked_at VARCHAR(40),
PRIMARY KEY (id), UNIQUE (token_hash))"""
OLD_PRINCIPALS = """CREATE TABLE principals (name VARCHAR(200) NOT NULL, roles TEXT NOT NULL,
licences TEXT NOT NULL, PRIMARY KEY (name))"""


def test_tokens_made_before_roles_keep_their_principals_role_or_read(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    old = sa.create_engine(f"sqlite:///{db}")
    with old.begin() as conn:  # a state store as the previous version left it
        conn.exec_driver_sql(OLD_TOKENS)
        conn.exec_driver_sql(OLD_PRINCIPALS)
        for name, roles in (("root", '["admin"]'), ("clerk", '["user"]'), ("plain", "[]")):
            conn.exec_driver_sql(
                "INSERT INTO principals VALUES (?, ?, '[\"accounts\"]')", (name, roles))
            conn.exec_driver_sql("INSERT INTO tokens VALUES (?, ?, ?, '2026-01-01', NULL)",
                                 (name[:8], name, token_hash(f"dw_{name}_secret")))
    old.dispose()
    state = StateStore(f"sqlite:///{db}", upgrade=True)  # `dualwrite state upgrade`
    try:
        got = {n: authenticate(state, f"dw_{n}_secret") for n in ("root", "clerk", "plain")}
        assert {n: (p.role, p.licences) for n, p in got.items() if p} == {
            "root": ("admin", frozenset({"accounts"})),
            "clerk": ("reader", frozenset({"accounts"})),
            "plain": ("reader", frozenset({"accounts"}))}
        # a new admin token for a principal does not raise its older tokens
        create_token(state, "plain", role="admin")
        p = authenticate(state, "dw_plain_secret", max_age=0)
        assert p is not None and p.role == "reader"
    finally:
        state.close()


def test_admin_endpoints_need_role_admin(restricted: tuple[Pair, Link, TestClient]) -> None:
    _pair, link, client = restricted
    writer = create_token(link.state, "wendy", role="writer")
    admin = create_token(link.state, "root", role="admin")
    for token in (writer, create_token(link.state, "rita")):
        r = client.post("/admin/tokens", json={"principal": "mallory", "role": "admin"},
                        headers=bearer(token))
        assert r.status_code == 403 and r.json()["error"]["code"] == "Forbidden", r.text
        assert client.get("/admin/maps", headers=bearer(token)).status_code == 403
    assert [x["needed"] for x in link.state.refusals()] == ["role admin"] * 4
    assert all(t["principal"] != "mallory" for t in link.state.list_tokens())
    assert client.get("/admin/maps").status_code == 401

    r = client.post("/admin/tokens", headers=bearer(admin),
                    json={"principal": "carol", "role": "writer", "licences": ["accounts"]})
    assert r.status_code == 201, r.text
    made = r.json()
    listed = {t["id"]: t for t in client.get("/admin/tokens",
                                              headers=bearer(admin)).json()["tokens"]}
    assert listed[made["id"]]["role"] == "writer"
    assert listed[made["id"]]["licences"] == ["accounts"]
    assert client.get("/odata/crm/accounts", headers=bearer(made["token"])).status_code == 200
    bad = client.post("/admin/tokens", headers=bearer(admin),
                      json={"principal": "carol", "role": "superuser"})
    assert bad.status_code == 400 and bad.json()["error"]["target"] == "role"
    assert client.delete(f"/admin/tokens/{made['id']}",
                         headers=bearer(admin)).status_code == 204
    assert client.get("/odata/crm/accounts", headers=bearer(made["token"])).status_code == 401
    assert client.delete(f"/admin/tokens/{made['id']}",
                         headers=bearer(admin)).status_code == 404

    r = client.post("/admin/maps/customers/pause", headers=bearer(admin))
    assert r.status_code == 200 and r.json() == {"pause": ["customers"]}, r.text
    states = {m["map"]: m["state"] for m in client.get(
        "/admin/maps", headers=bearer(admin)).json()["maps"]}
    assert states == {"groups": "running", "customers": "paused"}
    assert client.post("/admin/maps/customers/resume", headers=bearer(admin)).json() == \
        {"resume": ["customers"]}
    assert client.post("/admin/maps/nosuch/pause", headers=bearer(admin)).status_code == 404
    assert client.post("/admin/maps/customers/explode",
                       headers=bearer(admin)).status_code == 404


def test_tokens_commands(tmp_path: Path, make_backend: BackendFactory,
                         capsys: pytest.CaptureFixture[str]) -> None:
    pair = make_pair(make_backend, tmp_path, "sqlite", "sqlite")
    cfg = str(pair.config)
    assert main(["-c", cfg, "tokens", "create", "--principal", "alice",
                 "--licence", "invoices", "--licence", "accounts"]) == 0
    assert main(["-c", cfg, "tokens", "create", "--principal", "alice", "--role", "writer",
                 "--licence", "invoices"]) == 0
    assert main(["-c", cfg, "tokens", "create", "--principal", "alice", "--role", "admin"]) == 0
    first, narrow, admin = capsys.readouterr().out.split()
    assert all(t.startswith("dw_") for t in (first, narrow, admin))
    assert main(["-c", cfg, "tokens", "list", "--json"]) == 0
    rows = {t["id"]: t for t in json.loads(capsys.readouterr().out)["tokens"]}
    assert {(t["role"], tuple(t["licences"])) for t in rows.values()} == {
        ("reader", ("accounts", "invoices")), ("writer", ("invoices",)),
        ("admin", ("accounts", "invoices"))}
    assert main(["-c", cfg, "tokens", "create", "--principal", "x", "--role", "boss"]) == 2
    err = capsys.readouterr().err
    assert "unknown role 'boss'" in err and "reader, writer, admin" in err
