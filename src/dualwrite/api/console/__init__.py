"""The web console of ``dualwrite serve``, at ``/console/``: server-rendered pages (Jinja2
templates), htmx for the parts that refresh by themselves (vendored: ``static/htmx.min.js``, no
CDN, no build step).

Sign-in takes an API token (``dualwrite tokens create``); the console then keeps a session in
an HttpOnly, SameSite=Strict cookie (the token itself never leaves the sign-in form) and checks
the token again on every request, so a revoked token ends its sessions within a second. Every
form carries the session's CSRF token (htmx sends it as ``X-CSRF-Token``). Any role may look;
only ``admin`` may act (start, pause, resume, stop, re-run, retry, discard, pick, acknowledge),
checked by :func:`dualwrite.engine.security.check_role` like every other request, refusals
audited.

Thin: every action calls the engine as the CLI does (``errors retry`` → ``resolve_error(id,
"retry")``, ``errors resolve`` → :func:`~dualwrite.engine.capture.resolve_conflict`, ...).
"""

from __future__ import annotations

import hmac
import math
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from dualwrite.engine.link import Link
from dualwrite.engine.monitor import check_applier, iso, readable_change
from dualwrite.engine.security import Principal, authenticate, check_role, token_hash
from dualwrite.errors import AccessDenied, DualwriteError

HERE = Path(__file__).resolve().parent
COOKIE = "dualwrite_console"
PRE_CSRF = "dualwrite_console_csrf"
#: a session ends after this long without a request
SESSION_SECONDS = 8 * 3600.0
PAGE = 50
ACTIONS = ("start", "pause", "resume", "stop")

_templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                         autoescape=select_autoescape(["html"]), trim_blocks=True,
                         lstrip_blocks=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"
    if isinstance(v, list | tuple):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


_templates.filters["fmt"] = _fmt


@dataclass
class Session:
    token_hash: str
    csrf: str
    seen: float = field(default_factory=time.monotonic)


class Console:
    """The console's state: sessions (in memory: a restarted serve asks to sign in again)
    and the background work it started (initial syncs, map starts)."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self.jobs: dict[str, str] = {}  # map -> what runs for it, for the sync page
        self.job_errors: dict[str, str] = {}

    # -- sessions ----------------------------------------------------------------------------
    def sign_in(self, token: str) -> tuple[str, Principal] | None:
        principal = authenticate(self.link.state, token.strip(), max_age=0.0)
        if principal is None:
            return None
        sid = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            for k in [k for k, s in self.sessions.items() if now - s.seen > SESSION_SECONDS]:
                del self.sessions[k]
            self.sessions[sid] = Session(token_hash(token.strip()), secrets.token_urlsafe(24))
        return sid, principal

    def who(self, request: Request) -> tuple[Session, Principal] | None:
        """The session and principal of a request, if it is signed in with a token that is
        still valid."""
        sid = request.cookies.get(COOKIE)
        session = self.sessions.get(sid) if sid else None
        if session is None or time.monotonic() - session.seen > SESSION_SECONDS:
            return None
        found = self.link.state.token(session.token_hash, max_age=1.0)
        if found is None:  # revoked
            self.sessions.pop(sid or "", None)
            return None
        from dualwrite.engine.security import effective

        roles, licences = self.link.state.principal(found["principal"], max_age=1.0)
        role, own = effective(found["role"], found["licences"], roles, licences)
        session.seen = time.monotonic()
        return session, Principal(found["principal"], role, own, found["id"])

    def sign_out(self, request: Request) -> None:
        self.sessions.pop(request.cookies.get(COOKIE) or "", None)

    # -- background work ---------------------------------------------------------------------
    def background(self, names: list[str], what: str, work: Callable[[], Any]) -> bool:
        """Run ``work`` on a thread (an initial sync may take minutes); False when one of
        ``names`` already has work running."""
        with self._lock:
            if any(n in self.jobs for n in names):
                return False
            for n in names:
                self.jobs[n] = what
                self.job_errors.pop(n, None)

        def body() -> None:
            try:
                work()
            except DualwriteError as exc:
                for n in names:
                    self.job_errors[n] = exc.message + (f" ({exc.hint})" if exc.hint else "")
            except Exception as exc:  # shown on the page; the server goes on
                for n in names:
                    self.job_errors[n] = f"{type(exc).__name__}: {exc}"
            finally:
                with self._lock:
                    for n in names:
                        self.jobs.pop(n, None)

        threading.Thread(target=body, name=f"dualwrite-console-{what}", daemon=True).start()
        return True


# -- rendering ---------------------------------------------------------------------------------
def _render(name: str, **ctx: Any) -> str:
    return _templates.get_template(name).render(**ctx)


def _page(request: Request, name: str, session: Session, principal: Principal,
          **ctx: Any) -> HTMLResponse:
    html = _render(name, request=request, csrf=session.csrf, principal=principal,
                   admin=principal.may("admin"), msg=request.query_params.get("msg"),
                   error=request.query_params.get("error"), path=request.url.path, **ctx)
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


def _back(to: str, *, msg: str | None = None, error: str | None = None) -> RedirectResponse:
    query = urlencode({k: v for k, v in (("msg", msg), ("error", error)) if v})
    return RedirectResponse(f"{to}{'&' if '?' in to else '?'}{query}" if query else to,
                            status_code=303)


def _pages(total: int, page: int) -> dict[str, int]:
    last = max(1, math.ceil(total / PAGE))
    page = min(max(page, 1), last)
    return {"page": page, "last": last, "total": total, "offset": (page - 1) * PAGE}


def _int(v: str | None, default: int = 1) -> int:
    try:
        return int(v) if v else default
    except ValueError:
        return default


def lag_chart(samples: list[dict[str, Any]], since: float, until: float,
              width: int = 640, height: int = 120) -> dict[str, Any]:
    """SVG polylines (lag seconds; changes applied per second) over [since, until]."""
    span = max(until - since, 1.0)
    points_lag, points_rate = [], []
    prev: dict[str, Any] | None = None
    rates = []
    for s in samples:
        rate = 0.0
        if prev is not None and s["at"] > prev["at"]:
            rate = max(int(s["applied"]) - int(prev["applied"]), 0) / (s["at"] - prev["at"])
        rates.append(rate)
        prev = s
    top_lag = max([float(s["lag_seconds"]) for s in samples] + [1.0])
    top_rate = max([*rates, 1.0])
    for s, rate in zip(samples, rates, strict=True):
        x = (s["at"] - since) / span * width
        points_lag.append(f"{x:.1f},{height - float(s['lag_seconds']) / top_lag * height:.1f}")
        points_rate.append(f"{x:.1f},{height - rate / top_rate * height:.1f}")
    return {"width": width, "height": height, "lag": " ".join(points_lag),
            "rate": " ".join(points_rate), "top_lag": top_lag, "top_rate": top_rate,
            "minutes": max(1, round(span / 60)),
            "count": len(samples), "last_lag": float(samples[-1]["lag_seconds"])
            if samples else None, "last_rate": rates[-1] if rates else None}


# -- the routes --------------------------------------------------------------------------------
Handler = Callable[[Request], Awaitable[Response]]


def console_mount(link: Link) -> Mount:
    """``/console``: the pages, the actions, the static files."""
    console = Console(link)
    state = link.state
    monitor = link.monitor
    maps_by_name = {m.name: m for m in link.config.maps}

    def page(work: Callable[[Request, Session, Principal], Response]) -> Handler:
        async def endpoint(request: Request) -> Response:
            who = await run_in_threadpool(console.who, request)
            if who is None:
                if request.headers.get("hx-request"):
                    return Response(status_code=401, headers={"HX-Redirect": "/console/signin"})
                return RedirectResponse(f"/console/signin?next={quote(request.url.path)}",
                                        status_code=303)
            return await run_in_threadpool(work, request, *who)
        return endpoint

    def action(what: str, work: Callable[[Request, dict[str, list[str]], Principal],
                                         Response]) -> Handler:
        """A POST that changes something: signed in, CSRF token, role admin."""
        async def endpoint(request: Request) -> Response:
            body = (await request.body()).decode("utf-8", "replace")
            form = parse_qs(body, keep_blank_values=True)
            who = await run_in_threadpool(console.who, request)
            if who is None:
                return RedirectResponse("/console/signin", status_code=303)
            session, principal = who
            sent = (form.get("csrf") or [request.headers.get("x-csrf-token", "")])[0]
            if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                return HTMLResponse("the form is stale or did not come from the console "
                                    "(CSRF token missing or wrong): reload the page and try "
                                    "again", status_code=403)
            try:
                check_role(principal, "admin", what=f"{what} from the console")
            except AccessDenied as exc:
                await run_in_threadpool(state.add_refusal, principal.name,
                                        f"POST {request.url.path}", "role admin", exc.message,
                                        token_id=principal.token_id)
                return HTMLResponse(_render("refused.html", message=exc.message, csrf="",
                                            principal=principal, admin=False,
                                            path=request.url.path, msg=None, error=None),
                                    status_code=403)
            try:
                return await run_in_threadpool(work, request, form, principal)
            except DualwriteError as exc:
                referer = request.headers.get("referer") or "/console/"
                to = referer.split("?", 1)[0] if "/console/" in referer else "/console/"
                return _back(to, error=exc.message + (f" — {exc.hint}" if exc.hint else ""))
        return endpoint

    # -- sign-in -----------------------------------------------------------------------------
    async def signin_form(request: Request) -> Response:
        pre = secrets.token_urlsafe(16)
        html = _render("signin.html", pre=pre, next=request.query_params.get("next", ""),
                       error=request.query_params.get("error"), principal=None, csrf="",
                       admin=False, path=request.url.path, msg=None)
        resp = HTMLResponse(html)
        resp.set_cookie(PRE_CSRF, pre, httponly=True, samesite="strict", path="/console",
                        secure=request.url.scheme == "https")
        return resp

    async def signin(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        pre = request.cookies.get(PRE_CSRF, "")
        if not pre or not hmac.compare_digest((form.get("pre") or [""])[0].encode(),
                                              pre.encode()):
            return _back("/console/signin", error="the sign-in form is stale: try again")
        got = await run_in_threadpool(console.sign_in, (form.get("token") or [""])[0])
        if got is None:
            return _back("/console/signin", error="that token is not valid (revoked, or "
                         "mistyped): make one with `dualwrite tokens create`")
        sid, _principal = got
        target = (form.get("next") or ["/console/"])[0]
        resp = RedirectResponse(target if target.startswith("/console/") else "/console/",
                                status_code=303)
        resp.set_cookie(COOKIE, sid, httponly=True, samesite="strict", path="/console",
                        secure=request.url.scheme == "https", max_age=int(SESSION_SECONDS))
        resp.delete_cookie(PRE_CSRF, path="/console")
        return resp

    async def signout(request: Request) -> Response:
        console.sign_out(request)
        resp = RedirectResponse("/console/signin", status_code=303)
        resp.delete_cookie(COOKIE, path="/console")
        return resp

    # -- the link ----------------------------------------------------------------------------
    def overview_data() -> dict[str, Any]:
        rows = link.status()
        procs = link.processes()
        check_applier(link, procs)
        monitor.refresh()
        now = time.time()
        since = now - 3600
        errors_hour = monitor.events_since(since, ["rejected", "lookup", "failed"])
        taken = monitor.samples(since)
        # the chart spans what was sampled (an hour at most), not an hour of mostly nothing
        chart = lag_chart(taken, min(taken[0]["at"], now - 60) if taken else since, now)
        states: dict[str, int] = {}
        for r in rows:
            states[r["state"]] = states.get(r["state"], 0) + 1
        return {
            "link": link.config.link_name, "left": link.config.left,
            "right": link.config.right, "procs": procs, "rows": rows, "states": states,
            "lag": max((r["lag_seconds"] or 0.0 for r in rows), default=0.0),
            "backlog": sum(r["queued"] for r in rows),
            "errors_open": sum(r["errors"] for r in rows),
            "errors_hour": sum(errors_hour.values()),
            "throughput": sum(r["throughput"] or 0.0 for r in rows),
            "alerts": monitor.alerts(["firing", "acknowledged"], limit=10),
            "chart": chart,
            "troubled": [r for r in rows if r["note"] or r["errors"] or r["state"] == "failed"],
            "now": iso(now),
        }

    def overview(request: Request, session: Session, principal: Principal) -> Response:
        return _page(request, "overview.html", session, principal, **overview_data())

    def overview_part(request: Request, session: Session, principal: Principal) -> Response:
        return _page(request, "overview_part.html", session, principal, **overview_data())

    # -- maps --------------------------------------------------------------------------------
    def maps_data() -> dict[str, Any]:
        rows = link.status()
        for r in rows:
            r["job"] = console.jobs.get(r["map"])
            r["job_error"] = console.job_errors.get(r["map"])
            spec = maps_by_name.get(r["map"])
            r["left"], r["right"] = (spec.left, spec.right) if spec else ("", "")
        return {"rows": rows}

    def maps_page(request: Request, session: Session, principal: Principal) -> Response:
        return _page(request, "maps.html", session, principal, **maps_data())

    def maps_part(request: Request, session: Session, principal: Principal) -> Response:
        return _page(request, "maps_part.html", session, principal, **maps_data())

    def maps_action(request: Request, form: dict[str, list[str]], principal: Principal
                    ) -> Response:
        act = (form.get("action") or [""])[0]
        names = [n for n in form.get("map", []) if n]
        if act not in ACTIONS:
            return _back("/console/maps", error=f"there is no map action {act!r}")
        if not names:
            return _back("/console/maps", error="select one or more maps first")
        unknown = [n for n in names if n not in maps_by_name]
        if unknown:
            return _back("/console/maps", error=f"no map named {', '.join(unknown)}")
        if act == "start":
            def start() -> None:
                link.start_maps(names, with_dependencies=True)
            if not console.background(names, "start", start):
                return _back("/console/maps", error="work is running for one of those maps")
            return _back("/console/maps", msg=f"starting {', '.join(names)} (with the maps "
                         "they depend on; an initial sync runs where none has)")
        done = {"pause": link.pause_maps, "resume": link.resume_maps,
                "stop": link.stop_maps}[act](names)
        word = {"pause": "paused", "resume": "resuming", "stop": "stopped"}[act]
        return _back("/console/maps", msg=f"{word}: {', '.join(done) or 'none'}")

    def queue_page(request: Request, session: Session, principal: Principal) -> Response:
        from dualwrite.model.maps import Side

        name = request.path_params["name"]
        if name not in maps_by_name:
            return HTMLResponse(f"no map named {name!r}", status_code=404)
        key = request.query_params.get("key") or None
        pg = _int(request.query_params.get("page"))
        sides: list[dict[str, Any]] = []
        for s in Side:
            c = link.connectors[s]
            if not c.capabilities.capture:
                continue
            first = (pg - 1) * PAGE
            changes, total = c.change_log().peek(name, key_contains=key, limit=PAGE,
                                                  offset=first)
            sides.append({"env": link.env_name(s), "to": link.env_name(s.other),
                          "total": total, "changes": [readable_change(ch.as_dict())
                                                      for ch in changes]})
        total = max((x["total"] for x in sides), default=0)
        states = state.map_states()
        return _page(request, "queue.html", session, principal, map=name, key=key or "",
                     sides=sides, pages=_pages(total, pg),
                     state=(states.get(name) or {}).get("state", "not running"))

    # -- initial sync ------------------------------------------------------------------------
    def sync_data() -> dict[str, Any]:
        progress = monitor.sync_progress()
        states = state.map_states()
        rows = []
        for m in link.config.maps:
            p = progress.get(m.name) or {}
            done, total = p.get("done"), p.get("total")
            rows.append({"map": m.name, "state": (states.get(m.name) or {}).get(
                "state", "not running"), "synced_at": (states.get(m.name) or {}).get(
                "initial_synced_at"), "done": done, "total": total,
                "percent": min(100.0, 100.0 * done / total) if done is not None and total
                else (100.0 if p.get("finished_at") else 0.0),
                "rate": p.get("rate"), "eta": p.get("eta_seconds"),
                "running": p.get("running") or m.name in console.jobs,
                "finished_at": p.get("finished_at"), "job": console.jobs.get(m.name),
                "job_error": console.job_errors.get(m.name)})
        return {"rows": rows, "any_running": any(r["running"] for r in rows)}

    def sync_page(request: Request, session: Session, principal: Principal) -> Response:
        return _page(request, "sync.html", session, principal, **sync_data())

    def sync_part(request: Request, session: Session, principal: Principal) -> Response:
        return _page(request, "sync_part.html", session, principal, **sync_data())

    def sync_rerun(request: Request, form: dict[str, list[str]], principal: Principal
                   ) -> Response:
        name = request.path_params["name"]
        if name not in maps_by_name:
            return _back("/console/sync", error=f"no map named {name!r}")
        skip = (form.get("skip_errors") or [""])[0] == "1"

        def rerun() -> None:
            link.sync_initial([name], resume=False, skip_errors=skip)
        if not console.background([name], "initial sync", rerun):
            return _back("/console/sync", error=f"work is already running for {name}")
        return _back("/console/sync", msg=f"initial sync of {name} started again"
                     + (", skipping rows in the inbox" if skip else ""))

    # -- the error inbox ---------------------------------------------------------------------
    def errors_page(request: Request, session: Session, principal: Principal) -> Response:
        name = request.query_params.get("map") or None
        pg = _int(request.query_params.get("page"))
        _none, total = monitor.inbox_page(map_name=name, offset=0, limit=0)
        pages = _pages(total, pg)
        entries, total = monitor.inbox_page(map_name=name, offset=pages["offset"],
                                            limit=PAGE)
        rows = [{**e.as_dict(), "from": link.env_name(_side(e.payload.get("source")))
                 if e.payload and e.payload.get("source") else None,
                 "on": _env(link, e.side), "captured": bool(e.payload and
                                                            "change" in e.payload)}
                for e in entries]
        return _page(request, "errors.html", session, principal, rows=rows, pages=pages,
                     map=name or "", maps=sorted(monitor.error_counts().items()))

    def error_detail(request: Request, session: Session, principal: Principal) -> Response:
        from dualwrite.engine.state import decode_doc

        e = state.get_error(int(request.path_params["id"]))
        payload = e.payload or {}
        extra = payload.get("extra")
        extra = decode_doc(extra) if isinstance(extra, str) else (extra or {})
        change = readable_change(payload.get("change"))
        other = [readable_change(x) for x in extra.get("theirs", [])] \
            if e.operation == "conflict" else []
        fields = _fields(change, extra.get("target") if e.operation == "conflict" else None,
                         _pairs(link, e.map, _side(payload.get("source"))))
        return _page(request, "error_detail.html", session, principal, e=e.as_dict(),
                     on=_env(link, e.side), source=link.env_name(_side(payload.get("source")))
                     if payload.get("source") else None, change=change, fields=fields,
                     other_row=extra.get("target"), other_changes=other,
                     row=payload if payload and "change" not in payload else None,
                     captured="change" in payload, conflict=e.operation == "conflict")

    def errors_act(request: Request, form: dict[str, list[str]], principal: Principal
                   ) -> Response:
        entry = state.get_error(int(request.path_params["id"]))
        act = request.path_params["action"]
        if act == "discard":
            state.resolve_error(entry.id, "discarded")
            return _back("/console/errors", msg=f"discarded entry {entry.id}: the changes "
                         "behind it apply next")
        if act != "retry":
            return _back("/console/errors", error=f"there is no inbox action {act!r}")
        if entry.operation == "conflict":
            return _back(f"/console/conflicts#entry-{entry.id}",
                         error=f"entry {entry.id} is a conflict: pick a side")
        if not (entry.payload and "change" in entry.payload):
            return _back("/console/errors", error=f"entry {entry.id} is from an initial "
                         "sync: re-run the map's initial sync to retry it")
        state.resolve_error(entry.id, "retry")
        return _back("/console/errors", msg=f"retrying entry {entry.id}: the applier "
                     "applies its row as it is now")

    def errors_retry_all(request: Request, form: dict[str, list[str]], principal: Principal
                         ) -> Response:
        name = (form.get("map") or [""])[0] or None
        ids = []
        for e in state.errors(name):
            if e.payload and "change" in e.payload and e.operation != "conflict":
                state.resolve_error(e.id, "retry")
                ids.append(e.id)
        return _back("/console/errors", msg=f"retrying {len(ids)} entry(ies)"
                     " (conflicts are settled on the conflicts page; initial sync rows by "
                     "re-running it)")

    # -- conflicts ---------------------------------------------------------------------------
    def conflicts_page(request: Request, session: Session, principal: Principal) -> Response:
        from dualwrite.engine.state import decode_doc

        pg = _int(request.query_params.get("page"))
        _none, total = monitor.inbox_page(operation="conflict", limit=0)
        pages = _pages(total, pg)
        entries, _t = monitor.inbox_page(operation="conflict", offset=pages["offset"],
                                         limit=PAGE)
        open_ = []
        for e in entries:
            payload = e.payload or {}
            extra = payload.get("extra")
            extra = decode_doc(extra) if isinstance(extra, str) else (extra or {})
            source = _side(payload.get("source"))
            change = readable_change(payload.get("change"))
            open_.append({"id": e.id, "map": e.map, "key": list(e.key), "at": e.first_at,
                          "from": link.env_name(source), "other": link.env_name(source.other),
                          "from_side": source.value, "other_side": source.other.value,
                          "fields": _fields(change, extra.get("target"),
                                            _pairs(link, e.map, source)),
                          "theirs": [readable_change(x) for x in extra.get("theirs", [])]})
        history = state.conflicts(limit=50)
        for c in history:
            c["from"] = link.env_name(_side(c["source"]))
        return _page(request, "conflicts.html", session, principal, open=open_, pages=pages,
                     history=history, left=link.config.left, right=link.config.right)

    def conflicts_pick(request: Request, form: dict[str, list[str]], principal: Principal
                       ) -> Response:
        from dualwrite.engine.capture import resolve_conflict
        from dualwrite.model.maps import Side

        side = (form.get("side") or [""])[0]
        if side not in ("left", "right"):
            return _back("/console/conflicts", error="pick left or right")
        done = resolve_conflict(link, int(request.path_params["id"]), Side(side))
        return _back("/console/conflicts", msg=f"entry {done['id']}: {done['kept']}'s row "
                     f"wins; the applier writes it to {done['written_to']}")

    # -- alerts, audit -------------------------------------------------------------------------
    def alerts_page(request: Request, session: Session, principal: Principal) -> Response:
        monitor.refresh()
        pg = _int(request.query_params.get("page"))
        counts = monitor.alert_counts()
        pages = _pages(sum(counts.values()), pg)
        return _page(request, "alerts.html", session, principal, counts=counts, pages=pages,
                     alerts=monitor.alerts(limit=PAGE, offset=pages["offset"]))

    def alerts_ack(request: Request, form: dict[str, list[str]], principal: Principal
                   ) -> Response:
        a = monitor.ack(int(request.path_params["id"]), principal.name)
        return _back("/console/alerts", msg=f"alert {a['id']} acknowledged by "
                     f"{a['acknowledged_by']}")

    def audit_page(request: Request, session: Session, principal: Principal) -> Response:
        pg = _int(request.query_params.get("page"))
        _rows, total = monitor.audit_page(limit=0)
        pages = _pages(total, pg)
        rows, _total = monitor.audit_page(offset=pages["offset"], limit=PAGE)
        return _page(request, "audit.html", session, principal, rows=rows, pages=pages,
                     refusals=monitor.refusals(20))

    routes: list[BaseRoute] = [
        Route("/", page(overview)),
        Route("/part/overview", page(overview_part)),
        Route("/signin", signin_form, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signout", signout, methods=["POST"]),
        Route("/maps", page(maps_page)),
        Route("/part/maps", page(maps_part)),
        Route("/maps/action", action("act on maps", maps_action), methods=["POST"]),
        Route("/maps/{name}/queue", page(queue_page)),
        Route("/sync", page(sync_page)),
        Route("/part/sync", page(sync_part)),
        Route("/sync/{name}/rerun", action("re-run an initial sync", sync_rerun),
              methods=["POST"]),
        Route("/errors", page(errors_page)),
        Route("/errors/retry-all", action("retry inbox entries", errors_retry_all),
              methods=["POST"]),
        Route("/errors/{id:int}", page(error_detail)),
        Route("/errors/{id:int}/{action}", action("settle an inbox entry", errors_act),
              methods=["POST"]),
        Route("/conflicts", page(conflicts_page)),
        Route("/conflicts/{id:int}/pick", action("resolve a conflict", conflicts_pick),
              methods=["POST"]),
        Route("/alerts", page(alerts_page)),
        Route("/alerts/{id:int}/ack", action("acknowledge an alert", alerts_ack),
              methods=["POST"]),
        Route("/audit", page(audit_page)),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Mount("/console", routes=routes)


def _side(value: Any) -> Any:
    from dualwrite.model.maps import Side

    return Side(value) if value in ("left", "right") else Side.LEFT


def _env(link: Link, side: str) -> str:
    """An inbox entry's side as an environment name (initial sync names it left/right)."""
    return link.env_name(_side(side)) if side in ("left", "right") else side


def _pairs(link: Link, map_name: str, source: Any) -> list[tuple[str, str | None]]:
    """(column on the change's side, the column it maps to on the other side) per field line
    of ``map_name``, so that both versions line up; [] when the map does not bind now."""
    try:
        bound = {b.name: b for b in link.bound_maps()}.get(map_name)
    except DualwriteError:
        return []
    if bound is None:
        return []
    return [(c, f.end(source.other).column) for f in bound.fields
            if (c := f.end(source).column) is not None]


def _fields(change: dict[str, Any] | None, other: dict[str, Any] | None,
            pairs: list[tuple[str, str | None]] | None = None) -> list[dict[str, Any]]:
    """One line per field: the change's old and new value, and the other side's row's value
    of the column that field maps to (``pairs``; the same name where no pair is known)."""
    change = change or {}
    old, new = change.get("old") or {}, change.get("new") or {}
    other = other or {}
    mapped = dict(pairs or [])
    names = list(dict.fromkeys([*mapped, *new, *old]))
    out = []
    for n in names:
        twin = mapped.get(n, n) if n in mapped else n
        held = twin is not None and twin in other
        label = n if twin in (None, n) else f"{n} = {twin}"
        out.append({"name": label, "old": old.get(n), "new": new.get(n),
                    "other": other.get(twin) if held else None,
                    "changed": n in new and old.get(n) != new.get(n),
                    "differs": held and _fmt(new.get(n)) != _fmt(other.get(twin))})
    return out


__all__ = ["Console", "console_mount", "lag_chart"]
