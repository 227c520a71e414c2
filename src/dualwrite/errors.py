"""The one error hierarchy of dualwrite.

Every error names what was wrong and what to do about it. The tree::

    DualwriteError                      base of everything dualwrite raises on purpose
    ├── ConfigError                     dualwrite.yaml or a map file cannot be used
    │   ├── MapSyntaxError              a field line, key, value map or option does not parse
    │   ├── FilterSyntaxError           an OData $filter expression does not parse
    │   ├── TemplateError               a published template table cannot be imported
    │   └── ValidationFailed            maps checked against real schemas: carries every Issue
    ├── LinkError                       an environment is linked elsewhere, or not linked
    ├── LicenceError                    a write to a restricted table without its licence
    ├── AccessDenied                    the token's role does not allow the request
    ├── RowNotFound                     an update or delete names a row that does not exist
    ├── ConnectorError                  a database refused or failed an operation
    │   ├── TransientConnectorError     worth retrying: connection lost, deadlock, timeout
    │   └── TerminalConnectorError      retrying will not help: bad credentials, missing table
    │       └── ConstraintViolation     the database rejected a row (``kind``: unique, not_null...)
    ├── RowError                        one row cannot be written or transformed (map, side,
    │                                   key, field, value); initial sync sends it to the inbox
    ├── ServiceUnavailable              a service a test or command needs is down
    └── DeltaTokenGone                  an OData delta token that cannot be resumed from

Driver exceptions are translated to ``ConnectorError`` at one choke point per connector
(``raise ... from exc``), so callers never see a driver-specific type. Which error a driver's
is follows from its code (SQLSTATE, error number, SQLite result code), never its words: see
docs/operations.md, "How errors are classified".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal


class DualwriteError(Exception):
    """Base class. ``hint`` says what the operator should do next."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        if hint:
            self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(DualwriteError):
    """The configuration or a map file cannot be used as written."""

    def __init__(
        self,
        message: str,
        *,
        hint: str = "",
        file: str | None = None,
        line: int | None = None,
        code: str = "DW100",
    ) -> None:
        where = f"{file}:{line}: " if file and line else (f"{file}: " if file else "")
        super().__init__(f"{where}{code} {message}", hint=hint)
        self.detail = message
        self.file = file
        self.line = line
        self.code = code

    def as_issue(self) -> Issue:
        """This problem as a validation finding (``dualwrite validate`` lists them all)."""
        return Issue(self.code, self.detail, self.hint, self.file, self.line)


class StateStoreOutdated(ConfigError):
    """The state store is at a schema version this dualwrite does not run on: an older one
    (upgrade it with `dualwrite state upgrade`) or a newer one."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message, hint=hint, code="DW008")


class MapSyntaxError(ConfigError):
    """A map file's field line, key, value map or option does not parse. ``problems``: every
    problem found in the same map file (this one first), where the parser looked on."""

    problems: list[MapSyntaxError]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.problems = [self]


class FilterSyntaxError(ConfigError):
    """An OData ``$filter`` expression does not parse. ``position`` is a 0-based offset."""

    def __init__(self, message: str, *, text: str = "", position: int | None = None,
                 hint: str = "", file: str | None = None, line: int | None = None) -> None:
        detail = message
        if text:
            detail = f"{message} in filter {text!r}"
            if position is not None:
                detail += f" at position {position}"
        super().__init__(
            detail,
            hint=hint or "write the filter in OData $filter syntax, e.g. "
            "\"customertypecode eq 3 and name ne null\"",
            file=file,
            line=line,
            code="DW109",
        )
        self.text = text
        self.position = position


class TemplateError(ConfigError):
    """A published dual-write template table cannot be imported."""


@dataclass(frozen=True)
class Issue:
    """One finding of validation: a stable code, where it is, what is wrong, what to do.

    ``severity``: "error" (the maps cannot run), "warning" (they run, and some values will
    be refused at their row or written as NULL) or "note" (a conversion is made, as said)."""

    code: str
    message: str
    hint: str
    file: str | None = None
    line: int | None = None
    map: str | None = None
    severity: str = "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        owner = f"[{self.map}] " if self.map else ""
        level = "" if self.is_error else f"{self.severity}: "
        return f"{where}{self.code} {level}{owner}{self.message} (hint: {self.hint})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code, "severity": self.severity, "message": self.message,
            "hint": self.hint, "file": self.file, "line": self.line, "map": self.map,
        }


class ValidationFailed(ConfigError):
    """Validation found problems; ``issues`` holds all of them (errors only), not just the
    first."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = [i for i in issues if i.is_error]
        lines = "\n".join(f"  {i}" for i in self.issues)
        DualwriteError.__init__(
            self,
            f"{len(self.issues)} problem(s) in the maps:\n{lines}",
            hint="fix each problem listed, then run `dualwrite validate` again",
        )
        self.file = None
        self.line = None
        self.code = "DW100"


class LinkError(DualwriteError):
    """An environment belongs to another link, or is not linked yet."""


class LeaseLost(LinkError):
    """This applier no longer holds its link's lease (another process took it over while
    this one was stopped, paused or cut off): it must commit nothing more, and stands by."""


class LicenceError(DualwriteError):
    """The writing principal lacks the licence a restricted map requires; nothing was
    written on either side."""

    def __init__(self, message: str, *, principal: str, licence: str, hint: str = "") -> None:
        super().__init__(message, hint=hint or f"grant it: dualwrite tokens create --principal "
                         f"{principal} --licence {licence}")
        self.principal = principal
        self.licence = licence


class AccessDenied(DualwriteError):
    """The token's role does not allow the request (reader < writer < admin); nothing was
    done."""

    def __init__(self, message: str, *, principal: str, role: str, needed: str,
                 hint: str = "") -> None:
        super().__init__(message, hint=hint or f"use a token with role {needed}: dualwrite "
                         f"tokens create --principal {principal} --role {needed}")
        self.principal = principal
        self.role = role
        self.needed = needed


class RowNotFound(DualwriteError):
    """An update or delete names a row that does not exist."""

    def __init__(self, environment: str, table: str, key: dict[str, Any]) -> None:
        super().__init__(f"{environment}: no row of {table!r} has key {key!r}",
                         hint="check the key, or create the row first")
        self.environment = environment
        self.table = table
        self.key = key


class ConnectorError(DualwriteError):
    """A database refused or failed an operation. ``code``: the driver's code for it where
    it gave one (PostgreSQL SQLSTATE, MariaDB error number, SQLite result code name), the
    code it was classified by (docs/operations.md, "How errors are classified")."""

    transient: bool = False

    def __init__(self, message: str, *, hint: str = "", environment: str | None = None,
                 code: str | int | None = None) -> None:
        prefix = f"{environment}: " if environment else ""
        super().__init__(prefix + message, hint=hint)
        self.environment = environment
        self.code = code


class TransientConnectorError(ConnectorError):
    """Worth retrying: connection lost, deadlock, serialization failure, timeout."""

    transient = True


class TerminalConnectorError(ConnectorError):
    """Retrying will not help without a change: bad credentials, missing table, bad SQL."""


class InDoubt(ConnectorError):
    """A live transaction's change set went to an OData service and what became of it could
    not be found out: the database side stays prepared (its rows locked) until recovery
    reads the rows back from the service and commits or rolls it back. Not worth retrying
    as such: the writes may have been made."""


#: What a :class:`ConstraintViolation` is: the row's fault, each of a kind callers decide by
#: (a unique violation answers 409 in OData), never by the message's words
ViolationKind = Literal["unique", "foreign_key", "not_null", "check", "value", "conflict",
                        "other"]


class ConstraintViolation(TerminalConnectorError):
    """The database rejected a write: not null, unique, foreign key, check, type or length.

    ``kind`` says which: "unique" (duplicate key), "foreign_key", "not_null", "check",
    "value" (a value of the wrong type, too long or out of range, or one the driver cannot
    send), "conflict" (an OData service's 412: the row changed since its ETag was read), or
    "other" (a constraint the database names no kind for, e.g. an exclusion).

    ``column`` and ``value``: the column the database's report names (and the value, as the
    database printed it, where it prints one), read by the backend that raised it from its
    own report (SQLSTATE diagnostics, MariaDB's and SQLite's messages, an OData error's
    ``target``); None when it names none. The engine reads these, never the message."""

    def __init__(self, message: str, *, hint: str = "", environment: str | None = None,
                 code: str | int | None = None, kind: ViolationKind = "other",
                 column: str | None = None, value: str | None = None) -> None:
        super().__init__(message, hint=hint, environment=environment, code=code)
        self.kind: ViolationKind = kind
        self.column = column
        self.value = value


class RowError(DualwriteError):
    """One row cannot be transformed or written. Names the map, side, table, key, field, value.

    ``kind``: "lookup" when a lookup or value map has no answer for the row's value (the
    applier records a "lookup" event), "row" for anything else."""

    def __init__(
        self,
        reason: str,
        *,
        map: str | None = None,
        side: str | None = None,
        table: str | None = None,
        key: Sequence[Any] | None = None,
        field: str | None = None,
        value: Any = None,
        hint: str = "",
        kind: Literal["row", "lookup"] = "row",
    ) -> None:
        parts = []
        if map:
            parts.append(f"map {map!r}")
        if side:
            parts.append(f"side {side}")
        if table:
            parts.append(f"table {table!r}")
        if key is not None:
            parts.append(f"key {tuple(key)!r}")
        if field:
            parts.append(f"field {field!r}")
            parts.append(f"value {value!r}")
        where = ", ".join(parts)
        super().__init__(f"{where}: {reason}" if where else reason, hint=hint)
        self.reason = reason
        self.map = map
        self.side = side
        self.table = table
        self.key = tuple(key) if key is not None else None
        self.field = field
        self.value = value
        self.kind = kind


class ServiceUnavailable(DualwriteError):
    """A service needed here is down. The hint says how to start it."""


class DeltaTokenGone(DualwriteError):
    """An OData delta token this service cannot resume from (expired, unknown, forged, or
    for another entity set): the client must read the entity set anew (HTTP 410)."""

    hint = ("read the entity set again with `Prefer: odata.track-changes` for a fresh delta "
            "link; tokens stay valid for serve.delta_retention_seconds after the changes "
            "they precede")
