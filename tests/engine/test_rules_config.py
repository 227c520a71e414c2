"""Business rules named by the config (`rules: {module: ...}`): loaded by `dualwrite.open()`,
`run` and `serve`, used by live writes; a module that cannot be used stops them with a
clear error."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import dualwrite
from capture_fixtures import make_items
from dualwrite.cli import main
from dualwrite.engine.security import create_token
from dualwrite.errors import ConfigError, RowError
from serve_process import serve

from conftest import BackendFactory

RULES = '''
import dualwrite


@dualwrite.before_write("erp", "ITEMS")
def no_big_quantities(ctx):
    if (ctx.values.get("qty") or 0) > 100:
        raise dualwrite.RowError("quantity over 100", field="qty", value=ctx.values["qty"])


@dualwrite.before_write("crm", "items")
@dualwrite.before_write("erp", "items")
def tidy_names(ctx):
    if "name" in ctx.values:
        ctx.values["name"] = ctx.values["name"].strip().title()


def helper():  # not marked: not a rule
    raise AssertionError("never called")
'''


def _with_rules(config: Path, text: str, **rules: Any) -> str:
    """Write ``text`` as a uniquely named module beside ``config`` and name it there."""
    module = f"rules_{uuid.uuid4().hex[:8]}"
    (config.parent / f"{module}.py").write_text(text)
    doc = yaml.safe_load(config.read_text())
    doc["rules"] = {"module": module, **rules}
    config.write_text(yaml.safe_dump(doc))
    return module


@pytest.fixture
def items(make_backend: BackendFactory, tmp_path: Path) -> Path:
    it = make_items(make_backend, tmp_path, "sqlite", "sqlite")
    with dualwrite.Link.open(it.config) as link:
        link.start_maps()
    return it.config


def test_open_loads_the_rules_and_live_writes_use_them(items: Path) -> None:
    _with_rules(items, RULES)
    with dualwrite.open(items) as link:
        with pytest.raises(RowError, match=r"no_big_quantities.*quantity over 100") as info, \
                link.transaction() as tx:
            tx.create("erp", "items", {"id": 1, "name": "big", "qty": 101})
        assert info.value.field == "qty"
        with link.transaction() as tx:
            tx.create("erp", "items", {"id": 2, "name": "  small box ", "qty": 5})
            tx.create("crm", "items", {"id": 3, "name": "crate", "qty": 500})  # erp rule only
        rows = {s: dict(link.connectors[s].fetch("items", ["id", "name"], key=["id"],
                                                  keys=[(1,), (2,), (3,)]))
                for s in link.connectors}
    assert list(rows.values()) == [{2: "Small Box", 3: "Crate"}] * 2  # mirrored as adjusted


@pytest.mark.parametrize(("text", "rules", "message"), [
    (None, {"module": "no_such_rules_module"},
     r"rules.module 'no_such_rules_module' cannot be imported: no module named"),
    ("import dualwrite\nraise RuntimeError('boom')\n", {},
     r"failed while it was imported \(.*rules_\w+\.py:2\): RuntimeError: boom"),
    ("import no_such_dependency_xyz\n", {},
     r"failed while it was imported.*ModuleNotFoundError: No module named "
     r"'no_such_dependency_xyz'"),
    ("def f(ctx):\n    pass\n", {}, r"marks no function as a rule"),
    ("import dualwrite\n@dualwrite.before_write('hr', 'items')\ndef f(ctx):\n    pass\n", {},
     r"rule rules_\w+\.f is for environment 'hr', which this link does not have"),
    ("import dualwrite\n@dualwrite.before_write('crm', 'itemz')\ndef f(ctx):\n    pass\n", {},
     r"rule rules_\w+\.f is for table 'itemz', which environment 'crm' does not have"),
])
def test_a_rules_module_that_cannot_be_used_is_a_clear_error(
        items: Path, text: str | None, rules: dict[str, str], message: str) -> None:
    if text is None:
        doc = yaml.safe_load(items.read_text())
        doc["rules"] = rules
        items.write_text(yaml.safe_dump(doc))
    else:
        _with_rules(items, text, **rules)
    with pytest.raises(ConfigError, match=message) as info:
        dualwrite.open(items)
    assert info.value.code == "DW006" and info.value.hint


def test_rules_import_from_their_own_folder(items: Path) -> None:
    (items.parent / "rules").mkdir()
    module = _with_rules(items, RULES, path="rules")
    (items.parent / f"{module}.py").rename(items.parent / "rules" / f"{module}.py")
    with dualwrite.open(items) as link:
        assert sorted(link.rules._rules) == [("crm", "items"), ("erp", "items")]


def test_run_and_serve_refuse_to_start_on_a_broken_rules_module(
        items: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _with_rules(items, "import dualwrite\nraise RuntimeError('boom')\n")
    for command in (["run"], ["serve", "--port", "0"]):
        assert main(["-c", str(items), *command]) == 2
        err = capsys.readouterr().err
        assert "DW006" in err and "RuntimeError: boom" in err and "hint:" in err


def test_serve_applies_the_rules_to_odata_writes(items: Path) -> None:
    _with_rules(items, RULES)
    with dualwrite.Link.open(items) as link:
        token = create_token(link.state, "writer", role="writer")
    with serve(items) as served:
        assert "rule erp.items: no_big_quantities" in "".join(served.lines)
        with httpx.Client(base_url=served.url, timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            r = client.post("/odata/erp/items", json={"id": 7, "name": "x", "qty": 1000})
            assert r.status_code == 400, r.text
            assert "quantity over 100" in r.json()["error"]["message"]
            assert r.json()["error"]["target"] == "qty"
            r = client.post("/odata/erp/items", json={"id": 8, "name": " lower case ", "qty": 1},
                            headers={"Prefer": "return=representation"})
            assert r.status_code == 201 and r.json()["name"] == "Lower Case", r.text
    assert served.code == 0, served.log
