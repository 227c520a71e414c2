"""The `dualwrite` command: options, exit codes, --json, and errors that say what to do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dualwrite.cli import main
from dualwrite.engine.config import load_map_file

from conftest import BackendFactory, shared_path
from sync_fixtures import Pair, erp_customer, make_pair, seed_groups

COMMANDS = [["validate"], ["plan"], ["sync"], ["verify"], ["link"], ["unlink"],
            ["import-template"], ["demo"], ["maps", "list"], ["errors", "list"],
            ["errors", "show"], ["errors", "discard"], ["errors", "retry"], ["errors", "resolve"],
            ["maps", "start"], ["maps", "stop"], ["maps", "pause"], ["maps", "resume"], ["run"],
            ["status"], ["uninstall"], ["tokens", "create"], ["serve"], ["alerts", "list"],
            ["alerts", "ack"], ["follow"]]


@pytest.fixture
def pair(make_backend: BackendFactory, tmp_path: Path) -> Pair:
    p = make_pair(make_backend, tmp_path, "sqlite", "sqlite")
    seed_groups(p)
    p.erp.insert("Customers", [erp_customer(i) for i in range(25)])
    return p


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*cmd, "--help"]) == 0
    text = capsys.readouterr().out
    assert "Usage:" in text
    if cmd[0] not in ("import-template", "demo"):
        assert "--config" in text and "-c" in text


def test_the_installed_entry_point_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "dualwrite.cli", "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert all(cmd in proc.stdout for cmd in ("validate", "plan", "sync", "verify", "demo"))


def test_version_prints_the_installed_package_version(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"dualwrite {version('dualwrite')}\n"
    import dualwrite

    assert dualwrite.__version__ == version("dualwrite")


def test_validate_plan_sync_verify_with_json(pair: Pair, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    cfg = str(pair.config)
    assert main(["-c", cfg, "validate", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and set(out["maps"]) == {"groups", "customers"}

    assert main(["plan", "-c", cfg, "--json"]) == 0  # -c after the command works too
    plan = {m["map"]: m for m in json.loads(capsys.readouterr().out)["maps"]}
    assert plan["groups"]["created"] == {"left": 1, "right": 2}

    assert main(["-c", cfg, "verify", "--json"]) == 1  # not synced yet: the sides differ
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert {d["kind"] for m in report["maps"] for d in m["details"]} >= {"missing-right"}

    assert main(["-c", cfg, "sync", "--initial", "--json"]) == 0
    synced = {m["map"]: m for m in json.loads(capsys.readouterr().out)["maps"]}
    assert synced["customers"]["created"]["right"] == 25

    assert main(["-c", cfg, "verify"]) == 0
    assert "both sides agree" in capsys.readouterr().out

    assert main(["-c", cfg, "maps", "list", "--json"]) == 0
    states = {m["map"]: m["state"] for m in json.loads(capsys.readouterr().out)["maps"]}
    assert states == {"groups": "synced", "customers": "synced"}


def test_verify_text_output_names_key_and_field(pair: Pair,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(pair.config)
    assert main(["-c", cfg, "sync", "--initial"]) == 0
    with pair.crm.connector.transaction() as tx:
        tx.update("accounts", ["company", "accountnumber"], ["name"],
                  [(("usmf", "C-0003"), ("Edited",))])
    capsys.readouterr()
    assert main(["-c", cfg, "verify", "customers"]) == 1
    out = capsys.readouterr().out
    assert '  usmf, C-0003: NAME = name: left "Customer 3", right "Edited"' in out
    assert "  1 × NAME = name" in out


def test_errors_list_show_discard(pair: Pair, capsys: pytest.CaptureFixture[str]) -> None:
    pair.erp.insert("Customers", [erp_customer(200, GROUPID="NOPE")])
    cfg = str(pair.config)
    assert main(["-c", cfg, "sync", "--initial"]) == 0
    assert "went to the error inbox" in capsys.readouterr().out
    assert main(["-c", cfg, "errors", "list", "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)["errors"]
    assert entry["map"] == "customers" and entry["key"] == ["demf", "C-0200"]
    assert "NOPE" in entry["reason"]
    assert main(["-c", cfg, "errors", "show", str(entry["id"])]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["row"]["GROUPID"] == "NOPE"  # an initial sync's failed row
    assert main(["-c", cfg, "errors", "discard", str(entry["id"])]) == 0
    capsys.readouterr()
    assert main(["-c", cfg, "errors", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["errors"] == []
    assert main(["-c", cfg, "errors", "show", "9999"]) == 2
    assert "no error with id 9999" in capsys.readouterr().err


def test_errors_exit_2_with_a_hint(tmp_path: Path, pair: Pair,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(tmp_path / "missing.yaml"), "verify"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "hint:" in err
    assert main(["-c", str(pair.config), "sync"]) == 2
    assert "needs --initial" in capsys.readouterr().err
    assert main(["-c", str(pair.config), "plan", "--master", "middle"]) == 2
    assert "--master left" in capsys.readouterr().err
    assert main(["-c", str(pair.config), "plan", "nosuchmap"]) == 2
    assert "no map named 'nosuchmap'" in capsys.readouterr().err


def test_link_and_unlink(pair: Pair, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(pair.config)
    assert main(["-c", cfg, "link"]) == 0
    assert "linked erp <-> crm" in capsys.readouterr().out
    assert pair.erp.connector.get_link() is not None
    assert main(["-c", cfg, "unlink"]) == 0
    assert pair.erp.connector.get_link() is None and pair.crm.connector.get_link() is None


def test_import_template_writes_a_loadable_map(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    src = shared_path("data", "msdocs-dualwrite-templates", "CustomersV3-accounts.md")
    out = tmp_path / "customers.yaml"
    assert main(["import-template", str(src), "-o", str(out), "--name", "customers"]) == 0
    m = load_map_file(out)
    assert m.name == "customers" and (m.left, m.right) == ("CustomersV3", "accounts")
    assert m.filter_right == "customertypecode eq 3"
    assert len(m.fields) == 62  # every row of the published table
    assert main(["import-template", str(tmp_path / "nope.md")]) == 2
    assert "cannot read template" in capsys.readouterr().err


def test_tokens_maps_and_recover_commands(pair: Pair, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    cfg = str(pair.config)
    capsys.readouterr()
    assert main(["-c", cfg, "tokens", "create", "--principal", "alice",
                 "--licence", "accounts", "--role", "admin"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and printed.startswith("dw_")  # the token, alone
    token = printed.strip()
    assert main(["-c", cfg, "tokens", "list", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)["tokens"]
    assert listed["principal"] == "alice" and listed["licences"] == ["accounts"]
    assert token not in json.dumps(listed)  # only the hash is kept
    assert main(["-c", cfg, "tokens", "revoke", listed["id"]]) == 0
    assert main(["-c", cfg, "tokens", "revoke", listed["id"]]) == 2
    assert "no active token" in capsys.readouterr().err

    assert main(["-c", cfg, "maps", "start", "--json"]) == 0
    started = json.loads(capsys.readouterr().out)
    assert started["started"] == ["groups", "customers"]  # depends_on order
    assert {r["map"] for r in started["initial_sync"]} == {"groups", "customers"}
    assert main(["-c", cfg, "maps", "stop", "customers"]) == 0
    capsys.readouterr()
    assert main(["-c", cfg, "maps", "list", "--json"]) == 0
    states = {m["map"]: m["state"] for m in json.loads(capsys.readouterr().out)["maps"]}
    assert states == {"groups": "running", "customers": "stopped"}

    assert main(["-c", cfg, "recover"]) == 0
    assert "nothing in doubt" in capsys.readouterr().out
