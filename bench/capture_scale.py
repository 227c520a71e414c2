"""Benchmark: capture at the scale of a workload, PostgreSQL ↔ PostgreSQL.

- **100 maps on one link**: ``--maps`` tables (default 100), each with its own plain map; one
  writer commits single-row inserts round-robin over the tables, paced at ``--rate`` per
  second, ``--singles`` of them (default 2,000). The lag of each row as in bench/capture.py
  (the writer's clock after COMMIT to the `clock_timestamp()` a trigger on the other side
  stamps), p50 / p99; the applier's memory (RSS of `dualwrite run`) at the start and its
  peak.
- **A backlog after a pause**: the applier is stopped; the writer inserts ``--backlog``
  rows (default 100,000; `--backlog 1000000` for the full figure) into one table, in
  transactions of 1,000 rows; then `dualwrite run` starts and
  drains it. The drain rate (rows over the time from the applier's start to the last row's
  arrival) and the applier's memory sampled every 0.5 s meanwhile (flat means the peak is
  close to the start).

Usage: python bench/capture_scale.py [--maps 100] [--singles 2000] [--rate 500]
       [--backlog 100000] [--no-docs]
Writes the capture-scale section of docs/benchmarks.md unless --no-docs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from capture import (  # noqa: E402
    DUALWRITE,
    PG_DSN,
    PG_URL,
    autovacuum_on,
    checkpoint,
    drop_pg,
    pct,
    reset_pg,
    wait_for,
)

from report import update_section  # noqa: E402

WORK = ROOT / ".bench" / "capture-scale"
A, B = "dwcap_scale_a", "dwcap_scale_b"


def ddl(n: int) -> str:
    """``n`` tables t000.. with the arrived_at stamp of bench/capture.py."""
    out = ["CREATE FUNCTION stamp_arrived() RETURNS trigger LANGUAGE plpgsql AS "
           "$$BEGIN NEW.arrived_at := clock_timestamp(); RETURN NEW; END$$;"]
    for i in range(n):
        out.append(f"CREATE TABLE t{i:03d} (id bigint PRIMARY KEY, name text NOT NULL, "
                   "qty integer, note text, changed_at timestamptz, arrived_at timestamptz);"
                   f"CREATE TRIGGER t{i:03d}_arrived BEFORE INSERT OR UPDATE ON t{i:03d} "
                   "FOR EACH ROW EXECUTE FUNCTION stamp_arrived();")
    return "\n".join(out)


def map_text(i: int) -> str:
    return (f"name: t{i:03d}\nleft: t{i:03d}\nright: t{i:03d}\n"
            "key: {left: [id], right: [id]}\n"
            "fields:\n  - id = id\n  - name = name\n  - qty = qty\n  - note = note\n"
            "  - changed_at = changed_at\n")


class Applier:
    """`dualwrite run` in a child process, its RSS sampled every 0.5 s."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.rss: list[int] = []  # KiB
        self._stop = threading.Event()

    def start(self) -> None:
        log = (WORK / "run.log").open("ab")
        self.proc = subprocess.Popen([str(DUALWRITE), "-c", str(WORK / "dualwrite.yaml"),
                                      "run"], stdout=log, stderr=subprocess.STDOUT, cwd=WORK)
        self.rss = []
        self._stop.clear()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        assert self.proc is not None
        while not self._stop.is_set() and self.proc.poll() is None:
            try:
                for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.rss.append(int(line.split()[1]))
            except OSError:
                pass
            self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def setup(maps: int) -> None:
    reset_pg([A, B], {A: ddl(maps), B: ddl(maps)})
    if WORK.exists():
        shutil.rmtree(WORK)
    (WORK / "maps").mkdir(parents=True)
    for i in range(maps):
        (WORK / "maps" / f"t{i:03d}.yaml").write_text(map_text(i))
    (WORK / "dualwrite.yaml").write_text(
        "environments:\n"
        f"  a: {{url: '{PG_URL.format(db=A)}'}}\n"
        f"  b: {{url: '{PG_URL.format(db=B)}'}}\n"
        f"link: {{name: {A}, left: a, right: b}}\n"
        f"state: 'sqlite:///{WORK / 'state.db'}'\n"
        "maps: ['maps/*.yaml']\n")
    done = subprocess.run([str(DUALWRITE), "-c", str(WORK / "dualwrite.yaml"), "maps", "start",
                           "--yes"], capture_output=True, text=True, cwd=WORK, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"maps start failed: {(done.stderr or done.stdout)[-2000:]}")


def count(conn: psycopg.Connection[Any], table: str, note: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table} WHERE note = %s", (note,)).fetchone()
    return int(row[0]) if row else 0


def many_maps(maps: int, singles: int, rate: float) -> dict[str, float]:
    applier = Applier()
    applier.start()
    src = psycopg.connect(PG_DSN.format(db=A), autocommit=True)
    dst = psycopg.connect(PG_DSN.format(db=B), autocommit=True)
    try:
        src.execute("INSERT INTO t000 (id, name, note) VALUES (0, 'probe', 'probe')")
        wait_for("the probe row", lambda: count(dst, "t000", "probe") == 1, 120)
        rss_start = applier.rss[-1] if applier.rss else 0
        commits: dict[tuple[int, int], float] = {}
        t0 = time.perf_counter()
        for i in range(singles):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # pacing: stands for time, not for synchronisation
            table = i % maps
            src.execute(f"INSERT INTO t{table:03d} (id, name, qty, note, changed_at) "
                        "VALUES (%s, %s, %s, 'many', now())", (i + 1, f"row {i}", i))
            commits[(table, i + 1)] = time.time()
        written = singles / (time.perf_counter() - t0)

        def arrived() -> int:
            return sum(count(dst, f"t{t:03d}", "many") for t in range(maps))

        wait_for(f"{singles} rows over {maps} maps", lambda: arrived() == singles, 300, 0.2)
        lags = []
        for t in range(maps):
            for k, at in dst.execute(f"SELECT id, extract(epoch FROM arrived_at)::float8 FROM "
                                     f"t{t:03d} WHERE note = 'many'").fetchall():
                lags.append((float(at) - commits[(t, int(k))]) * 1000)
        return {"p50": statistics.median(lags), "p99": pct(lags, 99), "written": written,
                "rss_start": rss_start / 1024, "rss_peak": max(applier.rss) / 1024}
    finally:
        src.close()
        dst.close()
        applier.stop()


def backlog(rows: int) -> dict[str, float]:
    src = psycopg.connect(PG_DSN.format(db=A), autocommit=True)
    dst = psycopg.connect(PG_DSN.format(db=B), autocommit=True)
    try:
        lo = 10_000_000
        for start in range(lo, lo + rows, 1000):  # the applier is not running: a pause
            n = min(1000, lo + rows - start)
            with src.transaction():
                src.execute("INSERT INTO t001 (id, name, qty, note, changed_at) SELECT g, "
                            "'backlog ' || g, g %% 1000, 'backlog', now() FROM "
                            "generate_series(%s::bigint, %s::bigint) g", (start, start + n - 1))
        applier = Applier()
        started = time.time()
        applier.start()
        try:
            wait_for(f"a backlog of {rows:,} rows", lambda: count(dst, "t001", "backlog") == rows,
                     3600, 0.5)
            row = dst.execute("SELECT extract(epoch FROM max(arrived_at))::float8 FROM t001 "
                              "WHERE note = 'backlog'").fetchone()
            assert row is not None
            seconds = float(row[0]) - started
            samples = applier.rss
        finally:
            applier.stop()
        return {"rate": rows / seconds, "seconds": seconds,
                "rss_start": (samples[1] if len(samples) > 1 else samples[0]) / 1024,
                "rss_peak": max(samples) / 1024,
                "rss_end": samples[-1] / 1024}
    finally:
        src.close()
        dst.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maps", type=int, default=100)
    ap.add_argument("--singles", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--backlog", type=int, default=100_000)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    with autovacuum_on():
        try:
            setup(args.maps)
            checkpoint()
            many = many_maps(args.maps, args.singles, args.rate)
            print(f"{args.maps} maps: p50 {many['p50']:.1f} ms, p99 {many['p99']:.1f} ms, "
                  f"{many['written']:,.0f} written/s, RSS {many['rss_start']:.0f} → peak "
                  f"{many['rss_peak']:.0f} MiB", flush=True)
            drained = backlog(args.backlog)
            print(f"backlog {args.backlog:,}: {drained['rate']:,.0f} rows/s "
                  f"({drained['seconds']:.1f} s), RSS {drained['rss_start']:.0f} → peak "
                  f"{drained['rss_peak']:.0f}, end {drained['rss_end']:.0f} MiB", flush=True)
        finally:
            drop_pg([A, B])
    body = "\n".join([
        f"Measured {time.strftime('%Y-%m-%d')} on this project's {os.cpu_count()}-core "
        f"machine, `python bench/capture_scale.py --maps {args.maps} --singles {args.singles} "
        f"--rate {args.rate:g} --backlog {args.backlog}`, PostgreSQL ↔ PostgreSQL, plain maps "
        "(see the script's docstring for the method).", "",
        "| workload | figure |", "|---|---|",
        f"| {args.maps} maps on one link, {args.singles:,} single-row commits at "
        f"{args.rate:,.0f}/s round-robin | lag p50 {many['p50']:.1f} ms, p99 "
        f"{many['p99']:.1f} ms ({many['written']:,.0f} written/s); applier RSS "
        f"{many['rss_start']:.0f} MiB, peak {many['rss_peak']:.0f} MiB |",
        f"| backlog of {args.backlog:,} rows after a pause | drained at "
        f"{drained['rate']:,.0f} rows/s ({drained['seconds']:.1f} s); applier RSS "
        f"{drained['rss_start']:.0f} MiB at start, peak {drained['rss_peak']:.0f} MiB, "
        f"{drained['rss_end']:.0f} MiB at the end |"])
    print("\n" + body)
    if not args.no_docs:
        update_section(ROOT / "docs" / "benchmarks.md", "capture-scale",
                       "Capture at scale: 100 maps, a backlog", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
