"""Which pairs of columns MariaDB's set-based capture path takes (``reads_log_text``), and on
which servers: decided without a database. What it writes is checked against the row path by
tests/engine/test_capture_bulk.py, test_capture_realistic.py and the type matrix."""

from __future__ import annotations

from typing import Any

import pytest

from dualwrite.connectors.base import JsonValue
from dualwrite.connectors.mariadb import MySqlConnector
from dualwrite.connectors.mariadb.connector import _json_table_server
from dualwrite.connectors.mariadb.json_apply import MAX_PAIRS, small_mappings
from dualwrite.model.conversion import Options, plan
from dualwrite.model.schema import INF, NAN, NEG_INF, TEMPORAL_SPECIALS, Column, Facets, Kind


def _pg(kind: Kind, **facets: Any) -> Column:
    return Column("v", kind, facets=Facets(database="PostgreSQL", **facets))


def _my(kind: Kind, **facets: Any) -> Column:
    return Column("v", kind, facets=Facets(database="MariaDB", **facets))


CONNECTOR = MySqlConnector("crm", "mysql+pymysql://root@127.0.0.1:3306/none")
NUMERIC = frozenset({NAN, INF, NEG_INF})


@pytest.mark.parametrize(("source", "target", "taken"), [
    # a zone offset put in UTC by the statement; infinity left to the row path
    (_pg(Kind.DATETIME, time_zone=True, fraction=6, specials=TEMPORAL_SPECIALS),
     _my(Kind.DATETIME, fraction=6), True),
    (_pg(Kind.DATETIME, fraction=6, specials=TEMPORAL_SPECIALS),
     _my(Kind.DATETIME, fraction=6), True),
    (_pg(Kind.DATE, specials=TEMPORAL_SPECIALS), _my(Kind.DATE), True),
    # MariaDB would round the fraction: the row path refuses it
    (_pg(Kind.DATETIME, time_zone=True, fraction=6, specials=TEMPORAL_SPECIALS),
     _my(Kind.DATETIME, fraction=0), False),
    # NaN left to the row path; the scale fits
    (_pg(Kind.DECIMAL, precision=12, scale=2, specials=NUMERIC),
     _my(Kind.DECIMAL, precision=12, scale=2), True),
    # MariaDB would round 1.235 to 1.24: the row path refuses it
    (_pg(Kind.DECIMAL, precision=12, scale=4, specials=NUMERIC),
     _my(Kind.DECIMAL, precision=12, scale=2), False),
    (_pg(Kind.DECIMAL, specials=NUMERIC), _my(Kind.DECIMAL, precision=12, scale=2), False),
    # money is logged as display text
    (_pg(Kind.DECIMAL, precision=19, scale=2, money=True),
     _my(Kind.DECIMAL, precision=19, scale=2), False),
    # -0.0 and the float specials: not guarded here
    (_pg(Kind.FLOAT, precision=53, specials=NUMERIC), _my(Kind.FLOAT, precision=53), False),
    (_pg(Kind.INTEGER, precision=32), _my(Kind.INTEGER, precision=32), True),
])
def test_the_pairs_mariadb_reads_from_the_log(source: Column, target: Column,
                                              taken: bool) -> None:
    assert CONNECTOR.reads_log_text(plan(source, target)) is taken


def test_specials_written_as_null_keep_the_row_path() -> None:
    """With `specials: null` the row builders write NULL for infinity; the statement would
    leave the row out instead: not this path."""
    p = plan(_pg(Kind.DATE, specials=TEMPORAL_SPECIALS), _my(Kind.DATE),
             Options(specials_to_null=True))
    assert not CONNECTOR.reads_log_text(p)


@pytest.mark.parametrize(("version", "taken"), [
    ("10.11.19-MariaDB-0+deb12u1", True), ("11.4.2-MariaDB", True),
    ("5.5.5-10.6.1-MariaDB", True), ("10.5.2-MariaDB", False), ("8.0.36", False)])
def test_only_mariadb_10_6_or_later_takes_the_set_based_path(version: str, taken: bool
                                                             ) -> None:
    class Server:
        def get_server_info(self) -> str:
            return version

    assert _json_table_server(Server()) is taken


def test_a_large_mapping_takes_the_row_path() -> None:
    """A mapping of more pairs than MAX_PAIRS (a source lookup's many ids) would be joined in
    a nested loop: the statements decline (None, nothing written) before reaching the
    database."""
    pairs = [[(str(i), i) for i in range(MAX_PAIRS + 1)]]
    src = [JsonValue("mapped", source="grp", mapping=0)]
    assert CONNECTOR._json_insert(None, None, ["v"], src, ["{}"], ["v"], pairs) is None
    assert CONNECTOR._json_update_if(None, None, ["id"], ["v"], ["id"], src, ["{}"], ["{}"],
                                     pairs) is None
    assert small_mappings([[(str(i), i) for i in range(MAX_PAIRS)]])
