"""Live creates into PostgreSQL and MariaDB find simple lookups inside the mirrored INSERT: the
same rows, errors and guarantees as looking them up first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from dualwrite.connectors.base import FoldedLookup
from dualwrite.connectors.mariadb.connector import MySqlConnector
from dualwrite.connectors.postgresql import PostgresConnector
from dualwrite.connectors.sql import SqlConnector
from dualwrite.engine.diff import Folded
from dualwrite.engine.link import Link
from dualwrite.errors import RowError
from dualwrite.model.maps import Side
from dualwrite.testing.backends import pair_id, pairs

from conftest import Backend, BackendFactory, guid_default

GROUPS_MAP = """name: groups
left: FGroups
right: fgroups
key: {left: [GROUPID], right: [groupcode]}
fields:
  - GROUPID = groupcode
"""

CUSTOMERS_MAP = """name: customers
left: FCustomers
right: faccounts
key: {left: [ACCOUNT], right: [accountnumber]}
depends_on: [groups]
fields:
  - ACCOUNT = accountnumber
  - NAME = name
  - STATUS >< onhold: {values: {"No": 0, "Invoice": 1}}
  - GROUPID = groupref.groupcode
  - none >> typecode: {default: 3}
"""

#: the left side is any live-sync backend; the lookups are folded into the inserts of a
#: backend with insert_resolving (PostgreSQL, MariaDB)
PAIRS = pairs(needs=("server",), right=("insert_resolving",), both_ways=True)


def _left(dialect: str) -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("FGroups", md, sa.Column("GROUPID", sa.String(10), primary_key=True))
    sa.Table("FCustomers", md,
             sa.Column("ACCOUNT", sa.String(20), primary_key=True),
             sa.Column("NAME", sa.String(100), nullable=False),
             sa.Column("STATUS", sa.String(10)),
             sa.Column("GROUPID", sa.String(10)))
    return md


def _right(dialect: str, code: sa.types.TypeEngine[Any] | None = None) -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("fgroups", md,
             sa.Column("groupid", sa.String(36), primary_key=True,
                       server_default=guid_default(dialect)),
             sa.Column("groupcode", code if code is not None else sa.String(10),
                       nullable=False, unique=True))
    sa.Table("faccounts", md,
             sa.Column("accountid", sa.String(36), primary_key=True,
                       server_default=guid_default(dialect)),
             sa.Column("accountnumber", sa.String(20), nullable=False, unique=True),
             sa.Column("name", sa.String(100), nullable=False),
             sa.Column("onhold", sa.Integer),
             sa.Column("groupref", sa.String(36), sa.ForeignKey("fgroups.groupid")),
             sa.Column("typecode", sa.Integer))
    return md


@pytest.fixture(params=PAIRS, ids=pair_id)
def linked(request: pytest.FixtureRequest, make_backend: BackendFactory, tmp_path: Path
           ) -> tuple[Backend, Backend, Path]:
    left_kind, right_kind = request.param
    return _linked(make_backend, tmp_path, left_kind, right_kind)


def _linked(make_backend: BackendFactory, tmp_path: Path, left_kind: str, right_kind: str,
            code: sa.types.TypeEngine[Any] | None = None) -> tuple[Backend, Backend, Path]:
    erp = make_backend(left_kind, "dualwrite_test_a")
    crm = make_backend(right_kind, "dualwrite_test_b")
    for b in (erp, crm):
        b.connector.clear_link()
    crm.create(_right(crm.dialect, code))
    erp.create(_left(erp.dialect))
    erp.insert("FGroups", [{"GROUPID": "G1"}, {"GROUPID": "G2"}])
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "groups.yaml").write_text(GROUPS_MAP)
    (tmp_path / "maps" / "customers.yaml").write_text(CUSTOMERS_MAP)
    path = tmp_path / "dualwrite.yaml"
    path.write_text(yaml.safe_dump({
        "environments": {"erp": {"url": erp.url}, "crm": {"url": crm.url}},
        "link": {"left": "erp", "right": "crm"},
        "state": f"sqlite:///{tmp_path / 'state.db'}", "maps": ["maps/*.yaml"]}))
    with Link.open(path) as link:
        link.start_maps()
    return erp, crm, path


class _Abort(Exception):
    pass


def _accounts(crm: Backend) -> dict[str, dict[str, Any]]:
    return {r["accountnumber"]: r for r in crm.rows("faccounts", ["accountnumber"])}


def _group_ids(crm: Backend) -> dict[str, str]:
    return {r["groupcode"]: r["groupid"] for r in crm.rows("fgroups", ["groupcode"])}


@pytest.fixture
def folded(monkeypatch: pytest.MonkeyPatch) -> list[bool | None]:
    """What each folded INSERT answered (True inserted, False a lookup found nothing): the
    tests below must go through the folded path, not only end as it would."""
    answers: list[bool | None] = []

    def recording(plain: Any) -> Any:
        def record(self: SqlConnector, *args: Any) -> bool | None:
            answers.append(plain(self, *args))
            return answers[-1]
        return record

    for cls in (PostgresConnector, MySqlConnector):
        monkeypatch.setattr(cls, "_insert_resolving", recording(cls._insert_resolving))
    return answers


def test_the_lookup_is_folded_and_finds_the_related_row(
        linked: tuple[Backend, Backend, Path], folded: list[bool | None]) -> None:
    _erp, crm, path = linked
    with Link.open(path) as link:
        differ = link.differ("customers")
        # the case this path exists for: the map's lookup is folded into the insert
        assert set(differ.foldable(Side.RIGHT)) == {3}
        with link.transaction(principal="alice") as tx:
            tx.create("erp", "FCustomers", {"ACCOUNT": "C1", "NAME": "One", "STATUS": "No",
                                            "GROUPID": "G2"})
            tx.create("erp", "FCustomers", {"ACCOUNT": "C2", "NAME": "Two",
                                            "STATUS": "Invoice", "GROUPID": None})
        got, ids = _accounts(crm), _group_ids(crm)
        assert got["C1"]["groupref"] == ids["G2"] and got["C1"]["onhold"] == 0
        assert got["C1"]["typecode"] == 3 and got["C1"]["name"] == "One"
        assert got["C2"]["groupref"] is None and got["C2"]["onhold"] == 1
        assert folded == [True]  # C2 has no group: nothing to find, the plain insert
        ops = {(a["environment"], a["table_name"], a["operation"], a["map"])
               for a in link.state.audit()}
        assert ("crm", "faccounts", "create", "customers") in ops
        assert all(v.ok for v in link.verify())


def test_a_related_row_created_earlier_in_the_transaction_is_found(
        linked: tuple[Backend, Backend, Path], folded: list[bool | None]) -> None:
    _erp, crm, path = linked
    with Link.open(path) as link:
        with link.transaction() as tx:
            tx.create("erp", "FGroups", {"GROUPID": "G9"})
            tx.create("erp", "FCustomers", {"ACCOUNT": "C9", "NAME": "Nine", "STATUS": "No",
                                            "GROUPID": "G9"})
        assert _accounts(crm)["C9"]["groupref"] == _group_ids(crm)["G9"]
        assert folded == [True]


def test_an_unresolved_lookup_names_the_value_and_leaves_both_sides_untouched(
        linked: tuple[Backend, Backend, Path], folded: list[bool | None]) -> None:
    erp, crm, path = linked
    with Link.open(path) as link:
        with link.transaction() as tx:
            tx.create("erp", "FCustomers", {"ACCOUNT": "C1", "NAME": "One", "GROUPID": "G1"})
        before = (erp.rows("FCustomers", ["ACCOUNT"]), crm.rows("faccounts", ["accountnumber"]))
        with pytest.raises(RowError) as info, link.transaction() as tx:
            tx.update("erp", "FCustomers", {"ACCOUNT": "C1"}, {"NAME": "will not stay"})
            tx.create("erp", "FCustomers", {"ACCOUNT": "C5", "NAME": "Five",
                                            "GROUPID": "G404"})
        err = info.value
        assert err.map == "customers" and err.side == "right"
        assert err.field == "groupref.groupcode" and err.value == "G404"
        assert "does not resolve" in err.reason
        assert folded == [True, False]  # C1, then C5 through the folded path
        assert (erp.rows("FCustomers", ["ACCOUNT"]),
                crm.rows("faccounts", ["accountnumber"])) == before


def test_within_a_transaction_a_failed_folded_insert_writes_nothing(
        linked: tuple[Backend, Backend, Path]) -> None:
    """The INSERT that finds no related row inserts nothing: the session is as it was, so
    the ordinary path that names the problem runs on an intact transaction."""
    _erp, crm, path = linked
    with Link.open(path) as link, pytest.raises(_Abort), link.transaction() as tx:
        session = tx.sessions[Side.RIGHT]
        done = session.insert_resolving(
            "faccounts", ["accountnumber", "name", "groupref"], ("X1", "x", Folded(2)),
            [FoldedLookup(2, "fgroups", "groupcode", "groupid", "G404")])
        assert done is False
        assert session.fetch("faccounts", ["accountnumber"], key=["accountnumber"],
                             keys=[("X1",)]) == []
        done = session.insert_resolving(
            "faccounts", ["accountnumber", "name", "groupref"], ("X2", "x", Folded(2)),
            [FoldedLookup(2, "fgroups", "groupcode", "groupid", "G1")])
        assert done is True
        assert session.fetch("faccounts", ["accountnumber"], key=["accountnumber"],
                             keys=[("X2",)]) == [("X2",)]
        raise _Abort  # the test wrote behind the map's back: write nothing
    assert _accounts(crm) == {}


def test_a_value_not_in_the_value_map_is_named_as_before(
        linked: tuple[Backend, Backend, Path]) -> None:
    _erp, crm, path = linked
    with Link.open(path) as link:
        with pytest.raises(RowError) as info, link.transaction() as tx:
            tx.create("erp", "FCustomers", {"ACCOUNT": "C7", "NAME": "n",
                                            "GROUPID": "G1", "STATUS": "Later"})
        assert info.value.field == "STATUS" and "value map" in info.value.reason
        assert _accounts(crm) == {}


def test_a_padded_natural_key_is_looked_up_first_as_before(
        make_backend: BackendFactory, tmp_path: Path, folded: list[bool | None]) -> None:
    """CHAR(n) compares without its padding in SQL but not as the lookup's text: such a key
    takes the ordinary path, whose answers stay what they were."""
    _erp, crm, path = _linked(make_backend, tmp_path, "postgresql", "postgresql",
                              sa.CHAR(10))
    with Link.open(path) as link:
        assert link.differ("customers").foldable(Side.RIGHT) == {}
        with pytest.raises(RowError) as info, link.transaction() as tx:
            tx.create("erp", "FCustomers", {"ACCOUNT": "P1", "NAME": "One", "GROUPID": "G1"})
        assert info.value.field == "groupref.groupcode" and info.value.value == "G1"
        assert folded == [] and _accounts(crm) == {}


def test_mariadb_keys_that_match_only_by_collation_take_the_ordinary_path(
        make_backend: BackendFactory, tmp_path: Path, folded: list[bool | None]) -> None:
    """MariaDB's `=` ignores case and trailing spaces; the ordinary lookup keeps the row whose
    key reads back as the value. The folded INSERT must not find what the ordinary lookup
    would not: it finds nothing, and the ordinary path answers (here: no such group)."""
    _erp, crm, path = _linked(make_backend, tmp_path, "postgresql", "mariadb")
    with Link.open(path) as link:
        assert set(link.differ("customers").foldable(Side.RIGHT)) == {3}
        for value in ("g1", "G1 "):
            with pytest.raises(RowError) as info, link.transaction() as tx:
                tx.create("erp", "FCustomers", {"ACCOUNT": "K1", "NAME": "One",
                                                "GROUPID": value})
            assert info.value.field == "groupref.groupcode" and info.value.value == value
        assert folded == [False, False] and _accounts(crm) == {}
        with link.transaction() as tx:  # the exact key is found by the folded INSERT
            tx.create("erp", "FCustomers", {"ACCOUNT": "K2", "NAME": "Two", "GROUPID": "G1"})
        assert folded[-1] is True
        assert _accounts(crm)["K2"]["groupref"] == _group_ids(crm)["G1"]
