"""SQLite (the standard library's sqlite3): everything dualwrite knows of this database is
in this package.

``connector.py``
    :class:`SqliteConnector`: reading and writing, and the engine factory the state store
    uses too (``create_sqlite_engine``).
``dialect.py``
    ``SqliteDialect``: the capture triggers (with the echo guard table) and the delta
    journal's triggers.

The shared machinery it plugs into is in :mod:`dualwrite.connectors` (``sql.py``,
``capture.py``, ``delta.py``); :func:`dualwrite.connectors.connect` picks it by URL scheme,
and ``dualwrite.testing.connector_suite`` is what it must pass.
"""

from dualwrite.connectors.sqlite.connector import SqliteConnector

__all__ = ["SqliteConnector"]
