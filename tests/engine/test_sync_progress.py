"""Initial sync as the console shows it: its progress in the state store (rows done of the
expected total, whichever process runs it), and a re-run that skips the rows already in the
inbox (`sync --initial --skip-errors`, the console's "re-run skipping errors")."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualwrite.testing.backends import pair_id, pairs

from conftest import BackendFactory
from sync_fixtures import erp_customer, make_pair, seed_groups

#: a pair of one kind linked by attaching (SQLite), and two servers of different kinds
KINDS = pairs(needs=("sql",), same="none")


@pytest.mark.parametrize("kinds", KINDS, ids=pair_id)
def test_progress_is_recorded_and_a_rerun_can_skip_the_inbox(
        make_backend: BackendFactory, tmp_path: Path, kinds: tuple[str, str]) -> None:
    p = make_pair(make_backend, tmp_path, *kinds, batch_size=10)
    seed_groups(p)
    p.erp.insert("Customers", [erp_customer(i) for i in range(35)])
    p.erp.insert("Customers", [erp_customer(200, GROUPID="NOPE")])  # its lookup fails
    with p.link() as link:
        link.sync_initial()
        progress = link.monitor.sync_progress()["customers"]
        assert progress["done"] == progress["total"] == 36 and not progress["running"]
        assert progress["finished_at"] is not None and progress["rate"] > 0
        [entry] = link.state.errors("customers")
        assert entry.attempts == 1

        [skipping] = link.sync_initial(["customers"], resume=False, skip_errors=True)
        assert skipping.errors == {"left": 0, "right": 0}  # the inbox row was not tried
        assert link.state.get_error(entry.id).attempts == 1
        assert link.monitor.sync_progress()["customers"]["done"] == 36

        [again] = link.sync_initial(["customers"], resume=False)
        assert sum(again.errors.values()) == 1  # tried again, and failed again
        assert link.state.get_error(entry.id).attempts == 2
        assert all(v.ok or v.map == "customers" for v in link.verify())
