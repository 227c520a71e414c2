"""A real SAP CAP server for a test (imported by tests): the CDS model of tests/interop/cap/
served by `@sap/cds` on a free loopback port, with an in-memory SQLite database of its own.

The packages are installed by scripts/cap.sh into .cap/ (idempotent; run here when missing),
never with npx. The server is `node node_modules/@sap/cds/bin/serve.js`, started in .cap/.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from conftest import Backend, BackendFactory

ROOT = Path(__file__).resolve().parent.parent
CAP_DIR = Path(os.environ.get("DUALWRITE_CAP_DIR", ROOT / ".cap"))
SERVICE_PATH = "/odata/v4/erp/"
#: the mocked user of tests/interop/cap/package.json
USER, PASSWORD = "dualwrite", "dw-secret"
_INSTALL_LOCK = threading.Lock()


@dataclass
class Cap:
    """A running CAP server: its address, and what it logged so far."""

    port: int
    lines: list[str] = field(default_factory=list)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}{SERVICE_PATH}"

    def env_url(self, password_var: str = "CAP_PASSWORD") -> str:
        """The environment URL dualwrite's config holds, the password from ``${VAR}``."""
        return f"odata+http://{USER}:${{{password_var}}}@127.0.0.1:{self.port}{SERVICE_PATH}"


def ensure_installed() -> None:
    """Run scripts/cap.sh (quick when up to date); fail with what to do when it cannot."""
    CAP_DIR.parent.mkdir(parents=True, exist_ok=True)
    # one installer at a time, across the processes of `pytest -n`
    with _INSTALL_LOCK, open(str(CAP_DIR) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if shutil.which("node") is None:
            pytest.fail("node is not installed: the CAP interop tests need Node 20+ "
                        "(apt-get install nodejs npm), then `bash scripts/cap.sh`",
                        pytrace=False)
        r = subprocess.run(["bash", str(ROOT / "scripts" / "cap.sh")], capture_output=True,
                           text=True, timeout=600, check=False)
        if r.returncode != 0:
            pytest.fail(f"scripts/cap.sh failed (run it by hand to see why):\n{r.stdout}"
                        f"{r.stderr}", pytrace=False)


@contextmanager
def cap_server() -> Iterator[Cap]:
    """Start a CAP server on a free port, yield once it listens (60 s deadline), stop it
    with SIGTERM when the block ends."""
    ensure_installed()
    proc = subprocess.Popen(
        ["node", "node_modules/@sap/cds/bin/serve.js", "--port", "0"], cwd=CAP_DIR,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "NODE_ENV": "development", "CDS_ENV": "development"})
    assert proc.stdout is not None
    seen: list[str] = []
    drainer: threading.Thread | None = None
    try:
        deadline = time.monotonic() + 60
        while not (m := re.search(r"server listening on \{ url: 'http://localhost:(\d+)'",
                                  "".join(seen))):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(seen)
            seen.append(proc.stdout.readline())
        cap = Cap(int(m.group(1)), seen)
        # keep draining its output, so that a chatty server never blocks on a full pipe
        drainer = threading.Thread(target=lambda: seen.extend(proc.stdout or ()), daemon=True)
        drainer.start()
        yield cap
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        if drainer is not None:
            drainer.join(timeout=30)
        proc.stdout.close()


CUSTOMERS_MAP = """
name: customers
left: Customers
right: customers
key: {left: [ID], right: [id]}
master: left
fields:
  - ID = id
  - name = name
  - credit = credit
  - active = active
  - since = since
"""


def crm_metadata() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("customers", md,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("name", sa.String(100), nullable=False),
             sa.Column("credit", sa.Numeric(12, 2)),
             sa.Column("active", sa.Boolean),
             sa.Column("since", sa.Date))
    return md


def cap_client(cap: Cap) -> httpx.Client:
    return httpx.Client(base_url=cap.root, auth=(USER, PASSWORD), timeout=30)


def cap_rows(cap: Cap) -> dict[int, dict[str, Any]]:
    with cap_client(cap) as c:
        r = c.get("Customers", params={"$select": "ID,name,credit,active,since"})
        assert r.status_code == 200, r.text
        return {e["ID"]: e for e in r.json()["value"]}


def write_config(tmp_path: Path, erp_url: str, crm: Backend,
                 modified: str | None = "modifiedAt") -> Path:
    """A link erp (CAP, at ``erp_url``) <-> crm (``crm``) with the customers map; the
    environment names CAP's ``modified`` property (None: none, and its changes cannot be
    read: DW136)."""
    (tmp_path / "maps").mkdir(exist_ok=True)
    (tmp_path / "maps" / "customers.yaml").write_text(CUSTOMERS_MAP)
    erp: dict[str, str] = {"url": erp_url}
    if modified is not None:
        erp["modified"] = modified
    cfg = {"environments": {"erp": erp, "crm": {"url": crm.url}},
           "link": {"left": "erp", "right": "crm"},
           "state": f"sqlite:///{tmp_path / 'state.db'}", "maps": ["maps/*.yaml"]}
    path = tmp_path / "dualwrite.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def running_cap(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cap]:
    """For a fixture: a CAP server, and ``${CAP_PASSWORD}`` set to its password."""
    monkeypatch.setenv("CAP_PASSWORD", PASSWORD)
    with cap_server() as served:
        yield served


def fresh_crm(make_backend: BackendFactory) -> Backend:
    """For a fixture: the CRM side, a PostgreSQL database with an empty customers table."""
    b = make_backend("postgresql", "dualwrite_test_a")
    b.connector.clear_link()
    b.create(crm_metadata())
    return b


