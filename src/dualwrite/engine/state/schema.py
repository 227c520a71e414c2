"""The state store's tables (one metadata) and the constants that go with them."""

from __future__ import annotations

import sqlalchemy as sa

_md = sa.MetaData()

links = sa.Table(
    "links", _md,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("link_id", sa.String(64), nullable=False),
    sa.Column("left_env", sa.String(200), nullable=False),
    sa.Column("right_env", sa.String(200), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
)

checkpoints = sa.Table(
    "checkpoints", _md,
    sa.Column("map", sa.String(200), primary_key=True),
    sa.Column("phase", sa.String(40), primary_key=True),
    sa.Column("position", sa.Text, nullable=True),
    sa.Column("stats", sa.Text, nullable=False, default="{}"),
    sa.Column("updated_at", sa.String(40), nullable=False),
)

map_status = sa.Table(
    "map_status", _md,
    sa.Column("map", sa.String(200), primary_key=True),
    sa.Column("state", sa.String(40), nullable=False),
    sa.Column("initial_synced_at", sa.String(40), nullable=True),
    sa.Column("updated_at", sa.String(40), nullable=False),
    # the map version capture is installed for (map_versions holds its text)
    sa.Column("version", sa.String(40), nullable=True),
)

map_versions = sa.Table(
    "map_versions", _md,
    sa.Column("map", sa.String(200), primary_key=True),
    sa.Column("version", sa.String(40), primary_key=True),
    sa.Column("definition", sa.Text, nullable=False),
    sa.Column("file", sa.Text, nullable=True),
    sa.Column("installed_at", sa.String(40), nullable=False),
)

error_inbox = sa.Table(
    "error_inbox", _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("map", sa.String(200), nullable=False, index=True),
    sa.Column("side", sa.String(10), nullable=False),
    sa.Column("row_key", sa.Text, nullable=False),
    sa.Column("operation", sa.String(20), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=1),
    sa.Column("first_at", sa.String(40), nullable=False),
    sa.Column("last_at", sa.String(40), nullable=False),
    sa.Column("status", sa.String(20), nullable=False, default="open"),
    sa.UniqueConstraint("map", "side", "row_key", "operation", name="uq_error_row"),
)


coordinator_log = sa.Table(
    "coordinator_log", _md,
    sa.Column("xid", sa.String(80), primary_key=True),
    sa.Column("decision", sa.String(10), nullable=False),  # "commit"; absence means abort
    sa.Column("participants", sa.Text, nullable=False),
    sa.Column("decided_at", sa.String(40), nullable=False),
    sa.Column("completed_at", sa.String(40), nullable=True),
)

audit_log = sa.Table(
    "audit_log", _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("xid", sa.String(80), nullable=False, index=True),
    sa.Column("principal", sa.String(200), nullable=False),
    sa.Column("environment", sa.String(200), nullable=False),
    sa.Column("table_name", sa.String(200), nullable=False),
    sa.Column("row_key", sa.Text, nullable=False),
    sa.Column("operation", sa.String(20), nullable=False),
    sa.Column("map", sa.String(200), nullable=True),
)

principals = sa.Table(
    "principals", _md,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("roles", sa.Text, nullable=False, default="[]"),
    sa.Column("licences", sa.Text, nullable=False, default="[]"),
)

tokens = sa.Table(
    "tokens", _md,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("principal", sa.String(200), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("revoked_at", sa.String(40), nullable=True),
    # NULL in tokens made before roles and per-token licences (see dualwrite.engine.security)
    sa.Column("role", sa.String(20), nullable=True),
    sa.Column("licences", sa.Text, nullable=True),  # JSON list; NULL: the principal's
)

#: requests refused for want of a role or a licence (HTTP 403, LicenceError)
refusals = sa.Table(
    "refusals", _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("principal", sa.String(200), nullable=False),
    sa.Column("token_id", sa.String(16), nullable=True),
    sa.Column("environment", sa.String(200), nullable=True),
    sa.Column("request", sa.Text, nullable=False),  # "PATCH /odata/erp/..." or "create erp.T"
    sa.Column("needed", sa.String(200), nullable=False),  # "role writer", "licence accounts"
    sa.Column("reason", sa.Text, nullable=False),
)

#: one-off upgrades already made to this store (key -> when)
state_meta = sa.Table(
    "state_meta", _md,
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

parked = sa.Table(
    "parked", _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("map", sa.String(200), nullable=False),
    sa.Column("row_key", sa.Text, nullable=False),
    sa.Column("source", sa.String(10), nullable=False),  # "left" or "right"
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("role", sa.String(10), nullable=False),  # "blocker" or "waiting"
    sa.Column("error_id", sa.Integer, nullable=False, index=True),
    sa.Column("change", sa.Text, nullable=False),
    sa.Column("parked_at", sa.String(40), nullable=False),
    sa.UniqueConstraint("map", "source", "seq", name="uq_parked_change"),
)

conflicts = sa.Table(
    "conflicts", _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("map", sa.String(200), nullable=False, index=True),
    sa.Column("row_key", sa.Text, nullable=False),
    sa.Column("policy", sa.String(20), nullable=False),
    sa.Column("winner", sa.String(10), nullable=False),
    sa.Column("source", sa.String(10), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    # the incoming change's position in its source log: a conflict recorded again when its
    # change is delivered again (a crash before the target committed) is recorded once
    sa.Column("seq", sa.BigInteger, nullable=True),
    # row values kept after the conflict closed (capture.keep_conflict_values)
    sa.Column("kept", sa.Boolean, nullable=True),
)

events = sa.Table(
    "events", _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False, index=True),  # unix time
    sa.Column("map", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)

alerts = sa.Table(
    "alerts", _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("map", sa.String(200), nullable=False),
    sa.Column("rule", sa.String(200), nullable=False),
    sa.Column("action", sa.String(20), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    # the alert's life (see dualwrite.engine.monitor): ``at`` is when it last fired
    sa.Column("kind", sa.String(40), nullable=True),
    sa.Column("state", sa.String(20), nullable=True),  # firing, acknowledged, cleared
    sa.Column("first_at", sa.Float, nullable=True),
    sa.Column("fired", sa.Integer, nullable=True),
    sa.Column("acked_at", sa.Float, nullable=True),
    sa.Column("acked_by", sa.String(200), nullable=True),
    sa.Column("cleared_at", sa.Float, nullable=True),
)

map_activity = sa.Table(
    "map_activity", _md,
    sa.Column("map", sa.String(200), primary_key=True),
    sa.Column("last_applied_at", sa.String(40), nullable=False),
    sa.Column("applied", sa.BigInteger, nullable=False, default=0),
)


processes = sa.Table(
    "processes", _md,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("link", sa.String(200), nullable=False),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("role", sa.String(20), nullable=False),  # applier, standby, server
    sa.Column("started_at", sa.String(40), nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),  # unix time
    sa.Column("note", sa.Text, nullable=True),  # what it waits for, when it waits
)

#: The applier lease of each link (see dualwrite.engine.lease): who applies, until when, and
#: the epoch that fences every earlier holder out of the databases.
applier_leases = sa.Table(
    "applier_leases", _md,
    sa.Column("link", sa.String(200), primary_key=True),
    sa.Column("holder", sa.String(300), nullable=False),  # host:pid:nonce
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),  # unix time; 0: released
    sa.Column("acquired_at", sa.String(40), nullable=False),
)

#: one-way fields whose value on a row that initial sync created was filled by that side's own
#: column default (or trigger), not copied: the digest of the value it got (NULL until read
#: back after the write). Such a field is not written over the other side's value by a re-run
#: while it still holds that value (see docs/initial-sync.md). Digests, never the values:
#: the store keeps no business data beyond open inbox entries.
created_defaults = sa.Table(
    "created_defaults", _md,
    # the key digest before the side: reads and deletes ask for both sides' keys at once
    sa.Column("map", sa.String(200), primary_key=True),
    sa.Column("row_key", sa.String(64), primary_key=True),  # digest of the row's key
    sa.Column("side", sa.String(10), primary_key=True),  # the side the row was created on
    sa.Column("field", sa.String(200), primary_key=True),  # that side's column
    sa.Column("digest", sa.String(64), nullable=True),
)

#: the rows the chunk an initial sync is writing creates (key digests, per map and side),
#: until the values their own side filled in are read back into ``created_defaults``
sync_creating = sa.Table(
    "sync_creating", _md,
    sa.Column("map", sa.String(200), primary_key=True),
    sa.Column("side", sa.String(10), primary_key=True),
    sa.Column("key_digests", sa.Text, nullable=False),  # a JSON list
)

#: a process whose heartbeat is older than this many seconds is taken for dead
HEARTBEAT_TIMEOUT = 10.0

#: a conflict's detail once its row values are dropped
_NO_DETAIL = "{}"
_CONFLICT_VALUES_UPGRADE = "conflict row values kept while open only"
_SCHEMA_VERSION_KEY = "schema_version"

#: how long live writes may reuse the running maps and a principal's licences read earlier
CACHE_SECONDS = 1.0
