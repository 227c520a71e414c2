"""A small pair of `items` tables with one map, for capture tests (imported by tests)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from dualwrite.engine.capture import Applier
from dualwrite.engine.link import Link

from conftest import Backend, BackendFactory

ITEMS_MAP = """
name: items
left: items
right: items
key: {{left: [id], right: [id]}}
conflict: {policy}
fields:
  - id = id
  - name = name
  - qty = qty
"""


def items_metadata() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("items", md,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("name", sa.String(40), nullable=False),
             sa.Column("qty", sa.Integer),
             sa.Column("note", sa.String(40)))  # not mapped: changes to it are not captured
    return md


@dataclass
class Items:
    left: Backend
    right: Backend
    config: Path

    def link(self) -> Link:
        return Link.open(self.config)

    def rows(self, side: str) -> dict[int, tuple[Any, ...]]:
        b = self.left if side == "left" else self.right
        return {int(r["id"]): (r["name"], r["qty"])
                for r in b.rows("items", ["id"], ["id", "name", "qty"])}

    def log(self, side: str) -> list[tuple[Any, ...]]:
        b = self.left if side == "left" else self.right
        return b.sql("SELECT op, k FROM dualwrite_changes ORDER BY seq")


def fresh_tables(metadata: sa.MetaData, *backends: Backend) -> None:
    """No link on ``backends``, and ``metadata``'s tables created anew on each."""
    for b in backends:
        b.connector.clear_link()
        b.create(metadata)


def link_config(tmp_path: Path, left: Backend, right: Backend, maps: dict[str, str], *,
                extra: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Write ``maps`` (name -> map text) under ``tmp_path/maps`` and a ``dualwrite.yaml``
    linking ``left`` (erp) and ``right`` (crm), state in SQLite beside it; ``extra`` may
    change the config first. Returns the config's path."""
    (tmp_path / "maps").mkdir(parents=True, exist_ok=True)
    for name, text in maps.items():
        (tmp_path / "maps" / f"{name}.yaml").write_text(text)
    cfg: dict[str, Any] = {
        "environments": {"erp": {"url": left.url}, "crm": {"url": right.url}},
        "link": {"left": "erp", "right": "crm"},
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        "maps": ["maps/*.yaml"],
    }
    if extra:
        extra(cfg)
    path = tmp_path / "dualwrite.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def make_items(make_backend: BackendFactory, tmp_path: Path, left: str, right: str,
               capture: str = "triggers", *, policy: str = "left-wins",
               extra: Callable[[dict[str, Any]], None] | None = None) -> Items:
    """``capture``: the capture mode of the PostgreSQL sides (``triggers`` or ``logical``:
    a third member of a ``kinds`` parameter, see :data:`LOGICAL_KINDS`)."""
    lb = make_backend(left, "dualwrite_test_a")
    rb = make_backend(right, "dualwrite_test_b" if right == left else "dualwrite_test_a")
    fresh_tables(items_metadata(), lb, rb)

    def configure(cfg: dict[str, Any]) -> None:
        for env, kind in (("erp", left), ("crm", right)):
            if capture != "triggers" and kind == "postgresql":
                cfg["environments"][env]["capture"] = capture
        if extra is not None:
            extra(cfg)

    path = link_config(tmp_path, lb, rb, {"items": ITEMS_MAP.format(policy=policy)},
                       extra=configure)
    return Items(lb, rb, path)


#: the ``kinds`` of capture tests that also run with PostgreSQL's logical decoding
LOGICAL_KINDS = [("postgresql", "postgresql", "logical"), ("postgresql", "mariadb", "logical")]


def drain(applier: Applier, *, timeout: float = 30.0) -> int:
    """Step the applier until two passes in a row find nothing; returns changes handled
    (each pass after the logs caught up with what was committed: logical decoding).
    Fails the test if the logs do not empty within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    # a running applier reads the map states every 0.2 s: see what the test just changed
    applier.maps(refresh=True)
    handled, idle = 0, 0
    while idle < 2:
        # as a running applier's decoders do: every change committed so far in the logs
        for log in applier.logs.values():
            log.catch_up()
        n = applier.step()
        applier.replay_released()
        handled += n
        idle = idle + 1 if n == 0 else 0
        if time.monotonic() > deadline:
            raise AssertionError(f"the change logs did not drain within {timeout} s")
    return handled
