"""The ``dualwrite`` command. Thin: parses options, calls the engine, prints.

Exit codes: 0 success; 1 a check found problems (validate, verify); 2 an error stopped the
command (bad config, unreachable database, refused link). Errors go to stderr with a hint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from dualwrite.engine.link import Link
from dualwrite.errors import (
    ConfigError,
    DualwriteError,
    TransientConnectorError,
    ValidationFailed,
)
from dualwrite.model.values import readable, shown

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Keep the tables of two business applications in sync.")
errors_app = typer.Typer(no_args_is_help=True, help="The error inbox: rows that could not sync.")
conflicts_app = typer.Typer(no_args_is_help=True,
                            help="Conflicts: rows both sides changed since they were synced.")
maps_app = typer.Typer(no_args_is_help=True, help="List maps and their state.")
alerts_app = typer.Typer(no_args_is_help=True,
                         help="Alerts: firing, acknowledged by an operator, or cleared.")
app.add_typer(errors_app, name="errors")
app.add_typer(alerts_app, name="alerts")
app.add_typer(conflicts_app, name="conflicts")
app.add_typer(maps_app, name="maps")
state_app = typer.Typer(no_args_is_help=True,
                        help="The state store: its schema version and upgrades.")
app.add_typer(state_app, name="state")

# Tables stay readable when piped to a file or CI log (Rich would assume 80 columns).
out = Console(highlight=False, soft_wrap=True, width=shutil.get_terminal_size((120, 24)).columns)
err = Console(stderr=True, highlight=False, soft_wrap=True)

_global: dict[str, Any] = {"config": None, "log_format": None, "log_level": None}
log = logging.getLogger("dualwrite.cli")

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


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=readable) + "\n")


@contextmanager
def _link(config: Path | None, *, lenient: bool = False) -> Iterator[Link]:
    link = Link.open(_config_path(config), lenient=lenient)
    try:
        _configure_logging(link)
        yield link
    finally:
        link.close()


def _configure_logging(link: Link | None = None) -> None:
    """Logging as the command line says, else as the config's ``logging:`` says."""
    from dualwrite.logs import configure

    cfg = link.config.model.logging if link is not None else None
    configure(_global["log_format"] or (cfg.format if cfg else "text"),
              _global["log_level"] or (cfg.level if cfg else "info"),
              link=link.config.link_name if link is not None else None)


def _json_logs() -> bool:
    from dualwrite.logs import JsonFormatter

    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


def _say(text: str, event: str) -> None:
    """A line of `run`/`serve` about themselves: as it reads on a terminal, or a log record
    when logs are JSON (stderr stays one JSON object per line)."""
    if _json_logs():
        log.info(text, extra={"event": event})
    else:
        err.print(text, markup=False)


class _Rate(ProgressColumn):
    """Rows per second so far."""

    def render(self, task: Any) -> Any:
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text(f"{speed:>8,.0f} rows/s" if speed else "       - rows/s")


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int | None], None] | None]:
    if not enabled or not err.is_terminal:
        yield None
        return
    with Progress(TextColumn("{task.description:<22}"), BarColumn(),
                  TextColumn("{task.completed:>9,} / {task.fields[total_text]}"),
                  _Rate(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                  console=err, transient=False) as bar:
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
def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        sys.stdout.write(f"dualwrite {version('dualwrite')}\n")
        raise typer.Exit()


@app.callback()
def _main(config: ConfigOpt = None,
          _version: Annotated[bool, typer.Option(
              "--version", callback=_print_version, is_eager=True,
              help="Print the version and exit.")] = False,
          log_format: Annotated[str | None, typer.Option(
              "--log-format", help="Logs on stderr: text (readable lines, the default) or "
              "json (one JSON object per line). Also `logging: {format: json}` in the "
              "config.", show_default=False)] = None,
          log_level: Annotated[str | None, typer.Option(
              "--log-level", help="debug, info (the default), warning or error.",
              show_default=False)] = None) -> None:
    """dualwrite: maps, initial sync, verify. Run `dualwrite demo` to see it work."""
    _global["config"] = config
    _global["log_format"], _global["log_level"] = log_format, log_level
    _configure_logging()


# -- validate ---------------------------------------------------------------------------------
@app.command()
def validate(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Check every map against both environments' real schemas; report all problems."""
    # lenient: a map file that does not parse is one more problem to list, not the end
    with _link(config, lenient=True) as link:
        bound, issues = link.validate(files=True)
        errors = [i for i in issues if i.is_error]
        if as_json:
            _print_json({"ok": not errors, "maps": [b.name for b in bound],
                         "issues": [i.as_dict() for i in issues]})
        else:
            for i in issues:
                out.print(str(i), markup=False)
            n = len(link.config.maps) + len({i.file for i in link.files.problems})
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
def unlink(config: ConfigOpt = None,
           purge: Annotated[bool, typer.Option(
               "--purge", help="Drop the link record's table too.")] = False) -> None:
    """Remove this link's record from both environments, and say what dualwrite leaves
    behind (capture, the state store)."""
    with _link(config) as link:
        freed = link.unlink(purge=purge)
        left = link.leftovers()
        out.print(f"unlinked {', '.join(freed) if freed else 'nothing (not linked)'}",
                  markup=False)
        for env, objects in left.items():
            capture = [o for o in objects if not o.endswith(LINK_TABLES)]
            if capture:
                out.print(f"left behind in {env}: {', '.join(capture)} (capture: its triggers "
                          "keep logging changes to the mapped tables); remove with "
                          "`dualwrite maps stop --purge`", markup=False)
            if len(capture) < len(objects):
                tables = ", ".join(o.removeprefix("table ") for o in objects
                                   if o.endswith(LINK_TABLES))
                out.print(f"left behind in {env}: the link's tables {tables}; remove with "
                          "`dualwrite unlink --purge`", markup=False)
        out.print(f"left behind: the state store {link.config.state_url} (audit log, tokens, "
                  "error inbox); delete it when you no longer need them", markup=False)


#: what keeps the link (its record, its live transactions' decision rows), as
#: Connector.link_storage names it: not capture
LINK_TABLES = (" dualwrite_link", " dualwrite_decisions")


def _confirm(what: str, objects: dict[str, list[str]], yes: bool) -> None:
    """Ask before removing ``objects`` (per environment); --yes answers for the user."""
    listed = "; ".join(f"{env}: {', '.join(o) or 'nothing'}" for env, o in objects.items())
    if yes:
        return
    if not sys.stdin.isatty():
        raise DualwriteError(f"{what} needs confirmation; it would remove {listed}",
                             hint="run it on a terminal to answer, or pass --yes")
    if not typer.confirm(f"{what} removes {listed}. Go on?", default=False, err=True):
        raise Exit(1)


@app.command()
def uninstall(config: ConfigOpt = None, yes: YesOpt = False) -> None:
    """Stop every map and remove every dualwrite trigger, function and table from both
    environments, and the link. The state store stays."""
    with _link(config) as link:
        _confirm("uninstall", link.leftovers(), yes)
        removed = link.uninstall()
    for env, objects in removed.items():
        out.print(f"{env}: removed {', '.join(objects) or 'nothing'}", markup=False)
    out.print(f"left behind: the state store {link.config.state_url} (audit log, tokens, "
              "error inbox); delete it when you no longer need them", markup=False)


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


def _key(key: list[Any]) -> str:
    """A row's key as people read it: ``usmf, C-0021``."""
    return ", ".join(str(readable(k)) for k in key)


def _warnings(results: list[dict[str, Any]]) -> None:
    for r in results:
        for w in r.get("warnings", []):
            out.print(f"  {r['map']}: warning: {w}", markup=False)


def _paths(results: list[dict[str, Any]]) -> None:
    """Which path each map's sync takes (docs/initial-sync.md, "The bulk path")."""
    for r in results:
        if r.get("path"):
            out.print(f"  {r['map']}: {r['path']}", markup=False)


@app.command()
def plan(maps: MapsArg = None, config: ConfigOpt = None,
         master: Annotated[str | None, typer.Option(
             help="Override each map's master: left or right.")] = None,
         errors: Annotated[bool, typer.Option(
             "--errors", help="List every row predicted to fail, with the reason.")] = False,
         as_json: JsonOpt = False) -> None:
    """Show what initial sync would do, per map and side, writing nothing. Lookups to rows
    that maps earlier in depends_on order would create count as resolving."""
    _check_master(master)
    with _link(config) as link, _progress(not as_json) as progress:
        results = [r.as_dict() for r in link.plan(maps or [], master=master,
                                                    progress=progress, errors=errors)]
    if as_json:
        _print_json({"maps": results})
        return
    out.print(_results_table("plan (nothing written)", results))
    _paths(results)
    for r in results:
        for s in r["samples"]:
            if errors and "error" in s:
                continue  # listed below with every other failing row
            desc = "; ".join(f"{f['field']}: left {shown(f['left'])}, right {shown(f['right'])}"
                             for f in s.get("fields", []))
            extra = desc or s.get("error", "")
            out.print(f"  {r['map']}: {s['operation']} {s['side']} {_key(s['key'])}"
                      f"{': ' + extra if extra else ''}", markup=False)
    _warnings(results)
    failing = sum(r["errors"]["left"] + r["errors"]["right"] for r in results)
    if not errors:
        if failing:
            out.print(f"{failing:,} row(s) would fail: `dualwrite plan --errors` lists every "
                      "one", markup=False)
        return
    hints: dict[str, None] = {}
    for r in results:
        for f in r["failures"]:
            at = f" {f['field']} {shown(f['value'])}" if f["field"] else ""
            out.print(f"  {r['map']}: {f['operation']} {f['side']} {_key(f['key'])}{at}: "
                      f"{f['reason']}", markup=False)
            if f["hint"]:
                hints[f["hint"]] = None
    for h in hints:
        out.print(f"hint: {h}", markup=False)
    if not failing:
        out.print("no row is predicted to fail", markup=False)


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
         skip_errors: Annotated[bool, typer.Option(
             "--skip-errors", help="Leave rows with an open inbox entry alone (they stay "
             "in the inbox).")] = False,
         as_json: JsonOpt = False) -> None:
    """Initial sync: copy rows between the sides in depends_on order; resumable. On a
    terminal each map shows rows done, rate and ETA."""
    if not initial:
        raise DualwriteError("`dualwrite sync` needs --initial",
                             hint="run `dualwrite sync --initial [MAP...]`")
    _check_master(master)
    with _link(config) as link, _progress(not as_json) as progress:
        results = [r.as_dict() for r in link.sync_initial(
            maps or [], master=master, progress=progress, resume=not restart,
            skip_errors=skip_errors)]
        errors = sum(r["errors"]["left"] + r["errors"]["right"] for r in results)
    if as_json:
        _print_json({"maps": results, "errors": errors})
    else:
        out.print(_results_table("initial sync", results))
        _paths(results)
        for r in results:
            if r["resumed"]:
                out.print(f"  {r['map']}: resumed from its checkpoint", markup=False)
        _warnings(results)
        if errors:
            out.print(f"{errors} row(s) went to the error inbox: `dualwrite errors list`",
                      markup=False)


@app.command()
def verify(maps: MapsArg = None, config: ConfigOpt = None, as_json: JsonOpt = False,
           limit: Annotated[int, typer.Option(
               "--limit", help="Differing rows listed per map (all are counted and summed up "
               "by field; --json lists every one).")] = 20) -> None:
    """Compare both sides through the maps; exit 1 when they differ, with the differences
    summed up by field and the first rows listed."""
    with _link(config) as link, _progress(not as_json) as progress:
        results = link.verify(maps or [], max_details=None if as_json else max(limit, 0),
                              progress=progress)
    ok = all(r.ok for r in results)
    if as_json:
        _print_json({"ok": ok, "maps": [r.as_dict() for r in results]})
    else:
        for r in results:
            status = "ok" if r.differences == 0 else f"{r.differences:,} difference(s)"
            out.print(f"{r.map}: {r.compared:,} key(s) compared, {status}", markup=False)
            for name, n in sorted(r.by_field.items(), key=lambda x: (-x[1], x[0])):
                out.print(f"  {n:,} × {name}", markup=False)
            for d in r.details:
                if d.kind == "differs":
                    fields = "; ".join(f"{f['field']}: left {shown(f['left'])}, right "
                                       f"{shown(f['right'])}" for f in d.fields)
                    out.print(f"  {_key(d.key)}: {fields}", markup=False)
                else:
                    out.print(f"  {_key(d.key)}: {d.kind}: {d.reason}", markup=False)
            if r.truncated:
                out.print(f"  ... {r.differences - len(r.details):,} more row(s): `--limit N` "
                          "lists more, `--json` lists every one", markup=False)
            for w in r.warnings:
                out.print(f"  warning: {w}", markup=False)
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
def maps_stop(maps: MapsArg = None, config: ConfigOpt = None,
              purge: Annotated[bool, typer.Option(
                  "--purge", help="Also remove every dualwrite trigger, function and change-log "
                  "table from both environments (every map).")] = False,
              yes: YesOpt = False) -> None:
    """Stop maps: remove their capture and forget their queue. Starting one again runs its
    initial sync again."""
    if purge and maps:
        raise DualwriteError("--purge removes the change log every map shares, so it stops "
                             "every map", hint="run `dualwrite maps stop --purge` without map "
                             "names, or stop the maps without --purge")
    with _link(config) as link:
        if purge:
            _confirm("maps stop --purge", {e: [o for o in objs if not o.endswith(
                LINK_TABLES)] for e, objs in link.leftovers().items()}, yes)
            removed = link.purge_capture()
            for env, objects in removed.items():
                out.print(f"{env}: removed {', '.join(objects) or 'nothing'}", markup=False)
            stopped = [m.name for m in link.config.maps]
        else:
            _confirm_stop(link, maps or [], yes)
            stopped = link.stop_maps(maps or [])
    out.print(f"stopped: {', '.join(stopped)}", markup=False)


def _confirm_stop(link: Link, names: list[str], yes: bool) -> None:
    """Stopping drops a map's queue (and what waits in its inbox) and leaves the maps that
    depend on it without it: say so, and ask (--yes answers)."""
    named = {b.name for b in link.bound_maps(names)}
    losses = [f"{r['map']}: {r['queued']} queued change(s) dropped"
              for r in link.status() if r["map"] in named and r["queued"]]
    states = link.state.map_states()
    losses += [f"{m.name} depends on {', '.join(sorted(set(m.depends_on) & named))} and "
               "will be held until it runs again"
               for m in link.config.maps if m.name not in named and set(m.depends_on) & named
               and (states.get(m.name) or {}).get("state") not in (None, "stopped")]
    if not losses or yes:
        return
    listed = "; ".join(losses)
    if not sys.stdin.isatty():
        raise DualwriteError(f"maps stop needs confirmation: {listed}",
                             hint="pause the map instead to keep its queue, run it on a "
                             "terminal to answer, or pass --yes")
    if not typer.confirm(f"maps stop: {listed}. Go on?", default=False, err=True):
        raise Exit(1)


@maps_app.command("reload")
def maps_reload(maps: MapsArg = None, config: ConfigOpt = None, as_json: JsonOpt = False
                ) -> None:
    """Install edited map files (all whose file changed, by default) for maps that run:
    each is checked against both schemas first (every problem listed, nothing changed),
    capture is installed again for its columns, and running `run`/`serve` processes switch to
    it within seconds. Changes captured before are applied as the version they were captured
    under."""
    with _link(config) as link:
        done = link.reload_maps(maps or [])
    if as_json:
        _print_json({"maps": done})
        return
    for r in done:
        if r["reloaded"]:
            out.print(f"{r['map']}: reloaded, version {r['from']} -> {r['to']}", markup=False)
        else:
            out.print(f"{r['map']}: not reloaded ({r['why']})", markup=False)


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
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _until_signalled(name: str, work: Callable[[], None], stop: Callable[[], None]) -> None:
    """Run ``work`` on a thread of its own until SIGTERM or SIGINT, then call ``stop`` and
    wait for ``work`` to return. Errors of ``work`` are raised here.

    Nothing runs inside a signal handler. A Python handler runs on the main thread between two
    bytecodes, wherever that thread is: one that called ``threading.Event.set`` deadlocked
    when the main thread was inside the same Event's ``wait`` holding its lock (about one stop
    in eight hung). Here the signals are blocked before any thread exists (threads inherit the
    mask) and the main thread takes them with ``sigtimedwait``, as ordinary code. A second
    signal stops without waiting (exit code 1)."""
    received: list[int] = []
    wanted = set(_STOP_SIGNALS)
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    # A thread that existed before the mask (a caller's own, in-process) could still take a
    # signal: a handler that only appends to a list (no lock) hands it to the loop below.
    previous = {s: signal.signal(s, lambda sig, _frame: received.append(sig)) for s in wanted}
    failure: list[BaseException] = []

    def body() -> None:
        try:
            work()
        except BaseException as exc:  # raised again on the main thread
            failure.append(exc)

    worker = threading.Thread(target=body, name=f"dualwrite-{name}", daemon=True)
    try:
        worker.start()
        stopping = False
        while worker.is_alive():
            # woken by a signal at once; by the worker's end within the timeout
            info = signal.sigtimedwait(wanted, 0.02 if stopping else 0.25)
            # After SIGSTOP and SIGCONT, CPython's sigtimedwait can return a siginfo that
            # no signal filled in (garbage, not one of ``wanted``): a frozen and thawed
            # process stopped itself that way. Only a signal asked for counts.
            sig = info.si_signo if info is not None and info.si_signo in wanted else None
            if sig is None and received:
                sig = received.pop()
            if sig is None:
                continue
            if stopping:
                _say(f"dualwrite {name}: second signal, exiting without waiting",
                     "second-signal")
                raise Exit(1)
            stopping = True
            stop()
        worker.join()
    finally:
        # a signal that came after the work ended asks for what is done already: take it,
        # rather than let it kill the process when the mask is lifted
        for _ in range(len(wanted)):
            if signal.sigtimedwait(wanted, 0) is None:
                break
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    if failure:
        raise failure[0]


def _load_rules(link: Link) -> None:
    """The business rules the config names, for live writes and captured changes."""
    from dualwrite.engine.rules import load_rules

    for rule in load_rules(link):
        _say(f"rule {rule}", "rule")


@app.command()
def run(config: ConfigOpt = None,
        metrics_port: Annotated[int | None, typer.Option(
            "--metrics-port", help="Serve Prometheus metrics at http://HOST:PORT/metrics "
            "(0: any free port).", show_default=False)] = None,
        metrics_host: Annotated[str, typer.Option(
            "--metrics-host", help="Address of the metrics endpoint.")] = "127.0.0.1",
        transport: Annotated[str | None, typer.Option(
            "--transport", help="Distributed apply over NATS JetStream at this URL "
            "(nats://HOST:4222), as `transport: {nats: {url: ...}}` in the config does.",
            show_default=False)] = None,
        worker: Annotated[bool, typer.Option(
            "--worker", help="With a NATS transport: apply the messages of the partitions "
            "this process owns (without: read the change logs and publish them).")] = False,
        also: Annotated[list[Path] | None, typer.Option(
            "--also", help="A worker of these links' configs too (repeatable).",
            show_default=False)] = None
        ) -> None:
    """Apply captured changes of every running map, both ways, until stopped (SIGTERM or
    Ctrl-C). One applier per link: a second one waits as a standby (and says so). With a
    NATS transport, this process reads and publishes instead (one active per link, the same
    standby), and `run --worker` processes apply. On a link with an OData side: follow it
    (as `dualwrite follow`) under the same lease."""
    from dualwrite.engine.capture import run_applier
    from dualwrite.engine.heap import settle_for_latency

    stop = threading.Event()
    if worker:
        _run_worker(config, also or [], transport, stop)
        return

    def work() -> None:
        with _link(config) as link:
            _transport(link, transport)
            server = None
            if metrics_port is not None:
                from dualwrite.api.metrics import start_metrics_server

                server = start_metrics_server(link, metrics_host, metrics_port)
                _say(f"dualwrite run: metrics at http://{metrics_host}:"
                     f"{server.server_port}/metrics", "metrics")

            def ready() -> None:
                settle_for_latency()  # start-up done: keep its objects out of the collector's way
                _say(f"dualwrite run: applying captured changes of link "
                     f"{link.config.link_name!r} (pid {os.getpid()})", "ready")

            try:
                from dualwrite.engine.live_odata import odata_side

                if odata_side(link.connectors) is not None:
                    from dualwrite.engine.odata_follow import run_follower

                    settle_for_latency()
                    # a quiet service is looked at as often as a quiet polled change log
                    run_follower(link, stop, say=_say,
                                 interval=link.config.model.capture.idle_poll_max)
                    return
                # the maps are validated and the rules loaded by run_applier, once the
                # databases answer: run waits for them rather than exit
                runner = None
                if link.config.model.transport.nats is not None:
                    from dualwrite.engine.jetstream.reader import publish_changes

                    runner = functools.partial(publish_changes, link)
                run_applier(link, stop, ready=ready, prepare=lambda: _load_rules(link),
                            runner=runner)
            finally:
                if server is not None:
                    server.shutdown()
                    server.server_close()

    _until_signalled("run", work, stop.set)
    _say("dualwrite run: stopped", "stopped")


def _transport(link: Link, url: str | None) -> None:
    """``--transport URL``: the link's transport, whatever its config says."""
    if url is None:
        return
    from dualwrite.engine.config import NatsTransport

    if not url.startswith(("nats://", "tls://")):
        raise ConfigError(f"--transport {url!r} is not a NATS URL",
                          hint="give nats://HOST:PORT")
    cfg = link.config.model.transport
    cfg.nats = cfg.nats.model_copy(update={"url": url}) if cfg.nats else NatsTransport(url=url)


def _run_worker(config: Path | None, also: list[Path], transport: str | None,
                stop: threading.Event) -> None:
    """`run --worker`: apply the owned partitions of this link (and the ``also`` ones)."""
    from dualwrite.engine.jetstream.worker import run_worker

    def work() -> None:
        with contextlib.ExitStack() as stack:
            links = [stack.enter_context(_link(config))]
            links += [stack.enter_context(_link(p)) for p in also]
            for link in links:
                _transport(link, transport)
            names = ", ".join(repr(x.config.link_name) for x in links)
            run_worker(links, stop, prepare=_load_rules, ready=lambda: _say(
                f"dualwrite run --worker: applying partitions of link {names} "
                f"(pid {os.getpid()})", "ready"))

    _until_signalled("run", work, stop.set)
    _say("dualwrite run --worker: stopped", "stopped")


@app.command()
def follow(config: ConfigOpt = None,
           start_only: Annotated[bool, typer.Option(
               "--start", help="Only install capture and take the service's position, then "
               "exit: run it before `sync --initial`.")] = False,
           once: Annotated[bool, typer.Option(
               "--once", help="Step until a step writes nothing, then exit.")] = False,
           interval: Annotated[float, typer.Option(
               "--interval", help="Seconds between steps that found nothing.")] = 1.0
           ) -> None:
    """Keep a link with one OData side in step, change by change, until stopped (SIGTERM or
    Ctrl-C): docs/odata.md, "OData environments". Take the service's position first, before
    `sync --initial`, with --start."""
    from dualwrite.engine.odata_follow import follower_for
    from dualwrite.errors import TransientConnectorError

    stop = threading.Event()

    def work() -> None:
        with _link(config) as link:
            follower = follower_for(link)
            follower.start()
            if start_only:
                _say("dualwrite follow: capture installed and the service's position taken; "
                     "run `dualwrite sync --initial`, then `dualwrite follow`", "started")
                return
            _say(f"dualwrite follow: following link {link.config.link_name!r} "
                 f"(pid {os.getpid()})", "ready")
            while not stop.is_set():
                try:
                    written = follower.step()
                except TransientConnectorError as exc:  # the next step reads it again
                    _say(f"dualwrite follow: {exc.message}; retrying", "retry")
                    stop.wait(interval)
                    continue
                if written == 0:
                    if once:
                        return
                    stop.wait(interval)

    if once or start_only:
        work()
        return
    _until_signalled("follow", work, stop.set)
    _say("dualwrite follow: stopped", "stopped")


@app.command()
def status(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Per map: state, lag (seconds and changes), queued changes, errors, conflicts, and when
    it last applied a change."""
    from dualwrite.engine.monitor import check_applier

    with _link(config) as link:
        rows = link.status()
        procs = link.processes()
        held = link.applier_lease().holder_info()
        lease = {"pid": held[1], "host": held[0], "epoch": held[2]} if held else None
        # status is often the only process that looks while nothing applies: it raises
        # (and clears) the no-applier alert itself
        check_applier(link, procs)
        link.monitor.refresh()
        alerts = link.monitor.alerts(["firing", "acknowledged"], limit=20)
    if as_json:
        _print_json({"maps": rows, "processes": procs, "lease": lease, "alerts": alerts})
        return
    _emit("maps", rows, False, [
        ("map", "map"), ("state", "state"), ("version", "version"), ("lag s", "lag_seconds"),
        ("lag changes", "lag_changes"), ("queued", "queued"), ("errors", "errors"),
        ("conflicts", "conflicts"), ("changes/s (1 min)", "throughput"),
        ("last applied", "last_applied_at")])
    for r in rows:  # below the table: a note is a sentence, too wide for a column
        if r.get("note"):
            out.print(f"{r['map']}: {r['note']}", markup=False)
    for p in procs:
        out.print(f"process: {p['role']} pid {p['pid']} on {p['host']} since "
                  f"{p['started_at']}, heartbeat {p['heartbeat_age']} s ago"
                  + ("" if p["alive"] else " (gone)")
                  + (f": {p['note']}" if p["note"] else ""), markup=False)
    out.print(f"applier lease: pid {lease['pid']} on {lease['host']}, epoch {lease['epoch']}"
              if lease else "applier lease: held by nobody", markup=False)
    down = sorted({e for r in rows for e in r["unreachable"]})
    if down:
        out.print(f"unreachable: {', '.join(down)} (queues counted on the other side only)",
                  markup=False)
    for a in alerts:
        out.print(f"alert {a['id']} {a['state']} since {a['first_at']} ({a['kind']}, "
                  f"{a['action']}): {a['message']}", markup=False)


# -- alerts -----------------------------------------------------------------------------------
@alerts_app.command("list")
def alerts_list(config: ConfigOpt = None,
                every: Annotated[bool, typer.Option(
                    "--all", help="Cleared alerts too.")] = False,
                limit: Annotated[int, typer.Option(help="At most this many, newest first.")
                                 ] = 100,
                as_json: JsonOpt = False) -> None:
    """Alerts, newest first: state (firing, acknowledged, cleared), when it first and last
    fired, who acknowledged it, what it says."""
    with _link(config) as link:
        link.monitor.refresh()
        rows = link.monitor.alerts(None if every else ["firing", "acknowledged"],
                                   limit=limit)
    if not rows and not as_json:
        out.print("no alert" + ("" if every else " firing (`--all` shows cleared ones)"),
                  markup=False)
        return
    _emit("alerts", rows, as_json, [
        ("id", "id"), ("state", "state"), ("map", "map"), ("kind", "kind"),
        ("action", "action"), ("first", "first_at"), ("last", "last_at"),
        ("times", "fired"), ("acknowledged", "acknowledged_by"), ("message", "message")])


@alerts_app.command("ack")
def alerts_ack(alert_id: int, config: ConfigOpt = None,
               by: Annotated[str | None, typer.Option(
                   help="Who acknowledges (default: the user running the command).")] = None
               ) -> None:
    """Acknowledge an alert: it stays listed, acknowledged, until its cause is gone."""
    import getpass

    with _link(config) as link:
        a = link.monitor.ack(alert_id, by or getpass.getuser())
    out.print(f"acknowledged alert {a['id']} by {a['acknowledged_by']} at "
              f"{a['acknowledged_at']}", markup=False)


# -- state ----------------------------------------------------------------------------------
@state_app.command("upgrade")
def state_upgrade(config: ConfigOpt = None) -> None:
    """Bring the state store up to the schema version this dualwrite needs (every step in
    order; idempotent). Back the store up first, and stop every `run` and `serve` of it."""
    from dualwrite.engine.config import load_config
    from dualwrite.engine.state import MIGRATIONS, SCHEMA_VERSION, StateStore

    url = load_config(_config_path(config)).state_url
    store = StateStore(url, upgrade=True)
    try:
        if store.upgraded is None:
            out.print(f"state store: at schema version {SCHEMA_VERSION}, nothing to do",
                      markup=False)
            return
        found, now = store.upgraded
        for version, what, _step in MIGRATIONS:
            if found < version <= now:
                out.print(f"  version {version}: {what}", markup=False)
        out.print(f"state store: upgraded from schema version {found} to {now}", markup=False)
    finally:
        store.close()


# -- serve ------------------------------------------------------------------------------------
@app.command()
def serve(config: ConfigOpt = None,
          host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")
                          ] = 8000) -> None:
    """Serve each environment's tables over OData v4 at /odata/<env>/ (Bearer tokens),
    with /healthz and /readyz, until SIGTERM or Ctrl-C. In-doubt transactions are recovered
    on start; captured changes are applied too, as `dualwrite run` does."""
    import uvicorn

    from dualwrite.api.access_log import install as redact_access_log
    from dualwrite.api.server import QuietServer, create_server_app
    from dualwrite.engine.heap import settle_for_latency

    server: list[QuietServer] = []
    stopped = threading.Event()

    def work() -> None:
        with _link(config) as link:
            try:
                link.bound_maps()  # refuse to start on invalid maps, with every problem listed
                _load_rules(link)
            except TransientConnectorError as exc:
                # a database cannot be reached: serve anyway (503 for what needs it, /readyz
                # says which); the maps are checked and the rules loaded once it answers,
                # before the first write
                _say(f"dualwrite serve: {exc.message}; serving 503 until it answers",
                     "unreachable")
                link.forget_validation()
                def prepare() -> None:
                    link.bound_maps()
                    _load_rules(link)

                link.before_first_write(prepare)
            app_ = create_server_app(link, apply_captured=True)
            settle_for_latency()  # start-up done: keep its objects out of the collector's way
            # uvicorn's own signal handling stays off: it runs on this thread, not the main
            # one, and it raised SIGTERM again once it had stopped (exit status -15)
            served = link.config.model.serve
            # JSON logs: uvicorn's records go through dualwrite's handler (one JSON object per
            # line) instead of its own formatters
            extra: dict[str, Any] = {"log_config": None} if _json_logs() else {}
            settings = uvicorn.Config(app_, host=host, port=port, log_level="info",
                                      access_log=served.access_log, **extra)
            # "auto" resolves to httptools and uvloop, which dualwrite depends on; say so,
            # since without them every request costs the interpreter more (docs/operations.md)
            settings.load()
            factory = settings.get_loop_factory()
            loop_name = getattr(factory, "__module__", "asyncio").split(".")[0]
            # HttpToolsProtocol, H11Protocol
            parser = settings.http_protocol_class.__name__.removesuffix("Protocol").lower()
            _say(f"dualwrite serve: HTTP by {parser}, event loop {loop_name}", "http")
            server.append(QuietServer(settings))
            # after uvicorn's Config, which sets its loggers up
            redact_access_log(redact_filter=served.redact_filter)
            if not stopped.is_set():
                server[0].run()

    def stop() -> None:
        stopped.set()
        if server:
            server[0].request_exit()

    _until_signalled("serve", work, stop)
    _say("dualwrite serve: stopped", "stopped")


# -- recovery ---------------------------------------------------------------------------------
@app.command()
def recover(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Commit or roll back every transaction branch a stopped dualwrite left prepared, or
    a running one gave up as in doubt, following the durable decision (the state store's
    log, or the decision row of the transaction's last resource; none: rolled back)."""
    with _link(config) as link:
        report = link.recover()
    if as_json:
        _print_json({"actions": [a.as_dict() for a in report.actions],
                     "completed": report.completed, "imported": report.imported})
        return
    for x in report.imported:
        out.print(f"decision read from its last resource into the state store: {x}",
                  markup=False)
    if not report.actions:
        out.print("nothing in doubt: no prepared transaction of this link", markup=False)
    for a in report.actions:
        out.print(f"{a.action}: {a.xid} on {a.environment}", markup=False)


# -- tokens -----------------------------------------------------------------------------------
tokens_app = typer.Typer(no_args_is_help=True, help="API tokens (Bearer): roles and licences.")
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("create")
def tokens_create(
        principal: Annotated[str, typer.Option(help="Who the token acts as.")],
        config: ConfigOpt = None,
        role: Annotated[str, typer.Option(
            help="reader (GET), writer (reads and writes) or admin (also tokens and map "
            "control).")] = "reader",
        licence: Annotated[list[str] | None, typer.Option(
            help="A restricted table this token may write (repeat for more); granted to the "
            "principal too. Without any, the token has all of its principal's.")] = None,
) -> None:
    """Create a token; it is printed once, alone on stdout. Only its hash is stored."""
    from dualwrite.engine.security import create_token

    with _link(config) as link:
        token = create_token(link.state, principal, role=role, licences=licence or None)
    sys.stdout.write(token + "\n")


@tokens_app.command("list")
def tokens_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Tokens (ids and principals, never the tokens themselves) with the role and the
    licences each one acts with."""
    from dualwrite.engine.security import effective

    with _link(config) as link:
        rows = link.state.list_tokens()
        for r in rows:
            roles, licences = link.state.principal(r["principal"])
            own = None if r["licences"] is None else frozenset(r["licences"])
            role, held = effective(r["role"], own, roles, licences)
            r["role"], r["licences"] = role, sorted(held)
            r["own_licences"] = own is not None
    _emit("tokens", rows, as_json, [
        ("id", "id"), ("principal", "principal"), ("role", "role"), ("licences", "licences"),
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
    """Open entries of the error inbox: where the write failed (``on``), where a captured
    change came from (``from``), and why."""
    with _link(config) as link:
        entries = link.state.errors(map_name)
        rows = [_entry_row(e, link) for e in entries]
    if not entries and not as_json:
        out.print("the error inbox is empty", markup=False)
        return
    _emit("errors", rows, as_json, [
        ("id", "id"), ("map", "map"), ("key", "key"), ("operation", "operation"),
        ("on", "side"), ("from", "from"), ("attempts", "attempts"), ("last", "last_at"),
        ("reason", "reason")])


def _entry_row(e: Any, link: Link) -> dict[str, Any]:
    """An inbox entry as ``errors list`` shows it (a captured change's source environment
    named beside the side it failed on)."""
    from dualwrite.model.maps import Side

    source = (e.payload or {}).get("source")
    # initial sync names the side it failed on left/right: shown as the environment, as
    # captured changes are
    on = link.env_name(Side(e.side)) if e.side in ("left", "right") else e.side
    return {**e.as_dict(), "side": on, "from": link.env_name(Side(source)) if source else None}


@errors_app.command("show")
def errors_show(error_id: int, config: ConfigOpt = None) -> None:
    """One inbox entry, readably: why it failed, the captured change (old and new values),
    and, for a conflict, the other side's row and its own changes."""
    from dualwrite.engine.monitor import readable_change
    from dualwrite.engine.state import decode_doc

    with _link(config) as link:
        e = link.state.get_error(error_id)
        row = _entry_row(e, link)
    payload = e.payload or {}
    extra = payload.get("extra")
    extra = decode_doc(extra) if isinstance(extra, str) else (extra or {})
    shown = {**row, "change": readable_change(payload.get("change"))}
    if e.operation == "conflict":
        shown["other_side_row"] = extra.get("target")
        shown["other_side_changes"] = [readable_change(x) for x in extra.get("theirs", [])]
        shown["detected_at"] = extra.get("detected_at")
    elif payload and "change" not in payload:
        shown["row"] = payload  # an initial sync's failed row
    _print_json(shown)


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
    """Apply a failed captured change again, as its row is NOW on the source side (fix the
    row, or the cause on the target, first): its whole source transaction, then the changes
    that waited behind it, on top. The running applier does the work; an entry that fails
    again is back in the inbox with one more attempt. (Rows that failed an initial sync are
    retried by `dualwrite sync --initial`; conflicts are settled by `errors resolve`.)"""
    if error_id is None and not every:
        raise DualwriteError("name an entry id, or pass --all",
                             hint="list them with `dualwrite errors list`")
    with _link(config) as link:
        entries = [link.state.get_error(error_id)] if error_id is not None else \
            link.state.errors(map_name)
        captured = [e for e in entries if e.payload and "change" in e.payload
                    and e.operation != "conflict"]
        for e in captured:
            link.state.resolve_error(e.id, "retry")
    for e in entries:
        if e.operation == "conflict":
            err.print(f"entry {e.id} is a conflict: settle it with `dualwrite errors resolve "
                      f"{e.id} --pick left|right`", markup=False)
        elif e not in captured:
            err.print(f"entry {e.id} is from an initial sync: rerun `dualwrite sync --initial "
                      f"{e.map}` to retry it", markup=False)
    out.print(f"retrying: {', '.join(str(e.id) for e in captured) or 'nothing'}",
              markup=False)


@errors_app.command("resolve")
def errors_resolve(error_id: int, pick: Annotated[str, typer.Option(
        "--pick", help="The side whose current row wins: left or right.")],
        config: ConfigOpt = None) -> None:
    """Settle a manual conflict for one side: the running applier writes the picked side's
    row, as it is then, to the other side, and applies on top every change either side made
    after the conflict was found, field by field, in the order they were made (to edit
    instead, change the row on one side, then pick that side)."""
    from dualwrite.engine.capture import resolve_conflict
    from dualwrite.model.maps import Side

    if pick not in ("left", "right"):
        raise DualwriteError(f"--pick takes left or right, not {pick!r}",
                             hint="left is the link's left environment")
    with _link(config) as link:
        done = resolve_conflict(link, error_id, Side(pick))
    out.print(f"resolved {error_id}: {json.dumps(done, default=readable)}", markup=False)


# -- conflicts --------------------------------------------------------------------------------
@conflicts_app.command("list")
def conflicts_list(config: ConfigOpt = None, map_name: Annotated[str | None, typer.Option(
        "--map", help="Only this map.")] = None,
        limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
        as_json: JsonOpt = False) -> None:
    """Conflicts recorded, newest first: when, map, key, the policy and who won (``manual``:
    parked in the inbox until `dualwrite errors resolve`)."""
    from dualwrite.model.maps import Side

    with _link(config) as link:
        rows = [{"id": c["id"], "at": c["at"], "map": c["map"], "key": c["key"],
                 "policy": c["policy"], "winner": c["winner"],
                 "from": link.env_name(Side(c["source"]))}
                for c in link.state.conflicts(map_name, limit)]
    if not rows and not as_json:
        out.print("no conflicts recorded", markup=False)
        return
    _emit("conflicts", rows, as_json, [
        ("id", "id"), ("at", "at"), ("map", "map"), ("key", "key"), ("policy", "policy"),
        ("winner", "winner"), ("change from", "from")])


@conflicts_app.command("show")
def conflicts_show(conflict_id: int, config: ConfigOpt = None) -> None:
    """One conflict with both versions: the incoming change (old and new values), the row the
    other side held and the changes of its own it met. Row values are kept only while the
    conflict is open (or with capture.keep_conflict_values)."""
    from dualwrite.engine.monitor import readable_change
    from dualwrite.model.maps import Side

    with _link(config) as link:
        found = link.state.conflicts(conflict_id=conflict_id, limit=1)
        if not found:
            raise DualwriteError(f"no conflict with id {conflict_id}",
                                 hint="list them with `dualwrite conflicts list`")
        c = found[0]
        source = Side(c["source"])
        shown = {"id": c["id"], "at": c["at"], "map": c["map"], "key": c["key"],
                 "policy": c["policy"], "winner": c["winner"],
                 "change_from": link.env_name(source), "other_side": link.env_name(
                     source.other)}
    if "incoming" in c:
        shown["incoming_change"] = readable_change(c["incoming"])
        shown["other_side_row"] = c.get("target")
        shown["other_side_changes"] = [readable_change(x) for x in c.get("theirs", [])]
    else:
        shown["values"] = "not kept: the conflict is settled (capture.keep_conflict_values " \
                          "keeps them)"
    _print_json(shown)


# -- templates --------------------------------------------------------------------------------
@app.command("import-template")
def import_template(
        file: Annotated[Path, typer.Argument(help="A published template table (.md).")],
        output: Annotated[Path | None, typer.Option(
            "-o", "--output", help="Map file to write (default: stdout).")] = None,
        name: Annotated[str | None, typer.Option(help="Map name.")] = None) -> None:
    """Convert a published dual-write template table into a map file."""
    from dualwrite.errors import ConfigError
    from dualwrite.model.templates import (
        Template,
        known_values,
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
    # the templates beside it publish value maps this one may lack (same columns)
    siblings: list[Template] = []
    for other in sorted(file.parent.glob("*.md")):
        if other.resolve() == file.resolve():
            continue
        try:
            siblings.append(parse_template(other.read_text(encoding="utf-8"),
                                           source=str(other)))
        except (OSError, ConfigError):
            continue  # not a template
    known = known_values(siblings)
    doc = template_to_map(tpl, name=name, known=known)
    yaml_text = render_map_yaml(doc, comments=template_comments(tpl, known))
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
         scale: Annotated[int, typer.Option(help="Multiply the seed size.", min=1)] = 1,
         live: Annotated[bool, typer.Option(
             "--live", help="Keep the link running (serve, the console) until Ctrl-C.")
                         ] = False,
         port: Annotated[int, typer.Option(
             help="Port of the demo's server (another free one if it is taken).")] = 8000
         ) -> None:
    """Create two SQLite applications, seed them, run validate, plan, sync and verify; then
    run the link live (serve, writes in each application and through the API, a conflict)
    and print the console's address with a ready token."""
    from dualwrite.demo.run import command_name, run_demo
    from dualwrite.logs import configure

    if _global["log_level"] is None:  # the demo tells its own story: the log says problems
        configure(_global["log_format"] or "text", "warning")
    def until_stopped() -> None:  # Ctrl-C or SIGTERM, taken as run and serve take them
        stop = threading.Event()

        def serving() -> None:
            stop.wait()
        _until_signalled("demo", serving, stop.set)

    code = run_demo(directory, scale=scale, console=out, progress=lambda: _progress(True),
                    live=live, port=port, command=command_name(), wait=until_stopped)
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
