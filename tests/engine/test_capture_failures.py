"""One map's fault never stops the others, and `status` never calls a link healthy when
nothing applies (issue: never lose, never corrupt, section 5)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from capture_fixtures import ITEMS_MAP, Items, drain, fresh_tables, items_metadata, link_config
from dualwrite.engine.state import HEARTBEAT_TIMEOUT
from dualwrite.errors import TransientConnectorError
from dualwrite.model.maps import Side
from dualwrite.testing.backends import pair_id, pairs

from conftest import BackendFactory

PAIRS = pairs(needs=("two_phase", "capture"))

OTHERS_MAP = ITEMS_MAP.replace("name: items", "name: others").replace(
    "left: items", "left: others").replace("right: items", "right: others")


def two_maps(make_backend: BackendFactory, tmp_path: Path, kinds: tuple[str, str]) -> Items:
    left = make_backend(kinds[0], "dualwrite_test_a")
    right = make_backend(kinds[1], "dualwrite_test_b" if kinds[0] == kinds[1]
                         else "dualwrite_test_a")
    md = items_metadata()
    others = md.tables["items"].to_metadata(md, name="others")
    assert others is not None
    fresh_tables(md, left, right)
    path = link_config(tmp_path, left, right, {
        "items": ITEMS_MAP.format(policy="left-wins"),
        "others": OTHERS_MAP.format(policy="left-wins")})
    return Items(left, right, path)


@pytest.mark.parametrize("kinds", PAIRS, ids=pair_id)
def test_a_failing_map_is_failed_with_its_reason_and_the_others_flow(
        make_backend: BackendFactory, tmp_path: Path, kinds: tuple[str, str]) -> None:
    """The right side's ``items`` table is renamed away while both maps run: applying the
    next change of ``items`` fails for a reason no retry fixes. That map is failed (status
    says why, an alert rule sees a ``failed`` event), its changes stay queued; ``others``
    keeps flowing; once the table is back and the map resumed, the queue drains."""
    it = two_maps(make_backend, tmp_path, kinds)
    with it.link() as link:
        link.start_maps()
        applier = link.applier()
        it.right.app_sql("ALTER TABLE items RENAME TO items_away")
        it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'one', 1)")
        it.left.app_sql("INSERT INTO others (id, name, qty) VALUES (1, 'other', 1)")
        drain(applier)
        st = {m["map"]: m for m in link.status()}
        assert st["items"]["state"] == "failed", st["items"]
        assert "items" in (st["items"]["note"] or ""), st["items"]
        assert st["items"]["queued"] == 1
        assert st["others"]["state"] == "running"
        assert it.right.sql("SELECT name FROM others WHERE id = 1") == [("other",)]
        it.left.app_sql("INSERT INTO others (id, name, qty) VALUES (2, 'more', 2)")
        it.left.app_sql("UPDATE items SET qty = 2 WHERE id = 1")  # queued, not lost
        drain(applier)
        assert it.right.sql("SELECT name FROM others WHERE id = 2") == [("more",)]
        assert link.state.count_events("items", ["failed"], 0) >= 1
        # fixed: the table is back; resuming the map drains what it queued
        it.right.app_sql("ALTER TABLE items_away RENAME TO items")
        assert link.resume_maps(["items"]) == ["items"]
        drain(applier)
        assert it.rows("right")[1] == ("one", 2)
        st = {m["map"]: m for m in link.status()}
        assert st["items"]["state"] in ("resuming", "running") and st["items"]["note"] in (
            None, "no applier (start `dualwrite run` or `dualwrite serve`)")
        applier.housekeeping()
        assert {m["map"]: m for m in link.status()}["items"]["state"] == "running"
        assert all(v.ok for v in link.verify())


def test_status_says_when_nothing_applies(make_backend: BackendFactory, tmp_path: Path
                                          ) -> None:
    """A running map with no applier process is not shown as healthy: without any `run`, and
    after the applier's heartbeat stopped (its process died)."""
    it = two_maps(make_backend, tmp_path, ("postgresql", "postgresql"))
    with it.link() as link:
        link.start_maps(["items"])
        [row] = [m for m in link.status() if m["map"] == "items"]
        assert row["state"] == "running" and row["applier"] is None
        assert row["note"] is not None and row["note"].startswith("no applier")
        # an applier registers and beats ...
        me = link.state.register_process(link.config.link_name, "applier")
        [row] = [m for m in link.status() if m["map"] == "items"]
        assert row["note"] is None and row["applier"] is not None
        [proc] = link.processes()
        assert proc["alive"] and proc["role"] == "applier"
        # ... then dies: its heartbeat ages past the timeout
        with link.state.engine.begin() as conn:
            conn.execute(sa.text("UPDATE processes SET heartbeat = :t WHERE id = :i"),
                         {"t": time.time() - HEARTBEAT_TIMEOUT - 30, "i": me})
        [row] = [m for m in link.status() if m["map"] == "items"]
        assert row["applier"] is None and row["note"] is not None
        assert row["note"].startswith("no applier for ")
        [proc] = link.processes()
        assert not proc["alive"]


@pytest.mark.parametrize("kinds", PAIRS, ids=pair_id)
def test_pausing_a_map_holds_the_maps_that_depend_on_it(
        make_backend: BackendFactory, tmp_path: Path, kinds: tuple[str, str]) -> None:
    """``customers`` depends on ``groups``. With ``groups`` paused, a new group and a customer
    in it are created on the ERP: the customer is not sent to the inbox for want of its
    group (which is queued): it is held, and status says why. Resumed, both arrive."""
    from sync_fixtures import erp_customer, make_pair, seed_groups

    p = make_pair(make_backend, tmp_path, *kinds, batch_size=500)
    seed_groups(p)
    with p.link() as link:
        link.start_maps()
        applier = link.applier()
        link.pause_maps(["groups"])
        p.erp.app_sql('INSERT INTO "Groups" ("dataAreaId", "GROUPID", "DESCRIPTION") '
                      "VALUES ('usmf', 'G40', 'New')".replace(
                          '"', "`" if p.erp.kind == "mariadb" else '"'))
        row = erp_customer(40, dataAreaId="usmf", GROUPID="G40")
        with p.erp.app().begin() as conn:
            conn.execute(sa.text(
                'INSERT INTO "Customers" ("dataAreaId", "ACCOUNT", "NAME", "CREDIT", "STATUS", '
                '"GROUPID", "CREATED", "LANGUAGEID", "PARTYTYPE") VALUES (:dataAreaId, '
                ':ACCOUNT, :NAME, :CREDIT, :STATUS, :GROUPID, :CREATED, :LANGUAGEID, '
                ':PARTYTYPE)'), {k: v for k, v in row.items() if k != "PHONE"})
        drain(applier)
        assert link.state.errors() == []
        assert ("usmf", "C-0040") not in p.accounts()
        st = {m["map"]: m for m in link.status()}
        assert st["customers"]["state"] == "running"
        assert st["customers"]["note"] is not None and "held: groups" in st["customers"]["note"]
        assert st["customers"]["queued"] == 1
        link.resume_maps(["groups"])
        applier.maps(refresh=True)  # (a running applier looks again within 0.2 s)
        drain(applier)
        applier.housekeeping()  # groups: resuming -> running (its queue is empty)
        applier.maps(refresh=True)  # (the running applier looks again within 0.2 s)
        drain(applier)
        assert ("usmf", "C-0040") in p.accounts()
        assert link.state.errors() == []
        assert all(v.ok for v in link.verify())


@pytest.mark.parametrize("kinds", PAIRS, ids=pair_id)
def test_changes_applied_but_not_yet_deleted_at_a_crash_are_no_conflict_after(
        make_backend: BackendFactory, tmp_path: Path, kinds: tuple[str, str]) -> None:
    """An applier killed between committing an apply and deleting those changes from the
    source log leaves them there, marked applied on the target. The application on the
    target then writes over the applied value (having seen it). A new applier must not take
    the left-behind changes for the target's own and record a conflict: every write saw the
    one before."""
    from capture_fixtures import make_items

    it = make_items(make_backend, tmp_path, *kinds, policy="manual")
    it.left.insert("items", [{"id": 1, "name": "init", "qty": 1}])
    with it.link() as link:
        link.start_maps()
        crashed = link.applier()
        try:
            it.right.app_sql("UPDATE items SET name = 'R1' WHERE id = 1")
            crashed.logs[Side.RIGHT].forget = lambda *a, **k: None  # type: ignore[method-assign]
            crashed.maps(refresh=True)
            assert crashed.step() == 1  # applied to the left; the right's log keeps it
        finally:
            crashed.close()
        assert it.rows("left")[1] == ("R1", 1) and it.log("right")
        it.left.app_sql("UPDATE items SET name = 'L2' WHERE id = 1")  # over R1: it saw it
        after = link.applier()
        try:
            after.prune_markers()  # what `run` does first
            assert it.log("right") == []
            drain(after)
        finally:
            after.close()
        assert link.state.errors() == [] and link.state.conflicts("items") == []
        assert it.rows("left")[1] == it.rows("right")[1] == ("L2", 1)


CAPTURE_PAIRS = pairs(needs=("capture",))


def _count_calls(obj: object, name: str) -> list[int]:
    """Wrap ``obj.name`` so that each call is counted in the list returned (one entry)."""
    calls = [0]
    original = getattr(obj, name)

    def counted(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(obj, name, counted)
    return calls


@pytest.mark.parametrize("kinds", CAPTURE_PAIRS, ids=pair_id)
def test_a_step_asks_the_target_nothing_before_writing(
        make_backend: BackendFactory, tmp_path: Path, kinds: tuple[str, str]) -> None:
    """Single-row transactions, one step each: where the source's log has transaction ids,
    the apply transaction does not first ask the target which of them it applied already
    (the applied positions' key refuses a repeat instead); a log without them (SQLite) is
    asked, by its high-water mark."""
    from capture_fixtures import make_items

    it = make_items(make_backend, tmp_path, *kinds)
    with it.link() as link:
        link.start_maps()
        applier = link.applier()
        try:
            asked = _count_calls(applier.logs[Side.RIGHT], "applied")
            for i in range(1, 4):
                it.left.app_sql(f"INSERT INTO items (id, name, qty) VALUES ({i}, 'n{i}', {i})")
                applier.maps(refresh=True)
                assert applier.step() == 1
            assert it.rows("right") == {1: ("n1", 1), 2: ("n2", 2), 3: ("n3", 3)}
            assert asked[0] == (0 if applier.logs[Side.LEFT].has_txid else 3), asked
        finally:
            applier.close()
        assert link.state.errors() == []


@pytest.mark.parametrize("source", ["left", "right"])
@pytest.mark.parametrize("kinds", CAPTURE_PAIRS, ids=pair_id)
def test_changes_read_again_after_their_apply_are_applied_once(
        make_backend: BackendFactory, tmp_path: Path, kinds: tuple[str, str], source: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """The target committed an apply, then deleting those changes from the source's log
    failed: the next step reads them again, with a new change behind them. Written without
    asking first, the repeat is refused by its applied position; the target transaction is
    rolled back and applied again, asking: the repeat is skipped (no conflict, no error, no
    second write), the new change applied, and the log emptied."""
    from capture_fixtures import make_items

    it = make_items(make_backend, tmp_path, *kinds)
    s = Side.LEFT if source == "left" else Side.RIGHT
    src, dst = (it.left, it.right) if s is Side.LEFT else (it.right, it.left)
    src.insert("items", [{"id": 1, "name": "init", "qty": 1}])
    dst.insert("items", [{"id": 1, "name": "init", "qty": 1}])
    with it.link() as link:
        link.start_maps()
        applier = link.applier()
        try:
            src.app_sql("UPDATE items SET name = 'first', qty = 2 WHERE id = 1")
            forget = applier.logs[s].forget

            def lost(*args: object, **kwargs: object) -> None:
                raise TransientConnectorError("the source's connection was lost")

            applier.logs[s].forget = lost  # type: ignore[method-assign]
            applier.maps(refresh=True)
            applier.step()
            assert it.rows("left")[1] == it.rows("right")[1] == ("first", 2)
            assert len(it.log(source)) == 1, "the applied change should still be queued"
            applier.logs[s].forget = forget  # type: ignore[method-assign]
            src.app_sql("INSERT INTO items (id, name, qty) VALUES (2, 'second', 3)")
            asked = _count_calls(applier.logs[s.other], "applied")
            with caplog.at_level("INFO", logger="dualwrite.capture"):
                # the side that failed is retried once its backoff has passed
                deadline = time.monotonic() + 30
                while applier.last_error[s] is not None:
                    applier.step()
                    assert time.monotonic() < deadline, applier.last_error[s]
                    time.sleep(0.01)  # the backoff's time passing, not a synchronisation
                drain(applier)
        finally:
            applier.close()
        assert it.rows("left") == it.rows("right") == {1: ("first", 2), 2: ("second", 3)}
        assert it.log(source) == [] and it.log("right" if source == "left" else "left") == []
        assert link.state.errors() == [] and link.state.conflicts("items") == []
        if link.connectors[s].change_log().has_txid:
            reapplied = [r for r in caplog.records if getattr(r, "event", "") == "reapplied"]
            assert len(reapplied) == 1, (asked, [r.getMessage() for r in caplog.records])
            assert asked[0] == 1, asked  # the retry asks; the step before it did not
