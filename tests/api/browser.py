"""A real browser for console tests: Playwright driving Debian's Chromium (imported by tests).

`scripts/browser.sh` (run by `make test`) installs both. Playwright's own browser downloads are
never used: Chromium is launched from /usr/bin/chromium.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
#: screenshots of every page the browser tests visit are kept here (CI keeps the folder)
OUTPUT = Path(os.environ.get("DUALWRITE_TEST_OUTPUT",
                             Path(__file__).resolve().parents[2] / "test-output")) / "console"


@contextmanager
def browser_page() -> Iterator[Any]:
    """A fresh page in headless Chromium; fails with how to install what is missing."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/browser.sh` (make test does)",
                    pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is missing: run `bash scripts/browser.sh` "
                    "(make test does)", pytrace=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(30_000)
            # confirmations (stop, discard, pick) are accepted, as a person would
            page.on("dialog", lambda dialog: dialog.accept())
            yield page
        finally:
            browser.close()


def shot(page: Any, name: str) -> Path:
    """A full-page screenshot, kept under OUTPUT."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
