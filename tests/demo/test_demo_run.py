"""`dualwrite demo` end to end: validate, plan, initial sync, verify; and it runs again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualwrite.cli import main


def test_demo_runs_twice_and_leaves_a_verifiable_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo_dir = tmp_path / "demo"
    assert main(["demo", "--dir", str(demo_dir)]) == 0
    out = capsys.readouterr().out
    assert "validate: 13 maps ok" in out and "verify: both sides agree" in out
    assert (demo_dir / "dualwrite.yaml").exists() and (demo_dir / "maps").is_dir()

    config = str(demo_dir / "dualwrite.yaml")
    assert main(["-c", config, "verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and len(report["maps"]) == 13
    assert sum(m["compared"] for m in report["maps"]) > 15_000

    assert main(["-c", config, "plan", "--json"]) == 0  # nothing left to do
    plans = json.loads(capsys.readouterr().out)["maps"]
    assert all(p["created"] == {"left": 0, "right": 0} for p in plans)
    assert all(p["updated"] == {"left": 0, "right": 0} for p in plans)

    assert main(["demo", "--dir", str(demo_dir)]) == 0  # again, from scratch, no error
    assert "verify: both sides agree" in capsys.readouterr().out
