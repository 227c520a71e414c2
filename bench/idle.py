"""What a quiet link costs: CPU of an idle `dualwrite run` (and `serve`), per pair of databases.

A link with a running map and no writes: `dualwrite run` is started, left 10 s to settle, then
its CPU time (user + system, from /proc, every thread) is read over the measured window, and
given as a share of one core. Baseline in the same run: an idle `psql`-style session that only
LISTENs (the least a notified process costs, ≈ 0) and a loop polling one table every 10 ms
(what a naive poller costs), both measured the same way.
Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from report import run_script, update_section  # noqa: E402

URL = {"postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/{db}",
       "mysql": "mysql+pymysql://root@127.0.0.1:3306/{db}"}
LEFT_DB, RIGHT_DB = "dualwrite_bench_a", "dualwrite_bench_b"
DDL = ("DROP TABLE IF EXISTS idle_items; DROP TABLE IF EXISTS dualwrite_changes; "
       "DROP TABLE IF EXISTS dualwrite_applied; DROP TABLE IF EXISTS dualwrite_link; "
       "CREATE TABLE idle_items (id integer PRIMARY KEY, name varchar(40));")
MAP = """name: idle_items
left: idle_items
right: idle_items
key: {left: [id], right: [id]}
fields:
  - id = id
  - name = name
"""
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime, all threads


def servers_cpu() -> float:
    """CPU seconds so far of every PostgreSQL and MariaDB server process (what a client's
    queries cost the servers)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        if name in ("postgres", "mariadbd", "mysqld"):
            fields = text.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def share(proc: subprocess.Popen[bytes], settle: float, seconds: float
          ) -> tuple[float, float]:
    """The process's share of one core over ``seconds``, and the database servers'."""
    time.sleep(settle)  # start-up (imports, binding the maps) is not idling
    assert proc.poll() is None, "the process exited"
    before, servers = cpu_seconds(proc.pid), servers_cpu()
    time.sleep(seconds)
    return ((cpu_seconds(proc.pid) - before) / seconds,
            (servers_cpu() - servers) / seconds)


BASELINES = {
    "LISTEN only": """
import psycopg, select
c = psycopg.connect("host=127.0.0.1 user=postgres dbname=dualwrite_bench_a", autocommit=True)
c.execute("LISTEN idle_bench")
while True:
    select.select([c.fileno()], [], [], 1.0)
""",
    "poll a table every 10 ms": """
import psycopg, time
c = psycopg.connect("host=127.0.0.1 user=postgres dbname=dualwrite_bench_a", autocommit=True)
while True:
    c.execute("SELECT id FROM idle_items WHERE id > 0 LIMIT 100").fetchall()
    time.sleep(0.01)
""",
}


def measure_link(target: str, command: str, work: Path, settle: float, seconds: float
                 ) -> tuple[float, float]:
    run_script("postgresql", LEFT_DB, DDL + "DROP TABLE IF EXISTS dualwrite_wake;")
    run_script(target, RIGHT_DB, DDL)
    work.mkdir(parents=True, exist_ok=True)
    (work / "maps").mkdir(exist_ok=True)
    (work / "maps" / "idle_items.yaml").write_text(MAP)
    for p in work.glob("state.db*"):
        subprocess.run(["rm", "-rf", str(p)], check=True)
    cfg = work / "dualwrite.yaml"
    cfg.write_text(
        f"environments:\n  erp: {{url: '{URL['postgresql'].format(db=LEFT_DB)}'}}\n"
        f"  crm: {{url: '{URL[target].format(db=RIGHT_DB)}'}}\n"
        f"link: {{left: erp, right: crm}}\nstate: 'sqlite:///{work / 'state.db'}'\n"
        "maps: ['maps/*.yaml']\n")
    dw = [sys.executable, "-m", "dualwrite", "-c", str(cfg)]
    subprocess.run([*dw, "maps", "start", "--yes"], check=True, capture_output=True)
    argv = [*dw, command] + (["--port", "0"] if command == "serve" else [])
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return share(proc, settle, seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        subprocess.run([*dw, "maps", "stop", "--yes"], capture_output=True, check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()
    rows: list[tuple[str, tuple[float, float]]] = []
    for name, code in BASELINES.items():
        run_script("postgresql", LEFT_DB, DDL)
        proc = subprocess.Popen([sys.executable, "-c", code])
        try:
            rows.append((f"baseline: {name}", share(proc, 2.0, args.seconds)))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for target, label in (("postgresql", "PostgreSQL ↔ PostgreSQL"),
                              ("mysql", "PostgreSQL ↔ MariaDB")):
            for command in ("run", "serve"):
                cpu = measure_link(target, command, Path(tmp) / f"{target}-{command}",
                                   args.settle, args.seconds)
                rows.append((f"`dualwrite {command}`, {label}", cpu))
                print(rows[-1], flush=True)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on this project's 2-core machine, "
        f"`python bench/idle.py` (CPU time of the whole process, every thread, over "
        f"{args.seconds:g} s after {args.settle:g} s to settle; one running map, no writes; "
        "SQLite state store). Baselines in the same run: a process that only LISTENs, and a "
        "loop polling a table every 10 ms. The servers' column: the CPU of every PostgreSQL "
        "and MariaDB server process over the same time (the machine was otherwise idle), "
        "which includes their own background work.",
        "",
        "| process | CPU, share of one core | the database servers' CPU meanwhile |",
        "|---|---|---|",
        *[f"| {name} | {cpu * 100:.2f} % | {servers * 100:.2f} % |"
          for name, (cpu, servers) in rows],
        "",
        "Target: at most 1 % of a core on a quiet PostgreSQL ↔ PostgreSQL link. A quiet "
        "applier looks at the logs less and less often (the wait doubles while nothing "
        "arrives: up to 1 s where every side notifies, `capture.idle_poll_max` = 0.5 s where "
        "a log is polled, MariaDB's); a wake-up reads only the logs that signalled, the polled "
        "ones and any not read for a second; its housekeeping (heartbeat, lease, queue levels) "
        "runs once a second while changes flow, every 3 s while the link is quiet; reads of "
        "a log and its statistics go through the driver, outside a transaction on "
        "PostgreSQL; `serve`'s HTTP server wakes once a second (uvicorn's own loop: ten "
        "times).",
    ]
    if not args.no_report:
        update_section(ROOT / "docs" / "benchmarks.md", "idle", "Idle", "\n".join(lines))
        print("wrote docs/benchmarks.md")


if __name__ == "__main__":
    main()
