"""dualwrite keeps the tables of two business applications in sync.

``dualwrite.open("dualwrite.yaml")`` returns a :class:`~dualwrite.engine.link.Link`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from dualwrite.engine.link import Link, open_link
from dualwrite.engine.rules import before_write
from dualwrite.errors import (
    AccessDenied,
    ConfigError,
    ConnectorError,
    ConstraintViolation,
    DeltaTokenGone,
    DualwriteError,
    FilterSyntaxError,
    InDoubt,
    Issue,
    LeaseLost,
    LicenceError,
    LinkError,
    MapSyntaxError,
    RowError,
    RowNotFound,
    ServiceUnavailable,
    StateStoreOutdated,
    TemplateError,
    TerminalConnectorError,
    TransientConnectorError,
    ValidationFailed,
)

open = open_link

try:
    __version__ = _version("dualwrite")  # one source: the installed package's metadata
except PackageNotFoundError:  # pragma: no cover - imported from a source tree not installed
    __version__ = "0+unknown"

__all__ = [
    "AccessDenied",
    "ConfigError",
    "ConnectorError",
    "ConstraintViolation",
    "DeltaTokenGone",
    "DualwriteError",
    "FilterSyntaxError",
    "InDoubt",
    "Issue",
    "LeaseLost",
    "LicenceError",
    "Link",
    "LinkError",
    "MapSyntaxError",
    "RowError",
    "RowNotFound",
    "ServiceUnavailable",
    "StateStoreOutdated",
    "TemplateError",
    "TerminalConnectorError",
    "TransientConnectorError",
    "ValidationFailed",
    "__version__",
    "before_write",
    "open",
]
