"""Capture: writes that bypass dualwrite reach the other side, once, without echo; conflicts,
parked rows, paused maps, alerts and status."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pytest

from capture_fixtures import LOGICAL_KINDS, drain, make_items
from dualwrite.connectors.capture import Change
from dualwrite.engine.capture import resolve_conflict
from dualwrite.errors import LinkError
from dualwrite.model.maps import Side
from dualwrite.model.values import canonical
from dualwrite.testing.backends import pair_id, pairs

from conftest import BackendFactory
from sync_fixtures import Pair, erp_customer, make_pair, seed_groups

CAPTURE_PAIRS = pairs(needs=("capture",))


def q(pair_kind: str, name: str) -> str:
    """Quote a mixed-case table name for an application's raw SQL."""
    return f"`{name}`" if pair_kind == "mariadb" else f'"{name}"'


@pytest.fixture(params=CAPTURE_PAIRS, ids=pair_id)
def pair(request: pytest.FixtureRequest, make_backend: BackendFactory, tmp_path: Path) -> Pair:
    left, right = request.param
    p = make_pair(make_backend, tmp_path, left, right, batch_size=500)
    seed_groups(p)
    p.erp.insert("Customers", [erp_customer(i) for i in range(6)])
    with p.link() as link:
        link.start_maps()
    return p


@pytest.fixture(params=CAPTURE_PAIRS + LOGICAL_KINDS, ids=pair_id)
def kinds(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """(left, right[, capture mode]): each pair with triggers, and with logical decoding
    where a side is PostgreSQL."""
    return request.param  # type: ignore[no-any-return]


def test_application_writes_reach_the_other_side_with_the_map_applied(pair: Pair) -> None:
    erp = q(pair.erp.kind, "Customers")
    pair.erp.app_sql(
        f'INSERT INTO {erp} ("dataAreaId", "ACCOUNT", "NAME", "CREDIT", "STATUS", "GROUPID", '
        '"CREATED", "PARTYTYPE") VALUES (:c, :a, :n, :cr, :s, :g, :d, :p)'.replace(
            '"', "`" if pair.erp.kind == "mariadb" else '"'),
        {"c": "usmf", "a": "C-0100", "n": "Fabrikam", "cr": Decimal("12.34"), "s": "Invoice",
         "g": "G20", "d": dt.date(2026, 3, 4), "p": "Organization"})
    gid = pair.group_ids()
    pair.crm.app_sql("UPDATE accounts SET name = :n, onhold = 2, telephone1 = :t "
                     "WHERE company = 'usmf' AND accountnumber = 'C-0001'",
                     {"n": "Renamed in CRM", "t": "+1 555 0001"})
    pair.crm.app_sql("DELETE FROM accounts WHERE company = 'usmf' AND accountnumber = 'C-0003'")
    with pair.link() as link:
        applier = link.applier()
        assert drain(applier) >= 3
        erp_rows, crm_rows = pair.customers(), pair.accounts()
        new = crm_rows[("usmf", "C-0100")]
        # value map (Invoice -> 1), lookup (G20 -> the CRM group's id), default (typecode 3)
        assert new["name"] == "Fabrikam" and new["onhold"] == 1 and new["typecode"] == 3
        assert new["groupref"] == gid["G20"] and canonical(new["creditlimit"]) == \
            canonical(Decimal("12.34"))
        one = erp_rows[("usmf", "C-0001")]
        assert one["NAME"] == "Renamed in CRM" and one["STATUS"] == "All"
        assert one["PHONE"] == "+1 555 0001"  # a field that flows right-to-left only
        assert ("usmf", "C-0003") not in erp_rows and ("usmf", "C-0003") not in crm_rows
        assert all(v.ok for v in link.verify())
        # no echo: what the applier wrote was not captured back
        for b in (pair.erp, pair.crm):
            assert b.sql("SELECT COUNT(*) FROM dualwrite_changes")[0][0] == 0
        st = {r["map"]: r for r in link.status()}
        assert st["customers"]["state"] == "running" and st["customers"]["queued"] == 0
        assert st["customers"]["last_applied_at"] is not None


def test_filter_moves_and_key_changes(pair: Pair) -> None:
    erp = q(pair.erp.kind, "Customers")
    party, account = q(pair.erp.kind, "PARTYTYPE"), q(pair.erp.kind, "ACCOUNT")
    # leaving the map's filter deletes the twin; a changed key moves the twin
    pair.erp.app_sql(f"UPDATE {erp} SET {party} = 'Person' WHERE {account} = 'C-0002'")
    pair.erp.app_sql(f"UPDATE {erp} SET {account} = 'C-0404' WHERE {account} = 'C-0004'")
    with pair.link() as link:
        drain(link.applier())
        crm_rows = pair.accounts()
        assert ("demf", "C-0002") not in crm_rows
        assert ("demf", "C-0004") not in crm_rows and ("demf", "C-0404") in crm_rows
        pair.erp.app_sql(f"UPDATE {erp} SET {party} = 'Organization' WHERE {account} = 'C-0002'")
        drain(link.applier())
        assert ("demf", "C-0002") in pair.accounts()
        assert all(v.ok for v in link.verify())


def test_one_source_transaction_is_applied_whole_and_once(kinds: tuple[str, ...],
                                                          make_backend: BackendFactory,
                                                          tmp_path: Path) -> None:
    it = make_items(make_backend, tmp_path, *kinds)
    with it.link() as link:
        link.start_maps()
        with it.left.app().begin() as conn:  # one application transaction, three rows
            for i in range(3):
                conn.exec_driver_sql(f"INSERT INTO items (id, name, qty) VALUES ({i}, 'n{i}', {i})")
        applier = link.applier()
        log = applier.logs[Side.LEFT]
        changes = log.read(["items"], 100)
        assert len(changes) == 3 and len({c.txid for c in changes}) == 1
        maps = applier.maps(refresh=True)
        # a crash between the target commit and deleting from the source log: the change is
        # delivered again, recognised by its applied position, and not applied twice
        first = applier.apply_changes(Side.LEFT, changes, maps, forget=False)
        assert first.applied == 3
        again = applier.apply_changes(Side.LEFT, log.read(["items"], 100), maps)
        assert again.applied == 0
        assert it.rows("right") == {0: ("n0", 0), 1: ("n1", 1), 2: ("n2", 2)}
        assert it.log("left") == []
        # an update that touches no mapped column is not captured at all
        it.left.app_sql("UPDATE items SET note = 'x' WHERE id = 1")
        assert it.log("left") == []


@pytest.mark.parametrize("policy,winner", [("left-wins", "left"), ("right-wins", "right"),
                                           ("newest-wins", "right")])
def test_conflicts_follow_the_policy(kinds: tuple[str, ...], make_backend: BackendFactory,
                                     tmp_path: Path, policy: str, winner: str) -> None:
    it = make_items(make_backend, tmp_path, *kinds, policy=policy)
    it.left.insert("items", [{"id": 1, "name": "base", "qty": 1},
                             {"id": 2, "name": "other", "qty": 2}])
    with it.link() as link:
        link.start_maps()
        # both sides change row 1 before the applier sees either (the right one later)
        it.left.app_sql("UPDATE items SET name = 'from left', qty = 10 WHERE id = 1")
        it.right.app_sql("UPDATE items SET name = 'from right', qty = 20 WHERE id = 1")
        it.right.app_sql("UPDATE items SET qty = 22 WHERE id = 2")  # no conflict here
        drain(link.applier())
        expect = ("from left", 10) if winner == "left" else ("from right", 20)
        assert it.rows("left")[1] == it.rows("right")[1] == expect
        assert it.rows("left")[2] == ("other", 22)
        [c] = link.state.conflicts()
        assert c["winner"] == winner and c["policy"] == policy and c["key"] == [1]
        assert all(v.ok for v in link.verify())
        assert next(r for r in link.status() if r["map"] == "items")["conflicts"] == 1


def test_manual_conflict_parks_the_row_and_the_rest_flows(kinds: tuple[str, ...],
                                                          make_backend: BackendFactory,
                                                          tmp_path: Path) -> None:
    it = make_items(make_backend, tmp_path, *kinds, policy="manual")
    it.left.insert("items", [{"id": 1, "name": "base", "qty": 1}])
    with it.link() as link:
        link.start_maps()
        applier = link.applier()
        it.left.app_sql("UPDATE items SET name = 'L', qty = 10 WHERE id = 1")
        it.right.app_sql("UPDATE items SET name = 'R', qty = 20 WHERE id = 1")
        drain(applier)
        [entry] = link.state.errors("items")
        assert entry.operation == "conflict" and "both sides changed" in entry.reason
        assert entry.payload and "change" in entry.payload
        # later changes to the key wait behind it; other rows keep flowing
        it.left.app_sql("UPDATE items SET qty = 11 WHERE id = 1")
        it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (2, 'new', 5)")
        drain(applier)
        assert it.rows("right")[2] == ("new", 5)
        assert it.rows("left")[1] == ("L", 11) and it.rows("right")[1] == ("R", 20)
        assert link.state.parked_count()["items"] >= 2
        # pick the right side: its row is written left, and the change the left made after
        # the conflict was found (qty 11) is applied on top of it, not dropped
        done = resolve_conflict(link, entry.id, Side.RIGHT)
        assert done["written_to"] == "erp"
        drain(applier)
        assert it.rows("left")[1] == it.rows("right")[1] == ("R", 11)
        assert link.state.errors("items") == [] and link.state.parked_count() == {}
        assert all(v.ok for v in link.verify())


def test_rejected_change_goes_to_the_inbox_retry_and_discard(kinds: tuple[str, ...],
                                                             make_backend: BackendFactory,
                                                             tmp_path: Path) -> None:
    it = make_items(make_backend, tmp_path, *kinds)
    it.right.app_sql("CREATE UNIQUE INDEX items_name_u ON items (name)")
    it.right.connector.forget_schema()
    with it.link() as link:
        link.start_maps()
        applier = link.applier()
        it.right.app_sql("INSERT INTO items (id, name, qty) VALUES (9, 'taken', 0)")
        it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'taken', 1)")
        it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (2, 'fine', 2)")
        it.left.app_sql("UPDATE items SET qty = 3 WHERE id = 1")  # waits behind the failure
        drain(applier)
        assert it.rows("right")[2] == ("fine", 2) and 1 not in it.rows("right")
        [entry] = link.state.errors("items")
        # the side it failed on; the side it came from is in its payload
        assert entry.operation == "create" and entry.side == "crm"
        assert entry.payload and entry.payload["source"] == "left"
        assert "rejected" in entry.reason and list(entry.key) == [1]
        # a retry that fails again is back, with one more attempt
        link.state.resolve_error(entry.id, "retry")
        drain(applier)
        [again] = link.state.errors("items")
        assert again.id == entry.id and again.attempts == 2
        # fix the cause on the target, then discard the create: what waited replays and,
        # finding no twin, creates it from the newer version
        it.right.app_sql("DELETE FROM items WHERE id = 9")
        link.state.resolve_error(entry.id, "discarded")
        drain(applier)
        assert it.rows("right")[1] == ("taken", 3)
        assert link.state.parked_count() == {}


def test_paused_map_queues_and_replays_in_order(kinds: tuple[str, ...],
                                                make_backend: BackendFactory,
                                                tmp_path: Path) -> None:
    it = make_items(make_backend, tmp_path, *kinds)
    with it.link() as link:
        link.start_maps()
        applier = link.applier()
        assert link.pause_maps(["items"]) == ["items"]
        for i in range(5):
            it.left.app_sql(f"INSERT INTO items (id, name, qty) VALUES ({i}, 'v0', 0)")
        for v in range(1, 4):
            it.left.app_sql(f"UPDATE items SET name = 'v{v}', qty = {v} WHERE id = 2")
        it.left.app_sql("DELETE FROM items WHERE id = 4")
        applier.maps(refresh=True)
        assert drain(applier) == 0 and it.rows("right") == {}
        st = next(r for r in link.status() if r["map"] == "items")
        assert st["state"] == "paused" and st["queued"] == 9
        # a write through dualwrite to a paused map's table queues too, in order
        with link.transaction() as tx:
            tx.update("erp", "items", {"id": 3}, {"qty": 33})
        assert link.resume_maps(["items"]) == ["items"]
        applier.maps(refresh=True)
        drain(applier)
        assert it.rows("right") == {0: ("v0", 0), 1: ("v0", 0), 2: ("v3", 3), 3: ("v0", 33)}
        applier.housekeeping()
        assert link.state.map_states()["items"]["state"] == "running"


def test_a_pause_made_in_the_same_process_holds_the_next_change(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    """`serve` pauses a map from its console through one state store while its applier runs
    on another (a Link of its own): the applier sees the pause at its next look, not up to
    0.2 s later when it reads the states again (the console's pause, then at once an
    application's write, was applied: seen in a busy full run). The pause is counted for
    every store of the database in the process, once committed."""
    it = make_items(make_backend, tmp_path, "postgresql", "postgresql")
    with it.link() as console, it.link() as own:
        console.start_maps()
        applier = own.applier()
        assert set(applier.maps()) == {"items"}  # the states just read: 'running'
        assert console.pause_maps(["items"]) == ["items"]
        it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'queued', 1)")
        assert applier.apply_from(Side.LEFT) == 0
        assert it.rows("right") == {}
        assert applier.maps()["items"].state == "paused"
        assert console.resume_maps(["items"]) == ["items"]
        drain(applier)
        assert it.rows("right") == {1: ("queued", 1)}
        applier.close()


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk-path", "row-path"])
def test_writes_during_the_initial_sync_are_applied_after_it(kinds: tuple[str, ...],
                                                            make_backend: BackendFactory,
                                                            tmp_path: Path, bulk: bool) -> None:
    # batch 10: the row path writes 10 rows per chunk, the bulk path 100 per range
    it = make_items(make_backend, tmp_path, *kinds,
                    extra=lambda c: c.update(sync={"batch_size": 10, "bulk": bulk}))
    it.left.insert("items", [{"id": i, "name": f"n{i}", "qty": i} for i in range(1000)])
    calls = []

    def progress(name: str, done: int, total: int | None) -> None:
        # in the middle of the copy, the application keeps writing on both sides
        calls.append(done)
        if len(calls) == 3:
            assert done < 950
            it.left.app_sql("UPDATE items SET qty = 1000 WHERE id = 950")  # not copied yet
            it.left.app_sql("UPDATE items SET qty = 1001 WHERE id = 5")  # already copied
            it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1500, 'late', 1)")
            it.right.app_sql("INSERT INTO items (id, name, qty) VALUES (1600, 'crm', 2)")

    with it.link() as link:
        link.start_maps(progress=progress)
        assert len(calls) > 3
        drain(link.applier())
        left, right = it.rows("left"), it.rows("right")
        assert left == right and len(left) == 1002
        assert left[950] == ("n950", 1000) and left[5] == ("n5", 1001)
        assert left[1600] == ("crm", 2) and left[1500] == ("late", 1)
        # what the copy already carried is recognised, neither a conflict nor an error
        assert link.state.conflicts() == [] and link.state.errors() == []


def test_start_refuses_missing_dependencies_then_starts_them_in_order(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    p = make_pair(make_backend, tmp_path, "sqlite", "sqlite")
    seed_groups(p)
    with p.link() as link:
        with pytest.raises(LinkError, match="depend on groups"):
            link.start_maps(["customers"])
        link.start_maps(["customers"], with_dependencies=True)
        states = link.state.map_states()
        assert states["groups"]["state"] == states["customers"]["state"] == "running"
        # stopping removes capture: nothing is captured any more, and start syncs again
        link.stop_maps(["customers"])
        p.erp.app_sql('INSERT INTO "Customers" ("dataAreaId", "ACCOUNT", "NAME", "PARTYTYPE") '
                      "VALUES ('usmf', 'C-0777', 'x', 'Organization')")
        assert p.erp.sql("SELECT COUNT(*) FROM dualwrite_changes")[0][0] == 0
        [ran] = link.start_maps(["customers"])
        assert ran.created["right"] == 1


class _Hook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


def test_alert_rules_pause_the_map_and_call_the_webhook(make_backend: BackendFactory,
                                                        tmp_path: Path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/alert"
    _Hook.received = []

    def extra(cfg: dict[str, Any]) -> None:
        cfg["alerts"] = [
            {"kind": "rejected", "count": 2, "within_minutes": 5, "action": "pause"},
            {"kind": "rejected", "count": 1, "within_minutes": 5, "action": "webhook",
             "url": url}]
        cfg["capture"] = {"queue": {"max_rows": 5}}

    it = make_items(make_backend, tmp_path, "sqlite", "sqlite", extra=extra)
    it.right.app_sql("CREATE TABLE guard (x INTEGER)")
    it.right.app_sql("CREATE TRIGGER no_big BEFORE INSERT ON items WHEN NEW.qty > 100 "
                     "BEGIN SELECT RAISE(ABORT, 'qty too big'); END")
    try:
        with it.link() as link:
            link.start_maps()
            applier = link.applier()
            it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'a', 101)")
            drain(applier)
            assert link.state.map_states()["items"]["state"] == "running"
            assert len(_Hook.received) == 1 and _Hook.received[0]["kind"] == "rejected"
            it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (2, 'b', 102)")
            drain(applier)
            assert link.state.map_states()["items"]["state"] == "paused"
            assert len(link.state.errors("items")) == 2
            # paused, the queue fills: crossing 80% of its budget raises a queue alert once
            for i in range(3, 8):
                it.left.app_sql(f"INSERT INTO items (id, name, qty) VALUES ({i}, 'c', 1)")
            applier.housekeeping()
            applier.housekeeping()
            queue_events = link.state.count_events("items", ["queue"], 0)
            assert queue_events == 2  # 80% and 100%, each once
    finally:
        server.shutdown()
        server.server_close()


def test_change_round_trips_through_the_state_store() -> None:
    c = Change(seq=7, map="m", txid="42", op="U", key_text='["a", 1]',
               old={"x": Decimal("1.50")}, new={"x": Decimal("2.50")},
               at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    from dualwrite.engine.state import decode_doc, encode_doc

    back = Change.from_dict(decode_doc(encode_doc(c.as_dict())))
    assert back.old == {"x": Decimal("1.50")} and back.key == ("a", 1) and back.at == c.at


def test_a_large_update_applies_in_bulk_and_still_sees_conflicts(kinds: tuple[str, ...],
                                                                 make_backend: BackendFactory,
                                                                 tmp_path: Path) -> None:
    """Enough rows for the bulk path (one guarded UPDATE on PostgreSQL): rows whose target
    moved on are taken out of it and settled one by one."""
    it = make_items(make_backend, tmp_path, *kinds, policy="right-wins")
    it.left.insert("items", [{"id": i, "name": f"n{i}", "qty": 0} for i in range(80)])
    with it.link() as link:
        link.start_maps()
        applier = link.applier()
        it.right.app_sql("UPDATE items SET qty = 500 WHERE id = 7")  # a conflict: right wins
        it.right.app_sql("UPDATE items SET qty = 1 WHERE id = 9")  # already what left writes
        it.left.app_sql("UPDATE items SET qty = 1")  # one transaction, 80 rows
        drain(applier)
        left, right = it.rows("left"), it.rows("right")
        assert left == right
        assert left[7] == ("n7", 500) and all(left[i] == (f"n{i}", 1) for i in range(80)
                                              if i != 7)
        assert [c["key"] for c in link.state.conflicts()] == [[7]]


def test_a_row_changed_and_changed_back_is_still_a_conflict(kinds: tuple[str, ...],
                                                            make_backend: BackendFactory,
                                                            tmp_path: Path) -> None:
    """ABA: the target holds the old version again, but it changed twice meanwhile; its
    queued changes must neither be missed as a conflict nor flow back over the winner."""
    it = make_items(make_backend, tmp_path, *kinds, policy="left-wins")
    it.left.insert("items", [{"id": 1, "name": "a", "qty": 1}])
    with it.link() as link:
        link.start_maps()
        it.right.app_sql("UPDATE items SET qty = 2 WHERE id = 1")
        it.right.app_sql("UPDATE items SET qty = 1 WHERE id = 1")
        it.right.app_sql("UPDATE items SET name = 'b' WHERE id = 1")
        it.right.app_sql("UPDATE items SET name = 'a' WHERE id = 1")
        it.left.app_sql("UPDATE items SET qty = 5 WHERE id = 1")
        drain(link.applier())
        assert it.rows("left")[1] == it.rows("right")[1] == ("a", 5)
        [c] = link.state.conflicts()
        assert c["winner"] == "left"
        assert it.log("left") == [] and it.log("right") == []


@pytest.mark.parametrize("same", [True, False], ids=["same-values", "different-values"])
def test_a_row_created_on_both_sides_is_compared_not_rejected(kinds: tuple[str, ...],
                                                              make_backend: BackendFactory,
                                                              tmp_path: Path,
                                                              same: bool) -> None:
    it = make_items(make_backend, tmp_path, *kinds, policy="left-wins")
    with it.link() as link:
        link.start_maps()
        it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'left', 1)")
        it.right.app_sql(f"INSERT INTO items (id, name, qty) VALUES "
                         f"(1, '{'left' if same else 'right'}', 1)")
        drain(link.applier())
        assert it.rows("left")[1] == it.rows("right")[1] == ("left", 1)
        assert link.state.errors() == []
        assert len(link.state.conflicts()) == (0 if same else 1)


def test_a_filter_on_a_column_the_map_does_not_carry(make_backend: BackendFactory,
                                                    tmp_path: Path) -> None:
    """The triggers capture the filter's own columns too: a row entering or leaving the
    filter through a column that no field maps still creates or deletes its twin."""
    it = make_items(make_backend, tmp_path, "postgresql", "postgresql")
    (tmp_path / "maps" / "items.yaml").write_text(
        "name: items\nleft: items\nright: items\nkey: {left: [id], right: [id]}\n"
        "filter: {left: \"note ne 'private'\"}\n"
        "fields:\n  - id = id\n  - name = name\n  - qty = qty\n")
    with it.link() as link:
        link.start_maps()
        it.left.app_sql("INSERT INTO items (id, name, qty, note) VALUES (1, 'a', 1, 'private')")
        it.left.app_sql("INSERT INTO items (id, name, qty, note) VALUES (2, 'b', 2, 'public')")
        drain(link.applier())
        assert set(it.rows("right")) == {2}
        it.left.app_sql("UPDATE items SET note = 'public' WHERE id = 1")
        it.left.app_sql("UPDATE items SET note = 'private' WHERE id = 2")
        drain(link.applier())
        assert set(it.rows("right")) == {1}
