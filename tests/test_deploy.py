"""The systemd units shipped in deploy/: valid for systemd (`systemd-analyze verify` where it
is installed, a parse of the unit otherwise), running the right command, stopped by SIGTERM,
restarted, secrets only from an environment file."""

from __future__ import annotations

import configparser
import getpass
import grp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
UNITS = {"dualwrite-run.service": " run", "dualwrite-serve.service": " serve"}


def _parse(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_files_are_valid_and_run_the_command(name: str, tmp_path: Path) -> None:
    text = (DEPLOY / name).read_text()
    unit = _parse(text)
    service = unit["Service"]
    assert service["ExecStart"].startswith("/opt/dualwrite/bin/dualwrite ")
    assert UNITS[name] in service["ExecStart"] and "-c /etc/dualwrite/dualwrite.yaml" in \
        service["ExecStart"]
    assert service["KillSignal"] == "SIGTERM" and service["Restart"] == "always"
    assert service["EnvironmentFile"].startswith("-/etc/dualwrite/")
    assert service["UMask"] == "0077" and unit["Install"]["WantedBy"] == "multi-user.target"
    lowered = text.lower()
    assert "password=" not in lowered and "dw_" not in text  # no secret in the unit
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # the parse above is the check where systemd is not installed
    # verified as installed here: this test's dualwrite and user instead of /opt and the
    # dualwrite user (which must exist for verify)
    here = Path(sys.executable).parent / "dualwrite"
    assert here.exists(), here
    local = text.replace("/opt/dualwrite/bin/dualwrite", str(here)) \
        .replace("User=dualwrite", f"User={getpass.getuser()}") \
        .replace("Group=dualwrite", f"Group={grp.getgrgid(os.getgid()).gr_name}")
    (tmp_path / name).write_text(local)
    done = subprocess.run([analyze, "verify", str(tmp_path / name)], capture_output=True,
                          text=True, timeout=120)
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if name in line or "error" in line.lower()]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr
