"""The console in a real browser (Chromium through Playwright) against a real `dualwrite serve`
on PostgreSQL and MariaDB: sign in, pause and resume a map and watch a queued change replay,
retry an inbox entry after fixing its row, resolve a conflict, acknowledge an alert; then the
databases are checked. A screenshot of each page is kept (tests/api/browser.py: OUTPUT)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from browser import browser_page, shot

from capture_fixtures import make_items
from dualwrite.engine.security import create_token
from serve_process import serve

from conftest import BackendFactory


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)  # polling a condition, with a deadline


def fresh(page: Any, check: Callable[[], bool]) -> Callable[[], bool]:
    """``check`` made on the page loaded again."""
    def reloaded() -> bool:
        page.reload()
        return check()
    return reloaded


def test_console_pause_resume_retry_resolve_in_a_browser(make_backend: BackendFactory,
                                                         tmp_path: Path) -> None:
    def extra(cfg: dict[str, Any]) -> None:
        cfg["alerts"] = [{"kind": "rejected", "count": 1, "within_minutes": 30,
                          "action": "log"}]

    it = make_items(make_backend, tmp_path, "postgresql", "mariadb", policy="manual",
                    extra=extra)
    it.left.insert("items", [{"id": 1, "name": "one", "qty": 1}])
    with it.link() as link:
        link.start_maps()
        token = create_token(link.state, "ops", role="admin")
    right_rows = lambda: it.rows("right")  # noqa: E731

    with serve(it.config) as served, browser_page() as page:
        base = f"{served.url}/console"
        # -- sign in ---------------------------------------------------------------------------
        page.goto(f"{base}/")
        assert "/console/signin" in page.url  # not signed in: the sign-in form
        shot(page, "signin")
        page.fill("#token", "dw_00000000_not-a-token")
        page.click("button[type=submit]")
        page.wait_for_selector("text=that token is not valid")
        page.fill("#token", token)
        page.click("button[type=submit]")
        page.wait_for_selector("text=Processes")
        wait_for("the overview lists the applier", fresh(
            page, lambda: "applier" in page.inner_text("#overview")))
        shot(page, "overview")

        # -- pause, a queued change, resume ------------------------------------------------------
        page.goto(f"{base}/maps")
        page.check("input[name=map][value=items]")
        page.click("button[value=pause]")
        page.wait_for_selector("text=paused: items")
        assert page.inner_text("[data-testid=state-items]") == "paused"
        it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (2, 'queued', 2)")
        page.goto(f"{base}/maps/items/queue?key=2")
        page.wait_for_selector("tr.queued")
        assert "queued" in page.inner_text("tr.queued")
        shot(page, "queue")
        assert 2 not in right_rows()  # paused: it waits
        page.goto(f"{base}/maps")
        page.check("input[name=map][value=items]")
        page.click("button[value=resume]")
        page.wait_for_selector("text=resuming: items")
        wait_for("the queued change replays", lambda: right_rows().get(2) == ("queued", 2))
        page.wait_for_selector("[data-testid=state-items]:text-is('running')", timeout=30_000)
        shot(page, "maps")

        # -- an inbox entry, retried after fixing its row ------------------------------------------
        it.right.app_sql("ALTER TABLE items ADD CONSTRAINT qty_small CHECK (qty <= 100)")
        it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (3, 'big', 101)")
        page.goto(f"{base}/errors")
        wait_for("the rejected change reaches the inbox", fresh(
            page, lambda: page.locator("tr[data-entry]").count() == 1))
        entry = page.get_attribute("tr[data-entry]", "data-entry")
        shot(page, "errors")
        page.goto(f"{base}/errors/{entry}")
        assert "101" in page.inner_text("table.versions")
        shot(page, "error-detail")
        it.left.app_sql("UPDATE items SET qty = 7 WHERE id = 3")  # fix the row at its source
        page.goto(f"{base}/errors")
        page.click(f"tr[data-entry='{entry}'] button:text-is('Retry')")
        page.wait_for_selector(f"text=retrying entry {entry}")
        wait_for("the retried row arrives", lambda: right_rows().get(3) == ("big", 7))
        page.goto(f"{base}/errors")
        wait_for("the inbox empties", fresh(
            page, lambda: page.locator("tr[data-entry]").count() == 0))

        # -- the alert the rejection raised, acknowledged ------------------------------------------
        page.goto(f"{base}/alerts")
        page.click("tr[data-alert] button:text-is('Acknowledge')")
        page.wait_for_selector("text=acknowledged by ops")
        assert "acknowledged" in page.inner_text("tr[data-alert]")
        shot(page, "alerts")

        # -- a conflict, resolved for the left side ----------------------------------------------
        # both sides change row 1 before either change is applied: the erp write holds the
        # row until the crm write is committed, so whichever the applier takes first meets
        # the other side's own change
        with it.left.app().connect() as conn, conn.begin():
            conn.execute(sa.text("UPDATE items SET name = 'from erp' WHERE id = 1"))
            it.right.app_sql("UPDATE items SET name = 'from crm' WHERE id = 1")
        page.goto(f"{base}/conflicts")
        wait_for("the conflict is parked", fresh(
            page, lambda: page.locator("section[data-entry]").count() == 1))
        versions = page.inner_text("section[data-entry] table.versions")
        assert "from erp" in versions and "from crm" in versions  # both versions shown
        shot(page, "conflicts")
        page.click("section[data-entry] button:text-is('Keep erp (left)')")
        page.wait_for_selector("text=erp's row wins")
        wait_for("the picked version reaches both sides", lambda: (
            it.rows("left")[1] == right_rows()[1] == ("from erp", 1)))

        for name in ("sync", "audit"):
            page.goto(f"{base}/{name}")
            shot(page, name)
        page.goto(f"{base}/")
        shot(page, "overview-after")

    # both databases end equal, every change applied once
    assert it.rows("left") == it.rows("right") == {
        1: ("from erp", 1), 2: ("queued", 2), 3: ("big", 7)}
    with it.link() as link:
        assert link.state.errors() == []
