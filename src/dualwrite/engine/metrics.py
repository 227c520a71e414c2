"""The counters of this process, in Prometheus' model (prometheus-client's default registry):
what the applier and live transactions did since the process started. Gauges read from the
state store and the change logs (lag, queues, the inbox, map states) are collected when
scraped, by :mod:`dualwrite.api.metrics`.

Names follow Prometheus' conventions: prefix ``dualwrite_``, base units (seconds), ``_total``
on counters (prometheus-client adds it), labels ``link``, ``map``, ``direction`` (``erp->crm``)
and small closed sets (operation, outcome, kind, resolution); never a key value.

Counting is cheap on purpose: the applier counts once per apply transaction, from counts it
already has, never once per change.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

CHANGES_CAPTURED = Counter(
    "dualwrite_changes_captured", "Captured changes read from a change log, to apply",
    ["link", "map", "direction", "operation"])
CHANGES_APPLIED = Counter(
    "dualwrite_changes_applied",
    "Captured changes handled by the applier, by outcome: applied (written), skipped "
    "(already there, superseded or already applied), parked (to the error inbox, or waiting "
    "behind an entry there)",
    ["link", "map", "direction", "operation", "outcome"])
TRANSACTIONS_APPLIED = Counter(
    "dualwrite_transactions_applied",
    "Source transactions applied (each in one target transaction, whole)",
    ["link", "direction"])
APPLY_ERRORS = Counter(
    "dualwrite_apply_errors",
    "Changes the applier could not apply, by kind: rejected (by the target), lookup, "
    "unreachable (a side, retried), failed (a map taken out)",
    ["link", "map", "direction", "kind"])
CONFLICTS = Counter(
    "dualwrite_conflicts",
    "Conflicts found, by resolution: left or right (the side whose version won by the "
    "map's policy), manual (parked in the inbox)",
    ["link", "map", "direction", "resolution"])
APPLY_DURATION = Histogram(
    "dualwrite_apply_duration_seconds",
    "Time to apply one batch of captured changes (one target transaction)",
    ["link", "direction"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
LIVE_TRANSACTIONS = Counter(
    "dualwrite_live_transactions",
    "Live transactions through dualwrite (Python API, OData), by outcome: committed (on both "
    "sides) or rolled_back (on both sides)",
    ["link", "outcome"])
APPLIER_LEADER = Gauge(
    "dualwrite_applier_leader",
    "1 while this process holds the link's applier lease and applies; 0 as a standby",
    ["link"])

_OPERATIONS = {"I": "create", "U": "update", "D": "delete"}


def operation(op: str) -> str:
    """A change's operation as a label: create, update or delete."""
    return _OPERATIONS.get(op, op)


#: (metric, label values) -> the labelled child: ``labels()`` takes a lock and builds a key
#: on every call, which a one-change apply transaction would pay several times over
_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: MetricWrapperBase, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once per label set."""
    key = (id(metric), values)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*values)
    return found


def count_changes(counter: Counter, link: str, direction: str,
                  items: Iterable[tuple[str, str]], *extra: str) -> None:
    """Add one to ``counter`` per (map, op) in ``items``, grouped first: one ``inc`` per
    distinct label set, whatever the number of changes. ``extra``: the values of the
    counter's labels after ``operation``."""
    for (name, op), n in Tally(items).items():
        child(counter, link, name, direction, operation(op), *extra).inc(n)


__all__ = ["APPLIER_LEADER", "APPLY_DURATION", "APPLY_ERRORS", "CHANGES_APPLIED",
           "CHANGES_CAPTURED", "CONFLICTS", "LIVE_TRANSACTIONS", "TRANSACTIONS_APPLIED",
           "child", "count_changes", "operation"]
