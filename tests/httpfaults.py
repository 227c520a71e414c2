"""An HTTP fault proxy for tests (imported by tests): a loopback HTTP server in front of a
real OData service that forwards every request, except those a test has asked to fail.

    with HttpFaults(cap.root) as proxy:           # http://127.0.0.1:<port>/<same path>
        proxy.fail("GET", "Customers", "500")     # the next matching request answers 500
        proxy.fail("POST", r"\\$batch", "drop")    # ... is answered by a closed connection

Faults, each for one request (``times`` for more): ``"500"``/``"503"``/any status (an OData
error body), ``"429:<seconds>"`` (with ``Retry-After``), ``"malformed"`` (a 200 whose JSON is
cut short), ``"drop"`` (the connection closed without an answer), ``"lost"`` (forwarded,
and the connection closed before the answer: its outcome unknown to the client), ``"hang"``
(forwarded, and no answer until the proxy closes: the client's request times out),
``"strip:<property>"`` (forwarded, and the property removed from every entity of the
answer: the service's answers no longer fit its ``$metadata``), ``"link:<url>"`` (forwarded,
with ``@odata.nextLink`` set to the URL), or a callable (called, then the request
forwarded: a change made in the service just before it, by ``proxy.before(...)``).
``seen`` lists every request as (method, path and query, fault or None — ``"before"``
for a callable —, time), in order.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import httpx

#: not forwarded (Host is: a service's nextLinks then point at the proxy, not past it)
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class HttpFaults:
    def __init__(self, target_root: str) -> None:
        parts = urllib.parse.urlsplit(target_root)
        self.target = f"{parts.scheme}://{parts.netloc}"
        self.path = parts.path
        self._faults: list[tuple[str, re.Pattern[str], str | Callable[[], None]]] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.seen: list[tuple[str, str, str | None, float]] = []
        self._client = httpx.Client(base_url=self.target, timeout=60)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"

    def fail(self, method: str, path: str, fault: str, *, times: int = 1) -> None:
        """The next ``times`` requests of ``method`` whose path (after the service root)
        matches the regular expression ``path`` get ``fault``."""
        with self._lock:
            self._faults += [(method.upper(), re.compile(path), fault)] * times

    def before(self, method: str, path: str, action: Callable[[], None]) -> None:
        """Call ``action`` when the next request of ``method`` matching ``path`` arrives,
        then forward the request."""
        with self._lock:
            self._faults.append((method.upper(), re.compile(path), action))

    def clear(self) -> None:
        """Forget the faults not given yet: every request is forwarded from now on."""
        with self._lock:
            self._faults.clear()

    def pending(self) -> int:
        with self._lock:
            return len(self._faults)

    def _take(self, method: str, rel: str) -> str | Callable[[], None] | None:
        with self._lock:
            for i, (m, rx, fault) in enumerate(self._faults):
                if m == method and rx.match(rel):
                    del self._faults[i]
                    return fault
        return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        rel = urllib.parse.unquote(h.path[len(self.path):] if h.path.startswith(self.path)
                                   else h.path)
        fault = self._take(h.command, rel)
        if callable(fault):
            fault()
            fault = "before"
        self.seen.append((h.command, rel, fault, time.monotonic()))
        if fault == "drop":
            h.close_connection = True
            h.connection.shutdown(2)
            return
        if fault == "malformed":
            self._answer(h, 200, b'{"@odata.context":"$metadata#X","value":[{"ID":1,"na',
                         {"Content-Type": "application/json"})
            return
        if fault and fault.split(":")[0].isdigit():
            status, _, after = fault.partition(":")
            headers = {"Content-Type": "application/json"}
            if after:
                headers["Retry-After"] = after
            error = {"error": {"code": status, "message": f"injected fault {status}"}}
            self._answer(h, int(status), json.dumps(error).encode(), headers)
            return
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
        r = self._client.request(h.command, h.path, headers=headers, content=body)
        if fault in ("lost", "hang"):  # the service did it; its answer never arrives
            if fault == "hang":
                self._closing.wait()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        content = r.content
        if fault and fault.startswith("strip:"):
            prop = fault.split(":", 1)[1]
            doc = r.json()
            for e in doc.get("value", []):
                e.pop(prop, None)
            content = json.dumps(doc).encode()
        if fault and fault.startswith("link:"):
            doc = r.json()
            doc["@odata.nextLink"] = fault.split(":", 1)[1]
            content = json.dumps(doc).encode()
        self._answer(h, r.status_code, content,
                     {k: v for k, v in r.headers.items() if k.lower() not in _HOP})

    @staticmethod
    def _answer(h: BaseHTTPRequestHandler, status: int, body: bytes,
                headers: dict[str, str]) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def __enter__(self) -> HttpFaults:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=30)
        self._client.close()
