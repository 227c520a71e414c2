"""dualwrite keeps the tables of two business applications in sync.

``dualwrite.open("dualwrite.yaml")`` returns a :class:`~dualwrite.engine.link.Link`.
"""

from __future__ import annotations

from dualwrite.engine.link import Link, open_link
from dualwrite.errors import (
    ConfigError,
    ConnectorError,
    ConstraintViolation,
    DualwriteError,
    FilterSyntaxError,
    Issue,
    LicenceError,
    LinkError,
    MapSyntaxError,
    RowError,
    RowNotFound,
    ServiceUnavailable,
    TemplateError,
    TerminalConnectorError,
    TransientConnectorError,
    ValidationFailed,
)

open = open_link

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConnectorError",
    "ConstraintViolation",
    "DualwriteError",
    "FilterSyntaxError",
    "Issue",
    "LicenceError",
    "Link",
    "LinkError",
    "MapSyntaxError",
    "RowError",
    "RowNotFound",
    "ServiceUnavailable",
    "TemplateError",
    "TerminalConnectorError",
    "TransientConnectorError",
    "ValidationFailed",
    "__version__",
    "open",
]
