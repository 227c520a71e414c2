"""dualwrite's own state: links and maps, checkpoints, processes, the error inbox, events and
alerts, commit decisions and audit, principals and tokens.

Stored in any SQLAlchemy database (a SQLite file by default, PostgreSQL for several hosts).
:class:`StateStore` is the one façade; each concern is a part of it in a module of its own
(``maps``, ``sync_progress``, ``process_registry``, ``inbox``, ``alerting``, ``decisions``,
``access``), over the tables of ``schema`` and the value encoding of ``codec``; ``store``
opens it, checks its schema version and runs the migrations.
"""

from dualwrite.engine.state.codec import (
    decode_doc,
    decode_row,
    decode_values,
    encode_doc,
    encode_row,
    encode_values,
    now_iso,
)
from dualwrite.engine.state.records import AuditEntry, InboxEntry, MapState, ParkedChange
from dualwrite.engine.state.schema import (
    CACHE_SECONDS,
    HEARTBEAT_TIMEOUT,
    _md,
    alerts,
    applier_leases,
    audit_log,
    checkpoints,
    conflicts,
    coordinator_log,
    created_defaults,
    error_inbox,
    events,
    links,
    map_activity,
    map_status,
    map_versions,
    parked,
    principals,
    processes,
    refusals,
    state_meta,
    sync_creating,
    tokens,
)
from dualwrite.engine.state.store import MIGRATIONS, SCHEMA_VERSION, StateStore

__all__ = [
    "CACHE_SECONDS", "HEARTBEAT_TIMEOUT", "MIGRATIONS", "SCHEMA_VERSION", "AuditEntry",
    "InboxEntry", "MapState", "ParkedChange", "StateStore", "_md", "alerts", "applier_leases",
    "audit_log", "checkpoints", "conflicts", "coordinator_log", "created_defaults",
    "decode_doc", "decode_row", "decode_values", "encode_doc", "encode_row", "encode_values",
    "error_inbox", "events", "links", "map_activity", "map_status", "map_versions", "now_iso",
    "parked", "principals", "processes", "refusals", "state_meta", "sync_creating", "tokens",
]
