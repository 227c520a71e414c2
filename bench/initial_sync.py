"""Benchmark: initial sync of a customers map against a raw bulk copy of the same rows.

Realistic map (renames, a value map, a lookup by natural key, a default):
PostgreSQL -> PostgreSQL: dualwrite vs ``COPY (SELECT ...) TO STDOUT | COPY ... FROM STDIN``.
PostgreSQL -> MariaDB:   dualwrite vs ``COPY ... TO STDOUT | LOAD DATA LOCAL INFILE``.
MariaDB -> PostgreSQL:   dualwrite vs the driver's streamed SELECT into ``COPY ... FROM STDIN``.
1:1 map, PostgreSQL -> PostgreSQL: dualwrite vs raw COPY, logical replication's ``copy_data``
and Bucardo's ``onetimecopy`` (these two where `scripts/bench-deps.sh` has set them up:
wal_level = logical, Bucardo installed; `make bench` runs it).
Every baseline is measured in the same run on the same rows. Each dualwrite run happens in a
child process so that its peak memory (max RSS) is its own.

Usage: python bench/initial_sync.py [--rows N] [--batch N] [--skip-mariadb] [--skip-peers]
                                    [--no-report]
Writes docs/benchmarks.md (the initial-sync section) unless --no-report.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import pymysql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from report import run_script, update_section  # noqa: E402

PG = "host=127.0.0.1 user=postgres dbname={db}"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
MY_URL = "mysql+pymysql://root@127.0.0.1:3306/{db}"
SRC_DB, DST_DB = "dualwrite_bench_a", "dualwrite_bench_b"

GROUPS_MAP = """name: groups
left: BenchGroups
right: bench_groups
key: {left: [GROUPID], right: [msdyn_groupid]}
fields:
  - GROUPID = msdyn_groupid
  - DESCRIPTION = msdyn_description
"""

CUSTOMERS_MAP = """name: customers
left: BenchCustomers
right: bench_accounts
key: {left: [CUSTOMERACCOUNT], right: [accountnumber]}
depends_on: [groups]
fields:
  - CUSTOMERACCOUNT = accountnumber
  - ORGANIZATIONNAME = name
  - CREDITLIMIT = creditlimit
  - PRIMARYCONTACTEMAIL = emailaddress1
  - INVOICEADDRESSCITY = address2_city
  - ONHOLDSTATUS >< msdyn_onholdstatus:
      values: {"No": 806380000, "Invoice": 806380001, "All": 806380002}
  - CUSTOMERGROUPID = msdyn_customergroupid.msdyn_groupid
  - none >> customertypecode: {default: 3}
"""

SOURCE_DDL = """
DROP TABLE IF EXISTS "BenchCustomers";
DROP TABLE IF EXISTS "BenchGroups";
CREATE TABLE "BenchGroups" ("GROUPID" varchar(10) PRIMARY KEY, "DESCRIPTION" varchar(60));
INSERT INTO "BenchGroups" SELECT 'G' || g, 'Group ' || g FROM generate_series(1, 20) g;
CREATE TABLE "BenchCustomers" (
  "CUSTOMERACCOUNT" varchar(20) PRIMARY KEY,
  "ORGANIZATIONNAME" varchar(100) NOT NULL,
  "CREDITLIMIT" numeric(18,2),
  "PRIMARYCONTACTEMAIL" varchar(100),
  "INVOICEADDRESSCITY" varchar(60),
  "ONHOLDSTATUS" varchar(10),
  "CUSTOMERGROUPID" varchar(10));
INSERT INTO "BenchCustomers"
SELECT 'C' || lpad(i::text, 9, '0'), 'Customer number ' || i, (i % 100000) / 4.0,
       'contact' || i || '@example.com', (ARRAY['Seattle','Berlin','Paris','Tokyo'])[1 + i % 4],
       (ARRAY['No','Invoice','All'])[1 + i % 3], 'G' || (1 + i % 20)
FROM generate_series(1, %(rows)s) i;
ANALYZE "BenchCustomers";
"""

TARGET_DDL = {
    "postgresql": """
DROP TABLE IF EXISTS bench_accounts; DROP TABLE IF EXISTS bench_groups;
DROP TABLE IF EXISTS raw_copy; DROP TABLE IF EXISTS dualwrite_link;
CREATE TABLE bench_groups (msdyn_customergroupid varchar(36) PRIMARY KEY
  DEFAULT gen_random_uuid()::text, msdyn_groupid varchar(10) NOT NULL UNIQUE,
  msdyn_description varchar(60));
CREATE TABLE bench_accounts (accountid varchar(36) PRIMARY KEY DEFAULT gen_random_uuid()::text,
  accountnumber varchar(20) NOT NULL UNIQUE, name varchar(100) NOT NULL,
  creditlimit numeric(18,2), emailaddress1 varchar(100), address2_city varchar(60),
  msdyn_onholdstatus integer,
  msdyn_customergroupid varchar(36) REFERENCES bench_groups (msdyn_customergroupid),
  customertypecode integer);
CREATE TABLE raw_copy (LIKE bench_accounts INCLUDING DEFAULTS INCLUDING CONSTRAINTS
  INCLUDING INDEXES);
""",
    "mysql": """
DROP TABLE IF EXISTS bench_accounts; DROP TABLE IF EXISTS bench_groups;
DROP TABLE IF EXISTS raw_copy; DROP TABLE IF EXISTS dualwrite_link;
CREATE TABLE bench_groups (msdyn_customergroupid varchar(36) PRIMARY KEY DEFAULT (uuid()),
  msdyn_groupid varchar(10) NOT NULL UNIQUE, msdyn_description varchar(60));
CREATE TABLE bench_accounts (accountid varchar(36) PRIMARY KEY DEFAULT (uuid()),
  accountnumber varchar(20) NOT NULL UNIQUE, name varchar(100) NOT NULL,
  creditlimit decimal(18,2), emailaddress1 varchar(100), address2_city varchar(60),
  msdyn_onholdstatus integer, msdyn_customergroupid varchar(36),
  customertypecode integer,
  FOREIGN KEY (msdyn_customergroupid) REFERENCES bench_groups (msdyn_customergroupid));
CREATE TABLE raw_copy LIKE bench_accounts;
""",
}

RAW_SELECT = """SELECT "CUSTOMERACCOUNT", "ORGANIZATIONNAME", "CREDITLIMIT",
  "PRIMARYCONTACTEMAIL", "INVOICEADDRESSCITY", 806380000, NULL, 3 FROM "BenchCustomers"
  ORDER BY "CUSTOMERACCOUNT\""""
RAW_COLUMNS = ("accountnumber, name, creditlimit, emailaddress1, address2_city, "
               "msdyn_onholdstatus, msdyn_customergroupid, customertypecode")
RAW_SELECT_MY = RAW_SELECT.replace('"', "`")

MY_SOURCE_DDL = """
DROP TABLE IF EXISTS BenchCustomers;
DROP TABLE IF EXISTS BenchGroups;
CREATE TABLE BenchGroups (GROUPID varchar(10) PRIMARY KEY, DESCRIPTION varchar(60));
INSERT INTO BenchGroups SELECT CONCAT('G', seq), CONCAT('Group ', seq) FROM seq_1_to_20;
CREATE TABLE BenchCustomers (
  CUSTOMERACCOUNT varchar(20) PRIMARY KEY,
  ORGANIZATIONNAME varchar(100) NOT NULL,
  CREDITLIMIT decimal(18,2),
  PRIMARYCONTACTEMAIL varchar(100),
  INVOICEADDRESSCITY varchar(60),
  ONHOLDSTATUS varchar(10),
  CUSTOMERGROUPID varchar(10));
INSERT INTO BenchCustomers
SELECT CONCAT('C', LPAD(seq, 9, '0')), CONCAT('Customer number ', seq), (seq % 100000) / 4.0,
       CONCAT('contact', seq, '@example.com'), ELT(1 + seq % 4, 'Seattle','Berlin','Paris','Tokyo'),
       ELT(1 + seq % 3, 'No','Invoice','All'), CONCAT('G', 1 + seq % 20)
FROM seq_1_to_%(rows)s;
"""

# The 1:1 comparison: one plain table, the same on both sides, no transformation.
PLAIN_DBS = ("dualwrite_bench_plain_a", "dualwrite_bench_plain_b")
PLAIN_DDL = """
DROP TABLE IF EXISTS plain_customers;
CREATE TABLE plain_customers (customeraccount varchar(20) PRIMARY KEY,
  organizationname varchar(100) NOT NULL, creditlimit numeric(18,2),
  primarycontactemail varchar(100), invoiceaddresscity varchar(60), onholdstatus varchar(10),
  customergroupid varchar(10));
"""
PLAIN_FILL = """
INSERT INTO plain_customers
SELECT 'C' || lpad(i::text, 9, '0'), 'Customer number ' || i, (i % 100000) / 4.0,
       'contact' || i || '@example.com', (ARRAY['Seattle','Berlin','Paris','Tokyo'])[1 + i % 4],
       (ARRAY['No','Invoice','All'])[1 + i % 3], 'G' || (1 + i % 20)
FROM generate_series(1, %(rows)s) i;
ANALYZE plain_customers;
"""
PLAIN_MAP = """name: plain
left: plain_customers
right: plain_customers
key: {left: [customeraccount], right: [customeraccount]}
fields:
  - customeraccount = customeraccount
  - organizationname = organizationname
  - creditlimit = creditlimit
  - primarycontactemail = primarycontactemail
  - invoiceaddresscity = invoiceaddresscity
  - onholdstatus = onholdstatus
  - customergroupid = customergroupid
"""


def setup_source(rows: int) -> None:
    with psycopg.connect(PG.format(db=SRC_DB), autocommit=True) as conn:
        have = conn.execute("SELECT to_regclass('\"BenchCustomers\"') IS NOT NULL").fetchone()
        if have and have[0]:
            n = conn.execute('SELECT count(*) FROM "BenchCustomers"').fetchone()
            if n and n[0] == rows:
                return
        conn.execute(SOURCE_DDL.replace("%(rows)s", str(rows)))  # type: ignore[arg-type]


def setup_target(kind: str) -> None:
    run_script(kind, DST_DB, TARGET_DDL[kind])


def setup_mysql_source(rows: int) -> None:
    conn = pymysql.connect(host="127.0.0.1", user="root", database=SRC_DB)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM information_schema.TABLES WHERE "
                        "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'BenchCustomers'")
            row = cur.fetchone()
            if row and row[0]:
                cur.execute("SELECT count(*) FROM BenchCustomers")
                n = cur.fetchone()
                if n and n[0] == rows:
                    return
    finally:
        conn.close()
    run_script("mysql", SRC_DB, MY_SOURCE_DDL.replace("%(rows)s", str(rows)))


def raw_copy_from_mysql() -> float:
    """The driver's streamed SELECT on MariaDB, each row into COPY FROM STDIN."""
    my = pymysql.connect(host="127.0.0.1", user="root", database=SRC_DB,
                         cursorclass=pymysql.cursors.SSCursor)
    try:
        with psycopg.connect(PG.format(db=DST_DB)) as dst:
            started = time.perf_counter()
            with my.cursor() as rc, dst.cursor() as wc, \
                    wc.copy(f"COPY raw_copy ({RAW_COLUMNS}) FROM STDIN") as into:
                rc.execute(RAW_SELECT_MY)
                for row in rc:
                    into.write_row(row)
            dst.commit()
            return time.perf_counter() - started
    finally:
        my.close()


def raw_copy_pg() -> float:
    """COPY TO STDOUT on the source streamed straight into COPY FROM STDIN on the target."""
    with psycopg.connect(PG.format(db=SRC_DB)) as src, \
            psycopg.connect(PG.format(db=DST_DB)) as dst:
        started = time.perf_counter()
        with src.cursor() as rc, dst.cursor() as wc, \
                rc.copy(f"COPY ({RAW_SELECT}) TO STDOUT") as out, \
                wc.copy(f"COPY raw_copy ({RAW_COLUMNS}) FROM STDIN") as into:
            for block in out:
                into.write(block)
        dst.commit()
        return time.perf_counter() - started


def raw_copy_mysql() -> float:
    """COPY TO STDOUT on the source, then LOAD DATA LOCAL INFILE into MariaDB."""
    with tempfile.NamedTemporaryFile(suffix=".tsv") as f:
        started = time.perf_counter()
        with psycopg.connect(PG.format(db=SRC_DB)) as src, src.cursor() as rc, \
                rc.copy(f"COPY ({RAW_SELECT}) TO STDOUT") as out:
            for block in out:
                f.write(block)
        f.flush()
        conn = pymysql.connect(host="127.0.0.1", user="root", database=DST_DB,
                               local_infile=True)
        with conn.cursor() as cur:
            cur.execute(f"LOAD DATA LOCAL INFILE '{f.name}' INTO TABLE raw_copy "
                        f"FIELDS TERMINATED BY '\\t' ({RAW_COLUMNS})")
        conn.commit()
        conn.close()
        return time.perf_counter() - started


def write_config(work: Path, target: str, batch: int, source: str = "postgresql") -> Path:
    (work / "maps").mkdir(parents=True, exist_ok=True)
    (work / "maps" / "groups.yaml").write_text(GROUPS_MAP)
    (work / "maps" / "customers.yaml").write_text(CUSTOMERS_MAP)
    right = PG_URL.format(db=DST_DB) if target == "postgresql" else MY_URL.format(db=DST_DB)
    left = PG_URL.format(db=SRC_DB) if source == "postgresql" else MY_URL.format(db=SRC_DB)
    (work / "dualwrite.yaml").write_text(
        f"environments:\n  erp: {{url: '{left}'}}\n"
        f"  crm: {{url: '{right}'}}\nlink: {{left: erp, right: crm}}\n"
        f"state: 'sqlite:///{work / 'state.db'}'\nmaps: ['maps/*.yaml']\n"
        f"sync: {{batch_size: {batch}}}\n")
    (work / "state.db").unlink(missing_ok=True)
    return work / "dualwrite.yaml"


def child(config: str) -> None:
    """Run in a child process: sync groups, then time the customers map (or the one map of a
    1:1 configuration)."""
    import dualwrite

    with dualwrite.open(config) as link:
        names = [m.name for m in link.bound_maps()]
        main_map = "customers" if "customers" in names else names[0]
        if "groups" in names:
            link.sync_initial(["groups"])
        started = time.perf_counter()
        [res] = link.sync_initial([main_map])
        seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "created": res.created["right"],
                      "errors": res.errors["right"], "peak_mb": peak_kb / 1024,
                      "path": res.path}))


def run_dualwrite(config: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", str(config)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"dualwrite run failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# -- the 1:1 comparison ----------------------------------------------------------------------
def setup_plain(rows: int) -> None:
    with psycopg.connect(PG.format(db="postgres"), autocommit=True) as admin:
        have = {r[0] for r in admin.execute("SELECT datname FROM pg_database").fetchall()}
        for db in PLAIN_DBS:
            if db not in have:
                admin.execute(f"CREATE DATABASE {db}")
    for db in PLAIN_DBS:
        run_script("postgresql", db, PLAIN_DDL + "DROP TABLE IF EXISTS dualwrite_link;")
    run_script("postgresql", PLAIN_DBS[0], PLAIN_FILL.replace("%(rows)s", str(rows)))


def plain_target_empty() -> None:
    run_script("postgresql", PLAIN_DBS[1], "TRUNCATE plain_customers; "
               "DROP TABLE IF EXISTS dualwrite_link; CHECKPOINT;")
    run_script("postgresql", PLAIN_DBS[0], "DROP TABLE IF EXISTS dualwrite_link;")


def plain_count() -> int:
    with psycopg.connect(PG.format(db=PLAIN_DBS[1]), autocommit=True) as c:
        row = c.execute("SELECT count(*) FROM plain_customers").fetchone()
        return int(row[0]) if row else 0


def raw_plain() -> float:
    with psycopg.connect(PG.format(db=PLAIN_DBS[0])) as src, \
            psycopg.connect(PG.format(db=PLAIN_DBS[1])) as dst:
        started = time.perf_counter()
        with src.cursor() as rc, dst.cursor() as wc, \
                rc.copy("COPY plain_customers TO STDOUT") as out, \
                wc.copy("COPY plain_customers FROM STDIN") as into:
            for block in out:
                into.write(block)
        dst.commit()
        return time.perf_counter() - started


def logical_plain(rows: int) -> float | str:
    """CREATE SUBSCRIPTION ... WITH (copy_data = true) until the table is synchronised."""
    from capture import drop_slots, drop_subscriptions, wait_for

    a, b = PLAIN_DBS
    with psycopg.connect(PG.format(db=a), autocommit=True) as c:
        row = c.execute("SHOW wal_level").fetchone()
        wal = row[0] if row else "?"
        if wal != "logical":
            return f"not measured: wal_level is {wal} (`bash scripts/bench-deps.sh` sets it)"
        c.execute("DROP PUBLICATION IF EXISTS dwis_pub")
        c.execute("CREATE PUBLICATION dwis_pub FOR TABLE plain_customers")
    drop_subscriptions(b)
    drop_slots(a)
    try:
        with psycopg.connect(PG.format(db=b), autocommit=True) as c:
            started = time.perf_counter()
            # both databases on one server: CREATE SUBSCRIPTION cannot make its slot on the
            # same cluster inside its own transaction (it would wait for itself), so the slot
            # is made first, as the PostgreSQL documentation says
            with psycopg.connect(PG.format(db=a), autocommit=True) as src:
                src.execute("SELECT pg_create_logical_replication_slot('dwis_sub', 'pgoutput')")
            c.execute(f"CREATE SUBSCRIPTION dwis_sub CONNECTION 'host=127.0.0.1 user=postgres "
                      f"dbname={a}' PUBLICATION dwis_pub WITH (copy_data = true, "
                      "create_slot = false, slot_name = 'dwis_sub')")

            def synced() -> bool:
                row = c.execute("SELECT count(*) FILTER (WHERE srsubstate IN ('s', 'r')), "
                                "count(*) FROM pg_subscription_rel").fetchone()
                return bool(row and row[1] and row[0] == row[1])

            wait_for("the subscription's table copy", synced, deadline_s=600, every_s=0.02)
            seconds = time.perf_counter() - started
        if plain_count() != rows:
            raise RuntimeError(f"logical replication copied {plain_count()} of {rows} rows")
        return seconds
    finally:
        drop_subscriptions(b)
        drop_slots(a)
        with psycopg.connect(PG.format(db=a), autocommit=True) as c:
            c.execute("DROP PUBLICATION IF EXISTS dwis_pub")


def bucardo_plain(rows: int) -> float | str:
    """A Bucardo sync with onetimecopy=2 (copy when the target is empty), from `bucardo start`
    until every row is on the target; its sleeps tuned to 0.01 s as in the capture benchmark."""
    import shutil

    if shutil.which("bucardo") is None:
        return "not measured: Bucardo is not installed (`bash scripts/bench-deps.sh`)"
    from capture import BUCARDO_DEFAULTS, BUCARDO_TUNED, bucardo, bucardo_pids, wait_for

    a, b = PLAIN_DBS

    def remove() -> None:
        if bucardo_pids():
            bucardo("stop", check=False)
            wait_for("Bucardo to stop", lambda: not bucardo_pids(), deadline_s=60, every_s=0.1)
        for what in (("sync", "dwis"), ("relgroup", "dwis"), ("dbgroup", "dwis")):
            bucardo("remove", *what, check=False)
        bucardo("remove", "db", "dwis_a", "dwis_b", "--force", check=False)
        bucardo("remove", "table", "public.plain_customers", check=False)
        bucardo("set", *(f"{k}={v}" for k, v in BUCARDO_DEFAULTS.items()))

    remove()
    try:
        bucardo("set", *(f"{k}={v}" for k, v in BUCARDO_TUNED.items()))
        bucardo("add", "db", "dwis_a", f"dbname={a}", "host=127.0.0.1", "user=bucardo")
        bucardo("add", "db", "dwis_b", f"dbname={b}", "host=127.0.0.1", "user=bucardo")
        bucardo("add", "dbgroup", "dwis", "dwis_a:source", "dwis_b:target")
        bucardo("add", "table", "public.plain_customers", "db=dwis_a", "relgroup=dwis")
        bucardo("add", "sync", "dwis", "relgroup=dwis", "dbs=dwis", "onetimecopy=2")
        started = time.perf_counter()
        bucardo("start", "dualwrite initial-sync benchmark")
        wait_for("Bucardo's onetimecopy", lambda: plain_count() >= rows, deadline_s=900,
                 every_s=0.05)
        return time.perf_counter() - started
    finally:
        remove()


def plain_config(work: Path, batch: int) -> Path:
    (work / "maps").mkdir(parents=True, exist_ok=True)
    (work / "maps" / "plain.yaml").write_text(PLAIN_MAP)
    a, b = (PG_URL.format(db=db) for db in PLAIN_DBS)
    (work / "dualwrite.yaml").write_text(
        f"environments:\n  a: {{url: '{a}'}}\n  b: {{url: '{b}'}}\n"
        f"link: {{left: a, right: b}}\nstate: 'sqlite:///{work / 'state.db'}'\n"
        f"maps: ['maps/*.yaml']\nsync: {{batch_size: {batch}}}\n")
    (work / "state.db").unlink(missing_ok=True)
    return work / "dualwrite.yaml"


def plain_comparison(rows: int, batch: int, tmp: Path) -> dict[str, Any]:
    print(f"1:1 map: setting up {rows:,} rows ...", flush=True)
    setup_plain(rows)
    out: dict[str, Any] = {}
    plain_target_empty()
    out["raw"] = raw_plain()
    plain_target_empty()
    out["logical"] = logical_plain(rows)
    plain_target_empty()
    out["bucardo"] = bucardo_plain(rows)
    plain_target_empty()
    dw = run_dualwrite(plain_config(tmp / "plain", batch))
    assert dw["created"] == rows and dw["errors"] == 0, dw
    out["dualwrite"] = dw["seconds"]
    out["dw_path"] = dw["path"]
    out["peak_mb"] = dw["peak_mb"]
    for k in ("raw", "logical", "bucardo", "dualwrite"):
        v = out[k]
        print(f"  1:1 {k}: " + (f"{rows / v:,.0f} rows/s ({v:.2f} s)" if isinstance(v, float)
                                 else str(v)), flush=True)
    return out


#: from this many rows a run reports to its own section (memory at scale)
SCALE_ROWS = 5_000_000


def _rate(rows: int, v: float | str) -> str:
    return f"{rows / v:,.0f} rows/s ({v:.2f} s)" if isinstance(v, float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--skip-mariadb", action="store_true")
    ap.add_argument("--skip-peers", action="store_true",
                    help="leave out the 1:1 comparison with logical replication and Bucardo")
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    print(f"setting up {args.rows:,} source rows ...", flush=True)
    setup_source(args.rows)
    results = []
    # (source, target): the realistic map each way the engine has a database pair for
    paths = [("postgresql", "postgresql")] + (
        [] if args.skip_mariadb else [("postgresql", "mysql"), ("mysql", "postgresql")])
    names = {"postgresql": "PostgreSQL", "mysql": "MariaDB"}
    plain: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for source, target in paths:
            label = f"{names[source]} → {names[target]}"
            if source == "mysql":
                setup_mysql_source(args.rows)
                run_script("mysql", SRC_DB, "DROP TABLE IF EXISTS dualwrite_link")
            setup_target(target)
            with psycopg.connect(PG.format(db=SRC_DB), autocommit=True) as conn:
                conn.execute("DROP TABLE IF EXISTS dualwrite_link")  # each run is a new link
            raw = raw_copy_from_mysql() if source == "mysql" else \
                raw_copy_pg() if target == "postgresql" else raw_copy_mysql()
            setup_target(target)  # the raw copy's rows out of the way
            config = write_config(Path(tmp) / f"{source}-{target}", target, args.batch, source)
            dw = run_dualwrite(config)
            assert dw["created"] == args.rows and dw["errors"] == 0, dw
            row = {"path": label, "rows": args.rows, "raw_s": raw,
                   "raw_rate": args.rows / raw, "dw_s": dw["seconds"],
                   "dw_rate": args.rows / dw["seconds"], "ratio": raw / dw["seconds"],
                   "peak_mb": dw["peak_mb"], "dw_path": dw["path"]}
            results.append(row)
            print(f"{label}: raw {row['raw_rate']:,.0f} rows/s ({raw:.2f}s); "
                  f"dualwrite {row['dw_rate']:,.0f} rows/s ({dw['seconds']:.2f}s) = "
                  f"{row['ratio']:.2f}x raw; peak memory {dw['peak_mb']:.0f} MB; "
                  f"{dw['path']}", flush=True)
        if not args.skip_peers:
            plain = plain_comparison(args.rows, args.batch, Path(tmp))
    if not args.no_report:
        # a run at scale (the memory figure) keeps its own section, beside the 1M-row ratios
        scale = args.rows >= SCALE_ROWS
        update_section(ROOT / "docs" / "benchmarks.md",
                       "initial-sync-scale" if scale else "initial-sync",
                       f"Initial sync at {args.rows:,} rows" if scale else "Initial sync",
                       "\n".join(report(args, results, plain)))
        print("wrote docs/benchmarks.md")


def report(args: argparse.Namespace, results: list[dict[str, Any]],
           plain: dict[str, Any] | None) -> list[str]:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on this project's 2-core machine, "
        f"{args.rows:,} rows, batch {args.batch:,}, `python bench/initial_sync.py` "
        "(`make bench`).",
        "",
        "**Realistic map**: 8 field lines (renames, a `><` value map, a lookup by natural key "
        "into a groups table, a `none >>` default), into an empty target. Baseline: the same "
        "rows moved in the same run by the databases' own bulk paths with no transformation "
        "(PostgreSQL `COPY TO STDOUT | COPY FROM STDIN`; into MariaDB `COPY TO STDOUT` then "
        "`LOAD DATA LOCAL INFILE`; out of MariaDB, which has no bulk export to a client, the "
        "driver's streamed `SELECT` into `COPY FROM STDIN`). The path column says whether the "
        "bulk path ran (docs/initial-sync.md).",
        "",
        "| path | raw bulk copy | dualwrite initial sync | ratio to raw | peak memory | "
        "dualwrite's path |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['path']} | {r['raw_rate']:,.0f} rows/s ({r['raw_s']:.2f} s) | "
                     f"{r['dw_rate']:,.0f} rows/s ({r['dw_s']:.2f} s) | "
                     f"{r['ratio']:.2f}× | {r['peak_mb']:.0f} MB | {r['dw_path']} |")
    if plain is not None:
        rows = args.rows
        dw = plain["dualwrite"]

        def vs(peer: float | str) -> str:
            return f"{dw / peer:.2f}×" if isinstance(peer, float) else "—"

        lines += [
            "",
            "**1:1 map** (the same plain table on both sides, every field copied), PostgreSQL → "
            "PostgreSQL, each contender into the emptied target in turn: raw `COPY | COPY`; "
            "logical replication, `CREATE SUBSCRIPTION ... WITH (copy_data = true)` until "
            "the table is synchronised; Bucardo 5, a sync with `onetimecopy=2` from `bucardo "
            "start` until every row is there (sleeps 0.01 s); dualwrite's initial sync. "
            "Time ratio dualwrite / peer (below 1: dualwrite is faster).",
            "",
            "| contender | rate | dualwrite's time ÷ its time |",
            "|---|---|---|",
            f"| raw `COPY` pipe | {_rate(rows, plain['raw'])} | {vs(plain['raw'])} |",
            f"| logical replication `copy_data` | {_rate(rows, plain['logical'])} | "
            f"{vs(plain['logical'])} |",
            f"| Bucardo `onetimecopy` | {_rate(rows, plain['bucardo'])} | "
            f"{vs(plain['bucardo'])} |",
            f"| dualwrite | {_rate(rows, dw)} ({plain['dw_path']}, peak "
            f"{plain['peak_mb']:.0f} MB) | 1.00× |",
        ]
    lines += ["", "Targets (issue 14): realistic map at least 0.5× raw PostgreSQL → PostgreSQL "
              "and 0.4× raw with MariaDB either way; 1:1 within 1.2× of logical replication's "
              "and Bucardo's copy; peak memory under 200 MB at 10 million rows."]
    return lines


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
