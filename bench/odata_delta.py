"""Benchmark: OData change tracking (delta links) against polling with plain paged GETs.

A real `dualwrite serve` (which also applies captured changes) links two PostgreSQL
databases A and B, each holding ``items`` (``--rows`` rows, default 20,000). While three
writers change rows of A's table at a paced rate:

- ``sql-a``: the application's own SQL on A (autocommit UPDATEs and INSERTs);
- ``api``: PATCH/POST through the OData service of A (dual-written);
- ``sql-b``: the application's own SQL on B, which the applier writes into A;

two clients of A's entity set run side by side, both waiting ``--interval`` seconds after a
read that found nothing new:

- ``delta``: reads the set once with ``Prefer: odata.track-changes``, then follows its delta
  links;
- ``polling`` (the baseline): reads the whole set with plain paged GETs (server-driven
  paging, 1,000 per page) again and again, and compares each version it sees.

Every write stamps a unique ``note``; the lag of a write is from the moment its commit
returned to the writer until a client first sees that note (p50 / p99 over all writes), and
the cost is what each client asked of the service: requests, entities and bytes received.

Usage: python bench/odata_delta.py [--rows 20000] [--rate 150] [--seconds 20]
       [--interval 0.1] [--no-docs]
Writes the odata-delta section of docs/benchmarks.md unless --no-docs.
"""

from __future__ import annotations

import argparse
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from report import run_script, update_section  # noqa: E402

PG_DSN = "host=127.0.0.1 user=postgres dbname={db}"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
DUALWRITE = ROOT / ".venv" / "bin" / "dualwrite"
WORK = ROOT / ".bench" / "odata-delta"  # git-ignored: config, state, logs
DB_A, DB_B = "dwbench_delta_a", "dwbench_delta_b"
PAGE = 1000
DDL = """
CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, qty integer NOT NULL,
  note text);
"""
MAP = """name: items
left: items
right: items
key: {left: [id], right: [id]}
fields:
  - id = id
  - name = name
  - qty = qty
  - note = note
"""
WRITERS = ("sql-a", "api", "sql-b")


@dataclass
class Seen:
    """What one client saw, and what it cost."""

    name: str
    at: dict[str, float] = field(default_factory=dict)  # note -> when first seen
    requests: int = 0
    entities: int = 0
    bytes: int = 0
    busy: float = 0.0  # seconds spent waiting for responses

    def cost(self) -> tuple[float, float, float, float]:
        return (self.requests, self.entities, self.bytes, self.busy)


def reset() -> None:
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres",
                         autocommit=True) as c:
        for db in (DB_A, DB_B):
            c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            c.execute(f"CREATE DATABASE {db}")
    for db in (DB_A, DB_B):
        run_script("postgresql", db, DDL)


def cli(*args: str, timeout: float = 600) -> str:
    done = subprocess.run([str(DUALWRITE), "-c", str(WORK / "dualwrite.yaml"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=WORK)
    if done.returncode != 0:
        raise RuntimeError(f"dualwrite {' '.join(args)} failed: "
                           f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout


def _drain(proc: subprocess.Popen[str]) -> None:
    """Keep serve's output in serve.log (a full pipe would stall the server)."""
    assert proc.stdout is not None
    with (WORK / "serve.log").open("w") as log:
        for line in proc.stdout:
            log.write(line)


def start_serve() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([str(DUALWRITE), "-c", str(WORK / "dualwrite.yaml"), "serve",
                             "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=WORK)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
        if m:
            threading.Thread(target=_drain, args=(proc,), daemon=True).start()
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError("dualwrite serve did not start: " + "".join(lines)[-2000:])


def writer(kind: str, lane: int, rate: float, until: float, keys: int, base: str,
           token: str, commits: dict[str, tuple[str, float]], lock: threading.Lock) -> None:
    """Change rows of lane ``lane`` (keys ≡ lane mod 3) at ``rate`` a second until
    ``until``; one in ten writes creates a row. Records each note's commit time."""
    rng = random.Random(lane)
    fresh = keys + lane + 3 * 1_000_000
    conn = psycopg.connect(PG_DSN.format(db=DB_B if kind == "sql-b" else DB_A),
                           autocommit=True) if kind != "api" else None
    http = httpx.Client(base_url=f"{base}/odata/a/", timeout=30,
                        headers={"Authorization": f"Bearer {token}"}) \
        if kind == "api" else None
    n = 0
    next_at = time.monotonic()
    try:
        while time.monotonic() < until:
            n += 1
            note = f"{kind}-{n}"
            create = rng.random() < 0.1
            key = fresh if create else rng.randrange(keys // 3) * 3 + lane
            if create:
                fresh += 3
            if conn is not None:
                if create:
                    conn.execute("INSERT INTO items (id, name, qty, note) VALUES (%s, %s, 1, %s)",
                                 (key, f"item {key}", note))
                else:
                    conn.execute("UPDATE items SET note = %s, qty = qty + 1 WHERE id = %s",
                                 (note, key))
            else:
                assert http is not None
                r = http.post("items", json={"id": key, "name": f"item {key}", "qty": 1,
                                             "note": note}) if create else \
                    http.patch(f"items({key})", json={"note": note})
                if r.status_code >= 300:
                    raise RuntimeError(f"{r.status_code}: {r.text}")
            with lock:
                commits[note] = (kind, time.time())
            next_at += 1 / rate
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    finally:
        if conn is not None:
            conn.close()
        if http is not None:
            http.close()


def _get(http: httpx.Client, seen: Seen, url: str, headers: dict[str, str] | None = None
         ) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = http.get(url, headers=headers)
    seen.busy += time.perf_counter() - t0
    seen.requests += 1
    seen.bytes += len(r.content)
    if r.status_code != 200:
        raise RuntimeError(f"GET {url}: {r.status_code} {r.text[:500]}")
    doc: dict[str, Any] = r.json()
    seen.entities += len(doc["value"])
    return doc


def delta_client(base: str, token: str, seen: Seen, interval: float,
                 stop: threading.Event) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=60, headers=auth) as http:
        url = f"{base}/odata/a/items"
        while True:  # the initial read, with tracking
            doc = _get(http, seen, url, {"Prefer": "odata.track-changes"})
            if "@odata.nextLink" not in doc:
                break
            url = doc["@odata.nextLink"]
        link = doc["@odata.deltaLink"]
        while not stop.is_set():
            found = 0
            url = link
            while True:
                doc = _get(http, seen, url)
                now = time.time()
                for e in doc["value"]:
                    note = e.get("note")
                    if note and note not in seen.at:
                        seen.at[note] = now
                        found += 1
                if "@odata.nextLink" in doc:
                    url = doc["@odata.nextLink"]
                    continue
                link = doc["@odata.deltaLink"]
                break
            if not found:
                stop.wait(interval)


def polling_client(base: str, token: str, seen: Seen, interval: float,
                   stop: threading.Event, sweeps: list[float]) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=60, headers=auth) as http:
        while not stop.is_set():
            found = 0
            t0 = time.perf_counter()
            url = f"{base}/odata/a/items"
            while True:
                doc = _get(http, seen, url)
                now = time.time()
                for e in doc["value"]:
                    note = e.get("note")
                    if note and note not in seen.at:
                        seen.at[note] = now
                        found += 1
                if "@odata.nextLink" not in doc:
                    break
                url = doc["@odata.nextLink"]
            sweeps.append(time.perf_counter() - t0)
            if not found:
                stop.wait(interval)


def write_costs(rows: int) -> tuple[float, float]:
    """What the application's writes to A cost: (median seconds of one UPDATE of every row,
    of 500 single-row autocommit UPDATEs), three of each."""
    bulk, singles = [], []
    with psycopg.connect(PG_DSN.format(db=DB_A), autocommit=True) as c:
        for _ in range(3):
            t0 = time.perf_counter()
            c.execute("UPDATE items SET qty = qty + 1 WHERE id < %s", (rows,))
            bulk.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for key in range(0, 1500, 3):
                c.execute("UPDATE items SET qty = qty + 1 WHERE id = %s", (key,))
            singles.append(time.perf_counter() - t0)
    return statistics.median(bulk), statistics.median(singles)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000, help="rows in the table at the start")
    ap.add_argument("--rate", type=float, default=150.0, help="writes per second, in all")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long the writers write")
    ap.add_argument("--interval", type=float, default=0.1,
                    help="each client's wait after a read that found nothing new")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "maps").mkdir(exist_ok=True)
    (WORK / "maps" / "items.yaml").write_text(MAP)
    for stale in WORK.glob("state.db*"):  # the state file, its WAL, its decision journal
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()
    (WORK / "dualwrite.yaml").write_text(
        "environments:\n"
        f"  a: {{url: '{PG_URL.format(db=DB_A)}'}}\n"
        f"  b: {{url: '{PG_URL.format(db=DB_B)}'}}\n"
        f"link: {{name: {DB_A}, left: a, right: b}}\n"
        f"state: 'sqlite:///{WORK / 'state.db'}'\n"
        "maps: ['maps/*.yaml']\n"
        f"serve: {{page_size: {PAGE}, access_log: false}}\n")
    load = os.getloadavg()[0]  # other work on the machine is in the figures: say how much
    reset()
    with psycopg.connect(PG_DSN.format(db=DB_A), autocommit=True) as c:
        c.execute("INSERT INTO items (id, name, qty, note) SELECT g, 'item ' || g, 0, NULL "
                  "FROM generate_series(0, %s) g", (args.rows - 1,))
    cli("maps", "start", "items", "--yes")
    token = cli("tokens", "create", "--principal", "bench", "--role", "writer").strip()
    proc, base = start_serve()
    commits: dict[str, tuple[str, float]] = {}
    lock = threading.Lock()
    delta, polling = Seen("delta links"), Seen("polling (plain paged GETs)")
    sweeps: list[float] = []
    stop = threading.Event()
    try:
        untracked = write_costs(args.rows)
        clients = [threading.Thread(target=delta_client,
                                    args=(base, token, delta, args.interval, stop)),
                   threading.Thread(target=polling_client,
                                    args=(base, token, polling, args.interval, stop, sweeps))]
        for t in clients:
            t.start()
        time.sleep(2)  # both clients past their first read
        until = time.monotonic() + args.seconds
        writers = [threading.Thread(target=writer, args=(
            kind, lane, args.rate / len(WRITERS), until, args.rows, base, token, commits, lock))
            for lane, kind in enumerate(WRITERS)]
        before = {s.name: s.cost() for s in (delta, polling)}
        started = time.monotonic()
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        window = time.monotonic() - started
        during = {s.name: tuple(b - a for a, b in zip(before[s.name], s.cost(), strict=True))
                  for s in (delta, polling)}
        # what is still on its way: the delta client until it has seen every write, the
        # polling client two more sweeps (a write overwritten meanwhile is never seen)
        swept = len(sweeps)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (len(sweeps) < swept + 2 or not all(
                n in delta.at for n in commits)):
            time.sleep(0.2)
        stop.set()
        for t in clients:
            t.join(timeout=60)
        tracked = write_costs(args.rows)  # the journal triggers are there now
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()

    rows: list[str] = []
    lags: dict[str, list[float]] = {}
    for s in (delta, polling):
        requests, entities, size, busy = during[s.name]
        lag = [s.at[n] - t for n, (_, t) in commits.items() if n in s.at]
        lags[s.name] = lag
        by_source = {k: [s.at[n] - t for n, (src, t) in commits.items()
                         if src == k and n in s.at] for k in WRITERS}
        rows.append(
            f"| {s.name} | {pct(lag, 50) * 1000:.0f} | {pct(lag, 99) * 1000:.0f} | "
            + " | ".join(f"{pct(v, 50) * 1000:.0f}" for v in by_source.values())
            + f" | {len(commits) - len(lag)} | {requests / window:.1f} | "
            f"{entities / window:,.0f} | {size / window / 1e6:.2f} | {busy / window:.2f} |")
    d50, p50 = pct(lags[delta.name], 50), pct(lags[polling.name], 50)
    d99, p99 = pct(lags[delta.name], 99), pct(lags[polling.name], 99)
    body = (
        f"`python bench/odata_delta.py --rows {args.rows} --rate {args.rate:g} --seconds "
        f"{args.seconds:g} --interval {args.interval:g}`: a real `dualwrite serve` linking two "
        "PostgreSQL databases (loopback, the same server). Three writers change A's `items` "
        f"({args.rows:,} rows) at {args.rate:g} writes/s in all for {args.seconds:g} s: the "
        "application's own SQL on A (`sql-a`), PATCH/POST through the OData service (`api`), "
        "and the application's SQL on B, which the applier writes into A (`sql-b`); one write "
        "in ten creates a row. Two clients of A's entity set run at the same time and wait "
        f"{args.interval:g} s after a read that found nothing new: one follows delta links, "
        f"the other (the baseline) re-reads the set with plain paged GETs ({PAGE} per page). "
        f"Lag: from the writer's commit to the client seeing the write; {len(commits):,} "
        f"writes ({len(commits) / window:.0f}/s reached). Cost: per second while the writers "
        f"wrote. {os.cpu_count()} cores, load average {load:.1f} when the run began.\n\n"
        "| client | lag p50 ms | lag p99 ms | p50 sql-a | p50 api | p50 sql-b | writes "
        "never seen | requests/s | entities/s received | MB/s received | share of the time "
        "waiting on responses |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Delta links against polling: lag p50 {d50 / p50:.2f}×, p99 {d99 / p99:.2f}×; "
        f"requests {during[delta.name][0] / max(during[polling.name][0], 1):.3f}×, bytes "
        f"{during[delta.name][2] / max(during[polling.name][2], 1):.4f}×. One plain paged "
        "read of the whole set "
        f"took {statistics.median(sweeps) * 1000:.0f} ms (median of {len(sweeps)}); a "
        "polling client's lag is bounded below by it, and grows with the table, while a "
        "delta read costs what changed. A write the polling client never saw was overwritten "
        "before its next sweep; a delta client sees a row once per read as it is then (several "
        "changes of one row between two reads are told once).\n")
    body += (
        "\nWhat tracking costs the application's own writes (the journal triggers: one row "
        "per changed row, in the writer's transaction), on A with capture installed, before "
        "the delta client first asked (untracked) and after the run (tracked), median of "
        f"three: one UPDATE of all {args.rows:,} rows {untracked[0] * 1000:.0f} ms → "
        f"{tracked[0] * 1000:.0f} ms ({tracked[0] / untracked[0]:.2f}×); 500 single-row "
        f"autocommit UPDATEs {untracked[1] * 1000:.0f} ms → {tracked[1] * 1000:.0f} ms "
        f"({tracked[1] / untracked[1]:.2f}×). (`serve` applies each of them to B meanwhile, "
        "alike in both.)\n")
    print("\n" + body)
    if not args.no_docs:
        update_section(ROOT / "docs" / "benchmarks.md", "odata-delta",
                       "OData change tracking: delta links against polling", body)
        print("wrote docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
