"""The console over HTTP (in-process): sign-in, sessions, CSRF, roles (any role looks, only
admin acts, refusals audited), a revoked token's session ends, and the inbox is paged."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from capture_fixtures import Items, make_items
from dualwrite.api.server import create_server_app
from dualwrite.engine.security import create_token
from dualwrite.engine.state import encode_values, error_inbox, now_iso

from conftest import BackendFactory


@pytest.fixture
def items(make_backend: BackendFactory, tmp_path: Path) -> Items:
    it = make_items(make_backend, tmp_path, "sqlite", "sqlite")
    with it.link() as link:
        link.start_maps()
    return it


def signed_in(client: TestClient, token: str) -> str:
    """Sign in; returns the session's CSRF token (from a page's forms)."""
    form = client.get("/console/signin").text
    pre = re.search(r'name="pre" value="([^"]+)"', form)
    assert pre is not None
    resp = client.post("/console/signin", data={"token": token, "pre": pre.group(1),
                                                "next": "/console/maps"},
                       follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/console/maps"
    page = client.get("/console/maps").text
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def test_any_role_looks_only_admin_acts(items: Items) -> None:
    with items.link() as link:
        reader = create_token(link.state, "watcher", role="reader")
        admin = create_token(link.state, "ops", role="admin")
        with TestClient(create_server_app(link), base_url="http://127.0.0.1") as client:
            # not signed in: sent to the sign-in form, nothing shown
            resp = client.get("/console/maps", follow_redirects=False)
            assert resp.status_code == 303 and "/console/signin" in resp.headers["location"]
            csrf = signed_in(client, reader)
            assert "items" in client.get("/console/maps").text
            resp = client.post("/console/maps/action", data={
                "csrf": csrf, "action": "pause", "map": "items"}, follow_redirects=False)
            assert resp.status_code == 403 and "needs role admin" in resp.text
            assert link.state.map_states()["items"]["state"] == "running"
            assert link.state.refusals(1)[0]["needed"] == "role admin"
        with TestClient(create_server_app(link), base_url="http://127.0.0.1") as client:
            csrf = signed_in(client, admin)
            # a form without the session's CSRF token is refused, and changes nothing
            resp = client.post("/console/maps/action", data={
                "csrf": "forged", "action": "pause", "map": "items"}, follow_redirects=False)
            assert resp.status_code == 403 and "CSRF" in resp.text
            assert link.state.map_states()["items"]["state"] == "running"
            resp = client.post("/console/maps/action", data={
                "csrf": csrf, "action": "pause", "map": "items"}, follow_redirects=False)
            assert resp.status_code == 303 and "paused" in resp.headers["location"]
            assert link.state.map_states()["items"]["state"] == "paused"
            # htmx sends the token as a header
            resp = client.post("/console/maps/action", data={"action": "resume", "map": "items"},
                               headers={"X-CSRF-Token": csrf}, follow_redirects=False)
            assert resp.status_code == 303
            assert link.state.map_states()["items"]["state"] == "resuming"
            # the session never holds the token itself
            assert admin not in str(client.cookies.items())
            # a revoked token's session ends
            link.state.revoke_token(admin.split("_")[1])
            deadline = time.monotonic() + 5
            while client.get("/console/", follow_redirects=False).status_code != 303:
                assert time.monotonic() < deadline, "the revoked token's session goes on"
                time.sleep(0.1)  # the token check is cached for up to a second


def test_the_inbox_is_paged(items: Items) -> None:
    with items.link() as link:
        admin = create_token(link.state, "ops", role="admin")
        now = now_iso()
        rows = [{"map": "items", "side": "crm", "row_key": encode_values([i]),
                 "operation": "create", "reason": f"rejected {i}", "payload": None,
                 "attempts": 1, "first_at": now, "last_at": now, "status": "open"}
                for i in range(10_000)]
        with link.state.engine.begin() as conn:
            conn.execute(sa.insert(error_inbox), rows)
        with TestClient(create_server_app(link), base_url="http://127.0.0.1") as client:
            signed_in(client, admin)
            first = client.get("/console/errors").text
            assert "10,000 in all" in first and "page 1 of 200" in first
            assert first.count("<tr data-entry=") == 50
            assert "rejected 0<" in first and "rejected 50<" not in first
            last = client.get("/console/errors?page=200").text
            assert last.count("<tr data-entry=") == 50 and "rejected 9999<" in last
            beyond = client.get("/console/errors?page=999").text
            assert "page 200 of 200" in beyond
            assert client.get("/console/errors?map=nothing").text.count("<tr data-entry=") == 0
            overview = client.get("/console/")
            assert overview.status_code == 200 and "10,000" in overview.text
