"""Config messages name the real cause (issue 10, section 2): an unset ``${VAR}`` in a URL
says which variable; a refused login says credentials; an unknown database says so, and
none of them claims that dualwrite retries. Each on the real servers, through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dualwrite.cli import main
from dualwrite.engine.link import Link
from dualwrite.errors import ConfigError, TerminalConnectorError
from dualwrite.testing.backends import backends, only

from conftest import BackendFactory, database_url


def _config(tmp_path: Path, erp_url: str, crm_url: str) -> Path:
    (tmp_path / "maps").mkdir(exist_ok=True)
    (tmp_path / "maps" / "m.yaml").write_text(
        "name: m\nleft: a\nright: b\nkey: {left: [id], right: [id]}\nfields:\n  - id = id\n")
    path = tmp_path / "dualwrite.yaml"
    path.write_text(yaml.safe_dump({
        "environments": {"erp": {"url": erp_url}, "crm": {"url": crm_url}},
        "link": {"left": "erp", "right": "crm"},
        "state": f"sqlite:///{tmp_path / 'state.db'}", "maps": ["maps/*.yaml"]}))
    return path


def _validate(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["-c", str(path), "validate"]) == 2
    err = capsys.readouterr().err
    return " ".join(err.split())


def test_an_unset_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DWR_TEST_ERP_PASSWORD", raising=False)
    monkeypatch.setenv("DWR_TEST_HOST", "127.0.0.1")
    path = _config(tmp_path, "postgresql+psycopg://erp:${DWR_TEST_ERP_PASSWORD}@"
                   "${DWR_TEST_HOST}:5432/erp", "sqlite:///crm.db")
    text = _validate(path, capsys)
    assert "DW007" in text and "${DWR_TEST_ERP_PASSWORD}" in text and "not set" in text
    assert "DWR_TEST_HOST" not in text  # that one is set
    with pytest.raises(ConfigError) as info:
        Link.open(path)
    assert info.value.code == "DW007" and "environments.erp.url" in info.value.detail


@pytest.mark.parametrize("kind", only("postgresql", "mariadb",
                                      why="how each server's test URL is made wrong"))
def test_refused_credentials_say_credentials(kind: str, tmp_path: Path,
                                             make_backend: BackendFactory,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    good = make_backend(kind, "dualwrite_test_a").url
    # PostgreSQL here trusts loopback (any password): a role that does not exist is refused
    bad = good.replace("postgres@", "dwr_no_such_role@") if kind == "postgresql" else \
        good.replace("root@", "root:not-the-password@")
    assert bad != good
    text = _validate(_config(tmp_path, bad, "sqlite:///crm.db"), capsys)
    assert "refused the credentials" in text and "user name or password" in text
    assert "table and column names" not in text and "retries" not in text.replace(
        "does not retry", "")
    assert "not-the-password" not in text  # the password is never shown


@pytest.mark.parametrize("kind", backends(needs=("server",)))
def test_an_unknown_database_says_so_and_that_it_is_not_retried(
        kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = database_url(kind, "dualwrite_test_a").rsplit("/", 1)[0] + "/dwr_no_such_database"
    path = _config(tmp_path, "sqlite:///erp.db", url)
    text = _validate(path, capsys)
    assert "database 'dwr_no_such_database' does not exist" in text
    assert "CREATE DATABASE dwr_no_such_database" in text
    assert "dualwrite retries" not in text and "does not retry" in text
    with Link.open(path) as link, pytest.raises(TerminalConnectorError):
        link.validate(files=True)


def test_every_config_problem_is_listed_with_its_line(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    path = tmp_path / "dualwrite.yaml"
    path.write_text("environments:\n  erp: {url: 'sqlite:///a.db', colour: red}\n"
                    "  crm: {url: 'sqlite:///b.db'}\nlink: {left: erp, right: crm}\n"
                    "sync: {batch_size: 0}\nbogus: 1\n")
    text = _validate(path, capsys)
    assert f"{path}:2: DW004" in text
    assert "environments.erp.colour: Extra inputs are not permitted (line 2)" in text
    assert "sync.batch_size" in text and "(line 5)" in text and "bogus" in text \
        and "(line 6)" in text
