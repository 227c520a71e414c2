"""A remote OData v4 service as an environment: ``odata+http://HOST:PORT/PATH/`` or
``odata+https://...``.

Its entity sets are the tables; ``$metadata`` gives their columns, keys and alternate keys
(:mod:`dualwrite.connectors.odata.metadata`). Reads are ``GET`` with ``$select``, ``$filter``
and ``$orderby`` by the key, paged by the server (``@odata.nextLink``, ``Prefer:
odata.maxpagesize``); each transaction's writes are sent at its end as one JSON ``$batch``
whose requests form one atomicity group (a change set), so they are applied all or none.

Credentials come from the URL, with ``${VAR}`` expanded from the environment by the config
loader: ``odata+https://user:${ERP_PASSWORD}@host/path/`` for basic authentication,
``odata+https://host/path/?token=${ERP_TOKEN}`` for a bearer token. Other query options:
``timeout`` (seconds per request, default 30), ``retries`` (attempts for 429/503, default 5).
Credentials never appear in a message.

Every HTTP failure is translated to :class:`~dualwrite.errors.ConnectorError` in one place
(:meth:`ODataClient._fail`): timeouts, dropped connections, 5xx and malformed JSON are
transient; 401/403/404, a bad query and an unexpected ``$metadata`` are terminal; a request
of a change set the service refused is a :class:`~dualwrite.errors.ConstraintViolation` (the
row's fault). ``429``/``503`` are retried here first, waiting as ``Retry-After`` says (or
backing off), within the retry budget.

Not here (see docs/odata.md, "OData environments"): two-phase commit (an OData side is never
prepared), change capture, and a link record kept in the service: the service is not
dualwrite's to write its own tables into, so the link lives in the state store only.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any

from dualwrite.connectors.base import Capabilities, Connector, LinkRecord, Row, WriteSession
from dualwrite.connectors.odata.changes import (
    DeltaPage,
    Method,
    ModifiedPoll,
    RowChange,
    applies_track_changes,
    choose_method,
    parse_delta_page,
)
from dualwrite.connectors.odata.metadata import (
    EntitySet,
    MetadataError,
    ServiceMetadata,
    parse_metadata,
)
from dualwrite.errors import (
    ConfigError,
    ConnectorError,
    ConstraintViolation,
    TerminalConnectorError,
    TransientConnectorError,
    ViolationKind,
)
from dualwrite.model.codec import base64url_text, utc_text
from dualwrite.model.filters import Expr, to_odata
from dualwrite.model.schema import TableSchema
from dualwrite.model.values import canonical

log = logging.getLogger("dualwrite.odata")

#: keys per request when rows are fetched or looked up by key (keeps URLs short)
KEYS_PER_REQUEST = 40
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 5
#: what a service that does not know ``$batch`` answers it
NO_BATCH = (404, 405, 501)
#: the longest single wait for a Retry-After (a longer one is capped, and retried)
MAX_RETRY_AFTER = 30.0

_JSON = json.JSONDecoder(parse_float=Decimal)


def _import_httpx() -> Any:
    try:
        import httpx
    except ImportError:  # pragma: no cover - the extra is missing
        raise ConfigError("an OData environment needs the Python package httpx, which is not "
                          "installed", hint="pip install 'dualwrite[odata]' (or dualwrite[all])",
                          code="DW003") from None
    return httpx


class ServiceAddress:
    """An ``odata+http(s)://`` URL taken apart: the service root, credentials, options."""

    def __init__(self, env: str, url: str) -> None:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() not in ("odata+http", "odata+https"):
            raise ConfigError(f"environment {env!r}: {self._safe(url)!r} is not an OData URL",
                              hint="write odata+http://HOST:PORT/PATH/ or odata+https://...",
                              code="DW003")
        parts = urllib.parse.urlsplit(scheme.split("+", 1)[1].lower() + "://" + rest)
        if not parts.hostname:
            raise ConfigError(f"environment {env!r}: the OData URL names no host",
                              hint="write odata+http://HOST:PORT/PATH/", code="DW003")
        options = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        unknown = set(options) - {"token", "timeout", "retries"}
        if unknown:
            raise ConfigError(f"environment {env!r}: unknown OData URL option(s) "
                              f"{', '.join(sorted(unknown))}",
                              hint="the options are token, timeout and retries", code="DW003")
        self.token = options.get("token") or None
        self.user = urllib.parse.unquote(parts.username) if parts.username else None
        self.password = urllib.parse.unquote(parts.password or "") if parts.username else None
        try:
            self.timeout = float(options.get("timeout", DEFAULT_TIMEOUT))
            self.retries = max(1, int(options.get("retries", DEFAULT_RETRIES)))
        except ValueError:
            raise ConfigError(f"environment {env!r}: timeout and retries must be numbers",
                              hint="e.g. ?timeout=30&retries=5", code="DW003") from None
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        #: the service root, ending in "/", without credentials: safe to show
        self.root = f"{parts.scheme}://{host}{path}"

    @staticmethod
    def _safe(url: str) -> str:
        return re.sub(r"//[^@/]*@", "//***@", url.split("?", 1)[0])


# -- values --------------------------------------------------------------------------------

_FRACTION = re.compile(r"(\.\d{6})\d+")


def decode(edm: str, value: Any) -> Any:
    """A JSON value of Edm type ``edm`` as the Python value of its kind (see
    :class:`dualwrite.model.schema.Kind`). Raises ValueError for one that is not of it."""
    if value is None:
        return None
    if edm in ("Edm.Int16", "Edm.Int32", "Edm.Int64", "Edm.Byte", "Edm.SByte"):
        if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
            raise ValueError(f"{value!r} is not an integer")
        return int(value)
    if edm == "Edm.Decimal":
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a decimal")
        return Decimal(str(value)) if isinstance(value, int | str) else Decimal(value)
    if edm in ("Edm.Double", "Edm.Single"):
        if isinstance(value, str):
            return {"NaN": float("nan"), "INF": float("inf"), "-INF": float("-inf")}[value]
        return float(value)
    if edm == "Edm.Boolean":
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not a boolean")
        return value
    if edm == "Edm.Date":
        return dt.date.fromisoformat(value)
    if edm == "Edm.DateTimeOffset":
        text = _FRACTION.sub(r"\1", value).replace("Z", "+00:00")
        return dt.datetime.fromisoformat(text).astimezone(dt.UTC)
    if edm == "Edm.TimeOfDay":
        return dt.time.fromisoformat(_FRACTION.sub(r"\1", value))
    if edm == "Edm.Guid":
        return uuid.UUID(value)
    if edm == "Edm.Binary":
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    if edm == "Edm.String" and not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


def encode(edm: str, value: Any) -> Any:
    """A Python value as the JSON value of Edm type ``edm`` (Decimals stay exact: see
    :func:`dumps`)."""
    if value is None:
        return None
    if edm in ("Edm.Double", "Edm.Single") and isinstance(value, float | Decimal):
        f = float(value)
        if f != f:
            return "NaN"
        if f in (float("inf"), float("-inf")):
            return "INF" if f > 0 else "-INF"
        return f
    if edm == "Edm.Decimal" and not isinstance(value, bool) and isinstance(value, int | float):
        return Decimal(str(value))
    if edm in ("Edm.Int16", "Edm.Int32", "Edm.Int64", "Edm.Byte", "Edm.SByte") \
            and isinstance(value, Decimal | float) and value == int(value):
        return int(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:  # a column without a zone holds UTC (see Kind)
            value = value.replace(tzinfo=dt.UTC)
        return utc_text(value.astimezone(dt.UTC))
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64url_text(value, padded=False)
    return value


class _Exact(json.JSONEncoder):
    def default(self, o: Any) -> Any:
        raise TypeError(f"{o!r} ({type(o).__name__}) has no JSON form")


def dumps(document: Any) -> str:
    """JSON text with every Decimal written exactly as a number (never through a float)."""
    marks: dict[str, str] = {}

    def swap(o: Any) -> Any:
        if isinstance(o, Decimal):
            if not o.is_finite():
                raise ValueError(f"{o} is not a JSON number")
            mark = f"\u0000dec{len(marks)}\u0000"
            marks[mark] = str(o)
            return mark
        if isinstance(o, dict):
            return {k: swap(v) for k, v in o.items()}
        if isinstance(o, list):
            return [swap(v) for v in o]
        return o

    text = json.dumps(swap(document), cls=_Exact, ensure_ascii=False)
    for mark, number in marks.items():
        text = text.replace(json.dumps(mark), number)
    return text


def loads(text: str) -> Any:
    """JSON text as :func:`dumps` writes it: numbers with a fraction as exact Decimals."""
    return _JSON.decode(text)


def literal(edm: str, value: Any) -> str:
    """``value`` as an OData URL literal of Edm type ``edm`` (keys, ``$filter``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if edm == "Edm.String" or (isinstance(value, str) and edm not in (
            "Edm.Guid", "Edm.Date", "Edm.DateTimeOffset", "Edm.TimeOfDay")):
        return "'" + str(value).replace("'", "''") + "'"
    if edm == "Edm.Binary":
        return "binary'" + str(encode(edm, value)) + "'"
    if edm in ("Edm.Decimal", "Edm.Double", "Edm.Single") and isinstance(value, Decimal):
        return str(value)
    return str(encode(edm, value))


def _quote_path(text: str) -> str:
    return urllib.parse.quote(text, safe="(),='*:$-._~@!;+")


_QUERY_SAFE = "$,()'=:*/@"


def _query(params: dict[str, str] | None) -> str:
    """A query string with spaces as %20: OData services read ``+`` as a plus sign, not a
    space (form encoding is not URL encoding)."""
    if not params:
        return ""
    return "?" + "&".join(f"{urllib.parse.quote(k, safe='$')}="
                          f"{urllib.parse.quote(v, safe=_QUERY_SAFE)}"
                          for k, v in params.items())


# -- the client ----------------------------------------------------------------------------

#: OData error codes (as services fill ``error.code``) that name a constraint
_CODE_KINDS: tuple[tuple[str, ViolationKind], ...] = (
    ("PRIMARYKEY", "unique"), ("UNIQUE", "unique"), ("NOTNULL", "not_null"),
    ("FOREIGNKEY", "foreign_key"), ("CHECK", "check"), ("ASSERT_NOT_NULL", "not_null"),
    ("ASSERT_FORMAT", "value"), ("ASSERT_RANGE", "value"), ("ASSERT_ENUM", "value"),
)


class ODataClient:
    """HTTP to one service root: retries 429/503 as ``Retry-After`` says, and translates
    every failure to the error hierarchy at one choke point."""

    def __init__(self, env: str, address: ServiceAddress) -> None:
        httpx = _import_httpx()
        self.env = env
        self.address = address
        self._httpx = httpx
        headers = {"Accept": "application/json", "OData-MaxVersion": "4.01",
                   "OData-Version": "4.0"}
        auth = None
        if address.token:
            headers["Authorization"] = f"Bearer {address.token}"
        elif address.user is not None:
            auth = httpx.BasicAuth(address.user, address.password or "")
        self._client = httpx.Client(base_url=address.root, headers=headers, auth=auth,
                                    timeout=address.timeout, follow_redirects=False)
        self._lock = threading.Lock()  # httpx.Client is thread-safe; close() is not racing

    def close(self) -> None:
        self._client.close()

    def url(self, relative: str) -> str:
        """``relative`` (a next or delta link the service gave) resolved against the service
        root. One that leads off the service's own scheme, host and port is refused: the
        request would carry the environment's credentials there."""
        full = urllib.parse.urljoin(self.address.root, relative)
        mine, theirs = urllib.parse.urlsplit(self.address.root), urllib.parse.urlsplit(full)
        if (theirs.scheme, theirs.netloc.rpartition("@")[2]) != (mine.scheme, mine.netloc):
            raise TerminalConnectorError(
                f"the OData service gave a link to {theirs.scheme}://"
                f"{theirs.netloc.rpartition('@')[2]}, not to itself ({self.address.root}): "
                "not followed, as it would carry the credentials there",
                environment=self.env, hint="the service (or a proxy in front of it) writes "
                "its next and delta links with another address: configure it to use the one "
                "dualwrite's URL names, or name that one in the environment's URL")
        return full

    def request(self, method: str, path: str, *, doing: str, params: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, body: str | None = None,
                write: bool = False, parse: Callable[[Any], Any] | None = None,
                accept: Collection[int] = ()) -> Any:
        """Send one request; return the response (2xx, or a status of ``accept``), or with
        ``parse`` the pair
        (response, ``parse(response)``; a parse that raises TransientConnectorError is a
        garbled answer). ``doing`` names it in errors; ``write``: a refusal is the
        row's fault (ConstraintViolation), not the query's.

        One retry budget (``?retries=``, attempts in all): 429 and 503 are retried for every
        method, after ``Retry-After`` (or a doubling back-off); a GET, which changes nothing,
        is also retried after a timeout, a dropped connection, another 5xx or malformed JSON.
        A write is never sent twice here: whether it was applied is for the caller to find
        out."""
        attempt = 0
        delay = 0.2
        hdrs = dict(headers or {})
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        while True:
            attempt += 1
            last = attempt >= self.address.retries
            try:
                response = self._client.request(method, path + _query(params), headers=hdrs,
                                                content=body.encode() if body is not None
                                                else None)
                status = response.status_code
                if status in (429, 503) and not last:
                    wait = self._retry_after(response, delay)
                    log.info("%s: %s answered %d; retrying in %.1f s", self.env, doing, status,
                             wait)
                    time.sleep(wait)  # the service asked to wait (Retry-After) or is overloaded
                    delay = min(delay * 2, MAX_RETRY_AFTER)
                    continue
                if status >= 400 and status not in accept:
                    raise self._fail(status, self.error_of(response), doing, write=write)
                return (response, parse(response)) if parse is not None else response
            except self._httpx.TimeoutException as exc:
                error: ConnectorError = TransientConnectorError(
                    f"{doing}: the OData service at {self.address.root} did not answer within "
                    f"{self.address.timeout:g} s ({type(exc).__name__})", environment=self.env,
                    hint="the service is slow or down: dualwrite retries; raise ?timeout= in "
                    "the environment's URL if it is only slow")
                cause: BaseException = exc
            except self._httpx.HTTPError as exc:
                error = TransientConnectorError(
                    f"{doing}: the connection to the OData service at {self.address.root} "
                    f"failed or was dropped ({type(exc).__name__}: {exc})",
                    environment=self.env,
                    hint="check that the service is up and reachable; dualwrite retries")
                cause = exc
            except TransientConnectorError as exc:
                error = cause = exc
            if method != "GET" or last:
                raise error from (cause if cause is not error else None)
            log.info("%s: %s failed (%s); retrying in %.1f s", self.env, doing,
                     error.message, delay)
            time.sleep(delay)  # back off before asking again
            delay = min(delay * 2, MAX_RETRY_AFTER)

    @staticmethod
    def _retry_after(response: Any, fallback: float) -> float:
        value = response.headers.get("Retry-After")
        if value:
            try:
                seconds = float(value)
            except ValueError:
                try:
                    when = parsedate_to_datetime(value)
                    seconds = (when - dt.datetime.now(dt.UTC)).total_seconds()
                except (TypeError, ValueError):
                    seconds = fallback
            return min(max(seconds, 0.0), MAX_RETRY_AFTER)
        return fallback

    @staticmethod
    def error_of(response: Any) -> tuple[str | None, str]:
        """(code, message) of an OData error body, or of whatever the body is."""
        try:
            doc = _JSON.decode(response.text)
            err = doc.get("error", doc) if isinstance(doc, dict) else {}
            code = err.get("code")
            msg = err.get("message")
            if isinstance(msg, dict):  # OData 4.0 JSON verbose style: {"value": "..."}
                msg = msg.get("value")
            return (str(code) if code is not None else None,
                    str(msg) if msg else response.text[:300])
        except (ValueError, AttributeError):
            return None, response.text[:300].strip() or response.reason_phrase

    def _fail(self, status: int, error: tuple[str | None, str], doing: str, *, write: bool
              ) -> ConnectorError:
        """The one place an HTTP status becomes an error of the hierarchy."""
        code, message = error
        said = f"{doing}: the OData service answered {status}: {message}"
        env = self.env
        if status in (401, 403):
            return TerminalConnectorError(
                said, environment=env, code=status,
                hint="check the credentials in the environment's URL (user:${PASSWORD}@ for "
                "basic authentication, ?token=${TOKEN} for a bearer token) and that they may "
                "read and write the entity sets the maps name")
        if status == 429 or (status >= 500 and not write):
            return TransientConnectorError(said, environment=env, code=code or status,
                                           hint="the service failed or is overloaded: "
                                           "dualwrite retries; if it persists, look at the "
                                           "service's own log")
        if write and (status in (400, 404, 409, 412, 422, 428) or status >= 500):
            kind: ViolationKind = "other"
            if status == 409:
                kind = "unique"
            elif status == 412:
                kind = "conflict"
            elif status in (400, 422):
                kind = "value"
            for part, k in _CODE_KINDS:
                if code and part in code.upper():
                    kind = k
                    break
            hint = {412: "the row changed in the service since it was read (its ETag no "
                         "longer matches): read it again",
                    428: "the service requires If-Match on updates: it must publish "
                         "Core.OptimisticConcurrency for the entity set"}.get(
                status, "correct the row's values (the service's message says which)")
            return ConstraintViolation(said, environment=env, code=code or status, kind=kind,
                                       hint=hint)
        if status == 410:
            return TerminalConnectorError(said, environment=env, code=status,
                                          hint="the delta link can no longer be followed: "
                                          "read the entity set again asking for change "
                                          "tracking (start_delta)")
        if status == 413:
            return TerminalConnectorError(said, environment=env, code=status,
                                          hint="the change set is larger than the service "
                                          "takes: lower `sync.batch_size`, or raise the "
                                          "service's request size limit")
        if status == 404:
            return TerminalConnectorError(said, environment=env, code=status,
                                          hint="check the entity set's name in the map against "
                                          "the service's $metadata (`dualwrite validate`)")
        return TerminalConnectorError(said, environment=env, code=code or status,
                                      hint="the service refused the request as dualwrite "
                                      "sent it; `dualwrite validate` checks the maps against "
                                      "its $metadata")

    def json(self, response: Any, doing: str) -> Any:
        """The response's JSON body; a malformed one is a transient error (a truncated or
        garbled answer: asking again usually helps)."""
        try:
            return _JSON.decode(response.text)
        except ValueError as exc:
            raise TransientConnectorError(
                f"{doing}: the OData service answered malformed JSON ({exc}; the answer began "
                f"{response.text[:80]!r})", environment=self.env,
                hint="a proxy or the service garbled its answer: dualwrite retries; if it "
                "persists, look at the service's own log") from None


# -- the connector -------------------------------------------------------------------------


class ODataConnector(Connector):
    """``odata+http(s)://HOST:PORT/PATH/``: a remote OData v4 service."""

    capabilities = Capabilities(live=False)

    #: the ETags of rows read by :meth:`fetch` outside a write session, for the writes
    #: that follow (``If-Match``); None: not kept (the follower turns it on: it reads each
    #: twin just before writing it, in one thread)
    etags: ETags | None = None

    #: ask for each written entity back (``Prefer: return=representation``), for
    #: :attr:`ODataWriteSession.written`: what the follower's echo suppression needs; off,
    #: a service need not read each row back (initial sync)
    return_written: bool = False

    def __init__(self, name: str, url: str) -> None:
        super().__init__(name, url)
        self.address = ServiceAddress(name, url)
        self.client = ODataClient(name, self.address)
        self._meta: ServiceMetadata | None = None

    # -- schema ----------------------------------------------------------------------------
    @property
    def metadata(self) -> ServiceMetadata:
        """The service's ``$metadata``, read once (``forget_schema()`` reads it again)."""
        if self._meta is None:
            doing = "read $metadata"
            r = self.client.request("GET", "$metadata", doing=doing,
                                    headers={"Accept": "application/xml"})
            try:
                self._meta = parse_metadata(r.content)
            except MetadataError as exc:
                raise TerminalConnectorError(
                    f"{doing} of {self.address.root}: {exc}", environment=self.name,
                    hint="the URL must be an OData v4 service root (its $metadata is CSDL "
                    "XML)") from None
        return self._meta

    def forget_schema(self) -> None:
        self._meta = None

    def tables(self) -> list[str]:
        return sorted(self.metadata.sets)

    def entity_set(self, table: str) -> EntitySet:
        try:
            return self.metadata.sets[table]
        except KeyError:
            raise TerminalConnectorError(
                f"the OData service has no entity set {table!r}", environment=self.name,
                hint="correct the map's table to one of: "
                + ", ".join(sorted(self.metadata.sets))) from None

    def describe(self, table: str) -> TableSchema:
        return self.entity_set(table).schema

    # -- reads -----------------------------------------------------------------------------
    def _pages(self, table: str, params: dict[str, str], *, page_size: int
               ) -> Iterator[list[dict[str, Any]]]:
        """Every page of a collection request, following ``@odata.nextLink``."""
        doing = f"read {table}"
        headers = {"Prefer": f"odata.maxpagesize={page_size}"}
        path: str | None = _quote_path(table)
        query: dict[str, str] | None = params
        while path is not None:
            r, doc = self.client.request("GET", path, params=query, headers=headers,
                                         doing=doing, parse=lambda r: self.client.json(r, doing))
            value = doc.get("value") if isinstance(doc, dict) else None
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise TransientConnectorError(
                    f"{doing}: the OData service's answer has no `value` list of entities "
                    f"(it began {r.text[:80]!r})", environment=self.name,
                    hint="a proxy or the service garbled its answer: dualwrite retries")
            yield value
            link = doc.get("@odata.nextLink") or doc.get("odata.nextLink")
            path, query = (self.client.url(link), None) if link else (None, None)

    def _decode_rows(self, table: str, columns: Sequence[str],
                     entities: Iterable[dict[str, Any]]) -> list[Row]:
        es = self.entity_set(table)
        out = []
        for e in entities:
            row = []
            for c in columns:
                if c not in e:
                    raise TerminalConnectorError(
                        f"read {table}: the service's answer has no property {c!r}, which its "
                        "$metadata declared: its $metadata may have changed",
                        environment=self.name,
                        hint="run `dualwrite validate` to check the maps against the "
                        "service's $metadata as it is now")
                try:
                    row.append(decode(es.edm.get(c, ""), e[c]))
                except (ValueError, TypeError, KeyError, InvalidOperation) as exc:
                    raise TerminalConnectorError(
                        f"read {table}: property {c!r} has the value {e[c]!r}, which is not an "
                        f"{es.edm.get(c)} ({exc})", environment=self.name,
                        hint="the service's answer does not fit its $metadata: run `dualwrite "
                        "validate`, and report it to the service's owner") from None
            out.append(tuple(row))
        return out

    def _filter(self, table: str, *parts: str | None) -> str | None:
        present = [p for p in parts if p]
        if not present:
            return None
        return " and ".join(f"({p})" if len(present) > 1 else p for p in present)

    def _after(self, table: str, key: Sequence[str], after: Row) -> str:
        """Rows strictly after ``after`` in key order (keyset restart)."""
        edm = self.entity_set(table).edm
        ors = []
        for i in range(len(key)):
            eqs = [f"{key[j]} eq {literal(edm.get(key[j], ''), after[j])}" for j in range(i)]
            eqs.append(f"{key[i]} gt {literal(edm.get(key[i], ''), after[i])}")
            ors.append(" and ".join(eqs))
        return " or ".join(f"({o})" for o in ors) if len(ors) > 1 else ors[0]

    def _keys_filter(self, table: str, key: Sequence[str], keys: Sequence[Row]) -> str:
        edm = self.entity_set(table).edm
        terms = []
        for k in keys:
            eqs = [f"{c} eq {literal(edm.get(c, ''), v)}" for c, v in zip(key, k, strict=True)]
            terms.append(" and ".join(eqs) if len(eqs) == 1 else "(" + " and ".join(eqs) + ")")
        return " or ".join(terms)

    @staticmethod
    def _where(where: Expr | None) -> str | None:
        return to_odata(where) if where is not None else None

    def read(self, table: str, columns: Sequence[str], *, key: Sequence[str],
             where: Expr | None = None, after: Row | None = None,
             batch_size: int = 5000) -> Iterator[list[Row]]:
        schema = self.describe(table)
        select = list(dict.fromkeys([*columns, *key]))
        not_null = " and ".join(f"{k} ne null" for k in key
                                if (c := schema.column(k)) is not None and c.nullable)
        params = {"$select": ",".join(select), "$orderby": ",".join(key)}
        flt = self._filter(table, self._where(where), not_null,
                           self._after(table, key, after) if after is not None else None)
        if flt:
            params["$filter"] = flt
        kpos = [select.index(k) for k in key]
        cpos = [select.index(c) for c in columns]
        last: tuple[Any, ...] | None = None
        batch: list[Row] = []
        for page in self._pages(table, params, page_size=batch_size):
            for full in self._decode_rows(table, select, page):
                k = tuple(canonical(full[i]) for i in kpos)
                if last is not None and not k > last:
                    raise TransientConnectorError(
                        f"read {table}: the service returned key {k!r} after {last!r}, out of "
                        "key order (it may order text by another collation than code points, "
                        "or rows moved between its pages)", environment=self.name,
                        hint="dualwrite retries from its checkpoint; if it persists, the "
                        "service's $orderby on the key does not sort by code point: map a key "
                        "of numbers or GUIDs")
                last = k
                batch.append(tuple(full[i] for i in cpos))
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def query(self, table: str, columns: Sequence[str], *, where: Expr | None = None,
              order_by: Sequence[tuple[str, bool]] = (), limit: int | None = None,
              offset: int = 0) -> list[Row]:
        pk = list(self.describe(table).primary_key)
        order = [f"{c} desc" if desc else c for c, desc in order_by]
        order += [k for k in pk if k not in {c for c, _ in order_by}]
        params = {"$select": ",".join(dict.fromkeys([*columns, *pk])),
                  "$orderby": ",".join(order)}
        if where is not None:
            params["$filter"] = to_odata(where)
        if offset:
            params["$skip"] = str(offset)
        if limit is not None:
            params["$top"] = str(limit)
        rows: list[Row] = []
        for page in self._pages(table, params, page_size=limit or 5000):
            rows += self._decode_rows(table, columns, page)
            if limit is not None and len(rows) >= limit:
                return rows[:limit]
        return rows

    def count(self, table: str, *, where: Expr | None = None) -> int:
        self.entity_set(table)
        params = {"$filter": to_odata(where)} if where is not None else None
        doing = f"count {table}"

        def number(r: Any) -> int:
            try:
                return int(r.text.strip().lstrip("\ufeff"))
            except ValueError:
                raise TransientConnectorError(
                    f"{doing}: the OData service answered {r.text[:80]!r}, not a number",
                    environment=self.name, hint="dualwrite retries") from None

        _, n = self.client.request("GET", f"{_quote_path(table)}/$count", params=params,
                                   headers={"Accept": "text/plain"}, doing=doing, parse=number)
        return int(n)

    def fetch(self, table: str, columns: Sequence[str], *, key: Sequence[str],
              keys: Sequence[Row], etags: ETags | None = None) -> list[Row]:
        """Rows by key; with ``etags`` (or when :attr:`etags` tracks them), the ETag the
        service gave each row (``@odata.etag``) is noted there, by key."""
        out: list[Row] = []
        keys = list(dict.fromkeys(tuple(k) for k in keys))
        noting = [e for e in (etags, self.etags) if e is not None]
        for start in range(0, len(keys), KEYS_PER_REQUEST):
            part = keys[start:start + KEYS_PER_REQUEST]
            params = {"$select": ",".join(dict.fromkeys([*columns, *key])),
                      "$filter": self._keys_filter(table, key, part)}
            for page in self._pages(table, params, page_size=5000):
                out += self._decode_rows(table, columns, page)
                if noting:
                    for k, e in zip(self._decode_rows(table, list(key), page), page,
                                    strict=True):
                        tag = e.get("@odata.etag")
                        if isinstance(tag, str):
                            for n in noting:
                                n.note(table, key, k, tag)
        return out

    def lookup(self, table: str, match: str, values: Iterable[Any], returning: str
               ) -> dict[Any, Any]:
        wanted = list(dict.fromkeys(v for v in values if v is not None))
        found: dict[Any, Any] = {}
        for start in range(0, len(wanted), KEYS_PER_REQUEST):
            part = wanted[start:start + KEYS_PER_REQUEST]
            params = {"$select": ",".join(dict.fromkeys([match, returning])),
                      "$filter": self._keys_filter(table, [match], [(v,) for v in part]),
                      "$orderby": returning}
            for page in self._pages(table, params, page_size=5000):
                for m, r in self._decode_rows(table, [match, returning], page):
                    found.setdefault(canonical(m), r)
        return found

    # -- writes ----------------------------------------------------------------------------
    def entity_path(self, table: str, key: Sequence[str], values: Row) -> str:
        """The entity's address: ``Set(1)``, ``Set(a=1,b='x')`` (by the primary key, or by
        an alternate key the service published)."""
        es = self.entity_set(table)
        if len(key) == 1:
            inner = literal(es.edm.get(key[0], ""), values[0])
        else:
            inner = ",".join(f"{k}={literal(es.edm.get(k, ''), v)}"
                             for k, v in zip(key, values, strict=True))
        return _quote_path(f"{table}({inner})")

    def body(self, table: str, columns: Sequence[str], values: Row) -> dict[str, Any]:
        edm = self.entity_set(table).edm
        return {c: encode(edm.get(c, ""), v) for c, v in zip(columns, values, strict=True)}

    #: why the service takes no ``$batch`` (found when one was answered 404, 405 or 501);
    #: None: it does, as far as is known
    no_batch: str | None = None

    def change_sets(self) -> bool:
        """Whether the service takes atomic ``$batch`` change sets: its ``$metadata`` does
        not say ``Capabilities.BatchSupported`` false, and no ``$batch`` was refused as
        unknown."""
        return self.metadata.batch and self.no_batch is None

    def require_change_sets(self) -> None:
        """Raise TerminalConnectorError unless the service takes atomic change sets (live
        sync needs them)."""
        if not self.change_sets():
            why = self.no_batch or "its $metadata says Capabilities.BatchSupported false"
            raise TerminalConnectorError(
                f"the OData service takes no atomic change sets ({why}), and live sync "
                "needs them: a transaction's writes could be applied in part",
                environment=self.name,
                hint="write to it with `sync --initial` and `dualwrite follow` (row by row, "
                "a refused row to the error inbox); live writes need a service with $batch "
                "(docs/odata.md, OData environments)")

    def applied(self, expectations: Sequence[dict[str, Any]]) -> bool:
        """Whether the service holds every row as ``expectations`` (from
        :meth:`ODataWriteSession.expectations`) say: True when each row written is there with
        the values sent (or gone, for a delete), False when one is not — a change set is
        applied whole or not at all, so one row not as sent means none was. Values are
        compared as the service gives them back (exactly; a service that stores a value
        other than it was sent, e.g. rounding a time's fraction, reads as not applied).
        Raises TransientConnectorError when the service cannot be asked."""
        for exp in expectations:
            es = self.entity_set(exp["set"])
            key = list(exp["key"])
            kvals = tuple(decode(es.edm.get(c, ""), v) for c, v in exp["key"].items())
            want = exp["values"]
            cols = [c for c in (want or {}) if c in es.edm] or key
            rows = self.fetch(es.name, cols, key=key, keys=[kvals])
            if want is None:
                if rows:
                    return False
                continue
            if len(rows) != 1:
                return False
            try:
                sent = [canonical(decode(es.edm[c], want[c])) for c in cols]
            except (ValueError, TypeError, KeyError, InvalidOperation):
                return False
            if [canonical(v) for v in rows[0]] != sent:
                return False
        return True

    @contextmanager
    def transaction(self) -> Iterator[WriteSession]:
        session = ODataWriteSession(self)
        yield session
        session.send()

    # -- changes (see dualwrite.connectors.odata.changes) -----------------------------------
    def change_method(self, table: str, modified: str | None) -> tuple[str | None, str] | None:
        return self.probe_changes(table, modified)

    def probe_changes(self, table: str, modified: str | None) -> tuple[Method | None, str]:
        """How the changes of ``table`` can be read: ask for change tracking once and see
        whether the service applies it, else poll ``modified`` if the set has it."""
        es = self.entity_set(table)
        key = list(es.schema.primary_key)
        # one page of one row, without $top: a service may track no read that has one
        r = self.client.request("GET", _quote_path(table) + _query(
            {"$select": ",".join(key)}), doing=f"probe change tracking of {table}",
            headers={"Prefer": "odata.track-changes, odata.maxpagesize=1"})
        return choose_method(applies_track_changes(r.headers.get("Preference-Applied")),
                             modified, es.schema.columns)

    def poll_changes(self, table: str, columns: Sequence[str], modified: str,
                     poll: ModifiedPoll, *, page_size: int = 5000) -> list[RowChange]:
        """One poll of ``table`` by its timestamp property ``modified``: the rows changed
        since the cursor (less its overlap), de-duplicated and without dualwrite's own
        writes (see :class:`ModifiedPoll`); advances the cursor."""
        es = self.entity_set(table)
        key = list(es.schema.primary_key)
        select = list(dict.fromkeys([*key, *columns, modified]))
        params = {"$select": ",".join(select), "$orderby": ",".join([modified, *key])}
        bound = poll.lower_bound()
        if bound is not None:
            params["$filter"] = f"{modified} ge {literal(es.edm.get(modified, ''), bound)}"
        rows = []
        for page in self._pages(table, params, page_size=page_size):
            for r in self._decode_rows(table, select, page):
                values = dict(zip(select, r, strict=True))
                rows.append((tuple(values[k] for k in key), values[modified], values))
        return poll.take(rows)

    def newest_modified(self, table: str, modified: str) -> dt.datetime | None:
        """The newest value of ``modified`` in ``table`` (None when it has no rows): where
        polling starts."""
        es = self.entity_set(table)
        params = {"$select": ",".join(dict.fromkeys([*es.schema.primary_key, modified])),
                  "$orderby": f"{modified} desc", "$top": "1",
                  "$filter": f"{modified} ne null"}
        for page in self._pages(table, params, page_size=1):
            for (value,) in self._decode_rows(table, [modified], page[:1]):
                return value if isinstance(value, dt.datetime) else None
        return None

    def start_delta(self, table: str, columns: Sequence[str], *, page_size: int = 5000
                    ) -> tuple[list[RowChange], str] | None:
        """Read ``table`` whole asking for change tracking: its rows (as upserts) and the
        delta link to ask for what changes from now on; None when the service does not
        apply ``odata.track-changes``."""
        es = self.entity_set(table)
        key = list(es.schema.primary_key)
        params = {"$select": ",".join(dict.fromkeys([*key, *columns]))}
        doing = f"read {table} tracking changes"
        headers = {"Prefer": f"odata.track-changes, odata.maxpagesize={page_size}"}
        r = self.client.request("GET", _quote_path(table) + _query(params), doing=doing,
                                headers=headers)
        if not applies_track_changes(r.headers.get("Preference-Applied")):
            return None
        out: list[RowChange] = []
        page = self._delta_page(table, key, self.client.json(r, doing), doing)
        while True:
            out += page.changes
            if page.next_link:
                page = self._get_delta(table, key, page.next_link, doing, headers)
                continue
            if not page.delta_link:
                raise TransientConnectorError(
                    f"{doing}: the service applied odata.track-changes but its last page "
                    "has no @odata.deltaLink", environment=self.name,
                    hint="dualwrite retries; if it persists the service's change tracking "
                    "is broken: poll a modified property instead (`modified:`)")
            return out, page.delta_link

    def read_delta(self, table: str, delta_link: str, *, page_size: int = 5000
                   ) -> tuple[list[RowChange], str]:
        """What changed in ``table`` since ``delta_link`` was given, and the next one."""
        key = list(self.entity_set(table).schema.primary_key)
        doing = f"read the changes of {table}"
        headers = {"Prefer": f"odata.maxpagesize={page_size}"}
        out: list[RowChange] = []
        page = self._get_delta(table, key, delta_link, doing, headers)
        while True:
            out += page.changes
            if page.next_link:
                page = self._get_delta(table, key, page.next_link, doing, headers)
            elif page.delta_link:
                return out, page.delta_link
            else:
                raise TransientConnectorError(
                    f"{doing}: the delta response's last page has no @odata.deltaLink",
                    environment=self.name, hint="dualwrite retries from the same delta link")

    def _get_delta(self, table: str, key: list[str], link: str, doing: str,
                   headers: dict[str, str]) -> DeltaPage:
        _, doc = self.client.request("GET", self.client.url(link), doing=doing,
                                     headers=headers, parse=lambda r: self.client.json(r, doing))
        return self._delta_page(table, key, doc, doing)

    def _delta_page(self, table: str, key: list[str], doc: Any, doing: str) -> DeltaPage:
        edm = self.entity_set(table).edm
        try:
            return parse_delta_page(doc, key, edm, lambda p, v: decode(edm.get(p, ""), v))
        except (ValueError, TypeError, KeyError, InvalidOperation) as exc:
            raise TransientConnectorError(
                f"{doing}: the delta response cannot be read ({exc})", environment=self.name,
                hint="dualwrite retries from the same delta link; if it persists, poll a "
                "modified property instead (`modified:`)") from None

    # -- link bookkeeping ------------------------------------------------------------------
    # The service is not dualwrite's to keep a table in: the link is the state store's alone.
    def get_link(self) -> LinkRecord | None:
        return None

    def set_link(self, record: LinkRecord) -> None:
        pass

    def clear_link(self) -> None:
        pass

    def close(self) -> None:
        self.client.close()


class ETags:
    """The ETags of rows read, by entity set and key, for the writes that follow: an update
    or delete sends ``If-Match`` with the one read (a 412 then says the row changed in the
    service since), or ``*`` when none was read. After the write the row has another,
    which the next read notes (a write sent again after its change set failed sends the
    same one). Holds at most :data:`MAX` (the oldest are forgotten: their
    writes send ``*``)."""

    MAX = 100_000

    def __init__(self) -> None:
        self._tags: dict[tuple[str, tuple[str, ...], Row], str] = {}

    @staticmethod
    def _id(table: str, key: Sequence[str], values: Row) -> tuple[str, tuple[str, ...], Row]:
        return (table.casefold(), tuple(k.casefold() for k in key),
                tuple(canonical(v) for v in values))

    def note(self, table: str, key: Sequence[str], values: Row, tag: str) -> None:
        ident = self._id(table, key, values)
        self._tags.pop(ident, None)
        self._tags[ident] = tag
        if len(self._tags) > self.MAX:
            del self._tags[next(iter(self._tags))]

    def get(self, table: str, key: Sequence[str], values: Row) -> str | None:
        return self._tags.get(self._id(table, key, values))

    def __len__(self) -> int:
        return len(self._tags)


class OutcomeUnknown(TransientConnectorError):
    """A change set was sent and no answer says whether the service applied it."""


class ODataWriteSession(WriteSession):
    """Writes collected for one JSON ``$batch`` atomicity group, sent when the transaction
    ends (:meth:`send`): all are applied or none. Reads inside the session (``fetch``,
    ``lookup``) see the service as it is, without the writes not sent yet; ``update`` and
    ``delete`` count the rows asked for (the service says which it found only at the end: a
    missing one fails the whole change set with 404)."""

    def __init__(self, connector: ODataConnector) -> None:
        self.c = connector
        self.requests: list[dict[str, Any]] = []
        #: after :meth:`send`: (entity set, the entity as the service stored it) for each
        #: create and update whose answer carried it (asked for with
        #: ``ODataConnector.return_written``): what echo suppression compares a poll with
        self.written: list[tuple[str, dict[str, Any]]] = []
        self._sets: list[str] = []
        #: per request: (entity set, key columns, key values) of the row it writes, or None
        #: for a create whose key the service makes (it cannot be read back by key)
        self.targets: list[tuple[str, tuple[str, ...], Row] | None] = []
        #: ETags of the rows read in this session (:meth:`fetch`)
        self.etags = ETags()
        self._written: set[tuple[str, tuple[str, ...], Row]] = set()

    def _add(self, method: str, url: str, body: dict[str, Any] | None, etags: bool,
             target: tuple[str, tuple[str, ...], Row] | None = None) -> None:
        req: dict[str, Any] = {"id": str(len(self.requests) + 1), "atomicityGroup": "g",
                               "method": method, "url": url}
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if body is not None and self.c.return_written:
            headers["Prefer"] = "return=representation"
        if etags and method in ("PATCH", "DELETE"):
            headers["If-Match"] = self._if_match(target)
        if headers:
            req["headers"] = headers
        if body is not None:
            req["body"] = body
        self.requests.append(req)
        self._sets.append(url.split("(", 1)[0])
        self.targets.append(target)

    def _if_match(self, target: tuple[str, tuple[str, ...], Row] | None) -> str:
        """The ETag of the row as it was read (in this session, or by the connector), or
        ``*`` (the row as it is now) when none was, or when an earlier request of this
        change set writes the row already (that one carries the check)."""
        if target is None:
            return "*"
        ident = ETags._id(*target)
        if ident in self._written:
            return "*"
        self._written.add(ident)
        tag = self.etags.get(*target)
        if tag is None and self.c.etags is not None:
            tag = self.c.etags.get(*target)
        return tag or "*"

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        es = self.c.entity_set(table)
        # the key a create can be read back by: the primary key, else an alternate key,
        # among the columns sent
        given = {c.casefold() for c in columns}
        key = next((tuple(k) for k in [es.schema.primary_key, *es.schema.unique]
                    if k and all(c.casefold() in given for c in k)), None)
        pos = {c.casefold(): i for i, c in enumerate(columns)}
        for r in rows:
            target = (es.name, key, tuple(r[pos[c.casefold()]] for c in key)) if key else None
            self._add("POST", _quote_path(table), self.c.body(table, columns, r), es.etags,
                      target)

    def update(self, table: str, key: Sequence[str], columns: Sequence[str],
               rows: Sequence[tuple[Row, Row]]) -> int:
        es = self.c.entity_set(table)
        for k, vals in rows:
            self._add("PATCH", self.c.entity_path(table, key, k),
                      self.c.body(table, columns, vals), es.etags, (es.name, tuple(key), k))
        return len(rows)

    def delete(self, table: str, key: Sequence[str], keys: Sequence[Row]) -> int:
        es = self.c.entity_set(table)
        for k in keys:
            self._add("DELETE", self.c.entity_path(table, key, k), None, es.etags,
                      (es.name, tuple(key), k))
        return len(keys)

    def expectations(self) -> list[dict[str, Any]] | None:
        """What the service holds once the collected change set is applied, per row written
        (JSON-ready, to be kept in the state store): ``{"set", "key": {property: value},
        "values": {property: value} | None}`` (None: the row is gone), the requests of one
        row folded in order. None when a create's key is made by the service: such a change
        set cannot be read back by key (:meth:`ODataConnector.applied`)."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for req, target in zip(self.requests, self.targets, strict=True):
            if target is None:
                return None
            name, key, values = target
            edm = self.c.entity_set(name).edm
            k = {c: encode(edm.get(c, ""), v) for c, v in zip(key, values, strict=True)}
            ident = (name, dumps(sorted(k.items())))
            body = req.get("body")
            if req["method"] == "DELETE":
                out[ident] = {"set": name, "key": k, "values": None}
            elif req["method"] == "PATCH" and ident in out and out[ident]["values"] is not None:
                out[ident]["values"] = {**out[ident]["values"], **(body or {})}
            else:
                out[ident] = {"set": name, "key": k, "values": {**k, **(body or {})}}
        return list(out.values())

    def send_as_last_resource(self) -> None:
        """Send the collected writes as one change set, once, and say what became of it:
        returns when the service applied it; raises TerminalConnectorError (a
        ConstraintViolation for a refused request) or TransientConnectorError when it was
        certainly not applied (refused, answered 4xx, or never sent: the connection could
        not be made); raises :class:`OutcomeUnknown` when it was sent and no answer tells
        (a timeout, a dropped connection, a 5xx a gateway may have given, a garbled
        answer): the caller reads the rows back (:meth:`ODataConnector.applied`)."""
        if not self.requests:
            return
        self.c.require_change_sets()
        httpx = self.c.client._httpx
        try:
            refused = self._send_once()
        except TerminalConnectorError:
            raise  # the service answered, refusing the whole $batch
        except TransientConnectorError as exc:
            cause = exc.__cause__
            if isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout):
                raise  # never sent
            raise OutcomeUnknown(
                f"{exc.message.removeprefix(f'{self.c.name}: ')} (sent: whether the service "
                "applied the change set is unknown)", environment=self.c.name,
                hint="dualwrite reads the rows back by key to find out") from exc
        if refused is not None:
            raise refused[1]

    def fetch(self, table: str, columns: Sequence[str], *, key: Sequence[str],
              keys: Sequence[Row]) -> list[Row]:
        return self.c.fetch(table, columns, key=key, keys=keys, etags=self.etags)

    def lookup(self, table: str, match: str, values: Iterable[Any], returning: str
               ) -> dict[Any, Any]:
        return self.c.lookup(table, match, values, returning)

    def send(self) -> None:
        """Send the collected writes as one change set. Raises ConstraintViolation naming
        the first request the service refused (nothing was applied), TransientConnectorError
        when the service could not be reached or failed as a whole.

        An earlier send whose outcome was unknown (its connection dropped after the service
        had it) may have been applied: sent again, its creates then conflict with
        themselves. So when a create of the set is refused as a duplicate, the rows the set
        creates are read back by key, and those that are there exactly as they would be
        created are taken as done; the rest is sent once more.

        A service without ``$batch`` (its ``$metadata`` says so, or it answers 404, 405 or
        501 to one) gets one request per row instead (:meth:`_send_each`): not atomic."""
        if not self.requests:
            return
        if not self.c.change_sets():
            self._send_each()
            return
        try:
            refused = self._send_once()
        except TerminalConnectorError:
            if self.c.no_batch is None:
                raise
            self._send_each()  # the $batch was refused unread: nothing of it was applied
            return
        if refused is None:
            return
        req, error = refused
        if not (isinstance(error, ConstraintViolation) and error.kind == "unique"
                and req["method"] == "POST"):
            raise error
        kept = [(r, es) for r, es in zip(self.requests, self._sets, strict=True)
                if not self._arrived(r, es)]
        if len(kept) == len(self.requests):
            raise error
        log.info("%s: %d create(s) of a change set were there already (an earlier send's "
                 "outcome was unknown); sending the rest", self.c.name,
                 len(self.requests) - len(kept))
        self.requests = [r for r, _ in kept]
        self._sets = [es for _, es in kept]
        if self.requests:
            refused = self._send_once()
            if refused is not None:
                raise refused[1]

    def _send_each(self) -> None:
        """The collected writes one request each, in order, to a service without ``$batch``:
        not atomic. Raises the first refusal (ConstraintViolation) or failure; the requests
        before it were applied. Sent again, the writes are idempotent: a create refused as a
        duplicate whose row is there exactly as sent is taken as done (an earlier attempt
        made it), a delete of a row already gone (404) too; an update sets the same values."""
        client = self.c.client
        for req, entity_set in zip(self.requests, self._sets, strict=True):
            what = f"{req['method']} {urllib.parse.unquote(req['url'])} (no $batch: one " \
                   "request per row)"
            headers = dict(req.get("headers") or {})
            body = req.get("body")
            try:
                r = client.request(req["method"], req["url"], doing=what, headers=headers,
                                   body=dumps(body) if body is not None else None, write=True,
                                   accept=(404,) if req["method"] == "DELETE" else ())
            except ConstraintViolation as exc:
                if req["method"] == "POST" and exc.kind == "unique" and \
                        self._arrived(req, entity_set):
                    continue
                raise
            if req["method"] != "DELETE" and r.content:  # (a DELETE's 404: gone already)
                try:
                    got = client.json(r, what)
                    es = self.c.entity_set(urllib.parse.unquote(entity_set))
                    self.written.append((es.name, {p: decode(es.edm[p], v)
                                                   for p, v in got.items() if p in es.edm}))
                except (ConnectorError, ValueError, TypeError, KeyError, InvalidOperation,
                        AttributeError):
                    log.warning("%s: the answer to a write of %s cannot be read",
                                self.c.name, entity_set)

    def _arrived(self, req: dict[str, Any], entity_set: str) -> bool:
        """Whether a create is in the service already, exactly as it would be created."""
        if req["method"] != "POST" or not isinstance(req.get("body"), dict):
            return False
        es = self.c.entity_set(urllib.parse.unquote(entity_set))
        key = list(es.schema.primary_key)
        body: dict[str, Any] = req["body"]
        if not all(k in body for k in key):
            return False  # a key the service makes: nothing to read it back by
        try:
            sent = {p: decode(es.edm[p], v) for p, v in body.items() if p in es.edm}
        except (ValueError, TypeError, KeyError, InvalidOperation):
            return False
        names = list(sent)
        rows = self.c.fetch(es.name, names, key=key, keys=[tuple(sent[k] for k in key)])
        return len(rows) == 1 and all(
            canonical(a) == canonical(b) for a, b in zip(rows[0], sent.values(), strict=True))

    def _send_once(self) -> tuple[dict[str, Any], ConnectorError] | None:
        """One $batch of the collected writes; the first request refused and its error, or
        None when the change set was applied."""
        client = self.c.client
        n = len(self.requests)
        doing = f"write {n} change(s) in one $batch change set"
        r = client.request("POST", "$batch", doing=doing, body=dumps({"requests": self.requests}),
                           headers={"Accept": "application/json"}, accept=NO_BATCH)
        if r.status_code in NO_BATCH:
            # nothing was applied: the service does not know $batch at all
            self.c.no_batch = f"it answered {r.status_code} to $batch"
            log.warning("%s: the service answered %d to $batch: writing row by row, without "
                        "atomicity, from now on", self.c.name, r.status_code)
            raise TerminalConnectorError(
                f"{doing}: the OData service answered {r.status_code}: it takes no $batch",
                environment=self.c.name, code=r.status_code,
                hint="dualwrite writes to it row by row from now on; live sync needs atomic "
                "change sets and is refused")
        doc = client.json(r, doing)
        responses = doc.get("responses") if isinstance(doc, dict) else None
        if not isinstance(responses, list):
            raise TransientConnectorError(
                f"{doing}: the answer to $batch has no `responses` list (it began "
                f"{r.text[:80]!r})", environment=self.c.name,
                hint="the service may not speak the JSON $batch format of OData 4.01")
        by_id = {str(x.get("id")): x for x in responses if isinstance(x, dict)}
        refused = self._refused(by_id, responses, doing)
        if refused is not None:
            return refused
        for req, entity_set in zip(self.requests, self._sets, strict=True):
            got = by_id.get(req["id"]) or {}
            body = got.get("body")
            if isinstance(body, dict) and "error" not in body and req["method"] != "DELETE":
                es = self.c.entity_set(urllib.parse.unquote(entity_set))
                try:
                    self.written.append((es.name, {
                        p: decode(es.edm[p], v) for p, v in body.items() if p in es.edm}))
                except (ValueError, TypeError, KeyError, InvalidOperation):
                    # committed all the same: without it, the row's echo is not suppressed
                    log.warning("%s: the answer to a write of %s does not fit $metadata",
                                self.c.name, es.name)
        return None

    def _refused(self, by_id: dict[str, Any], responses: list[Any], doing: str
                 ) -> tuple[dict[str, Any], ConnectorError] | None:
        """The first request of the change set the service refused, and its error."""
        client = self.c.client
        # a request that failed only because another of its group did (424 Failed
        # Dependency) is named last: the one that failed itself says what is wrong
        ordered = sorted(self.requests, key=lambda q: int(
            (by_id.get(q["id"]) or {}).get("status", 0)) == 424)
        for req in ordered:
            got = by_id.get(req["id"])
            status = int(got.get("status", 0)) if got else 0
            if 200 <= status < 300:
                continue
            if got is None:
                # a service that answers a failed change set with one error for the group
                got = next((x for x in responses if isinstance(x, dict)
                            and int(x.get("status", 0)) >= 400), None)
                if got is None:
                    continue
                status = int(got.get("status", 0))
            body = got.get("body") if isinstance(got.get("body"), dict) else {}
            err = body.get("error", {}) if isinstance(body, dict) else {}
            message = str(err.get("message") or got.get("body") or "")
            code = str(err["code"]) if err.get("code") is not None else None
            what = f"{doing}: {req['method']} {urllib.parse.unquote(req['url'])}"
            if status in (429, 503):
                return req, TransientConnectorError(
                    f"{what}: the service answered {status}: {message}",
                    environment=self.c.name, hint="dualwrite retries")
            return req, client._fail(status, (code, message), what, write=True)
        return None
