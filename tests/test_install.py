"""`pip install .` makes a wheel that works outside the checkout: templates, static files and
demo maps inside, the drivers as extras, `dualwrite --version` and `validate` from a fresh
virtualenv in another folder.

To stay quick and offline the wheel is built without build isolation (setuptools from the
dev extra) and installed without its dependencies; the fresh virtualenv reaches those
through a .pth line naming this one's site-packages (which holds no dualwrite module: the
checkout is installed editable, through a finder that a .pth line does not load)."""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building leaves build/ and egg-info behind
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", dist, source, cwd=tmp_path)
    [wheel] = dist.glob("dualwrite-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = email.message_from_string(z.read(next(
            n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    for packaged in ("dualwrite/api/console/templates/base.html",
                     "dualwrite/api/console/static/htmx.min.js",
                     "dualwrite/api/console/static/console.css",
                     "dualwrite/demo/maps/customers.yaml", "dualwrite/py.typed"):
        assert packaged in names, packaged
    requires = meta.get_all("Requires-Dist") or []
    core = [r for r in requires if "extra ==" not in r]
    assert not any(r.lower().startswith(("psycopg", "pymysql")) for r in core), core
    assert any(r.startswith("psycopg") and 'extra == "postgresql"' in r for r in requires)
    assert any(r.startswith("PyMySQL") and 'extra == "mariadb"' in r for r in requires)
    assert {"postgresql", "mariadb", "all", "dev"} <= set(meta.get_all("Provides-Extra") or [])

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
         "--no-index", wheel, cwd=tmp_path)
    purelib = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                        "['purelib'])", cwd=tmp_path).stdout.strip())
    (purelib / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = _run(python, "-c", "import dualwrite; print(dualwrite.__file__)", cwd=elsewhere,
                 env=env).stdout.strip()
    assert where.startswith(str(purelib)), where  # the installed copy, not the checkout
    version = _run(venv / "bin" / "dualwrite", "--version", cwd=elsewhere, env=env)
    assert version.stdout.strip() == f"dualwrite {meta['Version']}"

    for db in ("erp.db", "crm.db"):
        import sqlite3

        with sqlite3.connect(elsewhere / db) as conn:
            conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(40))")
    (elsewhere / "maps").mkdir()
    (elsewhere / "maps" / "items.yaml").write_text(
        "name: items\nleft: items\nright: items\nkey: {left: [id], right: [id]}\n"
        "fields:\n  - id = id\n  - name = name\n")
    (elsewhere / "dualwrite.yaml").write_text(yaml.safe_dump({
        "environments": {"erp": {"url": "sqlite:///erp.db"}, "crm": {"url": "sqlite:///crm.db"}},
        "link": {"left": "erp", "right": "crm"}, "state": "sqlite:///state.db"}))
    valid = _run(venv / "bin" / "dualwrite", "validate", cwd=elsewhere, env=env)
    assert "ok: 1 map(s) valid" in valid.stdout
    # the console's templates load from the installed package
    _run(python, "-c", "from dualwrite.api.console import _templates; "
         "_templates.get_template('overview.html')", cwd=elsewhere, env=env)
