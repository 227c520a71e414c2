"""`dualwrite run` and `dualwrite serve` stop cleanly on SIGTERM, every time.

Each is started and stopped 50 times (500 with --long): exit code 0, a log that ends with
"stopped" and holds no error. The processes are forked from one that has imported dualwrite
already (a fork server), so that 100 starts cost seconds rather than 100 interpreter start-ups;
each child runs the `dualwrite` command's own entry point, as a separate process, to its exit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from capture_fixtures import ITEMS_MAP, fresh_tables, items_metadata, link_config, make_items
from dualwrite.cli import main
from dualwrite.testing.backends import pair_id, pairs, spec

from conftest import BackendFactory


class ForkServer:
    """Starts `dualwrite` commands as children of a process that imported dualwrite once."""

    SOURCE = r"""
import os, sys, time
import uvicorn  # what `run` and `serve` import when they start: imported once, here
import dualwrite.api.server, dualwrite.engine.capture
from dualwrite.cli import main

for line in sys.stdin:
    cmd, *args = line.rstrip("\n").split("\t")
    if cmd == "start":
        log, *argv = args
        pid = os.fork()
        if pid == 0:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
            raise SystemExit(main(argv))  # a normal interpreter exit, threads and all
        print(pid, flush=True)
    elif cmd == "wait":  # the child's exit status, or "hung" (then it is killed)
        pid, deadline = int(args[0]), time.monotonic() + float(args[1])
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                print(os.waitstatus_to_exitcode(status), flush=True)
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                print("hung", flush=True)
                break
            time.sleep(0.01)  # polling a child's exit, with a deadline
"""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", self.SOURCE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def _ask(self, *fields: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\t".join(fields) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer, f"the fork server died (exit {self.proc.poll()})"
        return answer

    def start(self, log: Path, *argv: str) -> int:
        return int(self._ask("start", str(log), *argv))

    def wait(self, pid: int, timeout: float) -> int | str:
        answer = self._ask("wait", str(pid), str(timeout))
        return answer if answer == "hung" else int(answer)

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


@pytest.fixture
def forks() -> Iterator[ForkServer]:
    server = ForkServer()
    try:
        yield server
    finally:
        server.close()


def _wait_for_line(log: Path, marker: str, pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while marker not in (text := log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, f"{pid} did not print {marker!r}:\n{text}"
        time.sleep(0.005)  # polling a log file for a line, with a deadline


def _configs(make_backend: BackendFactory, tmp_path: Path, pair: tuple[str, str]
             ) -> list[Path]:
    """Links of the items map, started: four of database files (SQLite: stopped four at a
    time), or one of two database servers (PostgreSQL and MariaDB)."""
    if spec(pair[0]).has("server"):
        it = make_items(make_backend, tmp_path, *pair)
        configs = [it.config]
    else:
        configs = []
        for i in range(4):
            left = make_backend(pair[0], f"signals_{i}_a")
            right = make_backend(pair[1], f"signals_{i}_b")
            fresh_tables(items_metadata(), left, right)
            configs.append(link_config(tmp_path / f"link{i}", left, right,
                                       {"items": ITEMS_MAP.format(policy="left-wins")}))
    for config in configs:
        assert main(["-c", str(config), "maps", "start", "--yes"]) == 0
    return configs


def _stop_many(forks: ForkServer, tmp_path: Path, command: str, argvs: list[list[str]],
               ready: str, times: int) -> None:
    """Start each of ``argvs`` and stop it with SIGTERM, ``times`` stops in all: each exits
    0, its log ends with "dualwrite <command>: stopped" and holds no error."""
    stopped = f"dualwrite {command}: stopped"
    rng = random.Random(1)
    done = 0
    while done < times:
        batch = argvs[:times - done]
        started = []
        for j, argv in enumerate(batch):
            log = tmp_path / f"{command}-{done + j}.log"
            started.append((log, forks.start(log, *argv)))
        for log, pid in started:
            _wait_for_line(log, ready, pid)
        for _log, pid in started:
            time.sleep(rng.random() * 0.05)  # at a varying moment of each one's loop
            os.kill(pid, signal.SIGTERM)
        for log, pid in started:
            done += 1
            code = forks.wait(pid, 20)
            text = log.read_text()
            assert code == 0, f"stop {done}/{times}: exit {code}\n{text}"
            lines = text.strip().splitlines()
            assert lines[-1] == stopped, f"stop {done}/{times}:\n{text}"
            for bad in ("Traceback", "ERROR", "WARNING", "error:"):
                assert bad not in text, f"stop {done}/{times}: {bad} in the log\n{text}"


@pytest.mark.parametrize("pair", pairs(needs=("capture",), same="none"), ids=pair_id)
@pytest.mark.parametrize("command", ["run", "serve"])
def test_run_and_serve_stop_cleanly_on_sigterm_every_time(
        command: str, pair: tuple[str, str], make_backend: BackendFactory, tmp_path: Path,
        forks: ForkServer, long_run: bool, capsys: pytest.CaptureFixture[str]) -> None:
    configs = _configs(make_backend, tmp_path, pair)
    capsys.readouterr()
    if command == "serve":
        argvs = [["-c", str(c), "serve", "--port", "0"] for c in configs]
        ready = "Uvicorn running on"
    else:
        argvs = [["-c", str(c), "run"] for c in configs]
        ready = "applying captured changes"
    # SQLite sides start fastest: the 20 stops (200 with --long); PostgreSQL and MariaDB add
    # the LISTEN session and the history purger, threads that must stop too
    times = 5 if spec(pair[0]).has("server") else 20
    _stop_many(forks, tmp_path, command, argvs, ready, times * 10 if long_run else times)


def test_a_frozen_and_thawed_run_keeps_applying_and_still_stops_on_sigterm(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    """SIGSTOP then SIGCONT (a debugger, a paused container, a frozen VM) is not a stop:
    CPython's sigtimedwait then returns a siginfo no signal filled in, which once made
    `run` stop as if it had been asked to."""
    it = make_items(make_backend, tmp_path, "sqlite", "sqlite")
    cfg = str(it.config)
    assert main(["-c", cfg, "maps", "start", "--yes"]) == 0
    log = tmp_path / "run.log"
    with log.open("w") as out, subprocess.Popen(
            [sys.executable, "-m", "dualwrite", "-c", cfg, "run"], stderr=out,
            env={**os.environ}) as proc:
        try:
            _wait_for_line(log, "applying captured changes", proc.pid)
            for _ in range(3):
                proc.send_signal(signal.SIGSTOP)
                time.sleep(0.3)  # frozen for a while: what is tested is the thaw after it
                proc.send_signal(signal.SIGCONT)
            it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'after', 1)")
            deadline = time.monotonic() + 60
            while it.rows("right") != {1: ("after", 1)}:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.02)  # polling a condition, with a deadline
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert log.read_text().rstrip().endswith("stopped")
