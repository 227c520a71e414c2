"""Reading changes of an OData entity set, the decisions alone (no service): the polling
cursor with its overlap window, de-duplication and echo suppression; key-only
reconciliation; delta pages in the OData 4.01 and 4.0 JSON forms; the choice of method."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from dualwrite.connectors.odata.changes import (
    ModifiedPoll,
    RowChange,
    applies_track_changes,
    choose_method,
    deleted_keys,
    key_from_id,
    parse_delta_page,
)
from dualwrite.connectors.odata.connector import decode

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
EDM = {"ID": "Edm.Int32", "name": "Edm.String", "company": "Edm.String", "no": "Edm.Int64"}


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def dec(p: str, v: Any) -> Any:
    return decode(EDM.get(p, ""), v)


def test_the_overlap_window_is_read_again_and_nothing_is_emitted_twice() -> None:
    poll = ModifiedPoll(overlap=dt.timedelta(seconds=5))
    assert poll.lower_bound() is None
    first = poll.take([((1,), at(0), {"ID": 1}), ((2,), at(10), {"ID": 2})])
    assert [c.key for c in first] == [(1,), (2,)]
    assert poll.since == at(10) and poll.lower_bound() == at(5)
    # the next poll reads from 5 s before: row 2 again (unchanged), a late row 3 stamped
    # inside the window, and row 2 changed again
    second = poll.take([((2,), at(10), {"ID": 2}), ((3,), at(7), {"ID": 3}),
                        ((2,), at(12), {"ID": 2, "name": "x"})])
    assert second == [RowChange("upsert", (3,), {"ID": 3}),
                      RowChange("upsert", (2,), {"ID": 2, "name": "x"})]
    assert poll.since == at(12)
    assert all(m >= at(7) for _, m in poll.seen)  # older than the window: forgotten


def test_dualwrites_own_writes_are_not_emitted_back() -> None:
    poll = ModifiedPoll()
    poll.take([((1,), at(0), {"ID": 1})])
    poll.expect_echo((2,), at(3))
    poll.expect_echo((1,), at(4))
    got = poll.take([((1,), at(4), {"ID": 1}), ((2,), at(3), {"ID": 2}),
                     ((2,), at(6), {"ID": 2, "name": "changed by the application after"})])
    assert got == [RowChange("upsert", (2,), {"ID": 2,
                                              "name": "changed by the application after"})]
    assert poll.since == at(6)


def test_key_only_reconciliation_finds_deletions() -> None:
    assert deleted_keys([(1,), (2,), (3,)], [(3,), (1,), (9,)]) == [RowChange("delete", (2,))]


def test_a_delta_page_in_the_401_form() -> None:
    page = parse_delta_page({
        "@context": "$metadata#Customers/$delta",
        "value": [
            {"ID": 1, "name": "new or changed"},
            {"@removed": {"reason": "deleted"}, "ID": 2},
            {"@removed": {"reason": "changed"}, "@id": "Customers(3)"},
            {"@context": "#Customers/$link", "source": "x", "relationship": "r",
             "target": "y"},
        ],
        "@deltaLink": "Customers?$deltatoken=abc"}, ["ID"], EDM, dec)
    assert page.changes == [RowChange("upsert", (1,), {"ID": 1, "name": "new or changed"}),
                            RowChange("delete", (2,)), RowChange("delete", (3,))]
    assert (page.next_link, page.delta_link) == (None, "Customers?$deltatoken=abc")


def test_a_delta_page_in_the_40_form_with_a_composite_key() -> None:
    key = ["company", "no"]
    page = parse_delta_page({
        "@odata.context": "$metadata#Orders/$delta",
        "value": [
            {"@odata.context": "$metadata#Orders/$deletedEntity",
             "id": "http://h/svc/Orders(company='O''B',no=5)", "reason": "deleted"},
            {"company": "A", "no": "7", "@odata.etag": "W/\"1\"", "name@odata.type": "x"}],
        "@odata.nextLink": "Orders?$skiptoken=2"}, key, EDM, dec)
    assert page.changes == [RowChange("delete", ("O'B", 5)),
                            RowChange("upsert", ("A", 7), {"company": "A", "no": 7})]
    assert (page.next_link, page.delta_link) == ("Orders?$skiptoken=2", None)


@pytest.mark.parametrize(("doc", "words"), [
    ({"values": []}, "`value` list"),
    ({"value": [{"name": "no key"}]}, "lacks its key"),
    ({"value": [{"@removed": {}}]}, "neither its key nor an id"),
    ({"value": [{"@removed": {}, "@id": "Customers"}]}, "no key in parentheses"),
])
def test_what_is_not_a_delta_page_is_named(doc: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_delta_page(doc, ["ID"], EDM, dec)


def test_key_from_id_reads_positional_and_named_keys() -> None:
    assert key_from_id("Customers(7)", ["ID"], EDM) == (7,)
    assert key_from_id("Orders(no=5,company='x,y')", ["company", "no"], EDM) == ("x,y", 5)
    with pytest.raises(ValueError, match="does not hold the 2"):
        key_from_id("Orders(5)", ["company", "no"], EDM)


def test_the_method_is_chosen_with_a_reason() -> None:
    assert applies_track_changes("odata.maxpagesize=100, odata.track-changes")
    assert not applies_track_changes(None) and not applies_track_changes("odata.maxpagesize=5")
    assert choose_method(True, None, ["ID"])[0] == "delta"
    assert choose_method(False, "modifiedAt", ["ID", "modifiedAt"])[0] == "poll"
    method, why = choose_method(False, "changed", ["ID", "modifiedAt"])
    assert method is None and "no property 'changed'" in why
    method, why = choose_method(False, None, ["ID"])
    assert method is None and "modified:" in why


def test_the_cursor_survives_a_new_process() -> None:
    poll = ModifiedPoll(overlap=dt.timedelta(seconds=5))
    poll.take([((1,), at(0), {"ID": 1}), ((2,), at(10), {"ID": 2})])
    poll.expect_echo((3,), at(11))
    again = ModifiedPoll.from_doc(poll.as_doc(), dt.timedelta(seconds=5))
    assert (again.since, again.seen, again.echoes) == (poll.since, poll.seen, poll.echoes)
    # what the first process saw or wrote is not a change to the second
    assert again.take([((2,), at(10), {"ID": 2}), ((3,), at(11), {"ID": 3})]) == []
