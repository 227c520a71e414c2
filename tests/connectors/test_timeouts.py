"""dualwrite's own sessions never wait without end for a database that stopped answering:
connection attempts and reads are bounded by default (the URL may set other bounds)."""

from __future__ import annotations

from typing import Any

from conftest import BackendFactory


def _driver(backend: Any) -> Any:
    with backend.connector.engine.connect() as conn:
        return conn.connection.driver_connection


def test_postgresql_sessions_bound_connecting_and_drop_dead_peers(make_backend: BackendFactory
                                                                 ) -> None:
    pg = make_backend("postgresql", "dualwrite_test_a")
    params = _driver(pg).info.get_parameters()
    assert params["connect_timeout"] == "10"
    assert params["keepalives"] == "1" and params["keepalives_idle"] == "30"
    assert params["tcp_user_timeout"] == "60000"


def test_mariadb_sessions_bound_connecting_and_reading(make_backend: BackendFactory) -> None:
    my = make_backend("mariadb", "dualwrite_test_a")
    conn = _driver(my)
    assert conn.connect_timeout == 10
    assert conn._read_timeout == 60 and conn._write_timeout == 60


def test_the_url_sets_other_bounds(make_backend: BackendFactory) -> None:
    from dualwrite.connectors import connect

    my = make_backend("mariadb", "dualwrite_test_a")
    other = connect("crm", my.url + ("&" if "?" in my.url else "?") + "read_timeout=7")
    try:
        with other.engine.connect() as c:  # type: ignore[attr-defined]
            assert c.connection.driver_connection._read_timeout == 7
    finally:
        other.close()
