"""The connector compliance suite (dualwrite.testing) run against the memory fake, SQLite,
PostgreSQL and MariaDB, and the tests of what only PostgreSQL and MariaDB have."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from dualwrite.connectors import connect
from dualwrite.connectors.memory import MemoryConnector
from dualwrite.model.schema import Kind
from dualwrite.testing.backends import only
from dualwrite.testing.connector_suite import *  # noqa: F403 - the suite's tests

from conftest import Backend, BackendFactory


@pytest.fixture
def harness(backend: Backend) -> Iterator[Backend]:
    """The suite's backend: each registered backend in turn (dualwrite.testing.backends:
    memory, SQLite, PostgreSQL, MariaDB); the memory database with its change capture on."""
    if backend.kind != "memory":
        yield backend
        return
    url = backend.url + "?capture=on"
    captured = Backend("memory", url, connect("suite", url))
    yield captured
    MemoryConnector.reset(url)


@pytest.mark.parametrize("kind", only("postgresql", "mariadb",
                                      why="each server's own non-binary collation"))
def test_non_binary_collation_is_still_read_in_code_point_order(
        make_backend: BackendFactory, kind: str) -> None:
    b = make_backend(kind, "dualwrite_test_a")
    md = sa.MetaData()
    coll = "und-x-icu" if kind == "postgresql" else "utf8mb4_general_ci"
    sa.Table("suite_coll", md, sa.Column("code", sa.String(20, collation=coll), primary_key=True),
             sa.Column("n", sa.Integer))
    b.create(md)
    b.insert("suite_coll", [{"code": n, "n": i} for i, n in enumerate(
        ["b", "C", "a", "é", "Z", "ab"])])
    keys = [r[0] for batch in b.connector.read("suite_coll", ["code"], key=["code"],
                                               batch_size=2) for r in batch]
    assert keys == sorted(keys) == ["C", "Z", "a", "ab", "b", "é"]
    after = [r[0] for batch in b.connector.read("suite_coll", ["code"], key=["code"],
                                                after=("Z",)) for r in batch]
    assert after == ["a", "ab", "b", "é"]


def test_catalog_json_is_read_the_drivers_way_and_documents_as_text(
        make_backend: BackendFactory) -> None:
    """SQLAlchemy reads a column's collation and identity options as JSON objects its
    catalog queries build, while dualwrite reads JSON documents as text: describing a table
    with both must work, and reading its JSON column afterwards must still give the text."""
    b = make_backend("postgresql", "dualwrite_test_a")
    md = sa.MetaData()
    sa.Table("suite_ident", md,
             sa.Column("id", sa.Integer, sa.Identity(always=True), primary_key=True),
             sa.Column("code", sa.String(20, collation="C")),
             sa.Column("doc", sa.JSON))
    b.create(md)
    schema = b.connector.describe("suite_ident")
    assert schema.primary_key == ("id",) and schema.columns["id"].has_default
    assert schema.columns["doc"].kind is Kind.JSON
    with b.connector.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO suite_ident (code, doc) VALUES ('a', 'null')")
    rows = [r for batch in b.connector.read("suite_ident", ["doc"], key=["id"]) for r in batch]
    # JSON null is a document, not SQL NULL: the text survives the catalog reads
    assert rows == [("null",)]
