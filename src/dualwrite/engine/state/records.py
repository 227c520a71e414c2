"""What the state store hands out: audit entries, inbox entries, parked changes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


@dataclass
class _Pending:
    """A commit decision waiting for the group write."""

    xid: str
    participants: list[str]
    principal: str
    audit: list[AuditEntry]
    done: bool = False
    error: BaseException | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One committed write: who, where, which row, what."""

    environment: str
    table: str
    key: tuple[Any, ...]
    operation: str
    map: str | None = None


@dataclass(frozen=True)
class ParkedChange:
    """A captured change held in the state store behind an inbox entry: the ``blocker``
    (the change that failed, or met a conflict) or one ``waiting`` behind it."""

    id: int
    map: str
    key: tuple[Any, ...]  # the key it holds, as the left side has it
    source: str  # "left" or "right": the side it was captured on
    role: str
    change: dict[str, Any]


@dataclass
class InboxEntry:
    id: int
    map: str
    side: str
    key: tuple[Any, ...]
    operation: str
    reason: str
    payload: dict[str, Any] | None
    attempts: int
    first_at: str
    last_at: str
    status: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "map": self.map, "side": self.side, "key": list(self.key),
                "operation": self.operation, "reason": self.reason, "attempts": self.attempts,
                "first_at": self.first_at, "last_at": self.last_at, "status": self.status}


class MapState(StrEnum):
    """A map's state, as the state store keeps it and `dualwrite maps` shows it. The values
    are the stored text (a StrEnum: a member equals its text)."""

    #: no capture installed (never started, or stopped)
    STOPPED = "stopped"
    #: capture installed, initial sync running; changes queue meanwhile
    INITIALIZING = "initializing"
    #: initial sync done, the map not started yet
    SYNCED = "synced"
    #: changes flow both ways
    RUNNING = "running"
    #: changes queue, nothing applied
    PAUSED = "paused"
    #: applying what queued while paused; running once the queue is empty
    RESUMING = "resuming"
    #: stopped by an error (the map's events say which); `maps resume` retries
    FAILED = "failed"

    @property
    def applying(self) -> bool:
        """Whether the applier applies this map's changes."""
        return self in (MapState.RUNNING, MapState.RESUMING)

    @property
    def queueing(self) -> bool:
        """Whether changes queue without being applied (and count against the budget)."""
        return self in (MapState.INITIALIZING, MapState.PAUSED, MapState.RESUMING)

