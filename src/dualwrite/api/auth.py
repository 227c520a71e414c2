"""Who a request is, and whether its role allows it: the HTTP side of
:mod:`dualwrite.engine.security`, shared by the OData service and the admin endpoints.

Every request names a bearer token (401 otherwise); :func:`authorize` is the one place where
a request is checked against the token's role (403 in the OData error format otherwise,
audited through the backend, nothing done).
"""

from __future__ import annotations

from dualwrite.api.backend import ODataBackend, Principal
from dualwrite.api.errors import ODataError
from dualwrite.engine.security import check_role, required_role
from dualwrite.errors import AccessDenied

WWW_AUTHENTICATE = 'Bearer realm="dualwrite"'


def authenticate(backend: ODataBackend, authorization: str | None) -> Principal:
    """The principal of an ``Authorization: Bearer <token>`` header; 401 otherwise."""
    if not authorization or not authorization.strip():
        raise ODataError(401, "Unauthorized",
                         "authentication required: send 'Authorization: Bearer <token>'",
                         headers={"WWW-Authenticate": WWW_AUTHENTICATE})
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ODataError(401, "Unauthorized",
                         "the Authorization header must be 'Bearer <token>'",
                         headers={"WWW-Authenticate":
                                  WWW_AUTHENTICATE + ', error="invalid_request"'})
    principal = backend.authenticate(token.strip())
    if principal is None:
        raise ODataError(401, "Unauthorized", "the bearer token is not valid",
                         headers={"WWW-Authenticate":
                                  WWW_AUTHENTICATE + ', error="invalid_token"'})
    return principal


def authorize(backend: ODataBackend, principal: Principal, method: str, url_path: str, *,
              environment: str | None = None, needed: str | None = None) -> None:
    """Raise AccessDenied (403), after auditing it through ``backend.refused``, when the
    principal's role does not include ``needed`` (by default what ``method`` needs: reads
    reader, writes writer)."""
    needed = needed or required_role(method)
    try:
        check_role(principal, needed, what=f"{method} {url_path}")
    except AccessDenied as exc:
        backend.refused(principal, environment, f"{method} {url_path}", f"role {needed}",
                        exc.message)
        raise


__all__ = ["WWW_AUTHENTICATE", "authenticate", "authorize"]
