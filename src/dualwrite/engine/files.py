"""Files dualwrite keeps beside its state store, readable by their owner only.

The state store holds token hashes, the audit log and the rows of open inbox entries; the
decision journal holds audit rows on their way there. Every file dualwrite creates for them
(the SQLite state file and its ``-wal``/``-shm``, the journal folder and its files, the
applier's lock file) is created ``0600`` (folders ``0700``) whatever the process's umask, and
one that an earlier version left wider is narrowed when it is opened again.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def narrow(path: Path | str, mode: int = FILE_MODE) -> None:
    """Take group and other permissions away from ``path`` when this user owns it (a file
    someone else owns, or one that is gone, is left as it is)."""
    with contextlib.suppress(FileNotFoundError, PermissionError):
        st = os.stat(path)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)


def open_private(path: Path | str, flags: int = os.O_RDWR | os.O_CREAT) -> int:
    """``os.open`` that creates the file ``0600`` whatever the umask; returns the descriptor.
    A file that exists already is narrowed to ``0600`` (when this user owns it)."""
    fd = os.open(path, flags, FILE_MODE)
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != FILE_MODE:
            # the umask can only take bits away from FILE_MODE; a stricter one (0o277) would
            # leave the owner unable to write the file it just created
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_dir(path: Path) -> None:
    """Create the folder ``0700`` (or narrow it to ``0700``)."""
    path.mkdir(mode=DIR_MODE, exist_ok=True)
    narrow(path, DIR_MODE)


def private_database_file(path: Path) -> None:
    """Create a database file ``0600`` before the database opens it, and narrow a wider one
    with its ``-wal``, ``-shm`` and ``-journal`` files. The database creates those with the
    file's own mode, so they are ``0600`` from then on too."""
    os.close(open_private(path))
    for suffix in ("-wal", "-shm", "-journal"):
        narrow(f"{path}{suffix}")


__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "narrow",
    "open_private",
    "private_database_file",
    "private_dir",
]
