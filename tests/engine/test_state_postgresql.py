"""The state store on PostgreSQL (`state: postgresql+psycopg://…`), for every feature: a
PostgreSQL ↔ MariaDB link runs its whole life on it — initial sync (checkpoints, progress),
map versions and a reload, captured changes, a manual conflict parked with the changes behind
it and resolved, live transactions (decisions, audit), tokens and refusals, events, alerts,
processes — and what it keeps is in PostgreSQL's tables. And the state store's schema
version: recorded when made, checked at every start, upgraded by `dualwrite state upgrade`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from capture_fixtures import ITEMS_MAP, Items, drain, make_items
from dualwrite.cli import main
from dualwrite.engine.capture import resolve_conflict
from dualwrite.engine.security import authenticate, create_token
from dualwrite.engine.state import SCHEMA_VERSION, AuditEntry, StateStore
from dualwrite.errors import StateStoreOutdated
from dualwrite.model.maps import Side

from conftest import BackendFactory, fresh_state_url

WITH_NOTE = ITEMS_MAP + "  - note = note\n"


def names(it: Items, side: str) -> dict[int, str]:
    return {k: v[0] for k, v in it.rows(side).items()}


def test_a_link_lives_its_whole_life_on_a_postgresql_state_store(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    url = fresh_state_url("postgresql", tmp_path)
    it = make_items(make_backend, tmp_path, "postgresql", "mariadb", policy="manual",
                    extra=lambda cfg: cfg.update(state=url))
    it.left.insert("items", [{"id": i, "name": f"A{i}", "qty": i} for i in (1, 2, 3)])
    with it.link() as link:
        assert link.state.engine.dialect.name == "postgresql"
        # initial sync: its checkpoints and progress, the map's state and version
        link.start_maps()
        assert names(it, "right") == {1: "A1", 2: "A2", 3: "A3"}
        [row] = link.status()
        assert row["state"] == "running" and row["version"]
        # captured changes; a conflict parks the key with the changes behind it
        applier = link.applier()
        try:
            for n in (1, 2):
                it.left.app_sql(f"UPDATE items SET name = 'L{n}' WHERE id = 1")
                it.right.app_sql(f"UPDATE items SET name = 'R{n}' WHERE id = 1")
            it.left.app_sql("UPDATE items SET name = 'L-two' WHERE id = 2")
            drain(applier)
            assert names(it, "right")[2] == "L-two"
            [entry] = link.state.errors()
            assert entry.operation == "conflict" and link.state.parked_count()
            [conflict] = link.state.conflicts("items")
            assert conflict["winner"] == "manual"
            [row] = link.status()
            assert row["conflicts"] == 1 and row["errors"] == 1
            resolve_conflict(link, entry.id, Side.RIGHT)
            drain(applier)
            assert names(it, "left")[1] == names(it, "right")[1] == "R2"
            assert link.state.errors() == [] and not link.state.parked_count()
            # a map edited and reloaded: a new version, applied from then on
            before = link.status()[0]["version"]
            (it.config.parent / "maps" / "items.yaml").write_text(
                WITH_NOTE.format(policy="manual"))
            [done] = link.reload_maps()
            assert done["reloaded"] and done["from"] == before
            it.left.app_sql("UPDATE items SET note = 'noted' WHERE id = 3")
            applier.maps(refresh=True)
            drain(applier)
            assert it.right.sql("SELECT note FROM items WHERE id = 3") == [("noted",)]
        finally:
            applier.close()
        # a live transaction: its decision and audit rows
        with link.transaction(principal="alice") as tx:
            tx.create("erp", "items", {"id": 9, "name": "live", "qty": 9})
        assert names(it, "right")[9] == "live"
        # (its completion is written with the next decision: the decision is what counts)
        assert all(link.state.decision(x) == "commit"
                   for x in link.state.incomplete_decisions())
        assert any(a["principal"] == "alice" for a in link.state.audit())
        # tokens and refusals
        token = create_token(link.state, "bob", role="reader")
        who = authenticate(link.state, token, max_age=0)
        assert who is not None and who.name == "bob" and who.role == "reader"
        link.state.add_refusal("bob", "POST /odata/erp/items", "writer", "a reader")
        assert link.state.refusals()[0]["principal"] == "bob"
        # events and the applier's activity
        assert link.state.count_events("items", ["conflict"], time.time() - 3600) >= 1
        assert all(v.ok for v in link.verify())
    # what it keeps is PostgreSQL's: read it there, as another process would
    raw = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with raw.connect() as conn:
            def count(table: str) -> int:
                return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one())

            assert count("map_versions") >= 2 and count("map_status") == 1
            assert count("coordinator_log") >= 1 and count("audit_log") >= 1
            assert count("tokens") == 1 and count("refusals") == 1
            assert count("conflicts") == 1 and count("events") >= 1
            assert count("error_inbox") == 1  # the resolved entry, kept as resolved
            version = conn.execute(sa.text(
                "SELECT value FROM state_meta WHERE key = 'schema_version'")).scalar_one()
            assert int(version) == SCHEMA_VERSION
    finally:
        raw.dispose()


def _make_old(url: str) -> None:
    """Make the store look as dualwrite left it before schema versions: no version
    recorded, a table and a column added since missing."""
    raw = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with raw.begin() as conn:
            conn.exec_driver_sql("DELETE FROM state_meta")
            conn.exec_driver_sql("DROP TABLE applier_leases")
            conn.exec_driver_sql("ALTER TABLE processes DROP COLUMN note")
    finally:
        raw.dispose()


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_the_schema_version_is_checked_at_start_and_upgraded_by_the_command(
        store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = fresh_state_url(store, tmp_path)
    state = StateStore(url)
    assert state.schema_version() == SCHEMA_VERSION and state.upgraded is None
    state.claim_link("l", "id-1", "erp", "crm")
    state.close()
    _make_old(url)
    # an older store is refused, with what to do
    with pytest.raises(StateStoreOutdated) as refused:
        StateStore(url)
    assert "schema version 1" in str(refused.value) and refused.value.code == "DW008"
    assert "dualwrite state upgrade" in refused.value.hint
    # ... and so is every command that opens it (exit code 2, the message)
    cfg = tmp_path / "dualwrite.yaml"
    cfg.write_text(f"environments: {{erp: {{url: 'sqlite:///{tmp_path}/a.db'}}, crm: {{url: "
                   f"'sqlite:///{tmp_path}/b.db'}}}}\nlink: {{left: erp, right: crm}}\n"
                   f"state: '{url}'\nmaps: []\n")
    assert main(["-c", str(cfg), "status"]) == 2
    assert "dualwrite state upgrade" in capsys.readouterr().err
    # the command upgrades it, keeping what it holds
    assert main(["-c", str(cfg), "state", "upgrade"]) == 0
    said = capsys.readouterr().out
    assert f"upgraded from schema version 1 to {SCHEMA_VERSION}" in said
    state = StateStore(url)
    try:
        assert state.schema_version() == SCHEMA_VERSION
        assert state.get_link("l") is not None  # kept
        pid = state.register_process("l", "applier", note="a note")  # the column is back
        assert state.processes("l")[0]["note"] == "a note"
        state.unregister_process(pid)
    finally:
        state.close()
    # again: nothing to do
    assert main(["-c", str(cfg), "state", "upgrade"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    # a store a newer dualwrite made is refused, not touched
    raw = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with raw.begin() as conn:
            conn.exec_driver_sql(f"UPDATE state_meta SET value = '{SCHEMA_VERSION + 1}' "
                                 "WHERE key = 'schema_version'")
    finally:
        raw.dispose()
    with pytest.raises(StateStoreOutdated, match="made by a newer dualwrite"):
        StateStore(url)


def at_once(stores: list[StateStore], rounds: int,
            step: Callable[[StateStore, int, int], None]) -> None:
    """``step(store, n, round)`` for each store in a thread of its own, the threads let go
    together at each of ``rounds`` rounds (so that they meet); the first failure raised."""
    start = threading.Barrier(len(stores))
    failures: list[BaseException] = []

    def worker(store: StateStore, n: int) -> None:
        try:
            for i in range(rounds):
                start.wait(timeout=60)
                step(store, n, i)
        except BaseException as exc:  # handed to the test
            failures.append(exc)
            start.abort()

    threads = [threading.Thread(target=worker, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == [], failures[:1]


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_processes_counting_applied_changes_at_once_lose_no_count(tmp_path: Path,
                                                                  kind: str) -> None:
    """JetStream workers of one link apply the same map in several processes and each adds
    what it applied to the map's activity row. Two that met on a map's first row both
    inserted it: one failed with a duplicate key, and the map was failed with it (seen in CI:
    "map items failed ... duplicate key value violates unique constraint map_activity_pkey");
    two that met on an existing row each wrote what they had read plus their own, and one
    count was lost. Every count arrives, whatever the interleaving."""
    stores = [StateStore(fresh_state_url(kind, tmp_path)) for _ in range(2)]
    rounds = 40

    def step(store: StateStore, n: int, i: int) -> None:
        # a first row for each round's map, and one row every round adds to
        name = f"map{i // 2}" if i % 2 == 0 else "shared"
        store.note_applied({name: ("2026-12-07T00:00:00+00:00", 10 ** n)})

    at_once(stores, 2 * rounds, step)
    activity = stores[0].activity()
    assert {m: activity[m]["applied"] for m in (f"map{i}" for i in range(rounds))} == \
        {f"map{i}": 11 for i in range(rounds)}
    assert activity["shared"]["applied"] == 11 * rounds
    for s in stores:
        s.close()


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_processes_setting_a_maps_state_at_once_both_succeed(tmp_path: Path,
                                                             kind: str) -> None:
    """Two processes setting one map's state at once (JetStream workers failing a map):
    each change is made, one after the other; none fails on the row's key (it was deleted
    and inserted again, and the two inserts met)."""
    from dualwrite.engine.state import MapState

    stores = [StateStore(fresh_state_url(kind, tmp_path)) for _ in range(2)]
    rounds = 40
    states = (MapState.PAUSED, MapState.FAILED)

    def step(store: StateStore, n: int, i: int) -> None:
        if i % 2 == 0:
            store.set_map_state(f"map{i // 2}", states[n])
        else:
            store.set_map_state("shared", states[n], initial_synced=True)

    at_once(stores, 2 * rounds, step)
    got = stores[0].map_states()
    assert {got[f"map{i}"]["state"] for i in range(rounds)} <= {"paused", "failed"}
    assert len([m for m in got if m.startswith("map")]) == rounds
    assert got["shared"]["initial_synced_at"] is not None
    for s in stores:
        s.close()


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_processes_deciding_a_due_alert_at_once_fire_it_once(tmp_path: Path,
                                                             kind: str) -> None:
    """JetStream workers failing together each record an event of the map and ask whether a
    rule is due: each read the rule's last firing and the count before any of them wrote its
    firing, so each fired it (one webhook per worker, the alert's count bumped by each).
    Deciding at the same moment, one fires it and the others find it fired."""
    from dualwrite.engine.state import MapState

    url = fresh_state_url(kind, tmp_path)
    stores = [StateStore(url) for _ in range(3)]
    stores[0].set_map_state("items", MapState.RUNNING)
    for i in range(3):
        stores[0].add_event("items", "failed", f"failure {i}", 100.0 + i)
    rounds = 12
    fired: list[tuple[int, str]] = []

    def step(store: StateStore, n: int, i: int) -> None:
        text = store.fire_alert("items", f"rule{i}", "log", kinds=["failed"], count=3,
                                since=0.0, now=200.0, describe=lambda k: f"{k} failures")
        if text is not None:
            fired.append((i, text))

    at_once(stores, rounds, step)
    assert sorted(fired) == [(i, "3 failures") for i in range(rounds)]
    alerts = {a["rule"]: a for a in stores[0].alerts(limit=100)}
    assert {r: alerts[r]["fired"] for r in alerts} == {f"rule{i}": 1 for i in range(rounds)}
    # not due: fewer events than the count after the last firing
    assert stores[1].fire_alert("items", "rule0", "log", kinds=["failed"], count=3,
                                since=0.0, now=300.0, describe=str) is None
    stores[0].add_event("items", "failed", "later", 250.0)
    assert stores[1].fire_alert("items", "rule0", "log", kinds=["failed"], count=1,
                                since=0.0, now=300.0, describe=lambda k: f"{k} more") == "1 more"
    for s in stores:
        s.close()


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_commit_decisions_made_at_once_keep_every_audit_row_in_order(tmp_path: Path,
                                                                     kind: str) -> None:
    """Live transactions of many threads log their decisions through one group writer (on
    PostgreSQL one statement per batch, on SQLite a journal record): every decision is there,
    with its audit rows in the order given and its values as they were, completions noted
    with a later batch are written, and one transaction with more audit rows than a
    statement may have parameters (a large `$batch` changeset) is written whole."""
    store = StateStore(fresh_state_url(kind, tmp_path))
    threads, rounds = 6, 15

    def entries(n: int, i: int) -> list[AuditEntry]:
        key = (f"O'Brien {n}-{i} ü", i, None)
        return [AuditEntry("erp", "Customers", key, "create", "customers"),
                AuditEntry("crm", "accounts", key, "update", None)]

    def step(s: StateStore, n: int, i: int) -> None:
        s.log_commit_decision(f"dw-t-{n}-{i}", ["erp", "crm"], f"user{n}", entries(n, i))
        s.complete(f"dw-t-{n}-{i}")

    try:
        at_once([store] * threads, rounds, step)
        big = [AuditEntry("erp", "Lines", (k,), "create", "lines") for k in range(9000)]
        store.log_commit_decision("dw-t-big", ["erp", "crm"], "bulk", big)
        store.flush_completions()

        xids = {f"dw-t-{n}-{i}" for n in range(threads) for i in range(rounds)}
        assert all(store.decision(x) == "commit" for x in xids | {"dw-t-big"})
        assert store.incomplete_decisions() == ["dw-t-big"]  # the others were completed
        rows = list(reversed(store.audit(limit=20000)))  # oldest first
        assert [r["row_key"] for r in rows if r["xid"] == "dw-t-big"] == [[k] for k in range(9000)]
        for n in range(threads):
            for i in range(rounds):
                mine = [r for r in rows if r["xid"] == f"dw-t-{n}-{i}"]
                assert [(r["environment"], r["table_name"], tuple(r["row_key"]), r["operation"],
                         r["map"], r["principal"]) for r in mine] == \
                    [(a.environment, a.table, a.key, a.operation, a.map, f"user{n}")
                     for a in entries(n, i)]
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_processes_recording_and_installing_a_map_version_at_once_both_succeed(
        tmp_path: Path, kind: str) -> None:
    """`run` and `serve` (or JetStream workers) starting together on a new map version both
    record its text and install it: each checked that the row was missing, then inserted it,
    and one failed with a duplicate key. Both succeed, one row each."""
    stores = [StateStore(fresh_state_url(kind, tmp_path)) for _ in range(2)]
    rounds = 20

    def step(store: StateStore, n: int, i: int) -> None:
        store.record_map_version(f"map{i}", f"v{i}", f"name: map{i}\n", None)
        store.install_map_version(f"map{i}", f"v{i}")

    try:
        at_once(stores, rounds, step)
        states = stores[0].map_states()
        for i in range(rounds):
            assert stores[1].map_definition(f"map{i}", f"v{i}") == f"name: map{i}\n"
            assert states[f"map{i}"]["version"] == f"v{i}"
    finally:
        for s in stores:
            s.close()


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_processes_parking_one_row_at_once_make_one_inbox_entry(tmp_path: Path,
                                                               kind: str) -> None:
    """JetStream workers (or a worker and `serve`) failing the same row at once: each looked
    for an open entry of the row, found none and added one, so the inbox showed the row
    twice; and a repeat counted what it had read plus one, losing the other's attempt. One
    entry per row, every attempt counted."""
    stores = [StateStore(fresh_state_url(kind, tmp_path)) for _ in range(2)]
    rounds = 20

    def step(store: StateStore, n: int, i: int) -> None:
        store.add_error("items", "crm", (i, f"k{i}"), "update", f"refused by {n}")

    try:
        at_once(stores, rounds, step)
        at_once(stores, rounds, step)  # the same rows again: repeats of one entry each
        entries = stores[0].errors("items")
        assert sorted(e.key for e in entries) == [(i, f"k{i}") for i in range(rounds)]
        assert {e.attempts for e in entries} == {4}
    finally:
        for s in stores:
            s.close()
