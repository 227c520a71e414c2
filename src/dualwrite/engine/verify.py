"""Verify: prove, through the maps, that both sides agree, and name every row that does not."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dualwrite.connectors.base import Connector
from dualwrite.engine.diff import MapDiffer
from dualwrite.engine.initial_sync import chunks, created_defaults, creating
from dualwrite.engine.state import StateStore
from dualwrite.model.binding import BoundMap
from dualwrite.model.maps import Side


@dataclass
class Difference:
    map: str
    key: list[Any]
    kind: str  # "missing-left" | "missing-right" | "differs" | "untransformable"
    fields: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"map": self.map, "key": self.key, "kind": self.kind}
        if self.fields:
            d["fields"] = self.fields
        if self.reason:
            d["reason"] = self.reason
        return d


@dataclass
class VerifyResult:
    map: str
    compared: int = 0
    agreeing: int = 0
    differences: int = 0
    details: list[Difference] = field(default_factory=list)
    truncated: bool = False
    seconds: float = 0.0
    #: differences per field line (all of them, listed or not); rows missing on a side
    #: under ``missing-left`` / ``missing-right``
    by_field: dict[str, int] = field(default_factory=dict)
    #: rows inside each side's filter whose key is null: they cannot be compared
    null_keys: dict[str, int] = field(default_factory=lambda: {"left": 0, "right": 0})
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Both sides agree: no difference, and no row left out for want of a key."""
        return self.differences == 0 and not any(self.null_keys.values())

    def as_dict(self) -> dict[str, Any]:
        return {"map": self.map, "ok": self.ok, "compared": self.compared,
                "agreeing": self.agreeing, "differences": self.differences,
                "truncated": self.truncated, "seconds": round(self.seconds, 3),
                "by_field": dict(self.by_field), "null_keys": dict(self.null_keys),
                "warnings": self.warnings, "details": [d.as_dict() for d in self.details]}


def verify_map(bound: BoundMap, connectors: dict[Side, Connector], *, batch_size: int = 5000,
               max_details: int | None = 1000, state: StateStore | None = None,
               progress: Callable[[str, int, int | None], None] | None = None) -> VerifyResult:
    """Stream both sides by key and compare every mapped field. Memory is bounded by the
    batch size and ``max_details`` (differences past it are counted, not kept; None keeps
    them all). With the
    link's ``state``, a one-way field that a row created by initial sync filled from its own
    side's default is judged as initial sync judges it (see :meth:`MapDiffer.classify`)."""
    differ = MapDiffer(bound, connectors)
    result = VerifyResult(bound.name)
    started = time.monotonic()

    stopped = creating(state, bound.name) if state is not None else {}
    for s in Side:
        n = result.null_keys[s.value] = differ.null_keys(s)
        if n:
            result.warnings.append(differ.null_key_warning(s, n))

    def note(d: Difference) -> None:
        result.differences += 1
        for name in [f["field"] for f in d.fields] or [d.kind]:
            result.by_field[name] = result.by_field.get(name, 0) + 1
        if max_details is None or len(result.details) < max_details:
            result.details.append(d)
        else:
            result.truncated = True

    for chunk in chunks(differ.entries(after=None, batch_size=batch_size), batch_size):
        result.compared += len(chunk)
        paired = []
        for e in chunk:
            if e.left is None:
                note(Difference(bound.name, list(e.key), "missing-left",
                                reason=f"row exists only in {bound.right_table}"))
            elif e.right is None:
                note(Difference(bound.name, list(e.key), "missing-right",
                                reason=f"row exists only in {bound.left_table}"))
            else:
                paired.append(e)
        c = differ.classify(paired, report_all=True, created=created_defaults(
            state, differ, paired, stopped) if state is not None else None)
        result.agreeing += c.unchanged
        for key, diffs in c.differing:
            note(Difference(bound.name, list(key), "differs",
                            [{"field": d.field, "left": d.left, "right": d.right}
                             for d in diffs]))
        if progress:
            progress(bound.name, result.compared, None)
    result.seconds = time.monotonic() - started
    return result
