"""The layout shows the architecture: imports flow api/cli -> engine -> connectors -> model."""

from __future__ import annotations

import ast
from pathlib import Path

import dualwrite

SRC = Path(dualwrite.__file__).resolve().parent

#: package -> the dualwrite packages it may import (errors is shared by all)
ALLOWED = {
    "model": {"model", "errors"},
    "connectors": {"connectors", "model", "errors"},
    "engine": {"engine", "connectors", "model", "errors"},
    # the connector compliance suite tests connectors alone, as a new backend's author runs it
    "testing": {"testing", "connectors", "model", "errors"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for n in names:
            parts = n.split(".")
            if parts[0] == "dualwrite" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_imports_flow_one_way() -> None:
    problems = []
    for package, allowed in ALLOWED.items():
        for path in sorted((SRC / package).rglob("*.py")):
            bad = _imports(path) - allowed
            if bad:
                problems.append(f"{path.relative_to(SRC)} imports {sorted(bad)}")
    assert not problems, "\n".join(problems)


def test_model_does_no_io() -> None:
    for path in sorted((SRC / "model").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for forbidden in ("import sqlalchemy", "open(", "read_text(", "import socket"):
            assert forbidden not in text, f"{path.name} uses {forbidden!r}: model/ is pure"


def test_public_api_is_reexported() -> None:
    for name in dualwrite.__all__:
        assert hasattr(dualwrite, name), name
    assert dualwrite.open is dualwrite.engine.link.open_link
    exported = set(dualwrite.__all__)
    import dualwrite.errors as errors_module

    defined = {n for n, v in vars(errors_module).items()
               if isinstance(v, type) and issubclass(v, Exception)
               and v.__module__ == errors_module.__name__}
    assert defined <= exported, defined - exported  # every error is public
    for n in defined:
        assert issubclass(getattr(errors_module, n), dualwrite.DualwriteError)


#: the value conversions defined once, in model/codec.py (the rest of the code calls them)
_CODEC = ("decode_json", "from_log", "text_of", "tag_value", "untag_value", "tag", "untag",
          "utc_text", "parse_instant", "duration_iso", "duration_text", "micros",
          "from_base64", "base64url_text", "decimal_of_float", "parse_duration",
          "duration_value", "parse_money", "parse_time")


def test_the_new_modules_are_under_the_import_rule() -> None:
    """The value-conversion module and the row builder sit where the import rule above
    checks them: model/codec.py imports only model/ (pure), engine/rows.py no api/ or cli."""
    for module, package in (("model/codec.py", "model"), ("engine/rows.py", "engine")):
        path = SRC / module
        assert path.is_file(), module
        assert _imports(path) <= ALLOWED[package], (module, _imports(path))


def test_value_conversions_are_defined_once_in_the_model_s_codec() -> None:
    """None of model/codec.py's conversions is defined a second time elsewhere."""
    twice = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "model" / "codec.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        twice += [f"{path.relative_to(SRC)} defines {node.name}" for node in tree.body
                  if isinstance(node, ast.FunctionDef) and node.name in _CODEC]
    assert not twice, "\n".join(twice)


#: what names a database or its driver: the engine switches on capabilities and connector
#: methods, never on these (see dualwrite.connectors.changelog)
DATABASE_WORDS = ("postgres", "mariadb", "mysql", "sqlite", "psycopg", "pymysql")


def _database_mentions(path: Path) -> list[str]:
    """Where a file's code names a database: identifiers, imported modules, and string
    constants that are code (no whitespace: a dialect name, a URL prefix), not docstrings,
    comments or messages to people."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    found = []
    for node in ast.walk(tree):
        texts: list[str] = []
        if isinstance(node, ast.Name):
            texts = [node.id]
        elif isinstance(node, ast.Attribute):
            texts = [node.attr]
        elif isinstance(node, ast.alias):
            texts = [node.name, node.asname or ""]
        elif isinstance(node, ast.ImportFrom):
            texts = [node.module or ""]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            texts = [node.name]
        elif isinstance(node, ast.arg):
            texts = [node.arg]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                id(node) not in docstrings and not any(ch.isspace() for ch in node.value):
            texts = [node.value]
        for text in texts:
            if any(w in text.lower() for w in DATABASE_WORDS):
                found.append(f"{path.relative_to(SRC)}:{getattr(node, 'lineno', '?')}: {text}")
    return found


def test_the_engine_names_no_database() -> None:
    """No database-specific branch in the engine: what differs by database is a connector's
    (its module, its Capabilities, its change log)."""
    found = [m for path in sorted((SRC / "engine").rglob("*.py"))
             for m in _database_mentions(path)]
    assert not found, "\n".join(found)


#: shared modules of connectors/ that name databases on purpose, and why
_NAMES_DATABASES = {
    "__init__.py": "connect: the one table of URL schemes and which package serves each",
    "stores.py": "the state store's own database facts (a SQLite file or a server)",
    "sqlfilter.py": "SQLAlchemy compile hooks, keyed by SQLAlchemy's dialect names",
}


def test_a_database_is_one_folder() -> None:
    """Everything that is one database's is in its package under connectors/: the shared
    modules (the SQL machinery, the change log, the delta journal) name no database in code
    and so never branch on one, apart from the few listed above."""
    connectors = SRC / "connectors"
    shared = sorted(p for p in connectors.glob("*.py") if p.name not in _NAMES_DATABASES)
    assert {"sql.py", "capture.py", "changelog.py", "delta.py", "base.py"} <= \
        {p.name for p in shared}
    found = [m for path in shared for m in _database_mentions(path)]
    assert not found, "\n".join(found)
    for database in ("postgresql", "mariadb", "sqlite", "memory", "odata"):
        package = connectors / database
        assert (package / "__init__.py").is_file() and (package / "connector.py").is_file(), \
            database


def test_the_change_log_seam_has_no_sql() -> None:
    """The change-log protocol is implementable without SQL: it imports no SQL library."""
    text = (SRC / "connectors" / "changelog.py").read_text(encoding="utf-8")
    assert "sqlalchemy" not in text and "import sa" not in text


def test_the_apply_core_does_no_io() -> None:
    """Where conflicts are decided (dualwrite.engine.apply.core): plain data in, decisions
    out; no SQL, no connections, no clock or threads of its own."""
    path = SRC / "engine" / "apply" / "core.py"
    text = path.read_text(encoding="utf-8")
    for forbidden in ("sqlalchemy", "import threading", "import time", "import socket",
                      "open(", "engine.state", "connectors.capture", "connectors.memory"):
        assert forbidden not in text, f"core.py uses {forbidden!r}: the apply core is pure"
    assert _imports(path) <= {"connectors", "model", "errors", "engine"}


def _runtime_imports(path: Path) -> set[str]:
    """The modules ``path`` imports when it runs: an ``if TYPE_CHECKING:`` block left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
               for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_the_applier_is_given_its_collaborators_not_the_link() -> None:
    """The applier (engine/capture.py and engine/apply/) gets its maps, connectors, state,
    settings, rules and alerts passed in (``Applier.for_link`` takes them from a link): it
    neither imports the link at run time nor keeps one to reach into."""
    paths = [SRC / "engine" / "capture.py", *sorted((SRC / "engine" / "apply").glob("*.py"))]
    for path in paths:
        name = path.relative_to(SRC)
        assert "dualwrite.engine.link" not in _runtime_imports(path), \
            f"{name} imports the link at run time"
        assert "self.link" not in path.read_text(encoding="utf-8"), \
            f"{name} reaches into a link (self.link): pass what it needs instead"
