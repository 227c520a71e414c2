"""Benchmark: the capture lag of following an OData environment — a write committed in the
service, until its row is in PostgreSQL — through delta links and through polling a
modified-timestamp property, each against the same service read by plain paged GETs in the
same run.

Three scenarios, one after the other, each a link *service* (left, OData) ↔ PostgreSQL
(right) followed by the real ``dualwrite run`` in a process of its own (``follow --start``,
``sync --initial``, then ``run``: the follower under the applier lease):

- ``serve-delta``: the service is dualwrite's own ``serve`` (a PostgreSQL ↔ PostgreSQL link of
  its own, its ``items`` map started, so the set is tracked); followed by delta links;
- ``cap-poll``: SAP CAP 9 (``@cap-js/sqlite`` in memory, scripts/cap.sh), ``Customers`` with
  the ``managed`` aspect; followed by polling ``modifiedAt`` (``modified:`` of the
  environment), with a key-only reconciliation every ten steps;
- ``serve-poll``: the same ``serve``, an untracked set (``serve.expose``) whose ``modified``
  column a trigger sets; followed by polling it.

While the follower runs, writers change the service's set through its own OData API at a
paced rate (``--rate`` writes/s for ``--seconds``): one write in ten a POST creating a row,
the rest a PATCH of a random row's ``name``; every write stamps a unique ``name``. The lag
of a write is from the moment its request returned (committed in the service) until a
PostgreSQL trigger's NOTIFY of that stamp reached a listener (the row committed in
PostgreSQL). Beside it, in the same run, a baseline client re-reads the same set with plain
paged GETs (1,000 per page) and notes when it first sees each stamp. ``run`` waits one
second after a step that wrote nothing (fixed); each scenario is then measured again, from
scratch, followed by ``dualwrite follow --interval FAST`` (the same follower, a shorter
wait). The baseline waits as long as the follower after a read that found nothing new.

Also measured, while the writers wrote: the follower's HTTP requests per second (counted in
the ``run`` process: ``httpx.Client.send``, wrapped before the command starts) and its CPU
(``/proc/<pid>/stat``), and the baseline's requests per second. After each scenario ``verify``
compares both sides.

Usage: python bench/odata_follow.py [--rows 5000] [--rate 30] [--seconds 20] [--fast 0.1]
       [--only serve-delta,cap-poll,serve-poll] [--no-docs]
Writes the odata-follow section of docs/benchmarks.md unless --no-docs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from report import run_script, update_section  # noqa: E402

DUALWRITE = ROOT / ".venv" / "bin" / "dualwrite"
PYTHON = ROOT / ".venv" / "bin" / "python"
WORK = ROOT / ".bench" / "odata-follow"  # git-ignored: configs, state, logs
CAP_DIR = ROOT / ".cap"
CAP_USER, CAP_PASSWORD = "dualwrite", "dw-secret"
PG_DSN = "host=127.0.0.1 user=postgres dbname={db}"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
DB_PG = "dwbench_follow"  # the followed link's PostgreSQL side, made anew per scenario
DB_HUB_A, DB_HUB_B = "dwbench_follow_hub_a", "dwbench_follow_hub_b"  # the served link
PAGE = 1000
SCENARIOS = ("serve-delta", "cap-poll", "serve-poll")
_MEASUREMENTS = itertools.count(1)

#: the `dualwrite run` command with every HTTP request it sends counted: the count is
#: written to the file named first, ten times a second
COUNTED_RUN = """
import sys, threading, time
import httpx
out = sys.argv.pop(1)
sent = [0]
send = httpx.Client.send
def counted(self, request, **kwargs):
    sent[0] += 1
    return send(self, request, **kwargs)
httpx.Client.send = counted
def tell():
    while True:
        with open(out + ".tmp", "w") as f:
            f.write(str(sent[0]))
        import os; os.replace(out + ".tmp", out)
        time.sleep(0.1)
threading.Thread(target=tell, daemon=True).start()
from dualwrite.cli import main
sys.argv[0] = "dualwrite"
sys.exit(main())
"""

#: on the PostgreSQL side: every stamp arriving is told (at commit) to the listener
ARRIVALS = """
CREATE FUNCTION bench_arrived() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' OR NEW.name IS DISTINCT FROM OLD.name THEN
    PERFORM pg_notify('bench_arrived', NEW.name);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER bench_arrived AFTER INSERT OR UPDATE ON {table}
  FOR EACH ROW EXECUTE FUNCTION bench_arrived();
"""


@dataclass
class Service:
    """One followed entity set: where it is, how it is mapped, how it is written."""

    scenario: str
    label: str
    method: str  # what validate should say the follower uses: delta / poll
    root: str  # the service root URL (ends with /)
    env: dict[str, Any]  # the environment in the followed link's config
    entity_set: str
    key: str
    fields: list[tuple[str, str]]  # (service property, PostgreSQL column)
    pg_ddl: str
    create: Callable[[int, str], dict[str, Any]]  # the POST body of a new row
    auth: httpx.Auth | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.root, auth=self.auth, headers=self.headers,
                            timeout=timeout)

    def map_text(self) -> str:
        lines = "\n".join(f"  - {o} = {p}" for o, p in self.fields)
        return (f"name: followed\nleft: {self.entity_set}\nright: items\n"
                f"key: {{left: [{self.key}], right: [{dict(self.fields)[self.key]}]}}\n"
                f"conflict: left-wins\nfields:\n{lines}\n")


@dataclass
class Seen:
    """When each stamp was first seen by one observer."""

    at: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    sweeps: list[float] = field(default_factory=list)

    def see(self, stamp: str | None, now: float) -> bool:
        if stamp and stamp not in self.at:
            self.at[stamp] = now
            return True
        return False


# -- databases ---------------------------------------------------------------------------------
def recreate(*dbs: str) -> None:
    with psycopg.connect(PG_DSN.format(db="postgres"), autocommit=True) as c:
        for db in dbs:
            c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            c.execute(f"CREATE DATABASE {db}")


def drop(*dbs: str) -> None:
    with psycopg.connect(PG_DSN.format(db="postgres"), autocommit=True) as c:
        for db in dbs:
            c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


# -- processes ---------------------------------------------------------------------------------
class Process:
    """A child process whose output is kept in a log file, line by line."""

    def __init__(self, args: list[str], log: Path, cwd: Path) -> None:
        self.log = log
        self.lines: list[str] = []
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, cwd=cwd)
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("w") as f:
            for line in self.proc.stdout:
                self.lines.append(line)
                f.write(line)
                f.flush()

    def wait_for(self, pattern: str, seconds: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + seconds
        while True:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{self.log.name}: no {pattern!r}:\n"
                                   + "".join(self.lines)[-3000:])
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=30)
        self._drain.join(timeout=30)
        return code


def cli(config: Path, *args: str, timeout: float = 600) -> str:
    done = subprocess.run([str(DUALWRITE), "-c", str(config), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=config.parent)
    if done.returncode != 0:
        raise RuntimeError(f"dualwrite {' '.join(args)} failed: "
                           f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the services ------------------------------------------------------------------------------
HUB_MAP = """name: items
left: items
right: items
key: {left: [id], right: [id]}
fields:
  - id = id
  - name = name
  - qty = qty
"""
HUB_DDL = "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, qty integer NOT NULL);"
#: the untracked set polled by its modified column, set by the database as CAP's managed does
#: (nullable: serve's $metadata would not say that the database fills it)
POLLED_DDL = """
CREATE TABLE items_polled (id bigint PRIMARY KEY, name text NOT NULL, qty integer NOT NULL,
  modified timestamptz);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.modified := clock_timestamp(); RETURN NEW; END $$;
CREATE TRIGGER touch BEFORE INSERT OR UPDATE ON items_polled FOR EACH ROW
  EXECUTE FUNCTION touch();
"""


@contextmanager
def served_hub(rows: int) -> Iterator[tuple[str, str]]:
    """`dualwrite serve` of a PostgreSQL ↔ PostgreSQL items link (started: its set is
    tracked), with ``items_polled`` exposed on its side a (not tracked); yields the OData
    root of side a and a writer's token."""
    work = WORK / "hub"
    shutil.rmtree(work, ignore_errors=True)
    (work / "maps").mkdir(parents=True)
    (work / "maps" / "items.yaml").write_text(HUB_MAP)
    recreate(DB_HUB_A, DB_HUB_B)
    seed = (f"INSERT INTO items SELECT g, 'item ' || g, 0 FROM generate_series(1, {rows}) g;")
    for db in (DB_HUB_A, DB_HUB_B):  # equal on both sides: the hub's initial sync is quick
        run_script("postgresql", db, HUB_DDL + seed)
    run_script("postgresql", DB_HUB_A, POLLED_DDL + seed.replace("INTO items",
                                                                 "INTO items_polled"))
    cfg = {"environments": {"a": {"url": PG_URL.format(db=DB_HUB_A)},
                            "b": {"url": PG_URL.format(db=DB_HUB_B)}},
           "link": {"name": "hub", "left": "a", "right": "b"},
           "state": f"sqlite:///{work / 'state.db'}", "maps": ["maps/*.yaml"],
           "serve": {"page_size": PAGE, "access_log": False,
                     "expose": {"a": ["items_polled"]}}}
    config = work / "dualwrite.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cli(config, "maps", "start", "items", "--yes")
    token = cli(config, "tokens", "create", "--principal", "bench", "--role",
                "writer").strip().splitlines()[-1].strip()
    proc = Process([str(DUALWRITE), "-c", str(config), "serve", "--port", "0"],
                   work / "serve.log", work)
    try:
        m = proc.wait_for(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")
        yield m.group(1) + "/odata/a/", token
    finally:
        proc.stop()


@contextmanager
def cap_server(rows: int) -> Iterator[str]:
    """SAP CAP (in-memory SQLite) with ``rows`` Customers; yields its service root."""
    subprocess.run(["bash", str(ROOT / "scripts" / "cap.sh")], check=True,
                   capture_output=True)
    work = WORK / "cap"
    work.mkdir(parents=True, exist_ok=True)
    proc = Process(["node", "node_modules/@sap/cds/bin/serve.js", "--port", "0"],
                   work / "cap.log", CAP_DIR)
    try:
        m = proc.wait_for(r"server listening on \{ url: 'http://localhost:(\d+)'", 60)
        root = f"http://127.0.0.1:{m.group(1)}/odata/v4/erp/"
        with httpx.Client(base_url=root, auth=(CAP_USER, CAP_PASSWORD), timeout=300) as c:
            for start in range(1, rows + 1, PAGE):
                reqs = [{"id": str(i), "atomicityGroup": "g", "method": "POST",
                         "url": "Customers", "headers": {"content-type": "application/json"},
                         "body": {"ID": i, "name": f"customer {i}", "credit": i % 1000}}
                        for i in range(start, min(start + PAGE, rows + 1))]
                c.post("$batch", json={"requests": reqs}).raise_for_status()
        yield root
    finally:
        proc.stop()


def hub_service(scenario: str, root: str, token: str) -> Service:
    polled = scenario == "serve-poll"
    env: dict[str, Any] = {"url": "odata+" + root + "?token=${BENCH_HUB_TOKEN}"}
    if polled:
        env["modified"] = "modified"
    return Service(
        scenario, "dualwrite serve (PostgreSQL ↔ PostgreSQL), "
        + ("an untracked set, polling its `modified`" if polled else "delta links"),
        "poll" if polled else "delta", root, env, "items_polled" if polled else "items",
        "id", [("id", "id"), ("name", "name"), ("qty", "qty")],
        "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, qty integer NOT NULL);",
        lambda key, stamp: {"id": key, "name": stamp, "qty": 1},
        headers={"Authorization": f"Bearer {token}"})


def cap_service(root: str) -> Service:
    port = re.search(r":(\d+)/", root)
    assert port is not None
    return Service(
        "cap-poll", "SAP CAP 9 (@cap-js/sqlite in memory), polling `modifiedAt`", "poll", root,
        {"url": f"odata+http://{CAP_USER}:${{BENCH_CAP_PASSWORD}}@127.0.0.1:{port.group(1)}"
                "/odata/v4/erp/", "modified": "modifiedAt"},
        "Customers", "ID", [("ID", "id"), ("name", "name"), ("credit", "credit")],
        "CREATE TABLE items (id integer PRIMARY KEY, name varchar(100) NOT NULL, "
        "credit numeric(12,2));",
        lambda key, stamp: {"ID": key, "name": stamp, "credit": 1},
        auth=httpx.BasicAuth(CAP_USER, CAP_PASSWORD))


# -- the observers and the writers -------------------------------------------------------------
def listener(seen: Seen, ready: threading.Event, stop: threading.Event) -> None:
    """The PostgreSQL side: each stamp's NOTIFY, as its transaction commits."""
    with psycopg.connect(PG_DSN.format(db=DB_PG), autocommit=True) as c:
        c.execute("LISTEN bench_arrived")
        ready.set()
        while not stop.is_set():
            for n in c.notifies(timeout=0.2):
                seen.see(n.payload, time.time())


def baseline(s: Service, seen: Seen, interval: float, stop: threading.Event) -> None:
    """Re-read the set with plain paged GETs, noting each stamp when first seen."""
    with s.client() as http:
        while not stop.is_set():
            found = False
            t0 = time.perf_counter()
            url: str | None = f"{s.entity_set}?$select={s.key},name"
            while url:
                r = http.get(url, headers={"Prefer": f"odata.maxpagesize={PAGE}"})
                seen.requests += 1
                r.raise_for_status()
                doc = r.json()
                now = time.time()
                for e in doc["value"]:
                    found |= seen.see(e.get("name"), now)
                url = doc.get("@odata.nextLink")
            seen.sweeps.append(time.perf_counter() - t0)
            if not found:
                stop.wait(interval)


def writer(s: Service, measurement: int, lane: int, lanes: int, rate: float, until: float,
           rows: int, commits: dict[str, tuple[int, float]], lock: threading.Lock,
           failures: list[str]) -> None:
    """Write at ``rate`` a second until ``until`` through the service's OData API: one in
    ten a POST of a new row, else a PATCH of a random row (keys ≡ lane mod lanes); each
    stamps a name unique in the whole run (the rows are ``measurement``'s own: a stamp
    written again by a later measurement would change nothing), its commit time noted when
    the request returned. New rows take keys of the measurement's own range."""
    rng = random.Random(measurement * 1000 + lane)
    fresh = 10_000_000 * measurement + lane
    n = 0
    next_at = time.monotonic()
    with s.client() as http:
        while time.monotonic() < until:
            n += 1
            stamp = f"m{measurement}w{lane}-{n}"
            if rng.random() < 0.1:
                key, fresh = fresh, fresh + lanes
                r = http.post(s.entity_set, json=s.create(key, stamp))
            else:
                key = rng.randrange(rows // lanes) * lanes + lane + 1
                r = http.patch(f"{s.entity_set}({key})", json={"name": stamp})
            if r.status_code >= 300:
                failures.append(f"{r.request.method} {r.request.url}: {r.status_code} "
                                f"{r.text[:300]}")
            else:
                with lock:
                    commits[stamp] = (key, time.time())
            next_at += 1 / rate
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] if xs else float("nan")


# -- one scenario ------------------------------------------------------------------------------
def measure(s: Service, args: argparse.Namespace, interval: float | None) -> dict[str, Any]:
    """One scenario, followed by `dualwrite run` (``interval`` None: it waits 1 s after a
    step that wrote nothing) or by `dualwrite follow --interval INTERVAL`; the baseline
    waits as long after a read that found nothing new."""
    wait = 1.0 if interval is None else interval
    measurement = next(_MEASUREMENTS)  # its stamps and new keys are its own
    work = WORK / (s.scenario + ("" if interval is None else f"-{interval:g}"))
    shutil.rmtree(work, ignore_errors=True)
    (work / "maps").mkdir(parents=True)
    (work / "maps" / "followed.yaml").write_text(s.map_text())
    recreate(DB_PG)
    run_script("postgresql", DB_PG, s.pg_ddl + ARRIVALS.format(table="items"))
    config = work / "dualwrite.yaml"
    config.write_text(yaml.safe_dump(
        {"environments": {"svc": s.env, "pg": {"url": PG_URL.format(db=DB_PG)}},
         "link": {"name": s.scenario, "left": "svc", "right": "pg"},
         "state": f"sqlite:///{work / 'state.db'}", "maps": ["maps/*.yaml"],
         "sync": {"batch_size": PAGE}}))
    said = cli(config, "validate")
    want = "delta links" if s.method == "delta" else "polling"
    if want not in said:
        raise RuntimeError(f"validate does not say the changes are read by {want}: {said}")
    cli(config, "follow", "--start")  # the service's position first, then the copy
    cli(config, "sync", "--initial")
    counted = work / "requests"
    command = ["run"] if interval is None else ["follow", "--interval", f"{interval:g}"]
    run = Process([str(PYTHON), "-c", COUNTED_RUN, str(counted), "-c", str(config), *command],
                  work / "follower.log", work)
    arrived, seen = Seen(), Seen()
    commits: dict[str, tuple[int, float]] = {}
    failures: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    ready = threading.Event()
    threads = [threading.Thread(target=listener, args=(arrived, ready, stop)),
               threading.Thread(target=baseline, args=(s, seen, wait, stop))]
    try:
        run.wait_for("following link")
        for t in threads:
            t.start()
        ready.wait(30)
        time.sleep(3)  # the follower and the baseline past their first reads
        lanes = max(1, -(-int(args.rate) // 10))  # a writer keeps up with ~10 writes/s
        until = time.monotonic() + args.seconds
        writers = [threading.Thread(target=writer, args=(
            s, measurement, lane, lanes, args.rate / lanes, until, args.rows, commits, lock,
            failures))
            for lane in range(lanes)]
        sent0, cpu0, base0 = int(counted.read_text()), cpu_seconds(run.proc.pid), seen.requests
        started = time.monotonic()
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        window = time.monotonic() - started
        sent, cpu = int(counted.read_text()) - sent0, cpu_seconds(run.proc.pid) - cpu0
        base = seen.requests - base0
        # the last stamp of every row written: it must arrive (earlier ones of a row may be
        # overwritten before the follower or the baseline reads them)
        last: dict[int, str] = {}
        for stamp, (key, _) in sorted(commits.items(), key=lambda kv: kv[1][1]):
            last[key] = stamp
        swept = len(seen.sweeps)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
                not all(v in arrived.at for v in last.values()) or len(seen.sweeps) < swept + 2):
            time.sleep(0.1)
        missing = [v for v in last.values() if v not in arrived.at]
    finally:
        stop.set()
        for t in threads:
            if t.ident is not None:  # started
                t.join(timeout=60)
        code = run.stop()
    if failures:
        raise RuntimeError(f"{len(failures)} write(s) refused, e.g. {failures[0]}")
    if code != 0:
        raise RuntimeError(f"dualwrite {command[0]} exited {code}: "
                           f"{''.join(run.lines)[-2000:]}")
    if missing:
        raise RuntimeError(f"{len(missing)} row(s)' last write never reached PostgreSQL, "
                           f"e.g. {missing[:5]}")
    cli(config, "verify")  # exits 1 (raises here) when the sides differ
    result: dict[str, Any] = {
        "writes": len(commits), "window": window, "run_requests": sent / window,
        "run_cpu": cpu / window, "base_requests": base / window,
        "sweep": statistics.median(seen.sweeps) if seen.sweeps else float("nan")}
    for name, obs in (("run", arrived), ("base", seen)):
        lag = [obs.at[k] - t for k, (_, t) in commits.items() if k in obs.at]
        result[name] = {"p50": pct(lag, 50), "p99": pct(lag, 99), "seen": len(lag)}
    print(s.scenario, " ".join(command), result, flush=True)
    return result


def ms(x: float) -> str:
    return f"{x * 1000:,.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5000, help="rows in the set at the start")
    ap.add_argument("--rate", type=float, default=30.0, help="writes per second")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long the writers write")
    ap.add_argument("--fast", type=float, default=0.1,
                    help="also follow each scenario with `dualwrite follow --interval FAST` "
                    "(the same follower, a shorter wait after a step that wrote nothing), "
                    "the baseline waiting as long (0: `run` only)")
    ap.add_argument("--only", default=",".join(SCENARIOS),
                    help=f"scenarios, comma-separated: {', '.join(SCENARIOS)}")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args()
    wanted = [x for x in args.only.split(",") if x]
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(sorted(unknown))}")
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    WORK.mkdir(parents=True, exist_ok=True)
    configs: list[float | None] = [None, *([args.fast] if args.fast > 0 else [])]
    load = os.getloadavg()
    services: dict[str, Service] = {}
    results: dict[tuple[str, float | None], dict[str, Any]] = {}

    def each(sc: str) -> None:
        for interval in configs:
            results[(sc, interval)] = measure(services[sc], args, interval)

    try:
        if {"serve-delta", "serve-poll"} & set(wanted):
            with served_hub(args.rows) as (root, token):
                os.environ["BENCH_HUB_TOKEN"] = token
                for sc in ("serve-delta", "serve-poll"):
                    if sc in wanted:
                        services[sc] = hub_service(sc, root, token)
                        each(sc)
        if "cap-poll" in wanted:
            os.environ["BENCH_CAP_PASSWORD"] = CAP_PASSWORD
            with cap_server(args.rows) as root:
                services["cap-poll"] = cap_service(root)
                each("cap-poll")
    finally:
        drop(DB_PG, DB_HUB_A, DB_HUB_B)
    load_after = os.getloadavg()

    rows = []
    for sc in [x for x in SCENARIOS if x in services]:
        for interval in configs:
            r, s = results[(sc, interval)], services[sc]
            follower = "`run` (1 s)" if interval is None else f"`follow --interval {interval:g}`"
            rows.append(
                f"| {s.label} | {follower} | {ms(r['run']['p50'])} | {ms(r['run']['p99'])} | "
                f"{ms(r['base']['p50'])} | {ms(r['base']['p99'])} | "
                f"{r['run']['p50'] / r['base']['p50']:.2f}× / "
                f"{r['run']['p99'] / r['base']['p99']:.2f}× | {r['writes']:,} "
                f"({r['writes'] / r['window']:.0f}/s) | {r['writes'] - r['run']['seen']} / "
                f"{r['writes'] - r['base']['seen']} | {r['run_requests']:.1f} | "
                f"{r['run_cpu'] * 100:.0f} % | {r['base_requests']:.1f} | "
                f"{ms(r['sweep'])} |")
    body = (
        f"`python bench/odata_follow.py --rows {args.rows} --rate {args.rate:g} --seconds "
        f"{args.seconds:g} --fast {args.fast:g}` (`make bench-odata-follow`, measured "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC): a link whose left side is "
        "an OData service and whose right side is a PostgreSQL table (loopback), followed by "
        "the real `dualwrite run` (the follower under the applier lease, after `follow "
        "--start` and `sync --initial`), and again, from scratch, by `dualwrite follow "
        f"--interval {args.fast:g}` (the same follower, stepping again {args.fast:g} s — not "
        "`run`'s fixed 1 s — after a step that wrote nothing). The service's set holds "
        f"{args.rows:,} rows; writers change it through the service's own OData API at "
        f"{args.rate:g} writes/s for {args.seconds:g} s (one in ten a POST creating a row, "
        "the rest a PATCH of a random row), each stamping a unique `name`. **Lag**: from "
        "the write's request returning (committed in the service) to a NOTIFY of a trigger "
        "on the PostgreSQL table reaching a listener (the row committed there). "
        "**Baseline**: in the same run, a client re-reading the same set with plain paged "
        f"GETs ({PAGE:,} per page) sees the same writes; its lag is to the first read that "
        "shows the stamp, and it waits as long as the follower (1 s, or the `--interval`) "
        "after a read that found nothing new. The follower's requests (counted in its "
        "process) and CPU (user + system, of one core) are per second while the writers "
        f"wrote. {os.cpu_count()} cores, shared with other work: load average "
        f"{load[0]:.1f} (1 min) when the run began, {load_after[0]:.1f} when it ended.\n\n"
        "| service, method | follower (wait when idle) | follower lag p50 ms | p99 ms | "
        "baseline lag p50 ms | p99 ms | follower ÷ baseline (p50 / p99) | writes | not seen: "
        "follower / baseline | follower requests/s | follower CPU | baseline requests/s | "
        "one baseline sweep ms |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "\"Not seen\" counts stamps overwritten before a read saw them (a row patched twice "
        "between two reads is read once, as it is then); every row's last write arrived in "
        "PostgreSQL, and `verify` found both sides equal after each measurement. A step of "
        "the follower reads a delta link or polls, and writes what changed in one PostgreSQL "
        "transaction; polling also reads the whole set's keys every tenth step (deletions), "
        "which is in its requests and CPU. The lag includes the service's own time: CAP and "
        "`serve` answer the writers, the follower and the baseline alike.\n")
    print("\n" + body)
    if not args.no_docs:
        update_section(ROOT / "docs" / "benchmarks.md", "odata-follow",
                       "Following an OData environment: capture lag through delta links and "
                       "through polling", body)
        print("wrote docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
