"""The decision journal: where a live transaction's commit decision becomes durable.

A two-phase commit must record "commit" durably between the last prepare and the first
commit: that record is what recovery obeys. Committing it to the SQLite state store costs a
WAL commit (about 0.2 ms of fsync and statement work on our machines); appending it to a
preallocated file and calling ``fdatasync`` costs a third of that, and this record sits on the
path of every live transaction.

So, for a state store in a SQLite file, decisions (with their audit rows) are appended to a
journal beside it, ``<state file>.decisions/``, and moved into the state store's own tables
shortly after (every :data:`DRAIN_SECONDS`, by one background thread per process), after which
the journal file is deleted. Readers that need the decisions (``decision``, recovery, the audit
log) drain first.

Files and crash safety:

- The folder is ``0700`` and its files ``0600``, whatever the umask (see
  :mod:`dualwrite.engine.files`): records carry audit rows.
- Each process writes its own files and holds an exclusive ``flock`` on them. A file whose
  lock is free belongs to a process that is gone: the next state store to open the folder
  *adopts* it (imports its records, deletes it). A file is created under a ``.tmp`` name,
  locked, zero-filled and synced before it is renamed, so an adopter never sees a file its
  owner has not locked yet.
- A record is ``<length u32><crc32 u32><JSON>``, written at the end of the last one, then
  ``fdatasync``. The file is zero-filled when created, so a torn write fails its checksum and
  reading stops there: a record is either whole or absent, and absent means "no decision", the
  presumed abort a crash before the decision would have given anyway.
- Importing is idempotent (the importer skips transactions the state store already holds), so
  a crash between importing a file and deleting it imports nothing twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from dualwrite.engine.files import open_private, private_dir
from dualwrite.errors import TerminalConnectorError

log = logging.getLogger(__name__)

HEADER = struct.Struct("<III")  # payload length, epoch, crc32 of epoch and payload
EPOCH = struct.Struct("<I")
#: size of one journal file; the drainer empties a file long before it fills at any rate we
#: reach, and a full file simply makes way for a new one (as big as a big record needs)
FILE_BYTES = 1 << 20
SUFFIX = ".journal"
#: how often the background thread moves journalled decisions into the state store
DRAIN_SECONDS = 0.2
#: a .tmp file older than this was left by a process that died while creating it
STALE_TMP_SECONDS = 60.0


def _crc(data: bytes) -> int:
    import zlib

    return zlib.crc32(data) & 0xFFFFFFFF


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(f: BinaryIO) -> list[Any]:
    """The whole records of a journal file, in order. Reading stops at the first torn or empty
    record, and at the first record of an older epoch than the one before it (what is left of
    a round of records already drained, behind the current round)."""
    data = f.read()
    out: list[Any] = []
    pos, last_epoch = 0, -1
    while pos + HEADER.size <= len(data):
        length, epoch, crc = HEADER.unpack_from(data, pos)
        start, end = pos + HEADER.size, pos + HEADER.size + length
        if length == 0 or end > len(data) or epoch < last_epoch or \
                _crc(EPOCH.pack(epoch) + data[start:end]) != crc:
            break
        try:
            out.append(json.loads(data[start:end]))
        except ValueError:
            break
        pos, last_epoch = end, epoch
    return out


class _File:
    """One journal file this process owns (and holds locked)."""

    def __init__(self, directory: Path, size: int = FILE_BYTES) -> None:
        name = f"{os.getpid()}-{uuid.uuid4().hex}"
        self.size = size
        tmp = directory / (name + ".tmp")
        self.path = directory / (name + SUFFIX)
        # owner-only whatever the umask: a record carries its transaction's audit rows
        fd = open_private(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        self.f: BinaryIO = os.fdopen(fd, "r+b", buffering=0)
        fcntl.flock(self.f.fileno(), fcntl.LOCK_EX)
        # zero-filled, so a torn record fails its checksum and later records never follow
        # stale bytes; written now, so appends change no file metadata and fdatasync stays a
        # single data write
        os.pwrite(self.f.fileno(), bytes(size), 0)
        os.fsync(self.f.fileno())
        os.rename(tmp, self.path)
        _fsync_dir(directory)  # the name must survive a crash as surely as the records
        self.offset = 0
        self.epoch = 0
        self.records: list[Any] = []

    def append(self, data: bytes, payload: Any) -> bool:
        """Write one record (``data``, the encoded ``payload``) durably; False (nothing
        written) when it does not fit."""
        if self.offset + HEADER.size + len(data) > self.size:
            return False
        head = HEADER.pack(len(data), self.epoch, _crc(EPOCH.pack(self.epoch) + data))
        os.pwrite(self.f.fileno(), head + data, self.offset)
        os.fdatasync(self.f.fileno())
        self.offset += HEADER.size + len(data)
        self.records.append(payload)
        return True

    def reuse(self) -> None:
        """Start a new round at the beginning of the file; only once every record written so
        far is in the state store. The next round's records carry a higher epoch, so a reader
        never takes the old round's leftovers behind them for new records (and if it reads
        them before any new one is written, importing them again writes nothing)."""
        self.epoch += 1
        self.offset = 0
        self.records = []

    def __del__(self) -> None:
        # An owner dropped without close (a link never closed): release the file and its
        # lock quietly; its records stay for the next adopter.
        with contextlib.suppress(Exception):
            self.f.close()

    def remove(self) -> None:
        # unlink while still holding the lock: no adopter can open it half-deleted
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.f.close()


class DecisionJournal:
    """Decisions of this process, durable on :meth:`append`, moved to the state store by
    :meth:`drain`.

    ``sink(payloads)`` writes journalled payloads into the state store in one transaction and
    must skip those it already holds; it is given every record of a file before the file is
    deleted. :meth:`append` is called by one writer at a time (the state store's group
    commit); :meth:`drain` and :meth:`adopt` may run from any thread.
    """

    def __init__(self, directory: Path, sink: Callable[[list[Any]], None]) -> None:
        self.directory = directory
        self._sink = sink
        try:
            private_dir(directory)
        except OSError as exc:
            raise TerminalConnectorError(
                f"cannot create the decision journal folder {str(directory)!r}: {exc}",
                hint="the state store's folder must be writable", environment="state") from exc
        self._lock = threading.Lock()  # guards _current, _sealed and _spare
        self._drain_lock = threading.Lock()  # one drain at a time
        self._current: _File | None = None  # records are appended here
        self._sealed: list[_File] = []  # switched out, waiting for the drain to finish
        self._spare: _File | None = None  # drained, ready to take over from _current
        self._closed = False

    @property
    def pending(self) -> bool:
        """True while some appended record has not been drained yet."""
        return bool(self._sealed or (self._current and self._current.records))

    def append(self, payload: Any) -> None:
        """Append one record; it is on disk when this returns."""
        with self._lock:
            if self._closed:
                raise TerminalConnectorError("the state store is closed",
                                             hint="open the link again", environment="state")
            data = json.dumps(payload, separators=(",", ":")).encode()
            if self._current is None:
                self._current, self._spare = self._spare or _File(self.directory), None
            if not self._current.append(data, payload):
                # full: the spare, or a new file sized for this record if it is a big one (a
                # transaction of many thousand rows carries as many audit rows)
                self._sealed.append(self._current)
                need = HEADER.size + len(data)
                if self._spare is not None and self._spare.size >= need:
                    self._current, self._spare = self._spare, None
                else:
                    self._current = _File(self.directory, max(FILE_BYTES, need))
                self._current.append(data, payload)
        _drainer().watch(self)

    def drain(self) -> None:
        """Move every record appended so far into the state store.

        Two files take turns: appends switch to the spare while the records of the other are
        imported, after which it becomes the spare. Files are created only when the journal
        starts and for records bigger than a file, never per drain."""
        with self._drain_lock:
            if self._spare is None and self._current is not None and self._current.records:
                spare = _File(self.directory)  # outside the lock: appends go on meanwhile
                with self._lock:
                    self._spare = spare
            with self._lock:
                if self._current is not None and self._current.records:
                    self._sealed.append(self._current)
                    self._current, self._spare = self._spare, None
                files, self._sealed = self._sealed, []
            if not files:
                return
            try:
                self._sink([r for f in files for r in f.records])
            except BaseException:
                with self._lock:
                    self._sealed = files + self._sealed
                raise
            for f in files:
                with self._lock:
                    if self._spare is None and f.size == FILE_BYTES:
                        f.reuse()
                        self._spare = f
                        continue
                f.remove()

    def adopt(self) -> int:
        """Import and delete the journal files of processes that are gone; returns how many
        files were adopted. Files of live processes (locked) are left alone."""
        with self._lock:
            own = {f.path for f in (*self._sealed, self._current, self._spare) if f is not None}
        adopted = 0
        for path in sorted(self.directory.iterdir()):
            if path in own or path.suffix not in (SUFFIX, ".tmp"):
                continue
            if path.suffix == ".tmp" and _age(path) < STALE_TMP_SECONDS:
                continue  # being created: its owner locks it an instant after creating it
            try:
                f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
            except FileNotFoundError:
                continue
            with f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process is alive and owns it
                if path.suffix == SUFFIX:  # a .tmp file never holds a record
                    records = read_records(f)
                    if records:
                        self._sink(records)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                adopted += 1
        return adopted

    def close(self) -> None:
        """Drain, then delete this process's files."""
        self.drain()
        with self._lock:
            self._closed = True
            for f in (self._current, self._spare):
                if f is not None:
                    f.remove()
            self._current = self._spare = None


class Drainable(Protocol):
    """What the background thread drains: a journal, or decisions on their way into the
    state store (:class:`dualwrite.engine.state.decisions.DecidedElsewhere`)."""

    @property
    def pending(self) -> bool: ...

    def drain(self) -> None: ...


class _Drainer:
    """One daemon thread per process that drains every journal (and every other
    :class:`Drainable` it is given) with records pending."""

    def __init__(self) -> None:
        self._journals: weakref.WeakSet[Drainable] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, journal: Drainable) -> None:
        if journal in self._journals:
            return
        with self._lock:
            self._journals.add(journal)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="dualwrite-journal",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        stop = threading.Event()
        while not stop.wait(DRAIN_SECONDS):
            with self._lock:
                journals = list(self._journals)
            for journal in journals:
                if not journal.pending:
                    continue
                try:
                    journal.drain()
                except Exception:  # the records stay journalled: retried next round
                    log.warning("could not move decisions into the state store; retrying",
                                exc_info=True)


_DRAINER: _Drainer | None = None
_DRAINER_LOCK = threading.Lock()


def _drainer() -> _Drainer:
    global _DRAINER
    if _DRAINER is None:
        with _DRAINER_LOCK:
            if _DRAINER is None:
                _DRAINER = _Drainer()
    return _DRAINER


def drain_in_background(item: Drainable) -> None:
    """Have the process's background thread drain ``item`` while it has records pending
    (it is held weakly: dropping it stops that)."""
    _drainer().watch(item)


__all__ = ["DRAIN_SECONDS", "DecisionJournal", "Drainable", "drain_in_background",
           "read_records"]
