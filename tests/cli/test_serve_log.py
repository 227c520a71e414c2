"""The access log of a real `dualwrite serve` never holds a token, redacts `$filter` values
when asked, and can be turned off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from capture_fixtures import make_items
from dualwrite.engine.link import Link
from dualwrite.engine.security import create_token
from serve_process import serve

from conftest import BackendFactory

FILTER = "name eq 'Secret Name' and qty gt 41"


def _served_log(config: Path, token: str) -> str:
    """Start `dualwrite serve`, make three requests, stop it; return everything it logged."""
    with serve(config) as served:
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=served.url, headers=auth, timeout=30) as client:
            r = client.get("/odata/erp/items", params={"access_token": token, "$filter": FILTER})
            assert r.status_code == 200, r.text
            r = client.get(f"/odata/erp/items(1)?note={token}")
            assert r.status_code in (400, 404), r.text
            assert client.get("/healthz").status_code == 200
    assert served.code == 0, served.log
    return served.log


def _configure(config: Path, **serve: Any) -> None:
    doc = yaml.safe_load(config.read_text())
    doc["serve"] = serve
    config.write_text(yaml.safe_dump(doc))


@pytest.fixture
def items(make_backend: BackendFactory, tmp_path: Path) -> tuple[Path, str]:
    it = make_items(make_backend, tmp_path, "sqlite", "sqlite")
    with Link.open(it.config) as link:
        link.start_maps()
        token = create_token(link.state, "alice")
    return it.config, token


def test_the_access_log_never_shows_a_token(items: tuple[Path, str]) -> None:
    config, token = items
    log = _served_log(config, token)
    secret = token.split("_", 2)[2]
    assert secret not in log
    lines = [line for line in log.splitlines() if '"GET /odata/erp/items' in line]
    assert len(lines) == 2, log
    assert "access_token=[redacted]" in lines[0] and '" 200' in lines[0]
    assert f"note={token.split('_')[0]}_{token.split('_')[1]}_[redacted]" in lines[1]
    assert "Secret+Name" in lines[0]  # $filter values are kept unless asked otherwise


def test_filter_values_are_redacted_when_asked(items: tuple[Path, str]) -> None:
    config, token = items
    _configure(config, redact_filter=True)
    log = _served_log(config, token)
    [line] = [line for line in log.splitlines() if "filter=" in line]  # as sent: %24filter
    # the request's query string as logged (the client's port elsewhere in the line may
    # well hold the digits 41)
    query = line.split("filter=", 1)[1].split()[0]
    assert "Secret" not in query and "41" not in query and "Secret" not in line
    assert "%24filter=name%20eq%20'***'%20and%20qty%20gt%20***" in line
    assert token.split("_", 2)[2] not in log


def test_the_access_log_can_be_turned_off(items: tuple[Path, str]) -> None:
    config, token = items
    _configure(config, access_log=False)
    log = _served_log(config, token)
    assert "Application startup complete" in log  # the rest of the log is there
    assert '"GET ' not in log and "/odata/" not in log and token.split("_", 2)[2] not in log


def test_serve_runs_on_the_c_http_parser_and_event_loop(items: tuple[Path, str]) -> None:
    """httptools and uvloop are dependencies: with h11 and asyncio's loop each request costs
    serve about 0.25 ms more of the interpreter (docs/benchmarks.md, live sync). The same
    requests are served and logged either way, so only serve's own line tells."""
    config, token = items
    log = _served_log(config, token)
    assert "dualwrite serve: HTTP by httptools, event loop uvloop" in log, log
