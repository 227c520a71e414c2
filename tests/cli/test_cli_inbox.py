"""The inbox and conflicts on the command line: `errors list/show`, `conflicts list/show`,
readable values (plain numbers, ISO times, no Python reprs), the side each entry failed on and
the side its change came from."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from capture_fixtures import drain, make_items
from dualwrite.cli import main

from conftest import BackendFactory


def run_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    assert main(args) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_conflicts_and_inbox_entries_show_both_versions_readably(
        make_backend: BackendFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
        ) -> None:
    it = make_items(make_backend, tmp_path, "postgresql", "mariadb", policy="manual")
    cfg = str(it.config)
    it.left.insert("items", [{"id": 1, "name": "base", "qty": 1}])
    with it.link() as link:
        link.start_maps()
        it.left.app_sql("UPDATE items SET name = 'L1', qty = 10 WHERE id = 1")
        it.right.app_sql("UPDATE items SET name = 'R1', qty = 20 WHERE id = 1")
        drain(link.applier())
    entries = run_json(["-c", cfg, "errors", "list", "--json"], capsys)["errors"]
    [entry] = entries
    assert entry["operation"] == "conflict" and entry["key"] == [1]
    # the side the change would have been written to, and the side it came from
    assert {entry["side"], entry["from"]} == {"erp", "crm"} and entry["side"] != entry["from"]
    shown = run_json(["-c", cfg, "errors", "show", str(entry["id"])], capsys)
    change, theirs = shown["change"], shown["other_side_changes"]
    assert change["operation"] == "update" and len(theirs) == 1
    mine_new, other_new = change["new"]["name"], theirs[0]["new"]["name"]
    assert {mine_new, other_new} == {"L1", "R1"}
    assert shown["other_side_row"]["name"] == other_new
    dt.datetime.fromisoformat(change["captured_at"])  # an ISO time
    dt.datetime.fromisoformat(shown["detected_at"])
    text = json.dumps(shown)
    assert "Decimal(" not in text and "datetime." not in text and "\\\\x" not in text

    [c] = run_json(["-c", cfg, "conflicts", "list", "--json"], capsys)["conflicts"]
    assert c["winner"] == "manual" and c["key"] == [1] and c["from"] == entry["from"]
    full = run_json(["-c", cfg, "conflicts", "show", str(c["id"])], capsys)
    assert full["incoming_change"]["new"]["name"] == mine_new
    assert full["other_side_changes"][0]["new"]["name"] == other_new
    assert full["incoming_change"]["new"]["qty"] in (10, 20)  # a plain number

    # a conflict is not retried: the command says how it is settled
    assert main(["-c", cfg, "errors", "retry", str(entry["id"])]) == 0
    assert f"errors resolve {entry['id']} --pick" in capsys.readouterr().err
    assert run_json(["-c", cfg, "errors", "list", "--json"], capsys)["errors"][0][
        "status"] == "open"
    # resolved: the values are no longer kept once the conflict is settled
    assert main(["-c", cfg, "errors", "resolve", str(entry["id"]), "--pick", "left"]) == 0
    capsys.readouterr()
    with it.link() as link:
        drain(link.applier())
    assert it.rows("left")[1] == it.rows("right")[1] == ("L1", 10)
    settled = run_json(["-c", cfg, "conflicts", "show", str(c["id"])], capsys)
    assert "incoming_change" not in settled and "not kept" in settled["values"]


def test_conflicts_show_names_an_unknown_id(make_backend: BackendFactory, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    it = make_items(make_backend, tmp_path, "sqlite", "sqlite")
    assert main(["-c", str(it.config), "conflicts", "show", "999"]) == 2
    err = capsys.readouterr().err
    assert "no conflict with id 999" in err and "conflicts list" in err


def test_maps_stop_says_what_it_drops_and_asks(make_backend: BackendFactory, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Stopping a map with queued changes, or one others depend on, says what is dropped and
    needs confirmation (--yes): without it, nothing is stopped."""
    from sync_fixtures import make_pair, seed_groups

    p = make_pair(make_backend, tmp_path, "sqlite", "sqlite")
    seed_groups(p)
    cfg = str(p.config)
    assert main(["-c", cfg, "maps", "start", "--yes"]) == 0
    assert main(["-c", cfg, "maps", "pause", "groups"]) == 0
    p.erp.app_sql('INSERT INTO "Groups" ("dataAreaId", "GROUPID", "DESCRIPTION") '
                  "VALUES ('usmf', 'G40', 'New')")
    capsys.readouterr()
    assert main(["-c", cfg, "maps", "stop", "groups"]) == 2  # not a terminal: refused
    refused = capsys.readouterr().err
    assert "groups: 1 queued change(s) dropped" in refused
    assert "customers depends on groups" in refused and "--yes" in refused
    states = {m["map"]: m["state"] for m in run_json(["-c", cfg, "maps", "list", "--json"],
                                                     capsys)["maps"]}
    assert states["groups"] == "paused"
    assert main(["-c", cfg, "maps", "stop", "groups", "--yes"]) == 0
    assert "stopped: groups" in capsys.readouterr().out
