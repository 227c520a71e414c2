"""Maps edited while the link runs: a file edited and not reloaded changes nothing (status
says so); `maps reload` checks the new version against both schemas, installs capture for its
columns and records it, and running processes switch to it (issue: never lose, never corrupt,
section 4)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capture_fixtures import ITEMS_MAP, Items, drain, make_items
from dualwrite.cli import main
from dualwrite.errors import LinkError, ValidationFailed
from dualwrite.testing.backends import pair_id, pairs

from conftest import BackendFactory

PAIRS = pairs(needs=("capture", "server"))
WITH_NOTE = ITEMS_MAP + "  - note = note\n"


def edit(it: Items, text: str) -> None:
    (it.config.parent / "maps" / "items.yaml").write_text(text.format(policy="left-wins"))


@pytest.mark.parametrize("kinds", PAIRS, ids=pair_id)
def test_an_edited_map_changes_nothing_until_reloaded_then_everything(
        make_backend: BackendFactory, tmp_path: Path, kinds: tuple[str, str]) -> None:
    it = make_items(make_backend, tmp_path, *kinds)
    it.left.insert("items", [{"id": 1, "name": "one", "qty": 1, "note": "n0"}])
    with it.link() as link:
        link.start_maps()
        applier = link.applier()
        before = link.status()[0]["version"]
        assert before
        edit(it, WITH_NOTE)  # a field added to the running map, not reloaded
        it.left.app_sql("UPDATE items SET note = 'n1', qty = 2 WHERE id = 1")
        drain(applier)
        assert it.right.sql("SELECT qty, note FROM items WHERE id = 1") == [(2, None)]
        [row] = link.status()
        assert row["version"] == before
        assert row["note"] is not None and "map file changed, not reloaded" in row["note"]
        with it.link() as other:  # another process reloads
            [done] = other.reload_maps()
            assert done["reloaded"] and done["from"] == before and done["to"] != before
        it.left.app_sql("UPDATE items SET note = 'n2' WHERE id = 1")
        applier.maps(refresh=True)  # (a running applier looks every 0.2 s)
        drain(applier)
        assert it.right.sql("SELECT qty, note FROM items WHERE id = 1") == [(2, "n2")]
        [row] = link.status()
        assert row["version"] == done["to"] and "map file" not in (row["note"] or "")
        assert all(v.ok for v in link.verify())


def test_reload_refuses_a_version_that_does_not_bind_or_is_another_map(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    it = make_items(make_backend, tmp_path, "postgresql", "postgresql")
    with it.link() as link:
        link.start_maps()
        installed = link.status()[0]["version"]
        edit(it, ITEMS_MAP + "  - colour = colour\n")  # no such column
        with pytest.raises(ValidationFailed) as bad:
            link.reload_maps()
        assert "colour" in str(bad.value)
        edit(it, ITEMS_MAP.replace("key: {{left: [id], right: [id]}}",
                                   "key: {{left: [name], right: [name]}}"))
        with pytest.raises(LinkError) as other:
            link.reload_maps()
        assert "another map" in str(other.value) and "maps stop" in other.value.hint
        assert link.status()[0]["version"] == installed


def test_a_running_applier_process_switches_within_seconds(
        make_backend: BackendFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """`dualwrite run` as a process; the map file edited and reloaded by `dualwrite maps
    reload`: a change made after the reload arrives as the new version says (here: a field it
    adds), within 5 s plus the time to apply."""
    it = make_items(make_backend, tmp_path, "postgresql", "mariadb")
    it.left.insert("items", [{"id": 1, "name": "one", "qty": 1}])
    cfg = str(it.config)
    assert main(["-c", cfg, "maps", "start", "--yes"]) == 0
    log = tmp_path / "run.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "dualwrite", "-c", cfg, "run"],
                                stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        while "applying captured changes" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)  # polling a condition, with a deadline
        edit(it, WITH_NOTE)
        capsys.readouterr()
        assert main(["-c", cfg, "maps", "reload"]) == 0
        assert "items: reloaded" in capsys.readouterr().out
        it.left.app_sql("UPDATE items SET note = 'after' WHERE id = 1")
        deadline = time.monotonic() + 30
        while it.right.sql("SELECT note FROM items WHERE id = 1") != [("after",)]:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the running applier did not switch"
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()[-3000:]


@pytest.mark.parametrize("kinds", PAIRS, ids=pair_id)
def test_changes_captured_before_a_reload_are_applied_as_their_version(
        make_backend: BackendFactory, tmp_path: Path, kinds: tuple[str, str]) -> None:
    """A change queued under version 1 (qty mapped) is applied as version 1 after a reload to
    version 2 (qty no longer mapped, note mapped); a change captured after the reload, as
    version 2. Each change carries the version it was captured under."""
    it = make_items(make_backend, tmp_path, *kinds)
    it.left.insert("items", [{"id": 1, "name": "one", "qty": 1, "note": None}])
    with it.link() as link:
        link.start_maps()
        applier = link.applier()
        link.pause_maps(["items"])
        it.left.app_sql("UPDATE items SET qty = 5 WHERE id = 1")  # queued, version 1
        [(version_1,)] = it.left.sql("SELECT v FROM dualwrite_changes")
        edit(it, ITEMS_MAP.replace("  - qty = qty\n", "") + "  - note = note\n")
        [done] = link.reload_maps()
        it.left.app_sql("UPDATE items SET qty = 7, note = 'x' WHERE id = 1")  # version 2
        versions = [r[0] for r in it.left.sql("SELECT v FROM dualwrite_changes ORDER BY seq")]
        assert versions == [version_1, done["to"]] and version_1 == done["from"]
        link.resume_maps(["items"])
        drain(applier)
        assert it.right.sql("SELECT qty, note FROM items WHERE id = 1") == [(5, "x")]


def test_a_change_log_made_before_map_versions_gets_its_column(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    """A log an earlier version made has no version column: it is added when the log is
    first used, and a change queued in it (no version) is applied as the map is now."""
    it = make_items(make_backend, tmp_path, "postgresql", "mariadb")
    it.left.insert("items", [{"id": 1, "name": "one", "qty": 1}])
    with it.link() as link:
        link.start_maps()
        link.pause_maps(["items"])
        it.left.app_sql("UPDATE items SET qty = 3 WHERE id = 1")
    for b in (it.left, it.right):
        b.app_sql("ALTER TABLE dualwrite_changes DROP COLUMN v" if b.kind == "postgresql" else
                  "SET STATEMENT system_versioning_alter_history = KEEP FOR "
                  "ALTER TABLE dualwrite_changes DROP COLUMN v")
    with it.link() as link:
        link.resume_maps(["items"])
        drain(link.applier())
        assert it.right.sql("SELECT qty FROM items WHERE id = 1") == [(3,)]
        assert "v" in [r[0] for r in it.left.sql(
            "SELECT column_name FROM information_schema.columns WHERE table_name = "
            "'dualwrite_changes'")]
