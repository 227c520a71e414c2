"""A real `dualwrite serve` process for a test (imported by tests)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Served:
    """The running server's address and, once it has stopped, all it logged (uvicorn
    writes the access log on stdout, the rest on stderr: both are here) and its exit code."""

    url: str
    log: str = ""
    code: int | None = None
    lines: list[str] = field(default_factory=list)


@contextmanager
def serve(config: Path) -> Iterator[Served]:
    """Start `dualwrite -c config serve` on a free port, yield once it listens, stop it with
    SIGTERM when the block ends."""
    proc = subprocess.Popen([sys.executable, "-m", "dualwrite", "-c", str(config), "serve",
                             "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ})
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not (m := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)",
                                  "".join(seen))):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(seen)
            seen.append(proc.stdout.readline())
        served = Served(m.group(1), lines=seen)
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    served.log, served.code = "".join(seen) + rest, proc.returncode
