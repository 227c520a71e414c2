"""The applier of captured changes, in two parts: :mod:`.core`, the rules (ordering, runs,
parking, conflict decisions, positions) with no I/O and no SQL, and the driver that reads the
change logs and writes through the connectors (:mod:`dualwrite.engine.capture`)."""
