"""The conflicts table keeps row values only while a conflict is open: a conflict settled by
policy keeps none, a manual one loses them when its inbox entry closes, and a store written by
an earlier version is cleaned once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from capture_fixtures import drain, make_items
from dualwrite.engine.capture import resolve_conflict
from dualwrite.engine.state import StateStore, encode_values
from dualwrite.errors import StateStoreOutdated
from dualwrite.model.maps import Side

from conftest import BackendFactory

INCOMING = {"seq": 7, "op": "U", "old": {"name": "secret before"}, "new": {"name": "secret"}}
TARGET = {"name": "their secret"}


def values_of(state: StateStore) -> list[tuple[list[object], str, bool]]:
    """(key, winner, whether row values are kept) of each conflict, oldest first."""
    return [(c["key"], c["winner"], "incoming" in c or "target" in c)
            for c in reversed(state.conflicts())]


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    s = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    yield s
    s.close()


def _manual(state: StateStore, key: int, side: str = "erp") -> int:
    # each conflict its own incoming change (a change is recorded as a conflict once)
    incoming = {**INCOMING, "seq": key * 10 + len(side) + (side == "crm")}
    state.add_conflict("items", [key], "manual", "manual", "left", incoming, TARGET)
    return state.park_error("items", side, "left", [key], "U", "conflict", "both changed",
                            {"seq": key, "op": "U"}, {})


def test_a_conflict_settled_by_policy_keeps_no_row_values(state: StateStore) -> None:
    state.add_conflict("items", [1], "left-wins", "left", "left", INCOMING, TARGET)
    [c] = state.conflicts()
    assert c["winner"] == "left" and c["key"] == [1]
    assert "incoming" not in c and "target" not in c
    assert "secret" not in str(state.conflicts())


@pytest.mark.parametrize("close", ["resolved", "discarded", "retried"])
def test_a_manual_conflict_keeps_its_values_until_its_entry_closes(state: StateStore,
                                                                   close: str) -> None:
    entry = _manual(state, 1)
    _manual(state, 2)
    [open_one, _] = state.conflicts()[::-1]
    assert open_one["incoming"]["new"] == INCOMING["new"] and open_one["target"] == TARGET
    if close == "retried":  # the applier replays it, then finishes the release
        state.resolve_error(entry, "retry")
        assert values_of(state) == [([1], "manual", True), ([2], "manual", True)]
        state.finish_release(entry)
    else:
        state.resolve_error(entry, close)
    assert values_of(state) == [([1], "manual", False), ([2], "manual", True)]
    state.clear_errors("items", "erp", [2])  # the row now syncs cleanly: closed too
    assert values_of(state) == [([1], "manual", False), ([2], "manual", False)]
    assert state.errors("items") == []


def test_values_stay_while_another_entry_of_the_key_is_open(state: StateStore) -> None:
    first = _manual(state, 1, side="erp")
    _manual(state, 1, side="crm")
    state.resolve_error(first, "resolved")
    assert [v for _k, _w, v in values_of(state)] == [True, True]


def test_values_an_earlier_version_kept_are_dropped_once(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    state = StateStore(f"sqlite:///{db}")
    _manual(state, 1)  # stays open
    closed = _manual(state, 2)
    state.close()
    raw = sa.create_engine(f"sqlite:///{db}")
    with raw.begin() as conn:  # as the earlier version left them: every conflict with values
        conn.exec_driver_sql("DELETE FROM state_meta")
        conn.exec_driver_sql("UPDATE error_inbox SET status = 'resolved' WHERE id = ?",
                             (closed,))
        detail = conn.exec_driver_sql("SELECT detail FROM conflicts WHERE row_key = ?",
                                      (encode_values([1]),)).scalar()
        conn.exec_driver_sql(
            "INSERT INTO conflicts (at, map, row_key, policy, winner, source, detail) "
            "VALUES ('2026-01-01', 'items', ?, 'left-wins', 'left', 'left', ?)",
            (encode_values([3]), detail))
        conn.exec_driver_sql("UPDATE conflicts SET detail = ?", (detail,))
    raw.dispose()
    with pytest.raises(StateStoreOutdated):  # a store from before schema versions
        StateStore(f"sqlite:///{db}")
    state = StateStore(f"sqlite:///{db}", upgrade=True)  # `dualwrite state upgrade`
    try:
        assert sorted(values_of(state)) == [([1], "manual", True), ([2], "manual", False),
                                            ([3], "left", False)]
    finally:
        state.close()


def test_a_resolved_captured_conflict_leaves_no_row_values(make_backend: BackendFactory,
                                                           tmp_path: Path) -> None:
    it = make_items(make_backend, tmp_path, "sqlite", "sqlite", policy="manual")
    it.left.insert("items", [{"id": 1, "name": "base", "qty": 1}])
    with it.link() as link:
        link.start_maps()
        applier = link.applier()
        it.left.app_sql("UPDATE items SET name = 'left secret', qty = 10 WHERE id = 1")
        it.right.app_sql("UPDATE items SET name = 'right secret', qty = 20 WHERE id = 1")
        drain(applier)
        [entry] = link.state.errors("items")
        [c] = link.state.conflicts()
        assert "left secret" in str(c["incoming"]) or "right secret" in str(c["incoming"])
        resolve_conflict(link, entry.id, Side.RIGHT)
        drain(applier)
        assert it.rows("left")[1] == it.rows("right")[1] == ("right secret", 20)
        assert "secret" not in str(link.state.conflicts())
        assert link.state.conflict_counts() == {"items": 1}  # the record stays, its values go
