"""Settling a parked key: what both sides hold once its inbox entry is resolved, retried or
discarded. Pure: plain data in, a version out; the applier reads the rows and writes the
result (see :meth:`dualwrite.engine.capture.Applier.replay_released`).

While an inbox entry is open, the keys it holds are frozen: changes to them made on either
side wait in the state store. The operator's decision names the version to keep, the *base*:

* ``resolve --pick SIDE`` (a conflict): that side's row as it is now;
* ``retry`` (a change that failed): the source side's row as it is now (the fix included);
* ``discard``: the target side's row as it is now (the failed change dropped).

Then every change that is not part of what was decided — for a conflict, those made after it
was detected; for a failed change, those made after its source transaction — is applied on
top, field by field, in the order it was made (its capture time): a later change is never
dropped, and a field it did not change keeps the decided value. Both sides then hold the
result, so they agree whatever order the changes arrived in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dualwrite.model.maps import Side

#: a row as settling sees it: the map's field index -> value, in the base side's terms
Fields = dict[int, Any]


@dataclass(frozen=True)
class Edit:
    """One waiting change of a key: when and where it was made, whether it deleted the row,
    the fields it changed and its whole new version (both in the base side's terms)."""

    at: dt.datetime
    side: Side
    seq: int
    deleted: bool
    changed: Mapping[int, Any]
    version: Mapping[int, Any]


def settle(base: Fields | None, edits: Sequence[Edit]) -> Fields | None:
    """The key's settled version: ``base`` (None: no row) with ``edits`` applied in the order
    they were made. A delete removes the row; a change to a row that is not there (a create,
    or an update of a row deleted before it) makes one from its whole version; an update sets
    the fields it changed."""
    row = dict(base) if base is not None else None
    for e in sorted(edits, key=lambda e: (e.at, e.side.value, e.seq)):
        if e.deleted:
            row = None
        elif row is None:
            row = dict(e.version)
        else:
            row.update(e.changed)
    return row


def changed_fields(old: Mapping[int, Any] | None, new: Mapping[int, Any],
                   same: Any) -> dict[int, Any]:
    """The fields of ``new`` that differ from ``old`` (all of them for a create), compared
    with ``same(a, b)``."""
    if old is None:
        return dict(new)
    return {i: v for i, v in new.items() if i not in old or not same(old[i], v)}
