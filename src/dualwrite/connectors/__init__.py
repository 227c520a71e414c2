"""Connectors: one module per backend behind :class:`~dualwrite.connectors.base.Connector`."""

from __future__ import annotations

from dualwrite.connectors.base import Capabilities, Connector, LinkRecord, Row, WriteSession
from dualwrite.errors import ConfigError

__all__ = ["Capabilities", "Connector", "LinkRecord", "Row", "WriteSession", "connect"]


def connect(name: str, url: str, *, schema: str | None = None,
            capture: str = "triggers") -> Connector:
    """The one connection factory: a connector for environment ``name`` at ``url``.

    ``schema``: the environment's `schema:`, where its unqualified table names (and
    dualwrite's own tables) are: PostgreSQL's search path, MariaDB's database. Drivers are
    imported only for the backend asked for. ``capture``: how writes that bypass dualwrite
    are captured (``triggers``, or ``logical``: PostgreSQL's logical decoding, see
    :mod:`dualwrite.connectors.postgresql.logical`).
    """
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if schema and scheme not in ("postgresql", "postgres", "mysql", "mariadb"):
        raise ConfigError(
            f"environment {name!r}: `schema: {schema}` is for PostgreSQL (a schema) and MariaDB "
            f"(a database); {scheme} has no schemas", code="DW003",
            hint=f"remove `schema:` from environment {name!r}")
    if capture not in ("triggers", "logical"):
        raise ConfigError(f"environment {name!r}: unknown capture mode {capture!r}",
                          code="DW003", hint="use `capture: triggers` or `capture: logical`")
    if capture == "logical" and scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"environment {name!r}: `capture: logical` is PostgreSQL's logical decoding; "
            f"{scheme} has none", code="DW003",
            hint=f"remove `capture: logical` from environment {name!r} (triggers capture it)")
    if scheme in ("postgresql", "postgres"):
        _need_driver(name, "psycopg", "postgresql")
    elif scheme in ("mysql", "mariadb"):
        _need_driver(name, "pymysql", "mariadb")
    elif scheme == "odata":
        _need_driver(name, "httpx", "odata")
    if scheme == "sqlite":
        from dualwrite.connectors.sqlite import SqliteConnector
        return SqliteConnector(name, url)
    if scheme in ("postgresql", "postgres"):
        from dualwrite.connectors.postgresql import PostgresConnector
        if url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url[len("postgres://"):]
        elif url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        return PostgresConnector(name, url, schema=schema, capture=capture)
    if scheme in ("mysql", "mariadb"):
        from dualwrite.connectors.mariadb import MySqlConnector
        rest = url.split("://", 1)[1] if "://" in url else ""
        return MySqlConnector(name, "mysql+pymysql://" + rest, schema=schema)
    if scheme == "odata":
        from dualwrite.connectors.odata import ODataConnector
        return ODataConnector(name, url)
    if scheme == "memory":
        from dualwrite.connectors.memory import MemoryConnector
        return MemoryConnector(name, url)
    raise ConfigError(
        f"environment {name!r}: unsupported database URL scheme {scheme!r} in {url!r}",
        hint="use sqlite:///file.db, postgresql+psycopg://user@host/db, "
        "mysql+pymysql://user@host/db, odata+https://host/service/ or memory://name",
        code="DW003")


def _need_driver(name: str, module: str, extra: str) -> None:
    """The database drivers are extras of the package: say which one to install."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"environment {name!r} needs the Python package {module}, which is not installed",
            hint=f"pip install 'dualwrite[{extra}]' (or dualwrite[all])", code="DW003")
