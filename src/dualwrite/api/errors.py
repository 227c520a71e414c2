"""Errors of the OData layer, and how every dualwrite error becomes an OData error response.

The classes defined here extend :class:`dualwrite.errors.DualwriteError` (the one
hierarchy); the engine's :class:`dualwrite.errors.LicenceError` (403) is re-exported, and
:class:`dualwrite.errors.AccessDenied` (a token's role) is a 403 too:

* :class:`ODataError` - a request the layer refuses itself (bad syntax, unknown property,
  wrong media type, ...). It carries the HTTP status, an OData error ``code`` and ``target``.
* :class:`NotFound` - the addressed row does not exist (404); the engine's
  :class:`dualwrite.errors.RowNotFound` maps to 404 as well.
* :class:`PreconditionFailed` - an ``If-Match``/``If-None-Match`` condition failed (412).

:func:`error_response` maps any exception to ``(status, body, headers)`` where body is the
OData JSON error object ``{"error": {"code", "message", "target"?, "details"?}}``. An
unexpected exception becomes a 500 whose message says nothing about the internals: stack
traces go to the log only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from dualwrite.errors import (
    AccessDenied,
    ConfigError,
    ConnectorError,
    ConstraintViolation,
    DeltaTokenGone,
    DualwriteError,
    FilterSyntaxError,
    LicenceError,
    LinkError,
    RowError,
    RowNotFound,
    ServiceUnavailable,
    TransientConnectorError,
    ValidationFailed,
)

__all__ = [
    "LicenceError",
    "NotFound",
    "ODataError",
    "PreconditionFailed",
    "error_body",
    "error_response",
]

log = logging.getLogger("dualwrite.api")

#: Seconds a client should wait before retrying after a transient failure (503).
RETRY_AFTER_SECONDS = 5


class ODataError(DualwriteError):
    """A request refused by the OData layer: HTTP ``status``, OData error ``code``, optional
    ``target`` (the property, option or header at fault) and ``details`` (more errors, each
    a dict with ``code``, ``message`` and optionally ``target``)."""

    def __init__(self, status: int, code: str, message: str, *, target: str | None = None,
                 details: Sequence[Mapping[str, Any]] = (), hint: str = "",
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code
        self.target = target
        self.details = [dict(d) for d in details]
        self.headers = dict(headers or {})


class NotFound(DualwriteError):
    """The addressed row (or environment, or entity set) does not exist."""

    def __init__(self, message: str, *, hint: str = "", table: str | None = None,
                 key: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.table = table
        self.key = dict(key) if key is not None else None


class PreconditionFailed(DualwriteError):
    """An ``If-Match`` / ``If-None-Match`` condition does not hold for the current row."""

    def __init__(self, message: str, *, hint: str = "", table: str | None = None,
                 key: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, hint=hint or "read the entity again for its current ETag")
        self.table = table
        self.key = dict(key) if key is not None else None


def bad_request(message: str, *, target: str | None = None, code: str = "BadRequest",
                hint: str = "") -> ODataError:
    """Shorthand for a 400 :class:`ODataError`."""
    return ODataError(400, code, message, target=target, hint=hint)


def error_body(code: str, message: str, *, target: str | None = None,
               details: Sequence[Mapping[str, Any]] = (), hint: str = "") -> dict[str, Any]:
    """The OData JSON error object."""
    error: dict[str, Any] = {"code": code, "message": message}
    if target:
        error["target"] = target
    if details:
        error["details"] = [dict(d) for d in details]
    if hint:
        # innererror is the format's free-form slot; the hint tells the caller what to do
        error["innererror"] = {"hint": hint}
    return {"error": error}


def _unique_cause(exc: BaseException) -> bool:
    """Whether a database refused ``exc``'s row as a duplicate: a unique ConstraintViolation
    (its kind, set by the connector from the database's code) in its chain of causes."""
    seen: set[int] = set()
    cause = exc.__cause__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConstraintViolation):
            return cause.kind == "unique"
        cause = cause.__cause__
    return False


def error_response(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, body, headers)`` for an exception raised while serving a request."""
    headers: dict[str, str] = {}
    if isinstance(exc, ODataError):
        return exc.status, error_body(exc.code, exc.message, target=exc.target,
                                      details=exc.details, hint=exc.hint), dict(exc.headers)
    if isinstance(exc, DualwriteError):
        status, code, target, details = _classify(exc)
        if status == 503:
            headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        if status >= 500:
            log.warning("OData request failed: %s", exc)
        # ConfigError prefixes its message with file, line and code; the OData error has
        # its own code slot, so the plain detail reads better there
        message = getattr(exc, "detail", None) if isinstance(exc, ConfigError) else None
        return status, error_body(code, message or exc.message, target=target,
                                  details=details, hint=exc.hint), headers
    log.error("unexpected error serving an OData request", exc_info=exc)
    return 500, error_body("InternalError", "the service failed to process the request; "
                           "the details are in the service log"), headers


def _classify(exc: DualwriteError) -> tuple[int, str, str | None, list[dict[str, Any]]]:
    """(status, code, target, details) for a dualwrite error."""
    if isinstance(exc, NotFound | RowNotFound):
        return 404, "NotFound", None, []
    if isinstance(exc, DeltaTokenGone):
        return 410, "Gone", "$deltatoken", []
    if isinstance(exc, PreconditionFailed):
        return 412, "PreconditionFailed", None, []
    if isinstance(exc, AccessDenied):
        return 403, "Forbidden", None, [{"code": "Role", "message": exc.needed,
                                         "target": exc.principal}]
    if isinstance(exc, LicenceError):
        return 403, "LicenceRequired", None, [{"code": "Licence", "message": exc.licence,
                                                "target": exc.principal}]
    if isinstance(exc, RowError):
        # a row a database refused as a duplicate is a conflict with the data, on whichever
        # side of the link it happened (the engine's RowError keeps the driver's error as
        # its cause)
        if _unique_cause(exc):
            return 409, "Conflict", exc.field, []
        return 400, "RowError", exc.field, []
    if isinstance(exc, ConstraintViolation):
        if exc.kind == "unique":  # set by the connector from the database's code
            return 409, "Conflict", None, []
        return 400, "ConstraintViolation", None, []
    if isinstance(exc, TransientConnectorError):
        return 503, "ServiceUnavailable", None, []
    if isinstance(exc, FilterSyntaxError):
        return 400, "InvalidFilter", "$filter", []
    if isinstance(exc, ValidationFailed):
        details = [{"code": i.code, "message": i.message, "target": i.map or ""}
                   for i in exc.issues]
        return 400, "ValidationFailed", None, details
    if isinstance(exc, ConfigError):
        return 400, "ConfigError", None, []
    if isinstance(exc, LinkError):
        return 409, "LinkError", None, []
    if isinstance(exc, ServiceUnavailable):
        return 503, "ServiceUnavailable", None, []
    if isinstance(exc, ConnectorError):
        return 500, "ConnectorError", None, []
    return 500, type(exc).__name__, None, []
