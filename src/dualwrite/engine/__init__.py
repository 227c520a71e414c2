"""Engine: initial sync, plan, verify, link bookkeeping and dualwrite's own state."""
