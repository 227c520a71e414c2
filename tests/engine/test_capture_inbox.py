"""The error inbox of captured changes: a failing change parks its whole source transaction,
and `retry` applies the rows as they are now (issue: never lose, never corrupt)."""

from __future__ import annotations

from pathlib import Path

import pytest

from capture_fixtures import Items, drain, make_items
from dualwrite.testing.backends import pair_id, pairs

from conftest import BackendFactory

PAIRS = pairs(needs=("two_phase", "capture"))


@pytest.fixture(params=PAIRS, ids=pair_id)
def it(request: pytest.FixtureRequest, make_backend: BackendFactory, tmp_path: Path) -> Items:
    """A running ``items`` map; the right side has a unique index on ``name`` and a row
    (id 9) named 'taken' that the left does not know of."""
    it = make_items(make_backend, tmp_path, *request.param)
    it.right.app_sql("CREATE UNIQUE INDEX items_name_u ON items (name)")
    it.right.connector.forget_schema()
    it.left.insert("items", [{"id": 3, "name": "three", "qty": 3}])
    with it.link() as link:
        link.start_maps()
    it.right.connector.execute("INSERT INTO items (id, name, qty) VALUES (9, 'taken', 0)")
    return it


def test_a_failing_change_parks_its_whole_source_transaction(it: Items) -> None:
    """One application transaction creates rows 1 ('taken', which the target refuses) and 2,
    and updates row 3: none of it reaches the target (never a part of a transaction); one
    inbox entry names the failing row; a later change to row 2 waits behind it while other
    rows flow. Once the cause is fixed, `retry` applies the whole transaction and what
    waited."""
    with it.left.app().begin() as conn:
        conn.exec_driver_sql("INSERT INTO items (id, name, qty) VALUES (1, 'taken', 1)")
        conn.exec_driver_sql("INSERT INTO items (id, name, qty) VALUES (2, 'two', 2)")
        conn.exec_driver_sql("UPDATE items SET qty = 30 WHERE id = 3")
    with it.link() as link:
        applier = link.applier()
        drain(applier)
        right = it.rows("right")
        assert 1 not in right and 2 not in right and right[3] == ("three", 3)
        [entry] = link.state.errors("items")
        assert entry.operation == "create" and list(entry.key) == [1]
        assert "rejected" in entry.reason
        assert link.state.parked_count() == {"items": 3}
        it.left.app_sql("UPDATE items SET qty = 22 WHERE id = 2")  # waits: row 2 is held
        it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (4, 'four', 4)")  # flows
        drain(applier)
        assert 2 not in it.rows("right") and it.rows("right")[4] == ("four", 4)
        [status] = [m for m in link.status() if m["map"] == "items"]
        assert status["errors"] == 1 and status["queued"] == 4
        it.right.connector.execute("DELETE FROM items WHERE id = 9")  # the cause, fixed
        link.state.resolve_error(entry.id, "retry")
        drain(applier)
        assert it.rows("right") == it.rows("left") == {
            1: ("taken", 1), 2: ("two", 22), 3: ("three", 30), 4: ("four", 4)}
        assert link.state.errors() == [] and link.state.parked_count() == {}
        [result] = link.verify(["items"])
        assert result.ok, result.as_dict()


def test_retry_applies_the_row_as_it_is_now(it: Items) -> None:
    """A created row is refused by the target (its name is taken there). The user fixes the
    row on the source (renames it); `retry` applies the row as it is now, not the stale
    version that failed (which would fail again), and `discard` is not the only way out."""
    it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'taken', 1)")
    with it.link() as link:
        applier = link.applier()
        drain(applier)
        [entry] = link.state.errors("items")
        it.left.app_sql("UPDATE items SET name = 'free' WHERE id = 1")  # the fix
        drain(applier)
        assert 1 not in it.rows("right")  # the fix waits behind the entry
        link.state.resolve_error(entry.id, "retry")
        drain(applier)
        assert it.rows("right")[1] == it.rows("left")[1] == ("free", 1)
        assert link.state.errors() == [] and link.state.parked_count() == {}


def test_a_retry_that_fails_again_keeps_everything_parked(it: Items) -> None:
    """Nothing fixed: the retry fails again, the entry is open with one more attempt and the
    reason, and every change stays parked (nothing written on either side)."""
    it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'taken', 1)")
    with it.link() as link:
        applier = link.applier()
        drain(applier)
        [entry] = link.state.errors("items")
        link.state.resolve_error(entry.id, "retry")
        drain(applier)
        [again] = link.state.errors("items")
        assert again.id == entry.id and again.attempts == 2 and again.status == "open"
        assert "retry failed" in again.reason
        assert link.state.parked_count() == {"items": 1}
        assert 1 not in it.rows("right") and it.rows("right")[9] == ("taken", 0)


def test_discard_keeps_the_target_and_applies_later_changes(it: Items) -> None:
    """`discard` drops the failed transaction: the target keeps what it has; a change made
    after it on the source is applied on top (here it creates the row, with a free name)."""
    it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'taken', 1)")
    with it.link() as link:
        applier = link.applier()
        drain(applier)
        [entry] = link.state.errors("items")
        it.left.app_sql("UPDATE items SET name = 'other', qty = 5 WHERE id = 1")
        drain(applier)
        link.state.resolve_error(entry.id, "discarded")
        drain(applier)
        assert it.rows("right")[1] == it.rows("left")[1] == ("other", 5)
        assert it.rows("right")[9] == ("taken", 0)
        assert link.state.errors() == [] and link.state.parked_count() == {}


def test_business_rules_of_the_target_see_captured_changes(it: Items) -> None:
    """A rule on the target's table (``rules.before_write``) sees each captured change before
    it is written: one it rejects goes to the inbox with the rule's message, its transaction
    with it, while other rows flow; a rule that changes the values of a captured change is
    refused (the row must stay the twin of its source)."""
    from dualwrite import RowError
    from dualwrite.engine.live import RuleContext

    seen: list[tuple[str, bool]] = []

    def at_most_100(ctx: RuleContext) -> None:
        seen.append((ctx.operation, ctx.captured))
        if (ctx.values.get("qty") or 0) > 100:
            raise RowError("qty over 100", field="qty", value=ctx.values["qty"])
        if ctx.values.get("name") == "shout":
            ctx.values["name"] = "SHOUT"

    with it.link() as link:
        link.rules.register("crm", "items", at_most_100)
        applier = link.applier()
        it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'big', 500)")
        it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (2, 'small', 5)")
        it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (4, 'shout', 5)")
        drain(applier)
        right = it.rows("right")
        assert right[2] == ("small", 5) and 1 not in right and 4 not in right
        assert ("create", True) in seen
        reasons = {e.key[0]: e.reason for e in link.state.errors("items")}
        assert "at_most_100" in reasons[1] and "qty over 100" in reasons[1]
        assert "only reject captured changes" in reasons[4]
        entry = next(e for e in link.state.errors("items") if e.key[0] == 1)
        link.state.resolve_error(entry.id, "retry")  # nothing fixed: the rule still says no
        drain(applier)
        [again] = [e for e in link.state.errors("items") if e.key[0] == 1]
        assert again.attempts == 2 and "qty over 100" in again.reason
        assert 1 not in it.rows("right")
        it.left.app_sql("UPDATE items SET qty = 50 WHERE id = 1")  # fixed at the source
        link.state.resolve_error(entry.id, "retry")
        drain(applier)
        assert it.rows("right")[1] == ("big", 50)
