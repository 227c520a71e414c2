"""`dualwrite demo` end to end: validate, plan, initial sync, verify, then live (writes in each
application and through the API arrive, a conflict is parked, a console token is printed);
and it runs again."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dualwrite.cli import main
from dualwrite.engine.link import Link
from dualwrite.engine.security import authenticate


def test_demo_runs_twice_and_leaves_a_verifiable_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo_dir = tmp_path / "demo"
    assert main(["demo", "--dir", str(demo_dir), "--port", "0"]) == 0
    out = capsys.readouterr().out
    assert "validate: 13 maps ok" in out and "verify: both sides agree" in out
    assert (demo_dir / "dualwrite.yaml").exists() and (demo_dir / "maps").is_dir()
    # live: each write arrived, the conflict is parked, the console has a ready token
    for arrived in ("ERP's own INSERT", "CRM's own UPDATE", "OData POST",
                    "a conflict, parked in the inbox"):
        assert re.search(re.escape(arrived) + r".* in \d+\.\d+ s", out), out
    token = re.search(r"\b(dw_[0-9a-f]{8}_\S+)", out)
    assert token is not None and "/console/" in out and " -c " in out

    config = str(demo_dir / "dualwrite.yaml")
    with Link.open(config) as link:
        assert authenticate(link.state, token.group(1)).role == "admin"  # type: ignore[union-attr]
        [conflict] = [e for e in link.state.errors() if e.operation == "conflict"]
        assert conflict.map == "customer_groups"
        assert {m["state"] for m in link.status()} == {"running"}
    assert main(["-c", config, "verify", "--json"]) == 1  # the parked conflict differs
    report = json.loads(capsys.readouterr().out)
    assert [m["map"] for m in report["maps"] if not m["ok"]] == ["customer_groups"]
    assert sum(m["compared"] for m in report["maps"]) > 15_000

    assert main(["demo", "--dir", str(demo_dir), "--port", "0"]) == 0  # again, from scratch
    assert "verify: both sides agree" in capsys.readouterr().out
