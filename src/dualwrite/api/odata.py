"""The OData 4.01 service of dualwrite: ``/odata/<env>/`` over an :class:`ODataBackend`.

:func:`create_app` returns a Starlette app; :func:`odata_mount` the ``/odata`` mount alone,
for an app that serves other routes too. Per environment:

* ``GET /odata/<env>/`` service document; ``GET /odata/<env>/$metadata`` CSDL XML (or JSON
  with ``$format=json``);
* ``GET <set>`` with ``$filter $select $orderby $top $skip $count $skiptoken $expand``
  (``$expand`` one level deep; ``$filter`` through navigation properties), server-driven
  paging (``@odata.nextLink``; ``Prefer: odata.maxpagesize``); ``GET <set>/$count``;
* change tracking (``Prefer: odata.track-changes``) on sets whose backend tracks them: the
  last page carries ``@odata.deltaLink``; ``GET <set>?$deltatoken=`` answers the changes
  since, in the OData JSON delta format (:meth:`ODataService.read_delta`);
* ``GET|PATCH|PUT|DELETE <set>(<key>)`` by entity key (``('C-1')``, ``(1)``,
  ``(dataAreaId='usmf',ACCOUNT='C-1')``) or alternate key; ``POST <set>`` creates;
* ``POST /odata/<env>/$batch`` in the JSON and the multipart format (:mod:`.batch`).

Every write is one call to :meth:`ODataBackend.apply`; a ``$batch`` change set is one call
with all its ops. ETags are computed here from row contents (:func:`.payload.etag_of`) and
``If-Match``/``If-None-Match`` checked against the row read just before the write; the op
carries ``if_match`` so the engine can check again inside its transaction.

Every response carries ``OData-Version: 4.01`` (``4.0`` to a client whose
``OData-MaxVersion`` is 4.0), and ``$metadata`` says the same version in XML and JSON; every
error is an OData JSON error object with the right status; a request needs
``Authorization: Bearer <token>``. This module parses, dispatches and renders only: the
engine decides what a write means.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.datastructures import URL
from starlette.routing import Mount, Router
from starlette.types import Receive, Scope, Send

from dualwrite.api import csdl
from dualwrite.api.auth import authenticate, authorize
from dualwrite.api.backend import ChangeTracking, ODataBackend, Principal, WriteOp
from dualwrite.api.errors import ODataError, bad_request, error_response
from dualwrite.api.literals import entity_path, lookup_key, parse_key_predicate, split_path
from dualwrite.api.model import EntitySetInfo, NavigationInfo, ServiceModel, build_model
from dualwrite.api.payload import (
    dumps,
    entity_values,
    etag_matches,
    etag_of,
    loads,
    parse_entity_body,
)
from dualwrite.api.query import (
    Format,
    Preferences,
    Query,
    accepts,
    check_types,
    encode_query,
    parse_bool_option,
    parse_count_number,
    parse_expand,
    parse_orderby,
    parse_prefer,
    parse_query,
    parse_select,
    parse_where,
    resolve_properties,
    response_format,
)
from dualwrite.errors import DeltaTokenGone
from dualwrite.model.filters import And, Compare, Expr, In, Literal, Or, Property
from dualwrite.model.values import canonical

__all__ = ["ODataService", "create_app", "create_router", "odata_mount"]

#: The OData version this service speaks; a request whose OData-MaxVersion is 4.0 is answered
#: in 4.0 (see :func:`negotiated_version`).
ODATA_VERSION = "4.01"
#: Most related entities a $filter condition through a navigation property may match.
MAX_JOINED = 10_000
#: navigation property -> (its target set, the $select inside $expand, related rows by the
#: canonical value of the referenced column)
Expansions = dict[str, tuple[EntitySetInfo, list[str] | None, dict[Any, dict[str, Any]]]]
#: Largest request body accepted, in bytes (413 above it).
MAX_BODY_BYTES = 32 * 1024 * 1024


@dataclass
class HttpRequest:
    """One request as the service sees it, from HTTP or from inside a ``$batch``.

    ``path`` is the decoded resource path relative to the environment's service root (no
    leading slash); ``query`` the raw query string; ``headers`` have lower-case names.
    ``json`` is set when a JSON batch already parsed the body.
    """

    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    json: Any = None
    has_json: bool = False
    #: inside a change set: ``path`` names the entity set, and the entity is the row that op
    #: number ``ref`` of the change set creates (a ``$<id>`` whose key is not known yet)
    ref: int | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class HttpResponse:
    """A response before it is written: ``payload`` is the JSON body as Python (kept so that
    a JSON ``$batch`` can embed it), ``body`` the bytes. ``entity_path``, ``etag`` and
    ``entity`` describe the single entity the response is about, for ``$<id>`` references
    inside a batch."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    payload: Any = None
    entity_path: str | None = None
    etag: str | None = None
    #: the entity's properties (JSON names -> JSON values), for ``$<id>/<property>``
    entity: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Context:
    """What every request to one environment shares."""

    env: str
    model: ServiceModel
    principal: Principal
    root: str  # absolute service root URL, ending with '/'
    #: the OData version of the responses (OData-Version), as negotiated
    version: str = ODATA_VERSION


@dataclass
class Target:
    """What a resource path addresses."""

    kind: str  # service | metadata | batch | collection | count | entity
    es: EntitySetInfo | None = None
    key: dict[str, Any] | None = None  # column -> value, as given in the URL
    primary: bool = True  # whether ``key`` is the entity key (else an alternate key)
    #: inside a change set: the index of the earlier op whose row (with a key the database
    #: generates) this addresses; ``key`` is empty then
    ref: int | None = None


@dataclass
class WritePlan:
    """A checked write, ready for :meth:`ODataBackend.apply`, and how to answer it."""

    op: WriteOp
    es: EntitySetInfo
    creates: bool
    prefer: Preferences
    select: list[str] | None
    fmt: Format
    #: the entity's properties as known before the write (JSON names -> JSON values): what a
    #: later request of the same change set can reference with ``$<id>/<property>``
    known: dict[str, Any]
    #: column -> value of the entity key, when known before the write
    key_row: dict[str, Any] | None
    #: the op's place in its change set (0 outside one)
    index: int = 0


@dataclass
class Overlay:
    """What the earlier writes of a change set being planned do: the backend cannot show
    their rows before the change set is applied, so existence and the rows created are
    tracked here."""

    #: (table, canonical entity key) -> whether the row exists after the earlier ops
    exists: dict[tuple[str, tuple[Any, ...]], bool] = field(default_factory=dict)
    #: (table, alternate key columns (sorted), canonical values) -> (index of the op that
    #: created the row, its entity key when the create gave it)
    created: dict[tuple[str, tuple[str, ...], tuple[Any, ...]],
                  tuple[int, dict[str, Any] | None]] = field(default_factory=dict)
    #: index of a create whose key the database generates -> whether its row still exists
    refs: dict[int, bool] = field(default_factory=dict)
    #: how many ops have been planned so far (the index of the next one)
    planned: int = 0


def _alternate_slot(es: EntitySetInfo, key: Mapping[str, Any]
                    ) -> tuple[str, tuple[str, ...], tuple[Any, ...]]:
    columns = tuple(sorted(key))
    return es.table, columns, tuple(canonical(key[c]) for c in columns)


def json_response(status: int, payload: Any, fmt: Format | None = None,
                  headers: Mapping[str, str] | None = None) -> HttpResponse:
    out = dict(headers or {})
    out["Content-Type"] = fmt.content_type if fmt else "application/json"
    return HttpResponse(status, out, dumps(payload), payload)


def _key_of(es: EntitySetInfo, row: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(canonical(row.get(c)) for c in es.key_columns)


def _all_of(terms: list[Expr]) -> Expr:
    """The conjunction of ``terms``, as a balanced tree (no deep recursion to translate)."""
    if len(terms) == 1:
        return terms[0]
    half = len(terms) // 2
    return And(_all_of(terms[:half]), _all_of(terms[half:]))


def _any_of(terms: list[Expr]) -> Expr:
    if len(terms) == 1:
        return terms[0]
    half = len(terms) // 2
    return Or(_any_of(terms[:half]), _any_of(terms[half:]))


class ODataService:
    """The transport-independent core: :meth:`handle` turns an :class:`HttpRequest` into an
    :class:`HttpResponse`. Synchronous, because the backend is; the ASGI adapter runs it in
    a worker thread."""

    def __init__(self, backend: ODataBackend, *, page_size: int = 1000,
                 require_if_match: bool = False, upsert: bool = True) -> None:
        """``require_if_match``: an update or delete of an existing entity without
        ``If-Match`` is refused with 428 (every entity set publishes ETags). ``upsert``: a
        PATCH or PUT to a key that does not exist creates the entity (else 404)."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.backend = backend
        self.page_size = page_size
        self.require_if_match = require_if_match
        self.upsert = upsert
        #: per environment, the model last built and the backend's model_version it was
        #: built from (building it reads every table's schema and every map: about 1.6 ms
        #: for the demo's 13 maps, once per request before)
        self._models: dict[str, tuple[tuple[object, ...], ServiceModel]] = {}
        self._models_lock = threading.Lock()

    # ---------------------------------------------------------------------------- entry

    def handle(self, env_path: str, request: HttpRequest, base: str) -> HttpResponse:
        """Serve one request. ``env_path`` is the URL path below ``/odata`` (``/erp/x``),
        ``base`` the absolute URL of ``/odata``. Never raises: errors become responses."""
        try:
            response = self._handle(env_path, request, base)
        except Exception as exc:  # every failure must reach the client as an OData error
            response = self.error(exc)
        response.headers["OData-Version"] = response.headers.get(
            "OData-Version", negotiated_version(request))
        return response

    def model(self, env: str) -> ServiceModel:
        """The service model of ``env``: built again only when the backend's
        :meth:`~ODataBackend.model_version` names other objects than when it was last built
        (the model itself is never changed once built, so requests share it)."""
        version = self.backend.model_version(env)
        with self._models_lock:
            cached = self._models.get(env)
        if cached is not None and len(cached[0]) == len(version) and \
                all(a is b for a, b in zip(cached[0], version, strict=True)):
            return cached[1]
        model = build_model(self.backend, env)
        with self._models_lock:
            self._models[env] = (version, model)
        return model

    def _handle(self, env_path: str, request: HttpRequest, base: str) -> HttpResponse:
        _check_versions(request)
        principal = authenticate(self.backend, request.header("authorization"))
        env, _, rest = env_path.lstrip("/").partition("/")
        if not env:
            raise ODataError(404, "NotFound", "name an environment: /odata/<env>/")
        if env not in self.backend.environments():
            raise ODataError(404, "NotFound", f"there is no environment {env!r}", target=env)
        ctx = Context(env=env, model=self.model(env), principal=principal,
                      root=f"{base}/{_quote_segment(env)}/",
                      version=negotiated_version(request))
        request = dataclasses.replace(request, path=rest)
        if split_path(rest) == [_BATCH]:
            if request.method != "POST":
                raise _method_not_allowed(request.method, ["POST"])
            # the envelope reads; each request inside it is authorized on its own
            self.authorize(ctx, "POST", "$batch", needed="reader")
            # imported here: the batch module builds on this one
            from dualwrite.api.batch import run_batch

            return run_batch(self, ctx, request)
        return self.serve(ctx, request)

    def authorize(self, ctx: Context, method: str, path: str, *,
                  needed: str | None = None) -> None:
        """Refuse (403, audited) a request the principal's role does not allow (see
        :func:`dualwrite.api.auth.authorize`). Every request, and every request inside a
        ``$batch``, passes here before anything else is done with it."""
        authorize(self.backend, ctx.principal, method, f"/odata/{ctx.env}/{path}",
                  environment=ctx.env, needed=needed)

    def error(self, exc: BaseException) -> HttpResponse:
        """The OData error response for ``exc``."""
        status, body, headers = error_response(exc)
        return json_response(status, body, headers=headers)

    # ---------------------------------------------------------------------------- dispatch

    def resolve(self, ctx: Context, path: str) -> Target:
        """What the resource path addresses; 404 for an unknown set or segment."""
        segments = split_path(path)
        if not segments:
            return Target("service")
        first = segments[0]
        if first.name == "$metadata" and first.key is None and len(segments) == 1:
            return Target("metadata")
        if first == _BATCH and len(segments) == 1:
            return Target("batch")
        if first.name.startswith("$"):
            raise ODataError(404, "NotFound", f"there is no resource {first.name!r} in this "
                             "service", target=first.name)
        es = ctx.model.entity_set(first.name)
        if es is None:
            raise ODataError(404, "NotFound",
                             f"environment {ctx.env!r} has no entity set {first.name!r}",
                             target=first.name)
        rest = segments[1:]
        if first.key is None:
            if not rest:
                return Target("collection", es)
            if len(rest) == 1 and rest[0].name == "$count" and rest[0].key is None:
                return Target("count", es)
            raise ODataError(404, "NotFound", f"{es.name}/{rest[0].name} is not a resource of "
                             "this service", target=rest[0].name)
        key, primary = lookup_key(es, parse_key_predicate(first.key))
        if rest:
            seg = rest[0].name
            if es.prop(seg) is not None or seg == "$value":
                raise ODataError(501, "NotImplemented",
                                 "addressing a single property is not supported; read the "
                                 "entity with $select instead", target=seg)
            raise ODataError(404, "NotFound", f"{es.name}(...)/{seg} is not a resource of "
                             "this service", target=seg)
        return Target("entity", es, key, primary)

    def serve(self, ctx: Context, request: HttpRequest) -> HttpResponse:
        """Serve a request other than ``$batch`` (raises on failure)."""
        method = request.method.upper()
        self.authorize(ctx, method, request.path)
        target = self.resolve(ctx, request.path)
        query = parse_query(request.query)
        if target.kind == "service":
            _allow(method, ["GET"])
            return self.service_document(ctx, request, query)
        if target.kind == "metadata":
            _allow(method, ["GET"])
            return self.metadata(ctx, request, query)
        if target.kind == "batch":
            raise bad_request("a $batch request cannot contain another $batch request")
        if target.kind == "count":
            _allow(method, ["GET"])
            return self.read_count(ctx, request, target, query)
        if target.kind == "collection":
            _allow(method, ["GET", "POST"])
            if method == "GET":
                return self.read_collection(ctx, request, target, query)
        else:
            _allow(method, ["GET", "PATCH", "PUT", "DELETE"])
            if method == "GET":
                return self.read_entity(ctx, request, target, query)
        plan = self.plan_write(ctx, request, target, Overlay())
        rows = self.backend.apply(ctx.env, ctx.principal, [plan.op])
        if len(rows) != 1:
            raise RuntimeError(f"backend.apply returned {len(rows)} rows for 1 op")
        return self.render_write(ctx, plan, rows[0])

    # ---------------------------------------------------------------------------- reads

    def service_document(self, ctx: Context, request: HttpRequest,
                         query: Query) -> HttpResponse:
        query.only({"$format"}, "the service document")
        fmt = response_format(query, request.header("accept"))
        payload: dict[str, Any] = {}
        if fmt.metadata != "none":
            payload["@odata.context"] = ctx.root + "$metadata"
        payload["value"] = [{"name": n, "kind": "EntitySet", "url": n} for n in ctx.model.sets]
        return json_response(200, payload, fmt)

    def metadata(self, ctx: Context, request: HttpRequest, query: Query) -> HttpResponse:
        query.only({"$format"}, "$metadata")
        fmt = (query.get("$format") or "").lower()
        accept = request.header("accept")
        if fmt:
            as_json = fmt in ("json", "application/json") or fmt.startswith("application/json;")
            if not as_json and fmt not in ("xml", "application/xml"):
                raise ODataError(406, "NotAcceptable", f"$metadata is available as xml or "
                                 f"json, not {fmt!r}", target="$format")
        elif accepts(accept, "application/xml"):
            as_json = False
        elif accepts(accept, "application/json"):
            as_json = True
        else:
            raise ODataError(406, "NotAcceptable", f"cannot answer with any media type in "
                             f"Accept: {accept}; $metadata is application/xml or "
                             "application/json")
        if as_json:
            return json_response(200, csdl.metadata_json(ctx.model, ctx.version))
        return HttpResponse(200, {"Content-Type": "application/xml;charset=utf-8"},
                            csdl.metadata_xml(ctx.model, ctx.version))

    def context_url(self, ctx: Context, es: EntitySetInfo, select: list[str] | None, *,
                    entity: bool) -> str:
        url = f"{ctx.root}$metadata#{es.name}"
        if select is not None:
            url += "(" + ",".join(select) + ")"
        return url + ("/$entity" if entity else "")

    def entity(self, ctx: Context, es: EntitySetInfo, row: Mapping[str, Any],
               select: list[str] | None, fmt: Format, *, top: bool,
               expanded: Expansions | None = None) -> dict[str, Any]:
        """One entity as JSON: control information, then the (selected) properties, then
        the ``expanded`` navigation properties (the related entity, or null)."""
        out: dict[str, Any] = {}
        if fmt.metadata != "none":
            if top:
                out["@odata.context"] = self.context_url(ctx, es, select, entity=True)
            if fmt.metadata == "full":
                out["@odata.type"] = f"#{ctx.model.namespace}.{es.name}"
                out["@odata.id"] = ctx.root + entity_path(es, row)
                out["@odata.editLink"] = entity_path(es, row)
            out["@odata.etag"] = etag_of(es.schema, row)
        if select is not None:
            # a client must be able to address what it read: the key is always returned
            select = [*select, *(k for k in es.key if k not in select)]
        out.update(entity_values(es, row, select, ieee754=fmt.ieee754))
        for nav, (target, nested, related) in (expanded or {}).items():
            other = related.get(canonical(row.get(es.navigations[nav].column)))
            out[nav] = None if other is None else \
                self.entity(ctx, target, other, nested, fmt, top=False)
        return out

    def expand(self, ctx: Context, es: EntitySetInfo, query: Query,
               rows: list[dict[str, Any]]) -> Expansions | None:
        """The related entities ``$expand`` asks for, read in one query per navigation
        property (and per 500 distinct values)."""
        text = query.get("$expand")
        if text is None:
            return None
        out: Expansions = {}
        for nav, nested in parse_expand(text, es, ctx.model.sets):
            target = ctx.model.sets[nav.target]
            wanted = sorted({canonical(v): v for r in rows
                             if (v := r.get(nav.column)) is not None}.items(),
                            key=lambda kv: str(kv[0]))
            related: dict[Any, dict[str, Any]] = {}
            for start in range(0, len(wanted), 500):
                chunk = tuple(Literal(v) for _, v in wanted[start:start + 500])
                for other in self.backend.query(
                        ctx.env, target.table, columns=None,
                        where=In(Property(nav.target_column), chunk), order_by=[],
                        limit=None, offset=0):
                    related[canonical(other.get(nav.target_column))] = other
            out[nav.name] = (target, nested, related)
        return out

    def read_collection(self, ctx: Context, request: HttpRequest, target: Target,
                        query: Query) -> HttpResponse:
        es = _required(target.es)
        if "$deltatoken" in query.options:
            return self.read_delta(ctx, request, es, query)
        fmt = response_format(query, request.header("accept"))
        where = self._where(ctx, query, es)
        select = parse_select(query.options["$select"], es) if "$select" in query.options \
            else None
        order = parse_orderby(query.options["$orderby"], es) if "$orderby" in query.options \
            else []
        # paging by offset needs a total order: the key breaks every tie
        ordered = {c for c, _ in order}
        order += [(c, False) for c in es.key_columns if c not in ordered]
        top = parse_count_number("$top", query.options["$top"]) \
            if "$top" in query.options else None
        skip = parse_count_number("$skip", query.options["$skip"]) \
            if "$skip" in query.options else 0
        count = parse_bool_option("$count", query.options["$count"]) \
            if "$count" in query.options else False
        skiptoken = query.options.get("$skiptoken")
        # the pages of a tracked read carry the delta position taken before the first one
        tracked_from: str | None = None
        if skiptoken is not None and "~" in skiptoken:
            skiptoken, _, tracked_from = skiptoken.partition("~")
        delivered = parse_count_number("$skiptoken", skiptoken) if skiptoken is not None \
            else 0
        prefer = parse_prefer(request.header("prefer"))
        applied: list[str] = []
        page = self.page_size
        if prefer.maxpagesize is not None and prefer.maxpagesize <= self.page_size:
            page = prefer.maxpagesize
            applied.append(f"odata.maxpagesize={page}")
        if tracked_from is None and prefer.track_changes and skiptoken is None and \
                top is None and skip == 0 and "$expand" not in query.options and \
                isinstance(self.backend, ChangeTracking):
            # taken before the entities are read: a change committed while the pages are
            # read is in the delta (perhaps in a page too: telling it twice is harmless)
            tracked_from = self.backend.track_changes(ctx.env, es.table, es.key_columns)
        if tracked_from is not None:
            applied.append("odata.track-changes")
        headers: dict[str, str] = {}
        if applied:
            headers["Preference-Applied"] = ", ".join(applied)
        remaining = None if top is None else top - delivered
        rows: list[dict[str, Any]] = []
        more = False
        if remaining is None or remaining > 0:
            limit = page if remaining is None else min(page, remaining)
            # one row beyond the page tells whether a next page exists without a count
            rows = self.backend.query(ctx.env, es.table, columns=None, where=where,
                                      order_by=order, limit=limit + 1,
                                      offset=skip + delivered)
            more = len(rows) > limit and (remaining is None or remaining > limit)
            rows = rows[:limit]
        payload: dict[str, Any] = {}
        if fmt.metadata != "none":
            payload["@odata.context"] = self.context_url(ctx, es, select, entity=False)
        if count:
            payload["@odata.count"] = self.backend.count(ctx.env, es.table, where=where)
        expanded = self.expand(ctx, es, query, rows)
        payload["value"] = [self.entity(ctx, es, r, select, fmt, top=False, expanded=expanded)
                            for r in rows]
        if more:
            pairs = [(n, v) for n, v in query.pairs if n.lower() != "$skiptoken"]
            token = str(delivered + len(rows))
            if tracked_from is not None:
                token += "~" + tracked_from
            pairs.append(("$skiptoken", token))
            payload["@odata.nextLink"] = f"{ctx.root}{request.path}?{encode_query(pairs)}"
        elif tracked_from is not None:
            payload["@odata.deltaLink"] = self.delta_link(ctx, es, query, tracked_from)
        return json_response(200, payload, fmt, headers)

    # ---------------------------------------------------------------------------- deltas

    @staticmethod
    def _set_mark(ctx: Context, es: EntitySetInfo) -> str:
        """What ties a delta token to its environment and entity set."""
        return hashlib.sha1(f"{ctx.env}\0{es.name}".encode()).hexdigest()[:8]

    def delta_link(self, ctx: Context, es: EntitySetInfo, query: Query, position: str) -> str:
        """The URL of the changes after ``position``, keeping the request's ``$filter``,
        ``$select``, ``$format`` and parameter aliases."""
        kept = {"$filter", "$select", "$format"}
        pairs = [(n, v) for n, v in query.pairs if n.lower() in kept or n.startswith("@")]
        pairs.append(("$deltatoken", f"{position}~{self._set_mark(ctx, es)}"))
        return f"{ctx.root}{_quote_segment(es.name)}?{encode_query(pairs)}"

    def read_delta(self, ctx: Context, request: HttpRequest, es: EntitySetInfo,
                   query: Query) -> HttpResponse:
        """``GET <set>?$deltatoken=...``: the entities created or changed since the token (as
        they are now, each once, in the order of its last change, with its ETag) and those
        deleted (``@removed``), at most a page of them, then ``@odata.nextLink`` (more
        waiting) or a fresh ``@odata.deltaLink``. A token that cannot be resumed from
        (expired, unknown, malformed, for another set) is a 410."""
        query.only({"$deltatoken", "$filter", "$select", "$format"}, "a delta request")
        fmt = response_format(query, request.header("accept"))
        position, _, mark = query.options["$deltatoken"].rpartition("~")
        if not position or mark != self._set_mark(ctx, es):
            raise DeltaTokenGone(f"the delta token is not one this service gave for "
                                 f"{es.name!r} (malformed, or for another entity set)")
        if not isinstance(self.backend, ChangeTracking):
            raise DeltaTokenGone(f"changes of {es.name!r} are not tracked")
        where = self._where(ctx, query, es)
        select = parse_select(query.options["$select"], es) if "$select" in query.options \
            else None
        prefer = parse_prefer(request.header("prefer"))
        page = self.page_size
        applied = ["odata.track-changes"]
        if prefer.maxpagesize is not None and prefer.maxpagesize <= self.page_size:
            page = prefer.maxpagesize
            applied.append(f"odata.maxpagesize={page}")
        delta = self.backend.changes_since(ctx.env, es.table, es.key_columns, position, page)
        present = [row for _, row in delta.entries if row is not None]
        passing = self._passing(ctx, es, where, present)
        value: list[dict[str, Any]] = []
        for key, row in delta.entries:
            if row is not None and _key_of(es, row) in passing:
                entity = self.entity(ctx, es, row, select, fmt, top=False)
                if fmt.metadata != "none" and "@odata.id" not in entity:
                    entity = {"@odata.id": ctx.root + entity_path(es, row), **entity}
                value.append(entity)
            else:
                # gone, or no longer passing the filter: either way out of the client's set
                value.append(self._removed(ctx, es, row or key,
                                           "deleted" if row is None else "changed"))
        payload: dict[str, Any] = {}
        if fmt.metadata != "none":
            payload["@odata.context"] = self.context_url(ctx, es, select, entity=False) + \
                "/$delta"
        payload["value"] = value
        link = self.delta_link(ctx, es, query, delta.position)
        payload["@odata.nextLink" if delta.more else "@odata.deltaLink"] = link
        return json_response(200, payload, fmt, {"Preference-Applied": ", ".join(applied)})

    def _passing(self, ctx: Context, es: EntitySetInfo, where: Expr | None,
                 rows: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
        """The keys of ``rows`` that pass ``where``, asked of the database (so that the
        delta agrees with a read of the set, collations and all)."""
        keys = {_key_of(es, r) for r in rows}
        if where is None or not rows:
            return keys
        out: set[tuple[Any, ...]] = set()
        for start in range(0, len(rows), 200):
            chunk = rows[start:start + 200]
            if len(es.key_columns) == 1:
                column = es.key_columns[0]
                match: Expr = In(Property(column), tuple(Literal(r[column]) for r in chunk))
            else:
                match = _any_of([_all_of([Compare("eq", Property(c), Literal(r[c]))
                                          for c in es.key_columns]) for r in chunk])
            for r in self.backend.query(ctx.env, es.table, columns=list(es.key_columns),
                                        where=And(where, match), order_by=[], limit=None,
                                        offset=0):
                out.add(_key_of(es, r))
        return out

    def _removed(self, ctx: Context, es: EntitySetInfo, key_row: Mapping[str, Any],
                 reason: str) -> dict[str, Any]:
        """A deleted-entity entry: OData 4.01's ``@removed`` (4.0's ``$deletedEntity``
        to a 4.0 client), its id and its key properties."""
        entity_id = ctx.root + entity_path(es, key_row)
        keys = entity_values(es, key_row, list(es.key))
        if ctx.version == "4.0":
            return {"@odata.context": f"{ctx.root}$metadata#{es.name}/$deletedEntity",
                    "id": entity_id, "reason": reason}
        return {"@removed": {"reason": reason}, "@odata.id": entity_id, **keys}

    def _where(self, ctx: Context, query: Query, es: EntitySetInfo) -> Expr | None:
        text = query.get("$filter")
        if text is None:
            return None

        def join(nav: NavigationInfo, condition: Expr) -> Expr:
            # a semi-join in two steps: the related rows' referenced values first
            target = ctx.model.sets[nav.target]
            where = resolve_properties(condition, target)
            check_types(condition, target)
            rows = self.backend.query(ctx.env, target.table, columns=[nav.target_column],
                                      where=where, order_by=[], limit=MAX_JOINED + 1,
                                      offset=0)
            if len(rows) > MAX_JOINED:
                raise bad_request(
                    f"$filter condition through {nav.name!r} matches more than {MAX_JOINED} "
                    f"entities of {target.name!r}", target="$filter", code="InvalidFilter",
                    hint=f"narrow the condition, or filter {target.name!r} itself")
            values = {canonical(r[nav.target_column]): r[nav.target_column] for r in rows
                      if r.get(nav.target_column) is not None}
            prop = _required(es.by_column(nav.column))
            if not values:  # nothing related matches: a condition no row passes
                return And(Compare("eq", Property(prop.name), Literal(None)),
                           Compare("ne", Property(prop.name), Literal(None)))
            return In(Property(prop.name), tuple(Literal(v) for v in values.values()))

        return parse_where(text, es, query.aliases, join)

    def read_count(self, ctx: Context, request: HttpRequest, target: Target,
                   query: Query) -> HttpResponse:
        es = _required(target.es)
        query.only({"$filter", "$format"}, f"{es.name}/$count")
        # python-odata and the SAP Cloud SDK ask for the count with Accept: application/json;
        # services answer them text/plain all the same, so JSON is accepted as asking for it
        accept = request.header("accept")
        if not (accepts(accept, "text/plain") or accepts(accept, "application/json")):
            raise ODataError(406, "NotAcceptable", f"$count is served as text/plain; Accept: "
                             f"{accept} admits neither text/plain nor application/json")
        n = self.backend.count(ctx.env, es.table, where=self._where(ctx, query, es))
        return HttpResponse(200, {"Content-Type": "text/plain;charset=utf-8"},
                            str(n).encode("ascii"), payload=None)

    def find(self, ctx: Context, es: EntitySetInfo, key: dict[str, Any],
             primary: bool) -> dict[str, Any] | None:
        """The row a key addresses: by entity key through ``get``, by alternate key through
        ``query`` (the protocol's ``get`` takes the entity key only)."""
        if primary:
            return self.backend.get(ctx.env, es.table, key)
        where: Expr | None = None
        for column, value in key.items():
            term = Compare("eq", Property(column), Literal(value))
            where = term if where is None else And(where, term)
        rows = self.backend.query(ctx.env, es.table, columns=None, where=where, order_by=[],
                                  limit=2, offset=0)
        if len(rows) > 1:
            raise ODataError(409, "AmbiguousKey",
                             f"alternate key ({', '.join(key)}) matches several rows of "
                             f"{es.name!r}", hint="the alternate key's columns are not unique "
                             "in the data; address the entity by its key")
        return rows[0] if rows else None

    def read_entity(self, ctx: Context, request: HttpRequest, target: Target,
                    query: Query) -> HttpResponse:
        es = _required(target.es)
        query.only({"$select", "$format", "$expand"}, "a single entity")
        fmt = response_format(query, request.header("accept"))
        select = parse_select(query.options["$select"], es) if "$select" in query.options \
            else None
        row = self.find(ctx, es, _required(target.key), target.primary)
        if row is None:
            raise _not_found(es, target)
        etag = etag_of(es.schema, row)
        if_none = request.header("if-none-match")
        if if_none and etag_matches(if_none, etag):
            return HttpResponse(304, {"ETag": etag}, etag=etag,
                                entity_path=entity_path(es, row))
        if_match = request.header("if-match")
        if if_match and not etag_matches(if_match, etag):
            raise ODataError(412, "PreconditionFailed",
                             "the entity's ETag does not match If-Match")
        response = json_response(200, self.entity(
            ctx, es, row, select, fmt, top=True, expanded=self.expand(ctx, es, query, [row])),
            fmt, {"ETag": etag})
        response.entity_path, response.etag = entity_path(es, row), etag
        response.entity = entity_values(es, row)
        return response

    # ---------------------------------------------------------------------------- writes

    def _body(self, ctx: Context, request: HttpRequest, es: EntitySetInfo) -> dict[str, Any]:
        sets = ctx.model.sets
        # a missing Content-Type is taken as JSON: curl and batch parts often omit it
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type and content_type != "application/json":
            raise ODataError(415, "UnsupportedMediaType",
                             f"request bodies must be application/json, not {content_type}",
                             target="Content-Type")
        if request.has_json:
            return parse_entity_body(es, request.json, sets)
        if not request.body.strip():
            raise bad_request("the request needs a JSON body holding the entity",
                              code="InvalidBody")
        return parse_entity_body(es, loads(request.body), sets)

    def plan_write(self, ctx: Context, request: HttpRequest, target: Target,
                   overlay: Overlay) -> WritePlan:
        """Check a write and turn it into a :class:`WriteOp` without applying it.

        Reads the addressed row (``get``) to answer 404 and to check ``If-Match`` /
        ``If-None-Match`` here. ``overlay`` records what earlier writes of the same change set
        do, since the backend cannot show their rows before the change set is applied: for a
        row an earlier op touched, existence comes from the overlay and the ETag check is left
        to the engine (through ``WriteOp.if_match``). A row an earlier op created can be
        addressed by its entity key, by an alternate key its create gave, or (``target.ref``)
        as that op's row when the database generates its key.
        """
        plan = self._plan_write(ctx, request, target, overlay)
        plan.index = overlay.planned
        overlay.planned += 1
        return plan

    def _plan_write(self, ctx: Context, request: HttpRequest, target: Target,
                    overlay: Overlay) -> WritePlan:
        es = _required(target.es)
        method = request.method.upper()
        query = parse_query(request.query)
        query.only({"$select", "$format"}, f"a {method} request")
        fmt = response_format(query, request.header("accept"))
        select = parse_select(query.options["$select"], es) if "$select" in query.options \
            else None
        prefer = parse_prefer(request.header("prefer"))
        if_match = request.header("if-match")
        if_none_match = request.header("if-none-match")

        if target.kind == "collection":  # POST: create
            values = self._body(ctx, request, es)
            key_row = _full_key(es, values)
            if key_row is not None:
                overlay.exists[(es.table, _key_of(es, key_row))] = True
            else:
                overlay.refs[overlay.planned] = True
            for alternate in es.alternate_keys:
                columns = [es.properties[p].column.name for p in alternate]
                if all(values.get(c) is not None for c in columns):
                    overlay.created[_alternate_slot(es, {c: values[c] for c in columns})] = \
                        (overlay.planned, key_row)
            op = WriteOp("create", es.table, None, values, None)
            return WritePlan(op, es, True, prefer, select, fmt,
                             _known(es, values), key_row)

        values = self._body(ctx, request, es) if method != "DELETE" else {}
        url_key = _required(target.key)
        ref = target.ref
        if ref is None and not target.primary:
            made = overlay.created.get(_alternate_slot(es, url_key))
            if made is not None:  # created earlier in this change set
                if made[1] is None:
                    ref = made[0]
                else:
                    url_key, target = dict(made[1]), dataclasses.replace(target, primary=True)
        if ref is not None:
            return self._plan_on_ref(es, method, ref, values, overlay, prefer, select, fmt,
                                     if_match)
        pk: dict[str, Any] | None
        slot: tuple[str, tuple[Any, ...]] | None = None
        exists: bool
        current: dict[str, Any] | None = None
        if target.primary:
            pk = dict(url_key)
            slot = (es.table, _key_of(es, pk))
        else:
            pk = None
        if slot is not None and slot in overlay.exists:
            exists = overlay.exists[slot]
        else:
            current = self.find(ctx, es, url_key, target.primary)
            exists = current is not None
            if current is not None and pk is None:
                pk = {c: current.get(c) for c in es.key_columns}
                slot = (es.table, _key_of(es, pk))
                if slot in overlay.exists:
                    exists, current = overlay.exists[slot], None
        if exists and if_none_match is not None and (
                current is None or etag_matches(if_none_match, etag_of(es.schema, current))):
            raise ODataError(412, "PreconditionFailed",
                             "If-None-Match: the entity exists already",
                             hint="drop If-None-Match to update it")
        if not exists:
            if method == "DELETE" or if_match is not None or not target.primary or \
                    not self.upsert:
                raise _not_found(es, target) if if_match is None else ODataError(
                    412, "PreconditionFailed", "If-Match: the entity does not exist")
            # upsert: PATCH or PUT to a key that does not exist creates the entity
            merged = {**values}
            for column, value in url_key.items():
                if column in merged and canonical(merged[column]) != canonical(value):
                    raise _key_mismatch(es, column)
                merged[column] = value
            if slot is not None:
                overlay.exists[slot] = True
            op = WriteOp("create", es.table, None, merged, None)
            return WritePlan(op, es, True, prefer, select, fmt, _known(es, merged),
                             dict(url_key))
        if current is not None and if_match is None and self.require_if_match:
            # an entity an earlier op of the same change set wrote has no ETag the client
            # could know: only entities read from the database need one
            raise ODataError(428, "PreconditionRequired",
                             f"{method} of an existing entity needs If-Match with its ETag "
                             "(this service has serve.require_if_match on)",
                             hint="read the entity, then send its ETag (the ETag header or "
                             "@odata.etag) in If-Match; If-Match: * overrides any version")
        if current is not None and if_match is not None and \
                not etag_matches(if_match, etag_of(es.schema, current)):
            raise ODataError(412, "PreconditionFailed",
                             "If-Match: the entity has changed since the ETag was read")
        assert pk is not None and slot is not None
        if method == "DELETE":
            overlay.exists[slot] = False
            op = WriteOp("delete", es.table, pk, {}, if_match)
            return WritePlan(op, es, False, prefer, select, fmt, {}, pk)
        changes = {}
        for column, value in values.items():
            if column in pk or column in url_key:
                if canonical(value) != canonical({**pk, **url_key}[column]):
                    raise _key_mismatch(es, column)
                continue  # key properties are not updatable; an equal value is harmless
            changes[column] = value
        if method == "PUT":
            kind = "replace"
            for prop in es.properties.values():
                name = prop.column.name
                if name not in pk and name not in changes:
                    changes[name] = None
        else:
            kind = "update"
        overlay.exists[slot] = True
        op = WriteOp(kind, es.table, pk, changes, if_match)  # type: ignore[arg-type]
        return WritePlan(op, es, False, prefer, select, fmt, _known(es, {**pk, **changes}), pk)

    def _plan_on_ref(self, es: EntitySetInfo, method: str, ref: int, values: dict[str, Any],
                     overlay: Overlay, prefer: Preferences, select: list[str] | None,
                     fmt: Format, if_match: str | None) -> WritePlan:
        """A write to the row op ``ref`` of the change set creates, whose key the database
        generates: the backend fills the key in from that op's row."""
        if not overlay.refs.get(ref, False):
            raise ODataError(404, "NotFound", f"the entity of {es.name!r} that request "
                             f"{ref + 1} of the change set created does not exist any more",
                             target=es.name)
        if method == "DELETE":
            overlay.refs[ref] = False
            return WritePlan(WriteOp("delete", es.table, None, {}, if_match, ref=ref), es,
                             False, prefer, select, fmt, {}, None)
        changes = {}
        for column, value in values.items():
            if column in es.key_columns:
                prop = es.by_column(column)
                raise bad_request(f"key property {prop.name if prop else column!r} cannot be "
                                  "set on an entity whose key the database generates",
                                  target=prop.name if prop else column, code="KeyMismatch")
            changes[column] = value
        kind = "replace" if method == "PUT" else "update"
        if kind == "replace":
            for prop in es.properties.values():
                name = prop.column.name
                if name not in es.key_columns and name not in changes:
                    changes[name] = None
        op = WriteOp(kind, es.table, None, changes, if_match, ref=ref)  # type: ignore[arg-type]
        return WritePlan(op, es, False, prefer, select, fmt, _known(es, changes), None)

    def render_write(self, ctx: Context, plan: WritePlan,
                     row: dict[str, Any] | None) -> HttpResponse:
        """The response to a write ``apply`` has done; ``row`` is what it returned."""
        if plan.op.kind == "delete":
            return HttpResponse(204, {})
        es = plan.es
        if row is None:  # a backend that returns nothing: answer from what was sent
            row = {**(plan.op.key or {}), **plan.op.values}
        etag = etag_of(es.schema, row)
        path = entity_path(es, row)
        headers = {"ETag": etag}
        asked = plan.prefer.return_
        if asked is not None:
            headers["Preference-Applied"] = f"return={asked}"
        # $select asks for a representation unless return=minimal says otherwise
        wanted = asked or ("representation" if plan.select is not None else None)
        if plan.creates:
            headers["Location"] = ctx.root + path
            with_body = wanted != "minimal"
        else:
            with_body = wanted == "representation"
        if with_body:
            response = json_response(201 if plan.creates else 200,
                                     self.entity(ctx, es, row, plan.select, plan.fmt, top=True),
                                     plan.fmt, headers)
        else:
            if plan.creates:
                headers["OData-EntityId"] = ctx.root + path
            response = HttpResponse(204, headers)
        response.entity_path, response.etag = path, etag
        response.entity = entity_values(es, row)
        return response


_BATCH = split_path("$batch")[0]


def _required(value: Any) -> Any:
    if value is None:  # pragma: no cover - resolve() sets what each target kind needs
        raise RuntimeError("incomplete target")
    return value


def _allow(method: str, allowed: list[str]) -> None:
    if method not in allowed:
        raise _method_not_allowed(method, allowed)


def _method_not_allowed(method: str, allowed: list[str]) -> ODataError:
    return ODataError(405, "MethodNotAllowed",
                      f"{method} is not allowed here; allowed: {', '.join(allowed)}",
                      headers={"Allow": ", ".join(allowed)})


def _not_found(es: EntitySetInfo, target: Target) -> ODataError:
    key = ",".join(f"{k}={v!r}" for k, v in (target.key or {}).items())
    return ODataError(404, "NotFound", f"{es.name!r} has no entity with key ({key})",
                      target=es.name)


def _key_mismatch(es: EntitySetInfo, column: str) -> ODataError:
    prop = es.by_column(column)
    name = prop.name if prop else column
    return bad_request(f"key property {name!r} in the body differs from the key in the URL; "
                       "the key of an entity cannot be changed", target=name,
                       code="KeyMismatch")


def _full_key(es: EntitySetInfo, values: Mapping[str, Any]) -> dict[str, Any] | None:
    if all(values.get(c) is not None for c in es.key_columns):
        return {c: values[c] for c in es.key_columns}
    return None


def _known(es: EntitySetInfo, values: Mapping[str, Any]) -> dict[str, Any]:
    return entity_values(es, values)


def negotiated_version(request: HttpRequest) -> str:
    """The version a response to ``request`` speaks: 4.01, or 4.0 for a client whose
    OData-MaxVersion is below 4.01 (a service answers in the highest version it supports up
    to the client's maximum)."""
    max_version = request.header("odata-maxversion")
    if max_version is not None:
        try:
            if Decimal(max_version.strip()) < Decimal("4.01"):
                return "4.0"
        except InvalidOperation:
            pass  # _check_versions refuses it
    return ODATA_VERSION


def _check_versions(request: HttpRequest) -> None:
    version = request.header("odata-version")
    if version is not None and version.strip() not in ("4.0", "4.01"):
        raise bad_request(f"OData-Version {version} is not supported; this service speaks "
                          "OData 4.01 (and 4.0)", target="OData-Version",
                          code="UnsupportedVersion")
    max_version = request.header("odata-maxversion")
    if max_version is not None:
        try:
            too_old = Decimal(max_version.strip()) < Decimal("4.0")
        except InvalidOperation:
            raise bad_request(f"OData-MaxVersion {max_version!r} is not a version number",
                              target="OData-MaxVersion", code="UnsupportedVersion") from None
        if too_old:
            raise bad_request(f"OData-MaxVersion {max_version} is below 4.0, the lowest version "
                              "this service speaks", target="OData-MaxVersion",
                              code="UnsupportedVersion")


def _quote_segment(text: str) -> str:
    return quote(text, safe="")


# -------------------------------------------------------------------------------- ASGI


class ODataASGI:
    """ASGI adapter: reads the request, runs :meth:`ODataService.handle` in a worker thread
    (the backend blocks on databases), writes the response.

    It speaks ASGI directly (the scope's headers, ``receive``, ``send``) and hands the work to
    a thread pool of its own through the event loop: Starlette's ``Request``/``Response``
    objects and anyio's worker-thread machinery cost about a tenth of a millisecond of the
    interpreter's time per request, which every request through ``dualwrite serve`` pays."""

    #: at most this many requests are worked on at once (anyio's default, which this
    #: replaced); more wait for a thread
    WORKERS = 40

    def __init__(self, service: ODataService) -> None:
        self.service = service
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        pool = self._pool
        if pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.WORKERS,
                                                    thread_name_prefix="dualwrite-odata")
                pool = self._pool
        return pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # pragma: no cover - websockets are not served here
            return
        root_path: str = scope.get("root_path", "")
        path: str = scope["path"]
        env_path = path[len(root_path):] if root_path and path.startswith(root_path) else path
        # Starlette's URL: it checks the Host header before the links are built from it
        url = URL(scope=scope)
        base = f"{url.scheme}://{url.netloc}{root_path}"
        method: str = scope["method"].upper()
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            name = k.decode("latin-1").lower()
            value = v.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body = bytearray()
        too_large = False
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left: nobody to answer
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                too_large = True
                break
            if not message.get("more_body", False):
                break
        if too_large:
            response = self.service.error(ODataError(
                413, "PayloadTooLarge", f"request bodies are limited to {MAX_BODY_BYTES} bytes"))
            response.headers["OData-Version"] = ODATA_VERSION
        else:
            inner = HttpRequest(method="GET" if method == "HEAD" else method, path="",
                                query=scope.get("query_string", b"").decode("latin-1"),
                                headers=headers, body=bytes(body))
            response = await asyncio.get_running_loop().run_in_executor(
                self._executor(), self.service.handle, env_path, inner, base)
        content = b"" if method == "HEAD" or response.status in (204, 304) else response.body
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1"))
               for k, v in response.headers.items()]
        if not (response.status < 200 or response.status in (204, 304)):
            raw.append((b"content-length", str(len(content)).encode("latin-1")))
        await send({"type": "http.response.start", "status": response.status, "headers": raw})
        await send({"type": "http.response.body", "body": content})


def odata_mount(backend: ODataBackend, *, page_size: int = 1000, path: str = "/odata",
                require_if_match: bool = False, upsert: bool = True) -> Mount:
    """The ``/odata`` mount, to place in an app's routes next to others (the keywords are
    :class:`ODataService`'s)."""
    return Mount(path, app=ODataASGI(ODataService(
        backend, page_size=page_size, require_if_match=require_if_match, upsert=upsert)))


def create_router(backend: ODataBackend, *, page_size: int = 1000,
                  require_if_match: bool = False, upsert: bool = True) -> Router:
    """A Router holding only the ``/odata`` mount."""
    return Router(routes=[odata_mount(backend, page_size=page_size,
                                      require_if_match=require_if_match, upsert=upsert)])


def create_app(backend: ODataBackend, *, page_size: int = 1000,
               require_if_match: bool = False, upsert: bool = True) -> Starlette:
    """A Starlette app serving ``/odata/<env>/`` for every environment of ``backend``.
    ``page_size`` is the most entities one response carries (server-driven paging); the
    other keywords are :class:`ODataService`'s."""
    return Starlette(routes=[odata_mount(backend, page_size=page_size,
                                         require_if_match=require_if_match, upsert=upsert)])
