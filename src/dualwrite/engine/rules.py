"""Business rules named by the config, loaded by ``dualwrite run``, ``dualwrite serve`` and
``dualwrite.open()``.

``dualwrite.yaml``::

    rules: {module: credit_rules}     # optional: path: a folder (default: this file's)

names a Python module; every function in it marked with :func:`before_write` is registered
as a before-write rule of its environment and table (see :class:`dualwrite.engine.live.Rules`)::

    import dualwrite

    @dualwrite.before_write("erp", "CustomersV3")
    def credit_cap(ctx):
        if (ctx.values.get("CREDITLIMIT") or 0) > 1_000_000:
            raise dualwrite.RowError("credit limit over 1,000,000", field="CREDITLIMIT")

The module is imported with ``path`` (relative to the config file; the config file's folder by
default) first on ``sys.path``. A module that cannot be imported, that marks no function, or
whose rule names an environment or a table the link does not have stops the command with a
ConfigError (DW006) that says which and why.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from dualwrite.engine.live import Rule, Rules
from dualwrite.errors import ConfigError, ConnectorError, DualwriteError
from dualwrite.model.maps import Side

if TYPE_CHECKING:
    from dualwrite.engine.link import Link

#: the attribute :func:`before_write` sets: [(environment, table), ...]
MARK = "__dualwrite_before_write__"
CODE = "DW006"


def before_write(environment: str, table: str) -> Callable[[Rule], Rule]:
    """Mark a function of a rules module as a rule run before every write through dualwrite
    to ``table`` of ``environment`` (several marks may be stacked on one function)."""
    def mark(rule: Rule) -> Rule:
        marks = [*getattr(rule, MARK, []), (environment, table)]
        setattr(rule, MARK, marks)
        return rule
    return mark


def load_rules(link: Link) -> list[str]:
    """Import the config's ``rules.module`` and register its marked functions on
    ``link.rules`` (a new :class:`Rules`, replacing what was there); returns
    ``"env.table: function"`` for each. Nothing to do without ``rules:`` in the config."""
    cfg = link.config.model.rules
    if cfg is None:
        return []
    where = link.config.path
    folder = str((where.parent / (cfg.path or ".")).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        module = importlib.import_module(cfg.module)
    except ModuleNotFoundError as exc:
        if exc.name and cfg.module.startswith(exc.name):
            raise ConfigError(
                f"rules.module {cfg.module!r} cannot be imported: no module named "
                f"{exc.name!r}", file=str(where), code=CODE,
                hint=f"put {cfg.module.replace('.', '/')}.py in {folder} (rules.path), or "
                "make it importable (PYTHONPATH, an installed package)") from exc
        raise _failed(cfg.module, exc, str(where)) from exc
    except Exception as exc:  # the module's own code failed: say where
        raise _failed(cfg.module, exc, str(where)) from exc
    rules = Rules()
    loaded: list[str] = []
    envs = {link.env_name(s): s for s in Side}
    tables: dict[Side, dict[str, str]] = {}
    for name, obj in vars(module).items():
        for env, table in getattr(obj, MARK, []) if callable(obj) else []:
            side = envs.get(env)
            if side is None:
                raise ConfigError(
                    f"rule {cfg.module}.{name} is for environment {env!r}, which this link "
                    "does not have", file=str(where), code=CODE,
                    hint=f"use {' or '.join(repr(e) for e in envs)}")
            if side not in tables:
                tables[side] = {t.casefold(): t for t in link.connectors[side].tables()}
            schema, dot, _ = table.partition(".")
            connector = link.connectors[side]
            if dot and table.casefold() not in tables[side]:
                # a table in another schema (fin.currency): that schema's tables, qualified
                with contextlib.suppress(ConnectorError):
                    tables[side].update({t.casefold(): t for t in
                                         connector.schema_tables(schema)})
            if table.casefold() not in tables[side]:
                raise ConfigError(
                    f"rule {cfg.module}.{name} is for table {table!r}, which environment "
                    f"{env!r} does not have", file=str(where), code=CODE,
                    hint="name a table of that environment (case does not matter)")
            table = tables[side][table.casefold()]
            rules.register(env, table, obj)
            loaded.append(f"{env}.{table}: {name}")
    if not loaded:
        raise ConfigError(
            f"rules.module {cfg.module!r} marks no function as a rule", file=str(where),
            code=CODE, hint="mark each rule with @dualwrite.before_write(environment, table)")
    link.rules = rules
    return loaded


def _failed(module: str, exc: BaseException, where: str) -> ConfigError:
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "importlib" not in f.filename]
    at = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    detail = exc.message if isinstance(exc, DualwriteError) else str(exc)
    return ConfigError(f"rules.module {module!r} failed while it was imported{at}: "
                       f"{type(exc).__name__}: {detail}", file=where, code=CODE,
                       hint="fix the module; it is imported once, when the command starts")


__all__ = ["before_write", "load_rules"]
