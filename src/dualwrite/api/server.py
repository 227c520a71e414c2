"""The HTTP server of ``dualwrite serve``: OData per environment, the console, ``/metrics``,
health endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route

from dualwrite.api.admin import admin_routes
from dualwrite.api.console import console_mount
from dualwrite.api.link_backend import LinkBackend
from dualwrite.api.metrics import ODataRequestCounter, metrics_endpoint
from dualwrite.api.odata import odata_mount
from dualwrite.engine.capture import run_applier
from dualwrite.engine.delta import ChangeFeed
from dualwrite.engine.link import Link
from dualwrite.engine.live_odata import odata_side
from dualwrite.engine.monitor import check_applier
from dualwrite.engine.odata_follow import run_follower
from dualwrite.errors import DualwriteError, TransientConnectorError

log = logging.getLogger("dualwrite.serve")


class QuietServer(uvicorn.Server):
    """uvicorn's server, its housekeeping loop waking once a second instead of ten times.
    That loop only refreshes the ``Date`` header (once a second either way) and looks for a
    stop request: an idle serve spent about a quarter of its CPU in the tenfold tick (py-spy
    of a quiet PostgreSQL <-> MariaDB link). :meth:`request_exit` wakes it at once, so a
    stop is not a second late."""

    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._wake, self._loop = asyncio.Event(), asyncio.get_running_loop()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            # on_tick refreshes the Date header when counter % 10 == 0: at every tick here
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            should_exit = await self.on_tick(counter)

    def request_exit(self) -> None:
        """Stop serving (from any thread): as ``should_exit = True``, without the wait."""
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to wake
                loop.call_soon_threadsafe(wake.set)


def _apply(link: Link, stop: threading.Event) -> None:
    """Apply captured changes as `dualwrite run` does: the applier, or on a link with an
    OData side the follower (dualwrite.engine.odata_follow), under the link's applier lease
    either way (a standby while another process holds it)."""
    own = Link(link.config)
    own.rules = link.rules  # the rules serve loaded (read-only once loaded: shared safely)
    try:
        if odata_side(own.connectors) is not None:
            run_follower(own, stop, say=lambda message, event: log.info(
                message, extra={"event": event}),
                interval=own.config.model.capture.idle_poll_max, command="serve")
        else:
            run_applier(own, stop)
    except Exception:  # the server keeps serving; the failure is in the log and /readyz
        log.exception("the capture applier stopped")
    finally:
        own.close()


#: seconds between serve's own heartbeats (a third of HEARTBEAT_TIMEOUT at most)
WATCH_EVERY = 3.0


def _watch(link: Link, stop: threading.Event, feed: ChangeFeed) -> None:
    """While serve runs: its own heartbeat as role ``server`` every WATCH_EVERY seconds
    (well inside HEARTBEAT_TIMEOUT: a quiet serve costs little); every second beat, the
    no-applier alert raised or cleared and alerts whose cause is gone cleared (so that they
    move without anyone running `status`), and the delta journals kept (sequenced, pruned to
    ``serve.delta_retention_seconds``, tables of stopped maps no longer tracked)."""
    me = link.state.register_process(link.config.link_name, "server")
    beats = 0
    try:
        while not stop.wait(WATCH_EVERY):
            try:
                link.state.heartbeat(me, role="server")
                beats += 1
                if beats % 2 == 0:
                    check_applier(link)
                    link.monitor.refresh()
                    feed.housekeep(link.config.model.serve.delta_retention_seconds)
            except Exception:  # the state store may be busy or gone for a moment
                log.warning("serve: heartbeat or alert check failed", exc_info=True)
    finally:
        try:
            link.state.unregister_process(me)
        except Exception:
            log.warning("serve: could not unregister", exc_info=True)


def create_server_app(link: Link, *, apply_captured: bool = False) -> Starlette:
    """The app: ``/odata/<env>/...``, ``/admin/...`` (tokens and map control, role admin;
    see :mod:`dualwrite.api.admin`), ``/console/`` (the web console, see
    :mod:`dualwrite.api.console`), ``/metrics`` (Prometheus), ``/healthz`` (the process is
    up) and ``/readyz`` (both databases answer). The process registers as role ``server``
    with a heartbeat. On start, in-doubt transactions are recovered first. With
    ``apply_captured`` a background thread also applies captured changes, as ``dualwrite
    run`` does (on its own connections; a standby while another applier holds the link)."""
    backend = LinkBackend(link)

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> JSONResponse:
        checks = {}
        ok = True
        for env in backend.environments():
            try:
                await run_in_threadpool(backend.entity_sets, env)
                checks[env] = "ok"
            except DualwriteError as exc:
                ok = False
                checks[env] = exc.message
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                            status_code=200 if ok else 503)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            await run_in_threadpool(link.recover)
        except TransientConnectorError as exc:
            # recovery runs before the first write instead (Link.transaction), and in the
            # applier once the database answers
            log.warning("in-doubt transactions not recovered yet: %s", exc)
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(link, stop, backend.feed),
                                   name="dualwrite-watch",
                                   daemon=True)
        watcher.start()
        worker = None
        if apply_captured:
            worker = threading.Thread(target=_apply, args=(link, stop), name="dualwrite-apply",
                                      daemon=True)
            worker.start()
        try:
            yield
        finally:
            stop.set()
            if worker is not None:
                worker.join(timeout=30)
            watcher.join(timeout=10)

    async def to_console(_request: Request) -> RedirectResponse:
        return RedirectResponse("/console/", status_code=307)

    return Starlette(routes=[
        Route("/healthz", healthz), Route("/readyz", readyz), *admin_routes(backend),
        Route("/metrics", metrics_endpoint(link)),
        Route("/console", to_console),
        console_mount(link),
        odata_mount(backend, page_size=link.config.model.serve.page_size,
                    require_if_match=link.config.model.serve.require_if_match,
                    upsert=link.config.model.serve.upsert),
    ], lifespan=lifespan, middleware=[
        Middleware(ODataRequestCounter, link_name=link.config.link_name)])
