"""How long a link goes without an applier when the active one fails: failover to a standby
`dualwrite run` after kill -9 and after SIGSTOP (frozen past its lease), against a supervisor
restarting `run` from nothing after kill -9, measured in the same run.

Each trial: the active applier is failed, a row is written on the ERP side at that moment, and
the time until it is on the CRM side is taken (a poll every 2 ms). PostgreSQL ↔ PostgreSQL,
PostgreSQL state store (what several hosts would share), `capture.lease_seconds` as given.
Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from report import run_script, update_section  # noqa: E402

PG = "host=127.0.0.1 user=postgres dbname={db}"
URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
LEFT_DB, RIGHT_DB, STATE_DB = "dualwrite_bench_a", "dualwrite_bench_b", "dualwrite_bench_state"
DDL = ("DROP TABLE IF EXISTS fo_items; DROP TABLE IF EXISTS dualwrite_changes; "
       "DROP TABLE IF EXISTS dualwrite_applied; DROP TABLE IF EXISTS dualwrite_link; "
       "DROP TABLE IF EXISTS dualwrite_wake; "
       "CREATE TABLE fo_items (id integer PRIMARY KEY, name varchar(40));")
MAP = """name: fo_items
left: fo_items
right: fo_items
key: {left: [id], right: [id]}
fields:
  - id = id
  - name = name
"""


def fresh_state() -> str:
    with psycopg.connect(PG.format(db="postgres"), autocommit=True) as c:
        if c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (STATE_DB,)).fetchone() \
                is None:
            c.execute(f"CREATE DATABASE {STATE_DB}")  # type: ignore[arg-type]
    with psycopg.connect(PG.format(db=STATE_DB), autocommit=True) as c:
        c.execute("DROP SCHEMA public CASCADE")
        c.execute("CREATE SCHEMA public")
    return URL.format(db=STATE_DB)


class Bench:
    def __init__(self, work: Path, lease: float) -> None:
        run_script("postgresql", LEFT_DB, DDL)
        run_script("postgresql", RIGHT_DB, DDL)
        (work / "maps").mkdir(parents=True, exist_ok=True)
        (work / "maps" / "fo_items.yaml").write_text(MAP)
        self.cfg = work / "dualwrite.yaml"
        self.cfg.write_text(
            f"environments:\n  erp: {{url: '{URL.format(db=LEFT_DB)}'}}\n"
            f"  crm: {{url: '{URL.format(db=RIGHT_DB)}'}}\n"
            f"link: {{left: erp, right: crm}}\nstate: '{fresh_state()}'\n"
            f"capture: {{lease_seconds: {lease}}}\nmaps: ['maps/*.yaml']\n")
        subprocess.run(self.dw("maps", "start", "--yes"), check=True, capture_output=True)
        self.left = psycopg.connect(PG.format(db=LEFT_DB), autocommit=True)
        self.right = psycopg.connect(PG.format(db=RIGHT_DB), autocommit=True)
        self.key = 0
        self.procs: list[subprocess.Popen[bytes]] = []

    def dw(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "dualwrite", "-c", str(self.cfg), *args]

    def start(self) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(self.dw("run"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def arrival(self, timeout: float = 120.0) -> float:
        """Write a row now; seconds until it is on the other side."""
        self.key += 1
        started = time.monotonic()
        self.left.execute("INSERT INTO fo_items VALUES (%s, 'x')", (self.key,))
        while self.right.execute("SELECT 1 FROM fo_items WHERE id = %s",
                                 (self.key,)).fetchone() is None:
            if time.monotonic() - started > timeout:
                raise SystemExit(f"row {self.key} did not arrive within {timeout} s")
            time.sleep(0.002)
        return time.monotonic() - started

    def applying(self) -> None:
        self.arrival()  # the active one applies (start-up done)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
                p.wait(timeout=60)
        subprocess.run(self.dw("maps", "stop", "--yes"), capture_output=True, check=False)
        self.left.close()
        self.right.close()


def trials(b: Bench, kind: str, n: int) -> list[float]:
    out = []
    active = b.start()
    b.applying()
    for _ in range(n):
        standby = b.start() if kind != "restart" else None
        time.sleep(3.0)  # the standby has started and stands by (not what is measured)
        if kind == "sigstop":
            active.send_signal(signal.SIGSTOP)
            took = b.arrival()
            active.send_signal(signal.SIGCONT)
            active.terminate()
            active.wait(timeout=60)
        else:
            active.kill()
            active.wait(timeout=60)
            if standby is None:  # the supervisor's restart
                standby = b.start()
            took = b.arrival()
        out.append(took)
        active = standby
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--lease", type=float, default=5.0)
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()
    rows = []
    labels = {"restart": "baseline: kill -9, a supervisor starts a new `run` at once",
              "kill": "kill -9 of the active applier, standby on the same host",
              "sigstop": f"SIGSTOP of the active applier (lease {args.lease:g} s)"}
    for kind in ("restart", "kill", "sigstop"):
        with tempfile.TemporaryDirectory() as tmp:
            b = Bench(Path(tmp), args.lease)
            try:
                xs = trials(b, kind, args.trials)
            finally:
                b.close()
        rows.append((labels[kind], xs))
        print(kind, [f"{x:.3f}" for x in xs], flush=True)
    base = statistics.median(rows[0][1])
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on this project's 2-core machine, "
        f"`python bench/failover.py` ({args.trials} trials each; PostgreSQL ↔ PostgreSQL, "
        "PostgreSQL state store). Per trial: the active `dualwrite run` fails, a row is "
        "written on the ERP side at that moment, and the time until it is on the CRM side is "
        "taken. Baseline in the same run: no standby, a supervisor starting a new `run` as "
        "soon as the old one is dead (interpreter start-up, binding the maps, recovery).",
        "",
        "| failure | median | max | × baseline (median) |",
        "|---|---|---|---|",
        *[f"| {label} | {statistics.median(xs):.2f} s | {max(xs):.2f} s | "
          f"{statistics.median(xs) / base:.2f}× |" for label, xs in rows],
        "",
        "A standby on the same host sees the dead pid and takes over within its next look "
        "(once a second); one on another host waits for the lease to run out, as a frozen "
        "applier's standby does: `capture.lease_seconds` plus up to a second.",
    ]
    if not args.no_report:
        update_section(ROOT / "docs" / "benchmarks.md", "failover", "Failover",
                       "\n".join(lines))
        print("wrote docs/benchmarks.md")


if __name__ == "__main__":
    main()
