"""The ``dualwrite`` command. Thin: parses options, calls the engine, prints.

Exit codes: 0 success; 1 a check found problems (validate, verify); 2 an error stopped the
command (bad config, unreachable database, refused link). Errors go to stderr with a hint.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from dualwrite.engine.link import Link
from dualwrite.errors import DualwriteError, ValidationFailed

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Keep the tables of two business applications in sync.")
errors_app = typer.Typer(no_args_is_help=True, help="The error inbox: rows that could not sync.")
maps_app = typer.Typer(no_args_is_help=True, help="List maps and their state.")
app.add_typer(errors_app, name="errors")
app.add_typer(maps_app, name="maps")

# Tables stay readable when piped to a file or CI log (Rich would assume 80 columns).
out = Console(highlight=False, soft_wrap=True, width=shutil.get_terminal_size((120, 24)).columns)
err = Console(stderr=True, highlight=False, soft_wrap=True)

_global: dict[str, Path | None] = {"config": None}

ConfigOpt = Annotated[Path | None, typer.Option(
    "-c", "--config", help="Config file (default ./dualwrite.yaml).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
MapsArg = Annotated[list[str] | None, typer.Argument(
    help="Map names (default: all).", show_default=False)]


class Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _config_path(local: Path | None) -> Path:
    return local or _global["config"] or Path("dualwrite.yaml")


def _jsonable(v: Any) -> Any:
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, dt.date | dt.datetime | dt.time):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_jsonable) + "\n")


@contextmanager
def _link(config: Path | None) -> Iterator[Link]:
    link = Link.open(_config_path(config))
    try:
        yield link
    finally:
        link.close()


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int | None], None] | None]:
    if not enabled or not err.is_terminal:
        yield None
        return
    with Progress(TextColumn("{task.description:<22}"), BarColumn(),
                  TextColumn("{task.completed:>9,} / {task.fields[total_text]}"),
                  TimeElapsedColumn(), console=err, transient=False) as bar:
        tasks: dict[str, TaskID] = {}

        def update(name: str, done: int, total: int | None) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total,
                                           total_text=f"{total:,}" if total else "?")
            bar.update(tasks[name], completed=done)

        yield update


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return ", ".join(str(x) for x in v)
    return str(v)


def _emit(name: str, rows: list[dict[str, Any]], as_json: bool,
          columns: list[tuple[str, str]]) -> None:
    """Rows as ``{"<name>": rows}`` JSON, or as a table of the named columns."""
    if as_json:
        _print_json({name: rows})
        return
    t = Table()
    for header, _ in columns:
        t.add_column(header, overflow="fold")
    for r in rows:
        t.add_row(*[_cell(r.get(key)) for _, key in columns])
    out.print(t)


def _fail(exc: DualwriteError) -> None:
    err.print(f"[bold red]error:[/] {exc.message}", markup=True, highlight=False)
    if exc.hint:
        err.print(f"[yellow]hint:[/] {exc.hint}", markup=True, highlight=False)


# -- global options ---------------------------------------------------------------------------
@app.callback()
def _main(config: ConfigOpt = None) -> None:
    """dualwrite: maps, initial sync, verify. Run `dualwrite demo` to see it work."""
    _global["config"] = config


# -- validate ---------------------------------------------------------------------------------
@app.command()
def validate(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Check every map against both environments' real schemas; report all problems."""
    with _link(config) as link:
        bound, issues = link.validate()
        errors = [i for i in issues if i.is_error]
        if as_json:
            _print_json({"ok": not errors, "maps": [b.name for b in bound],
                         "issues": [i.as_dict() for i in issues]})
        else:
            for i in issues:
                out.print(str(i), markup=False)
            n = len(link.config.maps)
            others = len(issues) - len(errors)
            said = f" ({others} warning(s) and note(s) above)" if others else ""
            if errors:
                out.print(f"{len(errors)} problem(s) in {n} map(s){said}", markup=False)
            else:
                out.print(f"ok: {n} map(s) valid against {link.config.left} and "
                          f"{link.config.right}{said}", markup=False)
    if errors:
        raise Exit(1)


# -- link / unlink ----------------------------------------------------------------------------
@app.command("link")
def link_cmd(config: ConfigOpt = None) -> None:
    """Record the link in both environments (an environment joins one link only)."""
    with _link(config) as link:
        link_id = link.ensure_linked()
        out.print(f"linked {link.config.left} <-> {link.config.right} as "
                  f"{link.config.link_name!r} (id {link_id})", markup=False)


@app.command()
def unlink(config: ConfigOpt = None) -> None:
    """Remove this link's record from both environments."""
    with _link(config) as link:
        freed = link.unlink()
        out.print(f"unlinked {', '.join(freed) if freed else 'nothing (not linked)'}",
                  markup=False)


# -- plan / sync / verify ---------------------------------------------------------------------
def _results_table(title: str, rows: list[dict[str, Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("map", "create left", "create right", "update left", "update right",
                "unchanged", "errors", "seconds"):
        t.add_column(col, justify="left" if col == "map" else "right")
    for r in rows:
        t.add_row(r["map"], f"{r['created']['left']:,}", f"{r['created']['right']:,}",
                  f"{r['updated']['left']:,}", f"{r['updated']['right']:,}",
                  f"{r['unchanged']:,}", f"{r['errors']['left'] + r['errors']['right']:,}",
                  f"{r['seconds']:.2f}")
    return t


@app.command()
def plan(maps: MapsArg = None, config: ConfigOpt = None,
         master: Annotated[str | None, typer.Option(
             help="Override each map's master: left or right.")] = None,
         as_json: JsonOpt = False) -> None:
    """Show what initial sync would do, per map and side, writing nothing."""
    _check_master(master)
    with _link(config) as link, _progress(not as_json) as progress:
        results = [r.as_dict() for r in link.plan(maps or [], master=master, progress=progress)]
    if as_json:
        _print_json({"maps": results})
        return
    out.print(_results_table("plan (nothing written)", results))
    for r in results:
        for s in r["samples"]:
            desc = ", ".join(f"{f['field']}: {f['left']!r} | {f['right']!r}"
                             for f in s.get("fields", []))
            extra = desc or s.get("error", "")
            out.print(f"  {r['map']}: {s['operation']} {s['side']} {tuple(s['key'])} {extra}",
                      markup=False)


def _check_master(master: str | None) -> None:
    if master not in (None, "left", "right"):
        raise DualwriteError(f"--master {master!r} is not a side",
                             hint="use --master left or --master right")


@app.command()
def sync(maps: MapsArg = None, config: ConfigOpt = None,
         initial: Annotated[bool, typer.Option("--initial", help="Run initial sync.")] = False,
         master: Annotated[str | None, typer.Option(
             help="Override each map's master: left or right.")] = None,
         restart: Annotated[bool, typer.Option(
             help="Ignore checkpoints and start each map from its first key.")] = False,
         as_json: JsonOpt = False) -> None:
    """Initial sync: copy rows between the sides in depends_on order; resumable."""
    if not initial:
        raise DualwriteError("`dualwrite sync` needs --initial",
                             hint="run `dualwrite sync --initial [MAP...]`")
    _check_master(master)
    with _link(config) as link, _progress(not as_json) as progress:
        results = [r.as_dict() for r in link.sync_initial(
            maps or [], master=master, progress=progress, resume=not restart)]
        errors = sum(r["errors"]["left"] + r["errors"]["right"] for r in results)
    if as_json:
        _print_json({"maps": results, "errors": errors})
    else:
        out.print(_results_table("initial sync", results))
        for r in results:
            if r["resumed"]:
                out.print(f"  {r['map']}: resumed from its checkpoint", markup=False)
        if errors:
            out.print(f"{errors} row(s) went to the error inbox: `dualwrite errors list`",
                      markup=False)


@app.command()
def verify(maps: MapsArg = None, config: ConfigOpt = None, as_json: JsonOpt = False,
           max_details: Annotated[int, typer.Option(
               help="Differences listed per map (all are counted).")] = 1000) -> None:
    """Compare both sides through the maps; exit 1 naming each differing key and field."""
    with _link(config) as link, _progress(not as_json) as progress:
        results = link.verify(maps or [], max_details=max_details, progress=progress)
    ok = all(r.ok for r in results)
    if as_json:
        _print_json({"ok": ok, "maps": [r.as_dict() for r in results]})
    else:
        for r in results:
            status = "ok" if r.ok else f"{r.differences:,} difference(s)"
            out.print(f"{r.map}: {r.compared:,} key(s) compared, {status}", markup=False)
            for d in r.details:
                if d.kind == "differs":
                    fields = "; ".join(f"{f['field']}: left={f['left']!r} right={f['right']!r}"
                                       for f in d.fields)
                    out.print(f"  {tuple(d.key)} differs: {fields}", markup=False)
                else:
                    out.print(f"  {tuple(d.key)} {d.kind}: {d.reason}", markup=False)
            if r.truncated:
                out.print(f"  ... {r.differences - len(r.details):,} more not listed",
                          markup=False)
        out.print("verify: both sides agree" if ok else "verify: the sides differ",
                  markup=False)
    if not ok:
        raise Exit(1)


# -- maps -------------------------------------------------------------------------------------
@maps_app.command("list")
def maps_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List the maps, their tables, dependencies and state."""
    with _link(config) as link:
        states = link.state.map_states()
        rows = [{"map": m.name, "left": m.left, "right": m.right,
                 "depends_on": m.depends_on,
                 "state": states.get(m.name, {}).get("state", "not running"),
                 "initial_synced_at": states.get(m.name, {}).get("initial_synced_at")}
                for m in link.config.maps]
    _emit("maps", rows, as_json, [
        ("map", "map"), ("left", "left"), ("right", "right"), ("depends on", "depends_on"),
        ("state", "state"), ("initial sync", "initial_synced_at")])


YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Answer yes to every question.")]


@maps_app.command("start")
def maps_start(maps: MapsArg = None, config: ConfigOpt = None, as_json: JsonOpt = False,
               yes: YesOpt = False) -> None:
    """Start maps (all by default) in depends_on order: install capture on both tables, run
    the initial sync if it has not run (changes made meanwhile are applied after it), then
    run. Maps they depend on that are not running are offered to start first."""
    names = maps or []
    with _link(config) as link, _progress(not as_json) as progress:
        missing = link.missing_dependencies(names) if names else []
        include: bool | None = None
        if missing:
            include = yes or (sys.stdin.isatty() and typer.confirm(
                f"{', '.join(names)} depend(s) on {', '.join(missing)}, not running. "
                "Start them first?", default=True, err=True))
            include = include or None
        ran = link.start_maps(names, progress=progress, with_dependencies=include)
        started = [*missing, *names] if include else names
        shown = [b.name for b in link.bound_maps(started)]
    if as_json:
        _print_json({"started": shown, "initial_sync": [r.as_dict() for r in ran]})
        return
    if ran:
        out.print(_results_table("initial sync", [r.as_dict() for r in ran]))
    out.print(f"running: {', '.join(shown)}", markup=False)


@maps_app.command("stop")
def maps_stop(maps: MapsArg = None, config: ConfigOpt = None) -> None:
    """Stop maps: remove their capture and forget their queue. Starting one again runs its
    initial sync again."""
    with _link(config) as link:
        stopped = link.stop_maps(maps or [])
    out.print(f"stopped: {', '.join(stopped)}", markup=False)


@maps_app.command("pause")
def maps_pause(maps: MapsArg = None, config: ConfigOpt = None) -> None:
    """Pause running maps: changes keep being captured and queue, in order."""
    with _link(config) as link:
        done = link.pause_maps(maps or [])
    out.print(f"paused: {', '.join(done) or 'none (no running map named)'}", markup=False)


@maps_app.command("resume")
def maps_resume(maps: MapsArg = None, config: ConfigOpt = None) -> None:
    """Resume paused maps: their queue replays in order, then they run."""
    with _link(config) as link:
        done = link.resume_maps(maps or [])
    out.print(f"resuming: {', '.join(done) or 'none (no paused map named)'}", markup=False)


# -- capture ----------------------------------------------------------------------------------
@app.command()
def run(config: ConfigOpt = None) -> None:
    """Apply captured changes of every running map, both ways, until stopped (SIGTERM or
    Ctrl-C). One applier per link: a second one waits as a standby."""
    import signal
    import threading

    from dualwrite.engine.capture import run_applier
    from dualwrite.engine.heap import settle_for_latency

    stop = threading.Event()

    def _stop(_sig: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with _link(config) as link:
        link.bound_maps()

        def ready() -> None:
            settle_for_latency()  # start-up done: keep its objects out of the collector's way
            err.print(f"dualwrite run: applying captured changes of link "
                      f"{link.config.link_name!r} (pid {os.getpid()})",
                      markup=False)

        run_applier(link, stop, ready=ready)
    err.print("dualwrite run: stopped", markup=False)


@app.command()
def status(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Per map: state, lag (seconds and changes), queued changes, errors, conflicts, and when
    it last applied a change."""
    with _link(config) as link:
        rows = link.status()
        alerts = link.state.alerts(limit=5)
    if as_json:
        _print_json({"maps": rows, "alerts": alerts})
        return
    _emit("maps", rows, False, [
        ("map", "map"), ("state", "state"), ("lag s", "lag_seconds"),
        ("lag changes", "lag_changes"), ("queued", "queued"), ("errors", "errors"),
        ("conflicts", "conflicts"), ("last applied", "last_applied_at")])
    down = sorted({e for r in rows for e in r["unreachable"]})
    if down:
        out.print(f"unreachable: {', '.join(down)} (queues counted on the other side only)",
                  markup=False)
    for a in alerts:
        out.print(f"alert ({a['action']}): {a['message']}", markup=False)


# -- serve ------------------------------------------------------------------------------------
@app.command()
def serve(config: ConfigOpt = None,
          host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000) -> None:
    """Serve each environment's tables over OData v4 at /odata/<env>/ (Bearer tokens),
    with /healthz and /readyz. In-doubt transactions are recovered on start."""
    import uvicorn

    from dualwrite.api.server import create_server_app
    from dualwrite.engine.heap import settle_for_latency

    with _link(config) as link:
        link.bound_maps()  # refuse to start on invalid maps, with every problem listed
        app_ = create_server_app(link, apply_captured=True)
        settle_for_latency()  # start-up done: keep its objects out of the collector's way
        uvicorn.run(app_, host=host, port=port,
                    log_level="info")


# -- recovery ---------------------------------------------------------------------------------
@app.command()
def recover(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Commit or roll back every transaction branch a stopped dualwrite left prepared,
    following the durable decision log (no decision: rolled back)."""
    with _link(config) as link:
        report = link.recover()
    if as_json:
        _print_json({"actions": [a.as_dict() for a in report.actions],
                     "completed": report.completed})
        return
    if not report.actions:
        out.print("nothing in doubt: no prepared transaction of this link", markup=False)
    for a in report.actions:
        out.print(f"{a.action}: {a.xid} on {a.environment}", markup=False)


# -- tokens -----------------------------------------------------------------------------------
tokens_app = typer.Typer(no_args_is_help=True, help="API tokens (Bearer) and licences.")
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("create")
def tokens_create(
        principal: Annotated[str, typer.Option(help="Who the token acts as.")],
        config: ConfigOpt = None,
        role: Annotated[list[str] | None, typer.Option(help="A role, e.g. admin.")] = None,
        licence: Annotated[list[str] | None, typer.Option(
            help="A table the principal may write when its map is restricted.")] = None,
) -> None:
    """Create a token; it is printed once, alone on stdout. Only its hash is stored."""
    from dualwrite.engine.security import create_token

    with _link(config) as link:
        token = create_token(link.state, principal, roles=role or [], licences=licence or [])
    sys.stdout.write(token + "\n")


@tokens_app.command("list")
def tokens_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Tokens (ids and principals, never the tokens themselves)."""
    with _link(config) as link:
        rows = link.state.list_tokens()
        for r in rows:
            roles, licences = link.state.principal(r["principal"])
            r["roles"], r["licences"] = sorted(roles), sorted(licences)
    _emit("tokens", rows, as_json, [
        ("id", "id"), ("principal", "principal"), ("roles", "roles"), ("licences", "licences"),
        ("created", "created_at"), ("revoked", "revoked_at")])


@tokens_app.command("revoke")
def tokens_revoke(token_id: str, config: ConfigOpt = None) -> None:
    """Revoke a token by id; requests with it get 401 from then on."""
    with _link(config) as link:
        if not link.state.revoke_token(token_id):
            raise DualwriteError(f"no active token with id {token_id!r}",
                                 hint="list them with `dualwrite tokens list`")
    out.print(f"revoked {token_id}", markup=False)


# -- errors -----------------------------------------------------------------------------------
@errors_app.command("list")
def errors_list(config: ConfigOpt = None, map_name: Annotated[str | None, typer.Option(
        "--map", help="Only this map.")] = None, as_json: JsonOpt = False) -> None:
    """Open entries of the error inbox."""
    with _link(config) as link:
        entries = link.state.errors(map_name)
    if not entries and not as_json:
        out.print("the error inbox is empty", markup=False)
        return
    _emit("errors", [e.as_dict() for e in entries], as_json, [
        ("id", "id"), ("map", "map"), ("side", "side"), ("key", "key"),
        ("operation", "operation"), ("attempts", "attempts"), ("last", "last_at"),
        ("reason", "reason")])


@errors_app.command("show")
def errors_show(error_id: int, config: ConfigOpt = None) -> None:
    """One inbox entry with the row it concerns."""
    with _link(config) as link:
        e = link.state.get_error(error_id)
    _print_json({**e.as_dict(), "payload": e.payload})


@errors_app.command("discard")
def errors_discard(error_id: int, config: ConfigOpt = None) -> None:
    """Close an inbox entry without retrying it. For a captured change, the changes that
    waited behind it are then applied (by the running applier)."""
    with _link(config) as link:
        link.state.get_error(error_id)
        link.state.resolve_error(error_id, "discarded")
    out.print(f"discarded error {error_id}", markup=False)


@errors_app.command("retry")
def errors_retry(error_id: Annotated[int | None, typer.Argument(
        help="Entry id (or --all).", show_default=False)] = None,
        config: ConfigOpt = None,
        map_name: Annotated[str | None, typer.Option("--map", help="Only this map.")] = None,
        every: Annotated[bool, typer.Option("--all", help="Every open entry.")] = False
        ) -> None:
    """Apply a failed captured change again, with those that waited behind it. The running
    applier does the work; an entry that fails again is back in the inbox with one more
    attempt. (Rows that failed an initial sync are retried by `dualwrite sync --initial`.)"""
    if error_id is None and not every:
        raise DualwriteError("name an entry id, or pass --all",
                             hint="list them with `dualwrite errors list`")
    with _link(config) as link:
        entries = [link.state.get_error(error_id)] if error_id is not None else \
            link.state.errors(map_name)
        captured = [e for e in entries if e.payload and "change" in e.payload]
        for e in captured:
            link.state.resolve_error(e.id, "retry")
    for e in entries:
        if e not in captured:
            err.print(f"entry {e.id} is from an initial sync: rerun `dualwrite sync --initial "
                      f"{e.map}` to retry it", markup=False)
    out.print(f"retrying: {', '.join(str(e.id) for e in captured) or 'nothing'}",
              markup=False)


@errors_app.command("resolve")
def errors_resolve(error_id: int, pick: Annotated[str, typer.Option(
        "--pick", help="The side whose current row wins: left or right.")],
        config: ConfigOpt = None) -> None:
    """Settle a manual conflict: the picked side's current row is written to the other side
    (to edit instead, change the row on one side, then pick that side). The changes that
    waited behind it replay."""
    from dualwrite.engine.capture import resolve_conflict
    from dualwrite.model.maps import Side

    if pick not in ("left", "right"):
        raise DualwriteError(f"--pick takes left or right, not {pick!r}",
                             hint="left is the link's left environment")
    with _link(config) as link:
        done = resolve_conflict(link, error_id, Side(pick))
    out.print(f"resolved {error_id}: {json.dumps(done, default=_jsonable)}", markup=False)


# -- templates --------------------------------------------------------------------------------
@app.command("import-template")
def import_template(
        file: Annotated[Path, typer.Argument(help="A published template table (.md).")],
        output: Annotated[Path | None, typer.Option(
            "-o", "--output", help="Map file to write (default: stdout).")] = None,
        name: Annotated[str | None, typer.Option(help="Map name.")] = None) -> None:
    """Convert a published dual-write template table into a map file."""
    from dualwrite.model.templates import (
        parse_template,
        render_map_yaml,
        template_comments,
        template_to_map,
    )

    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise DualwriteError(f"cannot read template {str(file)!r}: {exc.strerror}",
                             hint="check the path") from exc
    tpl = parse_template(text, source=str(file))
    doc = template_to_map(tpl, name=name)
    yaml_text = render_map_yaml(doc, comments=template_comments(tpl))
    if output is None:
        sys.stdout.write(yaml_text)
    else:
        output.write_text(yaml_text, encoding="utf-8")
        out.print(f"wrote {output} ({len(doc['fields'])} field lines)", markup=False,
                  highlight=False)
    for w in tpl.warnings:
        err.print(f"warning: {w}", markup=False)


# -- demo -------------------------------------------------------------------------------------
@app.command()
def demo(directory: Annotated[Path, typer.Option(
        "--dir", help="Where to create the demo applications.")] = Path("demo"),
         scale: Annotated[int, typer.Option(help="Multiply the seed size.", min=1)] = 1) -> None:
    """Create two SQLite applications, seed them, and run validate, plan, sync and verify."""
    from dualwrite.demo.run import run_demo

    code = run_demo(directory, scale=scale, console=out)
    if code:
        raise Exit(code)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the Typer app; dualwrite errors become exit code 2 (1 for failed
    checks), printed with their hint, never as a traceback."""
    try:
        app(args=argv, prog_name="dualwrite")
    except SystemExit as e:  # Typer's own exits: --help, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except Exit as e:
        return e.code
    except ValidationFailed as exc:
        _fail(exc)
        return 1
    except DualwriteError as exc:
        _fail(exc)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted; run the command again to resume from the last checkpoint")
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
