"""/metrics in the Prometheus text format: on a real `dualwrite serve` while changes flow (the
counters move by exactly the rows written), and on `dualwrite run --metrics-port`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from capture_fixtures import make_items
from dualwrite.engine.security import create_token
from serve_process import serve

from conftest import BackendFactory

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)  # polling a condition, with a deadline


def test_serve_metrics_count_exactly_the_rows_written(make_backend: BackendFactory,
                                                      tmp_path: Path) -> None:
    it = make_items(make_backend, tmp_path, "postgresql", "mariadb")
    with it.link() as link:
        link.start_maps()
        token = create_token(link.state, "app", role="writer")
    applied = "dualwrite_changes_applied_total"
    with serve(it.config) as served:
        before = scrape(served.url)
        # everything this process exports has the dualwrite_ prefix, and the build info
        assert value(before, "dualwrite_build_info") == 1
        assert value(before, "dualwrite_map_state", map="items", state="running") == 1
        assert value(before, "dualwrite_processes", role="server") == 1
        scrapes: list[Samples] = []
        stop = threading.Event()

        def scraping() -> None:  # scrapes while the changes flow
            while not stop.is_set():
                scrapes.append(scrape(served.url))
                stop.wait(0.05)

        scraper = threading.Thread(target=scraping)
        scraper.start()
        try:
            for tx in range(4):  # 4 transactions of 5 rows on the ERP side
                with it.left.app().begin() as conn:
                    for i in range(5):
                        conn.exec_driver_sql(
                            f"INSERT INTO items (id, name, qty) VALUES ({100 + tx * 5 + i}, "
                            f"'erp', {i})")
            for i in range(10):  # 10 on the CRM side, one per transaction
                it.right.app_sql(f"INSERT INTO items (id, name, qty) VALUES ({200 + i}, 'crm', 1)")
            it.left.app_sql("UPDATE items SET qty = 99 WHERE id IN (100, 101, 102)")
            wait_for("every row reaches the other side", lambda: (
                it.rows("left") == it.rows("right") and len(it.rows("left")) == 30
                and it.rows("right")[100] == ("erp", 99)))
        finally:
            stop.set()
            scraper.join()
        erp_crm = {"direction": "erp->crm", "map": "items"}
        crm_erp = {"direction": "crm->erp", "map": "items"}

        def moved(name: str, **labels: str) -> float:
            return value(scrape(served.url), name, **labels) - value(before, name, **labels)

        # the log forgets a change just after its apply commits (and is counted): the lag
        # gauge reaches 0 a moment after the counters
        wait_for("the counters catch up and the lag drains", lambda: moved(
            applied, **erp_crm) >= 23 and moved(applied, **crm_erp) >= 10 and value(
            scrape(served.url), "dualwrite_lag_changes", map="items") == 0)
        after = scrape(served.url)

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta(applied, outcome="applied", operation="create", **erp_crm) == 20
        assert delta(applied, outcome="applied", operation="update", **erp_crm) == 3
        assert delta(applied, outcome="applied", operation="create", **crm_erp) == 10
        assert delta(applied, **erp_crm) == 23 and delta(applied, **crm_erp) == 10
        assert delta("dualwrite_changes_captured_total", **erp_crm) == 23
        # PostgreSQL's log has transaction ids: 4 inserting transactions and 1 update
        assert delta("dualwrite_transactions_applied_total", direction="erp->crm") == 5
        assert delta("dualwrite_apply_errors_total") == 0
        assert value(after, "dualwrite_apply_duration_seconds_count", direction="erp->crm") > 0
        assert value(after, "dualwrite_lag_changes", map="items") == 0
        assert value(after, "dualwrite_applier_leader") == 1
        # the scrapes made while the rows flowed never went backwards
        series = [value(s, applied, **erp_crm) for s in scrapes]
        assert series == sorted(series) and len(series) > 1
        # no key value is ever a label
        assert not any(dict(ls).get("key") or any(v in ("100", "200") for _k, v in ls)
                       for (_n, ls) in after)

        # OData requests by status code
        body = b'{"id": 300, "name": "api", "qty": 3}'
        req = urllib.request.Request(f"{served.url}/odata/erp/items", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 201
        try:
            urllib.request.urlopen(f"{served.url}/odata/erp/items", timeout=10)
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        final = scrape(served.url)
        assert value(final, "dualwrite_odata_requests_total", environment="erp", code="201") \
            - value(before, "dualwrite_odata_requests_total", code="201") == 1
        assert value(final, "dualwrite_odata_requests_total", code="401") \
            - value(before, "dualwrite_odata_requests_total", code="401") == 1
        assert value(final, "dualwrite_live_transactions_total", outcome="committed") == 1


def test_run_serves_metrics_on_its_own_port(make_backend: BackendFactory, tmp_path: Path
                                             ) -> None:
    it = make_items(make_backend, tmp_path, "sqlite", "sqlite")
    with it.link() as link:
        link.start_maps()
    proc = subprocess.Popen([sys.executable, "-m", "dualwrite", "-c", str(it.config), "run",
                             "--metrics-port", "0"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ})
    try:
        assert proc.stderr is not None
        seen = ""
        deadline = time.monotonic() + 60
        while not (m := re.search(r"metrics at (http://127\.0\.0\.1:\d+)/metrics", seen)):
            assert time.monotonic() < deadline and proc.poll() is None, seen
            seen += proc.stderr.readline()
        url = m.group(1)
        while "applying captured changes" not in seen:
            assert time.monotonic() < deadline and proc.poll() is None, seen
            seen += proc.stderr.readline()
        it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'a', 1)")
        wait_for("the row and its count", lambda: value(
            scrape(url), "dualwrite_changes_applied_total", outcome="applied") == 1)
        got = scrape(url)
        assert value(got, "dualwrite_applier_leader") == 1
        assert value(got, "dualwrite_build_info") == 1
        # SQLite's log has no transaction ids: the applied read counts as one
        assert value(got, "dualwrite_transactions_applied_total", direction="erp->crm") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        if proc.stderr:
            proc.stderr.close()
