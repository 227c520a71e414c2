"""``dualwrite demo``: two SQLite applications, seeded, then validate → plan → sync → verify.

Everything the demo needs ships in this package (schemas, seed generator, maps); it reads
nothing from outside. Running it again resets the demo folder's databases and starts over.
"""

from __future__ import annotations

import shutil
import time
from importlib import resources
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from dualwrite.connectors.sqlite import create_sqlite_engine
from dualwrite.engine.config import dump_config
from dualwrite.engine.link import Link
from dualwrite.model.maps import Side

FILES = ("erp.db", "crm.db", "dualwrite-state.db")


def write_demo_files(directory: Path) -> Path:
    """Create the folder, the config and the map files; return the config path."""
    directory.mkdir(parents=True, exist_ok=True)
    maps_dir = directory / "maps"
    if maps_dir.exists():
        shutil.rmtree(maps_dir)
    maps_dir.mkdir()
    source = resources.files("dualwrite.demo").joinpath("maps")
    for entry in sorted(source.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            (maps_dir / entry.name).write_text(entry.read_text(encoding="utf-8"),
                                               encoding="utf-8")
    config = dump_config({"erp": "sqlite:///erp.db", "crm": "sqlite:///crm.db"},
                         "erp", "crm", "sqlite:///dualwrite-state.db", ["maps/*.yaml"])
    path = directory / "dualwrite.yaml"
    header = ("# dualwrite demo: an ERP (left) and a CRM (right), both SQLite.\n"
              f"# Try: dualwrite -c {path} verify   |   dualwrite -c {path} plan\n")
    path.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def create_applications(directory: Path, *, scale: int) -> dict[str, dict[str, int]]:
    """Fresh ERP and CRM databases with their schemas and seed rows."""
    from dualwrite.demo.schema import crm_metadata, erp_metadata
    from dualwrite.demo.seed import seed

    for name in FILES:
        for suffix in ("", "-journal"):
            (directory / (name + suffix)).unlink(missing_ok=True)
    erp = create_sqlite_engine(f"sqlite:///{directory / 'erp.db'}")
    crm = create_sqlite_engine(f"sqlite:///{directory / 'crm.db'}")
    try:
        erp_metadata().create_all(erp)
        crm_metadata().create_all(crm)
        return seed(erp, crm, scale=scale)
    finally:
        erp.dispose()
        crm.dispose()


def _count(link: Link, side: Side, table: str) -> int:
    return link.connectors[side].count(table)


def run_demo(directory: Path, *, scale: int = 1, console: Console | None = None) -> int:
    """Run the whole demo; return the exit code (0 when verify finds both sides agree)."""
    con = console or Console()
    started = time.monotonic()
    directory = directory.resolve()
    con.print(f"[bold]dualwrite demo[/] in {directory}")
    config_path = write_demo_files(directory)
    t0 = time.monotonic()
    seeded = create_applications(directory, scale=scale)
    rows = sum(sum(v.values()) for v in seeded.values())
    con.print(f"1. seeded ERP and CRM: {rows:,} rows in {time.monotonic() - t0:.1f}s")
    with Link.open(config_path) as link:
        bound, issues = link.validate()
        for i in issues:
            con.print(str(i), markup=False)
        errors = [i for i in issues if i.is_error]
        if errors:
            con.print(f"[red]validate: {len(errors)} problem(s)[/]")
            return 1
        con.print(f"2. validate: {len(bound)} maps ok against both schemas")
        before = {b.name: (_count(link, Side.LEFT, b.left_table),
                           _count(link, Side.RIGHT, b.right_table)) for b in bound}
        plans = {r.map: r for r in link.plan()}
        creates = sum(r.created["left"] + r.created["right"] for r in plans.values())
        updates = sum(r.updated["left"] + r.updated["right"] for r in plans.values())
        con.print(f"3. plan: {creates:,} rows to create, {updates:,} to update")
        t0 = time.monotonic()
        synced = {r.map: r for r in link.sync_initial()}
        con.print(f"4. initial sync: done in {time.monotonic() - t0:.1f}s")
        verified = {r.map: r for r in link.verify()}
        ok = all(r.ok for r in verified.values())
        table = Table(title="summary (rows: ERP / CRM)", title_justify="left")
        for col in ("map", "before", "created", "updated", "errors", "after", "verify"):
            table.add_column(col, justify="left" if col == "map" else "right")
        for b in link.bound_maps():
            s, v = synced[b.name], verified[b.name]
            table.add_row(
                b.name, f"{before[b.name][0]:,} / {before[b.name][1]:,}",
                f"{s.created['left']:,} / {s.created['right']:,}",
                f"{s.updated['left']:,} / {s.updated['right']:,}",
                f"{s.errors['left'] + s.errors['right']:,}",
                f"{_count(link, Side.LEFT, b.left_table):,} / "
                f"{_count(link, Side.RIGHT, b.right_table):,}",
                "ok" if v.ok else f"{v.differences} diff")
        con.print(table)
        if not ok:
            for v in verified.values():
                for d in v.details[:5]:
                    con.print(f"  {v.map} {tuple(d.key)} {d.kind} {d.fields or d.reason}",
                              markup=False)
            con.print("[red]5. verify: the sides differ[/]")
            return 1
        con.print("5. verify: both sides agree")
    con.print(f"done in {time.monotonic() - started:.1f}s. Next: "
              f"`dualwrite -c {config_path} verify`, `... plan`, `... errors list`")
    return 0


__all__ = ["run_demo"]
