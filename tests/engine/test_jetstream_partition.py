"""The JetStream transport's pure parts: partitions, names, the messages' encoding."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest

from dualwrite.connectors.capture import Change
from dualwrite.engine.jetstream.partition import (
    Names,
    decode,
    decode_barrier,
    encode_barrier,
    encode_marker,
    encode_transaction,
    partition_of,
    partitions_of,
)


def test_a_row_has_one_partition_whichever_side_its_key_was_logged_on() -> None:
    # an integer key on one side, a decimal one on the other, both read from JSON
    for k in range(200):
        assert partition_of("items", [k], 8) == partition_of("items", [Decimal(k)], 8)
        assert partition_of("items", [k], 8) == partition_of("items", [Decimal(f"{k}.00")], 8)
    assert partition_of("items", ["A-1", 2], 8) == partition_of("items", ["A-1", Decimal(2)], 8)
    spread = {partition_of("items", [k], 8) for k in range(200)}
    assert spread == set(range(8))  # keys spread over every partition


def test_a_transaction_message_keeps_the_logged_json_text_and_round_trips() -> None:
    at = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
    changes = [Change(5, "items", "901", "I", "[1]", at=at, new_json='{"id": 1, "q": 1.10}'),
               Change(6, "items", "901", "U", "[2]", at=at, old_json='{"id": 2}',
                      new_json='{"id": 2, "q": null}')]
    changes[1].version = "v2"
    parts = partitions_of(changes, 4)
    m = decode(encode_transaction("left", "901", changes, parts))
    assert (m.side, m.txid, m.home) == ("left", "901", None)
    assert m.changes is not None
    got = [(c.seq, c.map, c.txid, c.op, c.key, c.old_json, c.new_json, c.at, c.version)
           for c in m.changes]
    assert got == [(5, "items", "901", "I", (1,), None, '{"id": 1, "q": 1.10}', at, ""),
                   (6, "items", "901", "U", (2,), '{"id": 2}', '{"id": 2, "q": null}', at,
                    "v2")]
    assert m.changes[0].new == {"id": 1, "q": Decimal("1.10")}  # decimals stay exact
    marker = decode(encode_marker("right", "77", 3))
    assert (marker.side, marker.txid, marker.changes, marker.home) == ("right", "77", None, 3)
    with pytest.raises(ValueError):
        decode(b'{"f": 99}')


def test_barrier_headers_and_names() -> None:
    assert decode_barrier(encode_barrier({3: 120, 1: 7})) == {1: 7, 3: 120}
    assert decode_barrier(None) == {}
    n = Names("erp <-> crm.main", 4)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", n.stream)
    assert n.subject(2).startswith("dualwrite.") and n.subject(2).endswith(".p2")
    assert " " not in n.subject(2) and n.subject(2).count(".") == 2
    assert Names("a", 4).stream != Names("b", 4).stream
    # two links of one name (two state stores) on one broker: a stream each
    assert Names("a", 4, "id-1").stream != Names("a", 4, "id-2").stream
    assert n.msg_id("erp->crm", "9") != n.msg_id("crm->erp", "9")
    assert n.msg_id("erp->crm", "9", marker=2) != n.msg_id("erp->crm", "9")
