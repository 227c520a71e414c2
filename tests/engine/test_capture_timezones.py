"""Timestamps between a column with a zone (PostgreSQL ``timestamptz``) and one without
(MariaDB ``DATETIME``): dualwrite takes a value without a zone as UTC, whatever zone the
application's session, the database or dualwrite's own sessions would otherwise use. The
PostgreSQL database here defaults to New York time and the application writes from a Paris
session; the instant must survive every way across."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from capture_fixtures import drain, fresh_tables, link_config
from dualwrite.engine.link import Link

from conftest import Backend, BackendFactory

MAP = """
name: events
left: events
right: events
key: {left: [id], right: [id]}
fields:
  - id = id
  - at = at
"""
UTC = dt.UTC


def _metadata() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("events", md,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("at", sa.DateTime(timezone=True).with_variant(
                 mysql.DATETIME(fsp=6), "mysql", "mariadb")))
    return md


@pytest.fixture
def sides(make_backend: BackendFactory) -> Iterator[tuple[Backend, Backend]]:
    pg = make_backend("postgresql", "dualwrite_test_a")
    my = make_backend("mariadb", "dualwrite_test_b")
    fresh_tables(_metadata(), pg, my)
    db = pg.url.rsplit("/", 1)[1]
    with pg.app().connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(sa.text(f'ALTER DATABASE "{db}" SET timezone = \'America/New_York\''))
    try:
        yield pg, my
    finally:
        with pg.app().connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(sa.text(f'ALTER DATABASE "{db}" RESET timezone'))


def _pg_at(pg: Backend, i: int) -> dt.datetime:
    with pg.app().connect() as c:
        return c.execute(sa.text("SELECT at FROM events WHERE id = :i"), {"i": i}).scalar_one()


def _my_at(my: Backend, i: int) -> dt.datetime:
    with my.app().connect() as c:
        return c.execute(sa.text("SELECT at FROM events WHERE id = :i"), {"i": i}).scalar_one()


def test_an_instant_survives_every_way_between_timestamptz_and_datetime(
        sides: tuple[Backend, Backend], tmp_path: Path) -> None:
    pg, my = sides
    noon = dt.datetime(2026, 11, 25, 12, 0, 0, 250000, tzinfo=UTC)
    with pg.app().begin() as c:  # before the start: the initial sync carries it
        c.execute(sa.text("INSERT INTO events VALUES (1, :t)"), {"t": noon})
    with Link.open(link_config(tmp_path, pg, my, {"events": MAP})) as link:
        link.start_maps()
        assert _my_at(my, 1) == noon.replace(tzinfo=None)  # initial sync: UTC, not New York

        # captured on PostgreSQL from a session in Paris (the log's JSON says +01:00)
        with pg.app().begin() as c:
            c.execute(sa.text("SET LOCAL timezone = 'Europe/Paris'"))
            c.execute(sa.text("INSERT INTO events VALUES (2, :t)"), {"t": noon})
        # captured on MariaDB: a DATETIME, no zone, taken as UTC
        with my.app().begin() as c:
            c.execute(sa.text("INSERT INTO events VALUES (3, '2026-11-25 15:30:00.5')"))
        drain(link.applier())
        assert _my_at(my, 2) == noon.replace(tzinfo=None)
        assert _pg_at(pg, 3) == dt.datetime(2026, 11, 25, 15, 30, 0, 500000, tzinfo=UTC)
        assert all(v.ok for v in link.verify())

        # a live write through dualwrite: the same instant on both sides
        with link.transaction() as tx:
            tx.create("erp", "events", {"id": 4, "at": noon})
        assert _my_at(my, 4) == noon.replace(tzinfo=None) and _pg_at(pg, 4) == noon
