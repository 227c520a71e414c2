"""Token roles on the OData service: a reader reads, a writer also writes, an admin also
controls; a refusal is a 403 in the OData error format, writes nothing, and is audited."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fake_backend import FakeBackend
from odata_fixtures import AUTH, CLERK_AUTH, READER_AUTH, account_id, make_backend, open_client
from starlette.testclient import TestClient

from dualwrite.engine.security import Principal, check_role, effective, required_role
from dualwrite.errors import AccessDenied


@pytest.fixture
def backend() -> FakeBackend:
    return make_backend()


@pytest.fixture
def client(backend: FakeBackend) -> Iterator[TestClient]:
    yield from open_client(backend, token=None)


ACC2 = f"/odata/crm/accounts({account_id(2)})"
READS = ["/odata/crm/", "/odata/crm/$metadata", "/odata/crm/accounts",
         "/odata/crm/accounts?$filter=name eq 'Contoso'&$count=true", "/odata/crm/accounts/$count",
         ACC2, "/odata/erp/invoices"]
WRITES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/odata/crm/accounts", {"accountnumber": "C-9", "name": "new"}),
    ("PATCH", ACC2, {"name": "patched"}),
    ("PUT", ACC2, {"accountnumber": "C-1002", "name": "replaced"}),
    ("DELETE", ACC2, None),
    ("POST", "/odata/erp/nosuchset", {}),  # refused before anything is looked up
]


def _forbidden(r: Any, principal: str, needed: str) -> None:
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "Forbidden"
    assert principal in error["message"] and f"needs role {needed}" in error["message"]
    assert error["details"] == [{"code": "Role", "message": needed, "target": principal}]
    assert f"--role {needed}" in error["innererror"]["hint"]


def test_the_rule_of_roles() -> None:
    assert [required_role(m) for m in ("GET", "head", "POST", "PATCH", "PUT", "DELETE")] == \
        ["reader", "reader", "writer", "writer", "writer", "writer"]
    for role, allowed in (("reader", {"reader"}), ("writer", {"reader", "writer"}),
                          ("admin", {"reader", "writer", "admin"})):
        p = Principal("p", role)
        assert {n for n in ("reader", "writer", "admin") if p.may(n)} == allowed
        for needed in {"reader", "writer", "admin"} - allowed:
            with pytest.raises(AccessDenied, match=f"needs role {needed}"):
                check_role(p, needed, what="do it")


def test_a_token_without_its_own_role_or_licences() -> None:
    everything = frozenset({"a", "b"})
    # tokens made before roles: their principal's highest known role, else reader
    assert effective(None, None, frozenset({"writer", "admin"}), everything) == \
        ("admin", everything)
    assert effective(None, None, frozenset({"user"}), everything) == ("reader", everything)
    assert effective(None, None, frozenset(), frozenset()) == ("reader", frozenset())
    # a token's own licences narrow its principal's, and never reach beyond them
    assert effective("writer", frozenset({"A", "c"}), frozenset(), everything) == \
        ("writer", frozenset({"A"}))


def test_a_reader_reads_everything(client: TestClient, backend: FakeBackend) -> None:
    for url in READS:
        r = client.get(url, headers=READER_AUTH)
        assert r.status_code == 200, (url, r.text)
    assert client.head("/odata/crm/accounts", headers=READER_AUTH).status_code == 200
    assert backend.refusals == []


@pytest.mark.parametrize(("method", "url", "body"), WRITES,
                         ids=[f"{m} {u}" for m, u, _ in WRITES])
def test_a_reader_cannot_write(client: TestClient, backend: FakeBackend, method: str, url: str,
                               body: dict[str, Any] | None) -> None:
    before = {env: {t: backend.rows(env, t) for t in backend.data[env]} for env in backend.data}
    r = client.request(method, url, json=body, headers=READER_AUTH)
    _forbidden(r, "reader", "writer")
    assert backend.apply_calls == []
    assert {env: {t: backend.rows(env, t) for t in backend.data[env]}
            for env in backend.data} == before
    [refusal] = backend.refusals
    assert refusal["principal"] == "reader" and refusal["needed"] == "role writer"
    assert refusal["request"] == f"{method} {url.split('?')[0]}"
    assert refusal["environment"] == url.split("/")[2]


def test_writers_and_admins_write(client: TestClient, backend: FakeBackend) -> None:
    for auth, number in ((CLERK_AUTH, "C-7"), (AUTH, "C-8")):
        r = client.post("/odata/crm/accounts", json={"accountnumber": number, "name": "x"},
                        headers=auth)
        assert r.status_code == 201, r.text
    assert backend.refusals == []


def test_a_readers_batch_reads_and_each_write_in_it_is_refused(client: TestClient,
                                                               backend: FakeBackend) -> None:
    r = client.post("/odata/crm/$batch", headers=READER_AUTH, json={"requests": [
        {"id": "r", "method": "get", "url": "accounts?$top=1"},
        {"id": "w", "method": "post", "url": "accounts",
         "body": {"accountnumber": "C-9", "name": "new"}},
        {"id": "g1", "atomicityGroup": "g", "method": "patch", "url": f"accounts({account_id(1)})",
         "body": {"name": "x"}},
        {"id": "g2", "atomicityGroup": "g", "method": "delete",
         "url": f"accounts({account_id(2)})"},
    ]})
    assert r.status_code == 200, r.text
    out = {x["id"]: x for x in r.json()["responses"]}
    assert out["r"]["status"] == 200 and len(out["r"]["body"]["value"]) == 1
    assert out["w"]["status"] == 403 and out["w"]["body"]["error"]["code"] == "Forbidden"
    assert out["g1"]["status"] == 403 and out["g2"]["status"] == 424
    assert backend.apply_calls == []
    assert [x["request"] for x in backend.refusals] == [
        "POST /odata/crm/accounts", f"PATCH /odata/crm/accounts({account_id(1)})"]


def test_a_readers_multipart_change_set_is_refused_whole(client: TestClient,
                                                         backend: FakeBackend) -> None:
    body = (
        "--b\r\nContent-Type: multipart/mixed; boundary=cs\r\n\r\n"
        "--cs\r\nContent-Type: application/http\r\nContent-ID: 1\r\n\r\n"
        "POST accounts HTTP/1.1\r\nContent-Type: application/json\r\n\r\n"
        '{"accountnumber": "C-9", "name": "new"}\r\n'
        "--cs--\r\n--b--\r\n")
    r = client.post("/odata/crm/$batch", content=body.encode(), headers={
        **READER_AUTH, "Content-Type": "multipart/mixed; boundary=b"})
    assert r.status_code == 200, r.text
    assert "403 Forbidden" in r.text and '"Forbidden"' in r.text
    assert backend.apply_calls == [] and len(backend.refusals) == 1


def test_an_unknown_token_is_401_not_403(client: TestClient, backend: FakeBackend) -> None:
    r = client.post("/odata/crm/accounts", json={}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert backend.refusals == []  # nobody to audit: authentication failed first
