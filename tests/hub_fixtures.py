"""Another dualwrite's `serve` as an OData environment (the hub): a SQLite ↔ SQLite items
link of its own, served, with a writer's token for it in ``${HUB_TOKEN}``. Shared by the
interop tests that link to it (initial sync through it, live sync with it as one side)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from capture_fixtures import Items, make_items
from dualwrite.engine.link import Link
from dualwrite.engine.security import create_token
from serve_process import Served, serve

from conftest import BackendFactory

#: the items map of the hub's own link, and of a spoke's link to it
ITEMS_MAP = """
name: items
left: items
right: items
key: {left: [id], right: [id]}
fields:
  - id = id
  - name = name
  - qty = qty
"""


@pytest.fixture
def hub(make_backend: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> Iterator[tuple[Items, Served]]:
    """A running `serve` of a SQLite ↔ SQLite items link; ${HUB_TOKEN} holds a writer's
    token for it."""
    items = make_items(make_backend, tmp_path / "hub", "sqlite", "sqlite")
    with Link.open(items.config) as link:
        link.start_maps()
        monkeypatch.setenv("HUB_TOKEN", create_token(link.state, "spoke", role="writer"))
    with serve(items.config) as served:
        yield items, served
