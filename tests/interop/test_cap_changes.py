"""Reading the changes of a CAP entity set: CAP applies no change tracking, so its
`managed` modifiedAt is polled (overlap window, de-duplication, dualwrite's own writes not
read back), and deletions are found by a key-only read."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from cap_process import Cap, cap_client, running_cap
from dualwrite.connectors import connect
from dualwrite.connectors.odata import ODataConnector
from dualwrite.connectors.odata.changes import ModifiedPoll, RowChange, deleted_keys
from dualwrite.engine.config import resolve_url

COLUMNS = ["ID", "name", "credit"]


@pytest.fixture
def cap(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cap]:
    yield from running_cap(monkeypatch)


@pytest.fixture
def erp(cap: Cap) -> Iterator[ODataConnector]:
    c = connect("erp", resolve_url(cap.env_url(), Path(".")))
    assert isinstance(c, ODataConnector)
    with c:
        yield c


def upserts(changes: list[RowChange]) -> dict[int, str]:
    assert all(c.op == "upsert" and c.values is not None for c in changes), changes
    return {c.key[0]: c.values["name"] for c in changes if c.values is not None}


def test_cap_is_polled_by_modified_at(cap: Cap, erp: ODataConnector) -> None:
    assert erp.probe_changes("Customers", "modifiedAt") == (
        "poll", "polling modifiedAt (the service offers no delta links)")
    method, why = erp.probe_changes("Customers", None)
    assert method is None and "modified:" in why
    assert erp.start_delta("Customers", COLUMNS) is None


def test_polling_sees_each_change_once_and_not_dualwrites_own(cap: Cap,
                                                             erp: ODataConnector) -> None:
    poll = ModifiedPoll(overlap=dt.timedelta(seconds=30))  # every row stays in the window
    with cap_client(cap) as c:
        for i in (1, 2, 3):
            assert c.post("Customers", json={"ID": i, "name": f"app {i}"}).status_code == 201
    assert upserts(erp.poll_changes("Customers", COLUMNS, "modifiedAt", poll)) == {
        1: "app 1", 2: "app 2", 3: "app 3"}
    # read again within the overlap window: nothing new
    assert erp.poll_changes("Customers", COLUMNS, "modifiedAt", poll) == []
    with cap_client(cap) as c:
        assert c.patch("Customers(2)", json={"name": "app 2b"}).status_code == 200
    assert upserts(erp.poll_changes("Customers", COLUMNS, "modifiedAt", poll)) == {
        2: "app 2b"}
    # dualwrite's own writes: stamped by CAP, noted as echoes, not read back as changes
    erp.return_written = True
    with erp.transaction() as tx:
        tx.insert("Customers", ["ID", "name"], [(4, "dualwrite 4")])
        tx.update("Customers", ["ID"], ["name"], [((1,), ("dualwrite 1",))])
    written = tx.written  # type: ignore[attr-defined]
    assert sorted(e["ID"] for _, e in written) == [1, 4]
    for _, entity in written:
        poll.expect_echo((entity["ID"],), entity["modifiedAt"])
    with cap_client(cap) as c:
        assert c.patch("Customers(3)", json={"name": "app 3b"}).status_code == 200
    assert upserts(erp.poll_changes("Customers", COLUMNS, "modifiedAt", poll)) == {
        3: "app 3b"}


def test_a_deletion_is_found_by_the_key_only_read(cap: Cap, erp: ODataConnector) -> None:
    with cap_client(cap) as c:
        for i in (1, 2, 3):
            assert c.post("Customers", json={"ID": i, "name": f"app {i}"}).status_code == 201
        assert c.delete("Customers(2)").status_code == 204
    present = [r for b in erp.read("Customers", ["ID"], key=["ID"]) for r in b]
    assert deleted_keys([(1,), (2,), (3,)], present) == [RowChange("delete", (2,))]
