"""`dualwrite uninstall` (or `maps stop --purge` plus `unlink --purge`) leaves nothing of
dualwrite in either database; `unlink` says what it leaves behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from capture_fixtures import make_items
from dualwrite.cli import main
from dualwrite.engine.link import Link
from dualwrite.engine.state import StateStore

from conftest import Backend, BackendFactory

GADGETS_MAP = """
name: gadgets
left: gadgets
right: gadgets
key: {left: [id], right: [id]}
fields:
  - id = id
  - label = label
"""

OWN = {
    "postgresql": [
        "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND (relname LIKE 'dualwrite%' OR "
        "relname LIKE 'dw\\_%')",
        "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'dw\\_%'",
        "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = current_schema() AND (proname LIKE 'dw\\_%' OR "
        "proname LIKE 'dualwrite%')"],
    "mariadb": [
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
        "AND (TABLE_NAME LIKE 'dualwrite%' OR TABLE_NAME LIKE 'dw\\_%')",
        "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = "
        "DATABASE() AND (TRIGGER_NAME LIKE 'dw\\_%' OR TRIGGER_NAME LIKE 'dualwrite%')",
        "SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = "
        "DATABASE() AND (ROUTINE_NAME LIKE 'dw\\_%' OR ROUTINE_NAME LIKE 'dualwrite%')"],
}


def dualwrite_objects(b: Backend) -> list[str]:
    """Every table, index, sequence, trigger and function named dualwrite_* or dw_*."""
    return sorted(str(r[0]) for q in OWN[b.kind] for r in b.sql(q))


@pytest.fixture
def linked(make_backend: BackendFactory, tmp_path: Path,
           capsys: pytest.CaptureFixture[str]) -> tuple[Backend, Backend, Path]:
    it = make_items(make_backend, tmp_path, "postgresql", "mariadb")
    md = sa.MetaData()
    sa.Table("gadgets", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("label", sa.String(40)))
    for b in (it.left, it.right):
        b.create(md)
    (tmp_path / "maps" / "gadgets.yaml").write_text(GADGETS_MAP)
    cfg = str(it.config)
    assert main(["-c", cfg, "maps", "start", "--yes"]) == 0
    it.left.app_sql("INSERT INTO items (id, name, qty) VALUES (1, 'queued', 1)")  # a log row
    with Link.open(it.config) as link, link.transaction() as tx:  # its decision row's table
        tx.create("erp", "items", {"id": 2, "name": "live", "qty": 2})
    # a map taken out of the config leaves its triggers behind: they must go too
    (tmp_path / "maps" / "gadgets.yaml").unlink()
    capsys.readouterr()
    for b in (it.left, it.right):
        found = dualwrite_objects(b)
        assert "dualwrite_changes" in found and "dualwrite_link" in found, found
        assert "dualwrite_decisions" in found, found
        assert sum(o.startswith("dw_") for o in found) >= 6, found  # both maps' triggers
    return it.left, it.right, it.config


def test_uninstall_leaves_nothing_of_dualwrite(linked: tuple[Backend, Backend, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    left, right, config = linked
    cfg = str(config)
    # it asks first: without a terminal and without --yes it refuses and removes nothing
    assert main(["-c", cfg, "uninstall"]) == 2
    err = capsys.readouterr().err
    assert "needs confirmation" in err and "dualwrite_changes" in err and "--yes" in err
    # nor while an applier runs
    from dualwrite.engine.lease import ApplierLease

    state = StateStore(f"sqlite:///{config.parent / 'state.db'}")
    # what an initial sync keeps of the link's rows: the rows it was creating, the digests
    # of fields the target filled itself
    state.put_creating("items", {"right": ["k2"]})
    state.note_created_defaults("items", "right", [("k1", {"qty": "d1"})])
    assert state.creating("items") and state.created_defaults("items", ["k1"])
    lease = ApplierLease(state, "erp<->crm")
    assert lease.acquire()
    try:
        assert main(["-c", cfg, "uninstall", "--yes"]) == 2
        assert "while an applier" in capsys.readouterr().err
    finally:
        lease.release()
        state.close()
    assert "dualwrite_changes" in dualwrite_objects(left)

    assert main(["-c", cfg, "uninstall", "--yes"]) == 0
    text = capsys.readouterr().out
    assert "erp: removed" in text and "table dualwrite_link" in text and "state store" in text
    assert "table dualwrite_decisions" in text
    assert dualwrite_objects(left) == [] and dualwrite_objects(right) == []
    state = StateStore(f"sqlite:///{config.parent / 'state.db'}")
    try:
        assert state.get_link("erp<->crm") is None
        assert {m["state"] for m in state.map_states().values()} == {"stopped"}
        assert state.creating("items") == {} and state.created_defaults("items", ["k1"]) == {}
    finally:
        state.close()
    assert main(["-c", cfg, "uninstall", "--yes"]) == 0  # again: nothing left to remove
    assert "erp: removed nothing" in capsys.readouterr().out


def test_unlink_says_what_it_leaves_and_the_purges_remove_it(
        linked: tuple[Backend, Backend, Path], capsys: pytest.CaptureFixture[str]) -> None:
    left, right, config = linked
    cfg = str(config)
    assert main(["-c", cfg, "unlink"]) == 0
    text = capsys.readouterr().out
    assert "unlinked erp, crm" in text
    for env in ("erp", "crm"):
        assert f"left behind in {env}: trigger dw_" in text
        assert (f"left behind in {env}: the link's tables dualwrite_link, "
                "dualwrite_decisions; remove with `dualwrite unlink --purge`") in text
    assert "table dualwrite_changes" in text and "dualwrite maps stop --purge" in text
    assert f"the state store sqlite:///{config.parent / 'state.db'}" in text

    assert main(["-c", cfg, "maps", "stop", "items", "--purge", "--yes"]) == 2
    assert "without map names" in capsys.readouterr().err
    assert main(["-c", cfg, "maps", "stop", "--purge", "--yes"]) == 0
    assert "crm: removed trigger dw_" in capsys.readouterr().out
    for b in (left, right):  # the link's tables only (and their keys' indexes)
        assert {o.removesuffix("_pkey") for o in dualwrite_objects(b)} == {
            "dualwrite_link", "dualwrite_decisions"}
    assert main(["-c", cfg, "unlink", "--purge"]) == 0
    text = capsys.readouterr().out
    assert "left behind in" not in text and "the state store" in text
    assert dualwrite_objects(left) == [] and dualwrite_objects(right) == []
