"""Engine: everything between the connectors and the commands. A link and its bound maps
(``link``), initial sync, plan and verify (``initial_sync``, ``bulk``, ``diff``,
``verify``), live sync with two-phase commit and recovery (``live``, ``journal``), the
capture applier and its lease (``capture``, ``lease``, ``settle``; over NATS JetStream:
``jetstream``), OData change tracking and following (``delta``, ``odata_follow``), rules,
alerts, metrics and monitoring, and dualwrite's own state (``state``)."""
