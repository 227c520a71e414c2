"""Benchmark: what capture costs the application's own commits, inside the server.

bench/capture.py measures the write overhead from a client, with the replicator running on
the same two cores: the figure issue 14 sets a target on, but one that moves with everything
else on the machine. This script takes the client, the network and the replicator away, to
say where the overhead comes from. A procedure writes N single-row transactions in a loop
inside the server (``COMMIT`` after each statement), on the bench's ``items`` table
(bench/capture.py's ``PG_DDL``, its ``arrived_at`` trigger included), and the server's time
per transaction is taken, for:

- **no capture**: the table alone;
- **dualwrite**: the capture triggers exactly as ``dualwrite maps start items`` installs them
  (the applier stopped afterwards, so nothing reads the log meanwhile), then four variants
  of them, each made by editing the installed function's text (the script stops if the text
  no longer has the part it removes; tests/connectors/test_trigger_cost_variants.py holds
  the edits to the trigger dualwrite generates): without the wake-up (its row, the deferred
  trigger that notifies at commit), without the per-statement check that the mapped columns
  are still there, without the pinned settings, and the log row alone (none of the three);
- **Bucardo**: Bucardo 5's triggers exactly as ``bucardo add sync`` installs them (a
  multi-master sync, Bucardo stopped afterwards): a row trigger that logs the key in its delta
  table and a statement trigger that notifies its daemon.

Each with ``synchronous_commit = off`` (the transaction's CPU alone) and ``on`` (the WAL
flush on top, this machine's setting), inserts then updates of the same rows. Variants take
turns within each round, and each figure is the median over the rounds.

Usage: python bench/trigger_cost.py [--rows 10000] [--rounds 5] [--no-docs]
Needs Bucardo (scripts/bench-deps.sh); writes the trigger-cost section of docs/benchmarks.md
unless --no-docs.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import capture as cap  # noqa: E402

from report import update_section  # noqa: E402

PLAIN_DB = "dwcap_trig_plain"

PROCEDURES = """
CREATE OR REPLACE PROCEDURE dwbench_inserts(n int) LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..n LOOP
    INSERT INTO items (id, name, qty, price, note, changed_at)
      VALUES (i, 'item ' || i, i % 1000, (i % 10000) / 100.0, 'trigger cost', now());
    COMMIT;
  END LOOP;
END $$;
CREATE OR REPLACE PROCEDURE dwbench_updates(n int) LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..n LOOP
    UPDATE items SET qty = qty + 1, note = 'trigger cost ' || i, changed_at = now()
      WHERE id = i;
    COMMIT;
  END LOOP;
END $$;
"""


@dataclass
class Variant:
    """One way the table is captured: a database, what to do before each measurement
    (install this version of the functions, empty the table and the logs), and the query
    that counts what the capture logged (none for the table alone)."""

    name: str
    db: str
    prepare: Callable[[psycopg.Connection], None]
    logged: str | None
    #: µs per transaction, by "inserts-off", "updates-on"...: one sample per round
    samples: dict[str, list[float]] = field(default_factory=dict)

    def median(self, what: str) -> float:
        return statistics.median(self.samples[what])


def exists(db: str) -> bool:
    with cap.pg_admin() as c:
        return c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone() \
            is not None


def connect(db: str) -> psycopg.Connection:
    return psycopg.connect(cap.PG_DSN.format(db=db), autocommit=True)


def empty(conn: psycopg.Connection, tables: list[str]) -> None:
    """Empty the table and the capture's logs without firing anyone's triggers."""
    conn.execute("SET session_replication_role = replica")
    conn.execute(f"TRUNCATE {', '.join(tables)}")
    conn.execute("RESET session_replication_role")


def measure(variant: Variant, rows: int) -> None:
    """One round of ``variant``: inserts then updates, with each commit setting."""
    for sync in ("off", "on"):
        with connect(variant.db) as conn:
            variant.prepare(conn)
            conn.execute("CHECKPOINT")  # no checkpoint of an earlier variant's WAL meanwhile
            conn.execute(f"SET synchronous_commit = {sync}")
            for op in ("inserts", "updates"):
                started = time.perf_counter()
                conn.execute(f"CALL dwbench_{op}({rows})")
                us = (time.perf_counter() - started) / rows * 1e6
                variant.samples.setdefault(f"{op}-{sync}", []).append(us)
            if variant.logged is not None:
                # every write was captured: a variant that logged nothing measured nothing
                got = conn.execute(variant.logged).fetchone()
                if got is None or int(got[0]) < 2 * rows:
                    raise RuntimeError(f"{variant.name}: {got and got[0]} rows logged for "
                                       f"{2 * rows} writes")


# -- dualwrite's functions and their variants ----------------------------------------------------
def installed(conn: psycopg.Connection) -> dict[str, str]:
    """The capture functions of items (insert, update), as installed: name -> CREATE OR
    REPLACE FUNCTION statement. (No variant edits the wake-up's own function.)"""
    rows = conn.execute(
        "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p WHERE p.proname ~ "
        "'^dw_[0-9a-f]+_[iu]$'").fetchall()
    out = {str(r[0]): str(r[1]) for r in rows}
    if len(out) != 2:
        raise RuntimeError(f"expected dualwrite's insert and update functions: {sorted(out)}")
    return out


def cut(text: str, pattern: str, replacement: str, what: str) -> str:
    """``text`` with ``pattern`` (a regex, found exactly once) replaced: a variant of the
    installed trigger. Stops the run if the installed text no longer has that part."""
    new, n = re.subn(pattern, replacement, text, flags=re.S)
    if n != 1:
        raise RuntimeError(f"the installed capture function no longer has {what} "
                           f"(pattern {pattern!r} found {n} times): update this benchmark")
    return new


WAKE = r"IF FOUND THEN dw_tx := .*?END IF; END IF; (?=RETURN NULL; END)"
CHECK = r"IF \(SELECT count\(\*\) FROM pg_catalog\.pg_attribute .*? THEN (INSERT INTO .*?); " \
        r"ELSE INSERT INTO .*?; END IF; "
SETTINGS = r"\n SET [^\n]*"


def without_wake(text: str) -> str:
    return cut(text, WAKE, "", "the wake-up")


def without_check(text: str) -> str:
    return cut(text, CHECK, r"\1; ", "the column check")


def without_settings(text: str) -> str:
    new = re.sub(SETTINGS, "", text)
    if new == text:
        raise RuntimeError("the installed capture function no longer pins settings "
                           "(SET clauses): update this benchmark")
    return new


def log_row_alone(text: str) -> str:
    return without_settings(without_check(without_wake(text)))


def dualwrite_variants(db: str) -> list[Variant]:
    """dualwrite's trigger as installed in ``db`` and its variants: each measurement installs
    its version of the insert and update functions."""
    with connect(db) as conn:
        functions = installed(conn)
        conn.execute(PROCEDURES)
    tables = ["items", "dualwrite_changes", "dualwrite_wake"]

    def prepare_with(edit: Callable[[str], str] | None) -> Callable[[psycopg.Connection], None]:
        def prepare(conn: psycopg.Connection) -> None:
            for text in functions.values():
                conn.execute(text if edit is None else edit(text))
            empty(conn, tables)
        return prepare

    logged = "SELECT count(*) FROM dualwrite_changes"
    return [Variant("dualwrite, as installed", db, prepare_with(None), logged),
            Variant("dualwrite without the wake-up", db, prepare_with(without_wake), logged),
            Variant("dualwrite without the column check", db, prepare_with(without_check),
                    logged),
            Variant("dualwrite without the pinned settings", db,
                    prepare_with(without_settings), logged),
            Variant("dualwrite's log row alone", db, prepare_with(log_row_alone), logged)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rows", type=int, default=10000, help="transactions per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="rounds (variants alternate)")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args()

    dualwrite = cap.Dualwrite("postgresql")
    bucardo = cap.Bucardo("bucardo", cap.BUCARDO_DEFAULTS)
    cap.reset_pg([PLAIN_DB])
    try:
        with connect(PLAIN_DB) as conn:
            conn.execute(PROCEDURES)
        variants = [Variant("no capture", PLAIN_DB, lambda c: empty(c, ["items"]), None)]
        print("== dualwrite: maps start, then the applier stopped", flush=True)
        dualwrite.start()
        dualwrite.close()
        variants += dualwrite_variants(dualwrite.a[1])
        print("== Bucardo: add sync, start, then stopped", flush=True)
        bucardo.start()
        bucardo.stop()
        with connect(bucardo.a[1]) as conn:
            conn.execute(PROCEDURES)
            track = [r[0] for r in conn.execute(
                "SELECT 'bucardo.' || quote_ident(tablename) FROM pg_tables WHERE "
                "schemaname = 'bucardo' AND tablename ~ '^(delta|track|stage)_'").fetchall()]
        if "bucardo.delta_public_items" not in track:
            raise RuntimeError(f"Bucardo's delta table of items is not there: {track}")
        variants.append(Variant("Bucardo", bucardo.a[1], lambda c: empty(c, ["items", *track]),
                                "SELECT count(*) FROM bucardo.delta_public_items"))
        load_before = os.getloadavg()
        for r in range(args.rounds):
            for v in variants:
                measure(v, args.rows)
                print(f"  round {r + 1}: {v.name}: " + ", ".join(
                    f"{k} {s[-1]:.0f} us" for k, s in v.samples.items()), flush=True)
        load_after = os.getloadavg()
    finally:
        bucardo.close()
        made = [db for db in (PLAIN_DB, dualwrite.a[1], dualwrite.b[1], bucardo.a[1],
                              bucardo.b[1]) if exists(db)]
        cap.drop_pg(made)
    body = report(variants, args, load_before, load_after)
    print("\n" + body)
    if not args.no_docs:
        update_section(ROOT / "docs" / "benchmarks.md", "trigger-cost",
                       "Capture triggers inside the server: where the write overhead goes",
                       body)
        print("\nwrote docs/benchmarks.md")
    return 0


#: what the figures mean, and what was tried (hand-written: rewrite it when the figures move)
NOTES = """\
What the table says (2026-12-07; two runs of the day with 3,000 transactions agree within about
15 µs): dualwrite's log row itself (the mapped columns of the row as JSON, with its key) costs
about what Bucardo's whole trigger costs, so the full row image is not where the overhead is.
The rest of dualwrite's overhead is the machinery around the row: the wake-up (a row in
`dualwrite_wake` whose deferred constraint trigger notifies at COMMIT: a NOTIFY in the
application's own transaction would make its `PREPARE TRANSACTION` fail) and the
per-statement check that the mapped columns are still there (a catalog query: it turns a
renamed or dropped column into a marker instead of an error in the application's write). The
pinned settings cost little on their own; the parts cost more together than apart.

Tried the same day and not kept, each against the installed trigger in alternating rounds of
10,000 transactions, the differences within the rounds' spread (about ±15 µs): the wake row
inserted with `ON CONFLICT DO NOTHING` instead of remembering the transaction in a session
setting; the wake row left for the purger instead of deleted at commit; a conditional wake-up,
skipped while the applier is busy (each writer takes a transaction advisory lock that an idle
applier holds shared, and wakes it only when it cannot get it; race-free, two-phase safe, but
the lock cost what the skipped wake-up saved: 94 / 115 µs of CPU per insert / update against
92 / 131 µs as installed and 62 / 96 µs with no wake-up at all).

Next step: where a lower overhead matters more than the lag, `capture: logical` (nothing in
the application's transaction; its overhead at or below tuned Bucardo's in the capture
section's run). For the triggers, both remaining costs are PL/pgSQL statements, a catalog
query and a row with a deferred trigger, that a C trigger function would replace with
syscache lookups and a transaction callback notifying at commit and not at prepare: an
optional extension, which dualwrite does not require today."""


def report(variants: list[Variant], args: argparse.Namespace,
           before: tuple[float, float, float], after: tuple[float, float, float]) -> str:
    base = variants[0]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on this project's {os.cpu_count()}-core machine, "
        f"`python bench/trigger_cost.py --rows {args.rows} --rounds {args.rounds}`: "
        f"{args.rows:,} single-row transactions written by a procedure inside the server "
        "(`COMMIT` after each statement: no client, no network, no replicator running), "
        "inserts then updates of the same rows of the bench's `items` table, per variant, "
        f"the variants taking turns; medians of {args.rounds} rounds. CPU: "
        "`synchronous_commit = off`; flushed: `on` (the WAL flush of each commit on top). "
        f"Load average {before[0]:.1f} at the start, {after[0]:.1f} at the end.", "",
        "| variant | insert, CPU µs | update, CPU µs | insert, flushed µs | "
        "update, flushed µs | added to a flushed insert / update |",
        "|---|---|---|---|---|---|"]
    for v in variants:
        added = "–" if v is base else (
            f"+{v.median('inserts-on') - base.median('inserts-on'):.0f} / "
            f"+{v.median('updates-on') - base.median('updates-on'):.0f} µs")
        lines.append(f"| {v.name} | {v.median('inserts-off'):.0f} | "
                     f"{v.median('updates-off'):.0f} | {v.median('inserts-on'):.0f} | "
                     f"{v.median('updates-on'):.0f} | {added} |")
    return "\n".join([*lines, "", NOTES])


if __name__ == "__main__":
    sys.exit(main())
