"""The applier over the memory connector's change log (the change-log seam without SQL): its
fault injection fails reading the log, recording the applied position inside the apply
transaction, and forgetting applied changes; each time nothing is lost and nothing applied
twice. (The SQL logs' own behaviour is tested against the real databases: test_capture*.)"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from capture_fixtures import ITEMS_MAP, drain
from dualwrite.connectors import connect
from dualwrite.connectors.memory import MemoryConnector
from dualwrite.engine.capture import Applier
from dualwrite.engine.link import Link
from dualwrite.errors import TransientConnectorError
from dualwrite.model.maps import Side
from dualwrite.model.schema import Column, Kind, TableSchema


def _items() -> TableSchema:
    return TableSchema("items", {"id": Column("id", Kind.INTEGER, nullable=False),
                                 "name": Column("name", Kind.STRING, nullable=False),
                                 "qty": Column("qty", Kind.INTEGER)}, ("id",), [], [])


@dataclass
class MemoryItems:
    left: MemoryConnector
    right: MemoryConnector
    link: Link
    applier: Applier

    def rows(self, c: MemoryConnector) -> dict[int, tuple[Any, ...]]:
        return {int(r[0]): (r[1], r[2]) for b in c.read("items", ["id", "name", "qty"],
                                                         key=["id"]) for r in b}

    def write(self, c: MemoryConnector, rows: list[tuple[int, str, int]]) -> None:
        """An application's transaction: captured."""
        with c.app_transaction() as s:
            for i, name, qty in rows:
                if c.fetch("items", ["id"], key=["id"], keys=[(i,)]):
                    s.update("items", ["id"], ["name", "qty"], [((i,), (name, qty))])
                else:
                    s.insert("items", ["id", "name", "qty"], [(i, name, qty)])

    def queued(self, c: MemoryConnector) -> int:
        return sum(n for n, _size, _at in c.change_log().stats().values())


def retried(applier: Applier, side: Side, timeout: float = 30.0) -> None:
    """Step until the side that failed is applying again (its retry waits out a backoff),
    then drain."""
    deadline = time.monotonic() + timeout
    while applier.last_error[side] is not None:
        applier.step()
        assert time.monotonic() < deadline, f"never retried: {applier.last_error[side]}"
        time.sleep(0.01)  # the backoff's time passing, not a synchronisation
    drain(applier)


@pytest.fixture
def items(tmp_path: Path) -> Iterator[MemoryItems]:
    urls = {s: f"memory://{s.value}-{uuid.uuid4().hex}?capture=on" for s in Side}
    made = {s: connect(s.value, urls[s]) for s in Side}
    for c in made.values():
        assert isinstance(c, MemoryConnector)
        c.create_table(_items())
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "items.yaml").write_text(ITEMS_MAP.format(policy="left-wins"))
    path = tmp_path / "dualwrite.yaml"
    path.write_text(yaml.safe_dump({
        "environments": {"erp": {"url": urls[Side.LEFT]}, "crm": {"url": urls[Side.RIGHT]}},
        "link": {"left": "erp", "right": "crm"}, "state": f"sqlite:///{tmp_path / 'state.db'}",
        "maps": ["maps/*.yaml"]}))
    link = Link.open(path)
    link.start_maps(["items"])
    # the link's own connectors: same URL, same memory database (and their fault injection)
    left, right = link.connectors[Side.LEFT], link.connectors[Side.RIGHT]
    assert isinstance(left, MemoryConnector) and isinstance(right, MemoryConnector)
    applier = link.applier()
    try:
        yield MemoryItems(left, right, link, applier)
    finally:
        applier.close()
        link.close()
        for url in urls.values():
            MemoryConnector.reset(url)


def test_captured_changes_flow_both_ways(items: MemoryItems) -> None:
    items.write(items.left, [(1, "a", 1), (2, "b", 2)])
    items.write(items.right, [(3, "c", 3)])
    assert drain(items.applier) == 3
    want = {1: ("a", 1), 2: ("b", 2), 3: ("c", 3)}
    assert items.rows(items.left) == want and items.rows(items.right) == want
    assert items.queued(items.left) == items.queued(items.right) == 0
    # the applier's own writes were not captured back (no echo)
    assert drain(items.applier) == 0


def test_a_failed_read_of_the_log_loses_nothing(items: MemoryItems) -> None:
    items.write(items.left, [(1, "a", 1)])
    items.left.fail_next("read_log", None, TransientConnectorError("log unreachable"))
    assert items.applier.step() == 0
    assert items.applier.last_error[Side.LEFT], "the failed read was not noted for a retry"
    assert items.rows(items.right) == {} and items.queued(items.left) == 1
    retried(items.applier, Side.LEFT)
    assert items.rows(items.right) == {1: ("a", 1)} and items.queued(items.left) == 0


def test_a_failure_recording_the_applied_position_rolls_the_rows_back(
        items: MemoryItems) -> None:
    """The position is written in the target transaction: its failure undoes the rows too,
    the change stays in the source log, and the retry applies it once."""
    items.write(items.left, [(1, "a", 1), (2, "b", 2)])
    items.right.fail_next("mark_applied", None, TransientConnectorError("session lost"))
    items.applier.step()
    assert items.rows(items.right) == {}, "rows committed without their applied position"
    assert items.queued(items.left) == 2
    assert items.applier.last_error[Side.LEFT], "the failed apply was not noted for a retry"
    retried(items.applier, Side.LEFT)
    assert items.rows(items.right) == {1: ("a", 1), 2: ("b", 2)}
    assert items.queued(items.left) == 0
    assert items.link.state.errors() == [], "a change was applied twice (a duplicate key)"


def test_a_crash_before_forgetting_applied_changes_applies_them_once(
        items: MemoryItems) -> None:
    """The target committed, then deleting the changes from the source log failed: they are
    read again, recognised by their applied position, skipped, and deleted."""
    items.write(items.left, [(1, "a", 1)])
    items.left.fail_next("forget", None, TransientConnectorError("source lost"))
    items.applier.step()
    assert items.rows(items.right) == {1: ("a", 1)}
    assert items.queued(items.left) == 1, "the change should still be queued at the source"
    items.write(items.left, [(1, "a", 2)])  # a later change of the same row
    retried(items.applier, Side.LEFT)
    assert items.rows(items.right) == {1: ("a", 2)} and items.queued(items.left) == 0
    assert items.link.state.errors() == [], "the redelivered insert was applied again"
    # the target's applied positions name only transactions gone from the source log
    marks = [x for _src, _m, x in items.right.change_log().all_marks()]
    assert marks and items.left.change_log().txids_present(marks) == set()
