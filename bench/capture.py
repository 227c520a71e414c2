"""Benchmark: capture of writes that bypass dualwrite, against Bucardo and logical replication.

Every contender keeps the same table ``items`` of two databases A and B in sync while this
script writes to it with its own plain psycopg / PyMySQL connections (never through dualwrite),
on the same loopback servers, in the same run, each on its own pair of databases:

- ``dualwrite``: ``dualwrite maps start items`` then the applier ``dualwrite run``, both ways;
- ``dualwrite-realistic``: the same on a business-shaped map instead of ``items``
  (``CUSTOMERS_MAP``: a lookup by natural key, a value map, a default, a one-way field), both
  database pairs; its figures stand beside the plain map's;
- ``dualwrite-logical``: the same as ``dualwrite`` with ``capture: logical`` on the PostgreSQL
  environments (logical decoding of the WAL instead of triggers; MariaDB keeps its triggers);
- ``bucardo``: Bucardo (trigger-based, multi-master: a source/source dbgroup), default settings;
- ``bucardo-tuned``: the same with ``kid_sleep``, ``ctl_sleep``, ``mcp_loop_sleep`` = 0.01 s;
- ``logical``: PostgreSQL's native logical replication (publication / subscription; one way
  per table, so the other direction is a second publication / subscription, set up after the
  first is dropped, on the same tables).

Measured, in each direction (A → B: inserts; B → A: updates of the rows A → B created):

- 20,000-row transaction: from the moment its COMMIT returns to the writer until a separate
  connection, polling the other side every 1 ms, sees all of its rows;
- single-row commits (autocommit) at full speed and paced at 1,000/s: the lag of each row,
  from the writer's clock right after its COMMIT returned to the clock_timestamp() at which a
  trigger on the other side saw the row arrive; p50 / p99 over all rows; the rate written and
  the rate applied (rows over the time from the first write to the last arrival).

PostgreSQL ↔ MariaDB is measured for dualwrite alone (the others are PostgreSQL-only).
Write overhead: the writer's full-speed commit rate on each captured table against a table
that nothing captures, measured before and after the contenders.
Autovacuum is turned on for the run and put back afterwards (see AUTOVACUUM for why).

Usage: python bench/capture.py [--rows 20000] [--singles 3000] [--rate 1000]
       [--only dualwrite,dualwrite-logical,dualwrite-realistic,bucardo,bucardo-tuned,logical]
       [--no-docs]
Needs what scripts/bench-deps.sh installs (`make bench-capture` runs both). Writes the capture
section of docs/benchmarks.md unless --no-docs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pymysql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from report import run_script, update_section  # noqa: E402

PGHOST = "127.0.0.1"
PG_DSN = "host=127.0.0.1 user=postgres dbname={db}"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
MY_URL = "mysql+pymysql://root@127.0.0.1:3306/{db}"
DUALWRITE = ROOT / ".venv" / "bin" / "dualwrite"
WORK = ROOT / ".bench" / "capture"  # git-ignored: dualwrite's config, state and logs

CONTENDERS = ("dualwrite", "dualwrite-logical", "dualwrite-realistic", "bucardo",
              "bucardo-tuned", "logical")
# Package defaults of Bucardo 5.6 (`bucardo show all` on a fresh install). The default run sets
# them explicitly, so a tuned run that died before restoring them cannot leak into it.
BUCARDO_DEFAULTS = {"kid_sleep": "0.5", "ctl_sleep": "0.2", "mcp_loop_sleep": "0.2"}
BUCARDO_TUNED = {"kid_sleep": "0.01", "ctl_sleep": "0.01", "mcp_loop_sleep": "0.01"}
BUCARDO_PIDDIR = Path("/var/run/bucardo")

# Key ranges, disjoint so that every measurement counts only its own rows. Key 0 is the
# readiness probe.
PROBE = 0
BATCH_LO = 1
FULL_LO = 1_000_001
PACED_LO = 2_000_001

# The same table everywhere. `arrived_at` is stamped by a BEFORE trigger on every insert and
# update, with the real time of that row's write (clock_timestamp(), not the statement's
# now()). It is ENABLE ALWAYS because Bucardo and logical replication apply their changes with
# session_replication_role = replica, under which ordinary triggers do not fire. Both sides
# carry the column and the trigger, so Bucardo (which requires the tables' columns to match,
# strict_checking) and logical replication copy it like any other column, and the target's
# trigger then overwrites the copied value. dualwrite's map leaves it unmapped.
PG_DDL = """
CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, qty integer NOT NULL,
  price numeric(12,2) NOT NULL, note text, changed_at timestamptz, arrived_at timestamptz);
CREATE FUNCTION items_arrived() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN NEW.arrived_at := clock_timestamp(); RETURN NEW; END$$;
CREATE TRIGGER items_arrived BEFORE INSERT OR UPDATE ON items
  FOR EACH ROW EXECUTE FUNCTION items_arrived();
ALTER TABLE items ENABLE ALWAYS TRIGGER items_arrived;
"""
# MariaDB: NOW(6) and UTC_TIMESTAMP(6) are the *statement's* start time, the same for every row
# of a multi-row write; SYSDATE(6) is the time the row is written, like clock_timestamp(). It
# is stored in UTC whatever time zone the writing session has set.
MY_DDL = """
CREATE TABLE items (id bigint PRIMARY KEY, name varchar(100) NOT NULL, qty int NOT NULL,
  price decimal(12,2) NOT NULL, note varchar(100), changed_at datetime(6),
  arrived_at datetime(6));
CREATE TRIGGER items_arrived_ins BEFORE INSERT ON items FOR EACH ROW
  SET NEW.arrived_at = CONVERT_TZ(SYSDATE(6), @@session.time_zone, '+00:00');
CREATE TRIGGER items_arrived_upd BEFORE UPDATE ON items FOR EACH ROW
  SET NEW.arrived_at = CONVERT_TZ(SYSDATE(6), @@session.time_zone, '+00:00');
"""

MAP = """name: items
left: items
right: items
key: {left: [id], right: [id]}
fields:
  - id = id
  - name = name
  - qty = qty
  - price = price
  - note = note
  - changed_at = changed_at
"""

# The realistic map (issue 14): customers of the ERP (A, left) <-> accounts of the CRM (B,
# right), as a business map has them: the customer group by its natural key on the left and
# as a lookup into cust_groups on the right; an option-set value map (status text <-> code);
# a `none >>` default; a one-way field (lat). The same arrived_at stamp and note as `items`.
CUSTOMERS_PG_DDL = """
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, grp text, status text,
  credit numeric(12,2), lat numeric(9,6), note text, changed_at timestamptz,
  arrived_at timestamptz);
CREATE FUNCTION customers_arrived() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN NEW.arrived_at := clock_timestamp(); RETURN NEW; END$$;
CREATE TRIGGER customers_arrived BEFORE INSERT OR UPDATE ON customers
  FOR EACH ROW EXECUTE FUNCTION customers_arrived();
"""
ACCOUNTS_PG_DDL = """
CREATE TABLE cust_groups (id integer PRIMARY KEY, code text NOT NULL UNIQUE);
INSERT INTO cust_groups SELECT g, 'G' || g FROM generate_series(1, 20) g;
CREATE TABLE accounts (id bigint PRIMARY KEY, name text NOT NULL,
  group_id integer REFERENCES cust_groups (id), statuscode integer, credit numeric(12,2),
  lat numeric(9,6), accounttype integer, note text, changed_at timestamptz,
  arrived_at timestamptz);
CREATE FUNCTION accounts_arrived() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN NEW.arrived_at := clock_timestamp(); RETURN NEW; END$$;
CREATE TRIGGER accounts_arrived BEFORE INSERT OR UPDATE ON accounts
  FOR EACH ROW EXECUTE FUNCTION accounts_arrived();
"""
ACCOUNTS_MY_DDL = """
CREATE TABLE cust_groups (id int PRIMARY KEY, code varchar(20) NOT NULL UNIQUE);
INSERT INTO cust_groups SELECT seq, CONCAT('G', seq) FROM seq_1_to_20;
CREATE TABLE accounts (id bigint PRIMARY KEY, name varchar(100) NOT NULL, group_id int,
  statuscode int, credit decimal(12,2), lat decimal(9,6), accounttype int, note varchar(100),
  changed_at datetime(6), arrived_at datetime(6),
  FOREIGN KEY (group_id) REFERENCES cust_groups (id));
CREATE TRIGGER accounts_arrived_ins BEFORE INSERT ON accounts FOR EACH ROW
  SET NEW.arrived_at = CONVERT_TZ(SYSDATE(6), @@session.time_zone, '+00:00');
CREATE TRIGGER accounts_arrived_upd BEFORE UPDATE ON accounts FOR EACH ROW
  SET NEW.arrived_at = CONVERT_TZ(SYSDATE(6), @@session.time_zone, '+00:00');
"""
CUSTOMERS_MAP = """name: customers
left: customers
right: accounts
key: {left: [id], right: [id]}
fields:
  - id = id
  - name = name
  - grp = group_id.code
  - status >< statuscode:
      values: {Active: 1, OnHold: 2, Closed: 3}
  - credit = credit
  - note = note
  - changed_at = changed_at
  - lat > lat
  - none >> accounttype: {default: 3}
"""
STATUSES = ("Active", "OnHold", "Closed")



# --- the two sides --------------------------------------------------------------------------


class Side(Protocol):
    """One database's `items` table, seen by the application (writes) or the observer."""

    label: str

    def insert_batch(self, lo: int, n: int, note: str) -> float: ...
    def update_batch(self, lo: int, n: int, note: str) -> float: ...
    def insert_one(self, key: int, note: str) -> None: ...
    def update_one(self, key: int, note: str) -> None: ...
    def count(self, lo: int, n: int, note: str) -> int: ...
    def arrivals(self, lo: int, n: int, note: str) -> dict[int, float]: ...
    def close(self) -> None: ...


class PgSide:
    """`items` in a PostgreSQL database, through one autocommit psycopg connection."""

    table = "items"

    def __init__(self, db: str) -> None:
        self.label = f"PostgreSQL {db}"
        self.conn = psycopg.connect(PG_DSN.format(db=db), autocommit=True)

    def insert_batch(self, lo: int, n: int, note: str) -> float:
        """One transaction of ``n`` inserts; returns the wall clock when COMMIT returned."""
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO items (id, name, qty, price, note, changed_at) "
                "SELECT g, 'item ' || g, g %% 1000, (g %% 10000) / 100.0, %s, clock_timestamp() "
                "FROM generate_series(%s::bigint, %s::bigint) g", (note, lo, lo + n - 1))
        return time.time()

    def update_batch(self, lo: int, n: int, note: str) -> float:
        with self.conn.transaction():
            self.conn.execute("UPDATE items SET qty = qty + 1, note = %s, changed_at = "
                              "clock_timestamp() WHERE id BETWEEN %s AND %s",
                              (note, lo, lo + n - 1))
        return time.time()

    def insert_one(self, key: int, note: str) -> None:
        self.conn.execute("INSERT INTO items (id, name, qty, price, note, changed_at) "
                          "VALUES (%s, %s, %s, %s, %s, %s)",
                          (key, f"item {key}", key % 1000, (key % 10000) / 100, note,
                           dt.datetime.now(dt.UTC)))

    def update_one(self, key: int, note: str) -> None:
        self.conn.execute("UPDATE items SET qty = qty + 1, note = %s, changed_at = %s "
                          "WHERE id = %s", (note, dt.datetime.now(dt.UTC), key))

    def count(self, lo: int, n: int, note: str) -> int:
        row = self.conn.execute(f"SELECT count(*) FROM {self.table} WHERE id BETWEEN %s AND "
                                "%s AND note = %s", (lo, lo + n - 1, note)).fetchone()
        return int(row[0]) if row else 0

    def arrivals(self, lo: int, n: int, note: str) -> dict[int, float]:
        rows = self.conn.execute("SELECT id, extract(epoch FROM arrived_at)::float8 FROM "
                                 f"{self.table} WHERE id BETWEEN %s AND %s AND note = %s",
                                 (lo, lo + n - 1, note)).fetchall()
        return {int(k): float(t) for k, t in rows}

    def close(self) -> None:
        self.conn.close()


class MySide:
    """`items` in a MariaDB database, through one autocommit PyMySQL connection (UTC session,
    so that UNIX_TIMESTAMP() reads the UTC `arrived_at` back as epoch seconds)."""

    table = "items"

    def __init__(self, db: str) -> None:
        self.label = f"MariaDB {db}"
        self.conn = pymysql.connect(host="127.0.0.1", user="root", database=db,
                                    autocommit=True, init_command="SET time_zone = '+00:00'")

    def _run(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def insert_batch(self, lo: int, n: int, note: str) -> float:
        self.conn.begin()
        with self.conn.cursor() as cur:
            cur.executemany("INSERT INTO items (id, name, qty, price, note, changed_at) "
                            "VALUES (%s, %s, %s, %s, %s, UTC_TIMESTAMP(6))",
                            [(k, f"item {k}", k % 1000, (k % 10000) / 100, note)
                             for k in range(lo, lo + n)])
        self.conn.commit()
        return time.time()

    def update_batch(self, lo: int, n: int, note: str) -> float:
        self.conn.begin()
        self._run("UPDATE items SET qty = qty + 1, note = %s, changed_at = UTC_TIMESTAMP(6) "
                  "WHERE id BETWEEN %s AND %s", (note, lo, lo + n - 1))
        self.conn.commit()
        return time.time()

    def insert_one(self, key: int, note: str) -> None:
        self._run("INSERT INTO items (id, name, qty, price, note, changed_at) "
                  "VALUES (%s, %s, %s, %s, %s, UTC_TIMESTAMP(6))",
                  (key, f"item {key}", key % 1000, (key % 10000) / 100, note))

    def update_one(self, key: int, note: str) -> None:
        self._run("UPDATE items SET qty = qty + 1, note = %s, changed_at = UTC_TIMESTAMP(6) "
                  "WHERE id = %s", (note, key))

    def count(self, lo: int, n: int, note: str) -> int:
        rows = self._run(f"SELECT COUNT(*) FROM {self.table} WHERE id BETWEEN %s AND %s "
                         "AND note = %s", (lo, lo + n - 1, note))
        return int(rows[0][0])

    def arrivals(self, lo: int, n: int, note: str) -> dict[int, float]:
        rows = self._run(f"SELECT id, UNIX_TIMESTAMP(arrived_at) FROM {self.table} "
                         "WHERE id BETWEEN %s AND %s AND note = %s", (lo, lo + n - 1, note))
        return {int(k): float(t) for k, t in rows}

    def close(self) -> None:
        self.conn.close()


class PgCustomers(PgSide):
    """`customers` (the realistic map's left table): written with inserts only (A → B)."""

    table = "customers"

    def insert_batch(self, lo: int, n: int, note: str) -> float:
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO customers (id, name, grp, status, credit, lat, note, changed_at) "
                "SELECT g, 'customer ' || g, 'G' || (1 + g %% 20), "
                "(ARRAY['Active', 'OnHold', 'Closed'])[1 + g %% 3], (g %% 10000) / 100.0, "
                "(g %% 90) + 0.5, %s, clock_timestamp() "
                "FROM generate_series(%s::bigint, %s::bigint) g", (note, lo, lo + n - 1))
        return time.time()

    def insert_one(self, key: int, note: str) -> None:
        self.conn.execute(
            "INSERT INTO customers (id, name, grp, status, credit, lat, note, changed_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (key, f"customer {key}", f"G{1 + key % 20}", STATUSES[key % 3],
             (key % 10000) / 100, key % 90 + 0.5, note, dt.datetime.now(dt.UTC)))

    def update_batch(self, lo: int, n: int, note: str) -> float:
        raise NotImplementedError("the realistic map's left side is only inserted into")

    def update_one(self, key: int, note: str) -> None:
        raise NotImplementedError("the realistic map's left side is only inserted into")


class PgAccounts(PgSide):
    """`accounts` (the realistic map's right table): written with updates only (B → A): a
    new group (the lookup), status code (the value map), note and time."""

    table = "accounts"

    def insert_batch(self, lo: int, n: int, note: str) -> float:
        raise NotImplementedError("the realistic map's right side is only updated")

    def insert_one(self, key: int, note: str) -> None:
        raise NotImplementedError("the realistic map's right side is only updated")

    def update_batch(self, lo: int, n: int, note: str) -> float:
        with self.conn.transaction():
            self.conn.execute("UPDATE accounts SET group_id = 1 + group_id %% 20, "
                              "statuscode = 1 + statuscode %% 3, note = %s, "
                              "changed_at = clock_timestamp() WHERE id BETWEEN %s AND %s",
                              (note, lo, lo + n - 1))
        return time.time()

    def update_one(self, key: int, note: str) -> None:
        self.conn.execute("UPDATE accounts SET group_id = 1 + group_id %% 20, "
                          "statuscode = 1 + statuscode %% 3, note = %s, changed_at = %s "
                          "WHERE id = %s", (note, dt.datetime.now(dt.UTC), key))


class MyAccounts(MySide):
    """`accounts` in MariaDB (see PgAccounts)."""

    table = "accounts"

    def insert_batch(self, lo: int, n: int, note: str) -> float:
        raise NotImplementedError("the realistic map's right side is only updated")

    def insert_one(self, key: int, note: str) -> None:
        raise NotImplementedError("the realistic map's right side is only updated")

    def update_batch(self, lo: int, n: int, note: str) -> float:
        self.conn.begin()
        self._run("UPDATE accounts SET group_id = 1 + group_id %% 20, "
                  "statuscode = 1 + statuscode %% 3, note = %s, "
                  "changed_at = UTC_TIMESTAMP(6) WHERE id BETWEEN %s AND %s",
                  (note, lo, lo + n - 1))
        self.conn.commit()
        return time.time()

    def update_one(self, key: int, note: str) -> None:
        self._run("UPDATE accounts SET group_id = 1 + group_id %% 20, "
                  "statuscode = 1 + statuscode %% 3, note = %s, "
                  "changed_at = UTC_TIMESTAMP(6) WHERE id = %s", (note, key))


def open_side(kind: str, db: str, table: str = "items") -> Side:
    if table == "customers":
        return PgCustomers(db)
    if table == "accounts":
        return PgAccounts(db) if kind == "postgresql" else MyAccounts(db)
    return PgSide(db) if kind == "postgresql" else MySide(db)


# --- databases ------------------------------------------------------------------------------


def pg_admin() -> psycopg.Connection[Any]:
    return psycopg.connect(PG_DSN.format(db="postgres"), autocommit=True)


def drop_subscriptions(db: str) -> None:
    """Drop every subscription in ``db`` without touching its publisher's slot (dropped by
    :func:`drop_slots`): DROP SUBSCRIPTION would otherwise connect to the publisher, which on
    the same cluster can wait on this very transaction."""
    with psycopg.connect(PG_DSN.format(db=db), autocommit=True) as c:
        subs = c.execute("SELECT subname FROM pg_subscription s JOIN pg_database d "
                         "ON d.oid = s.subdbid WHERE d.datname = current_database()").fetchall()
        for (name,) in subs:
            c.execute(f'ALTER SUBSCRIPTION "{name}" DISABLE')
            c.execute(f'ALTER SUBSCRIPTION "{name}" SET (slot_name = NONE)')
            c.execute(f'DROP SUBSCRIPTION "{name}"')


def drop_slots(db: str, deadline_s: float = 30.0) -> None:
    """Drop the replication slots of ``db``, once the walsender of a just-disabled subscription
    has let go of them."""
    with pg_admin() as c:
        deadline = time.monotonic() + deadline_s
        while True:
            slots = c.execute("SELECT slot_name, active FROM pg_replication_slots "
                              "WHERE database = %s", (db,)).fetchall()
            for name, active in slots:
                if not active:
                    c.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            if not slots or all(not active for _n, active in slots):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"replication slots of {db} still active after "
                                   f"{deadline_s:g} s: {[n for n, _a in slots]}")
            time.sleep(0.05)


def reset_pg(dbs: list[str], ddl: dict[str, str] | None = None) -> None:
    """Drop and create ``dbs`` (with whatever an earlier, interrupted run left in them), with
    the tables ``ddl`` says for each (default: ``items``)."""
    with pg_admin() as c:
        existing = {r[0] for r in c.execute("SELECT datname FROM pg_database").fetchall()}
    for db in dbs:
        if db in existing:
            drop_subscriptions(db)
    for db in dbs:
        drop_slots(db)
    with pg_admin() as c:
        for db in dbs:
            c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            c.execute(f"CREATE DATABASE {db}")
    for db in dbs:
        run_script("postgresql", db, (ddl or {}).get(db, PG_DDL))


def drop_pg(dbs: list[str]) -> None:
    """Drop ``dbs`` once a contender is done with them, so that no contender's measurements
    share the server with the autovacuum work of an earlier one's tables."""
    for db in dbs:
        drop_subscriptions(db)
        drop_slots(db)
    with pg_admin() as c:
        for db in dbs:
            c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def checkpoint() -> None:
    """A checkpoint before each contender's measurements: each starts with the WAL flushed
    rather than inheriting the previous contender's checkpoint."""
    with pg_admin() as c:
        c.execute("CHECKPOINT")


def reset_my(db: str, ddl: str = MY_DDL) -> None:
    conn = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {db}")
            cur.execute(f"CREATE DATABASE {db} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    finally:
        conn.close()
    run_script("mysql", db, ddl)


# --- measurements ---------------------------------------------------------------------------


def pct(xs: list[float], p: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(p) - 1]


@dataclass
class Singles:
    """Single-row commits: per-row lag (ms) and the rates written and applied (rows/s)."""

    lags_ms: list[float]
    written_per_s: float
    applied_per_s: float

    @property
    def p50(self) -> float:
        return statistics.median(self.lags_ms)

    @property
    def p99(self) -> float:
        return pct(self.lags_ms, 99)


@dataclass
class Direction:
    """One direction's figures: the 20,000-row transaction and the single-row commits."""

    batch_visible_s: float  # COMMIT returned → a poll sees all rows
    batch_stamped_s: float  # COMMIT returned → the last row's arrived_at (cross-check)
    full: Singles
    paced: Singles


@dataclass
class Result:
    contender: str
    pair: str
    forward: Direction | None = None
    backward: Direction | None = None
    error: str | None = None


def wait_for(what: str, check: Callable[[], bool], deadline_s: float,
             every_s: float = 0.01) -> None:
    deadline = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {deadline_s:g} s")
        time.sleep(every_s)


def wait_visible(target: Side, lo: int, n: int, note: str, deadline_s: float) -> float:
    """Poll ``target`` every 1 ms until all ``n`` rows carry ``note``; return the wall clock at
    the start of the poll that saw them all (its snapshot was taken then, so the rows were
    visible by that time, and not yet at the start of the poll before)."""
    last = lo + n - 1
    deadline = time.monotonic() + deadline_s
    next_poll = time.perf_counter()
    while True:
        started = time.time()
        # A cheap look at one row first: counting 20,000 rows every millisecond would load the
        # machine the replicators share. Bucardo and logical replication apply a transaction at
        # once; the full count then confirms it for an applier that does not.
        if target.count(last, 1, note) == 1 and target.count(lo, n, note) == n:
            return started
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} rows not all visible on {target.label} after "
                               f"{deadline_s:g} s ({target.count(lo, n, note)} are)")
        next_poll += 0.001
        delay = next_poll - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            next_poll = time.perf_counter()


def measure_batch(source: Side, target: Side, rows: int, update: bool) -> tuple[float, float]:
    note = "upd-batch" if update else "ins-batch"
    commit = (source.update_batch if update else source.insert_batch)(BATCH_LO, rows, note)
    seen = wait_visible(target, BATCH_LO, rows, note, deadline_s=120)
    stamped = max(target.arrivals(BATCH_LO, rows, note).values())
    return seen - commit, stamped - commit


def measure_singles(source: Side, target: Side, lo: int, n: int, rate: float | None,
                    update: bool) -> Singles:
    """``n`` single-row autocommit writes, as fast as possible or paced at ``rate`` per
    second; each row's commit time is the writer's clock right after the statement returned,
    which is when the application knows its change is durable."""
    note = ("upd-" if update else "ins-") + ("paced" if rate else "full")
    write = source.update_one if update else source.insert_one
    commits: dict[int, float] = {}
    first = time.time()
    t0 = time.perf_counter()
    for i, key in enumerate(range(lo, lo + n)):
        if rate:
            # Pacing is the one sleep here that stands for time, not for synchronisation; a
            # writer that falls behind catches up without sleeping.
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        write(key, note)
        commits[key] = time.time()
    written = n / (time.time() - first)
    wait_for(f"{n} single-row commits on {target.label}",
             lambda: target.count(lo, n, note) == n, deadline_s=120)
    arrived = target.arrivals(lo, n, note)
    lags = [(arrived[k] - commits[k]) * 1000 for k in commits]
    return Singles(lags, written, n / (max(arrived.values()) - first))


def measure_direction(source: Side, target: Side, rows: int, singles: int, rate: float,
                      update: bool) -> Direction:
    batch_visible, batch_stamped = measure_batch(source, target, rows, update)
    full = measure_singles(source, target, FULL_LO, singles, None, update)
    paced = measure_singles(source, target, PACED_LO, singles, rate, update)
    return Direction(batch_visible, batch_stamped, full, paced)


def probe(source: Side, target: Side, update: bool, deadline_s: float = 120) -> None:
    """One row through the replicator: it is running, connected and has warmed up."""
    note = "probe-upd" if update else "probe-ins"
    (source.update_one if update else source.insert_one)(PROBE, note)
    wait_for(f"probe row on {target.label}", lambda: target.count(PROBE, 1, note) == 1,
             deadline_s)


# --- contenders -----------------------------------------------------------------------------


class Contender(Protocol):
    """Keeps `items` of ``a`` and ``b`` in sync. ``start`` leaves A → B running; ``reverse``
    makes B → A run (a no-op for the two-way contenders); ``close`` is idempotent, undoes
    everything that still runs and is called even after an error."""

    name: str
    a: tuple[str, str]  # (kind, database)
    b: tuple[str, str]

    def start(self) -> None: ...
    def reverse(self) -> None: ...
    def close(self) -> None: ...


class Logical:
    """PostgreSQL's native logical replication: a publication on the source, a subscription
    on the target. On one cluster a subscription cannot create its own slot (the slot would
    wait for the creating transaction to end), so the slot is created first."""

    def __init__(self) -> None:
        self.name = "logical"
        self.a = ("postgresql", "dwcap_logical_a")
        self.b = ("postgresql", "dwcap_logical_b")

    def start(self) -> None:
        reset_pg([self.a[1], self.b[1]])
        self._link(self.a[1], self.b[1])

    def _link(self, source: str, target: str) -> None:
        name = f"dwcap_{source}_to_{target}".replace("dwcap_logical_", "")
        with psycopg.connect(PG_DSN.format(db=source), autocommit=True) as c:
            c.execute(f"CREATE PUBLICATION {name} FOR TABLE items")
            c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))
        with psycopg.connect(PG_DSN.format(db=target), autocommit=True) as c:
            c.execute(f"CREATE SUBSCRIPTION {name} CONNECTION "
                      f"'{PG_DSN.format(db=source)}' PUBLICATION {name} "
                      f"WITH (create_slot = false, slot_name = '{name}', copy_data = false)")

    def reverse(self) -> None:
        # Logical replication is one way per subscription, and PostgreSQL 15 cannot filter out
        # changes that arrived by replication, so A → B is dropped before B → A starts.
        drop_subscriptions(self.b[1])
        drop_slots(self.a[1])
        with psycopg.connect(PG_DSN.format(db=self.a[1]), autocommit=True) as c:
            for (pub,) in c.execute("SELECT pubname FROM pg_publication").fetchall():
                c.execute(f"DROP PUBLICATION {pub}")
        self._link(self.b[1], self.a[1])

    def close(self) -> None:
        for db in (self.a[1], self.b[1]):
            drop_subscriptions(db)
        for db in (self.a[1], self.b[1]):
            drop_slots(db)


def bucardo(*args: str, check: bool = True, timeout: float = 120) -> str:
    """Run the bucardo command against its configuration database on the loopback server."""
    cmd = ["bucardo", "--db-host", PGHOST, "--db-user", "bucardo", "--db-name", "bucardo",
           *args]
    # cwd: bucardo reads a ./.bucardorc when there is one; the work tree must not have a say.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/")
    out = (proc.stdout + proc.stderr).strip()
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {out}")
    return out


def bucardo_pids() -> list[int]:
    """Live Bucardo processes, from the PID files in its piddir."""
    pids = []
    for f in BUCARDO_PIDDIR.glob("*.pid"):
        try:
            pid = int(f.read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            continue
        pids.append(pid)
    return pids


class Bucardo:
    """Bucardo 5 multi-master: both databases are `source` in one dbgroup, one sync of the
    table, `bucardo start`. ``settings`` are applied before the start (they are read then)."""

    def __init__(self, name: str, settings: dict[str, str]) -> None:
        self.name = name
        self.settings = settings
        self.a = ("postgresql", "dwcap_bucardo_a")
        self.b = ("postgresql", "dwcap_bucardo_b")

    def start(self) -> None:
        self.close()  # whatever an interrupted run left
        reset_pg([self.a[1], self.b[1]])
        bucardo("set", *(f"{k}={v}" for k, v in self.settings.items()))
        for side, (_kind, db) in (("a", self.a), ("b", self.b)):
            bucardo("add", "db", f"dwcap_{side}", f"dbname={db}", f"host={PGHOST}",
                    "user=bucardo")
        bucardo("add", "dbgroup", "dwcap", "dwcap_a:source", "dwcap_b:source")
        bucardo("add", "table", "public.items", "db=dwcap_a", "relgroup=dwcap")
        bucardo("add", "sync", "dwcap", "relgroup=dwcap", "dbs=dwcap")
        bucardo("start", "dualwrite capture benchmark")

    def reverse(self) -> None:
        pass  # the sync runs both ways

    def stop(self) -> None:
        if bucardo_pids():
            # `bucardo stop` only drops a stop file; the daemons notice it in their loops.
            bucardo("stop", check=False)
            wait_for("Bucardo to stop", lambda: not bucardo_pids(), deadline_s=60, every_s=0.1)

    def close(self) -> None:
        self.stop()
        bucardo("remove", "sync", "dwcap", check=False)
        bucardo("remove", "relgroup", "dwcap", check=False)
        bucardo("remove", "dbgroup", "dwcap", check=False)
        bucardo("remove", "db", "dwcap_a", "dwcap_b", "--force", check=False)
        bucardo("remove", "table", "public.items", check=False)
        bucardo("set", *(f"{k}={v}" for k, v in BUCARDO_DEFAULTS.items()))


class Dualwrite:
    """dualwrite: `maps start items --yes` (capture triggers, initial sync), then the applier
    `dualwrite run` in a child process until SIGTERM. Its config, state and output are kept in
    .bench/capture/<pair>/ for a look afterwards."""

    def __init__(self, right_kind: str, realistic: bool = False, capture: str = "triggers"
                 ) -> None:
        self.name = "dualwrite-realistic" if realistic else "dualwrite"
        if capture != "triggers":
            self.name += "-" + capture
        self.realistic = realistic
        #: the capture mode of the PostgreSQL environments (`capture:`)
        self.capture = capture
        tag = ("dw" if right_kind == "postgresql" else "dwmy") + ("r" if realistic else "") \
            + ("l" if capture == "logical" else "")
        self.a = ("postgresql", f"dwcap_{tag}_a")
        self.b = (right_kind, f"dwcap_{tag}_b")
        #: the tables each side writes and watches
        self.tables = ("customers", "accounts") if realistic else ("items", "items")
        self.work = WORK / tag
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.ready = threading.Event()

    def _cli(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(DUALWRITE), "-c", str(self.work / "dualwrite.yaml"), *args],
                              capture_output=True, text=True, timeout=timeout, cwd=self.work)

    def start(self) -> None:
        available = subprocess.run([str(DUALWRITE), "run", "--help"], capture_output=True,
                                   text=True, timeout=60)
        if available.returncode != 0:
            raise RuntimeError("`dualwrite run --help` fails, so the capture engine is not "
                               "there yet: " + (available.stderr or available.stdout).strip())
        ddl = {self.a[1]: CUSTOMERS_PG_DDL, self.b[1]: ACCOUNTS_PG_DDL} \
            if self.realistic else {}
        reset_pg([self.a[1]] + ([self.b[1]] if self.b[0] == "postgresql" else []), ddl)
        if self.b[0] != "postgresql":
            reset_my(self.b[1], ACCOUNTS_MY_DDL if self.realistic else MY_DDL)
        (self.work / "maps").mkdir(parents=True, exist_ok=True)
        for old in (self.work / "maps").glob("*.yaml"):
            old.unlink()
        (self.work / "maps" / f"{self.map_name}.yaml").write_text(
            CUSTOMERS_MAP if self.realistic else MAP)
        url_b = (PG_URL if self.b[0] == "postgresql" else MY_URL).format(db=self.b[1])
        mode = f", capture: {self.capture}"
        (self.work / "dualwrite.yaml").write_text(
            "environments:\n"
            f"  a: {{url: '{PG_URL.format(db=self.a[1])}'{mode}}}\n"
            f"  b: {{url: '{url_b}'{mode if self.b[0] == 'postgresql' else ''}}}\n"
            f"link: {{name: {self.a[1]}, left: a, right: b}}\n"
            f"state: 'sqlite:///{self.work / 'state.db'}'\n"
            "maps: ['maps/*.yaml']\n")
        for stale in self.work.glob("state.db*"):  # the state file, its WAL, its journal
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
        started = self._cli("maps", "start", self.map_name, "--yes", timeout=600)
        (self.work / "maps-start.log").write_text(started.stdout + started.stderr)
        if started.returncode != 0:
            raise RuntimeError(f"dualwrite maps start {self.map_name} --yes failed "
                               f"({started.returncode}):"
                               f" {(started.stderr or started.stdout).strip()[-2000:]}")
        self.proc = subprocess.Popen(
            [str(DUALWRITE), "-c", str(self.work / "dualwrite.yaml"), "run"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.work)
        # Drain its output all along: a full pipe would stall the applier.
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 120
        while not self.ready.wait(0.1):
            if self.proc.poll() is not None:
                raise RuntimeError(f"dualwrite run exited with {self.proc.returncode} before "
                                   f"it was ready: {self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"dualwrite run printed nothing within 120 s: {self.tail()}")

    @property
    def map_name(self) -> str:
        return "customers" if self.realistic else "items"

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with (self.work / "run.log").open("w") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                self.output.append(line.rstrip())
                self.ready.set()

    def tail(self) -> str:
        return " | ".join(self.output[-10:]) or "(no output)"

    def reverse(self) -> None:
        pass  # the applier runs both ways

    def close(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise RuntimeError("dualwrite run did not stop within 30 s of SIGTERM") from None


# Autovacuum for the length of the run. PostgreSQL's default is on; this machine's test
# configuration turns it off. Without it Bucardo's delta and track tables are never analyzed,
# and its delta check (`bucardo_delta_check`, an anti-join with an OR) is planned as a nested
# loop: 1 s per check at 26,000 delta rows instead of 3 ms, which makes a fresh Bucardo far
# slower than a long-running one with statistics. A 1 s naptime gives the fresh tables their
# statistics within the run. Every contender runs under the same setting.
AUTOVACUUM = {"autovacuum": "on", "autovacuum_naptime": "1s"}


@contextmanager
def autovacuum_on() -> Iterator[None]:
    """Set AUTOVACUUM with ALTER SYSTEM (reloaded, no restart); afterwards put back what
    postgresql.auto.conf said before (a value, or nothing)."""
    with pg_admin() as c:
        before = dict(c.execute(
            "SELECT name, setting FROM pg_file_settings WHERE name = ANY(%s) AND "
            "sourcefile LIKE '%%postgresql.auto.conf'", (list(AUTOVACUUM),)).fetchall())
        for name, value in AUTOVACUUM.items():
            c.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        c.execute("SELECT pg_reload_conf()")
    wait_for("autovacuum on", lambda: all(
        current_setting(n) == v for n, v in AUTOVACUUM.items()), deadline_s=30)
    try:
        yield
    finally:
        with pg_admin() as c:
            for name in AUTOVACUUM:
                if name in before:
                    c.execute(f"ALTER SYSTEM SET {name} = '{before[name]}'")
                else:
                    c.execute(f"ALTER SYSTEM RESET {name}")
            c.execute("SELECT pg_reload_conf()")


def current_setting(name: str) -> str:
    with pg_admin() as c:
        row = c.execute("SELECT current_setting(%s)", (name,)).fetchone()
        return str(row[0]) if row else ""


@contextmanager
def running(contender: Contender) -> Iterator[None]:
    try:
        contender.start()
        yield
    finally:
        contender.close()


@dataclass
class Plain:
    """The application's commit rate on a table nothing captures (the same `items` table,
    its arrived_at trigger included), single-row autocommit at full speed: the baseline of
    the write overhead. Measured before and after the contenders."""

    inserts_per_s: list[float] = field(default_factory=list)
    updates_per_s: list[float] = field(default_factory=list)

    def measure(self, singles: int) -> None:
        db = "dwcap_plain_a"
        reset_pg([db])
        side = PgSide(db)
        try:
            started = time.perf_counter()
            for key in range(FULL_LO, FULL_LO + singles):
                side.insert_one(key, "plain")
            self.inserts_per_s.append(singles / (time.perf_counter() - started))
            started = time.perf_counter()
            for key in range(FULL_LO, FULL_LO + singles):
                side.update_one(key, "plain-upd")
            self.updates_per_s.append(singles / (time.perf_counter() - started))
        finally:
            side.close()
        drop_pg([db])
        print(f"  plain table: {self.inserts_per_s[-1]:,.0f} inserts/s, "
              f"{self.updates_per_s[-1]:,.0f} updates/s", flush=True)


def overhead(results: list[Result], plain: Plain) -> list[str]:
    """The application's full-speed commit rate on the captured table, as a share of the
    plain table's (PostgreSQL sides only: A's inserts, and B's updates where B is
    PostgreSQL)."""
    if not plain.inserts_per_s:
        return []
    ins = statistics.mean(plain.inserts_per_s)
    upd = statistics.mean(plain.updates_per_s)
    lines = [f"Plain table (nothing captures it; mean of the measurements before and after the "
             f"contenders: {', '.join(f'{x:,.0f}' for x in plain.inserts_per_s)} inserts/s, "
             f"{', '.join(f'{x:,.0f}' for x in plain.updates_per_s)} updates/s): "
             f"{ins:,.0f} inserts/s, {upd:,.0f} updates/s.", "",
             "| contender | pair | inserts/s written (× plain) | updates/s written (× plain) |",
             "|---|---|---|---|"]
    for r in results:
        if r.forward is None:
            continue
        upd_cell = "– (MariaDB)" if r.pair == PG_MY or r.backward is None else \
            f"{r.backward.full.written_per_s:,.0f} ({r.backward.full.written_per_s / upd:.2f}×)"
        lines.append(f"| {LABELS[r.contender]} | {r.pair} | "
                     f"{r.forward.full.written_per_s:,.0f} "
                     f"({r.forward.full.written_per_s / ins:.2f}×) | {upd_cell} |")
    return lines


def run_contender(contender: Contender, pair: str, rows: int, singles: int,
                  rate: float) -> Result:
    result = Result(contender.name, pair)
    print(f"\n== {contender.name}, {pair}", flush=True)
    try:
        with running(contender):
            ta, tb = getattr(contender, "tables", ("items", "items"))
            a, b = open_side(*contender.a, ta), open_side(*contender.b, tb)
            try:
                checkpoint()
                probe(a, b, update=False)
                result.forward = measure_direction(a, b, rows, singles, rate, update=False)
                show_direction("A → B inserts", result.forward, rows)
                contender.reverse()
                probe(b, a, update=True)
                result.backward = measure_direction(b, a, rows, singles, rate, update=True)
                show_direction("B → A updates", result.backward, rows)
            finally:
                a.close()
                b.close()
    except Exception as exc:  # report it, go on with the next contender
        result.error = f"{type(exc).__name__}: {exc}"
        print(f"{contender.name} failed: {result.error}", file=sys.stderr, flush=True)
        traceback.print_exc()
    drop_pg([db for kind, db in (contender.a, contender.b) if kind == "postgresql"])
    return result


# --- output ---------------------------------------------------------------------------------


def show_direction(title: str, d: Direction, rows: int) -> None:
    print(f"  {title}: {rows:,}-row txn visible after {d.batch_visible_s:.3f} s "
          f"(last row stamped after {d.batch_stamped_s:.3f} s); "
          f"full speed p50/p99 {d.full.p50:.1f}/{d.full.p99:.1f} ms, "
          f"{d.full.written_per_s:,.0f} written/s, {d.full.applied_per_s:,.0f} applied/s; "
          f"paced p50/p99 {d.paced.p50:.1f}/{d.paced.p99:.1f} ms, "
          f"{d.paced.written_per_s:,.0f} written/s, {d.paced.applied_per_s:,.0f} applied/s",
          flush=True)


LABELS = {"dualwrite": "dualwrite", "dualwrite-logical": "dualwrite, `capture: logical`",
          "dualwrite-realistic": "dualwrite, realistic map",
          "bucardo": "Bucardo, default settings",
          "bucardo-tuned": "Bucardo, sleeps 0.01 s", "logical": "logical replication"}


def ratio(x: float, base: float | None) -> str:
    return f"{x / base:.2f}×" if base else "–"


@dataclass
class Table:
    title: str
    rows: list[str] = field(default_factory=list)


def tables(results: list[Result]) -> list[Table]:
    """One table per pair and direction; ratios are to tuned Bucardo and to logical
    replication PostgreSQL ↔ PostgreSQL, same direction, same run."""
    out = []
    for pair in dict.fromkeys(r.pair for r in results):
        for attr, what in (("forward", "A → B, inserts"), ("backward", "B → A, updates")):
            def get(name: str, attr: str = attr) -> Direction | None:
                found = [r for r in results if r.contender == name and r.pair == PG_PG]
                return getattr(found[0], attr) if found else None

            tuned, logical = get("bucardo-tuned"), get("logical")
            t = Table(f"{pair}, {what}")
            for r in (r for r in results if r.pair == pair):
                d: Direction | None = getattr(r, attr)
                if d is None:
                    t.rows.append(f"| {LABELS[r.contender]} | not measured: "
                                  f"{(r.error or 'not run').replace('|', '/')} |" + " – |" * 7)
                    continue
                ratios = [" / ".join(ratio(x, y) for x, y in zip(
                    (d.batch_visible_s, d.full.p99, d.paced.p99),
                    (base.batch_visible_s, base.full.p99, base.paced.p99) if base else
                    (None, None, None), strict=True)) for base in (tuned, logical)]
                t.rows.append(
                    f"| {LABELS[r.contender]} | {d.batch_visible_s:.3f} s | "
                    f"{d.full.p50:.1f} / {d.full.p99:.1f} ms | "
                    f"{d.full.written_per_s:,.0f} / {d.full.applied_per_s:,.0f} | "
                    f"{d.paced.p50:.1f} / {d.paced.p99:.1f} ms | "
                    f"{d.paced.written_per_s:,.0f} / {d.paced.applied_per_s:,.0f} | "
                    f"{ratios[0]} | {ratios[1]} |")
            out.append(t)
    return out


def header(rows: int, rate: float) -> list[str]:
    return [
        f"| contender | {rows:,}-row txn visible | full speed p50 / p99 lag | full speed rows/s "
        f"written / applied | {rate:,.0f}/s p50 / p99 lag | {rate:,.0f}/s rows/s written / "
        "applied | × Bucardo tuned (txn / full p99 / paced p99) | × logical (txn / full p99 "
        "/ paced p99) |",
        "|---|---|---|---|---|---|---|---|",
    ]


def targets(results: list[Result], rate: float, pairs: tuple[str, ...]) -> list[str]:
    """The issue's targets for dualwrite, checked against this run's figures, for ``pairs``
    (the targets are set on the PostgreSQL ↔ PostgreSQL comparison; the same checks on
    PostgreSQL ↔ MariaDB are for reference)."""
    lines = []
    by = {(r.contender, r.pair): r for r in results}
    tuned = by.get(("bucardo-tuned", PG_PG))
    for pair in pairs:
        dw = by.get(("dualwrite", pair))
        if dw is None:
            continue
        for attr, what in (("forward", "A → B"), ("backward", "B → A")):
            d: Direction | None = getattr(dw, attr)
            if d is None:
                lines.append(f"- {pair}, {what}: not measured ({dw.error or 'not run'}).")
                continue
            checks = [f"p99 at {rate:,.0f}/s {d.paced.p99:.1f} ms ≤ 20 ms: "
                      + ("met" if d.paced.p99 <= 20 else "**not met**"),
                      f"txn visible {d.batch_visible_s:.3f} s ≤ 0.3 s: "
                      + ("met" if d.batch_visible_s <= 0.3 else "**not met**")]
            t: Direction | None = getattr(tuned, attr) if tuned else None
            if t is not None:
                better = all(x < y for x, y in (
                    (d.batch_visible_s, t.batch_visible_s), (d.full.p50, t.full.p50),
                    (d.full.p99, t.full.p99), (d.paced.p50, t.paced.p50),
                    (d.paced.p99, t.paced.p99)))
                checks.append("better than tuned Bucardo (PostgreSQL ↔ PostgreSQL) on every "
                              "figure (txn, p50 and p99 at both speeds): "
                              + ("met" if better else "**not met**"))
            lines.append(f"- {pair}, {what}: " + "; ".join(checks) + ".")
    return lines


PG_PG = "PostgreSQL ↔ PostgreSQL"
PG_MY = "PostgreSQL ↔ MariaDB"


def versions() -> str:
    with pg_admin() as c:
        row = c.execute("SHOW server_version").fetchone()
        pg = str(row[0]).split()[0] if row else "?"
    my = pymysql.connect(host="127.0.0.1", user="root")
    try:
        with my.cursor() as cur:
            cur.execute("SELECT VERSION()")
            maria = str(cur.fetchone()[0]).split("-")[0]  # type: ignore[index]
    finally:
        my.close()
    try:
        bucardo_version = "Bucardo " + bucardo("--version").splitlines()[-1].split()[-1]
    except (OSError, RuntimeError):
        bucardo_version = "no Bucardo"
    return f"PostgreSQL {pg}, MariaDB {maria}, {bucardo_version}"


def report(results: list[Result], args: argparse.Namespace, plain: Plain) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on this project's {os.cpu_count()}-core "
        f"machine ({versions()}), `python bench/capture.py --rows {args.rows} --singles "
        f"{args.singles} --rate {args.rate:g}` (`make bench-capture`). The application writes "
        "to a table `items` (bigint key, text, integer, numeric, text, timestamp) with its "
        "own connections, bypassing dualwrite; each contender keeps the same table of two "
        "databases on the same loopback servers in sync, on its own pair of databases, one "
        "contender after the other in the same run. A → B: inserts; B → A: updates of those "
        "rows.",
        "",
        f"- **{args.rows:,}-row txn visible**: one transaction of {args.rows:,} rows; time "
        "from its COMMIT returning to the writer until a separate connection polling the "
        "other side every 1 ms sees all of them (an upper bound, within one poll).",
        "- **lag**: single-row commits (autocommit), at full speed from one writer and paced "
        f"at {args.rate:,.0f}/s, {args.singles:,} of each; per row, from the writer's clock "
        "right after its COMMIT returned to the `clock_timestamp()` (MariaDB: `SYSDATE(6)`) "
        "at which a BEFORE trigger on the other side saw it arrive (`ENABLE ALWAYS`, so it "
        "fires under replication too); the applier's own commit follows within its "
        "transaction. Both databases are on one machine: one clock.",
        "- **rows/s**: written = commits the writer achieved; applied = rows over the time "
        "from the first write to the last arrival.",
        "- **×**: ratio to tuned Bucardo and to logical replication, PostgreSQL ↔ PostgreSQL, "
        "same direction, same run (below 1 is better): the transaction's time, the full-speed "
        f"p99 lag, the {args.rate:,.0f}/s p99 lag.",
        "- **Bucardo**: both databases `source` in one dbgroup (multi-master), one sync, "
        "conflict strategy and everything else default; tuned: `kid_sleep`, `ctl_sleep`, "
        "`mcp_loop_sleep` = 0.01 s instead of 0.5 / 0.2 / 0.2. `kid_nodeltarows_sleep` "
        "(0.5 s) is not among them: a kid that wakes up and finds no new changes sleeps that "
        "long, which shows in tuned Bucardo's p99.",
        "- A writer that cannot keep the pace (its source's triggers and the replicator share "
        "the machine's cores) writes fewer than the target rate: the written rate says so.",
        "- **logical replication**: one way per subscription, so A → B is a publication on A "
        "and a subscription on B; it is then dropped, and B → A is a publication on B and a "
        "subscription on A, on the same tables. The floor for log-based shipping.",
        "- **dualwrite**: `dualwrite maps start items --yes`, then `dualwrite run`, both ways "
        "at once. **dualwrite, `capture: logical`**: the same with the PostgreSQL "
        "environments' `capture: logical` (a decoder thread in `dualwrite run` streams the "
        "WAL from a pgoutput slot into the change log; no capture trigger on the application's "
        "path); MariaDB keeps its triggers.",
        f"- **load**: the machine is shared; its load average (1 / 5 / 15 min) was "
        f"{args.load_before} at the start of the run and {args.load_after} at its end.",
        "- **autovacuum** is on, with a 1 s naptime, for the run (this machine's test "
        "configuration turns it off): never analyzed, Bucardo's delta and track tables make "
        "its delta check a nested loop, 1 s per check at 26,000 delta rows instead of 3 ms, "
        "which no long-running Bucardo suffers.",
        "- **between contenders**: each contender's databases are dropped when it is done, "
        "and a `CHECKPOINT` precedes each one's measurements, so that none inherits an "
        "earlier one's autovacuum or checkpoint work.",
        "",
    ]
    for t in tables(results):
        lines += [f"**{t.title}**", "", *header(args.rows, args.rate), *t.rows, ""]
    check = targets(results, args.rate, (PG_PG,))
    if check:
        lines += [f"Targets for dualwrite, on the PostgreSQL ↔ PostgreSQL comparison: p99 lag "
                  f"at most 20 ms at {args.rate:,.0f} changes/s, a {args.rows:,}-row "
                  "transaction visible within 0.3 s, both ways; better than tuned Bucardo on "
                  "every figure, in the same run.", "", *check, ""]
    cost = overhead(results, plain)
    if cost:
        lines += ["**Write overhead**: the application's commit rate at full speed (single-row "
                  "autocommit, the same writer as the lag figures, the replicator running) on "
                  "the captured table, against the same table that nothing captures, in the "
                  "same run. Target: dualwrite's overhead no larger than Bucardo's.", "",
                  *cost, ""]
    reference = targets(results, args.rate, (PG_MY,))
    if reference:
        lines += ["PostgreSQL ↔ MariaDB is measured for dualwrite alone (Bucardo and logical "
                  "replication are PostgreSQL-only); the same checks, for reference:", "",
                  *reference]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000, help="rows of the big transaction")
    ap.add_argument("--singles", type=int, default=3000,
                    help="single-row commits per measurement")
    ap.add_argument("--rate", type=float, default=1000.0, help="paced commits per second")
    ap.add_argument("--only", default=",".join(CONTENDERS),
                    help="comma-separated subset of " + ",".join(CONTENDERS))
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args()
    # SIGTERM as an exception, so that the finally blocks stop Bucardo, drop the
    # subscriptions, stop the applier and put autovacuum back.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(only) - set(CONTENDERS))
    if unknown:
        ap.error(f"unknown contender(s) {', '.join(unknown)}; choose from {CONTENDERS}")

    plan: list[tuple[Contender, str]] = []
    if "logical" in only:
        plan.append((Logical(), PG_PG))
    if "bucardo" in only:
        plan.append((Bucardo("bucardo", BUCARDO_DEFAULTS), PG_PG))
    if "bucardo-tuned" in only:
        plan.append((Bucardo("bucardo-tuned", BUCARDO_TUNED), PG_PG))
    if "dualwrite" in only:
        plan += [(Dualwrite("postgresql"), PG_PG), (Dualwrite("mysql"), PG_MY)]
    if "dualwrite-logical" in only:
        plan += [(Dualwrite("postgresql", capture="logical"), PG_PG),
                 (Dualwrite("mysql", capture="logical"), PG_MY)]
    if "dualwrite-realistic" in only:
        plan += [(Dualwrite("postgresql", realistic=True), PG_PG),
                 (Dualwrite("mysql", realistic=True), PG_MY)]
    plain = Plain()
    args.load_before = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    with autovacuum_on():
        print("\n== plain table (write overhead baseline)", flush=True)
        plain.measure(args.singles)
        results = [run_contender(c, pair, args.rows, args.singles, args.rate)
                   for c, pair in plan]
        plain.measure(args.singles)
    args.load_after = " / ".join(f"{x:.1f}" for x in os.getloadavg())

    body = report(results, args, plain)
    print("\n" + body)
    if not args.no_docs:
        update_section(ROOT / "docs" / "benchmarks.md", "capture",
                       "Capture: writes that bypass dualwrite", body)
        print("\nwrote docs/benchmarks.md")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
