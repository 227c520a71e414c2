"""`dualwrite validate` says everything at once: structural problems of every map file (unknown
keys, field lines that do not parse) beside the schema problems of the others, each with
file:line; did-you-mean hints that see through publisher prefixes; column lists never cut
short. Issue 10, section 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from dualwrite.cli import main
from dualwrite.engine.config import load_config
from dualwrite.engine.link import Link
from dualwrite.errors import MapSyntaxError, ValidationFailed
from dualwrite.model.binding import close_names

from conftest import BackendFactory
from sync_fixtures import make_pair

#: two field lines that do not parse, an unknown key and an unknown option: all four reported
BROKEN_SYNTAX = """name: broken_syntax
left: Groups
right: groups
key: {left: [GROUPID], right: [groupcode]}
colour: blue
fields:
  - GROUPID = groupcode
  - DESCRIPTION => description
  - none >> description
  - GROUPID = groupcode: {valuez: {a: 1}}
"""

#: parses, but names columns that do not exist (DW102)
BAD_COLUMNS = """name: bad_columns
left: Customers
right: accounts
key: {left: [ACCOUNT], right: [accountnumber]}
company: {left: dataAreaId, right: company}
fields:
  - ACCOUNT = accountnumber
  - NAME = msdyn_name
  - CREDITLIMIT = creditlimit
"""


@pytest.fixture
def config(make_backend: BackendFactory, tmp_path: Path) -> Path:
    pair = make_pair(make_backend, tmp_path, "sqlite", "sqlite")
    (tmp_path / "maps" / "a_broken.yaml").write_text(BROKEN_SYNTAX)
    (tmp_path / "maps" / "b_columns.yaml").write_text(
        BAD_COLUMNS.replace("fields:", "depends_on: [broken_syntax]\nfields:"))
    (tmp_path / "maps" / "c_yaml.yaml").write_text("name: [\n")
    return pair.config


def test_a_map_that_does_not_parse_hides_nothing_else(config: Path) -> None:
    with Link.open(config, lenient=True) as link:
        bound, issues = link.validate(files=True)
    where = [(Path(i.file or "").name, i.line, i.code) for i in issues]
    # every problem of the file that does not parse, each at its line
    assert ("a_broken.yaml", 5, "DW001") in where  # unknown key colour
    assert ("a_broken.yaml", 8, "DW001") in where  # `=>` does not parse
    assert ("a_broken.yaml", 9, "DW001") in where  # `none` without a default
    assert ("a_broken.yaml", 10, "DW001") in where  # unknown option valuez
    assert ("c_yaml.yaml", 1, "DW002") in where or ("c_yaml.yaml", 2, "DW002") in where
    # ... and the schema problems of the file that parses, beside them
    assert ("b_columns.yaml", 9, "DW102") in where
    assert ("b_columns.yaml", 10, "DW102") in where
    assert {b.name for b in bound} == {"groups", "customers"}
    # the map that does not parse is known by name: depending on it is not "unknown"
    assert all(i.map == "broken_syntax" for i in issues
               if i.file and i.file.endswith("a_broken.yaml"))
    assert not [i for i in issues if i.code == "DW110"]
    text = "\n".join(str(i) for i in issues)
    assert "unknown key 'colour'" in text and "valuez" in text


def test_the_cli_lists_them_all_and_exits_1(config: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(config), "validate", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    codes = sorted(i["code"] for i in out["issues"])
    assert codes.count("DW001") == 4 and codes.count("DW102") == 2 and "DW002" in codes
    assert main(["-c", str(config), "validate"]) == 1
    text = capsys.readouterr().out
    assert "a_broken.yaml:8: DW001" in text and "b_columns.yaml:9: DW102" in text
    assert "problem(s) in 5 map(s)" in text


def test_other_commands_refuse_with_every_problem_listed(config: Path) -> None:
    with pytest.raises(ValidationFailed) as info:
        load_config(config)
    text = str(info.value)
    assert "a_broken.yaml:8: DW001" in text and "a_broken.yaml:10: DW001" in text
    assert "c_yaml.yaml" in text
    # one file with one problem: that problem, as it is
    (config.parent / "maps" / "a_broken.yaml").unlink()
    (config.parent / "maps" / "c_yaml.yaml").unlink()
    (config.parent / "maps" / "d.yaml").write_text(BAD_COLUMNS.replace(
        "name: bad_columns", "name: d").replace("  - ACCOUNT = accountnumber",
                                                 "  - ACCOUNT == accountnumber"))
    with pytest.raises(MapSyntaxError, match="does not parse") as one:
        load_config(config)
    assert one.value.line == 7


def test_did_you_mean_sees_through_prefixes_and_lists_every_column(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    assert close_names("msdyn_onholdstatus", ["onholdstatus", "name", "statecode"]) == [
        "onholdstatus"]
    assert close_names("ONHOLDSTATUS", ["msdyn_onholdstatus", "name"]) == [
        "msdyn_onholdstatus"]
    erp = make_backend("sqlite", "dualwrite_test_a")
    crm = make_backend("sqlite", "dualwrite_test_b")
    md = sa.MetaData()
    sa.Table("Wide", md, sa.Column("ID", sa.String(10), primary_key=True),
             sa.Column("ONHOLDSTATUS", sa.Integer),
             *[sa.Column(f"EXTRA{i:02d}", sa.String(5)) for i in range(14)])
    erp.create(md)
    md2 = sa.MetaData()
    sa.Table("wide", md2, sa.Column("id", sa.String(10), primary_key=True),
             sa.Column("msdyn_onholdstatus", sa.Integer),
             sa.Column("msdyn_onhold", sa.Integer),
             *[sa.Column(f"extra{i:02d}", sa.String(5)) for i in range(14)])
    crm.create(md2)
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "wide.yaml").write_text(
        "name: wide\nleft: Wide\nright: wide\nkey: {left: [ID], right: [id]}\nfields:\n"
        "  - ID = id\n  - ONHOLDSTATUS = onholdstatus\n  - EXTRA99 = extra00\n")
    (tmp_path / "dualwrite.yaml").write_text(
        f"environments: {{erp: {{url: '{erp.url}'}}, crm: {{url: '{crm.url}'}}}}\n"
        f"link: {{left: erp, right: crm}}\nstate: 'sqlite:///{tmp_path / 's.db'}'\n"
        "maps: ['maps/*.yaml']\n")
    with Link.open(tmp_path / "dualwrite.yaml") as link:
        _, issues = link.validate(files=True)
    hints = {i.message: i.hint for i in issues if i.code == "DW102"}
    onhold = next(h for m, h in hints.items() if "'onholdstatus'" in m)
    assert onhold.startswith("did you mean msdyn_onholdstatus or msdyn_onhold?")
    extra = next(h for m, h in hints.items() if "'EXTRA99'" in m)
    # every column of the table, the 16th too: nothing cut short
    assert "EXTRA13" in extra and "ONHOLDSTATUS" in extra


def test_key_collations_and_coded_values_without_a_value_map_are_warned(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    erp = make_backend("postgresql", "dualwrite_test_a")
    crm = make_backend("mariadb", "dualwrite_test_a")
    for b in (erp, crm):
        b.connector.clear_link()
    md = sa.MetaData()
    sa.Table("CustTable", md, sa.Column("ACCOUNTNUM", sa.String(20), primary_key=True),
             sa.Column("ONHOLDSTATUS", sa.String(20)), sa.Column("BLOCKED", sa.Boolean),
             sa.Column("NAME", sa.String(50)))
    erp.create(md)
    md2 = sa.MetaData()
    sa.Table("account", md2,
             # a case-insensitive key, as MariaDB makes by default
             sa.Column("accountnumber", sa.String(20, collation="utf8mb4_general_ci"),
                       primary_key=True),
             sa.Column("msdyn_onholdstatus", sa.Integer), sa.Column("blocked", sa.Integer),
             sa.Column("name", sa.String(50)))
    crm.create(md2)
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "accounts.yaml").write_text(
        "name: accounts\nleft: CustTable\nright: account\n"
        "key: {left: [ACCOUNTNUM], right: [accountnumber]}\nfields:\n"
        "  - ACCOUNTNUM = accountnumber\n"
        "  - ONHOLDSTATUS >< msdyn_onholdstatus\n"      # line 7: enum text vs option set
        "  - BLOCKED > blocked\n"                       # line 8: one-way, flag vs number
        "  - NAME >< name\n")                           # line 9: text both sides: fine
    config = tmp_path / "dualwrite.yaml"
    config.write_text(
        f"environments: {{erp: {{url: '{erp.url}'}}, crm: {{url: '{crm.url}'}}}}\n"
        f"link: {{left: erp, right: crm}}\nstate: 'sqlite:///{tmp_path / 's.db'}'\n"
        "maps: ['maps/*.yaml']\n")
    with Link.open(config) as link:
        bound, issues = link.validate(files=True)
    assert [b.name for b in bound] == ["accounts"]  # warnings: the map runs
    by_code = {}
    for i in issues:
        by_code.setdefault(i.code, []).append(i)
    [collation] = by_code["DW133"]
    assert collation.severity == "warning" and collation.line == 4
    assert "utf8mb4_general_ci" in collation.message and "c-00005" in collation.message
    assert "'accountnumber'" in collation.message and "utf8mb4_bin" in collation.hint
    coded = sorted(by_code["DW134"], key=lambda i: i.line or 0)
    assert [i.line for i in coded] == [7, 8]
    assert all(i.severity == "warning" for i in coded)
    assert "'ONHOLDSTATUS'" in coded[0].message and "values:" in coded[0].hint
    # with a value map, and a case-sensitive key, both warnings go
    (tmp_path / "maps" / "accounts.yaml").write_text(
        (tmp_path / "maps" / "accounts.yaml").read_text().replace(
            "  - ONHOLDSTATUS >< msdyn_onholdstatus\n",
            "  - ONHOLDSTATUS >< msdyn_onholdstatus: {values: {No: 0, All: 2}}\n").replace(
            "  - BLOCKED > blocked\n", "  - BLOCKED >> blocked: {values: {false: 0, true: 1}}\n"))
    crm.sql("ALTER TABLE account MODIFY accountnumber VARCHAR(20) COLLATE utf8mb4_bin")
    with Link.open(config) as link:
        _, issues = link.validate(files=True)
    assert not {i.code for i in issues} & {"DW133", "DW134"}
