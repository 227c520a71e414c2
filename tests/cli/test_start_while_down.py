"""`dualwrite run` and `serve` start, and keep running, while a database cannot be reached
(a closed loopback port): they wait for it instead of exiting with a traceback, `serve`
answers 503 in the OData error format for what needs it, and `status` says what the applier
waits for."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from capture_fixtures import make_items
from dualwrite.engine.security import create_token
from serve_process import serve

from conftest import Backend, BackendFactory
from faultproxy import FaultProxy, Mode


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unreachable_right(config: Path) -> None:
    """Point the config's right environment at a closed port of the same kind."""
    cfg: dict[str, Any] = yaml.safe_load(config.read_text())
    url = cfg["environments"]["crm"]["url"]
    head, _, tail = url.partition("@127.0.0.1:")
    cfg["environments"]["crm"]["url"] = f"{head}@127.0.0.1:{closed_port()}/{tail.split('/', 1)[1]}"
    config.write_text(yaml.safe_dump(cfg))


def test_serve_answers_503_while_a_database_is_down(make_backend: BackendFactory,
                                                     tmp_path: Path) -> None:
    it = make_items(make_backend, tmp_path, "postgresql", "mariadb")
    with it.link() as link:
        link.start_maps()
        token = create_token(link.state, "reader", role="reader")
    unreachable_right(it.config)
    with serve(it.config) as served, httpx.Client(base_url=served.url, timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as http:
        assert http.get("/healthz").status_code == 200
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["crm"] != "ok"
        got = http.get("/odata/crm/items")
        assert got.status_code == 503, got.text
        assert got.json()["error"]["code"] == "ServiceUnavailable"
        assert "crm" in got.json()["error"]["message"]
    assert served.code == 0, served.log[-3000:]
    assert "Traceback" not in served.log, served.log[-3000:]
    assert "serving 503 until it answers" in served.log


def test_run_waits_for_a_database_and_says_so(make_backend: BackendFactory,
                                              tmp_path: Path) -> None:
    it = make_items(make_backend, tmp_path, "postgresql", "mariadb")
    with it.link() as link:
        link.start_maps()
    unreachable_right(it.config)
    log = tmp_path / "run.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "dualwrite", "-c", str(it.config),
                                 "run"], stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        while "waiting for a database" not in log.read_text():
            assert proc.poll() is None, f"run exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)  # polling a condition, with a deadline
        done = subprocess.run([sys.executable, "-m", "dualwrite", "-c", str(it.config),
                               "status", "--json"], capture_output=True, timeout=120,
                              check=False)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        procs = json.loads(done.stdout)["processes"]
        assert any(p["alive"] and "waiting for a database" in (p["note"] or "")
                   for p in procs), procs
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()


def test_run_and_serve_started_while_down_work_once_the_database_answers(
        make_backend: BackendFactory, tmp_path: Path,
        fault_proxy: Callable[[Backend], FaultProxy]) -> None:
    """The right database is reached through a fault proxy that refuses connections while
    `serve` (which also applies) starts: it answers 503; once the database answers, the change
    captured meanwhile is applied and an OData write (a two-phase transaction, after
    recovery) goes through, with no restart."""
    it = make_items(make_backend, tmp_path, "postgresql", "mariadb")
    proxy = fault_proxy(it.right)
    cfg: dict[str, Any] = yaml.safe_load(it.config.read_text())
    cfg["environments"]["crm"]["url"] = proxy.url(it.right.url)
    it.config.write_text(yaml.safe_dump(cfg))
    with it.link() as link:
        link.start_maps()
        token = create_token(link.state, "writer", role="writer")
    proxy.set_mode(Mode.REFUSE)
    it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'while down', 1)")
    with serve(it.config) as served, httpx.Client(
            base_url=served.url, timeout=30,
            headers={"Authorization": f"Bearer {token}"}) as http:
        assert http.get("/odata/crm/items").status_code == 503
        proxy.set_mode(Mode.PASS)
        deadline = time.monotonic() + 60
        while it.rows("right").get(1) != ("while down", 1):
            assert time.monotonic() < deadline, f"not applied once back:\n{served.lines}"
            time.sleep(0.05)  # polling a condition, with a deadline
        made = http.post("/odata/erp/items", json={"id": 2, "name": "via api", "qty": 2})
        assert made.status_code == 201, made.text
        assert it.rows("right")[2] == ("via api", 2)
    assert served.code == 0 and "Traceback" not in served.log, served.log[-3000:]


def test_run_does_not_hang_on_a_database_that_stops_answering(
        make_backend: BackendFactory, tmp_path: Path,
        fault_proxy: Callable[[Backend], FaultProxy]) -> None:
    """The right database's connections are accepted and then nothing answers (a stalled
    network path): `run` gives up each attempt after its timeouts (dualwrite sets them by
    default, 10 s to connect and 60 s to read; the URL here makes them short) and says it
    waits, instead of hanging without end; once the path is back, it applies."""
    it = make_items(make_backend, tmp_path, "postgresql", "mariadb")
    proxy = fault_proxy(it.right)
    cfg: dict[str, Any] = yaml.safe_load(it.config.read_text())
    cfg["environments"]["crm"]["url"] = proxy.url(it.right.url) + \
        ("&" if "?" in it.right.url else "?") + "connect_timeout=2&read_timeout=3"
    it.config.write_text(yaml.safe_dump(cfg))
    with it.link() as link:
        link.start_maps()
    proxy.set_mode(Mode.STALL)
    it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'stalled', 1)")
    log = tmp_path / "run.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "dualwrite", "-c", str(it.config),
                                 "run"], stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 90
        while "waiting for a database" not in log.read_text():
            assert proc.poll() is None, f"run exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"run hung:\n{log.read_text()[-3000:]}"
            time.sleep(0.05)  # polling a condition, with a deadline
        proxy.set_mode(Mode.PASS)
        deadline = time.monotonic() + 90
        while it.rows("right").get(1) != ("stalled", 1):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"not applied:\n{log.read_text()[-3000:]}"
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()[-3000:]


def test_the_waiting_note_stays_while_the_applier_tries_again(make_backend: BackendFactory,
                                                               tmp_path: Path) -> None:
    """`status` read between two attempts found no reason: the applier cleared its note at
    the top of each attempt (test_run_waits_for_a_database_and_says_so failed on it once in
    a full run). The note stays until an attempt succeeds."""
    import threading

    from dualwrite.engine.apply.driver import _start_applier
    from dualwrite.errors import TransientConnectorError

    it = make_items(make_backend, tmp_path, "postgresql", "postgresql")
    with it.link() as link:
        link.start_maps()
        me = link.state.register_process(link.config.link_name, "applier")
        stop = threading.Event()
        notes: list[str | None] = []

        def down() -> None:
            # each attempt: what `status` would read while it runs
            notes.append(next(p["note"] for p in link.state.processes(link.config.link_name)
                              if p["id"] == me))
            if len(notes) == 3:
                stop.set()
            raise TransientConnectorError("the server does not answer", environment="crm")

        assert _start_applier(link, stop, me, down, link.applier_lease()) is None
        assert notes[0] is None  # the first attempt has no reason yet
        assert notes[1:] == ["waiting for a database: crm: the server does not answer"] * 2
