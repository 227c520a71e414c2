"""PostgreSQL (through psycopg 3): everything dualwrite knows of this database is in this
package.

``connector.py``
    :class:`PostgresConnector`: reading and writing, COPY for large batches and initial
    sync's bulk path, two-phase commit on psycopg directly (``PgBranch``), error classes.
``dialect.py``
    ``PostgresDialect``: the capture triggers, the LISTEN wake-up (``PgChangeSignal``) and
    the delta journal's triggers.

The shared machinery it plugs into is in :mod:`dualwrite.connectors` (``sql.py``,
``capture.py``, ``delta.py``); :func:`dualwrite.connectors.connect` picks it by URL scheme,
and ``dualwrite.testing.connector_suite`` is what it must pass.
"""

from dualwrite.connectors.postgresql.connector import PostgresConnector

__all__ = ["PostgresConnector"]
