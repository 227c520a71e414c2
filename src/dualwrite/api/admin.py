"""Admin endpoints of ``dualwrite serve``: tokens and map control, for tokens with role admin.

JSON in and out; errors in the OData JSON error format, like the OData service's.

* ``GET /admin/tokens`` - every token (never the token itself), with its role and licences;
* ``POST /admin/tokens`` ``{"principal", "role"?, "licences"?}`` - a new token, returned once;
* ``DELETE /admin/tokens/{id}`` - revoke;
* ``GET /admin/maps`` - what ``dualwrite status`` shows;
* ``POST /admin/maps/{name}/{action}`` - ``start``, ``pause``, ``resume`` or ``stop`` one map.

Thin: each handler calls the engine as the CLI does.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dualwrite.api.auth import authenticate, authorize
from dualwrite.api.errors import ODataError, bad_request, error_response
from dualwrite.api.link_backend import LinkBackend
from dualwrite.engine.security import ROLES, create_token, effective

Handler = Callable[[Request], Awaitable[Response]]
_ACTIONS = ("start", "pause", "resume", "stop")


def admin_routes(backend: LinkBackend) -> list[Route]:
    """The ``/admin/...`` routes over ``backend``'s link."""
    link = backend.link

    def guarded(work: Callable[[Request, Any], Any]) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                principal = await run_in_threadpool(
                    authenticate, backend, request.headers.get("authorization"))
                await run_in_threadpool(authorize, backend, principal, request.method,
                                        request.url.path, needed="admin")
                body = await request.body()
                try:
                    doc = json.loads(body) if body.strip() else {}
                except ValueError:
                    raise bad_request("the request body is not JSON",
                                      code="InvalidBody") from None
                result = await run_in_threadpool(work, request, doc)
            except Exception as exc:  # every failure reaches the client as an OData error
                status, payload, headers = error_response(exc)
                return JSONResponse(payload, status_code=status, headers=headers)
            if result is None:
                return Response(status_code=204)
            status = 201 if request.method == "POST" and "token" in result else 200
            return JSONResponse(result, status_code=status)
        return endpoint

    def list_tokens(_request: Request, _doc: Any) -> dict[str, Any]:
        rows = link.state.list_tokens()
        for r in rows:
            roles, licences = link.state.principal(r["principal"])
            own = None if r["licences"] is None else frozenset(r["licences"])
            r["role"], held = effective(r["role"], own, roles, licences)
            r["licences"] = sorted(held)
        return {"tokens": rows}

    def new_token(_request: Request, doc: Any) -> dict[str, Any]:
        if not isinstance(doc, dict) or not isinstance(doc.get("principal"), str) \
                or not doc["principal"]:
            raise bad_request('send {"principal": "...", "role": "reader|writer|admin", '
                              '"licences": [...]}', target="principal", code="InvalidBody")
        licences = doc.get("licences")
        if licences is not None and (not isinstance(licences, list) or
                                     not all(isinstance(x, str) for x in licences)):
            raise bad_request("licences must be a list of table names", target="licences",
                              code="InvalidBody")
        role = doc.get("role") or "reader"
        if role not in ROLES:
            raise bad_request(f"unknown role {role!r}", target="role", code="InvalidRole",
                              hint=f"use one of {', '.join(ROLES)}")
        token = create_token(link.state, doc["principal"], role=role, licences=licences)
        return {"id": token.split("_")[1], "principal": doc["principal"], "token": token}

    def revoke(request: Request, _doc: Any) -> None:
        token_id = request.path_params["token_id"]
        if not link.state.revoke_token(token_id):
            raise ODataError(404, "NotFound", f"no active token with id {token_id!r}")

    def maps(_request: Request, _doc: Any) -> dict[str, Any]:
        return {"maps": link.status()}

    def control(request: Request, _doc: Any) -> dict[str, Any]:
        name, action = request.path_params["name"], request.path_params["action"]
        if action not in _ACTIONS:
            raise ODataError(404, "NotFound", f"there is no map action {action!r}",
                             hint=f"use one of {', '.join(_ACTIONS)}")
        if name not in {m.name for m in link.config.maps}:
            raise ODataError(404, "NotFound", f"there is no map {name!r}")
        if action == "start":
            link.start_maps([name])  # maps it depends on must run already (409 otherwise)
            done = [name]
        else:
            done = {"pause": link.pause_maps, "resume": link.resume_maps,
                    "stop": link.stop_maps}[action]([name])
        return {action: done}

    return [
        Route("/admin/tokens", guarded(list_tokens), methods=["GET"]),
        Route("/admin/tokens", guarded(new_token), methods=["POST"]),
        Route("/admin/tokens/{token_id}", guarded(revoke), methods=["DELETE"]),
        Route("/admin/maps", guarded(maps), methods=["GET"]),
        Route("/admin/maps/{name}/{action}", guarded(control), methods=["POST"]),
    ]


__all__ = ["admin_routes"]
