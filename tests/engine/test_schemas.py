"""Tables outside the connection's default schema: a PostgreSQL schema (``fin.currency``, or
an environment's `schema:`, or a URL's ``options=-csearch_path=fin``) and another MariaDB
database (``crm.accounts``) work in validate, plan, initial sync, verify, live sync, capture
(triggers and change log), maps stop and uninstall."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from capture_fixtures import drain, link_config
from dualwrite.engine.capture import capture_specs
from dualwrite.engine.link import Link
from dualwrite.testing.backends import database_name

from conftest import Backend, BackendFactory, database_url, guid_default

CURRENCIES = """
name: currencies
left: {erp}currency
right: {crm}currencies
key: {{left: [code], right: [isocurrencycode]}}
fields:
  - code = isocurrencycode
  - name = currencyname
  - rate = exchangerate
"""

CUSTOMERS = """
name: customers
left: {erp}customer
right: {crm}accounts
key: {{left: [account], right: [accountnumber]}}
depends_on: [currencies]
fields:
  - account = accountnumber
  - name = name
  - currency = transactioncurrencyid.isocurrencycode
"""


def erp_tables(erp: Backend) -> None:
    """fin.currency and fin.customer (a foreign key inside the schema), made by the
    application's own connection: nothing in public."""
    with erp.app().begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS fin CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA fin")
        conn.exec_driver_sql("CREATE TABLE fin.currency (code varchar(3) PRIMARY KEY, "
                             "name varchar(50), rate numeric(10,4))")
        conn.exec_driver_sql("CREATE TABLE fin.customer (account varchar(20) PRIMARY KEY, "
                             "name varchar(100), currency varchar(3) REFERENCES fin.currency)")
        for own in ("dualwrite_changes", "dualwrite_applied", "dualwrite_wake"):
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS public.{own} CASCADE")


def crm_tables(crm_db: str) -> sa.Engine:
    """currencies and accounts in the MariaDB database ``crm_db`` (not the link's)."""
    engine = sa.create_engine(database_url("mariadb", "dualwrite_test_crm"),
                              poolclass=sa.pool.NullPool)
    md = sa.MetaData()
    sa.Table("currencies", md,
             sa.Column("currencyid", sa.String(36), primary_key=True,
                       server_default=guid_default("mysql")),
             sa.Column("isocurrencycode", sa.String(3), nullable=False, unique=True),
             sa.Column("currencyname", sa.String(50)),
             sa.Column("exchangerate", sa.Numeric(10, 4)))
    sa.Table("accounts", md,
             sa.Column("accountid", sa.String(36), primary_key=True,
                       server_default=guid_default("mysql")),
             sa.Column("accountnumber", sa.String(20), nullable=False, unique=True),
             sa.Column("name", sa.String(100)),
             sa.Column("transactioncurrencyid", sa.String(36),
                       sa.ForeignKey("currencies.currencyid")))
    with engine.begin() as conn:
        for t in ("accounts", "currencies"):
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{t}`")
    md.create_all(engine)
    assert engine.url.database == crm_db
    return engine


@pytest.fixture
def setup(make_backend: BackendFactory) -> tuple[Backend, Backend, str]:
    erp = make_backend("postgresql", "dualwrite_test_a")
    crm = make_backend("mariadb", "dualwrite_test_a")
    for b in (erp, crm):
        b.connector.clear_link()
    crm.create(sa.MetaData())  # the link's own database: no log left by another test
    erp_tables(erp)
    crm_db = database_name("dualwrite_test_crm")
    crm_tables(crm_db)
    return erp, crm, crm_db


def _rows(engine: sa.Engine, sql: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(sql).all()]


@pytest.mark.parametrize("how", ["qualified", "schema", "search_path"])
def test_tables_in_another_schema_and_database_work_in_every_command(
        setup: tuple[Backend, Backend, str], tmp_path: Path, how: str) -> None:
    erp, crm, crm_db = setup
    prefix = "fin." if how == "qualified" else ""
    maps = {n: text.format(erp=prefix, crm=crm_db + ".")
            for n, text in (("currencies", CURRENCIES), ("customers", CUSTOMERS))}

    def env(cfg: dict[str, Any]) -> None:
        if how == "schema":
            cfg["environments"]["erp"]["schema"] = "fin"
        elif how == "search_path":
            cfg["environments"]["erp"]["url"] = erp.url + "?options=-csearch_path%3Dfin"

    config = link_config(tmp_path, erp, crm, maps, extra=env)
    with erp.app().begin() as conn:
        conn.exec_driver_sql("INSERT INTO fin.currency VALUES ('EUR', 'Euro', 1.0850), "
                             "('USD', 'US dollar', 1)")
        conn.exec_driver_sql("INSERT INTO fin.customer VALUES ('C-1', 'Contoso', 'EUR'), "
                             "('C-2', 'Fabrikam', 'USD')")
    app_crm = sa.create_engine(database_url("mariadb", "dualwrite_test_crm"),
                               poolclass=sa.pool.NullPool)
    # enough rows for the bulk paths (COPY, set-based updates) into the PostgreSQL schema
    with app_crm.begin() as conn:
        conn.execute(sa.text("INSERT INTO accounts (accountnumber, name) VALUES (:a, :n)"),
                     [{"a": f"B-{i:03d}", "n": f"Bulk {i}"} for i in range(60)])
    with Link.open(config) as link:
        bound, issues = link.validate(files=True)
        assert [i for i in issues if i.is_error] == []
        assert {b.name for b in bound} == {"currencies", "customers"}
        planned = {r.map: r for r in link.plan()}
        assert planned["currencies"].created["right"] == 2
        # (plan counts a customer whose currency an earlier map creates as an error: the
        # initial sync's business, issue 10 section 1)
        assert planned["customers"].created["left"] == 60
        assert planned["customers"].created["right"] + \
            planned["customers"].errors["right"] == 2
        done = {r.map: r for r in link.sync_initial()}
        assert done["customers"].created == {"left": 60, "right": 2}
        assert sum(r.errors["right"] + r.errors["left"] for r in done.values()) == 0
        assert [(v.map, v.ok, v.compared) for v in link.verify()] == [
            ("currencies", True, 2), ("customers", True, 62)]
        # the lookup found the currency's row in the other database
        assert _rows(app_crm, "SELECT a.accountnumber, c.isocurrencycode FROM accounts a "
                     "JOIN currencies c ON c.currencyid = a.transactioncurrencyid "
                     "ORDER BY 1") == [("C-1", "EUR"), ("C-2", "USD")]

        link.start_maps()
        # live sync through the API, named as the map names the table
        with link.transaction() as tx:
            tx.create("erp", f"{prefix}currency", {"code": "GBP", "name": "Pound",
                                                   "rate": Decimal("1.27")})
        assert _rows(app_crm, "SELECT currencyname, exchangerate FROM currencies WHERE "
                     "isocurrencycode = 'GBP'") == [("Pound", Decimal("1.2700"))]

        # capture: an application session whose search path does not hold fin, and one on
        # the CRM's own database
        with erp.app().begin() as conn:
            conn.exec_driver_sql("SET search_path = public")
            conn.exec_driver_sql("UPDATE fin.currency SET rate = 1.09 WHERE code = 'EUR'")
            conn.exec_driver_sql("INSERT INTO fin.customer VALUES ('C-3', 'Litware', 'GBP')")
        with app_crm.begin() as conn:
            conn.exec_driver_sql("UPDATE accounts SET name = 'Contoso Ltd' "
                                 "WHERE accountnumber = 'C-1'")
            conn.exec_driver_sql("UPDATE accounts SET name = CONCAT(name, ' renamed') "
                                 "WHERE accountnumber LIKE 'B-%%'")
        assert drain(link.applier()) >= 63
        assert _rows(erp.app(), "SELECT count(*) FROM fin.customer WHERE name LIKE "
                     "'%% renamed'") == [(60,)]
        assert _rows(app_crm, "SELECT exchangerate FROM currencies WHERE isocurrencycode = "
                     "'EUR'") == [(Decimal("1.0900"),)]
        assert _rows(app_crm, "SELECT name FROM accounts WHERE accountnumber = 'C-3'") == [
            ("Litware",)]
        assert _rows(erp.app(), "SELECT name FROM fin.customer WHERE account = 'C-1'") == [
            ("Contoso Ltd",)]
        assert all(v.ok for v in link.verify())
        # the log is the connection's: public on PostgreSQL (fin with `schema:` or a
        # search path), the link's database on MariaDB
        log_schema = "fin" if how != "qualified" else "public"
        assert _rows(erp.app(), "SELECT count(*) FROM pg_tables WHERE tablename = "
                     f"'dualwrite_changes' AND schemaname = '{log_schema}'") == [(1,)]
        assert _rows(app_crm, "SELECT count(*) FROM information_schema.TABLES WHERE "
                     "TABLE_NAME = 'dualwrite_changes' AND TABLE_SCHEMA = DATABASE()") == [(0,)]
        assert _rows(app_crm, "SELECT count(*) FROM information_schema.TRIGGERS WHERE "
                     "TRIGGER_SCHEMA = DATABASE()") == [(6,)]
        for b in link.bound_maps():
            for side, spec in capture_specs(b).items():
                assert link.connectors[side].change_log().check(spec) == []

        # stop removes the triggers where they are
        link.stop_maps()
        assert _rows(app_crm, "SELECT count(*) FROM information_schema.TRIGGERS WHERE "
                     "TRIGGER_SCHEMA = DATABASE()") == [(0,)]
        assert _rows(erp.app(), "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON "
                     "c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                     "WHERE n.nspname = 'fin' AND left(t.tgname, 3) = 'dw_'") == [(0,)]

        # uninstall finds triggers in the other schema and database too
        link.start_maps()
        removed = link.uninstall()
        assert any("trigger dw_" in o for o in removed["crm"])
        assert _rows(app_crm, "SELECT count(*) FROM information_schema.TRIGGERS WHERE "
                     "TRIGGER_SCHEMA = DATABASE()") == [(0,)]
        # (on this test's tables: others' tables in the database may hold triggers of theirs)
        assert _rows(erp.app(), "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON "
                     "c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                     "WHERE n.nspname = 'fin' AND NOT t.tgisinternal "
                     "AND left(t.tgname, 3) = 'dw_'") == [(0,)]
    app_crm.dispose()


def test_the_commands_take_qualified_tables(setup: tuple[Backend, Backend, str],
                                            tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from dualwrite.cli import main

    erp, crm, crm_db = setup
    maps = {n: text.format(erp="fin.", crm=crm_db + ".")
            for n, text in (("currencies", CURRENCIES), ("customers", CUSTOMERS))}
    cfg = str(link_config(tmp_path, erp, crm, maps))
    with erp.app().begin() as conn:
        conn.exec_driver_sql("INSERT INTO fin.currency VALUES ('EUR', 'Euro', 1.0850)")
        conn.exec_driver_sql("INSERT INTO fin.customer VALUES ('C-1', 'Contoso', 'EUR')")
    assert main(["-c", cfg, "validate"]) == 0
    assert "ok: 2 map(s) valid" in capsys.readouterr().out
    assert main(["-c", cfg, "plan"]) == 0
    assert main(["-c", cfg, "sync", "--initial"]) == 0
    assert main(["-c", cfg, "verify"]) == 0
    assert main(["-c", cfg, "maps", "start", "--yes"]) == 0
    assert main(["-c", cfg, "maps", "stop", "--yes"]) == 0
    assert "stopped: " in capsys.readouterr().out
    # a misspelt schema-qualified table: DW101 with the schema's tables as candidates
    (tmp_path / "maps" / "currencies.yaml").write_text(
        maps["currencies"].replace("left: fin.currency", "left: fin.curency"))
    assert main(["-c", cfg, "validate"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "DW101" in out and "'fin.curency'" in out and "did you mean fin.currency" in out


def test_schema_and_url_options_keep_dualwrites_own_settings(make_backend: BackendFactory
                                                             ) -> None:
    from dualwrite.connectors import connect

    erp = make_backend("postgresql", "dualwrite_test_a")
    erp_tables(erp)
    crm_db = database_name("dualwrite_test_crm")
    crm_tables(crm_db)
    pg = connect("erp", erp.url + "?options=-csearch_path%3Dfin")
    try:
        # the URL's search path, and dualwrite's own marks (no echo) and time zone beside it
        assert pg.execute("SELECT current_schema(), current_setting('dualwrite.origin'), "
                          "current_setting('TimeZone')") == [("fin", "on", "UTC")]
        assert pg.tables() == ["currency", "customer"]
    finally:
        pg.close()
    my = connect("crm", database_url("mariadb", "dualwrite_test_a"), schema=crm_db)
    try:
        assert my.execute("SELECT DATABASE(), @dualwrite_origin") == [(crm_db, 1)]
        assert my.tables() == ["accounts", "currencies"]
    finally:
        my.close()


def test_odata_serves_and_dual_writes_qualified_tables(setup: tuple[Backend, Backend, str],
                                                       tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from dualwrite.api.server import create_server_app
    from dualwrite.engine.security import create_token

    erp, crm, crm_db = setup
    maps = {n: text.format(erp="fin.", crm=crm_db + ".")
            for n, text in (("currencies", CURRENCIES), ("customers", CUSTOMERS))}
    config = link_config(tmp_path, erp, crm, maps)
    app_crm = sa.create_engine(database_url("mariadb", "dualwrite_test_crm"),
                               poolclass=sa.pool.NullPool)
    with Link.open(config) as link:
        link.start_maps()
        token = create_token(link.state, "odata-user", role="writer")
        auth = {"Authorization": f"Bearer {token}"}
        with TestClient(create_server_app(link)) as client:
            meta = client.get("/odata/erp/$metadata", headers=auth)
            assert meta.status_code == 200, meta.text
            # an OData name has no dot: the set is fin_currency
            assert 'EntitySet Name="fin_currency"' in meta.text
            r = client.post("/odata/erp/fin_currency", headers=auth,
                            json={"code": "CHF", "name": "Franc", "rate": 1.12})
            assert r.status_code == 201, r.text
    assert _rows(app_crm, "SELECT currencyname FROM currencies WHERE isocurrencycode = "
                 "'CHF'") == [("Franc",)]
    app_crm.dispose()
