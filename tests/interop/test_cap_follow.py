"""CAP ↔ PostgreSQL end to end, change by change (engine/odata_follow.py): after initial
sync, changes made through CAP's OData reach PostgreSQL, changes made in PostgreSQL by the
application reach CAP (one change set per transaction), deletions both ways, the winning side
of a conflict as the map says, nothing echoed back, verify clean."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from cap_process import (
    CUSTOMERS_MAP,
    Cap,
    cap_client,
    cap_rows,
    fresh_crm,
    running_cap,
    write_config,
)
from dualwrite.engine.link import Link
from dualwrite.engine.odata_follow import ODataFollower
from dualwrite.errors import ConfigError, TransientConnectorError
from dualwrite.model.maps import Side
from httpfaults import HttpFaults

from conftest import Backend, BackendFactory


@pytest.fixture
def cap(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cap]:
    yield from running_cap(monkeypatch)


@pytest.fixture
def crm(make_backend: BackendFactory) -> Backend:
    return fresh_crm(make_backend)


def follow_until_verified(link: Link, follower: ODataFollower, *, timeout: float = 60) -> None:
    """Step the follower until verify is clean and a step writes nothing."""
    deadline = time.monotonic() + timeout
    while True:
        written = follower.step()
        [v] = link.verify()
        if v.ok and written == 0:
            return
        assert time.monotonic() < deadline, v.as_dict()


def test_changes_flow_both_ways_between_cap_and_postgresql(cap: Cap, crm: Backend,
                                                           tmp_path: Path) -> None:
    with cap_client(cap) as c:
        for i in range(1, 11):
            assert c.post("Customers", json={"ID": i, "name": f"erp {i}",
                                             "credit": i}).status_code == 201
    crm.insert("customers", [{"id": i, "name": f"crm {i}", "credit": Decimal(i)}
                             for i in range(11, 16)])
    with Link.open(write_config(tmp_path, cap.env_url(), crm)) as link:
        follower = ODataFollower(link.connectors, link.state, link.bound_maps(),
                                 {Side.LEFT: "modifiedAt"}, overlap=dt.timedelta(seconds=30),
                                 reconcile_every=1)
        follower.start()  # before the initial sync: what changes while it runs is followed
        link.sync_initial()
        assert follower.step() == 0  # nothing changed since the initial sync

        # through CAP's OData: an update, a create, a delete
        with cap_client(cap) as c:
            assert c.patch("Customers(3)", json={"name": "changed in CAP"}).status_code == 200
            assert c.post("Customers", json={"ID": 50, "name": "made in CAP",
                                             "credit": 5}).status_code == 201
            assert c.delete("Customers(4)").status_code == 204
        # in PostgreSQL, by the application itself (captured by the triggers): one
        # transaction of three changes
        with crm.app().begin() as conn:
            conn.execute(sa.text("UPDATE customers SET name = 'changed in PG' WHERE id = 7"))
            conn.execute(sa.text("INSERT INTO customers (id, name, credit) "
                                 "VALUES (60, 'made in PG', 6)"))
            conn.execute(sa.text("DELETE FROM customers WHERE id = 12"))
        follow_until_verified(link, follower)

        on_cap = cap_rows(cap)
        assert on_cap[3]["name"] == "changed in CAP" and on_cap[7]["name"] == "changed in PG"
        assert on_cap[60]["name"] == "made in PG" and 4 not in on_cap and 12 not in on_cap
        pg = {r["id"]: r["name"] for r in crm.rows("customers", ["id"], ["id", "name"])}
        assert pg[3] == "changed in CAP" and pg[50] == "made in CAP" and 4 not in pg
        assert sorted(pg) == sorted(on_cap)

        # both sides change one row between two steps: the map's master (left: CAP) wins
        with cap_client(cap) as c:
            assert c.patch("Customers(5)", json={"name": "CAP's"}).status_code == 200
        with crm.app().begin() as conn:
            conn.execute(sa.text("UPDATE customers SET name = 'PG''s' WHERE id = 5"))
        follow_until_verified(link, follower)
        assert cap_rows(cap)[5]["name"] == "CAP's"
        assert follower.step() == 0  # and nothing comes back: no echo


def test_a_row_cap_refuses_is_parked_and_the_rest_of_its_transaction_flows(
        cap: Cap, crm: Backend, tmp_path: Path) -> None:
    with Link.open(write_config(tmp_path, cap.env_url(), crm)) as link:
        follower = ODataFollower(link.connectors, link.state, link.bound_maps(),
                                 {Side.LEFT: "modifiedAt"})
        follower.start()
        link.sync_initial()
        with crm.app().begin() as conn:  # credit -1 is outside CAP's @assert.range
            conn.execute(sa.text("INSERT INTO customers (id, name, credit) "
                                 "VALUES (1, 'fine', 1), (2, 'refused', -1)"))
        assert follower.step() == 1
        assert sorted(cap_rows(cap)) == [1]
        [entry] = link.state.errors("customers")
        assert (entry.side, tuple(entry.key), entry.operation) == ("left", (2,), "create")
        assert "400" in entry.reason
        assert follower.step() == 0  # parked: not tried again by itself, the rest goes on


def test_a_failed_write_leaves_the_cursor_where_it_was(cap: Cap, crm: Backend,
                                                       tmp_path: Path) -> None:
    with Link.open(write_config(tmp_path, cap.env_url(), crm)) as link:
        follower = ODataFollower(link.connectors, link.state, link.bound_maps(),
                                 {Side.LEFT: "modifiedAt"})
        follower.start()
        link.sync_initial()
        with cap_client(cap) as c:
            assert c.post("Customers", json={"ID": 1, "name": "made in CAP"}).status_code \
                == 201
        # the CRM table is gone for a moment: the step fails, and reads the change again
        with crm.app().begin() as conn:
            conn.execute(sa.text("ALTER TABLE customers RENAME TO customers_away"))
        crm.connector.forget_schema()
        with pytest.raises(Exception, match="customers"):
            follower.step()
        with crm.app().begin() as conn:
            conn.execute(sa.text("ALTER TABLE customers_away RENAME TO customers"))
        crm.connector.forget_schema()
        assert follower.step() == 1
        assert [r["name"] for r in crm.rows("customers", ["id"], ["name"])] == ["made in CAP"]


def test_following_through_a_faulty_connection_loses_nothing(cap: Cap, crm: Backend,
                                                             tmp_path: Path) -> None:
    with HttpFaults(cap.root) as proxy, Link.open(write_config(
            tmp_path, "odata+http://dualwrite:${CAP_PASSWORD}@"
            + proxy.root.split("://", 1)[1], crm)) as link:
        follower = ODataFollower(link.connectors, link.state, link.bound_maps(),
                                 {Side.LEFT: "modifiedAt"})
        follower.start()
        link.sync_initial()
        with crm.app().begin() as conn:
            conn.execute(sa.text("INSERT INTO customers (id, name) VALUES (1, 'one'), "
                                 "(2, 'two')"))
        with cap_client(cap) as c:
            assert c.post("Customers", json={"ID": 3, "name": "three"}).status_code == 201
        proxy.fail("GET", "Customers", "500")  # a poll answered 500: retried at once
        proxy.fail("POST", r"\$batch", "drop")  # the change set's connection dropped
        with pytest.raises(TransientConnectorError, match="dropped"):
            follower.step()
        follow_until_verified(link, follower)
        assert proxy.pending() == 0
    assert {k: v["name"] for k, v in cap_rows(cap).items()} == {1: "one", 2: "two",
                                                                3: "three"}
    assert link.state.errors("customers") == []


def test_a_new_follower_goes_on_from_the_position_kept(cap: Cap, crm: Backend,
                                                       tmp_path: Path) -> None:
    config = write_config(tmp_path, cap.env_url(), crm)
    with Link.open(config) as link:
        follower = ODataFollower(link.connectors, link.state, link.bound_maps(),
                                 {Side.LEFT: "modifiedAt"})
        follower.start()
        link.sync_initial()
    # while no follower runs: a change in CAP, and one in PostgreSQL; the position kept
    # is "from the first row" (CAP was empty), which a second start must not move to now
    with Link.open(config) as link:
        assert link.state.get_checkpoint("customers", "odata-follow")[1] == {
            "started": True, "method": "poll", "modified": "modifiedAt", "delta_link": None,
            "poll": {"since": None, "seen": [], "echoes": []}}
    with cap_client(cap) as c:
        assert c.post("Customers", json={"ID": 1, "name": "while stopped"}).status_code == 201
    with crm.app().begin() as conn:
        conn.execute(sa.text("INSERT INTO customers (id, name) VALUES (2, 'also')"))
    with Link.open(config) as link:
        follower = ODataFollower(link.connectors, link.state, link.bound_maps(),
                                 {Side.LEFT: "modifiedAt"})
        follower.start()  # a second start keeps the first one's position
        follow_until_verified(link, follower)
    assert {k: v["name"] for k, v in cap_rows(cap).items()} == {1: "while stopped",
                                                                2: "also"}


def test_a_map_with_a_filter_is_refused_saying_why(cap: Cap, crm: Backend,
                                                   tmp_path: Path) -> None:
    config = write_config(tmp_path, cap.env_url(), crm)
    (tmp_path / "maps" / "customers.yaml").write_text(
        CUSTOMERS_MAP + "filter: {left: \"credit gt 0\"}\n")
    with Link.open(config) as link, pytest.raises(ConfigError) as info:
        ODataFollower(link.connectors, link.state, link.bound_maps(),
                      {Side.LEFT: "modifiedAt"})
    assert "has a filter" in str(info.value)
