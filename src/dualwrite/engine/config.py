"""The one config loader: ``dualwrite.yaml`` and the map files it names.

Relative paths (map globs, ``sqlite:///relative.db``) are resolved against the config file's
folder, so ``dualwrite -c demo/dualwrite.yaml verify`` works from anywhere.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dualwrite.connectors.stores import DEFAULT_STATE_URL, resolve_file_url
from dualwrite.errors import ConfigError, Issue, MapSyntaxError, ValidationFailed
from dualwrite.model.maps import TableMap, parse_map_document
from dualwrite.model.yamlio import line_of, load_yaml


class EnvironmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1)
    #: where the environment's unqualified table names and dualwrite's own tables (the change
    #: log) are: a PostgreSQL schema (the search path), a MariaDB database
    schema_: str | None = Field(default=None, alias="schema", min_length=1)
    #: an OData environment without delta links: the modified-timestamp property polled for
    #: its changes (a map may name another: its ``modified:``)
    modified: str | None = Field(default=None, min_length=1)
    #: how writes that bypass dualwrite are captured on a PostgreSQL environment: ``triggers``
    #: (the default: statement triggers into the change log, in the writer's transaction) or
    #: ``logical`` (logical decoding of the WAL, pgoutput; needs ``wal_level = logical`` and a
    #: role that may replicate: see docs/capture.md, "Choosing how to capture")
    capture: Literal["triggers", "logical"] = "triggers"


class LinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    left: str
    right: str
    name: str | None = None


class SyncConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(default=5000, ge=1, le=1_000_000)
    #: initial sync streams one-sided key ranges between the databases' bulk paths where
    #: the map compiles to SQL (docs/initial-sync.md); false: always row by row
    bulk: bool = True


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: tables served over OData besides the mapped ones and their lookup targets, per env
    expose: dict[str, list[str]] = Field(default_factory=dict)
    page_size: int = Field(default=1000, ge=1, le=100_000)
    #: one line per HTTP request (tokens are never written; see dualwrite.api.access_log)
    access_log: bool = True
    #: write $filter with its literal values as *** (property names and operators stay)
    redact_filter: bool = False
    #: refuse (428) an OData update or delete of an existing entity sent without If-Match
    require_if_match: bool = False
    #: an OData PATCH or PUT to a key that does not exist creates the entity (off: 404)
    upsert: bool = True
    #: how long the changes behind OData delta links are kept (seconds after they were
    #: sequenced); a delta token older than that answers 410 Gone
    delta_retention_seconds: float = Field(default=86_400.0, gt=0)


class QueueBudget(BaseModel):
    """How much a map may hold queued (paused, or its target unreachable). Crossing 80% of
    any of the three raises an alert; nothing is ever dropped."""

    model_config = ConfigDict(extra="forbid")
    max_rows: int = Field(default=1_000_000, ge=1)
    max_bytes: int = Field(default=1_000_000_000, ge=1)
    max_age_seconds: float = Field(default=86_400.0, gt=0)


class CaptureConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: changes read from a log per pass (whole transactions are always read whole)
    batch_size: int = Field(default=5000, ge=1, le=1_000_000)
    #: seconds between polls of a change log where there is no NOTIFY (MariaDB, SQLite)
    poll_interval: float = Field(default=0.01, gt=0, le=60)
    #: the longest wait between polls once the link has been quiet a while (the wait doubles
    #: from poll_interval while nothing arrives; the first change after it resets it). Each
    #: poll of a quiet MariaDB link costs about 2 ms of CPU (a wake-up, two queries): 0.5 s
    #: keeps a quiet link under 1 % of a core and its first change within a second
    idle_poll_max: float = Field(default=0.5, gt=0, le=60)
    #: the longest wait between retries when a side is unreachable
    max_backoff: float = Field(default=10.0, gt=0, le=3600)
    #: how long the applier's lease lasts unrenewed: a standby takes over this long after
    #: the active applier stopped answering (at once when it exits, or dies on the same host)
    lease_seconds: float = Field(default=15.0, ge=2, le=3600)
    queue: QueueBudget = Field(default_factory=QueueBudget)
    #: keep the row values of settled conflicts in the state store (an audit trail; business
    #: data kept beyond open entries, so off by default)
    keep_conflict_values: bool = False


class NatsTransport(BaseModel):
    """Distributed apply over NATS JetStream (docs/operations.md, "Workers on JetStream")."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(default="nats://127.0.0.1:4222", min_length=1)
    #: partitions per link: rows are spread over them by a hash of their key; at most this
    #: many workers apply one link at a time
    partitions: int = Field(default=8, ge=1, le=256)
    #: seconds a worker may hold a message unacknowledged before it is delivered again
    ack_wait: float = Field(default=30.0, ge=0.5, le=3600)
    #: seconds within which a message published twice (a reader taking over) is dropped by
    #: the broker; later duplicates are skipped by the workers
    duplicate_window: float = Field(default=3600.0, ge=1, le=7 * 86_400)


class TransportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    nats: NatsTransport | None = None


class RulesConfig(BaseModel):
    """Business rules: a Python module whose @dualwrite.before_write functions are registered
    (see dualwrite.engine.rules)."""

    model_config = ConfigDict(extra="forbid")
    module: str = Field(pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
    #: a folder put first on sys.path to import it from, relative to the config file
    path: str | None = None


class AlertRule(BaseModel):
    """``count`` events of ``kind`` within ``within_minutes`` on one map → ``action``.

    Kinds: ``conflict``, ``rejected`` (the target refused a row), ``lookup`` (a lookup or
    value map had no answer), ``unreachable``, ``queue`` (the queue crossed 80% of its
    budget), ``failed`` (a map taken out of the link, with its reason), ``capture_broken``
    (capture could not record the map: it failed too), ``no-applier`` (maps run and no
    applier applies them; its map is ``*``, the whole link), or ``any``."""

    model_config = ConfigDict(extra="forbid")
    kind: str = Field(pattern=r"^(conflict|rejected|lookup|unreachable|queue|failed|"
                              r"capture_broken|no-applier|any)$")
    count: int = Field(default=1, ge=1)
    within_minutes: float = Field(default=10.0, gt=0)
    action: str = Field(pattern=r"^(pause|stop|log|webhook)$")
    url: str | None = None
    map: str | None = None

    @model_validator(mode="after")
    def _webhook_has_url(self) -> AlertRule:
        if self.action == "webhook" and not self.url:
            raise ValueError("an alert rule with action webhook needs `url`")
        return self

    @property
    def name(self) -> str:
        return f"{self.count} {self.kind} in {self.within_minutes:g} min -> {self.action}"


class LoggingConfig(BaseModel):
    """How `run` and `serve` (every command) log; ``--log-format``/``--log-level`` on the
    command line win over these."""

    model_config = ConfigDict(extra="forbid")
    #: text: human-readable lines; json: one JSON object per line
    format: str = Field(default="text", pattern=r"^(text|json)$")
    level: str = Field(default="info", pattern=r"^(?i:debug|info|warning|error)$")


class ConfigModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    environments: dict[str, EnvironmentConfig]
    link: LinkConfig
    state: str = DEFAULT_STATE_URL
    maps: list[str] = Field(default_factory=lambda: ["maps/*.yaml"])
    sync: SyncConfig = Field(default_factory=SyncConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    #: none: the in-process applier; ``nats``: readers publish, workers apply (JetStream)
    transport: TransportConfig = Field(default_factory=TransportConfig)
    alerts: list[AlertRule] = Field(default_factory=list)
    rules: RulesConfig | None = None
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _link_names_environments(self) -> ConfigModel:
        for side in ("left", "right"):
            env = getattr(self.link, side)
            if env not in self.environments:
                raise ValueError(f"link.{side} names environment {env!r}, which is not under "
                                 f"`environments` (have: {', '.join(self.environments)})")
        if self.link.left == self.link.right:
            raise ValueError("link.left and link.right must be two different environments")
        return self


@dataclass
class Config:
    path: Path
    model: ConfigModel
    maps: list[TableMap]
    #: map files that could not be read or parsed (``load_config(lenient=True)``): every
    #: problem in each, with file and line; their maps are not in ``maps``
    problems: list[Issue] = field(default_factory=list)

    @property
    def left(self) -> str:
        return self.model.link.left

    @property
    def right(self) -> str:
        return self.model.link.right

    @property
    def link_name(self) -> str:
        return self.model.link.name or f"{self.left}<->{self.right}"

    def url(self, env: str) -> str:
        return resolve_url(self.model.environments[env].url, self.path.parent,
                           f"environments.{env}.url", str(self.path))

    def modified(self, env: str) -> str | None:
        """The environment's `modified:` property (None: not named)."""
        return self.model.environments[env].modified

    def capture_mode(self, env: str) -> str:
        """The environment's `capture:` mode (``triggers`` or ``logical``)."""
        return self.model.environments[env].capture

    def schema(self, env: str) -> str | None:
        """The environment's `schema:` (None: the connection's default)."""
        return self.model.environments[env].schema_

    @property
    def state_url(self) -> str:
        return resolve_url(self.model.state, self.path.parent, "state", str(self.path))

    def map(self, name: str) -> TableMap:
        for m in self.maps:
            if m.name == name:
                return m
        raise ConfigError(f"no map named {name!r}",
                          hint=f"known maps: {', '.join(m.name for m in self.maps)}",
                          file=str(self.path), code="DW010")


_BRACED_VAR = re.compile(r"\$\{([^}]*)\}")


def resolve_url(url: str, base: Path, where: str = "url", file: str | None = None) -> str:
    """Make a relative SQLite file path absolute against ``base``; expand environment
    variables. A ``${VAR}`` whose variable is not set is a ConfigError naming it (left in
    the URL, it would surface later as a baffling connection error); a bare ``$word`` that
    is not a set variable stays as written (a password may hold a ``$``)."""
    unset = [m.group(1) for m in _BRACED_VAR.finditer(url) if m.group(1) not in os.environ]
    if unset:
        names = ", ".join(f"${{{v}}}" for v in dict.fromkeys(unset))
        raise ConfigError(
            f"{where} uses the environment variable(s) {names}, which "
            f"{'is' if len(unset) == 1 else 'are'} not set",
            hint=f"set {' and '.join(dict.fromkeys(unset))} in the environment dualwrite "
            "runs in (e.g. export " + unset[0] + "=...), or write the value into the config",
            file=file, code="DW007")
    return resolve_file_url(os.path.expandvars(url), base)


def _line_at(data: Any, loc: tuple[Any, ...]) -> int | None:
    """The line of the deepest key of ``loc`` found in the loaded YAML ``data``."""
    line = line_of(data)
    node = data
    for part in loc:
        inside = part in node if isinstance(node, dict) else (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node))
        if inside:
            line = line_of(node, part) or line
            node = node[part]
        else:
            break
    return line


def _pydantic_problems(exc: ValidationError, data: Any) -> list[tuple[str, int | None]]:
    """Every problem pydantic found, each with the line it is on."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append((f"{loc}: {msg}" if loc else msg, _line_at(data, tuple(err["loc"]))))
    return parts


def load_config(path: str | os.PathLike[str], *, lenient: bool = False) -> Config:
    """Read and check ``dualwrite.yaml`` and every map file it names.

    Raises ConfigError (file, line, what to do) for a missing file, bad YAML or a wrong key
    in the config. Map files are all read, and every problem in each is found: one problem
    is raised as it is, several as ValidationFailed listing them all; with ``lenient``
    (``dualwrite validate``) nothing is raised for them: they are in ``Config.problems`` and
    their maps are left out. Whether tables and columns exist is checked by validation.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {str(p)!r} does not exist",
                          hint="pass -c PATH, or create dualwrite.yaml (see docs/user-guide.md);"
                          " `dualwrite demo` writes a working example", code="DW004")
    data = load_yaml(p.read_text(encoding="utf-8"), file=str(p))
    if not isinstance(data, dict):
        raise ConfigError("the config must be a YAML mapping", file=str(p), code="DW004",
                          hint="start with `environments:`")
    try:
        model = ConfigModel.model_validate(data)
    except ValidationError as exc:
        problems = _pydantic_problems(exc, data)
        listed = "; ".join(f"{text} (line {line})" if line else text
                           for text, line in problems)
        raise ConfigError(f"invalid config: {listed}", file=str(p), code="DW004",
                          line=problems[0][1] if problems else None,
                          hint="see docs/user-guide.md for the config format") from None
    maps: list[TableMap] = []
    seen: set[Path] = set()
    errors: list[tuple[ConfigError, str | None]] = []
    for pattern in model.maps:
        full = pattern if os.path.isabs(pattern) else str(p.parent / pattern)
        matches = sorted(glob.glob(full))
        if not matches:
            errors.append((ConfigError(f"map pattern {pattern!r} matches no file", file=str(p),
                                       code="DW005",
                                       hint="correct `maps:` or create the map files"), None))
        for f in matches:
            fp = Path(f).resolve()
            if fp in seen:
                continue
            seen.add(fp)
            try:
                maps.append(load_map_file(fp))
            except MapSyntaxError as exc:
                name = _map_name(fp)
                errors += [(e, name) for e in exc.problems]
            except ConfigError as exc:  # not YAML, not readable
                errors.append((exc, None))
    if errors and not lenient:
        if len(errors) == 1:
            raise errors[0][0]
        raise ValidationFailed([e.as_issue() for e, _ in errors])
    return Config(p.resolve(), model, maps,
                  [dataclasses.replace(e.as_issue(), map=name) for e, name in errors])


def _map_name(path: Path) -> str | None:
    """The ``name:`` of a map file that does not parse as a map, if it has one."""
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), file=str(path))
    except (OSError, ConfigError):
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) and name else None


def load_map_file(path: Path) -> TableMap:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read map file: {exc}", file=str(path), code="DW005",
                          hint="check the path and permissions") from exc
    return parse_map_text(text, file=str(path))


def parse_map_text(text: str, *, file: str | None = None) -> TableMap:
    """A map from its YAML text (a map file's, or a version kept in the state store)."""
    m = parse_map_document(load_yaml(text, file=file), file=file)
    m.source = text
    return m


def dump_config(env_urls: dict[str, str], left: str, right: str, state: str,
                maps: list[str]) -> dict[str, Any]:
    """A config document (used by the demo to write its dualwrite.yaml)."""
    return {
        "environments": {k: {"url": v} for k, v in env_urls.items()},
        "link": {"left": left, "right": right},
        "state": state,
        "maps": maps,
    }


__all__ = ["Config", "load_config", "load_map_file"]
