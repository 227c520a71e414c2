"""The in-process memory backend (engine unit tests, fault injection): a connector whose
tables are Python dicts, with its own change log.

``connector.py``
    MemoryConnector and its change log; no SQL.
"""

from dualwrite.connectors.memory.connector import MemoryConnector

__all__ = ["MemoryConnector"]
