"""The state store's files are its owner's only: the SQLite file, its -wal and -shm, the
decision journal's folder and files, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualwrite.engine.state import AuditEntry, StateStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o000, 0o022, 0o077], ids=["umask-000", "umask-022", "umask-077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_state_journal_and_lock_files_are_owner_only(umask: int, tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    state = StateStore(f"sqlite:///{db}")
    try:
        state.claim_link("l", "id", "erp", "crm")  # a write: the -wal and -shm exist now
        # a decision is journalled (and the journal file stays open, holding it) ...
        state.log_commit_decision("dw-x-1", ["erp", "crm"], "alice",
                                  [AuditEntry("erp", "t", (1,), "create")])
        journal = Path(f"{db}.decisions")
        files = sorted(journal.iterdir())
        assert files, "the decision was not journalled"
        found = {p.name: mode(p) for p in [db, Path(f"{db}-wal"), Path(f"{db}-shm"), *files]}
        assert found == dict.fromkeys(found, 0o600), found
        assert mode(journal) == 0o700
    finally:
        state.close()


def test_files_an_older_version_left_readable_are_narrowed(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    StateStore(f"sqlite:///{db}").close()
    journal = Path(f"{db}.decisions")
    for p, wide in ((db, 0o644), (journal, 0o755)):
        os.chmod(p, wide)
    state = StateStore(f"sqlite:///{db}")
    try:
        assert (mode(db), mode(journal)) == (0o600, 0o700)
        assert state.get_link("nothing") is None  # and it still works
    finally:
        state.close()


def test_a_state_store_in_a_missing_folder_says_so(tmp_path: Path) -> None:
    from dualwrite.errors import TerminalConnectorError

    with pytest.raises(TerminalConnectorError, match="cannot open the state store") as info:
        StateStore(f"sqlite:///{tmp_path / 'nowhere' / 'state.db'}")
    assert "folder must exist" in info.value.hint
