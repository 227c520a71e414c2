"""`dualwrite validate`: every problem at once, each with a stable code, file, line and hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualwrite.engine.link import Link
from dualwrite.errors import ConfigError, ValidationFailed

from conftest import BackendFactory
from sync_fixtures import make_pair

BROKEN = """name: broken
left: Customers
right: accounts
key: {left: [ACCOUNT], right: [accountnumber]}
depends_on: [customers, nothere]
filter: {left: "NAME eq", right: "nosuchcol eq 1"}
fields:
  - ACCOUNT > accountnumber
  - NAMEX = name
  - STATUS >< onhold: {values: {"No": 0, "Invoice": 0}}
  - CREATED = telephone1
  - GROUPID = groupref.nosuchkey
  - PHONE = typecode.code
  - CREDIT = creditlimit
  - PARTYTYPE < creditlimit
"""

LOOP_A = """name: loop_a
left: Groups
right: groups
key: {left: [GROUPID], right: [groupcode]}
depends_on: [loop_b]
fields:
  - GROUPID = groupcode
"""

LOOP_B = """name: loop_b
left: Groups
right: nosuchtable
key: {left: [GROUPID], right: [groupcode]}
depends_on: [loop_a]
fields:
  - GROUPID = groupcode
"""


@pytest.fixture
def config(make_backend: BackendFactory, tmp_path: Path) -> Path:
    pair = make_pair(make_backend, tmp_path, "sqlite", "sqlite")
    (tmp_path / "maps" / "broken.yaml").write_text(BROKEN)
    (tmp_path / "maps" / "loop_a.yaml").write_text(LOOP_A)
    (tmp_path / "maps" / "loop_b.yaml").write_text(LOOP_B)
    return pair.config


def test_all_problems_are_reported_at_once_with_codes_and_lines(config: Path) -> None:
    with Link.open(config) as link:
        bound, issues = link.validate()
    assert {b.name for b in bound} == {"groups", "customers", "loop_a"}
    by_code: dict[str, list[str]] = {}
    for i in issues:
        by_code.setdefault(i.code, []).append(f"{Path(i.file or '').name}:{i.line} {i.message}")
        assert i.hint and i.map
    text = "\n".join(str(i) for i in issues)
    assert "broken.yaml:9: DW102" in text and "'NAMEX'" in text  # unknown column, its line
    assert "loop_b.yaml:3: DW101" in text and "'nosuchtable'" in text  # unknown table
    assert any("ACCOUNT ↔ accountnumber is not mapped both ways" in m for m in by_code["DW103"])
    assert any("not one-to-one" in m and "broken.yaml:10" in m for m in by_code["DW104"])
    assert any("'telephone1' (string) cannot hold date" in m or "cannot hold" in m
               for m in by_code["DW106"])
    assert any("no column 'nosuchkey'" in m for m in by_code["DW107"])
    assert any("has no foreign key" in m and "broken.yaml:13" in m for m in by_code["DW107"])
    assert any("loop_a -> loop_b -> loop_a" in m or "loop_b -> loop_a -> loop_b" in m
               for m in by_code["DW108"])
    assert any("broken.yaml:6" in m for m in by_code["DW109"])  # left filter does not parse
    assert any("'nothere'" in m for m in by_code["DW110"])
    assert "DW105" in by_code  # accounts.name is required, nothing fills it from `broken`
    assert any("NAME" in m or "name" in m for m in by_code["DW105"])


def test_bound_maps_refuses_to_run_with_issues(config: Path) -> None:
    with Link.open(config) as link, pytest.raises(ValidationFailed) as info:
        link.sync_initial()
    assert len(info.value.issues) >= 10
    assert "dualwrite validate" in str(info.value)


def test_type_and_required_column_checks(make_backend: BackendFactory, tmp_path: Path) -> None:
    pair = make_pair(make_backend, tmp_path, "sqlite", "sqlite")
    (tmp_path / "maps" / "customers.yaml").write_text(
        (tmp_path / "maps" / "customers.yaml").read_text().replace("  - NAME = name\n", ""))
    with Link.open(pair.config) as link:
        _, issues = link.validate()
    [required] = [i for i in issues if i.code == "DW105"]
    assert "accounts.name is required" in required.message
    assert "none >> name" in required.hint


@pytest.mark.parametrize("text, message", [
    ("name: x\nleft: A\n", "missing `right`"),
    ("name: x\nleft: A\nright: b\nkey: {left: [A]}\nfields: [A = b]\n", "exactly `left` and"),
    ("name: x\nleft: A\nright: b\nkey: {left: [A], right: [b]}\nfields: [A => b]\n",
     "does not parse"),
    ("name: x\nleft: A\nright: b\nkey: {left: [A], right: [b]}\nfields:\n  - none >> b\n",
     "gives no default"),
    ("name: x\nleft: A\nright: b\nkey: {left: [A], right: [b]}\nfields:\n  - A = b\nfoo: 1\n",
     "unknown key 'foo'"),
    ("name: x\nleft: A\nright: b\nkey: {left: [A], right: [b]}\nfields:\n  - A = b\n"
     "  - A = b: {values: {x: 1}}\n", "has a value map but uses '='"),
    ("name: [\n", "not valid YAML"),
])
def test_map_syntax_errors_name_the_file_and_line(tmp_path: Path, text: str,
                                                   message: str) -> None:
    from dualwrite.engine.config import load_map_file

    f = tmp_path / "m.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_map_file(f)
    assert message in str(info.value)
    assert str(f) in str(info.value) and info.value.hint


def test_config_errors_say_what_to_fix(tmp_path: Path) -> None:
    from dualwrite.engine.config import load_config

    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "dualwrite.yaml"
    bad.write_text("environments: {erp: {url: 'sqlite:///a.db'}}\nlink: {left: erp, right: crm}\n"
                   "maps: []\n")
    with pytest.raises(ConfigError, match=r"link\.right names environment 'crm'"):
        load_config(bad)
    bad.write_text("environments: {erp: {url: 'sqlite:///a.db'}, crm: {url: 'sqlite:///b.db'}}\n"
                   "link: {left: erp, right: crm}\nmaps: ['maps/*.yaml']\n")
    with pytest.raises(ConfigError, match="matches no file"):
        load_config(bad)
