"""The type matrix (issue 17): about twenty edge values of every kind, on PostgreSQL <->
PostgreSQL, PostgreSQL <-> MariaDB and SQLite <-> SQLite, through validate, initial sync,
verify, capture both ways (inserts and updates), the Python API and OData reads. Every cell
asserts that each value arrives exactly (or as the stated conversion says) or is refused
loudly at its row, naming the column and the reason, while the other rows and maps go on.

The data is in ``type_matrix_data.py``. One run per pair of databases does every path on the
same tables (one table and one map per pair of column types); each cell of the matrix is a
test of its own, so that a cell waiting for another branch can be marked as such.

``PYTHONPATH=tests python tests/engine/test_type_matrix.py`` writes the table of type pairs
into docs/maps.md (a test checks that the docs hold it as it is).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import traceback
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from type_matrix_data import PAIRS, UNSET, Case, Refused, V

from capture_fixtures import drain, link_config
from dualwrite.engine.link import Link
from dualwrite.errors import DualwriteError
from dualwrite.model.conversion import Options, Verdict, plan
from dualwrite.model.maps import Side
from dualwrite.model.values import JsonText

from conftest import Backend, _make

PATHS = ["validate", "initial", "verify", "capture-forth", "capture-update", "capture-back",
         "api", "odata"]
#: first id of each path's rows
BASE = {"initial": 1, "capture-forth": 1000, "capture-update": 2000, "capture-back": 3000,
        "api": 4000}
Problems = dict[tuple[str, str], list[str]]


# -- comparing exactly ------------------------------------------------------------------------

def identical(a: Any, b: Any) -> bool:
    """Whether ``b`` is exactly ``a``: the sign of zero, NaN, a timestamp's zone, a time's
    offset count; JSON documents compare by meaning (jsonb normalises its text)."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and isinstance(b, float):
        if a != a or b != b:
            return a != a and b != b
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        if a.is_nan() or b.is_nan():
            return a.is_nan() and b.is_nan()
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, JsonText) or isinstance(b, JsonText):
        return isinstance(a, str) and isinstance(b, str) and JsonText(a) == JsonText(b)
    if isinstance(a, dt.datetime) and isinstance(b, dt.datetime):
        return a == b and (a.tzinfo is None) == (b.tzinfo is None)
    if isinstance(a, dt.time) and isinstance(b, dt.time):
        return a == b and a.utcoffset() == b.utcoffset()
    return type(a) is type(b) and bool(a == b)


# -- one run per pair ----------------------------------------------------------------------------

def _table(case: Case) -> str:
    return f"tm_{case.name}"


def _map(case: Case) -> str:
    line = f"val {case.line} val" + (f": {case.options}" if case.options else "")
    return (f"name: {_table(case)}\nleft: {_table(case)}\nright: {_table(case)}\n"
            f"key: {{left: [id], right: [id]}}\nfields:\n  - id = id\n  - {line}\n")


def _create(b: Backend, case: Case, sql_type: str) -> None:
    t = _table(case)
    q = "`" if b.kind == "mariadb" else '"'
    b.sql(f"DROP TABLE IF EXISTS {q}{t}{q}")
    b.sql(f"CREATE TABLE {q}{t}{q} (id INTEGER PRIMARY KEY, val {sql_type})")


def _literal(b: Backend, sql: str) -> str:
    """The data's literals are standard SQL: MariaDB reads a backslash as an escape."""
    return sql.replace("\\", "\\\\") if b.kind == "mariadb" else sql


class App:
    """The application's own session on one database: each statement is its own transaction
    (autocommit), and is captured; one connection for all of them."""

    def __init__(self, b: Backend) -> None:
        self.b = b
        self.conn = b.app().connect().execution_options(isolation_level="AUTOCOMMIT")

    def sql(self, statement: str) -> None:
        import sqlalchemy as sa

        self.conn.execute(sa.text(statement))

    def insert(self, case: Case, key: int, sql: str) -> None:
        self.sql(f"INSERT INTO {_table(case)} (id, val) VALUES ({key}, {_literal(self.b, sql)})")

    def close(self) -> None:
        self.conn.close()


class Run:
    """Everything one pair's run found, cell by cell."""

    def __init__(self, pair_id: str, tmp: Path) -> None:
        self.pair_id = pair_id
        lk, rk, self.cases = PAIRS[pair_id]
        self.problems: Problems = defaultdict(list)
        self.left = _make(lk, "dualwrite_test_a", tmp)
        self.right = _make(rk, "dualwrite_test_b" if rk == lk else "dualwrite_test_a", tmp)
        self.tmp = tmp

    def say(self, case: Case, path: str, text: str) -> None:
        self.problems[(case.name, path)].append(text)

    def every(self, path: str, cases: list[Case], text: str) -> None:
        for c in cases:
            self.say(c, path, text)

    def close(self) -> None:
        """Drop the matrix's tables (other tests reflect these databases, and SQLAlchemy
        warns about a type it does not know, such as MariaDB's INET6) and disconnect."""
        for app in getattr(self, "apps", ()):
            app.close()
        for b in (self.left, self.right):
            q = "`" if b.kind == "mariadb" else '"'
            for c in self.cases:
                with contextlib.suppress(Exception):
                    b.sql(f"DROP TABLE IF EXISTS {q}{_table(c)}{q}")
            b.connector.close()

    # -- the run -----------------------------------------------------------------------------
    def go(self) -> Problems:
        runs = [c for c in self.cases if c.runs]
        for b in (self.left, self.right):
            b.connector.clear_link()
            for own in ("dualwrite_changes", "dualwrite_applied", "dualwrite_origin"):
                b.sql(f"DROP TABLE IF EXISTS {own}")
        for c in self.cases:
            _create(self.left, c, c.left)
            _create(self.right, c, c.right)
        self.apps = (App(self.left), App(self.right))
        for c in runs:
            for i, v in enumerate(c.forth):
                self.apps[0].insert(c, BASE["initial"] + i, v.sql)
        for b in (self.left, self.right):
            b.connector.forget_schema()
        self.validate()
        config = link_config(self.tmp / "run", self.left, self.right,
                             {_table(c): _map(c) for c in runs})
        with Link.open(config) as link:
            self.step("initial", runs, lambda: self.initial(link, runs))
            self.step("verify", runs, lambda: self.verify(link, runs))
            self.step("capture-forth", runs, lambda: self.capture(link, runs))
            self.step("api", runs, lambda: self.api(link, runs))
            self.step("odata", runs, lambda: self.odata(link, runs))
        return self.problems

    def step(self, path: str, cases: list[Case], fn: Any) -> None:
        try:
            fn()
        except Exception:  # the whole path failed: every cell of it says why
            text = traceback.format_exc(limit=8)
            paths = ["capture-forth", "capture-update", "capture-back"] \
                if path == "capture-forth" else [path]
            for p in paths:
                self.every(p, cases, f"the {path} step failed:\n{text}")

    # -- validate ------------------------------------------------------------------------------
    def validate(self) -> None:
        config = link_config(self.tmp / "all", self.left, self.right,
                             {_table(c): _map(c) for c in self.cases})
        with Link.open(config) as link:
            _, issues = link.validate()
        found: dict[tuple[str, str], set[str]] = defaultdict(set)
        for i in issues:
            direction = "forth" if "(right):" in i.message else "back" \
                if "(left):" in i.message else "?"
            found[(i.map or "", direction)].add(i.code)
            if i.map and i.map.startswith("tm_") and "(PostgreSQL)" not in i.message and \
                    "(MariaDB)" not in i.message and "(SQLite)" not in i.message:
                self.say(self._case(i.map), "validate", f"{i.code} names no real type: {i}")
        for c in self.cases:
            for direction, want in zip(("forth", "back"), c.codes, strict=True):
                got = found.get((_table(c), direction), set())
                if got != set(want):
                    mine = [str(i) for i in issues if i.map == _table(c)]
                    self.say(c, "validate", f"{direction}: codes {sorted(got)}, expected "
                             f"{sorted(want)}; issues: {mine}")

    def _case(self, map_name: str) -> Case:
        return next(c for c in self.cases if _table(c) == map_name)

    # -- reading and checking -----------------------------------------------------------------
    @staticmethod
    def rows(b: Backend, case: Case) -> dict[int, Any]:
        return {int(r["id"]): r["val"] for r in b.rows(_table(case), ["id"], ["id", "val"])}

    def check(self, link: Link, case: Case, path: str, values: list[V], base: int,
              target: Backend, *, source: Backend | None = None,
              before: Any = UNSET) -> None:
        """Each value's row on ``target`` holds what must arrive, or is absent (``before``
        held instead, for updates) with an inbox entry naming the column and the reason."""
        got = self.rows(target, case)
        inbox = {tuple(e.key): e.reason for e in link.state.errors(_table(case))}
        src = self.rows(source, case) if source is not None else {}
        for i, v in enumerate(values):
            key = base + i
            if source is not None and key in src and not identical(v.py, src[key]):
                self.say(case, path, f"{v.sql}: the source reads {src[key]!r}, not {v.py!r}")
            want = v.arrives()
            if isinstance(want, Refused):
                held = before if before is not UNSET else None
                if before is UNSET and key in got:
                    self.say(case, path, f"{v.sql}: arrived as {got[key]!r}; it must be "
                             f"refused ({want.reason})")
                elif before is not UNSET and not identical(held, got.get(key)):
                    self.say(case, path, f"{v.sql}: the target holds {got.get(key)!r}, not "
                             f"{held!r} (the refused update must leave it)")
                reason = inbox.get((key,))
                if reason is None:
                    self.say(case, path, f"{v.sql}: refused without an inbox entry "
                             f"(inbox keys: {sorted(inbox)[:5]})")
                elif want.reason not in reason or "'val'" not in reason:
                    self.say(case, path, f"{v.sql}: the inbox says {reason!r}; it must name "
                             f"the column 'val' and say {want.reason!r}")
                continue
            if key not in got:
                self.say(case, path, f"{v.sql}: did not arrive (inbox: {inbox.get((key,))!r})")
            elif not identical(want, got[key]):
                self.say(case, path, f"{v.sql}: arrived as {got[key]!r}, not {want!r}")

    # -- initial sync and verify -------------------------------------------------------------
    def initial(self, link: Link, cases: list[Case]) -> None:
        link.start_maps()
        for c in cases:
            self.check(link, c, "initial", c.forth, BASE["initial"], self.right,
                       source=self.left)

    def verify(self, link: Link, cases: list[Case]) -> None:
        results = {r.map: r for r in link.verify()}
        for c in cases:
            r = results[_table(c)]
            refused = {BASE["initial"] + i for i, v in enumerate(c.forth)
                       if isinstance(v.arrives(), Refused)}
            for d in r.details:
                if d.kind == "missing-right" and tuple(d.key) in {(k,) for k in refused}:
                    continue
                self.say(c, "verify", f"verify reports {d.as_dict()}")
            if r.agreeing != len(c.forth) - len(refused):
                self.say(c, "verify", f"{r.agreeing} rows agree, expected "
                         f"{len(c.forth) - len(refused)}")

    # -- capture -------------------------------------------------------------------------------
    def capture(self, link: Link, cases: list[Case]) -> None:
        """Per case: the application's own writes on both sides (an insert per value, an
        update to each value of a row inserted with a plain one, and inserts on the right),
        each in its own transaction; then the applier drains both logs. A case whose changes
        stop the applier has its log emptied, so that the next case is judged on its own."""
        paths = ("capture-forth", "capture-update", "capture-back")
        for c in cases:
            plain = next(v for v in c.forth if v.py is not None and
                         not isinstance(v.arrives(), Refused))
            for path, fn in zip(paths, (self._forth, self._update, self._back), strict=True):
                try:
                    fn(c, plain)
                except Exception as exc:  # the application's own write failed
                    self.say(c, path, f"the application's write failed: {exc}")
            try:
                drain(link.applier(), timeout=120)
            except Exception:
                text = traceback.format_exc(limit=6)
                for path in paths:
                    self.say(c, path, f"applying this case's changes stopped the applier:\n"
                             f"{text}")
                for b in (self.left, self.right):
                    b.sql(f"DELETE FROM dualwrite_changes WHERE map = '{_table(c)}'")
                continue
            self.check(link, c, "capture-forth", c.forth, BASE["capture-forth"], self.right)
            self.check(link, c, "capture-update", c.forth, BASE["capture-update"], self.right,
                       before=plain.arrives())
            self.check(link, c, "capture-back", c.back_values, BASE["capture-back"], self.left)

    def _forth(self, c: Case, _plain: V) -> None:
        for i, v in enumerate(c.forth):
            self.apps[0].insert(c, BASE["capture-forth"] + i, v.sql)

    def _update(self, c: Case, plain: V) -> None:
        for i, v in enumerate(c.forth):
            key = BASE["capture-update"] + i
            self.apps[0].insert(c, key, plain.sql)
            self.apps[0].sql(f"UPDATE {_table(c)} SET val = {_literal(self.left, v.sql)} "
                             f"WHERE id = {key}")

    def _back(self, c: Case, _plain: V) -> None:
        for i, v in enumerate(c.back_values):
            self.apps[1].insert(c, BASE["capture-back"] + i, v.sql)

    # -- the Python API ------------------------------------------------------------------------
    def api(self, link: Link, cases: list[Case]) -> None:
        env = link.env_name(Side.LEFT)
        for c in cases:
            for i, v in enumerate(c.forth):
                key = BASE["api"] + i
                try:
                    with link.transaction() as tx:
                        tx.create(env, _table(c), {"id": key, "val": v.py})
                except DualwriteError as exc:
                    want = v.arrives()
                    if not isinstance(want, Refused):
                        self.say(c, "api", f"{v.py!r}: the write failed: {exc}")
                    elif want.reason not in str(exc) or "'val'" not in str(exc):
                        self.say(c, "api", f"{v.py!r}: refused with {exc}; it must name the "
                                 f"column 'val' and say {want.reason!r}")
            got_l, got_r = self.rows(self.left, c), self.rows(self.right, c)
            for i, v in enumerate(c.forth):
                key = BASE["api"] + i
                want = v.arrives()
                if isinstance(want, Refused):
                    if key in got_l or key in got_r:
                        self.say(c, "api", f"{v.py!r}: refused, yet written on a side")
                    continue
                if key not in got_l or not identical(v.py, got_l[key]):
                    self.say(c, "api", f"{v.py!r}: the left holds {got_l.get(key)!r}")
                if key not in got_r or not identical(want, got_r[key]):
                    self.say(c, "api", f"{v.py!r}: the right holds {got_r.get(key)!r}, not "
                             f"{want!r}")

    # -- OData ---------------------------------------------------------------------------------
    def odata(self, link: Link, cases: list[Case]) -> None:
        from starlette.testclient import TestClient

        from dualwrite.api.server import create_server_app
        from dualwrite.engine.security import create_token

        env = link.env_name(Side.LEFT)
        token = create_token(link.state, "type-matrix")
        auth = {"Authorization": f"Bearer {token}"}
        with TestClient(create_server_app(link)) as client:
            meta = client.get(f"/odata/{env}/$metadata?$format=json", headers=auth)
            assert meta.status_code == 200, meta.text
            schema = meta.json()[f"dualwrite.{env}"]
            for c in cases:
                prop = schema[_table(c)]["val"]
                edm = prop.get("$Type", "Edm.String")
                if prop.get("$Collection"):
                    edm = f"Collection({edm})"
                if c.edm and edm != c.edm:
                    self.say(c, "odata", f"$metadata declares {edm}, not {c.edm}")
                r = client.get(f"/odata/{env}/{_table(c)}?$orderby=id&$filter=id lt 1000",
                               headers=auth)
                if r.status_code != 200:
                    self.say(c, "odata", f"GET answers {r.status_code}: {r.text[:300]}")
                    continue
                body = {e["id"]: e["val"]
                        for e in json.loads(r.text, parse_float=Decimal)["value"]}
                for i, v in enumerate(c.forth):
                    key = BASE["initial"] + i
                    if v.odata is not UNSET and not _same_json(body.get(key), v.odata):
                        self.say(c, "odata", f"{v.sql}: OData renders {body.get(key)!r}, not "
                                 f"{v.odata!r}")
                    if isinstance(body.get(key), str) and ("datetime." in body[key] or
                                                          "Decimal(" in body[key]):
                        self.say(c, "odata", f"{v.sql}: rendered as Python text {body[key]!r}")


def _same_json(got: Any, want: Any) -> bool:
    """JSON values alike, numbers by value (the body is parsed with exact decimals)."""
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(_same_json(a, b) for a, b in
                                             zip(got, want, strict=True))
    numbers = (int, float, Decimal)
    if isinstance(got, numbers) and isinstance(want, numbers) and not isinstance(got, bool) \
            and not isinstance(want, bool):
        return Decimal(str(got)) == Decimal(str(want))
    return type(got) is type(want) and bool(got == want)


_RESULTS: dict[str, Problems] = {}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Problems]]:
    yield _RESULTS
    _RESULTS.clear()


def _results(matrix: dict[str, Problems], pair_id: str,
             tmp_path_factory: pytest.TempPathFactory) -> Problems:
    if pair_id not in matrix:
        run = Run(pair_id, tmp_path_factory.mktemp(pair_id))
        try:
            matrix[pair_id] = run.go()
        except Exception:
            # a run that stopped judges no cell: every one of them fails with why
            matrix[pair_id] = {_FAILED: [f"the run of {pair_id} failed:\n"
                                         f"{traceback.format_exc()}"]}
        finally:
            run.close()
    return matrix[pair_id]


_FAILED = ("*", "*")


def _cells() -> Iterator[Any]:
    for pair_id, (_l, _r, cases) in PAIRS.items():
        for c in cases:
            for path in PATHS if c.runs else ["validate"]:
                marks = [pytest.mark.xfail(strict=True, reason=c.xfail[path])] \
                    if path in c.xfail else []
                yield pytest.param(pair_id, c.name, path, marks=marks,
                                   id=f"{pair_id}-{c.name}-{path}")


@pytest.mark.parametrize("pair_id, case, path", list(_cells()))
def test_cell(matrix: dict[str, Problems], tmp_path_factory: pytest.TempPathFactory,
              pair_id: str, case: str, path: str) -> None:
    results = _results(matrix, pair_id, tmp_path_factory)
    problems = results.get(_FAILED) or results.get((case, path), [])
    assert not problems, "\n".join(problems)


# -- the table of type pairs in docs/maps.md ------------------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "maps.md"
BEGIN, END = "<!-- type-pairs:begin -->", "<!-- type-pairs:end -->"


def type_table() -> str:
    """The table of type pairs: each pair of the matrix, both directions, its verdict, what
    is refused and what is converted (derived from the connectors' facets as the matrix
    reflects them, see ``facets_of``)."""
    lines = ["| databases | left type | right type | left → right | right → left |",
             "|---|---|---|---|---|"]
    for pair_id, (lk, rk, cases) in PAIRS.items():
        names = {"postgresql": "PostgreSQL", "mariadb": "MariaDB", "sqlite": "SQLite"}
        label = f"{names[lk]} ↔ {names[rk]}"
        for c in cases:
            if c.name.endswith("_forth") or (c.name == "interval_text" and pair_id != \
                    "postgresql-mariadb"):
                continue
            lc, rc = facets_of(lk, c.left), facets_of(rk, c.right)
            opts = Options(specials_to_null="specials: null" in c.options,
                           utc="convert: utc" in c.options)
            cells = [_verdict(plan(lc, rc, opts)), _verdict(plan(rc, lc, opts))]
            opt = f" `{c.options}`" if c.options else ""
            lines.append(f"| {label} | {c.left} | {c.right}{opt} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def _verdict(p: Any) -> str:
    if p.verdict is Verdict.IMPOSSIBLE:
        return f"refused by validate ({'needs `' + p.needs + '`' if p.needs else 'DW106'})"
    parts = [p.verdict.value]
    if p.refused:
        parts.append("refused at the row: " + "; ".join(p.refused))
    if p.nulled:
        parts.append("as NULL: " + ", ".join(p.nulled))
    if p.notes:
        parts.append("; ".join(p.notes))
    return " — ".join(parts).replace("|", "\\|")


def facets_of(kind: str, sql_type: str) -> Any:
    """The Column the connector reflects for ``sql_type``, taken from the reflections the
    matrix recorded (see ``reflected``), so that the table is the databases' own."""
    return _REFLECTED[(kind, sql_type)]


def _reflect_all() -> dict[tuple[str, str], Any]:
    """Reflect every type of the matrix on the real databases, once."""
    import tempfile

    out: dict[tuple[str, str], Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        made: dict[str, Backend] = {}
        for lk, rk, cases in PAIRS.values():
            for kind, types in ((lk, [c.left for c in cases]), (rk, [c.right for c in cases])):
                b = made.get(kind) or made.setdefault(kind, _make(kind, "dualwrite_test_a",
                                                                  Path(tmp)))
                for t in types:
                    if (kind, t) in out:
                        continue
                    q = "`" if kind == "mariadb" else '"'
                    b.sql(f"DROP TABLE IF EXISTS {q}tm_reflect{q}")
                    b.sql(f"CREATE TABLE {q}tm_reflect{q} (id INTEGER PRIMARY KEY, v {t})")
                    b.connector.forget_schema()
                    out[(kind, t)] = b.connector.describe("tm_reflect").columns["v"]
                    b.sql(f"DROP TABLE {q}tm_reflect{q}")
        for b in made.values():
            b.connector.close()
    return out


_REFLECTED: dict[tuple[str, str], Any] = {}


def test_docs_show_the_type_pair_table() -> None:
    _REFLECTED.update(_reflect_all())
    text = DOC.read_text()
    assert BEGIN in text and END in text, f"docs/maps.md lacks the {BEGIN} ... {END} section"
    shown = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert shown == type_table(), "docs/maps.md's type-pair table is out of date: regenerate " \
        "it with `python tests/engine/test_type_matrix.py`"


if __name__ == "__main__":
    _REFLECTED.update(_reflect_all())
    table = type_table()
    text = DOC.read_text()
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        DOC.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
        print(f"wrote the type-pair table into {DOC}")
    else:
        print(table)
