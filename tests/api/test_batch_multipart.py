"""$batch in the multipart/mixed format: change sets, Content-ID references, failures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fake_backend import FakeBackend
from odata_fixtures import account_id, make_backend, open_client
from starlette.testclient import TestClient

from dualwrite.api.multipart import boundary_of, parse_multipart


@pytest.fixture
def backend() -> FakeBackend:
    return make_backend()


@pytest.fixture
def client(backend: FakeBackend) -> Iterator[TestClient]:
    yield from open_client(backend)


BATCH = "/odata/crm/$batch"


def request_part(method: str, url: str, body: dict[str, Any] | None = None,
                 content_id: str | None = None, headers: dict[str, str] | None = None) -> str:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id is not None:
        lines.append(f"Content-ID: {content_id}")
    lines += ["", f"{method} {url} HTTP/1.1", "Host: testserver"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None:
        lines += ["Content-Type: application/json", "", json.dumps(body)]
    else:
        lines += ["", ""]
    return "\r\n".join(lines)


def changeset(boundary: str, *parts: str) -> str:
    inner = "".join(f"--{boundary}\r\n{p}\r\n" for p in parts) + f"--{boundary}--"
    return f"Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n{inner}"


def batch_body(*parts: str, boundary: str = "batch_1") -> tuple[bytes, dict[str, str]]:
    body = "preamble is ignored\r\n" + "".join(f"--{boundary}\r\n{p}\r\n" for p in parts)
    body += f"--{boundary}--\r\nepilogue\r\n"
    return body.encode(), {"Content-Type": f"multipart/mixed; boundary={boundary}"}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    content_id: str | None

    def json(self) -> Any:
        return json.loads(self.body)


def _reply(part_headers: dict[str, str], data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return Reply(status, headers, body, part_headers.get("content-id"))


def replies(response: Any) -> list[Reply | list[Reply]]:
    """The batch response's parts; a change set's parts as a nested list."""
    assert response.status_code == 200, response.text
    boundary = boundary_of(response.headers["content-type"])
    assert boundary is not None
    out: list[Reply | list[Reply]] = []
    for part in parse_multipart(response.content, boundary):
        ctype = part.headers["content-type"]
        if ctype.startswith("multipart/mixed"):
            inner = boundary_of(ctype)
            assert inner is not None
            out.append([_reply(p.headers, p.body) for p in parse_multipart(part.body, inner)])
        else:
            assert ctype == "application/http"
            out.append(_reply(part.headers, part.body))
    return out


def _post(client: TestClient, *parts: str, **kw: Any) -> list[Reply | list[Reply]]:
    body, headers = batch_body(*parts)
    headers.update(kw.pop("headers", {}))
    return replies(client.post(BATCH, content=body, headers=headers, **kw))


NEW_ID = "11111111-2222-4333-8444-555555555555"


def test_changeset_with_content_id_reference(client: TestClient, backend: FakeBackend) -> None:
    out = _post(
        client,
        request_part("GET", "accounts(accountnumber='C-1001')?$select=name"),
        changeset("cs_1",
                  request_part("POST", "accounts", {"accountid": NEW_ID, "accountnumber": "M-1",
                                                    "name": "Multi"}, content_id="1"),
                  request_part("PATCH", "$1", {"name": "Multi patched"}, content_id="2"),
                  request_part("PATCH", "/odata/crm/accounts(accountnumber='C-1002')",
                               {"revenue": 1}, content_id="3")),
        request_part("GET", f"accounts({NEW_ID})"),
    )
    assert len(out) == 3
    first, cs, last = out
    assert isinstance(first, Reply) and isinstance(cs, list) and isinstance(last, Reply)
    assert first.status == 200 and first.json()["name"] == "Contoso"
    assert [(r.content_id, r.status) for r in cs] == [("1", 201), ("2", 204), ("3", 204)]
    assert cs[0].headers["location"] == f"http://testserver/odata/crm/accounts({NEW_ID})"
    assert last.status == 200 and last.json()["name"] == "Multi patched"
    assert [[op.kind for op in c] for c in backend.apply_calls] == \
        [["create", "update", "update"]]


def test_failed_changeset_is_one_error_and_stops_the_batch(client: TestClient,
                                                          backend: FakeBackend) -> None:
    before = backend.rows("crm", "accounts")
    out = _post(
        client,
        changeset("cs_1",
                  request_part("POST", "accounts", {"accountnumber": "M-1", "name": "A"},
                               content_id="1"),
                  request_part("POST", "accounts", {"accountnumber": "C-1001", "name": "B"},
                               content_id="2")),
        request_part("GET", "accounts"),
    )
    assert len(out) == 1  # processing stopped at the failure
    error = out[0]
    assert isinstance(error, Reply) and error.status == 409 and error.content_id is None
    assert error.json()["error"]["code"] == "Conflict"
    assert backend.rows("crm", "accounts") == before


def test_continue_on_error(client: TestClient) -> None:
    out = _post(client,
                request_part("GET", "nosuch"),
                changeset("cs", request_part("DELETE", "accounts(accountnumber='C-1')",
                                             content_id="1")),
                request_part("GET", "accounts/$count"),
                headers={"Prefer": "odata.continue-on-error"})
    statuses = [r.status for r in out if isinstance(r, Reply)]
    assert statuses == [404, 404, 200]


def test_reference_across_changesets_with_generated_key(client: TestClient) -> None:
    out = _post(
        client,
        changeset("a", request_part("POST", "accounts", {"accountnumber": "M-1", "name": "A"},
                                    content_id="new")),
        changeset("b", request_part("DELETE", "$new", content_id="del")),
        request_part("GET", "accounts/$count"),
    )
    created, deleted, count = out
    assert isinstance(created, list) and created[0].status == 201
    assert isinstance(deleted, list) and deleted[0].status == 204
    assert isinstance(count, Reply) and count.body == b"5"


def test_lf_line_endings_and_unencoded_filter(client: TestClient) -> None:
    body = (b"--b\n"
            b"Content-Type: application/http\n\n"
            b"GET accounts?$filter=name eq 'Litware'&$select=name HTTP/1.1\n\n\n"
            b"--b--\n")
    out = replies(client.post(BATCH, content=body,
                              headers={"Content-Type": 'multipart/mixed; boundary="b"'}))
    assert isinstance(out[0], Reply)
    assert [v["name"] for v in out[0].json()["value"]] == ["Litware"]


def test_get_inside_changeset_fails_it(client: TestClient, backend: FakeBackend) -> None:
    out = _post(client, changeset("cs",
                                  request_part("PATCH", f"accounts({account_id(1)})",
                                               {"name": "x"}, content_id="1"),
                                  request_part("GET", "accounts", content_id="2")))
    assert isinstance(out[0], Reply) and out[0].status == 400
    assert backend.apply_calls == []


@pytest.mark.parametrize(("body", "content_type"), [
    (b"--b\r\nContent-Type: application/http\r\n\r\nGET accounts HTTP/1.1\r\n\r\n",
     "multipart/mixed; boundary=b"),  # no closing delimiter
    (b"no delimiter at all", "multipart/mixed; boundary=b"),
    (b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--", "multipart/mixed; boundary=b"),
    (b"--b\r\nContent-Type: application/http\r\n\r\nGARBAGE\r\n--b--",
     "multipart/mixed; boundary=b"),
    (b"--b\r\nContent-Type: application/http\r\n\r\nBREW accounts HTTP/1.1\r\n--b--",
     "multipart/mixed; boundary=b"),
    (b"--b\r\nContent-Type: multipart/mixed\r\n\r\n--c--\r\n--b--",
     "multipart/mixed; boundary=b"),
    (b"--b\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n--c--\r\n--b--",
     "multipart/mixed; boundary=b"),
    (b"--b\r\nbad header line\r\n\r\nGET x\r\n--b--", "multipart/mixed; boundary=b"),
    (b"--b\r\nContent-Type: application/http\r\nContent-ID: a b\r\n\r\nGET x\r\n--b--",
     "multipart/mixed; boundary=b"),
    (b"--b\r\nContent-Type: application/http\r\nContent-ID: 1\r\n\r\nGET x\r\n"
     b"--b\r\nContent-Type: application/http\r\nContent-ID: 1\r\n\r\nGET x\r\n--b--",
     "multipart/mixed; boundary=b"),
    (b"--b--", "multipart/mixed"),
])
def test_malformed_multipart(client: TestClient, body: bytes, content_type: str) -> None:
    r = client.post(BATCH, content=body, headers={"Content-Type": content_type})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "InvalidBatch"
