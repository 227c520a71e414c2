"""Benchmark: live sync, one mapped row created through dualwrite, against the floor.

The floor is the same two inserts committed with a raw two-phase commit and no dualwrite
(psycopg ``PREPARE TRANSACTION`` / PyMySQL ``XA``), measured in the same run on the same
tables. Measured: p50/p99 latency of a single-row create through the Python API and through
OData (``dualwrite serve`` in a child process), and throughput with 1 and 8 clients.

Usage: python bench/live_sync.py [--n 600] [--seconds 5] [--skip-mariadb] [--no-report]
Writes the live-sync section of docs/benchmarks.md unless --no-report.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pymysql
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import dualwrite  # noqa: E402
from dualwrite.engine.security import create_token  # noqa: E402

from report import run_script, update_section  # noqa: E402

PG = "host=127.0.0.1 user=postgres dbname={db}"
URL = {"postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/{db}",
       "mysql": "mysql+pymysql://root@127.0.0.1:3306/{db}"}
LEFT_DB, RIGHT_DB = "dualwrite_bench_a", "dualwrite_bench_b"

# The realistic map of issue 14: a lookup by natural key into customer groups, an
# option-set value map, a `none >>` default and a one-way field.
MAP = """name: customers
left: LiveCustomers
right: live_accounts
key: {left: [CUSTOMERACCOUNT], right: [accountnumber]}
fields:
  - CUSTOMERACCOUNT = accountnumber
  - ORGANIZATIONNAME = name
  - CREDITLIMIT = creditlimit
  - ONHOLDSTATUS >< msdyn_onholdstatus: {values: {"No": 806380000, "Invoice": 806380001}}
  - CUSTOMERGROUPID = msdyn_customergroupid.msdyn_groupid
  - PRIMARYCONTACTEMAIL > emailaddress1
  - none >> customertypecode: {default: 3}
"""
GROUPS_MAP = """name: groups
left: LiveGroups
right: live_groups
key: {left: [GROUPID], right: [msdyn_groupid]}
fields:
  - GROUPID = msdyn_groupid
"""

LEFT_DDL = """DROP TABLE IF EXISTS "LiveCustomers"; DROP TABLE IF EXISTS floor_left;
DROP TABLE IF EXISTS "LiveGroups"; DROP TABLE IF EXISTS dualwrite_link;
CREATE TABLE "LiveGroups" ("GROUPID" varchar(10) PRIMARY KEY);
INSERT INTO "LiveGroups" SELECT 'G' || g FROM generate_series(1, 20) g;
CREATE TABLE "LiveCustomers" ("CUSTOMERACCOUNT" varchar(40) PRIMARY KEY,
  "ORGANIZATIONNAME" varchar(100) NOT NULL, "CREDITLIMIT" numeric(18,2),
  "ONHOLDSTATUS" varchar(10), "CUSTOMERGROUPID" varchar(10), "PRIMARYCONTACTEMAIL" varchar(100));
CREATE TABLE floor_left (LIKE "LiveCustomers" INCLUDING ALL);"""

RIGHT_DDL = {
    "postgresql": """DROP TABLE IF EXISTS live_accounts; DROP TABLE IF EXISTS floor_right;
DROP TABLE IF EXISTS live_groups; DROP TABLE IF EXISTS dualwrite_link;
CREATE TABLE live_groups (msdyn_customergroupid varchar(36) PRIMARY KEY
  DEFAULT gen_random_uuid()::text, msdyn_groupid varchar(10) NOT NULL UNIQUE);
CREATE TABLE live_accounts (accountid varchar(36) PRIMARY KEY DEFAULT gen_random_uuid()::text,
  accountnumber varchar(40) NOT NULL UNIQUE, name varchar(100) NOT NULL,
  creditlimit numeric(18,2), msdyn_onholdstatus integer, customertypecode integer,
  msdyn_customergroupid varchar(36) REFERENCES live_groups, emailaddress1 varchar(100));
CREATE TABLE floor_right (LIKE live_accounts INCLUDING ALL);
ALTER TABLE floor_right ADD FOREIGN KEY (msdyn_customergroupid) REFERENCES live_groups;""",
    "mysql": """DROP TABLE IF EXISTS live_accounts; DROP TABLE IF EXISTS floor_right;
DROP TABLE IF EXISTS live_groups; DROP TABLE IF EXISTS dualwrite_link;
CREATE TABLE live_groups (msdyn_customergroupid varchar(36) PRIMARY KEY DEFAULT (uuid()),
  msdyn_groupid varchar(10) NOT NULL UNIQUE);
CREATE TABLE live_accounts (accountid varchar(36) PRIMARY KEY DEFAULT (uuid()),
  accountnumber varchar(40) NOT NULL UNIQUE, name varchar(100) NOT NULL,
  creditlimit decimal(18,2), msdyn_onholdstatus integer, customertypecode integer,
  msdyn_customergroupid varchar(36), emailaddress1 varchar(100),
  FOREIGN KEY (msdyn_customergroupid) REFERENCES live_groups (msdyn_customergroupid));
CREATE TABLE floor_right LIKE live_accounts;
ALTER TABLE floor_right ADD FOREIGN KEY (msdyn_customergroupid)
  REFERENCES live_groups (msdyn_customergroupid);""",
}


def clear_prepared() -> None:
    """Roll back branches an interrupted earlier run left prepared: their locks would make
    the DROP TABLEs below wait forever."""
    for db in (LEFT_DB, RIGHT_DB):
        with psycopg.connect(PG.format(db=db), autocommit=True) as c:
            for (gid,) in c.execute("SELECT gid FROM pg_prepared_xacts WHERE database = "
                                    "current_database() AND (gid LIKE 'floor-%%' OR gid "
                                    "LIKE 'dw-%%')").fetchall():
                c.execute(f"ROLLBACK PREPARED '{gid}'")  # type: ignore[arg-type]
    conn = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    with conn.cursor() as cur:
        cur.execute("XA RECOVER")
        for row in cur.fetchall():
            xid = row[3].decode() if isinstance(row[3], bytes) else str(row[3])
            if xid.startswith(("floor-", "dw-")):
                cur.execute("XA ROLLBACK %s", (xid,))
    conn.close()


def setup(target: str) -> None:
    clear_prepared()
    run_script("postgresql", LEFT_DB, LEFT_DDL)
    run_script(target, RIGHT_DB, RIGHT_DDL[target])


class Floor:
    """The same two inserts with a raw two-phase commit: the least any coordinator does."""

    def __init__(self, target: str) -> None:
        self.target = target
        # autocommit: BEGIN is explicit, and COMMIT PREPARED must run outside a transaction
        self.left = psycopg.connect(PG.format(db=LEFT_DB), autocommit=True)
        if target == "postgresql":
            self.right: Any = psycopg.connect(PG.format(db=RIGHT_DB), autocommit=True)
            row = self.right.execute("SELECT msdyn_customergroupid FROM live_groups "
                                     "WHERE msdyn_groupid = 'G1'").fetchone()
        else:
            self.right = pymysql.connect(host="127.0.0.1", user="root", database=RIGHT_DB,
                                         autocommit=True)
            with self.right.cursor() as cur:
                cur.execute("SELECT msdyn_customergroupid FROM live_groups "
                            "WHERE msdyn_groupid = 'G1'")
                row = cur.fetchone()
        # the application knows its group's id: the floor does no lookup
        assert row is not None, "the groups map is synced before the floor runs"
        self.group = row[0]

    def write(self, key: str) -> None:
        xid = "floor-" + uuid.uuid4().hex
        self.left.execute("BEGIN")
        self.left.execute('INSERT INTO floor_left VALUES (%s, %s, %s, %s, %s, %s)',
                          (key, "Floor Ltd", 100, "No", "G1", "floor@example.com"))
        if self.target == "postgresql":
            self.right.execute("BEGIN")
            self.right.execute("INSERT INTO floor_right (accountnumber, name, creditlimit, "
                               "msdyn_onholdstatus, customertypecode, msdyn_customergroupid, "
                               "emailaddress1) VALUES (%s,%s,%s,%s,3,%s,%s)",
                               (key, "Floor Ltd", 100, 806380000, self.group,
                                "floor@example.com"))
            self.left.execute(f"PREPARE TRANSACTION '{xid}-l'")
            self.right.execute(f"PREPARE TRANSACTION '{xid}-r'")
            self.left.execute(f"COMMIT PREPARED '{xid}-l'")
            self.right.execute(f"COMMIT PREPARED '{xid}-r'")
        else:
            with self.right.cursor() as cur:
                cur.execute("XA START %s", (xid,))
                cur.execute("INSERT INTO floor_right (accountnumber, name, creditlimit, "
                            "msdyn_onholdstatus, customertypecode, msdyn_customergroupid, "
                            "emailaddress1) VALUES (%s,%s,%s,%s,3,%s,%s)",
                            (key, "Floor Ltd", 100, 806380000, self.group,
                             "floor@example.com"))
                cur.execute("XA END %s", (xid,))
                self.left.execute(f"PREPARE TRANSACTION '{xid}-l'")
                cur.execute("XA PREPARE %s", (xid,))
                self.left.execute(f"COMMIT PREPARED '{xid}-l'")
                cur.execute("XA COMMIT %s", (xid,))

    def close(self) -> None:
        self.left.close()
        self.right.close()


def warm_up(fn: Callable[[str], None], tag: str) -> None:
    for i in range(20):  # pools, caches, prepared statements
        fn(f"{tag}-w{i}")


def interleaved(paths: dict[str, Callable[[str], None]], n: int, rounds: int = 10
                ) -> dict[str, list[float]]:
    """``n`` sequential latencies (ms) per path, taken in ``rounds`` alternating rounds, so
    that every path sees the same slow and fast moments of a shared machine."""
    out: dict[str, list[float]] = {name: [] for name in paths}
    for name, fn in paths.items():
        warm_up(fn, name)
    per_round = max(1, n // rounds)
    for r in range(rounds):
        for name, fn in paths.items():
            for i in range(per_round):
                t0 = time.perf_counter()
                fn(f"{name}-{r}-{i}")
                out[name].append((time.perf_counter() - t0) * 1000)
    return out


def throughput(make: Callable[[], Callable[[str], None]], clients: int, seconds: float,
               tag: str) -> float:
    """Rows per second with ``clients`` threads writing as fast as they can."""
    done = [0] * clients
    stop = time.perf_counter() + seconds
    errors: list[BaseException] = []

    def run(c: int) -> None:
        fn = make()
        i = 0
        try:
            while time.perf_counter() < stop:
                fn(f"{tag}-{c}-{i}")
                i += 1
        except BaseException as exc:  # report, don't hang the benchmark
            errors.append(exc)
        done[c] = i

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(done) / (time.perf_counter() - t0)


def pct(xs: list[float], p: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(p) - 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


STATE_DB = "dualwrite_bench_state"


def state_url(store: str, work: Path) -> str:
    """An empty state store: a SQLite file in ``work``, or a PostgreSQL database of its own
    (made if missing, its tables dropped)."""
    if store == "sqlite":
        (work / "state.db").unlink(missing_ok=True)
        return f"sqlite:///{work / 'state.db'}"
    admin = sa.create_engine(URL["postgresql"].format(db="postgres"),
                             isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        if conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"),
                        {"d": STATE_DB}).first() is None:
            conn.exec_driver_sql(f"CREATE DATABASE {STATE_DB}")
    admin.dispose()
    url = URL["postgresql"].format(db=STATE_DB)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()
    return url


def run_target(target: str, n: int, seconds: float, work: Path, store: str = "sqlite"
               ) -> dict[str, Any]:
    setup(target)
    (work / "maps").mkdir(parents=True, exist_ok=True)
    (work / "maps" / "customers.yaml").write_text(MAP)
    (work / "maps" / "groups.yaml").write_text(GROUPS_MAP)
    (work / "dualwrite.yaml").write_text(
        f"environments:\n  erp: {{url: '{URL['postgresql'].format(db=LEFT_DB)}'}}\n"
        f"  crm: {{url: '{URL[target].format(db=RIGHT_DB)}'}}\n"
        f"link: {{left: erp, right: crm}}\nstate: '{state_url(store, work)}'\n"
        "maps: ['maps/*.yaml']\n")
    row = {"ORGANIZATIONNAME": "Contoso Ltd", "CREDITLIMIT": 100, "ONHOLDSTATUS": "No",
           "CUSTOMERGROUPID": "G1", "PRIMARYCONTACTEMAIL": "someone@example.com"}
    link = dualwrite.open(work / "dualwrite.yaml")
    link.start_maps()
    floor = Floor(target)

    def floor_factory() -> Callable[[str], None]:
        return Floor(target).write

    token = create_token(link.state, "bench", role="writer")

    def api_write(key: str) -> None:
        with link.transaction(principal="bench") as tx:
            tx.create("erp", "LiveCustomers", {"CUSTOMERACCOUNT": key, **row})

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "dualwrite.cli", "-c", str(work / "dualwrite.yaml"), "serve",
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("dualwrite serve did not start within 30 s")
            time.sleep(0.1)

        def odata_factory() -> Callable[[str], None]:
            # The standard library's HTTP client on one kept-alive connection: httpx spent
            # about 0.9 ms of CPU per request here, which is the client's cost, not the
            # service's (it was in the figures up to 2026-12-06).
            headers = {"Authorization": f"Bearer {token}", "Prefer": "return=minimal",
                       "Content-Type": "application/json"}
            conn = [http.client.HTTPConnection("127.0.0.1", port, timeout=30)]

            def write(key: str) -> None:
                body = json.dumps({"CUSTOMERACCOUNT": key, **row})
                for attempt in (1, 2):
                    try:
                        conn[0].request("POST", "/odata/erp/LiveCustomers", body=body,
                                        headers=headers)
                        r = conn[0].getresponse()
                        text = r.read()
                        break
                    except (http.client.HTTPException, OSError):
                        # the server closed a kept-alive connection that sat idle: again, once
                        conn[0].close()
                        conn[0] = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                        if attempt == 2:
                            raise
                if r.status not in (201, 204):
                    raise RuntimeError(f"OData create failed: {r.status} {text[:500]!r}")
            return write

        lat = interleaved({"floor": floor.write, "api": api_write, "odata": odata_factory()},
                          n)
        floor.close()
        floor_1 = throughput(floor_factory, 1, seconds, "f1")
        floor_8 = throughput(floor_factory, 8, seconds, "f8")
        api_1 = throughput(lambda: api_write, 1, seconds, "a1")
        api_8 = throughput(lambda: api_write, 8, seconds, "a8")
        odata_8 = throughput(odata_factory, 8, seconds, "o8")
    finally:
        server.terminate()
        server.wait(timeout=30)
        link.close()
    return {
        "floor": lat["floor"], "api": lat["api"], "odata": lat["odata"],
        "floor_1": floor_1, "floor_8": floor_8, "api_1": api_1, "api_8": api_8,
        "odata_8": odata_8,
    }


#: What changed last and why the targets not met are not (from profiles; kept with the
#: benchmark so that the section it writes says it).
NOTES = (
    "Since the previous run (2026-12-07, afternoon): (1) a PostgreSQL branch waits for its "
    "answers in `select` only, never inside libpq's `PQgetResult`, which waits holding the "
    "GIL (every other thread of the process stopped for the rest of a round trip whenever "
    "an answer came in two parts); (2) the branches' two INSERTs run on the protocol "
    "directly (psycopg's dumping and its cache of prepared statements, not its cursor): "
    "in-process, 8 threads, CPU per create 0.53-0.61 -> 0.47-0.53 ms, rows/s +6 %; (3) "
    "`Link.live_maps` worked out once per binding; (4) MariaDB as the last resource: the "
    "decision row, `XA END` and `XA COMMIT ... ONE PHASE` in one request instead of three. "
    "Runs on this tree before the one in the table, PostgreSQL <-> PostgreSQL: API p50 1.14x, "
    "1.23x the floor; OData 1.80x, 1.83x; 8 clients 0.85x, 0.78x (and 0.79x, 0.76x, 0.80x "
    "before (4), which does not touch this pair). PostgreSQL <-> MariaDB: API 1.28x, 1.29x "
    "(1.33x-1.39x before (4)); 8 clients 0.84x, 0.72x (0.63x-0.68x before). "
    "What is left, 8 clients: the two cores are the limit (about 1.7 of 2 busy on both "
    "paths); per create the machine spends about 1.15 ms of CPU on dualwrite's path against "
    "0.9 ms on the floor's, nearly all the difference in dualwrite's process (0.5 ms against "
    "the floor client's 0.3). Of that, about 0.2 ms is the kernel's side of sending seven "
    "messages and waiting on their sockets (the floor sends eight), the rest Python: "
    "checking and mapping the row, the coordinator, the audit rows and the decision record. "
    "Sending a branch's BEGIN with its first statement (libpq's pipeline mode) measured no "
    "cheaper: entering and leaving the mode costs what the message saves.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--skip-mariadb", action="store_true")
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on this project's 2-core machine, "
        f"`python bench/live_sync.py` ({args.n} sequential creates per path, taken in ten "
        "alternating rounds so that all paths see the same machine, throughput over "
        f"{args.seconds:g} s). One create of a mapped row written with its twin in one two-phase "
        "transaction, through the realistic map of issue 14 (7 field lines: a lookup by "
        "natural key into customer groups, an option-set value map, a `none >>` default, a "
        "one-way field). Floor: the same two inserts, the group's id known to the "
        "application, with a raw two-phase commit (psycopg `PREPARE TRANSACTION`, PyMySQL "
        "`XA`), no dualwrite, same run, into tables with the same keys and foreign key.",
        "",
        "| path | floor p50 / p99 | Python API p50 / p99 (× floor p50) | OData p50 / p99 "
        "(× floor p50) | rows/s 1 client: floor / API | rows/s 8 clients: floor / API / OData |",
        "|---|---|---|---|---|---|",
    ]
    # (target, state store): the SQLite state store (its decision journal) on both pairs,
    # and a PostgreSQL state store (each decision a committed PostgreSQL transaction)
    runs = [("postgresql", "sqlite")] + ([] if args.skip_mariadb else [("mysql", "sqlite")]) \
        + [("postgresql", "postgresql")]
    with tempfile.TemporaryDirectory() as tmp:
        for target, store in runs:
            label = ("PostgreSQL ↔ PostgreSQL" if target == "postgresql" else
                     "PostgreSQL ↔ MariaDB") + (", PostgreSQL state store"
                                                if store == "postgresql" else "")
            r = run_target(target, args.n, args.seconds, Path(tmp) / f"{target}-{store}",
                           store)
            f50, a50, o50 = (statistics.median(r[k]) for k in ("floor", "api", "odata"))
            line = (f"| {label} | {f50:.2f} / {pct(r['floor'], 99):.2f} ms | "
                    f"{a50:.2f} / {pct(r['api'], 99):.2f} ms ({a50 / f50:.2f}×) | "
                    f"{o50:.2f} / {pct(r['odata'], 99):.2f} ms ({o50 / f50:.2f}×) | "
                    f"{r['floor_1']:,.0f} / {r['api_1']:,.0f} | "
                    f"{r['floor_8']:,.0f} / {r['api_8']:,.0f} / {r['odata_8']:,.0f} |")
            lines.append(line)
            print(label, line, flush=True)
            if (target, store) == ("postgresql", "sqlite"):
                met = {"API p50 ≤ 1.3× floor": a50 / f50 <= 1.3,
                       "OData p50 ≤ 2× floor": o50 / f50 <= 2.0,
                       "8 clients API ≥ 0.8× floor": r["api_8"] / r["floor_8"] >= 0.8}
    lines += ["", "Targets (issue 14, PostgreSQL ↔ PostgreSQL, SQLite state store): "
              + "; ".join(f"{k}: {'met' if ok else 'not met'}" for k, ok in met.items())
              + ".", "", NOTES]
    if not args.no_report:
        update_section(ROOT / "docs" / "benchmarks.md", "live-sync", "Live sync",
                       "\n".join(lines))
        print("wrote docs/benchmarks.md")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
