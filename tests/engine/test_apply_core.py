"""The applier's pure core (dualwrite.engine.apply.core) with plain data: no database, no
state store, no link."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

from dualwrite.connectors.changelog import WATERMARK, Change
from dualwrite.engine.apply.core import (
    Action,
    Mode,
    Outcome,
    decide,
    force,
    held_by_dependencies,
    hold_back,
    in_commit_order,
    not_applied,
    positions,
    route,
    runs,
    winner,
)
from dualwrite.errors import RowError
from dualwrite.model.maps import ConflictPolicy, Side

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def change(seq: int, txid: str = "1", map: str = "items", op: str = "U",
           key: tuple[Any, ...] = (1,), at: dt.datetime = T0) -> Change:
    return Change(seq, map, txid, op, f"[{', '.join(map_repr(k) for k in key)}]", at=at,
                  old={"id": key[0], "v": "old"} if op != "I" else None,
                  new={"id": key[0], "v": "new"} if op != "D" else None)


def map_repr(k: Any) -> str:
    return f'"{k}"' if isinstance(k, str) else str(k)


def action(c: Change, kind: str = "update", key: tuple[Any, ...] | None = None,
           ctx: Any = "items", source: Side = Side.LEFT, new: tuple[Any, ...] | None = ("n",)
           ) -> Action:
    k = key if key is not None else c.key
    return Action(c, source, kind, ("o",), new if kind != "delete" else None, k, k, k,
                  ctx=ctx)


# -- order -------------------------------------------------------------------------------------
def test_transactions_are_ordered_by_their_last_change() -> None:
    # t2 began first but committed after t1 (its last change is later)
    cs = [change(1, "t2"), change(2, "t1"), change(3, "t1"), change(4, "t2")]
    assert [c.seq for c in in_commit_order(list(reversed(cs)), has_txid=True)] == [2, 3, 1, 4]
    # without transaction ids, seq order is commit order
    assert [c.seq for c in in_commit_order(list(reversed(cs)), has_txid=False)] == [1, 2, 3, 4]


def test_runs_cut_at_a_new_map_kind_repeated_key_or_limit() -> None:
    a = [action(change(1, key=(1,))), action(change(2, key=(2,))),
         action(change(3, key=(1,))),  # key 1 again: a new run
         action(change(4, key=(3,)), kind="delete"),  # another kind
         action(change(5, key=(4,)), kind="delete", ctx="other")]  # another map
    assert [[x.change.seq for x in r] for r in runs(a, limit=10)] == [[1, 2], [3], [4], [5]]
    assert [len(r) for r in runs(a[:2], limit=1)] == [1, 1]


def test_positions_are_the_highest_seq_of_each_map_and_transaction() -> None:
    cs = [change(1, "t1"), change(5, "t1"), change(3, "t2"), change(4, "t1", map="other")]
    assert sorted(positions(cs)) == [("items", "t1", 5), ("items", "t2", 3),
                                     ("other", "t1", 4)]


def test_changes_applied_before_are_left_out() -> None:
    cs = [change(1, "t1"), change(2, "t2"), change(3, WATERMARK), change(9, WATERMARK)]
    assert [c.seq for c in not_applied(cs, {("items", "t1")}, {"items": 3})] == [2, 9]
    assert not_applied(cs, set(), {}) is cs


# -- parking -----------------------------------------------------------------------------------
def test_a_failed_change_parks_its_transaction_and_holds_its_key() -> None:
    failed = change(1, "t1", key=(1,))
    same_tx = change(2, "t1", key=(2,))
    same_key = change(3, "t2", key=(1,))
    free = change(4, "t3", key=(3,))
    err = RowError("no such group", kind="lookup")
    mode = Mode(10, False, {1: err}, set(), {"t1": 1})
    outcome = Outcome()
    live = route([action(c) for c in (failed, same_tx, same_key, free)], mode, outcome)
    assert [a.change.seq for a in live] == [4]
    assert [(a.change.seq, status, kind, info) for a, status, kind, info in outcome.parked] == [
        (1, "error", "lookup", {"reason": str(err)}), (2, "waiting", "", {"behind": 1}),
        (3, "waiting", "", None)]


def test_nothing_parked_in_the_common_case() -> None:
    acts = [action(change(i, key=(i,))) for i in range(3)]
    outcome = Outcome()
    assert route(acts, Mode(10, False, {}, set()), outcome) == acts and not outcome.parked


def test_keys_held_by_an_earlier_run_wait_behind_it() -> None:
    outcome = Outcome(held={("items", (1,))})
    blocked: set[tuple[str, tuple[Any, ...]]] = set()
    run = [action(change(1, key=(1,))), action(change(2, key=(2,)))]
    assert [a.change.seq for a in hold_back(run, blocked, outcome)] == [2]
    assert [(a.change.seq, s) for a, s, _k, _i in outcome.parked] == [(1, "waiting")]
    assert ("items", (1,)) in blocked


# -- conflicts ---------------------------------------------------------------------------------
def test_the_winner_by_policy() -> None:
    mine = action(change(1, at=T0 + dt.timedelta(seconds=5)), source=Side.RIGHT)
    older = [change(7, at=T0)]
    newer = [change(7, at=T0 + dt.timedelta(seconds=9))]
    assert winner(ConflictPolicy.LEFT_WINS, mine, older) is Side.LEFT
    assert winner(ConflictPolicy.RIGHT_WINS, mine, older) is Side.RIGHT
    assert winner(ConflictPolicy.NEWEST_WINS, mine, older) is Side.RIGHT  # the change is newer
    assert winner(ConflictPolicy.NEWEST_WINS, mine, newer) is Side.LEFT  # the target's is
    tie = [change(7, at=mine.change.at)]
    assert winner(ConflictPolicy.NEWEST_WINS, mine, tie) is Side.LEFT
    assert winner(ConflictPolicy.MANUAL, mine, older) is None


def _differ() -> Any:
    """A map's row builders, as plain functions: the target row is the source row."""
    build = {Side.LEFT: lambda row, key, resolved: tuple(row),
             Side.RIGHT: lambda row, key, resolved: tuple(row)}
    return SimpleNamespace(
        build_live=build, build_create=build,
        live_values=lambda t, row, resolved, key=None: tuple(row),
        create_values=lambda t, row, resolved, key=None: tuple(row),
        live_columns={Side.LEFT: ["v"], Side.RIGHT: ["v"]})


def test_force_writes_the_new_version_whatever_the_target_holds() -> None:
    d = _differ()
    ins: list[Any] = []
    upd: list[Any] = []
    dels: list[Action] = []
    force(action(change(1), new=("n",)), None, d, Side.RIGHT, {}, ins, upd, dels)
    force(action(change(2), new=("m",)), ("x",), d, Side.RIGHT, {}, ins, upd, dels)
    gone = action(change(3, op="D"), kind="delete")
    force(gone, ("x",), d, Side.RIGHT, {}, ins, upd, dels)
    force(action(change(4, op="D"), kind="delete"), None, d, Side.RIGHT, {}, ins, upd, dels)
    assert [(a.change.seq, v) for a, v in ins] == [(1, ("n",))]
    assert [(a.change.seq, v) for a, v in upd] == [(2, ("m",))]
    assert dels == [gone]


def _decide(policy: ConflictPolicy, src_now: dict[Any, Any], cur: tuple[Any, ...]
            ) -> tuple[Outcome, list[Change], list[Any]]:
    bound = SimpleNamespace(name="items", spec=SimpleNamespace(conflict=policy))
    a = action(change(1, at=T0 + dt.timedelta(seconds=1)), new=("mine",))
    theirs = [change(9, "t9", at=T0)]
    outcome = Outcome()
    upd: list[Any] = []
    lost = decide(Side.LEFT, bound, _differ(), [], [(a, cur, theirs)], src_now, {},
                  {Side.LEFT: "erp", Side.RIGHT: "crm"}, lambda: "2026-01-01T00:00:09+00:00",
                  [], upd, [], outcome)
    return outcome, lost, upd


def test_a_conflict_the_change_wins_overwrites_and_forgets_the_targets_own() -> None:
    outcome, lost, upd = _decide(ConflictPolicy.LEFT_WINS, {(1,): ("mine",)}, ("theirs",))
    assert [c.seq for c in lost] == [9]
    assert [v for _a, v in upd] == [("mine",)]
    (record,) = outcome.conflicts.values()
    assert record["winner"] == "left" and record["target"] == {"v": "theirs"}


def test_a_conflict_the_target_wins_changes_nothing() -> None:
    outcome, lost, upd = _decide(ConflictPolicy.RIGHT_WINS, {(1,): ("mine",)}, ("theirs",))
    assert lost == [] and upd == [] and outcome.skipped == 1
    assert next(iter(outcome.conflicts.values()))["winner"] == "right"


def test_a_manual_conflict_parks_the_change_and_holds_its_key() -> None:
    outcome, lost, upd = _decide(ConflictPolicy.MANUAL, {(1,): ("mine",)}, ("theirs",))
    assert lost == [] and upd == []
    assert outcome.held == {("items", (1,))}
    ((_a, status, kind, info),) = outcome.parked
    assert (status, kind) == ("error", "conflict")
    assert "erp changed it" in info["reason"] and info["detected_at"].startswith("2026")


def test_sides_that_agree_now_are_no_conflict() -> None:
    # the source row already reads as the target holds it (canonical form)
    outcome, lost, upd = _decide(ConflictPolicy.MANUAL, {(1,): ("same",)}, ("same",))
    assert outcome.conflicts == {} and outcome.skipped == 1 and not outcome.parked
    assert lost == [] and upd == []


# -- dependencies ------------------------------------------------------------------------------
def test_maps_are_held_while_a_dependency_does_not_run() -> None:
    depends = {"lines": ["orders"], "orders": ["customers"], "customers": []}
    states = {"lines": "running", "orders": "running", "customers": "paused"}
    assert held_by_dependencies(depends, states) == {"lines": "customers",
                                                     "orders": "customers"}
    states["customers"] = "running"
    assert held_by_dependencies(depends, states) == {}
