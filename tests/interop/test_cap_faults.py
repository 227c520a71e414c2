"""Bad answers from an OData environment (SAP CAP behind an HTTP fault proxy): 500s, dropped
connections, malformed JSON, 429 with Retry-After, answers that no longer fit $metadata, and
rows the service refuses. Each gives a clear error; what is transient is retried, what is
not is parked, and nothing is lost."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from cap_process import Cap, cap_client, cap_rows, fresh_crm, running_cap, write_config
from dualwrite.connectors import connect
from dualwrite.connectors.odata import ODataConnector
from dualwrite.engine.config import resolve_url
from dualwrite.engine.link import Link
from dualwrite.errors import (
    ConstraintViolation,
    TerminalConnectorError,
    TransientConnectorError,
)
from httpfaults import HttpFaults

from conftest import Backend, BackendFactory
from faultproxy import FaultProxy, Mode


@pytest.fixture
def cap(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cap]:
    yield from running_cap(monkeypatch)


@pytest.fixture
def crm(make_backend: BackendFactory) -> Backend:
    return fresh_crm(make_backend)


@pytest.fixture
def proxy(cap: Cap) -> Iterator[HttpFaults]:
    with HttpFaults(cap.root) as p:
        yield p


def env_url(proxy: HttpFaults, extra: str = "") -> str:
    host_path = proxy.root.split("://", 1)[1]
    return f"odata+http://dualwrite:${{CAP_PASSWORD}}@{host_path}{extra}"


def seed_cap(cap: Cap, ids: range) -> None:
    with cap_client(cap) as c:
        for i in ids:
            r = c.post("Customers", json={"ID": i, "name": f"erp {i}", "credit": i})
            assert r.status_code == 201, r.text


def connector(proxy: HttpFaults, extra: str = "") -> ODataConnector:
    c = connect("erp", resolve_url(env_url(proxy, extra), Path(".")))
    assert isinstance(c, ODataConnector)
    return c


@pytest.mark.parametrize(("fault", "words"), [
    ("500", "answered 500: injected fault 500"),
    ("malformed", "malformed JSON"),
    ("drop", "failed or was dropped"),
])
def test_each_bad_answer_is_a_clear_transient_error(cap: Cap, proxy: HttpFaults, fault: str,
                                                    words: str) -> None:
    seed_cap(cap, range(1, 4))
    with connector(proxy, "?retries=1") as c:  # no retry: the error itself
        c.describe("Customers")
        proxy.fail("GET", "Customers", fault)
        with pytest.raises(TransientConnectorError) as info:
            list(c.read("Customers", ["ID", "name"], key=["ID"]))
        assert words in str(info.value) and "erp: read Customers" in str(info.value)
        assert info.value.hint
        # the next attempt reads everything
        assert [r for b in c.read("Customers", ["ID"], key=["ID"]) for r in b] == [
            (1,), (2,), (3,)]


def test_reads_are_retried_through_each_bad_answer(cap: Cap, proxy: HttpFaults) -> None:
    seed_cap(cap, range(1, 4))
    with connector(proxy) as c:
        c.describe("Customers")
        for fault in ("500", "malformed", "drop", "strip:name"):
            proxy.fail("GET", "Customers", fault if fault != "strip:name" else "502")
        assert [r for b in c.read("Customers", ["ID"], key=["ID"]) for r in b] == [
            (1,), (2,), (3,)]
    assert proxy.pending() == 0
    assert [s[2] for s in proxy.seen if s[1].startswith("Customers")] == [
        "500", "malformed", "drop", "502", None]


def test_429_and_503_are_retried_after_the_time_the_service_asks(cap: Cap,
                                                                 proxy: HttpFaults) -> None:
    seed_cap(cap, range(1, 3))
    with connector(proxy) as c:
        c.describe("Customers")
        proxy.fail("GET", "Customers", "429:0.3")
        proxy.fail("GET", "Customers", "503:0.2")
        rows = [r for b in c.read("Customers", ["ID"], key=["ID"]) for r in b]
    assert rows == [(1,), (2,)]
    gets = [s for s in proxy.seen if s[0] == "GET" and s[1].startswith("Customers")]
    assert [g[2] for g in gets] == ["429:0.3", "503:0.2", None]
    assert gets[1][3] - gets[0][3] >= 0.3 and gets[2][3] - gets[1][3] >= 0.2


def test_retries_run_out_into_a_transient_error(cap: Cap, proxy: HttpFaults) -> None:
    with connector(proxy, "?retries=2") as c:
        c.describe("Customers")
        proxy.fail("GET", "Customers", "503:0", times=2)
        with pytest.raises(TransientConnectorError, match="answered 503"):
            list(c.read("Customers", ["ID"], key=["ID"]))
    assert proxy.pending() == 0


def test_an_answer_that_no_longer_fits_metadata_is_terminal_naming_the_property(
        cap: Cap, proxy: HttpFaults) -> None:
    seed_cap(cap, range(1, 3))
    with connector(proxy) as c:
        c.describe("Customers")
        proxy.fail("GET", "Customers", "strip:name")
        with pytest.raises(TerminalConnectorError) as info:
            list(c.read("Customers", ["ID", "name"], key=["ID"]))
    assert "no property 'name'" in str(info.value) and "validate" in info.value.hint


def test_initial_sync_through_faults_loses_nothing(cap: Cap, crm: Backend, proxy: HttpFaults,
                                                   tmp_path: Path) -> None:
    seed_cap(cap, range(1, 21))
    crm.insert("customers", [{"id": i, "name": f"crm {i}", "credit": Decimal(i)}
                             for i in range(21, 41)])
    config = write_config(tmp_path, env_url(proxy), crm)
    # a failed read, a garbled page, a dropped $batch and a $batch answered 500: each is
    # retried (a change set that failed was applied by nobody, so sending it again is safe)
    proxy.fail("GET", "Customers", "500")
    proxy.fail("GET", "Customers", "malformed")
    proxy.fail("POST", r"\$batch", "drop")
    proxy.fail("POST", r"\$batch", "500")
    with Link.open(config) as link:
        [result] = link.sync_initial()
        assert result.errors == {"left": 0, "right": 0}, result.as_dict()
        [v] = link.verify()
        assert v.ok, v.as_dict()
    assert proxy.pending() == 0
    assert sorted(cap_rows(cap)) == list(range(1, 41))
    assert sorted(r["id"] for r in crm.rows("customers", ["id"], ["id"])) == list(range(1, 41))


def test_a_row_the_service_refuses_is_parked_and_the_rest_written(cap: Cap, crm: Backend,
                                                                  tmp_path: Path) -> None:
    # the CAP model says credit is in [0, 1000000] (@assert.range): -5 is refused with 400
    crm.insert("customers", [{"id": i, "name": f"crm {i}",
                              "credit": Decimal(-5 if i == 13 else i)} for i in range(10, 20)])
    with Link.open(write_config(tmp_path, cap.env_url(), crm)) as link:
        [result] = link.sync_initial()
        assert result.errors == {"left": 1, "right": 0}, result.as_dict()
        assert result.created == {"left": 9, "right": 0}, result.as_dict()
        [entry] = link.state.errors("customers")
        assert entry.side == "left" and tuple(entry.key) == (13,)
        assert "400" in entry.reason and "Customers" in entry.reason, entry.reason
    assert sorted(cap_rows(cap)) == [i for i in range(10, 20) if i != 13]


def test_a_next_link_to_another_host_is_not_followed(cap: Cap, proxy: HttpFaults) -> None:
    seed_cap(cap, range(1, 4))
    with connector(proxy) as c:
        c.describe("Customers")
        proxy.fail("GET", "Customers", "link:http://127.0.0.2:9/steal?$skiptoken=1")
        with pytest.raises(TerminalConnectorError) as info:
            list(c.read("Customers", ["ID"], key=["ID"]))
        assert "127.0.0.2:9" in str(info.value) and "not followed" in str(info.value)
        # a link to the service's own address is followed
        assert c.client.url(proxy.root + "Customers?$skiptoken=1").startswith(proxy.root)


def test_a_change_set_whose_answer_was_lost_is_not_applied_twice(
        cap: Cap, crm: Backend, proxy: HttpFaults, tmp_path: Path) -> None:
    # CAP applies the first change set, and its answer is lost: initial sync sends it
    # again, its creates conflict with themselves, are read back, found there, taken as done
    crm.insert("customers", [{"id": i, "name": f"crm {i}", "credit": Decimal(i)}
                             for i in range(1, 21)])
    proxy.fail("POST", r"\$batch", "lost")
    with Link.open(write_config(tmp_path, env_url(proxy), crm)) as link:
        [result] = link.sync_initial()
        assert result.errors == {"left": 0, "right": 0}, result.as_dict()
        assert link.state.errors("customers") == []
        [v] = link.verify()
        assert v.ok, v.as_dict()
    assert proxy.pending() == 0
    assert sorted(cap_rows(cap)) == list(range(1, 21))


def test_a_true_duplicate_is_still_refused(cap: Cap, crm: Backend, tmp_path: Path) -> None:
    with connect("erp", resolve_url(cap.env_url(), Path("."))) as c:
        with c.transaction() as tx:
            tx.insert("Customers", ["ID", "name"], [(1, "there")])
        with pytest.raises(ConstraintViolation) as info, c.transaction() as tx:
            tx.insert("Customers", ["ID", "name"], [(2, "new"), (1, "another")])
        assert info.value.kind == "unique"
    assert {k: v["name"] for k, v in cap_rows(cap).items()} == {1: "there"}


def test_a_service_down_or_hanging_at_the_tcp_level(cap: Cap) -> None:
    """tests/faultproxy.py between dualwrite and CAP: refused connections, a service that
    hangs (a request timeout) and connections reset mid-way are transient errors that say
    which; with the service back, the same connector reads on."""
    seed_cap(cap, range(1, 4))
    with FaultProxy(cap.port) as tcp:
        url = (f"odata+http://dualwrite:${{CAP_PASSWORD}}@127.0.0.1:{tcp.port}"
               "/odata/v4/erp/?timeout=1&retries=1")
        c = connect("erp", resolve_url(url, Path(".")))
        with c:
            c.describe("Customers")
            for mode, words in ((Mode.REFUSE, "failed or was dropped"),
                                (Mode.STALL, "did not answer within 1 s"),
                                (Mode.RESET, "failed or was dropped")):
                with tcp.fault(mode), pytest.raises(TransientConnectorError) as info:
                    list(c.read("Customers", ["ID"], key=["ID"]))
                assert words in str(info.value), (mode, str(info.value))
            assert [r for b in c.read("Customers", ["ID"], key=["ID"]) for r in b] == [
                (1,), (2,), (3,)]


def test_a_probe_of_change_tracking_that_cannot_be_made_is_transient_not_dw136(
        cap: Cap, crm: Backend, proxy: HttpFaults, tmp_path: Path) -> None:
    """validate's probe of how changes are read, dropped: a transient error (the service
    could not be asked), not the error DW136 that would hold the map until restart; asked
    again once the service answers, the map is valid."""
    config = write_config(tmp_path, env_url(proxy, "?retries=1"), crm)
    with Link.open(config) as link:
        proxy.fail("GET", r"^Customers\?", "drop", times=1)
        with pytest.raises(TransientConnectorError, match="probe change tracking"):
            link.validate()
        assert proxy.pending() == 0
        _, issues = link.validate()
    assert [(i.code, i.severity) for i in issues if i.code in ("DW135", "DW136")] == [
        ("DW135", "note")]
