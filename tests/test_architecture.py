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
