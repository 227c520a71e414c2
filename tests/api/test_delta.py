"""OData change tracking over a real link: `Prefer: odata.track-changes`, delta links, and
what they tell: rows created, changed or deleted by the application's own SQL, through the
API, and by the applier from the other side; 410 for tokens that cannot be resumed; no
change skipped when transactions commit out of order; paging of a large delta."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import sqlalchemy as sa
from odata_fixtures import make_backend as make_fake_backend
from odata_fixtures import open_client
from starlette.testclient import TestClient

from capture_fixtures import drain
from dualwrite.api.server import create_server_app
from dualwrite.connectors.delta import DeltaJournal
from dualwrite.engine.delta import ChangeFeed
from dualwrite.engine.link import Link
from dualwrite.engine.security import create_token
from dualwrite.model.maps import Side
from dualwrite.testing.backends import pair_id, pairs
from serve_process import serve

from conftest import Backend, BackendFactory
from sync_fixtures import Pair, erp_customer, make_pair, seed_groups

PAIRS = pairs(needs=("capture",), same="none")
TRACK = {"Prefer": "odata.track-changes"}

Served = tuple[Pair, Link, TestClient, dict[str, str]]


@pytest.fixture(params=PAIRS, ids=pair_id)
def served(request: pytest.FixtureRequest, make_backend: BackendFactory,
           tmp_path: Path) -> Iterator[Served]:
    left, right = request.param
    pair = make_pair(make_backend, tmp_path, left, right, batch_size=500)
    seed_groups(pair)
    pair.erp.insert("Customers", [erp_customer(i) for i in range(6)])
    with pair.link() as link:
        link.start_maps()
        token = create_token(link.state, "odata-user", role="writer", licences=["accounts"])
        with TestClient(create_server_app(link)) as client:
            yield pair, link, client, {"Authorization": f"Bearer {token}"}


def sql(backend: Backend, text: str) -> None:
    """Run ``text`` as the application would; "names" are quoted as the database wants."""
    backend.app_sql(text.replace('"', "`") if backend.kind == "mariadb" else text)


def relative(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def track(client: TestClient, auth: dict[str, str], url: str, *, page: int | None = None
          ) -> tuple[list[dict[str, Any]], str]:
    """Read a set with change tracking, following next links; (entities, delta link)."""
    headers = {**auth, **TRACK}
    if page:
        headers["Prefer"] += f", odata.maxpagesize={page}"
    out: list[dict[str, Any]] = []
    while True:
        r = client.get(url, headers=headers)
        assert r.status_code == 200, r.text
        assert "odata.track-changes" in r.headers["Preference-Applied"]
        doc = r.json()
        out += doc["value"]
        if "@odata.nextLink" in doc:
            assert "@odata.deltaLink" not in doc  # only the last page has it
            url = relative(doc["@odata.nextLink"])
            continue
        return out, relative(doc["@odata.deltaLink"])


def delta(client: TestClient, auth: dict[str, str], link: str, *, page: int | None = None
          ) -> tuple[list[dict[str, Any]], str, int]:
    """Follow a delta link through its pages; (entries, the next delta link, pages)."""
    headers = dict(auth)
    if page:
        headers["Prefer"] = f"odata.maxpagesize={page}"
    out: list[dict[str, Any]] = []
    pages = 0
    url = link
    while True:
        r = client.get(url, headers=headers)
        assert r.status_code == 200, r.text
        doc = r.json()
        pages += 1
        assert doc["@odata.context"].endswith("/$delta")
        out += doc["value"]
        if "@odata.nextLink" in doc:
            url = relative(doc["@odata.nextLink"])
            continue
        return out, relative(doc["@odata.deltaLink"]), pages


def customer_url(company: str, account: str) -> str:
    return f"/odata/erp/Customers(dataAreaId='{company}',ACCOUNT='{account}')"


def test_changes_by_sql_api_and_applier_are_told_in_order_with_etags(served: Served) -> None:
    pair, link, client, auth = served
    entities, link_url = track(client, auth, "/odata/erp/Customers", page=4)
    assert len(entities) == 6
    assert delta(client, auth, link_url)[0] == []  # nothing happened yet

    # the application's own SQL: a create and an update
    sql(pair.erp, 'INSERT INTO "Customers" ("dataAreaId", "ACCOUNT", "NAME", "PARTYTYPE") '
        "VALUES ('usmf', 'C-0100', 'By SQL', 'Organization')")
    sql(pair.erp, """UPDATE "Customers" SET "NAME" = 'Renamed by SQL' WHERE "ACCOUNT" = 'C-0001'""")
    # through the API
    r = client.patch(customer_url("demf", "C-0002"), headers=auth, json={"NAME": "By OData"})
    assert r.status_code == 204, r.text
    # by the applier, from a change the CRM application made in its own database
    drain(link.applier())  # the ERP changes above reach the CRM first
    sql(pair.crm, "UPDATE accounts SET name = 'From the CRM' WHERE accountnumber = 'C-0003'")
    drain(link.applier())
    assert pair.customers()[("usmf", "C-0003")]["NAME"] == "From the CRM"
    # a deletion
    sql(pair.erp, """DELETE FROM "Customers" WHERE "ACCOUNT" = 'C-0004'""")

    entries, link_url, _ = delta(client, auth, link_url)
    told = [(e.get("dataAreaId"), e.get("ACCOUNT"), "@removed" in e) for e in entries]
    assert told == [("usmf", "C-0100", False), ("usmf", "C-0001", False),
                    ("demf", "C-0002", False), ("usmf", "C-0003", False),
                    ("demf", "C-0004", True)]
    for e in entries[:4]:
        now = client.get(customer_url(e["dataAreaId"], e["ACCOUNT"]), headers=auth)
        assert e["@odata.etag"] == now.headers["ETag"]  # the row as it is now
        assert e["NAME"] == now.json()["NAME"]
        assert e["@odata.id"].endswith(customer_url(e["dataAreaId"], e["ACCOUNT"])
                                       .removeprefix("/odata/erp/"))
    removed = entries[4]
    assert removed["@removed"] == {"reason": "deleted"}
    assert removed["@odata.id"].endswith("Customers(dataAreaId='demf',ACCOUNT='C-0004')")
    assert delta(client, auth, link_url)[0] == []  # the fresh link starts after them

    # the other side of the link is tracked as well (MariaDB or SQLite there)
    accounts, crm_link = track(client, auth, "/odata/crm/accounts")
    sql(pair.crm, "UPDATE accounts SET name = 'Again' WHERE accountnumber = 'C-0005'")
    r = client.post("/odata/crm/accounts", headers=auth, json={
        "company": "usmf", "accountnumber": "C-0200", "name": "Posted", "typecode": 3})
    assert r.status_code == 201, r.text
    entries, crm_link, _ = delta(client, auth, crm_link)
    assert [(e["accountnumber"], e["name"]) for e in entries] == [("C-0005", "Again"),
                                                                  ("C-0200", "Posted")]
    assert all(e["@odata.etag"] for e in entries)
    # a change of the entity key: the old key is deleted, the new one created
    old_id = next(a["accountid"] for a in accounts if a["accountnumber"] == "C-0004")
    sql(pair.crm, "UPDATE accounts SET accountid = 'new-id-4' WHERE accountnumber = 'C-0004'")
    entries, _, _ = delta(client, auth, crm_link)
    assert sorted((e["accountid"], "@removed" in e) for e in entries) == sorted(
        [(old_id, True), ("new-id-4", False)])


def test_several_changes_of_one_row_are_told_once_as_it_is_now(served: Served) -> None:
    _, _, client, auth = served
    _, link_url = track(client, auth, "/odata/erp/Customers")
    url = customer_url("usmf", "C-0001")
    for n in range(3):
        assert client.patch(url, headers=auth, json={"NAME": f"v{n}"}).status_code == 204
    assert client.patch(customer_url("demf", "C-0002"), headers=auth,
                        json={"NAME": "other"}).status_code == 204
    assert client.patch(url, headers=auth, json={"NAME": "last"}).status_code == 204
    entries, _, _ = delta(client, auth, link_url)
    # in the order of each row's last change
    assert [(e["ACCOUNT"], e["NAME"]) for e in entries] == [("C-0002", "other"),
                                                            ("C-0001", "last")]


def test_filter_and_select_are_kept_in_the_delta_link(served: Served) -> None:
    pair, _, client, auth = served
    entities, link_url = track(
        client, auth, "/odata/erp/Customers?$filter=dataAreaId eq 'usmf'&$select=NAME")
    assert {e["ACCOUNT"] for e in entities} == {"C-0001", "C-0003", "C-0005"}
    query = parse_qs(urlsplit(link_url).query)
    assert query["$filter"] == ["dataAreaId eq 'usmf'"] and query["$select"] == ["NAME"]
    assert client.patch(customer_url("usmf", "C-0001"), headers=auth,
                        json={"NAME": "kept"}).status_code == 204
    assert client.patch(customer_url("demf", "C-0002"), headers=auth,
                        json={"NAME": "not in the set"}).status_code == 204
    # leaves the filter: removed from the client's set ("changed"), though the row exists
    sql(pair.erp, """UPDATE "Customers" SET "dataAreaId" = 'demf' WHERE "ACCOUNT" = 'C-0005'""")
    entries, _, _ = delta(client, auth, link_url)
    by_account = {(e["ACCOUNT"], e.get("dataAreaId")): e for e in entries}
    kept = by_account[("C-0001", "usmf")]
    assert set(kept) - {"@odata.id", "@odata.etag"} == {"NAME", "dataAreaId", "ACCOUNT"}
    assert kept["NAME"] == "kept"
    assert by_account[("C-0005", "usmf")]["@removed"] == {"reason": "deleted"}  # old key
    assert by_account[("C-0005", "demf")]["@removed"] == {"reason": "changed"}  # new key
    assert by_account[("C-0002", "demf")]["@removed"] == {"reason": "changed"}


def _gone(client: TestClient, auth: dict[str, str], url: str) -> dict[str, Any]:
    r = client.get(url, headers=auth)
    assert r.status_code == 410, r.text
    error = r.json()["error"]
    assert error["code"] == "Gone" and error["target"] == "$deltatoken"
    assert error["innererror"]["hint"]
    return error


def test_unknown_forged_foreign_and_expired_tokens_are_410(served: Served) -> None:
    _, link, client, auth = served
    _, link_url = track(client, auth, "/odata/erp/Customers")
    token = parse_qs(urlsplit(link_url).query)["$deltatoken"][0]
    position, _, mark = token.rpartition("~")
    epoch, batch, id_ = position.split(".")
    for bad in ("nonsense", f"{position}~deadbeef", f"x.{batch}.{id_}~{mark}",
                f"{epoch}.{int(batch) + 1000}.{id_}~{mark}", f"{epoch}.-1.{id_}~{mark}"):
        _gone(client, auth, f"/odata/erp/Customers?$deltatoken={bad}")
    # a token of one entity set is not one of another
    _, groups_link = track(client, auth, "/odata/erp/Groups")
    groups_token = parse_qs(urlsplit(groups_link).query)["$deltatoken"][0]
    _gone(client, auth, f"/odata/erp/Customers?$deltatoken={groups_token}")

    # expired: the changes after the token were pruned
    assert client.patch(customer_url("usmf", "C-0001"), headers=auth,
                        json={"NAME": "then pruned"}).status_code == 204
    feed = ChangeFeed(link)
    feed.housekeep(retention=86_400)  # within the retention: kept
    assert [e["NAME"] for e in delta(client, auth, link_url)[0]] == ["then pruned"]
    feed.housekeep(retention=1e-6)  # everything sequenced before now goes
    error = _gone(client, auth, link_url)
    assert "retention" in error["message"]
    # a fresh read gives a link that works
    _, fresh = track(client, auth, "/odata/erp/Customers")
    assert delta(client, auth, fresh)[0] == []


def test_entity_sets_of_stopped_maps_are_not_tracked(served: Served) -> None:
    _, link, client, auth = served
    _, link_url = track(client, auth, "/odata/erp/Customers")
    journal = DeltaJournal(link.connectors[Side.LEFT])
    assert "Customers" in journal.tracked() and journal.installed("Customers")
    link.stop_maps(["customers"])
    link.state.map_states()  # the server's link shares the store: see it at once
    r = client.get("/odata/erp/Customers", headers={**auth, **TRACK})
    assert r.status_code == 200, r.text
    assert "Preference-Applied" not in r.headers and "@odata.deltaLink" not in r.json()
    error = _gone(client, auth, link_url)
    assert "not tracked" in error["message"]
    # serve's housekeeping (every 5 s, or this call) removes the journal triggers of the
    # stopped map's table
    ChangeFeed(link).housekeep(retention=86_400)
    assert "Customers" not in journal.tracked() and not journal.installed("Customers")
    # started and tracked again: a token from before is still refused (changes made while
    # it was not tracked are in no journal)
    link.start_maps(["customers"])
    _, fresh = track(client, auth, "/odata/erp/Customers")
    assert "older than the tracking" in _gone(client, auth, link_url)["message"]
    assert delta(client, auth, fresh)[0] == []


@pytest.fixture
def served_pg_maria(make_backend: BackendFactory, tmp_path: Path) -> Iterator[Served]:
    """The ERP on PostgreSQL, the CRM on MariaDB (where transactions do interleave)."""
    pair = make_pair(make_backend, tmp_path, "postgresql", "mariadb", batch_size=500)
    seed_groups(pair)
    pair.erp.insert("Customers", [erp_customer(i) for i in range(6)])
    with pair.link() as link:
        link.start_maps()
        token = create_token(link.state, "odata-user", role="writer", licences=["accounts"])
        with TestClient(create_server_app(link)) as client:
            yield pair, link, client, {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("env", ["erp", "crm"], ids=["postgresql", "mariadb"])
def test_interleaved_transactions_are_never_skipped(served_pg_maria: Served, env: str) -> None:
    """T1 writes first and commits last: its change has the smaller journal id, yet it is
    told by the delta read after it commits (a position by write order would skip it), and
    a delta read while T1 is open does not wait for it."""
    pair, _, client, auth = served_pg_maria
    db, table, key, name = (pair.erp, "Customers", "ACCOUNT", "NAME") if env == "erp" else \
        (pair.crm, "accounts", "accountnumber", "name")
    _, link_url = track(client, auth, f"/odata/{env}/{table}")
    # by primary key: a scan would lock T1's row on MariaDB, and T2 would wait for T1
    if env == "erp":
        pk = {a: ("demf" if a == "C-0002" else "usmf", a) for a in ("C-0001", "C-0002")}
        update = 'UPDATE "Customers" SET "NAME" = :v WHERE "dataAreaId" = :c AND "ACCOUNT" = :k'
    else:
        ids = {r["accountnumber"]: r["accountid"] for r in pair.accounts().values()}
        pk = {a: ("", ids[a]) for a in ("C-0001", "C-0002")}
        update = "UPDATE `accounts` SET `name` = :v WHERE `accountid` = :k AND :c = :c"
    engine = sa.create_engine(db.url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as t1:
            tx = t1.begin()
            c1, k1 = pk["C-0001"]
            c2, k2 = pk["C-0002"]
            t1.execute(sa.text(update), {"v": "T1", "c": c1, "k": k1})
            db.app_sql(update, {"v": "T2", "c": c2, "k": k2})  # T2: begins, writes, commits
            got: list[Any] = []
            reader = threading.Thread(target=lambda: got.append(delta(client, auth,
                                                                      link_url)))
            reader.start()
            reader.join(timeout=60)
            assert not reader.is_alive(), "the delta read waited for an open transaction"
            entries, link_url, _ = got[0]
            assert [(e[key], e[name]) for e in entries] == [("C-0002", "T2")]
            tx.commit()
    finally:
        engine.dispose()
    entries, _, _ = delta(client, auth, link_url)
    assert [(e[key], e[name]) for e in entries] == [("C-0001", "T1")]
    # T1's journal row was written first (a smaller id) and sequenced after T2's: a
    # position by write order would have handed out T2's id and skipped T1's row
    with sa.create_engine(db.url, poolclass=sa.pool.NullPool).connect() as conn:
        journal = conn.execute(sa.text(
            "SELECT id, batch, k FROM dualwrite_delta WHERE tbl = :t ORDER BY id"),
            {"t": table}).all()
    t1 = next(r for r in reversed(journal) if str(k1) in r[2])
    t2 = next(r for r in reversed(journal) if str(k2) in r[2])
    assert t1[0] < t2[0] and t1[1] > t2[1]


def test_a_large_delta_is_paged(served: Served, long_run: bool) -> None:
    pair, _, client, auth = served
    _, link_url = track(client, auth, "/odata/erp/Customers")
    n = 5000 if long_run else 1200
    pair.erp.insert("Customers", [erp_customer(i) for i in range(1000, 1000 + n)])
    entries, after, pages = delta(client, auth, link_url, page=500)
    assert pages == -(-n // 500)
    accounts = [e["ACCOUNT"] for e in entries]
    assert len(accounts) == len(set(accounts)) == n
    assert accounts == sorted(accounts)  # in the order they were written
    assert delta(client, auth, after)[0] == []


def test_a_delta_link_can_be_read_again_and_speaks_4_0_to_a_4_0_client(served: Served
                                                                        ) -> None:
    pair, _, client, auth = served
    _, link_url = track(client, auth, "/odata/erp/Customers")
    sql(pair.erp, """DELETE FROM "Customers" WHERE "ACCOUNT" = 'C-0003'""")
    first, _, _ = delta(client, auth, link_url)
    again, _, _ = delta(client, auth, link_url)  # a token is a position, not a cursor
    assert first == again and len(first) == 1
    r = client.get(link_url, headers={**auth, "OData-MaxVersion": "4.0"})
    assert r.status_code == 200 and r.headers["OData-Version"] == "4.0"
    [removed] = r.json()["value"]
    assert removed["@odata.context"].endswith("#Customers/$deletedEntity")
    assert removed["reason"] == "deleted" and removed["id"].endswith(
        "Customers(dataAreaId='usmf',ACCOUNT='C-0003')")


def test_a_backend_without_change_tracking_answers_without_it() -> None:
    """The spec lets a service ignore the preference: no Preference-Applied, no delta link;
    a delta token is then one it never gave (410)."""
    backend = make_fake_backend()
    for client in open_client(backend):
        r = client.get("/odata/erp/products", headers=TRACK)
        assert r.status_code == 200, r.text
        assert "Preference-Applied" not in r.headers
        assert all("@odata.deltaLink" not in doc for doc in [r.json()])
        _gone(client, {}, "/odata/erp/products?$deltatoken=x.1.1~00000000")


def test_a_real_serve_prunes_to_its_configured_retention(make_backend: BackendFactory,
                                                         tmp_path: Path) -> None:
    """`dualwrite serve` keeps the journals itself: with `serve.delta_retention_seconds: 1`,
    a delta link whose following changes are older than that answers 410 without anyone
    but serve's housekeeping touching the journal; a fresh link works."""

    def retention(cfg: dict[str, Any]) -> None:
        cfg["serve"] = {"delta_retention_seconds": 1}

    pair = make_pair(make_backend, tmp_path, "postgresql", "mariadb", extra=retention)
    seed_groups(pair)
    pair.erp.insert("Customers", [erp_customer(i) for i in range(4)])
    with pair.link() as link:
        link.start_maps()
        token = create_token(link.state, "odata-user", role="reader")
    auth = {"Authorization": f"Bearer {token}"}
    with serve(pair.config) as served, httpx.Client(base_url=served.url, headers=auth,
                                                    timeout=30) as http:
        r = http.get("/odata/crm/accounts", headers=TRACK)
        assert r.status_code == 200, r.text
        link_url = r.json()["@odata.deltaLink"]
        sql(pair.crm, "UPDATE accounts SET name = 'pruned soon' WHERE accountnumber = 'C-0001'")
        told = http.get(link_url)  # sequences the change: from now on it ages
        assert [e["name"] for e in told.json()["value"]] == ["pruned soon"]
        deadline = time.monotonic() + 60
        while (r := http.get(link_url)).status_code == 200:
            assert time.monotonic() < deadline, "serve did not prune within 60 s"
            time.sleep(0.2)  # polling a condition, with a deadline
        assert r.status_code == 410 and r.json()["error"]["code"] == "Gone"
        fresh = http.get("/odata/crm/accounts", headers=TRACK).json()["@odata.deltaLink"]
        assert http.get(fresh).json()["value"] == []


def test_purging_capture_removes_the_journal_and_the_applications_writes_go_on(
        served: Served) -> None:
    pair, link, client, auth = served
    _, before = track(client, auth, "/odata/erp/Customers")
    track(client, auth, "/odata/crm/accounts")
    removed = link.purge_capture()  # `maps stop --purge`; `uninstall` does it too
    for env in ("erp", "crm"):
        assert "table dualwrite_delta" in removed[env]
        assert any(x.startswith("trigger dw_") and x.endswith("_dxu") for x in removed[env])
    sql(pair.erp, """UPDATE "Customers" SET "NAME" = 'still writable' WHERE "ACCOUNT" = 'C-0001'""")
    sql(pair.crm, "UPDATE accounts SET name = 'still writable' WHERE accountnumber = 'C-0001'")
    assert pair.customers()[("usmf", "C-0001")]["NAME"] == "still writable"
    # started again, the set is tracked again: the journal is made anew (and a token from
    # the old one is refused)
    link.start_maps()
    _, link_url = track(client, auth, "/odata/erp/Customers")
    sql(pair.erp, """UPDATE "Customers" SET "NAME" = 'tracked again' WHERE "ACCOUNT" = 'C-0001'""")
    assert [e["NAME"] for e in delta(client, auth, link_url)[0]] == ["tracked again"]
    assert "another journal" in _gone(client, auth, before)["message"]
