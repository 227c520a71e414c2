"""Processes that start together on a link nobody has linked yet (`dualwrite run` and
`dualwrite serve` started at once, JetStream workers) agree on one link id: each environment
carries one record of it, the state store the same id, and none of them fails."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from dualwrite.engine.link import Link
from dualwrite.errors import LinkError

from conftest import BackendFactory, fresh_state_url
from sync_fixtures import make_pair

PROCESSES = 3
ROUNDS = 6


def _link_at_once(links: list[Link]) -> tuple[list[str], list[BaseException]]:
    """Each link's ensure_linked() in a thread of its own, let go together: the ids they
    returned and what they raised."""
    start = threading.Barrier(len(links))
    ids: list[str] = []
    failures: list[BaseException] = []

    def link_up(link: Link) -> None:
        try:
            start.wait(timeout=60)
            ids.append(link.ensure_linked())
        except BaseException as exc:  # handed to the test
            failures.append(exc)

    threads = [threading.Thread(target=link_up, args=(lk,)) for lk in links]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return ids, failures


@pytest.mark.parametrize(("kind", "state"), [("postgresql", "sqlite"),
                                           ("postgresql", "postgresql"),
                                           ("mariadb", "sqlite")])
def test_processes_linking_a_fresh_pair_at_once_agree_on_one_link(
        make_backend: BackendFactory, tmp_path: Path, kind: str, state: str) -> None:
    """Before: two of them creating the link table at once failed (PostgreSQL's catalog
    refused the second table of that name), and each that found no link in the state store
    made an id of its own, recorded it in an environment and then refused to run, finding
    another's id there ("environment 'erp' already belongs to link 'erp<->crm'")."""
    pair = make_pair(make_backend, tmp_path, kind, kind)
    cfg = yaml.safe_load(pair.config.read_text())
    cfg["state"] = fresh_state_url(state, tmp_path)
    pair.config.write_text(yaml.safe_dump(cfg))
    for rnd in range(ROUNDS):
        # a pair nobody linked: no link table on either side, no link in the state store
        for b in (pair.erp, pair.crm):
            b.connector.drop_link_storage()
        links = [Link.open(pair.config) for _ in range(PROCESSES)]
        try:
            links[0].state.delete_link(links[0].config.link_name)
            ids, failures = _link_at_once(links)
            assert failures == [], f"round {rnd}: {failures[:1]}"
            assert len(ids) == PROCESSES and len(set(ids)) == 1, f"round {rnd}: {ids}"
            for b in (pair.erp, pair.crm):
                with b.app().connect() as conn:
                    records = conn.execute(sa.text(
                        "SELECT link_id FROM dualwrite_link")).scalars().all()
                assert records == ids[:1], f"round {rnd}, {b.kind} {b.url}: {records}"
            stored = links[0].state.get_link(links[0].config.link_name)
            assert stored is not None and stored["link_id"] == ids[0], f"round {rnd}"
        finally:
            for lk in links:
                lk.close()


def test_a_record_a_lost_state_store_left_is_refused_and_recorded_nowhere(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    """One environment carries a record of this link's name with an id the (new, empty)
    state store does not know, the other none: not a peer's that claimed first (the state
    store would hold its id), so it is refused as before, nothing is recorded, and one
    `unlink` frees the environment (it finds the record by the link's name)."""
    pair = make_pair(make_backend, tmp_path, "postgresql", "postgresql")
    with Link.open(pair.config) as link:
        link.ensure_linked()
        name = link.config.link_name
        pair.crm.connector.clear_link()
        link.state.delete_link(name)  # the state store lost
        with pytest.raises(LinkError, match="already belongs to link"):
            link.ensure_linked()
        assert link.state.get_link(name) is None
        assert pair.crm.connector.get_link() is None
        assert link.unlink() == ["erp"]
        fresh_id = link.ensure_linked()
        for b in (pair.erp, pair.crm):
            rec = b.connector.get_link()
            assert rec is not None and rec.link_id == fresh_id
