"""``POST /odata/<env>/$batch`` in both formats: JSON (OData 4.01) and multipart/mixed.

Units run in request order. A request outside a group runs on its own (a write is one
``apply`` call). An atomicity group (JSON) or change set (multipart) is planned request by
request - URL, body, key, preconditions checked, ``$<id>`` references resolved - and then
applied with ONE :meth:`ODataBackend.apply` call holding all its ops: all or nothing. If any
request of the group fails, or ``apply`` raises, no op is applied and every request of the
group fails: the one at fault (when known) with its error, the others with 424 Failed
Dependency; in the multipart format the change set's response is that one error.

References (``$<id>`` is the request's ``id`` / ``Content-ID``):

* ``$<id>`` as the first segment of a URL stands for the entity that request created or
  returned (``PATCH $1``); inside the same group this needs the key to be known before the
  group is applied, i.e. sent in the create's body (a server-generated key is not known
  until the transaction commits);
* ``$<id>/<Property>`` as a whole JSON string in a body, or inside ``$filter``, is that
  property's value in the entity of request ``<id>``;
* ``If-Match: $<id>`` is the ETag of that request's entity.

JSON ``dependsOn`` is honoured (a request depending on a failed one gets 424); multipart
requests run in order and stop at the first failure unless ``Prefer: continue-on-error``.
GET requests are not allowed inside a group: they run individually, outside it.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from dualwrite.api.errors import ODataError, bad_request
from dualwrite.api.literals import key_predicate
from dualwrite.api.multipart import (
    Part,
    boundary_of,
    parse_http_request,
    parse_multipart,
    render_http_response,
    render_multipart,
)
from dualwrite.api.odata import (
    Context,
    HttpRequest,
    HttpResponse,
    ODataService,
    Overlay,
    Target,
    WritePlan,
    json_response,
)
from dualwrite.api.payload import dumps, loads
from dualwrite.api.query import (
    encode_query,
    parse_prefer,
    parse_query,
    substitute_outside_quotes,
)

__all__ = ["run_batch"]

#: Most requests one batch may hold.
MAX_REQUESTS = 1000
_METHODS = frozenset({"GET", "POST", "PATCH", "PUT", "DELETE"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9\-._~]+")
_VALUE_REF = re.compile(r"\$([A-Za-z0-9\-._~]+)/([^\W\d]\w*)")
#: "$name" first segments that are system resources, not request references
_SYSTEM = frozenset({"$batch", "$crossjoin", "$all", "$entity", "$root", "$id", "$metadata"})


@dataclass
class Item:
    """One request of the batch, in either format."""

    id: str | None
    method: str
    url: str
    headers: dict[str, str]
    body: bytes = b""
    json: Any = None
    has_json: bool = False
    depends_on: list[str] = field(default_factory=list)
    group: str | None = None
    condition: bool = False  # the JSON 'if' member, which is not supported


@dataclass
class Unit:
    """A request on its own, or an atomicity group / change set."""

    items: list[Item]
    group: str | None = None


class FailedDependency(Exception):
    """A request refers to a request that failed."""


class _Batch:
    def __init__(self, service: ODataService, ctx: Context) -> None:
        self.service = service
        self.ctx = ctx
        self.results: dict[str, HttpResponse] = {}
        self.outcome: dict[str, bool] = {}  # request id or group id -> succeeded
        self.ids: set[str] = set()

    # ------------------------------------------------------------------ references

    def _referenced(self, ref: str, pending: dict[str, WritePlan]) -> HttpResponse | WritePlan:
        if ref in pending:
            return pending[ref]
        if ref in self.results:
            result = self.results[ref]
            if not result.ok:
                raise FailedDependency(ref)
            return result
        raise bad_request(f"${ref} refers to no earlier request of this batch",
                          code="InvalidReference")

    def _entity_path(self, ref: str, pending: dict[str, WritePlan]) -> tuple[str, int | None]:
        """The path of the entity request ``ref`` is about, and, for an entity created
        earlier in the same change set with a key the database generates, the index of the
        op creating it (the path is then the entity set's)."""
        target = self._referenced(ref, pending)
        if isinstance(target, WritePlan):
            if target.key_row is None:
                if target.op.kind == "delete":
                    raise bad_request(f"${ref} refers to an entity request {ref} deleted",
                                      code="InvalidReference")
                return target.es.name, target.op.ref if target.op.ref is not None \
                    else target.index
            return target.es.name + key_predicate(target.es, target.key_row), None
        if target.entity_path is None:
            raise bad_request(f"${ref} refers to a request that returned no entity",
                              code="InvalidReference")
        return target.entity_path, None

    def _value(self, ref: str, name: str, pending: dict[str, WritePlan]) -> Any:
        target = self._referenced(ref, pending)
        props = target.known if isinstance(target, WritePlan) else (target.entity or {})
        for key, value in props.items():
            if key.casefold() == name.casefold():
                return value
        when = " before its change set commits" if isinstance(target, WritePlan) else ""
        raise bad_request(f"${ref}/{name}: the entity of request {ref} has no value for "
                          f"{name!r}{when}", code="InvalidReference")

    def _substitute_body(self, value: Any, pending: dict[str, WritePlan]) -> Any:
        if isinstance(value, str):
            m = _VALUE_REF.fullmatch(value)
            # only a reference to a request of this batch is one; other text stays data
            if m and m.group(1) in self.ids:
                return self._value(m.group(1), m.group(2), pending)
            return value
        if isinstance(value, dict):
            return {k: self._substitute_body(v, pending) for k, v in value.items()}
        if isinstance(value, list):
            return [self._substitute_body(v, pending) for v in value]
        return value

    def _filter_literal(self, value: Any) -> str:
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return "'" + value.replace("'", "''") + "'"
        return dumps(value).decode("utf-8")

    def request(self, item: Item, pending: dict[str, WritePlan]) -> HttpRequest:
        """The inner request of ``item`` with every reference resolved."""
        url = item.url.strip()
        root = urlsplit(self.ctx.root)
        if "://" in url.split("?")[0]:
            try:
                parts = urlsplit(url)
            except ValueError:
                raise bad_request(f"{url!r} is not a valid URL", code="InvalidUrl") from None
            if (parts.scheme, parts.netloc) != (root.scheme, root.netloc):
                raise bad_request(f"{url!r} is not a URL of this service", code="InvalidUrl")
            path, query = parts.path, parts.query
        else:
            path, _, query = url.partition("?")
        if path.startswith("/"):
            if not (path + "/").startswith(root.path) and path != root.path.rstrip("/"):
                raise bad_request(f"{url!r} is not below this service's root {root.path}",
                                  code="InvalidUrl")
            path = path[len(root.path):]
        path = unquote(path)
        op_ref: int | None = None
        if path.startswith("$"):
            first, sep, rest = path.partition("/")
            if first not in _SYSTEM and _REQUEST_ID.fullmatch(first[1:]):
                entity, op_ref = self._entity_path(first[1:], pending)
                if op_ref is not None and rest:
                    raise bad_request(f"{path!r}: only the entity {first} itself can be "
                                      "addressed before its change set commits",
                                      code="InvalidReference")
                path = entity + sep + rest
        if query and "$" in unquote(query):
            query = self._rewrite_query(query, pending)
        headers = dict(item.headers)
        for name in ("if-match", "if-none-match"):
            value = headers.get(name, "").strip()
            if value.startswith("$") and value[1:] in self.ids:
                target = self._referenced(value[1:], pending)
                etag = target.etag if isinstance(target, HttpResponse) else None
                if etag is None:
                    raise bad_request(f"{name}: {value} refers to a request without an ETag",
                                      code="InvalidReference")
                headers[name] = etag
        body_json, has_json = item.json, item.has_json
        body = item.body
        if not has_json and body.strip() and item.method in ("POST", "PATCH", "PUT"):
            content_type = headers.get("content-type", "application/json")
            if content_type.split(";")[0].strip().lower() == "application/json":
                body_json, has_json = loads(body), True
        if has_json:
            body_json = self._substitute_body(body_json, pending)
        return HttpRequest(item.method, path, query, headers, body, body_json, has_json,
                           ref=op_ref)

    def _rewrite_query(self, query: str, pending: dict[str, WritePlan]) -> str:
        parsed = parse_query(query)
        pairs = []
        for name, value in parsed.pairs:
            if name.lower() == "$filter":
                def ref(m: re.Match[str]) -> str:
                    if m.group(1) not in self.ids:
                        return m.group()
                    return self._filter_literal(self._value(m.group(1), m.group(2), pending))
                value = substitute_outside_quotes(value, _VALUE_REF, ref)
            pairs.append((name, value))
        return encode_query(pairs)

    # ------------------------------------------------------------------ execution

    def _failed_dependency(self, item: Item, on: str) -> HttpResponse:
        return self.service.error(ODataError(
            424, "FailedDependency", f"not executed: request or group {on!r}, which this "
            "request depends on, failed", target=item.id))

    def _blocked_by(self, item: Item) -> str | None:
        for dep in item.depends_on:
            if not self.outcome.get(dep, False):
                return dep
        return None

    def run_single(self, item: Item) -> HttpResponse:
        blocked = self._blocked_by(item)
        if blocked is not None:
            response = self._failed_dependency(item, blocked)
        elif item.condition:
            response = self.service.error(ODataError(
                501, "NotImplemented", "the 'if' member of a batch request is not supported",
                target=item.id))
        else:
            try:
                response = self.service.serve(self.ctx, self.request(item, {}))
            except FailedDependency as dep:
                response = self._failed_dependency(item, str(dep))
            except Exception as exc:  # one request's failure is its own response
                response = self.service.error(exc)
        self._record(item, response)
        return response

    def _record(self, item: Item, response: HttpResponse) -> None:
        if item.id is not None:
            self.results[item.id] = response
            self.outcome[item.id] = response.ok

    def run_group(self, unit: Unit) -> tuple[list[HttpResponse], HttpResponse | None]:
        """Responses per request of the group, and the group's error (None on success)."""
        items = unit.items
        members = {i.id for i in items if i.id is not None}
        pending: dict[str, WritePlan] = {}
        plans: list[WritePlan] = []
        overlay = Overlay()
        for index, item in enumerate(items):
            blocked = next((d for d in item.depends_on
                            if d not in members and d != unit.group
                            and not self.outcome.get(d, False)), None)
            try:
                if blocked is not None:
                    raise FailedDependency(blocked)
                if item.condition:
                    raise ODataError(501, "NotImplemented",
                                     "the 'if' member of a batch request is not supported",
                                     target=item.id)
                if item.method == "GET":
                    raise bad_request("a GET request cannot be part of an atomicity group or "
                                      "change set; send it on its own in the batch",
                                      code="InvalidBatch", target=item.id)
                request = self.request(item, pending)
                self.service.authorize(self.ctx, request.method, request.path)
                target = self.service.resolve(self.ctx, request.path)
                if request.ref is not None and target.kind == "collection":
                    target = Target("entity", target.es, {}, ref=request.ref)
                if target.kind not in ("collection", "entity") or \
                        (target.kind == "collection") != (request.method == "POST"):
                    allowed = ["POST"] if target.kind == "collection" else \
                        ["PATCH", "PUT", "DELETE"]
                    raise ODataError(405, "MethodNotAllowed",
                                     f"{request.method} is not allowed on {request.path!r} in "
                                     "a change set", headers={"Allow": ", ".join(allowed)})
                plan = self.service.plan_write(self.ctx, request, target, overlay)
            except FailedDependency as dep:
                return self._fail_group(unit, index, self._failed_dependency(item, str(dep)))
            except Exception as exc:  # the group fails as a whole
                return self._fail_group(unit, index, self.service.error(exc))
            plans.append(plan)
            if item.id is not None:
                pending[item.id] = plan
        try:
            rows = self.service.backend.apply(self.ctx.env, self.ctx.principal,
                                              [p.op for p in plans])
            if len(rows) != len(plans):
                raise RuntimeError(f"backend.apply returned {len(rows)} rows for "
                                   f"{len(plans)} ops")
        except Exception as exc:  # nothing was applied
            at = getattr(exc, "op_index", None)
            culprit = at if isinstance(at, int) and 0 <= at < len(items) else None
            return self._fail_group(unit, culprit, self.service.error(exc))
        responses = [self.service.render_write(self.ctx, p, r)
                     for p, r in zip(plans, rows, strict=True)]
        for item, response in zip(items, responses, strict=True):
            self._record(item, response)
        if unit.group is not None:
            self.outcome[unit.group] = True
        return responses, None

    def _fail_group(self, unit: Unit, index: int | None,
                    error: HttpResponse) -> tuple[list[HttpResponse], HttpResponse]:
        responses = []
        culprit = unit.items[index] if index is not None else None
        for item in unit.items:
            if culprit is None or item is culprit:
                response = error
            else:
                response = self.service.error(ODataError(
                    424, "FailedDependency",
                    f"not applied: request {culprit.id!r} of the same atomicity group failed, "
                    "so none of the group's changes were made", target=item.id))
            responses.append(response)
            self._record(item, response)
        if unit.group is not None:
            self.outcome[unit.group] = False
        return responses, error


# ---------------------------------------------------------------------------------- JSON


def _json_items(payload: Any) -> list[Unit]:
    """Validate a JSON batch body and group its requests into units (400 if malformed)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("requests"), list):
        raise bad_request("a JSON batch body is an object with a 'requests' array",
                          code="InvalidBatch")
    requests = payload["requests"]
    if len(requests) > MAX_REQUESTS:
        raise bad_request(f"a batch may hold at most {MAX_REQUESTS} requests",
                          code="InvalidBatch")
    units: list[Unit] = []
    seen: set[str] = set()
    groups: set[str] = set()
    for n, raw in enumerate(requests):
        where = f"requests[{n}]"
        if not isinstance(raw, dict):
            raise bad_request(f"{where} is not an object", code="InvalidBatch")
        rid = raw.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool):
            rid = str(rid)
        if not isinstance(rid, str) or not _REQUEST_ID.fullmatch(rid):
            raise bad_request(f"{where}: 'id' must be a string of letters, digits and -._~",
                              code="InvalidBatch")
        if rid in seen or rid in groups:
            raise bad_request(f"{where}: the id {rid!r} is used twice", code="InvalidBatch")
        method = raw.get("method")
        if not isinstance(method, str) or method.upper() not in _METHODS:
            raise bad_request(f"{where}: 'method' must be one of get, post, patch, put, "
                              "delete", code="InvalidBatch", target=rid)
        url = raw.get("url")
        if not isinstance(url, str) or not url.strip():
            raise bad_request(f"{where}: 'url' must be a non-empty string", code="InvalidBatch",
                              target=rid)
        group = raw.get("atomicityGroup")
        if group is not None and (not isinstance(group, str) or
                                  not _REQUEST_ID.fullmatch(group) or group in seen):
            raise bad_request(f"{where}: 'atomicityGroup' must be a request-id-like string "
                              "different from every request id", code="InvalidBatch",
                              target=rid)
        depends = raw.get("dependsOn", [])
        if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends):
            raise bad_request(f"{where}: 'dependsOn' must be an array of strings",
                              code="InvalidBatch", target=rid)
        for dep in depends:
            if dep not in seen and dep not in groups and dep != group:
                raise bad_request(f"{where}: dependsOn {dep!r} names no earlier request or "
                                  "group (forward references are not allowed)",
                                  code="InvalidBatch", target=rid)
        headers = raw.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(v, str)
                                                    for v in headers.values()):
            raise bad_request(f"{where}: 'headers' must be an object of strings",
                              code="InvalidBatch", target=rid)
        has_body = raw.get("body") is not None
        if has_body and method.upper() in ("GET", "DELETE"):
            raise bad_request(f"{where}: a {method.upper()} request has no body",
                              code="InvalidBatch", target=rid)
        item = Item(rid, method.upper(), url, {k.lower(): v for k, v in headers.items()},
                    json=raw.get("body"), has_json=has_body, depends_on=list(depends),
                    group=group, condition="if" in raw)
        if group is not None and units and units[-1].group == group:
            units[-1].items.append(item)
        else:
            if group is not None and group in groups:
                raise bad_request(f"{where}: the requests of atomicity group {group!r} must be "
                                  "adjacent", code="InvalidBatch", target=rid)
            if group is not None:
                groups.add(group)
            units.append(Unit([item], group))
        seen.add(rid)
    overlap = seen & groups
    if overlap:
        raise bad_request(f"{sorted(overlap)[0]!r} is both a request id and an atomicity "
                          "group", code="InvalidBatch")
    return units


def _json_response_object(item: Item, response: HttpResponse) -> dict[str, Any]:
    out: dict[str, Any] = {"id": item.id}
    if item.group is not None:
        out["atomicityGroup"] = item.group
    out["status"] = response.status
    headers = {k.lower(): v for k, v in response.headers.items() if k.lower() != "odata-version"}
    if headers:
        out["headers"] = headers
    content_type = headers.get("content-type", "")
    if response.payload is not None:
        out["body"] = response.payload
    elif response.body:
        if content_type.startswith("text/"):
            out["body"] = response.body.decode("utf-8", "replace")
        else:
            out["body"] = base64.urlsafe_b64encode(response.body).decode("ascii")
    return out


def _run_json(batch: _Batch, request: HttpRequest) -> HttpResponse:
    units = _json_items(loads(request.body, what="batch request body"))
    batch.ids = {i.id for u in units for i in u.items if i.id is not None}
    stop_on_error = parse_prefer(request.header("prefer")).continue_on_error is False
    out: list[dict[str, Any]] = []
    for unit in units:
        if unit.group is None:
            responses = [batch.run_single(unit.items[0])]
            failed = not responses[0].ok
        else:
            responses, error = batch.run_group(unit)
            failed = error is not None
        out += [_json_response_object(i, r) for i, r in zip(unit.items, responses, strict=True)]
        if failed and stop_on_error:
            break
    response = json_response(200, {"responses": out})
    response.headers["OData-Version"] = "4.01"
    return response


# ---------------------------------------------------------------------------------- multipart


def _multipart_item(part: Part, index: int, group: str | None) -> Item:
    content_type = part.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/http":
        raise bad_request(f"batch part {index} has Content-Type {content_type or '(none)'}; "
                          "a request part is application/http", code="InvalidBatch")
    message = parse_http_request(part.body)
    content_id = part.headers.get("content-id") or message.headers.pop("content-id", None)
    if content_id is not None:
        content_id = content_id.strip()
        if not _REQUEST_ID.fullmatch(content_id):
            raise bad_request(f"batch part {index}: Content-ID {content_id!r} must be letters, "
                              "digits and -._~", code="InvalidBatch")
    if message.method not in _METHODS:
        raise bad_request(f"batch part {index}: method {message.method} is not one of "
                          + ", ".join(sorted(_METHODS)), code="InvalidBatch")
    return Item(content_id, message.method, message.url, message.headers, message.body,
                group=group)


def _multipart_units(body: bytes, boundary: str) -> list[Unit]:
    units: list[Unit] = []
    count = 0
    for n, part in enumerate(parse_multipart(body, boundary)):
        content_type = part.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() == "multipart/mixed":
            inner = boundary_of(content_type)
            if inner is None:
                raise bad_request(f"change set part {n} has no boundary parameter",
                                  code="InvalidBatch")
            group = f"changeset{n}"
            items = [_multipart_item(p, n, group) for p in parse_multipart(part.body, inner)]
            if not items:
                raise bad_request(f"change set part {n} is empty", code="InvalidBatch")
            units.append(Unit(items, group))
            count += len(items)
        else:
            units.append(Unit([_multipart_item(part, n, None)]))
            count += 1
        if count > MAX_REQUESTS:
            raise bad_request(f"a batch may hold at most {MAX_REQUESTS} requests",
                              code="InvalidBatch")
    ids = [i.id for u in units for i in u.items if i.id is not None]
    if len(ids) != len(set(ids)):
        raise bad_request("a Content-ID is used twice in the batch", code="InvalidBatch")
    return units


def _http_part(item: Item | None, response: HttpResponse) -> Part:
    headers = {"Content-Type": "application/http", "Content-Transfer-Encoding": "binary"}
    if item is not None and item.id is not None:
        headers["Content-ID"] = item.id
    inner = {k: v for k, v in response.headers.items() if k.lower() != "odata-version"}
    return Part(headers, render_http_response(response.status, inner, response.body))


def _run_multipart(batch: _Batch, request: HttpRequest, boundary: str) -> HttpResponse:
    units = _multipart_units(request.body, boundary)
    batch.ids = {i.id for u in units for i in u.items if i.id is not None}
    keep_going = parse_prefer(request.header("prefer")).continue_on_error is True
    parts: list[Part] = []
    for unit in units:
        if unit.group is None:
            response = batch.run_single(unit.items[0])
            parts.append(_http_part(unit.items[0], response))
            failed = not response.ok
        else:
            responses, error = batch.run_group(unit)
            if error is not None:
                # a failed change set answers with one response for all its requests
                parts.append(_http_part(None, error))
            else:
                inner_boundary = f"changesetresponse_{uuid.uuid4()}"
                parts.append(Part(
                    {"Content-Type": f"multipart/mixed; boundary={inner_boundary}"},
                    render_multipart([_http_part(i, r) for i, r in
                                      zip(unit.items, responses, strict=True)],
                                     inner_boundary)))
            failed = error is not None
        if failed and not keep_going:
            break
    out_boundary = f"batchresponse_{uuid.uuid4()}"
    return HttpResponse(200, {"Content-Type": f"multipart/mixed; boundary={out_boundary}"},
                        render_multipart(parts, out_boundary))


# ---------------------------------------------------------------------------------- entry


def run_batch(service: ODataService, ctx: Context, request: HttpRequest) -> HttpResponse:
    """Serve a ``$batch`` request (the caller has checked the method and authenticated)."""
    content_type = request.header("content-type") or ""
    media = content_type.split(";")[0].strip().lower()
    batch = _Batch(service, ctx)
    if media == "application/json":
        return _run_json(batch, request)
    if media == "multipart/mixed":
        boundary = boundary_of(content_type)
        if boundary is None:
            raise bad_request("a multipart batch needs a boundary parameter in Content-Type",
                              code="InvalidBatch", target="Content-Type")
        return _run_multipart(batch, request, boundary)
    raise ODataError(415, "UnsupportedMediaType",
                     f"a batch is application/json or multipart/mixed, not "
                     f"{media or '(no Content-Type)'}", target="Content-Type")
