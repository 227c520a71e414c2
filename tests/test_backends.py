"""The test backends' registry (dualwrite.testing.backends): what tests choose by."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

import dualwrite
from dualwrite.connectors import connect
from dualwrite.connectors.base import Capabilities
from dualwrite.connectors.memory import MemoryConnector
from dualwrite.connectors.sql import SqlConnector
from dualwrite.model.schema import Column, Kind, TableSchema
from dualwrite.testing.backends import NEEDS, REGISTRY, backends, only, pair_id, pairs, spec

from conftest import BackendFactory

SRC = Path(dualwrite.__file__).resolve().parent


@pytest.mark.parametrize("kind", backends())
def test_each_backend_makes_a_database_its_connector_class_opens(
        kind: str, make_backend: BackendFactory) -> None:
    b = make_backend(kind, "dualwrite_test_a")
    assert f"{type(b.connector).__module__}:{type(b.connector).__name__}" == spec(kind).connector
    assert spec(kind).capabilities == type(b.connector).capabilities
    b.connector.clear_link()  # the database is there and answers
    assert b.connector.get_link() is None
    other = connect("again", b.url)
    try:
        assert type(other) is type(b.connector)
    finally:
        other.close()


def test_pairs_have_what_they_need_and_are_each_listed_once() -> None:
    for needs in [(), ("sql",), ("capture",), ("two_phase", "capture"), ("bulk",)]:
        for same in ("reference", "all", "none"):
            for both_ways in (False, True):
                got = pairs(needs=needs, same=same, both_ways=both_ways)
                assert len(got) == len(set(got))
                for left, right in got:
                    assert all(spec(left).has(n) and spec(right).has(n) for n in needs)
                    # two kinds are linked only where both can commit across databases
                    assert left == right or (spec(left).pairs_across and
                                             spec(right).pairs_across)
                # every backend with the needs is in some pair
                assert {k for p in got for k in p} == set(backends(needs=needs))
    assert [pair_id(p) for p in pairs(right=("insert_resolving",), both_ways=True)
            if "sqlite" not in p and "memory" not in p] == [
        pair_id(p) for p in pairs(needs=("server",), right=("insert_resolving",),
                                  both_ways=True)]


def test_unknown_needs_and_names_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown needs.*two_phase"):
        backends(needs=("twophase",))
    with pytest.raises(ValueError, match="same="):
        pairs(same="some")
    with pytest.raises(KeyError, match=r"no test backend 'oracle'.*registered are"):
        only("oracle", why="its own SQL")
    with pytest.raises(ValueError, match="say why"):
        only("mariadb", why="")


def test_needs_are_the_capabilities_and_the_traits() -> None:
    assert {f.name for f in fields(Capabilities)} <= NEEDS
    for s in REGISTRY.values():
        assert s.traits <= NEEDS


def test_every_capability_is_read_somewhere() -> None:
    """A capability flag nothing reads is a promise nothing keeps: remove it."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in SRC.rglob("*.py"))
    unread = [f.name for f in fields(Capabilities)
              if not re.search(rf"\.{f.name}\b", text)]
    assert unread == []


@pytest.mark.parametrize("kind", backends(needs=("sql",)))
def test_drop_removes_a_test_database_and_url_makes_it_anew(kind: str, tmp_path: Path) -> None:
    s = spec(kind)
    c = connect("dropme", s.url("dualwrite_test_dropme", tmp_path))
    try:
        assert isinstance(c, SqlConnector)
        c.execute("CREATE TABLE kept_until_dropped (id INTEGER PRIMARY KEY)")
        assert "kept_until_dropped" in c.tables()
    finally:
        c.close()
    s.drop("dualwrite_test_dropme", tmp_path)
    c = connect("dropme", s.url("dualwrite_test_dropme", tmp_path))
    try:
        assert c.tables() == []
    finally:
        c.close()
    s.drop("dualwrite_test_dropme", tmp_path)


def test_dropping_a_memory_database_forgets_its_tables(tmp_path: Path) -> None:
    s = spec("memory")
    c = connect("dropme", s.url("dualwrite_test_dropme", tmp_path))
    assert isinstance(c, MemoryConnector)
    c.create_table(TableSchema("t", {"id": Column("id", Kind.INTEGER, nullable=False,
                                                  primary_key=True)}, ("id",)))
    assert connect("again", s.url("dualwrite_test_dropme", tmp_path)).tables() == ["t"]
    s.drop("dualwrite_test_dropme", tmp_path)
    assert connect("again", s.url("dualwrite_test_dropme", tmp_path)).tables() == []
