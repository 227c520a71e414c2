"""dualwrite ↔ dualwrite: one link whose ERP environment is another dualwrite's `serve`
(its OData service for its own link's `erp`), the other side PostgreSQL. validate, initial
sync both ways through server paging and JSON $batch, verify."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
import yaml

import hub_fixtures
from capture_fixtures import Items
from dualwrite.engine.link import Link
from httpfaults import HttpFaults
from hub_fixtures import ITEMS_MAP
from serve_process import Served

from conftest import Backend, BackendFactory

#: the hub: another dualwrite's `serve` (tests/hub_fixtures.py)
hub = hub_fixtures.hub


def spoke_config(tmp_path: Path, hub_url: str, crm: Backend, batch_size: int) -> Path:
    root = tmp_path / "spoke"
    (root / "maps").mkdir(parents=True)
    (root / "maps" / "items.yaml").write_text(ITEMS_MAP)
    cfg = {"environments": {
               "hub": {"url": f"odata+{hub_url}/odata/erp/?token=${{HUB_TOKEN}}"},
               "crm": {"url": crm.url}},
           "link": {"left": "hub", "right": "crm"},
           "state": f"sqlite:///{root / 'state.db'}", "maps": ["maps/*.yaml"],
           "sync": {"batch_size": batch_size}}
    (root / "dualwrite.yaml").write_text(yaml.safe_dump(cfg))
    return root / "dualwrite.yaml"


def sync_and_verify(config: Path) -> None:
    with Link.open(config) as link:
        _, issues = link.validate()
        assert [i for i in issues if i.is_error] == []
        [result] = link.sync_initial(master="left")
        assert result.created == {"left": 7, "right": 19}, result.as_dict()
        assert result.updated == {"left": 0, "right": 4}, result.as_dict()
        [v] = link.verify()
        assert v.ok, v.as_dict()


def test_initial_sync_both_ways_with_another_dualwrites_serve(
        hub: tuple[Items, Served], make_backend: BackendFactory, tmp_path: Path) -> None:
    items, served = hub
    items.left.insert("items", [{"id": i, "name": f"hub {i}", "qty": i} for i in range(1, 24)])
    crm = make_backend("postgresql", "dualwrite_test_b")
    crm.connector.clear_link()
    md = sa.MetaData()
    sa.Table("items", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("name", sa.String(40), nullable=False), sa.Column("qty", sa.Integer))
    crm.create(md)
    crm.insert("items", [{"id": i, "name": f"crm {i}", "qty": None} for i in range(20, 31)])
    with HttpFaults(served.url + "/odata/erp/") as proxy:  # passes all: counts the requests
        config = spoke_config(tmp_path, proxy.root.removesuffix("/odata/erp/"), crm,
                              batch_size=7)
        sync_and_verify(config)
    reads = [rel for method, rel, _, _ in proxy.seen
             if method == "GET" and rel.startswith("items?")]
    # server-driven paging: the rows (23 on the hub) came in pages of 7 through nextLinks
    # (read for the sync and again for verify)
    assert len(reads) >= 8 and any("skiptoken" in r or "skip" in r for r in reads), reads

    assert sorted(items.rows("left")) == list(range(1, 31))
    # the rows the spoke created went through the hub's live sync: on both of its sides
    # (its seed rows were written past dualwrite, so only its left side has those)
    assert items.rows("right") == {i: ("crm " + str(i), None) for i in range(24, 31)}
    assert items.rows("left")[27] == ("crm 27", None)
    assert {r["id"]: r["name"] for r in crm.rows("items", ["id"], ["id", "name"])}[21] \
        == "hub 21"


def test_changes_follow_both_ways_through_the_hubs_delta_links(
        hub: tuple[Items, Served], make_backend: BackendFactory, tmp_path: Path) -> None:
    """The spoke follows the hub by its delta links (the hub's `serve` tracks the tables of
    its started maps): changes made on the hub — through its OData API and by its
    application's own SQL — reach PostgreSQL, and PostgreSQL's reach the hub."""
    import datetime as dt
    import os
    import time

    import httpx

    from dualwrite.engine.odata_follow import ODataFollower

    items, served = hub
    items.left.insert("items", [{"id": i, "name": f"hub {i}", "qty": i} for i in range(1, 11)])
    crm = make_backend("postgresql", "dualwrite_test_b")
    crm.connector.clear_link()
    md = sa.MetaData()
    sa.Table("items", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("name", sa.String(40), nullable=False), sa.Column("qty", sa.Integer))
    crm.create(md)
    config = spoke_config(tmp_path, served.url, crm, batch_size=5)
    with Link.open(config) as link:
        # no modified-timestamp property is named: only delta links can follow the hub
        follower = ODataFollower(link.connectors, link.state, link.bound_maps(), {},
                                 overlap=dt.timedelta(seconds=5), reconcile_every=1)
        assert [f.method for f in follower.maps] == ["delta"]
        follower.start()
        link.sync_initial(master="left")

        def follow_until_verified() -> None:
            deadline = time.monotonic() + 60
            while True:
                written = follower.step()
                [v] = link.verify()
                if v.ok and written == 0:
                    return
                assert time.monotonic() < deadline, v.as_dict()

        follow_until_verified()
        headers = {"Authorization": f"Bearer {os.environ['HUB_TOKEN']}"}
        with httpx.Client(base_url=served.url + "/odata/erp/", headers=headers) as c:
            assert c.patch("items(3)", json={"name": "changed through the hub"}).is_success
            assert c.post("items", json={"id": 40, "name": "made on the hub",
                                         "qty": 4}).is_success
            assert c.delete("items(4)").is_success
        items.left.app_sql("UPDATE items SET qty = 700 WHERE id = 7")  # the hub's own SQL
        with crm.app().begin() as conn:
            conn.execute(sa.text("UPDATE items SET name = 'changed in PG' WHERE id = 8"))
            conn.execute(sa.text("INSERT INTO items (id, name, qty) VALUES (60, 'made in PG', 6)"))
            conn.execute(sa.text("DELETE FROM items WHERE id = 9"))
        follow_until_verified()

    hub_rows = items.rows("left")
    pg = {r["id"]: (r["name"], r["qty"]) for r in crm.rows("items", ["id"])}
    assert pg == hub_rows
    assert pg[3][0] == "changed through the hub" and pg[40] == ("made on the hub", 4)
    assert pg[7][1] == 700 and 4 not in pg
    assert hub_rows[8][0] == "changed in PG" and hub_rows[60] == ("made in PG", 6)
    assert 9 not in hub_rows
