"""``dualwrite demo``: two SQLite applications, seeded, then validate → plan → sync → verify,
then the link runs live: the maps start, ``serve`` (which applies captured changes, as
``run`` does) starts, writes are made in each application's own database and through the
OData API, and each is watched arriving on the other side; one conflict is parked in the
inbox. It ends by printing the console's address, a ready token and the commands to go on
with; ``--live`` keeps the link running until Ctrl-C.

Everything the demo needs ships in this package (schemas, seed generator, maps); it reads
nothing from outside. Running it again resets the demo folder's databases and starts over.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from dualwrite.connectors.sqlite.connector import create_sqlite_engine
from dualwrite.engine.config import dump_config
from dualwrite.engine.initial_sync import Progress
from dualwrite.engine.link import Link
from dualwrite.model.maps import Side

FILES = ("erp.db", "crm.db", "dualwrite-state.db")


def write_demo_files(directory: Path) -> Path:
    """Create the folder, the config and the map files; return the config path."""
    directory.mkdir(parents=True, exist_ok=True)
    maps_dir = directory / "maps"
    if maps_dir.exists():
        shutil.rmtree(maps_dir)
    maps_dir.mkdir()
    source = resources.files("dualwrite.demo").joinpath("maps")
    for entry in sorted(source.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            (maps_dir / entry.name).write_text(entry.read_text(encoding="utf-8"),
                                               encoding="utf-8")
    config = dump_config({"erp": "sqlite:///erp.db", "crm": "sqlite:///crm.db"},
                         "erp", "crm", "sqlite:///dualwrite-state.db", ["maps/*.yaml"])
    path = directory / "dualwrite.yaml"
    header = ("# dualwrite demo: an ERP (left) and a CRM (right), both SQLite.\n"
              f"# Try: dualwrite -c {path} verify   |   dualwrite -c {path} plan\n")
    path.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def create_applications(directory: Path, *, scale: int) -> dict[str, dict[str, int]]:
    """Fresh ERP and CRM databases with their schemas and seed rows."""
    from dualwrite.demo.schema import crm_metadata, erp_metadata
    from dualwrite.demo.seed import seed

    for name in FILES:
        for suffix in ("", "-journal"):
            (directory / (name + suffix)).unlink(missing_ok=True)
    erp = create_sqlite_engine(f"sqlite:///{directory / 'erp.db'}")
    crm = create_sqlite_engine(f"sqlite:///{directory / 'crm.db'}")
    try:
        erp_metadata().create_all(erp)
        crm_metadata().create_all(crm)
        return seed(erp, crm, scale=scale)
    finally:
        erp.dispose()
        crm.dispose()


def _count(link: Link, side: Side, table: str) -> int:
    return link.connectors[side].count(table)


def run_demo(directory: Path, *, scale: int = 1, console: Console | None = None,
             progress: Callable[[], AbstractContextManager[Progress | None]] | None = None,
             live: bool = False, port: int = 8000,
             command: str = "dualwrite", wait: Callable[[], None] | None = None) -> int:
    """Run the whole demo; return the exit code (0 when verify finds both sides agree and
    every live write arrived). ``progress`` makes the initial sync's progress display (rows,
    rate, ETA per map). ``live``: keep serving until Ctrl-C. ``command``: how the user runs
    dualwrite (printed in the commands to go on with). ``wait`` blocks until the user stops
    the live demo (default: until Ctrl-C)."""
    con = console or Console()
    started = time.monotonic()
    directory = directory.resolve()
    con.print(f"[bold]dualwrite demo[/] in {directory}")
    config_path = write_demo_files(directory)
    t0 = time.monotonic()
    seeded = create_applications(directory, scale=scale)
    rows = sum(sum(v.values()) for v in seeded.values())
    con.print(f"1. seeded ERP and CRM: {rows:,} rows in {time.monotonic() - t0:.1f}s")
    with Link.open(config_path) as link:
        bound, issues = link.validate()
        for i in issues:
            con.print(str(i), markup=False)
        errors = [i for i in issues if i.is_error]
        if errors:
            con.print(f"[red]validate: {len(errors)} problem(s)[/]")
            return 1
        con.print(f"2. validate: {len(bound)} maps ok against both schemas")
        before = {b.name: (_count(link, Side.LEFT, b.left_table),
                           _count(link, Side.RIGHT, b.right_table)) for b in bound}
        plans = {r.map: r for r in link.plan()}
        creates = sum(r.created["left"] + r.created["right"] for r in plans.values())
        updates = sum(r.updated["left"] + r.updated["right"] for r in plans.values())
        con.print(f"3. plan: {creates:,} rows to create, {updates:,} to update")
        t0 = time.monotonic()
        with (progress or nullcontext)() as shown:
            synced = {r.map: r for r in link.sync_initial(progress=shown)}
        con.print(f"4. initial sync: done in {time.monotonic() - t0:.1f}s")
        verified = {r.map: r for r in link.verify()}
        ok = all(r.ok for r in verified.values())
        table = Table(title="summary (rows: ERP / CRM)", title_justify="left")
        for col in ("map", "before", "created", "updated", "errors", "after", "verify"):
            table.add_column(col, justify="left" if col == "map" else "right")
        for b in link.bound_maps():
            s, v = synced[b.name], verified[b.name]
            table.add_row(
                b.name, f"{before[b.name][0]:,} / {before[b.name][1]:,}",
                f"{s.created['left']:,} / {s.created['right']:,}",
                f"{s.updated['left']:,} / {s.updated['right']:,}",
                f"{s.errors['left'] + s.errors['right']:,}",
                f"{_count(link, Side.LEFT, b.left_table):,} / "
                f"{_count(link, Side.RIGHT, b.right_table):,}",
                "ok" if v.ok else f"{v.differences} diff")
        con.print(table)
        if not ok:
            for v in verified.values():
                for d in v.details[:5]:
                    con.print(f"  {v.map} {tuple(d.key)} {d.kind} {d.fields or d.reason}",
                              markup=False)
            con.print("[red]5. verify: the sides differ[/]")
            return 1
        con.print("5. verify: both sides agree")
    code = run_live(config_path, con, live=live, port=port, command=command, wait=wait)
    con.print(f"done in {time.monotonic() - started:.1f}s.")
    return code


# -- live ------------------------------------------------------------------------------------
#: the group the live part writes (company, id): created in the ERP, then through the API
_ERP_GROUP = "LIVE-ERP"
_API_GROUP = "LIVE-API"


def _free_port(wanted: int) -> int:
    """``wanted`` if it is free on loopback, else any free port."""
    for port in (wanted, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port on 127.0.0.1")


@contextmanager
def _serving(config_path: Path, port: int) -> Iterator[tuple[Link, str]]:
    """``dualwrite serve`` in this process (OData, console, /metrics, and the applier)."""
    import uvicorn

    from dualwrite.api.server import create_server_app

    link = Link.open(config_path)
    server = uvicorn.Server(uvicorn.Config(create_server_app(link, apply_captured=True),
                                           host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, name="dualwrite-demo-serve", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the demo server did not start on port {port}")
            time.sleep(0.05)  # waiting for uvicorn to listen, with a deadline
        yield link, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        link.close()


def _arrives(what: str, check: Callable[[], bool], con: Console, since: float,
             timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            con.print(f"   [red]{what}: not there after {timeout:.0f} s[/]")
            return False
        time.sleep(0.05)  # watching the other side, with a deadline
    con.print(f"   {what} [green]in {time.monotonic() - since:.2f} s[/]")
    return True


def _one(db: Path, sql: str, *params: Any) -> Any:
    with sqlite3.connect(db, timeout=30) as conn:
        row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def _write(db: Path, sql: str, *params: Any) -> None:
    """A write made by the application itself, in its own database (captured)."""
    with sqlite3.connect(db, timeout=30) as conn:
        conn.execute(sql, params)


def run_live(config_path: Path, con: Console, *, live: bool, port: int, command: str,
             wait: Callable[[], None] | None = None) -> int:
    """Step 6 of the demo: the link runs live (see the module's docstring)."""
    from dualwrite.engine.security import create_token

    directory = config_path.parent
    erp, crm = directory / "erp.db", directory / "crm.db"
    with Link.open(config_path) as link:
        link.start_maps()  # capture installed; initial sync already ran
        admin = create_token(link.state, "demo-admin", role="admin")
        writer = create_token(link.state, "demo-app", role="writer")
    port = _free_port(port)
    ok = True
    with _serving(config_path, port) as (link, url):
        con.print(f"6. live: [bold]serve[/] started on {url} (it applies captured changes, "
                  "as `dualwrite run` does); every map running")
        company = _one(erp, "SELECT dataAreaId FROM CustCustomerGroup ORDER BY 1 LIMIT 1")
        group = _one(crm, "SELECT msdyn_groupid FROM msdyn_customergroups WHERE company = ? "
                     "ORDER BY 1 LIMIT 1", company)
        crm_row = ("SELECT msdyn_description FROM msdyn_customergroups WHERE company = ? "
                   "AND msdyn_groupid = ?")
        erp_row = ("SELECT DESCRIPTION FROM CustCustomerGroup WHERE dataAreaId = ? "
                   "AND CUSTOMERGROUPID = ?")
        t0 = time.monotonic()
        _write(erp, "INSERT INTO CustCustomerGroup (dataAreaId, CUSTOMERGROUPID, DESCRIPTION, "
               "ISSALESTAXINCLUDEDINPRICE) VALUES (?, ?, 'Made in the ERP', 'No')", company,
               _ERP_GROUP)
        ok &= _arrives(f"ERP's own INSERT of group {_ERP_GROUP} reached the CRM",
                       lambda: _one(crm, crm_row, company, _ERP_GROUP) == "Made in the ERP",
                       con, t0)
        t0 = time.monotonic()
        _write(crm, "UPDATE msdyn_customergroups SET msdyn_description = 'Renamed in the CRM' "
               "WHERE company = ? AND msdyn_groupid = ?", company, group)
        ok &= _arrives(f"CRM's own UPDATE of group {group} reached the ERP",
                       lambda: _one(erp, erp_row, company, group) == "Renamed in the CRM",
                       con, t0)
        t0 = time.monotonic()
        body = json.dumps({"dataAreaId": company, "CUSTOMERGROUPID": _API_GROUP,
                           "DESCRIPTION": "Made through the API",
                           "ISSALESTAXINCLUDEDINPRICE": "Yes"}).encode()
        req = urllib.request.Request(f"{url}/odata/erp/CustCustomerGroup", data=body,
                                     method="POST", headers={
                                         "Authorization": f"Bearer {writer}",
                                         "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            created = resp.status == 201
        ok &= created and _arrives(
            f"OData POST of group {_API_GROUP} is in both applications (one transaction)",
            lambda: _one(crm, crm_row, company, _API_GROUP) == "Made through the API"
            and _one(erp, erp_row, company, _API_GROUP) == "Made through the API", con, t0)
        # a conflict: both applications change one group before either change is applied
        # (the ERP's write holds its database until the CRM's is committed)
        t0 = time.monotonic()
        with sqlite3.connect(erp, timeout=30, isolation_level=None) as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE CustCustomerGroup SET DESCRIPTION = 'ERP says' WHERE "
                         "dataAreaId = ? AND CUSTOMERGROUPID = ?", (company, group))
            _write(crm, "UPDATE msdyn_customergroups SET msdyn_description = 'CRM says' "
                   "WHERE company = ? AND msdyn_groupid = ?", company, group)
            conn.execute("COMMIT")
        ok &= _arrives(f"both applications changed group {group}: a conflict, parked in the "
                       "inbox (policy manual)",
                       lambda: any(e.operation == "conflict" for e in link.state.errors()),
                       con, t0)
    _next_steps(con, config_path, command, port, admin, live)
    if live:
        return _keep_running(config_path, con, port, code=0 if ok else 1, wait=wait)
    return 0 if ok else 1


def _next_steps(con: Console, config_path: Path, command: str, port: int, admin: str,
                live: bool) -> None:
    shown = os.path.relpath(config_path)
    shown = shown if not shown.startswith("..") else str(config_path)
    run = f"{command} -c {shown}"
    con.print()
    con.print("[bold]Go on[/]" + ("" if live else " (the demo's server has stopped: start it "
                                                  "again with the first command)"))
    if not live:
        con.print(f"  {run} serve --port {port}        # OData, console, /metrics; applies "
                  "changes", markup=False)
    con.print(f"  console: http://127.0.0.1:{port}/console/   sign in with this admin token:",
              markup=False)
    con.print(f"    {admin}", markup=False)
    con.print(f"  {run} status            # maps, lag, queue, processes, alerts", markup=False)
    con.print(f"  {run} conflicts list    # the parked conflict; settle it in the console",
              markup=False)
    con.print(f"  {run} errors list       # the error inbox", markup=False)
    con.print(f"  curl http://127.0.0.1:{port}/metrics", markup=False)
    if not live:
        con.print(f"  {command} demo --live    # the same, kept running until Ctrl-C",
                  markup=False)


def _keep_running(config_path: Path, con: Console, port: int, code: int,
                  wait: Callable[[], None] | None) -> int:
    """Serve until ``wait`` returns (``demo --live``: Ctrl-C or SIGTERM)."""
    with _serving(config_path, port):
        con.print(f"serving on http://127.0.0.1:{port} until Ctrl-C; write in "
                  f"{config_path.parent / 'erp.db'} or crm.db and watch it arrive")
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C where no ``wait`` takes it
            (wait or threading.Event().wait)()
        con.print("stopped")
    return code


def command_name(argv0: str | None = None) -> str:
    """How the user ran dualwrite, as a command that works from the current folder: the
    script's path (``.venv/bin/dualwrite``) when it is not on PATH, else ``dualwrite``."""
    argv0 = argv0 if argv0 is not None else sys.argv[0]
    script = Path(argv0)
    if script.name != "dualwrite":
        return f"{sys.executable} -m dualwrite"
    if shutil.which("dualwrite") and Path(shutil.which("dualwrite") or "").resolve() == \
            script.resolve():
        return "dualwrite"
    relative = os.path.relpath(script.resolve())
    return relative if not relative.startswith("..") else str(script.resolve())


__all__ = ["command_name", "run_demo", "run_live"]
