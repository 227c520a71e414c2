"""MariaDB (through PyMySQL; URLs ``mysql+pymysql://`` or ``mariadb://``): everything
dualwrite knows of this database is in this package.

``connector.py``
    :class:`MySqlConnector`: reading and writing, LOAD DATA for initial sync's bulk path, XA
    two-phase commit, error classes.
``dialect.py``
    ``MariaDbDialect``: the capture triggers (transaction ids from system versioning) and the
    delta journal's triggers.

The shared machinery it plugs into is in :mod:`dualwrite.connectors` (``sql.py``,
``capture.py``, ``delta.py``); :func:`dualwrite.connectors.connect` picks it by URL scheme,
and ``dualwrite.testing.connector_suite`` is what it must pass.
"""

from dualwrite.connectors.mariadb.connector import MySqlConnector

__all__ = ["MySqlConnector"]
