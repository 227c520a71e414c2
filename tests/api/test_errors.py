"""Error format and statuses; authentication; malformed input never gives a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fake_backend import FakeBackend
from odata_fixtures import AUTH, PAGE, make_backend, open_client
from starlette.testclient import TestClient

from dualwrite.api import create_app, odata
from dualwrite.api.errors import NotFound, error_response
from dualwrite.errors import (
    ConfigError,
    ConstraintViolation,
    DualwriteError,
    FilterSyntaxError,
    Issue,
    LicenceError,
    LinkError,
    RowError,
    RowNotFound,
    ServiceUnavailable,
    TerminalConnectorError,
    TransientConnectorError,
    ValidationFailed,
)


@pytest.fixture
def backend() -> FakeBackend:
    return make_backend()


@pytest.fixture
def client(backend: FakeBackend) -> Iterator[TestClient]:
    yield from open_client(backend)


@pytest.fixture
def anon(backend: FakeBackend) -> Iterator[TestClient]:
    """A client that sends no Authorization header."""
    yield from open_client(backend, token=None)



def _assert_odata_error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["odata-version"] == "4.01"
    error: dict[str, Any] = r.json()["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    return error


@pytest.mark.parametrize("url", ["/odata/crm/", "/odata/crm/$metadata", "/odata/crm/accounts",
                                 "/odata/nosuch/accounts", "/odata/"])
def test_no_token_is_401(anon: TestClient, url: str) -> None:
    r = anon.get(url)
    _assert_odata_error(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("header", "challenge"), [
    ("Bearer wrong", 'error="invalid_token"'),
    ("Basic YWRtaW46YWRtaW4=", 'error="invalid_request"'),
    ("Bearer", 'error="invalid_request"'),
    ("Bearer    ", "Bearer"),
])
def test_bad_token_is_401(anon: TestClient, header: str, challenge: str) -> None:
    r = anon.get("/odata/crm/accounts", headers={"Authorization": header})
    _assert_odata_error(r, 401)
    assert challenge in r.headers["www-authenticate"]


def test_batch_needs_a_token_too(anon: TestClient, backend: FakeBackend) -> None:
    r = anon.post("/odata/crm/$batch", json={"requests": [
        {"id": "1", "method": "delete", "url": "accounts(accountnumber='C-1001')"}]})
    _assert_odata_error(r, 401)
    assert backend.apply_calls == []


def test_token_scheme_is_case_insensitive(anon: TestClient) -> None:
    r = anon.get("/odata/crm/", headers={"Authorization": "bearer admin-token"})
    assert r.status_code == 200


@pytest.mark.parametrize(("headers", "status", "version"), [
    ({"OData-MaxVersion": "3.0"}, 400, "4.0"),
    ({"OData-MaxVersion": "four"}, 400, "4.01"),
    ({"OData-Version": "2.0"}, 400, "4.01"),
    ({"OData-MaxVersion": "4.01"}, 200, "4.01"),
    ({}, 200, "4.01"),
    ({"OData-Version": "4.0", "OData-MaxVersion": "4.0"}, 200, "4.0"),
])
def test_versions(client: TestClient, headers: dict[str, str], status: int,
                  version: str) -> None:
    # the service speaks 4.01, and 4.0 to a client that can read no more
    r = client.get("/odata/crm/accounts", headers=headers)
    assert r.status_code == status
    assert r.headers["odata-version"] == version


def test_unexpected_backend_failure_is_500_without_internals(backend: FakeBackend) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("secret internal detail")

    backend.count = boom  # type: ignore[method-assign]
    with TestClient(create_app(backend, page_size=PAGE), headers=AUTH) as c:
        r = c.get("/odata/crm/accounts/$count")
    error = _assert_odata_error(r, 500)
    assert "secret" not in r.text and "Traceback" not in r.text
    assert error["code"] == "InternalError"


def test_oversized_body_is_413(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(odata, "MAX_BODY_BYTES", 100)
    r = client.post("/odata/erp/products", json={"name": "x" * 200})
    _assert_odata_error(r, 413)


@pytest.mark.parametrize(("exc", "status", "code", "target"), [
    (RowError("too long", table="t", field="NAME", value="x"), 400, "RowError", "NAME"),
    # the status follows the violation's kind (set by the connector from the database's
    # code), not its words: a unique violation whose message says nothing of it is still 409
    (ConstraintViolation("UNIQUE constraint failed: t.a", kind="unique"), 409, "Conflict", None),
    (ConstraintViolation("rejected", kind="unique"), 409, "Conflict", None),
    (ConstraintViolation("unique? duplicate?", kind="not_null"), 400, "ConstraintViolation",
     None),
    (ConstraintViolation("NOT NULL constraint failed: t.a", kind="not_null"), 400,
     "ConstraintViolation", None),
    (ConstraintViolation("FOREIGN KEY constraint failed", kind="foreign_key"), 400,
     "ConstraintViolation", None),
    (ValidationFailed([Issue("DW201", "bad map", "fix it", map="customers")]), 400,
     "ValidationFailed", None),
    (ConfigError("bad config"), 400, "ConfigError", None),
    (FilterSyntaxError("nope", text="a eq", position=4), 400, "InvalidFilter", "$filter"),
    (TransientConnectorError("deadlock"), 503, "ServiceUnavailable", None),
    (ServiceUnavailable("db down"), 503, "ServiceUnavailable", None),
    (TerminalConnectorError("bad credentials"), 500, "ConnectorError", None),
    (LinkError("not linked"), 409, "LinkError", None),
    (LicenceError("needs finance", principal="clerk", licence="finance"), 403,
     "LicenceRequired", None),
    (NotFound("gone"), 404, "NotFound", None),
    (RowNotFound("erp", "t", {"id": 1}), 404, "NotFound", None),
])
def test_error_mapping(exc: Exception, status: int, code: str, target: str | None) -> None:
    got_status, body, headers = error_response(exc)
    assert got_status == status and body["error"]["code"] == code
    assert body["error"].get("target") == target
    if status == 503:
        assert headers["Retry-After"] == "5"
    if isinstance(exc, ValidationFailed):
        assert body["error"]["details"] == [
            {"code": "DW201", "message": "bad map", "target": "customers"}]
    if isinstance(exc, ConfigError) and not isinstance(exc, ValidationFailed):
        assert not body["error"]["message"].startswith("DW")  # the code has its own slot
    if isinstance(exc, DualwriteError) and exc.hint:
        assert body["error"]["innererror"]["hint"] == exc.hint


#: (method, url, headers, body) of malformed or hostile requests: none may produce a 5xx
#: other than 501 (a refusal to implement, not a failure)
BAD_REQUESTS: list[tuple[str, str, dict[str, str], bytes | None]] = [
    ("GET", "/odata/crm/accounts?$filter=" + "(" * 5000 + "name eq 'x'" + ")" * 5000, {}, None),
    ("GET", "/odata/crm/accounts?$filter=" + "not " * 3000 + "donotemail", {}, None),
    ("GET", "/odata/crm/accounts?$filter=name eq '\\' or '1'='1'", {}, None),
    ("GET", "/odata/crm/accounts?$filter=name eq 'x'; DROP TABLE accounts", {}, None),
    ("GET", "/odata/crm/accounts?$filter=1 div 0 eq 1", {}, None),
    ("GET", "/odata/crm/accounts?$filter=creditlimit div 0 gt 1", {}, None),
    ("GET", "/odata/crm/accounts?$filter=name gt 2024-13-45", {}, None),
    ("GET", "/odata/crm/accounts?$filter=substring(name, 'a') eq 'x'", {}, None),
    ("GET", "/odata/crm/accounts?$filter=accountid eq 'zzz'", {}, None),
    ("GET", "/odata/crm/accounts?$filter=%ff%fe", {}, None),
    ("GET", "/odata/crm/accounts?$filter=name%20eq%20'%00'", {}, None),
    ("GET", "/odata/crm/accounts?$filter=creditlimit eq 1e999999999", {}, None),
    ("GET", "/odata/crm/accounts?$filter=numberofemployees eq " + "9" * 40, {}, None),
    ("GET", "/odata/crm/accounts?$orderby=name%20desc%20asc", {}, None),
    ("GET", "/odata/crm/accounts?$select=" + ",".join(["name"] * 500), {}, None),
    ("GET", "/odata/crm/accounts?$top=" + "9" * 40, {}, None),
    ("GET", "/odata/crm/accounts?$skiptoken=-1", {}, None),
    ("GET", "/odata/crm/accounts?$expand=*", {}, None),
    ("GET", "/odata/crm/accounts?$levels=max", {}, None),
    ("GET", "/odata/crm/accounts?=&&=x&$=1", {}, None),
    ("GET", "/odata/crm/accounts?$format=application/json;odata.metadata=weird", {}, None),
    ("GET", "/odata/crm/accounts(accountid=%27)", {}, None),
    ("GET", "/odata/crm/accounts('''')", {}, None),
    ("GET", "/odata/crm/accounts(,)", {}, None),
    ("GET", "/odata/crm/accounts(accountnumber=)", {}, None),
    ("GET", "/odata/crm/accounts(=1)", {}, None),
    ("GET", "/odata/crm/accounts((1))", {}, None),
    ("GET", "/odata/crm/accounts(binary'AA==')", {}, None),
    ("GET", "/odata/crm/accounts(" + "9" * 400 + ")", {}, None),
    ("GET", "/odata/erp/products(" + "9" * 400 + ")", {}, None),
    ("GET", "/odata/erp/products(1e999)", {}, None),
    ("GET", "/odata/crm//accounts", {}, None),
    ("GET", "/odata/crm/accounts/$count/$count", {}, None),
    ("GET", "/odata/crm/$metadata/x", {}, None),
    ("GET", "/odata/crm/accounts", {"Accept": "application/json;q=abc"}, None),
    ("GET", "/odata/crm/accounts", {"Prefer": "odata.maxpagesize=-5, return=sideways"}, None),
    ("GET", "/odata/crm/accounts", {"Accept": "application/json;odata.metadata=full;"
                                              "IEEE754Compatible=maybe"}, None),
    ("POST", "/odata/crm/accounts", {"Content-Type": "application/json"}, b"[" * 100000),
    ("POST", "/odata/crm/accounts", {"Content-Type": "application/json"}, b'{"name": 1e999}'),
    ("POST", "/odata/crm/accounts", {"Content-Type": "application/json"},
     b'{"accountnumber": "x", "name": "y", "creditlimit": "1e999999999"}'),
    ("POST", "/odata/crm/accounts", {"Content-Type": "application/json"},
     b'{"accountnumber": "x", "name": "y", "customertypecode": 1e400}'),
    ("POST", "/odata/crm/accounts", {"Content-Type": "application/json"},
     b'{"accountnumber": "x", "name": "y", "revenue": "INF"}'),
    ("POST", "/odata/crm/accounts", {"Content-Type": "application/json;charset=latin-1"},
     b'{"name": "\xe9"}'),
    ("PATCH", "/odata/crm/accounts(accountnumber='C-1001')",
     {"Content-Type": "application/json", "If-Match": "garbage"}, b"{}"),
    ("PATCH", "/odata/crm/accounts(accountnumber='C-1001')",
     {"Content-Type": "application/json"}, b'{"accountid": "00000000-0000-0000-0000-00000000"}'),
    ("PUT", "/odata/crm/accounts", {"Content-Type": "application/json"}, b"{}"),
    ("POST", "/odata/crm/$batch", {"Content-Type": "application/json"},
     b'{"requests": [{"id": "1", "method": "get", "url": "accounts(\'"}]}'),
    ("POST", "/odata/crm/$batch", {"Content-Type": "application/json"},
     b'{"requests": [{"id": "1", "method": "post", "url": "accounts", "body": [1, 2]}]}'),
    ("POST", "/odata/crm/$batch", {"Content-Type": "application/json"},
     b'{"requests": [{"id": "1", "method": "post", "url": "$1", "body": {}}]}'),
    ("POST", "/odata/crm/$batch", {"Content-Type": "application/json"},
     b'{"requests": [{"id": "1", "method": "patch", "url": "accounts(1)", "body": {}}]}'),
    ("POST", "/odata/crm/$batch", {"Content-Type": "application/json"},
     b'{"requests": [{"id": "1", "method": "get", "url": "http://[::1"}]}'),
    ("POST", "/odata/crm/$batch", {"Content-Type": "multipart/mixed; boundary=x"},
     b"--x\r\nContent-Type: application/http\r\n\r\nPOST accounts HTTP/1.1\r\n"
     b"Content-Type: application/json\r\n\r\n{broken\r\n--x--"),
    ("POST", "/odata/crm/$batch", {"Content-Type": "multipart/mixed; boundary=x"},
     b"--x\r\nContent-Type: application/http\r\n\r\n\xff\xfe\r\n--x--"),
    ("POST", "/odata/crm/$batch", {"Content-Type": "multipart/mixed; boundary=x"},
     b"--x\r\nContent-Type: multipart/mixed; boundary=y\r\n\r\n--y\r\n"
     b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z--\r\n--y--\r\n--x--"),
    ("GET", "/odata/crm/accounts?$filter=name eq $1/name", {}, None),
    ("GET", "/odata/crm/%24batch", {}, None),
    ("DELETE", "/odata/crm/accounts(accountnumber='C-1001')/$value", {}, None),
]


@pytest.fixture(scope="module")
def shared_client() -> Iterator[TestClient]:
    with TestClient(create_app(make_backend(), page_size=PAGE), headers=AUTH) as c:
        yield c


@pytest.mark.parametrize(("method", "url", "headers", "body"), BAD_REQUESTS,
                         ids=[f"{i}" for i in range(len(BAD_REQUESTS))])
def test_malformed_requests_never_5xx(shared_client: TestClient, method: str, url: str,
                                      headers: dict[str, str], body: bytes | None) -> None:
    r = shared_client.request(method, url, headers=headers, content=body)
    assert r.status_code < 500 or r.status_code == 501, (r.status_code, r.text)
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["code"] and error["message"]
        assert "Traceback" not in r.text
    if r.status_code == 200 and r.headers["content-type"].startswith("multipart/mixed"):
        assert b"HTTP/1.1 5" not in r.content.replace(b"HTTP/1.1 501", b"")
    elif r.status_code == 200 and "responses" in r.text:
        assert all(x["status"] < 500 or x["status"] == 501 for x in r.json()["responses"])


def test_at_least_forty_bad_requests() -> None:
    assert len(BAD_REQUESTS) >= 40
