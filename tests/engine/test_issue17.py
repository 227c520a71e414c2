"""Issue 17, case by case: each value that changed silently, stopped a whole table or the
applier, or was misjudged by validate or verify, reproduced as the issue reports it.

The values are written and read back as SQL text, by the databases themselves, so these tests
say the same thing whatever Python types dualwrite uses (they were written first and failed on
the code before the type system). The type matrix (test_type_matrix.py) covers every kind and
path; these pin the reported cases down.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from capture_fixtures import drain, link_config
from dualwrite.engine.link import Link

from conftest import Backend, BackendFactory

TABLE = "t17"
#: backends a test made t17 on: dropped after it (other tests reflect these databases, and
#: SQLAlchemy warns about a type it does not know, such as MariaDB's INET6)
_MADE: list[Backend] = []


@pytest.fixture(autouse=True)
def _drop_tables(make_backend: BackendFactory) -> Iterator[None]:
    # asks for make_backend so as to end before it: the backends are still connected
    yield
    while _MADE:
        b = _MADE.pop()
        with contextlib.suppress(Exception):
            b.sql(f"DROP TABLE IF EXISTS {TABLE}")


def _backend(make_backend: BackendFactory, kind: str, db: str) -> Backend:
    b = make_backend(kind, db)
    _MADE.append(b)
    return b


def _q(b: Backend, name: str) -> str:
    return b.quote(name)


def setup(make_backend: BackendFactory, tmp_path: Path, left: str, right: str, ltype: str,
          rtype: str, rows: list[str], *, options: str = "", extra: str = "",
          extra_right: str | None = None, extra_line: str = ""
          ) -> tuple[Backend, Backend, Path]:
    """``t17 (id, val)`` on both sides (``extra`` columns too: ``extra_right`` on the right
    when they differ), ``rows`` (SQL literals) on the left as ids 1..n, and a link with one
    map ``val = val`` (``options`` on that line)."""
    lb = _backend(make_backend, left, "dualwrite_test_a")
    rb = _backend(make_backend, right, "dualwrite_test_b" if right == left else
                  "dualwrite_test_a")
    more = extra if extra_right is None else extra_right
    for b, typ, cols in ((lb, ltype, extra), (rb, rtype, more)):
        b.connector.clear_link()
        for own in ("dualwrite_changes", "dualwrite_applied", "dualwrite_origin", TABLE):
            b.sql(f"DROP TABLE IF EXISTS {own}")
        b.sql(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, val {typ}{cols})")
        b.connector.forget_schema()
    for i, sql in enumerate(rows, start=1):
        lb.app_sql(f"INSERT INTO {TABLE} (id, val) VALUES ({i}, {sql})")
    line = "val = val" + (f": {options}" if options else "")
    text = (f"name: t17\nleft: {TABLE}\nright: {TABLE}\nkey: {{left: [id], right: [id]}}\n"
            f"fields:\n  - id = id\n  - {line}\n" + (f"  - {extra_line}\n" if extra_line else ""))
    return lb, rb, link_config(tmp_path, lb, rb, {"t17": text})


def texts(b: Backend, expr: str = "val") -> dict[int, Any]:
    """id -> ``expr`` as the database itself gives it (text, for exact comparison)."""
    if b.kind == "postgresql" and expr == "val":
        expr = "val::text"
    elif b.kind == "mariadb" and expr == "val":
        expr = "CAST(val AS CHAR)"
    return {int(r[0]): r[1] for r in b.sql(f"SELECT id, {expr} FROM {TABLE} ORDER BY id")}


def inbox(link: Link) -> dict[int, str]:
    return {int(e.key[0]): e.reason for e in link.state.errors("t17")}


# -- silent changes ---------------------------------------------------------------------------

INTERVALS = ["'1 year 2 mons 3 days 04:05:06.789'", "'1 mon'", "'178000000 years'"]


def test_intervals_arrive_exactly_and_starting_again_keeps_them(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    lb, rb, config = setup(make_backend, tmp_path, "postgresql", "postgresql", "interval",
                           "interval", INTERVALS)
    want = {1: "1 year 2 mons 3 days 04:05:06.789", 2: "1 mon", 3: "178000000 years"}
    with Link.open(config) as link:
        link.start_maps()
        assert texts(rb) == want
        lb.app_sql(f"INSERT INTO {TABLE} VALUES (4, '1 mon')")  # captured: the same form
        drain(link.applier())
        assert texts(rb)[4] == "1 mon"
        assert all(r.ok for r in link.verify())
        link.stop_maps()
    with Link.open(config) as link:  # `maps start` again: nothing lossy is applied
        link.start_maps()
        link.sync_initial()
        assert texts(rb) == {**want, 4: "1 mon"}


@pytest.mark.parametrize("typ", ["double precision", "real"])
def test_negative_zero_is_kept_by_capture_both_ways(make_backend: BackendFactory,
                                                    tmp_path: Path, typ: str) -> None:
    lb, rb, config = setup(make_backend, tmp_path, "postgresql", "postgresql", typ, typ,
                           ["0"])
    with Link.open(config) as link:
        link.start_maps()
        lb.app_sql(f"INSERT INTO {TABLE} VALUES (2, '-0')")
        lb.app_sql(f"UPDATE {TABLE} SET val = '-0' WHERE id = 1")
        rb.app_sql(f"INSERT INTO {TABLE} VALUES (3, '-0')")
        drain(link.applier())
        assert texts(rb) == {1: "-0", 2: "-0", 3: "-0"}
        assert texts(lb) == {1: "-0", 2: "-0", 3: "-0"}


def test_negative_zero_into_mariadb_is_stated_by_validate(make_backend: BackendFactory,
                                                          tmp_path: Path) -> None:
    _, _, config = setup(make_backend, tmp_path, "postgresql", "mariadb", "double precision",
                         "DOUBLE", [])
    with Link.open(config) as link:
        _, issues = link.validate()
    assert any(i.code == "DW117" and "-0.0 arrives as 0" in i.message and
               "double precision (PostgreSQL) -> DOUBLE (MariaDB)" in i.message for i in issues)


def test_captured_bytea_arrives_as_bytes_in_a_mariadb_blob(make_backend: BackendFactory,
                                                          tmp_path: Path) -> None:
    lb, rb, config = setup(make_backend, tmp_path, "postgresql", "mariadb", "bytea",
                           "LONGBLOB", [])
    with Link.open(config) as link:
        link.start_maps()
        lb.app_sql(f"INSERT INTO {TABLE} VALUES (1, '\\x00ff00')")
        drain(link.applier())
        assert texts(rb, "HEX(val)") == {1: "00FF00"}


def test_timetz_to_time_is_refused_unless_converted_to_utc(make_backend: BackendFactory,
                                                          tmp_path: Path) -> None:
    _, rb, config = setup(make_backend, tmp_path, "postgresql", "mariadb", "timetz", "TIME",
                          ["'10:00:00+02'"])
    with Link.open(config) as link:
        _, issues = link.validate()
    [issue] = [i for i in issues if i.code in ("DW106", "DW115")]
    assert issue.code == "DW115" and "timetz (PostgreSQL) -> TIME (MariaDB)" in issue.message
    assert "convert: utc" in issue.hint
    _, rb, config = setup(make_backend, tmp_path, "postgresql", "mariadb", "timetz", "TIME",
                          ["'10:00:00+02'"], options="{convert: utc}")
    with Link.open(config) as link:
        link.start_maps()
        assert texts(rb) == {1: "08:00:00"}
        assert all(r.ok for r in link.verify())


def test_char_padding_does_not_make_verify_report_every_row(make_backend: BackendFactory,
                                                           tmp_path: Path) -> None:
    _, rb, config = setup(make_backend, tmp_path, "postgresql", "mariadb", "char(5)",
                           "CHAR(5)", ["'ab'", "'abcde'", "''"])
    with Link.open(config) as link:
        link.start_maps()
        assert texts(rb) == {1: "ab", 2: "abcde", 3: ""}
        [result] = link.verify()
        assert result.ok and result.agreeing == 3, result.as_dict()


# -- failures that stopped more than the bad value -----------------------------------------

DOCS = ["'{\"a\": [1, 2.50, null]}'", "'null'", "NULL", "'[]'", "'\"s\"'"]


@pytest.mark.parametrize("right, rtype", [("postgresql", "jsonb"), ("postgresql", "json"),
                                          ("mariadb", "JSON")])
@pytest.mark.parametrize("ltype", ["json", "jsonb"])
def test_json_documents_sync_and_json_null_is_not_sql_null(
        make_backend: BackendFactory, tmp_path: Path, ltype: str, right: str,
        rtype: str) -> None:
    _, rb, config = setup(make_backend, tmp_path, "postgresql", right, ltype, rtype, DOCS)
    with Link.open(config) as link:
        [result] = link.start_maps()
        assert result.errors == {"left": 0, "right": 0}, inbox(link)
        got = texts(rb)
        assert got[3] is None and got[2] == "null"  # SQL NULL and JSON null kept apart
        assert got[5] == '"s"' and got[4] == "[]"
        assert all(r.ok for r in link.verify())


def test_nan_and_infinity_into_mariadb_go_to_the_inbox_and_the_rest_arrives(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    rows = ["1.5", "'NaN'", "'Infinity'", "'-Infinity'", "2.5"]
    lb, rb, config = setup(make_backend, tmp_path, "postgresql", "mariadb", "double precision",
                           "DOUBLE", rows)
    with Link.open(config) as link:
        [result] = link.start_maps()
        assert result.created["right"] == 2 and result.errors["right"] == 3
        assert texts(rb) == {1: "1.5", 5: "2.5"}
        reasons = inbox(link)
        assert set(reasons) == {2, 3, 4}
        assert "'val'" in reasons[2] and "NaN cannot be held by DOUBLE (MariaDB)" in reasons[2]
        # captured: the run goes on, the bad change is parked, the next one arrives
        lb.app_sql(f"INSERT INTO {TABLE} VALUES (6, 'NaN')")
        lb.app_sql(f"INSERT INTO {TABLE} VALUES (7, 7.5)")
        drain(link.applier())
        assert texts(rb)[7] == "7.5" and 6 not in texts(rb) and 6 in inbox(link)


def test_a_captured_nan_parks_its_whole_source_transaction(make_backend: BackendFactory,
                                                          tmp_path: Path) -> None:
    lb, rb, config = setup(make_backend, tmp_path, "postgresql", "mariadb", "double precision",
                           "DOUBLE", [])
    with Link.open(config) as link:
        link.start_maps()
        values = ", ".join(f"({i}, {i}.5)" if i != 7 else "(7, 'NaN')" for i in range(1, 20))
        lb.app_sql(f"INSERT INTO {TABLE} VALUES {values}")  # one source transaction
        lb.app_sql(f"INSERT INTO {TABLE} VALUES (20, 20.5)")  # and a later one
        drain(link.applier())
        got = texts(rb)
        assert 20 in got  # the run goes on, and so do later transactions
        assert not set(range(1, 20)) & set(got)  # never a part of a source transaction
        assert 7 in inbox(link)


@pytest.mark.parametrize("typ, rows, want", [
    ("date", ["'infinity'", "'-infinity'", "'2024-02-29'", "'0044-03-15 BC'"],
     {1: "infinity", 2: "-infinity", 3: "2024-02-29", 4: "0044-03-15 BC"}),
    ("timestamp", ["'infinity'", "'2024-02-29 10:00:00'"],
     {1: "infinity", 2: "2024-02-29 10:00:00"}),
    ("timestamptz", ["'-infinity'"], {1: "-infinity"}),
    ("time", ["'24:00:00'", "'23:59:59.999999'"], {1: "24:00:00", 2: "23:59:59.999999"}),
])
def test_infinite_dates_and_the_end_of_the_day_sync(make_backend: BackendFactory,
                                                   tmp_path: Path, typ: str, rows: list[str],
                                                   want: dict[int, str]) -> None:
    _, rb, config = setup(make_backend, tmp_path, "postgresql", "postgresql", typ, typ, rows)
    with Link.open(config) as link:
        link.start_maps()
        assert texts(rb) == want
        assert all(r.ok for r in link.verify())


def test_a_captured_update_on_a_table_with_bytea_applies(make_backend: BackendFactory,
                                                        tmp_path: Path) -> None:
    lb, rb, config = setup(make_backend, tmp_path, "postgresql", "postgresql", "bytea",
                           "bytea", ["'\\x01'"], extra=", note text",
                           extra_line="note = note")
    with Link.open(config) as link:
        link.start_maps()
        lb.app_sql(f"UPDATE {TABLE} SET val = '\\x00ff00', note = 'changed' WHERE id = 1")
        applier = link.applier()
        drain(applier)
        drain(link.applier())  # and again, as at the next start
        assert texts(rb) == {1: "\\x00ff00"}


def test_an_inbox_entry_holding_an_address_does_not_stop_the_applier(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    lb, rb, config = setup(make_backend, tmp_path, "postgresql", "mariadb", "double precision",
                           "DOUBLE", [], extra=", addr inet", extra_right=", addr INET6",
                           extra_line="addr > addr")
    with Link.open(config) as link:
        link.start_maps()
        lb.app_sql(f"INSERT INTO {TABLE} VALUES (1, 'NaN', '::1')")
        lb.app_sql(f"INSERT INTO {TABLE} VALUES (2, 2.5, '::2')")
        drain(link.applier())
        assert texts(rb) == {2: "2.5"} and 1 in inbox(link)


# -- found by the matrix on PostgreSQL <-> MariaDB --------------------------------------------

def test_mariadb_doubles_floats_and_times_arrive_exactly(make_backend: BackendFactory,
                                                        tmp_path: Path) -> None:
    lb = _backend(make_backend, "mariadb", "dualwrite_test_a")
    rb = _backend(make_backend, "postgresql", "dualwrite_test_a")
    for b, cols in ((lb, "d DOUBLE, f FLOAT, t TIME"),
                    (rb, "d double precision, f real, t time")):
        b.connector.clear_link()
        for own in ("dualwrite_changes", "dualwrite_applied", TABLE):
            b.sql(f"DROP TABLE IF EXISTS {own}")
        b.sql(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, {cols})")
    lb.app_sql(f"INSERT INTO {TABLE} VALUES (1, 5e-324, 16777216, '24:00:00'), "
               "(2, 2.2250738585072014e-308, 0.5, '00:00:00'), (3, -1e-300, NULL, NULL)")
    config = link_config(tmp_path, lb, rb, {"t17": (
        f"name: t17\nleft: {TABLE}\nright: {TABLE}\nkey: {{left: [id], right: [id]}}\n"
        "fields:\n  - id = id\n  - d = d\n  - f = f\n  - t = t\n")})
    with Link.open(config) as link:
        link.start_maps()
        got = {int(r[0]): r[1:] for r in rb.sql(
            f"SELECT id, d::text, f::text, t::text FROM {TABLE} ORDER BY id")}
        assert got == {1: ("5e-324", "1.6777216e+07", "24:00:00"),
                       2: ("2.2250738585072014e-308", "0.5", "00:00:00"),
                       3: ("-1e-300", None, None)}
        [result] = link.verify()
        assert result.ok, result.as_dict()


@pytest.mark.parametrize("path", ["initial", "capture"])
def test_mariadb_blob_with_nul_bytes_reaches_bytea(make_backend: BackendFactory,
                                                  tmp_path: Path, path: str) -> None:
    lb = _backend(make_backend, "mariadb", "dualwrite_test_a")
    rb = _backend(make_backend, "postgresql", "dualwrite_test_a")
    for b, typ in ((lb, "LONGBLOB"), (rb, "bytea")):
        b.connector.clear_link()
        for own in ("dualwrite_changes", "dualwrite_applied", TABLE):
            b.sql(f"DROP TABLE IF EXISTS {own}")
        b.sql(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, val {typ})")
    rows = "(1, x'00ff00'), (2, x'')"
    if path == "initial":
        lb.app_sql(f"INSERT INTO {TABLE} VALUES {rows}")
    config = link_config(tmp_path, lb, rb, {"t17": (
        f"name: t17\nleft: {TABLE}\nright: {TABLE}\nkey: {{left: [id], right: [id]}}\n"
        "fields:\n  - id = id\n  - val = val\n")})
    with Link.open(config) as link:
        link.start_maps()
        if path == "capture":
            lb.app_sql(f"INSERT INTO {TABLE} VALUES {rows}")
            drain(link.applier())
        assert texts(rb) == {1: "\\x00ff00", 2: "\\x"}


def test_captured_uuid_update_reaches_mariadb(make_backend: BackendFactory,
                                             tmp_path: Path) -> None:
    u1, u2 = "d1b6a1e2-1234-4abc-8def-0123456789ab", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    lb, rb, config = setup(make_backend, tmp_path, "postgresql", "mariadb", "uuid", "UUID",
                           [f"'{u1}'"])
    with Link.open(config) as link:
        link.start_maps()
        lb.app_sql(f"UPDATE {TABLE} SET val = '{u2}' WHERE id = 1")
        drain(link.applier())
        assert texts(rb) == {1: u2}


def test_captured_infinity_update_names_the_column(make_backend: BackendFactory,
                                                  tmp_path: Path) -> None:
    lb, rb, config = setup(make_backend, tmp_path, "postgresql", "mariadb", "date", "DATE",
                           ["'2024-01-01'"])
    with Link.open(config) as link:
        link.start_maps()
        lb.app_sql(f"UPDATE {TABLE} SET val = 'infinity' WHERE id = 1")
        drain(link.applier())
        assert texts(rb) == {1: "2024-01-01"}
        reason = inbox(link)[1]
        assert "'val'" in reason and "infinity cannot be held by DATE (MariaDB)" in reason


# -- misleading or missing checks ----------------------------------------------------------------

@pytest.mark.parametrize("ltype, rtype, code, says", [
    ("interval", "BIGINT", "DW106", "interval (PostgreSQL) -> BIGINT (MariaDB)"),
    ("integer[]", "LONGTEXT", "DW106", "integer[] (PostgreSQL) -> LONGTEXT (MariaDB)"),
    ("cidr", "INET6", "DW106", "cidr (PostgreSQL) -> INET6 (MariaDB)"),
    ("timetz", "TIME", "DW115", "timetz (PostgreSQL) -> TIME (MariaDB)"),
    ("inet", "INET6", "DW116", "inet (PostgreSQL) -> INET6 (MariaDB)"),
])
def test_validate_names_both_real_types(make_backend: BackendFactory, tmp_path: Path,
                                        ltype: str, rtype: str, code: str, says: str) -> None:
    _, _, config = setup(make_backend, tmp_path, "postgresql", "mariadb", ltype, rtype, [])
    with Link.open(config) as link:
        _, issues = link.validate()
    assert any(i.code == code and says in i.message for i in issues), \
        "\n".join(str(i) for i in issues)
    assert not any("other" in i.message for i in issues)


def test_money_reaches_a_mariadb_decimal(make_backend: BackendFactory,
                                        tmp_path: Path) -> None:
    _, rb, config = setup(make_backend, tmp_path, "postgresql", "mariadb", "money",
                           "DECIMAL(19,2)", ["12.34", "-5.5", "92233720368547758.07"])
    with Link.open(config) as link:
        _, issues = link.validate()
        assert not [i for i in issues if i.code == "DW106"]
        link.start_maps()
        assert texts(rb) == {1: "12.34", 2: "-5.50", 3: "92233720368547758.07"}
        assert all(r.ok for r in link.verify())


@pytest.mark.parametrize("typ, rows", [("double precision", ["'NaN'", "1"]),
                                       ("numeric", ["'NaN'", "'Infinity'", "1.50"])])
def test_verify_takes_nan_for_nan(make_backend: BackendFactory, tmp_path: Path, typ: str,
                                  rows: list[str]) -> None:
    _, _, config = setup(make_backend, tmp_path, "postgresql", "postgresql", typ, typ, rows)
    with Link.open(config) as link:
        link.start_maps()
        [result] = link.verify()
        assert result.ok and result.agreeing == len(rows), result.as_dict()


def test_odata_renders_intervals_arrays_and_money_in_their_edm_form(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    from dualwrite.api.server import create_server_app
    from dualwrite.engine.security import create_token

    lb, _, config = setup(make_backend, tmp_path, "postgresql", "postgresql", "interval",
                          "interval", ["'1 year 2 mons 3 days 04:05:06.789'"],
                          extra=", arr integer[], cash money",
                          extra_line="arr = arr")
    lb.app_sql(f"UPDATE {TABLE} SET arr = '{{1,2,NULL}}', cash = 1234.5 WHERE id = 1")
    with Link.open(config) as link:
        link.start_maps()
        token = create_token(link.state, "reader")
        auth = {"Authorization": f"Bearer {token}"}
        with TestClient(create_server_app(link)) as client:
            r = client.get(f"/odata/erp/{TABLE}", headers=auth)
            assert r.status_code == 200, r.text
            [row] = r.json()["value"]
            meta = client.get("/odata/erp/$metadata?$format=json", headers=auth).json()
    assert row["val"] == "P1Y2M3DT4H5M6.789S" and row["arr"] == [1, 2, None]
    assert row["cash"] == 1234.5
    props = meta["dualwrite.erp"][TABLE]
    assert props["val"]["$Type"] == "Edm.Duration"
    assert props["arr"]["$Type"] == "Edm.Int32" and props["arr"]["$Collection"] is True
    assert props["cash"]["$Type"] == "Edm.Decimal" and props["cash"]["$Scale"] == 2
