"""``/metrics`` in the Prometheus text format, on ``serve`` and on ``run --metrics-port``.

Two kinds of series:

- this process's counters (:mod:`dualwrite.engine.metrics`: changes, transactions, errors,
  conflicts, apply durations, live transactions, the applier lease; and here the OData
  requests by status code), kept by prometheus-client;
- the link's state, read when scraped (at most once a second) from the state store and the
  change logs, the same for every process of the link: lag, queues, the error inbox, map
  states, initial sync progress, in-doubt transactions, processes by role, alerts by state,
  and ``dualwrite_build_info``.

Labels are ``link``, ``map``, ``direction`` and small closed sets; never a key value.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dualwrite.engine.link import Link

ODATA_REQUESTS = Counter(
    "dualwrite_odata_requests", "OData requests served, by environment, method and status code",
    ["link", "environment", "method", "code"])

#: every state a map can be in, as ``dualwrite_map_state`` enumerates them
MAP_STATES = ("not running", "initializing", "synced", "running", "paused", "resuming",
              "failed", "stopped", "held")


def _version() -> str:
    try:
        return version("dualwrite")
    except PackageNotFoundError:  # a checkout on sys.path, not installed
        return "unknown"


class LinkCollector(Collector):
    """The link's state as gauges, read at most once a second however often it is
    scraped (status reads both change logs)."""

    def __init__(self, link: Link, max_age: float = 1.0) -> None:
        self.link = link
        self.max_age = max_age
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > self.max_age:
                self._cached = (time.monotonic(), self._read())
            yield from self._cached[1]

    def _read(self) -> list[Metric]:
        link = self.link
        name = link.config.link_name
        info = InfoMetricFamily("dualwrite_build", "The dualwrite version of this process")
        info.add_metric([], {"version": _version()})
        out: list[Metric] = [info]
        rows = link.status()
        monitor = link.monitor
        gauges: dict[str, tuple[str, list[str]]] = {
            "lag_seconds": ("Age of the oldest change waiting to be applied, seconds", ["map"]),
            "lag_changes": ("Changes waiting to be applied (running maps)", ["map"]),
            "queued_changes": ("Changes queued: in the change logs or parked in the state "
                               "store", ["map"]),
            "error_inbox_entries": ("Open entries of the error inbox", ["map"]),
            "map_state": ("1 for the state the map is in, 0 for the others",
                          ["map", "state"]),
            "initial_sync_rows_copied": ("Rows the latest initial sync of the map has merged",
                                         ["map"]),
            "initial_sync_rows_expected": ("Rows the latest initial sync of the map expects "
                                           "(the larger side)", ["map"]),
            "in_doubt_transactions": ("Live transactions decided, not yet committed on "
                                      "every side", []),
            "processes": ("Live run/serve processes of the link, by role", ["role"]),
            "alerts": ("Alerts by state", ["state"]),
        }
        fam = {k: GaugeMetricFamily(f"dualwrite_{k}", doc, labels=["link", *labels])
               for k, (doc, labels) in gauges.items()}
        held = {r["map"] for r in rows if (r.get("note") or "").startswith("held")}
        for r in rows:
            m = r["map"]
            fam["lag_seconds"].add_metric([name, m], float(r["lag_seconds"] or 0.0))
            fam["lag_changes"].add_metric([name, m], float(r["lag_changes"] or 0))
            fam["queued_changes"].add_metric([name, m], float(r["queued"] or 0))
            fam["error_inbox_entries"].add_metric([name, m], float(r["errors"] or 0))
            current = "held" if m in held else r["state"]
            for st in MAP_STATES:
                fam["map_state"].add_metric([name, m, st], 1.0 if st == current else 0.0)
        for m, p in monitor.sync_progress().items():
            fam["initial_sync_rows_copied"].add_metric([name, m], float(p["done"]))
            if p["total"] is not None:
                fam["initial_sync_rows_expected"].add_metric([name, m], float(p["total"]))
        fam["in_doubt_transactions"].add_metric([name], float(monitor.in_doubt()))
        roles: dict[str, int] = {"applier": 0, "standby": 0, "server": 0}
        for proc in link.processes():
            if proc["alive"]:
                roles[proc["role"]] = roles.get(proc["role"], 0) + 1
        for role, n in roles.items():
            fam["processes"].add_metric([name, role], float(n))
        counts = monitor.alert_counts()
        for st in ("firing", "acknowledged", "cleared"):
            fam["alerts"].add_metric([name, st], float(counts.get(st, 0)))
        return [*out, *fam.values()]


class _Both(Collector):
    """This process's counters (the default registry) and the link's gauges, as one."""

    def __init__(self, link: LinkCollector) -> None:
        self.link = link

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
        yield from self.link.collect()


def registry_for(link: Link) -> CollectorRegistry:
    """A registry with everything ``/metrics`` shows for ``link``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Both(LinkCollector(link)))
    return registry


def metrics_endpoint(link: Link) -> Any:
    """The Starlette endpoint of ``GET /metrics``."""
    from starlette.concurrency import run_in_threadpool

    registry = registry_for(link)

    async def endpoint(_request: Request) -> Response:
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
    return endpoint


def start_metrics_server(link: Link, host: str, port: int) -> Any:
    """Serve ``/metrics`` for ``link`` on a thread of its own (``run --metrics-port``);
    returns the server (``server_port``, ``shutdown()``)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=registry_for(link))
    return server


class ODataRequestCounter:
    """ASGI middleware: counts every request under ``/odata/<env>/`` by environment, method
    and status code."""

    def __init__(self, app: ASGIApp, link_name: str) -> None:
        self.app = app
        self.link_name = link_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith("/odata/"):
            await self.app(scope, receive, send)
            return
        env = path.split("/", 3)[2] or "-"
        seen: dict[str, int] = {}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            ODATA_REQUESTS.labels(self.link_name, env, scope.get("method", "-"),
                                  str(seen.get("code", 500))).inc()


__all__ = ["MAP_STATES", "ODATA_REQUESTS", "LinkCollector", "ODataRequestCounter",
           "metrics_endpoint", "registry_for", "start_metrics_server"]
