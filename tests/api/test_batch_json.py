"""$batch in the JSON format: atomicity groups, dependsOn, $<id> references, failures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fake_backend import FakeBackend
from odata_fixtures import CLERK_AUTH, account_id, make_backend, open_client
from starlette.testclient import TestClient

from dualwrite.errors import TransientConnectorError


@pytest.fixture
def backend() -> FakeBackend:
    return make_backend()


@pytest.fixture
def client(backend: FakeBackend) -> Iterator[TestClient]:
    yield from open_client(backend)


BATCH = "/odata/crm/$batch"


def _batch(client: TestClient, requests: list[dict[str, Any]], url: str = BATCH,
           **kw: Any) -> dict[str, dict[str, Any]]:
    r = client.post(url, json={"requests": requests}, **kw)
    assert r.status_code == 200, r.text
    assert r.headers["odata-version"] == "4.01"
    return {resp["id"]: resp for resp in r.json()["responses"]}


def _account(n: int, **extra: Any) -> dict[str, Any]:
    return {"accountnumber": f"B-{n}", "name": f"Batch {n}", **extra}


def test_mixed_batch(client: TestClient, backend: FakeBackend) -> None:
    out = _batch(client, [
        {"id": "0", "method": "get", "url": "accounts(accountnumber='C-1001')"},
        {"id": "1", "atomicityGroup": "g1", "dependsOn": ["0"], "method": "post",
         "url": "accounts", "body": _account(1)},
        {"id": "2", "atomicityGroup": "g1", "method": "patch",
         "url": f"accounts({account_id(1)})", "headers": {"Prefer": "return=representation"},
         "body": {"name": "Contoso renamed"}},
        {"id": "3", "dependsOn": ["g1"], "method": "get",
         "url": "accounts/$count"},
    ])
    assert out["0"]["status"] == 200 and out["0"]["body"]["name"] == "Contoso"
    assert out["1"]["status"] == 201 and out["1"]["atomicityGroup"] == "g1"
    assert out["1"]["headers"]["location"].startswith("http://testserver/odata/crm/accounts(")
    assert out["2"]["status"] == 200 and out["2"]["body"]["name"] == "Contoso renamed"
    assert out["2"]["headers"]["preference-applied"] == "return=representation"
    assert out["3"] == {"id": "3", "status": 200,
                        "headers": {"content-type": "text/plain;charset=utf-8"}, "body": "6"}
    # the group is ONE apply call with both ops
    assert [[op.kind for op in call] for call in backend.apply_calls] == [["create", "update"]]


def test_atomic_failure_leaves_data_unchanged(client: TestClient, backend: FakeBackend) -> None:
    before = backend.rows("crm", "accounts")
    out = _batch(client, [
        {"id": "a", "atomicityGroup": "g", "method": "post", "url": "accounts",
         "body": _account(1)},
        {"id": "b", "atomicityGroup": "g", "method": "patch",
         "url": f"accounts({account_id(2)})", "body": {"name": "changed"}},
        {"id": "c", "atomicityGroup": "g", "method": "post", "url": "accounts",
         "body": _account(2, accountnumber="C-1001")},  # duplicate alternate key
        {"id": "d", "method": "get", "url": f"accounts({account_id(2)})"},
    ])
    assert out["c"]["status"] == 409  # the op at fault carries the error
    assert out["a"]["status"] == out["b"]["status"] == 424  # the others: failed dependency
    assert out["a"]["body"]["error"]["code"] == "FailedDependency"
    assert out["a"]["atomicityGroup"] == "g"
    assert out["d"]["status"] == 200 and out["d"]["body"]["name"] == "Fabrikam"
    assert backend.rows("crm", "accounts") == before
    assert len(backend.apply_calls) == 1 and len(backend.apply_calls[0]) == 3


def test_group_failing_while_planning_never_calls_apply(client: TestClient,
                                                       backend: FakeBackend) -> None:
    out = _batch(client, [
        {"id": "a", "atomicityGroup": "g", "method": "post", "url": "accounts",
         "body": _account(1)},
        {"id": "b", "atomicityGroup": "g", "method": "post", "url": "accounts",
         "body": {"nosuch": 1}},
        {"id": "c", "atomicityGroup": "g", "method": "delete", "url": "accounts(accountnumber="
         "'C-1001')"},
    ])
    assert out["b"]["status"] == 400 and out["b"]["body"]["error"]["target"] == "nosuch"
    assert out["a"]["status"] == out["c"]["status"] == 424
    assert backend.apply_calls == []


def test_failure_without_culprit_fails_every_request(client: TestClient,
                                                     backend: FakeBackend) -> None:
    backend.fail_next_apply = TransientConnectorError("deadlock")
    out = _batch(client, [
        {"id": "a", "atomicityGroup": "g", "method": "post", "url": "accounts",
         "body": _account(1)},
        {"id": "b", "atomicityGroup": "g", "method": "post", "url": "accounts",
         "body": _account(2)},
    ])
    assert out["a"]["status"] == out["b"]["status"] == 503
    assert out["a"]["headers"]["retry-after"] == "5"


def test_depends_on_failures(client: TestClient) -> None:
    out = _batch(client, [
        {"id": "1", "method": "get", "url": "accounts(accountnumber='nope')"},
        {"id": "2", "dependsOn": ["1"], "method": "delete", "url": "accounts(accountnumber="
         "'C-1001')"},
        {"id": "3", "atomicityGroup": "g", "method": "post", "url": "accounts",
         "body": {"name": None}},
        {"id": "4", "dependsOn": ["g"], "method": "get", "url": "accounts"},
        {"id": "5", "method": "get", "url": "accounts(accountnumber='C-1001')"},
        {"id": "6", "atomicityGroup": "h", "dependsOn": ["2"], "method": "post",
         "url": "accounts", "body": _account(9)},
    ])
    assert out["1"]["status"] == 404
    assert out["2"]["status"] == 424 and "'1'" in out["2"]["body"]["error"]["message"]
    assert out["3"]["status"] == 400
    assert out["4"]["status"] == 424
    assert out["5"]["status"] == 200  # independent requests still run (continue-on-error)
    assert out["6"]["status"] == 424


def test_continue_on_error_false_stops(client: TestClient) -> None:
    out = _batch(client, [
        {"id": "1", "method": "get", "url": "nosuch"},
        {"id": "2", "method": "get", "url": "accounts"},
    ], headers={"Prefer": "continue-on-error=false"})
    assert list(out) == ["1"]


def test_reference_to_entity_created_in_the_same_group(client: TestClient,
                                                       backend: FakeBackend) -> None:
    new_id = "11111111-2222-4333-8444-555555555555"
    out = _batch(client, [
        {"id": "1", "atomicityGroup": "g", "method": "post", "url": "accounts",
         "body": _account(1, accountid=new_id)},
        {"id": "2", "atomicityGroup": "g", "dependsOn": ["1"], "method": "patch", "url": "$1",
         "body": {"name": "patched in the same group"}},
        {"id": "3", "atomicityGroup": "g", "dependsOn": ["g"], "method": "post",
         "url": "accounts", "body": {"accountnumber": "B-2", "name": "$1/name"}},
    ])
    assert [out[i]["status"] for i in "123"] == [201, 204, 201]
    assert out["2"]["atomicityGroup"] == "g"
    ops = backend.apply_calls[0]
    assert [op.kind for op in ops] == ["create", "update", "create"]
    assert str(ops[1].key["accountid"]) == new_id  # type: ignore[index]
    assert ops[2].values["name"] == "Batch 1"  # the value as sent by request 1
    assert client.get(f"/odata/crm/accounts({new_id})").json()["name"] == \
        "patched in the same group"


def test_reference_to_server_generated_key(client: TestClient, backend: FakeBackend) -> None:
    # inside the group the key is not known before commit: the op refers to the create's row
    out = _batch(client, [
        {"id": "1", "atomicityGroup": "g", "method": "post", "url": "accounts",
         "body": _account(1)},
        {"id": "2", "atomicityGroup": "g", "dependsOn": ["1"], "method": "patch", "url": "$1",
         "body": {"name": "patched by reference"}},
        {"id": "3", "atomicityGroup": "g", "method": "patch",
         "url": "accounts(accountnumber='B-1')", "body": {"revenue": 7}},
        {"id": "4", "atomicityGroup": "g", "method": "delete", "url": "$2"},
        {"id": "5", "atomicityGroup": "g", "method": "patch", "url": "$1",
         "body": {"name": "gone"}},
    ])
    assert out["5"]["status"] == 404 and backend.apply_calls == []
    out = _batch(client, [
        {"id": "1", "atomicityGroup": "g", "method": "post", "url": "accounts",
         "body": _account(1)},
        {"id": "2", "atomicityGroup": "g", "dependsOn": ["1"], "method": "patch", "url": "$1",
         "body": {"name": "patched by reference"}},
        {"id": "3", "atomicityGroup": "g", "method": "patch",
         "url": "accounts(accountnumber='B-1')", "body": {"revenue": 7}},
    ])
    assert [out[i]["status"] for i in "123"] == [201, 204, 204], out
    [ops] = backend.apply_calls
    assert [(op.kind, op.key, op.ref) for op in ops] == [("create", None, None),
                                                         ("update", None, 0),
                                                         ("update", None, 0)]
    created = client.get("/odata/crm/accounts(accountnumber='B-1')").json()
    assert created["name"] == "patched by reference" and created["revenue"] == 7
    backend.apply_calls.clear()
    # across units the created entity is known
    out = _batch(client, [
        {"id": "1", "method": "post", "url": "accounts", "body": _account(2)},
        {"id": "2", "dependsOn": ["1"], "method": "patch", "url": "$1",
         "body": {"name": "second"}, "headers": {"prefer": "return=representation"}},
        {"id": "3", "dependsOn": ["1"], "method": "get",
         "url": "accounts?$filter=accountnumber eq $1/accountnumber&$select=name"},
        {"id": "4", "dependsOn": ["2"], "method": "post", "url": "/odata/crm/accounts",
         "body": {"accountnumber": "$2/name", "name": "copy of $2/name"}},
    ])
    assert out["2"]["status"] == 200 and out["2"]["body"]["name"] == "second"
    assert out["2"]["body"]["accountid"] == out["1"]["body"]["accountid"]
    assert out["3"]["body"]["value"] == [{"@odata.etag": out["2"]["body"]["@odata.etag"],
                                         "accountid": out["1"]["body"]["accountid"],
                                         "name": "second"}]
    # a whole-string reference is replaced; text merely containing one is data
    assert out["4"]["body"]["accountnumber"] == "second"
    assert out["4"]["body"]["name"] == "copy of $2/name"


def test_etag_reference(client: TestClient, backend: FakeBackend) -> None:
    out = _batch(client, [
        {"id": "1", "method": "get", "url": f"accounts({account_id(3)})"},
        {"id": "2", "dependsOn": ["1"], "method": "patch", "url": f"accounts({account_id(3)})",
         "headers": {"if-match": "$1"}, "body": {"name": "first"}},
        {"id": "3", "dependsOn": ["1"], "method": "patch", "url": f"accounts({account_id(3)})",
         "headers": {"if-match": "$1"}, "body": {"name": "second"}},
    ])
    assert out["2"]["status"] == 204
    assert out["3"]["status"] == 412  # the ETag of request 1 is stale after request 2
    assert backend.apply_calls[0][0].if_match == out["1"]["headers"]["etag"]


def test_reference_to_failed_request_is_424(client: TestClient) -> None:
    out = _batch(client, [
        {"id": "1", "method": "post", "url": "accounts", "body": {"name": "x"}},
        {"id": "2", "method": "patch", "url": "$1", "body": {"name": "y"}},
    ])
    assert out["1"]["status"] == 400 and out["2"]["status"] == 424


@pytest.mark.parametrize("url", [
    "accounts", "/odata/crm/accounts", "http://testserver/odata/crm/accounts",
    "accounts?$top=1",
])
def test_url_forms(client: TestClient, url: str) -> None:
    out = _batch(client, [{"id": "1", "method": "GET", "url": url}])
    assert out["1"]["status"] == 200 and out["1"]["body"]["value"]


@pytest.mark.parametrize(("url", "status"), [
    ("http://elsewhere/odata/crm/accounts", 400),
    ("/odata/erp/products", 400),
    ("/other/accounts", 400),
    ("$99", 400),
    ("$metadata", 200),
    ("$batch", 400),
    ("nosuch", 404),
])
def test_bad_inner_urls(client: TestClient, url: str, status: int) -> None:
    out = _batch(client, [{"id": "1", "method": "get", "url": url}])
    assert out["1"]["status"] == status


def test_inner_errors_and_statuses(client: TestClient) -> None:
    out = _batch(client, [
        {"id": "1", "method": "get", "url": "accounts?$search=x"},
        {"id": "2", "method": "post", "url": "accounts", "headers": {"content-type": "text/csv"},
         "body": "a,b"},
        {"id": "3", "atomicityGroup": "g", "method": "get", "url": "accounts"},
        {"id": "4", "if": "$1/$succeeded", "method": "get", "url": "accounts"},
        {"id": "5", "method": "delete", "url": "accounts"},
        {"id": "6", "method": "get", "url": "$metadata"},
    ])
    assert out["1"]["status"] == 501
    assert out["2"]["status"] == 415
    assert out["3"]["status"] == 400 and out["3"]["atomicityGroup"] == "g"
    assert out["4"]["status"] == 501
    assert out["5"]["status"] == 405
    assert out["6"]["status"] == 200 and out["6"]["headers"]["content-type"].startswith(
        "application/xml")
    assert isinstance(out["6"]["body"], str)  # base64url of the XML document


def test_licence_inside_batch(client: TestClient, backend: FakeBackend) -> None:
    out = _batch(client, [{"id": "1", "method": "post", "url": "invoices",
                           "body": {"invoiceid": "X", "amount": 1}}],
                 url="/odata/erp/$batch", headers=CLERK_AUTH)
    assert out["1"]["status"] == 403


@pytest.mark.parametrize("payload", [
    {},
    {"requests": {}},
    {"requests": [1]},
    {"requests": [{"method": "get", "url": "accounts"}]},
    {"requests": [{"id": "1", "method": "get", "url": "a"}, {"id": "1", "method": "get",
                                                           "url": "a"}]},
    {"requests": [{"id": "1", "method": "fetch", "url": "accounts"}]},
    {"requests": [{"id": "1", "method": "get"}]},
    {"requests": [{"id": "1", "method": "get", "url": "accounts", "dependsOn": ["2"]},
                  {"id": "2", "method": "get", "url": "accounts"}]},
    {"requests": [{"id": "1", "method": "get", "url": "accounts", "dependsOn": "0"}]},
    {"requests": [{"id": "1", "atomicityGroup": "g", "method": "post", "url": "accounts"},
                  {"id": "2", "method": "get", "url": "accounts"},
                  {"id": "3", "atomicityGroup": "g", "method": "post", "url": "accounts"}]},
    {"requests": [{"id": "1", "atomicityGroup": "1", "method": "post", "url": "accounts"}]},
    {"requests": [{"id": "1", "method": "get", "url": "accounts", "body": {"a": 1}}]},
    {"requests": [{"id": "1", "method": "get", "url": "accounts", "headers": {"a": 1}}]},
    {"requests": [{"id": "a b", "method": "get", "url": "accounts"}]},
    {"requests": [{"id": "1", "atomicityGroup": "g", "method": "post", "url": "accounts"},
                  {"id": "g", "method": "get", "url": "accounts"}]},
])
def test_malformed_json_batches(client: TestClient, payload: dict[str, Any]) -> None:
    r = client.post(BATCH, json=payload)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "InvalidBatch"


@pytest.mark.parametrize(("content", "headers", "status"), [
    (b"not json", {"Content-Type": "application/json"}, 400),
    (b"{}", {"Content-Type": "text/plain"}, 415),
    (b"{}", {}, 415),
    (b"--x--", {"Content-Type": "multipart/mixed"}, 400),
])
def test_batch_envelope_errors(client: TestClient, content: bytes, headers: dict[str, str],
                               status: int) -> None:
    assert client.post(BATCH, content=content, headers=headers).status_code == status


def test_too_many_requests(client: TestClient) -> None:
    many = [{"id": str(n), "method": "get", "url": "accounts"} for n in range(1001)]
    assert client.post(BATCH, json={"requests": many}).status_code == 400
