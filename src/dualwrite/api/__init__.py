"""The HTTP surface of dualwrite: each environment's tables as an OData v4 service.

:func:`create_app` / :func:`odata_mount` build the Starlette app or mount over an
:class:`ODataBackend` (the protocol the engine implements; :class:`ChangeTracking` for delta
links); see :mod:`dualwrite.api.odata`.
"""

from dualwrite.api.backend import (
    ChangeTracking,
    DeltaPage,
    ODataBackend,
    Principal,
    WriteKind,
    WriteOp,
)
from dualwrite.api.errors import LicenceError, NotFound, ODataError, PreconditionFailed
from dualwrite.api.odata import ODataService, create_app, create_router, odata_mount
from dualwrite.api.payload import etag_of

__all__ = [
    "ChangeTracking",
    "DeltaPage",
    "LicenceError",
    "NotFound",
    "ODataBackend",
    "ODataError",
    "ODataService",
    "PreconditionFailed",
    "Principal",
    "WriteKind",
    "WriteOp",
    "create_app",
    "create_router",
    "etag_of",
    "odata_mount",
]
