"""Distributed apply over NATS JetStream (``transport: {nats: ...}``).

A *reader* per link (``dualwrite run``, holding the link's applier lease, with its standby
and failover) publishes every committed source transaction as one message to the link's
stream (:mod:`.reader`); *workers* (``dualwrite run --worker``) own the stream's partitions
and apply its messages with the in-process applier's code (:mod:`.worker`). Rows are spread
over partitions by a hash of their map and key (:mod:`.partition`); a partition has one
message in flight, so a row's changes are applied in order; a transaction touching several
partitions waits at a barrier. docs/operations.md tells how to deploy it.
"""
