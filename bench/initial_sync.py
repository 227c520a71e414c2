"""Benchmark: initial sync of a customers map against a raw bulk copy of the same rows.

PostgreSQL -> PostgreSQL: dualwrite vs ``COPY (SELECT ...) TO STDOUT | COPY ... FROM STDIN``.
PostgreSQL -> MariaDB:   dualwrite vs ``COPY ... TO STDOUT | LOAD DATA LOCAL INFILE``.
Both baselines are measured in the same run on the same rows. Each dualwrite run happens in a
child process so that its peak memory (max RSS) is its own.

Usage: python bench/initial_sync.py [--rows N] [--batch N] [--skip-mariadb] [--no-report]
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


def write_config(work: Path, target: str, batch: int) -> Path:
    (work / "maps").mkdir(parents=True, exist_ok=True)
    (work / "maps" / "groups.yaml").write_text(GROUPS_MAP)
    (work / "maps" / "customers.yaml").write_text(CUSTOMERS_MAP)
    right = PG_URL.format(db=DST_DB) if target == "postgresql" else MY_URL.format(db=DST_DB)
    (work / "dualwrite.yaml").write_text(
        f"environments:\n  erp: {{url: '{PG_URL.format(db=SRC_DB)}'}}\n"
        f"  crm: {{url: '{right}'}}\nlink: {{left: erp, right: crm}}\n"
        f"state: 'sqlite:///{work / 'state.db'}'\nmaps: ['maps/*.yaml']\n"
        f"sync: {{batch_size: {batch}}}\n")
    (work / "state.db").unlink(missing_ok=True)
    return work / "dualwrite.yaml"


def child(config: str) -> None:
    """Run in a child process: sync groups, then time the customers map."""
    import dualwrite

    with dualwrite.open(config) as link:
        link.sync_initial(["groups"])
        started = time.perf_counter()
        [res] = link.sync_initial(["customers"])
        seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "created": res.created["right"],
                      "errors": res.errors["right"], "peak_mb": peak_kb / 1024}))


def run_dualwrite(config: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", str(config)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"dualwrite run failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--skip-mariadb", action="store_true")
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    print(f"setting up {args.rows:,} source rows ...", flush=True)
    setup_source(args.rows)
    results = []
    targets = ["postgresql"] + ([] if args.skip_mariadb else ["mysql"])
    with tempfile.TemporaryDirectory() as tmp:
        for target in targets:
            label = "PostgreSQL → PostgreSQL" if target == "postgresql" else \
                "PostgreSQL → MariaDB"
            setup_target(target)
            with psycopg.connect(PG.format(db=SRC_DB), autocommit=True) as conn:
                conn.execute("DROP TABLE IF EXISTS dualwrite_link")  # each run is a new link
            raw = raw_copy_pg() if target == "postgresql" else raw_copy_mysql()
            config = write_config(Path(tmp) / target, target, args.batch)
            dw = run_dualwrite(config)
            assert dw["created"] == args.rows and dw["errors"] == 0, dw
            row = {"path": label, "rows": args.rows, "raw_s": raw,
                   "raw_rate": args.rows / raw, "dw_s": dw["seconds"],
                   "dw_rate": args.rows / dw["seconds"], "ratio": raw / dw["seconds"],
                   "peak_mb": dw["peak_mb"]}
            results.append(row)
            print(f"{label}: raw bulk copy {row['raw_rate']:,.0f} rows/s ({raw:.2f}s); "
                  f"dualwrite {row['dw_rate']:,.0f} rows/s ({dw['seconds']:.2f}s) = "
                  f"{row['ratio']:.2f}x raw; peak memory {dw['peak_mb']:.0f} MB", flush=True)
    if not args.no_report:
        lines = [
            f"Measured {time.strftime('%Y-%m-%d')} on this project's 2-core machine, "
            f"{args.rows:,} rows, batch {args.batch:,}, `python bench/initial_sync.py`.",
            "Map: 8 field lines (renames, a `><` value map, a lookup by natural key, a "
            "`none >>` default). Baseline: the same rows moved by the databases' own bulk "
            "paths in the same run (PostgreSQL `COPY TO STDOUT | COPY FROM STDIN`; for "
            "MariaDB `COPY TO STDOUT` then `LOAD DATA LOCAL INFILE`), with no transformation.",
            "",
            "| path | raw bulk copy | dualwrite initial sync | ratio to raw | peak memory |",
            "|---|---|---|---|---|",
        ]
        for r in results:
            lines.append(f"| {r['path']} | {r['raw_rate']:,.0f} rows/s ({r['raw_s']:.2f} s) | "
                         f"{r['dw_rate']:,.0f} rows/s ({r['dw_s']:.2f} s) | "
                         f"{r['ratio']:.2f}× | {r['peak_mb']:.0f} MB |")
        lines += ["", "Target: at least 0.25× raw `COPY` PostgreSQL → PostgreSQL; peak memory "
                  "under 300 MB whatever the row count (the sync streams in key order)."]
        update_section(ROOT / "docs" / "benchmarks.md", "initial-sync", "Initial sync",
                       "\n".join(lines))
        print("wrote docs/benchmarks.md")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
