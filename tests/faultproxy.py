"""A TCP fault proxy for tests: a loopback port in front of a database server's port, whose
faults a test switches at any moment, so that an outage is simulated without touching the
machine's shared servers (imported by tests).

    with FaultProxy(5432) as proxy:            # 127.0.0.1:<ephemeral> -> 127.0.0.1:5432
        url = proxy.url(backend.url)           # the same database, through the proxy
        proxy.set_mode(Mode.REFUSE)            # the server is "down"
        ...
        proxy.set_mode(Mode.PASS)              # and back

Modes (``set_mode`` returns once the mode is in force):

- ``PASS``: bytes flow both ways.
- ``REFUSE``: the listening socket is closed, so a new connection fails at once with
  ECONNREFUSED (the port stays reserved: ``PASS`` listens on the same port again); every
  current connection is reset, as a stopped server's would be.
- ``STALL``: connections are accepted and kept, but nothing is forwarded either way (a
  network that black-holes traffic): a client hangs until its own timeout. A connection
  accepted while stalled reaches the server only once the proxy passes again.
- ``CUT``: every current connection is closed cleanly (FIN), and so is every new one as soon
  as it is accepted (a server hanging up).
- ``RESET``: every current connection is reset (RST: SO_LINGER 0), and so is every new one.

``reset_connections()`` resets the current connections once and leaves the mode alone (a
session lost in the middle of a transaction).

All sockets live on one thread (a selector loop); the methods hand it commands and wait for
them to be done, so they may be called from any thread. ``stop()`` closes every socket and
joins the thread.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import sqlalchemy as sa

#: bytes a connection buffers per direction before the proxy stops reading from that side
BUFFER = 256 * 1024
#: how long a command may wait for the proxy's thread (it never blocks: a generous bound)
COMMAND_TIMEOUT = 30.0


class Mode(enum.Enum):
    PASS = "pass"
    REFUSE = "refuse"
    STALL = "stall"
    CUT = "cut"
    RESET = "reset"


class FaultProxyError(RuntimeError):
    """The proxy could not do what it was asked (its thread died, or does not answer)."""


@dataclass(eq=False)
class _Pipe:
    """One client connection and its connection to the target."""

    client: socket.socket
    upstream: socket.socket | None = None
    connecting: bool = False
    to_upstream: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    client_eof: bool = False
    upstream_eof: bool = False


class FaultProxy:
    """A TCP proxy on 127.0.0.1 (an ephemeral port) in front of ``target_host:target_port``.
    Use it as a context manager, or ``start()`` and ``stop()``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._mode = Mode.PASS
        self._lock = threading.Lock()  # one command at a time
        self._commands: collections.deque[tuple[Callable[[], Any], threading.Event,
                                                list[Any]]] = collections.deque()
        self._thread: threading.Thread | None = None
        self._crash: BaseException | None = None
        self._stopping = False
        self._owned: set[socket.socket] = set()
        self._pipes: list[_Pipe] = []
        self._listener: socket.socket | None = None
        self._holder: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._interest: dict[socket.socket, int] = {}
        #: connections accepted since start (for tests that check traffic went through)
        self.accepted = 0

    # -- public API ---------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        if self._thread is not None:
            raise FaultProxyError("the fault proxy is already started")
        # The port stays reserved while the proxy refuses: a bound socket that never listens
        # holds it, so no other socket on the machine can take the port between REFUSE and
        # PASS. It binds a free port on its own first (a port given to SO_REUSEPORT sockets
        # might be shared), then lets the listener share it.
        self._holder = self._socket()
        self._holder.bind(("127.0.0.1", 0))
        self._holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.port = int(self._holder.getsockname()[1])
        self._wake_r, self._wake_w = socket.socketpair()
        self._owned.update((self._wake_r, self._wake_w))
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._listen()
        self._thread = threading.Thread(target=self._run, name=f"faultproxy-{self.port}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close every connection and socket, and join the thread (idempotent)."""
        thread = self._thread
        if thread is None:
            return
        if thread.is_alive():
            self._stopping = True
            self._wake()
            thread.join(COMMAND_TIMEOUT)
            if thread.is_alive():
                raise FaultProxyError(f"the fault proxy's thread did not stop within "
                                      f"{COMMAND_TIMEOUT} s")
        self._close_all()
        self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def mode(self) -> Mode:
        return self._mode

    def set_mode(self, mode: Mode) -> None:
        """Put ``mode`` in force; returns once it is (see the module's docstring)."""
        self._command(lambda: self._apply(mode))

    @contextlib.contextmanager
    def fault(self, mode: Mode) -> Iterator[FaultProxy]:
        """``mode`` for the block, then ``PASS`` again (even if the block fails)."""
        self.set_mode(mode)
        try:
            yield self
        finally:
            self.set_mode(Mode.PASS)

    def reset_connections(self) -> int:
        """Reset (RST) every current connection once, mode unchanged; returns how many."""
        return int(self._command(self._reset_all))

    def connections(self) -> int:
        """Connections currently open through the proxy."""
        return int(self._command(lambda: len(self._pipes)))

    def open_sockets(self) -> int:
        """Sockets of the proxy's own still open (0 once stopped: nothing leaks)."""
        return sum(1 for s in self._owned if s.fileno() != -1)

    def url(self, url: str) -> str:
        """``url`` (an SQLAlchemy URL) pointed at the proxy instead of the target."""
        return sa.engine.make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(
            hide_password=False)

    # -- commands -----------------------------------------------------------------------------
    def _command(self, action: Callable[[], Any]) -> Any:
        if self._thread is None:
            raise FaultProxyError("the fault proxy is not started")
        with self._lock:
            done = threading.Event()
            box: list[Any] = []
            self._commands.append((action, done, box))
            self._wake()
            # a thread that died after the command was queued never answers it
            deadline = time.monotonic() + COMMAND_TIMEOUT
            while not done.wait(0.2) and self._thread.is_alive():
                if time.monotonic() > deadline:
                    break
            if not done.is_set():
                raise FaultProxyError(
                    f"the fault proxy's thread did not answer within {COMMAND_TIMEOUT} s"
                    + (f" (it died: {self._crash!r})" if self._crash else ""))
            [(ok, value)] = box
            if not ok:
                raise FaultProxyError(f"the fault proxy failed: {value!r}") from value
            return value

    def _wake(self) -> None:
        assert self._wake_w is not None
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"!")

    def _apply(self, mode: Mode) -> None:
        if mode is Mode.REFUSE:
            self._close_listener()
            self._reset_all()
        else:
            if self._listener is None:
                self._listen()
            if mode is Mode.CUT:
                for pipe in list(self._pipes):
                    self._drop(pipe, rst=False)
            elif mode is Mode.RESET:
                self._reset_all()
        self._mode = mode

    def _reset_all(self) -> int:
        n = len(self._pipes)
        for pipe in list(self._pipes):
            self._drop(pipe, rst=True)
        return n

    # -- sockets ------------------------------------------------------------------------------
    def _socket(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._owned.add(s)
        return s

    def _close(self, s: socket.socket | None, *, rst: bool = False) -> None:
        if s is None or s.fileno() == -1:
            return
        if s in self._interest:
            assert self._selector is not None
            self._selector.unregister(s)
            del self._interest[s]
        if rst:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        self._owned.discard(s)

    def _listen(self) -> None:
        listener = self._socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener

    def _close_listener(self) -> None:
        # closing a listener resets the connections still waiting in its backlog too
        self._close(self._listener)
        self._listener = None

    def _drop(self, pipe: _Pipe, *, rst: bool) -> None:
        """Close both ends of ``pipe``: the client's with a RST if ``rst``; the target's always
        cleanly (the server ends that session as it would for a client gone away)."""
        self._close(pipe.client, rst=rst)
        self._close(pipe.upstream)
        self._pipes.remove(pipe)

    def _close_all(self) -> None:
        for pipe in list(self._pipes):
            self._drop(pipe, rst=False)
        self._close_listener()
        self._close(self._holder)
        self._close(self._wake_r)
        self._close(self._wake_w)
        if self._selector is not None:
            self._selector.close()

    # -- the loop -----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                self._do_commands()
                self._connect_upstreams()
                self._update_interest()
                assert self._selector is not None
                for key, events in self._selector.select(timeout=1.0):
                    self._handle(key.fileobj, key.data, events)  # type: ignore[arg-type]
                self._close_finished()
        except BaseException as exc:
            self._crash = exc
            raise
        finally:
            self._close_all()
            self._fail_commands()

    def _do_commands(self) -> None:
        while self._commands:
            action, done, box = self._commands.popleft()
            try:
                box.append((True, action()))
            except Exception as exc:
                box.append((False, exc))
            done.set()

    def _fail_commands(self) -> None:
        while self._commands:
            _action, done, box = self._commands.popleft()
            box.append((False, FaultProxyError("the fault proxy stopped")))
            done.set()

    def _connect_upstreams(self) -> None:
        if self._mode is not Mode.PASS:
            return
        for pipe in list(self._pipes):
            if pipe.upstream is None:
                self._connect(pipe)

    def _connect(self, pipe: _Pipe) -> None:
        up = self._socket()
        up.setblocking(False)
        err = up.connect_ex(self.target)
        if err not in (0, errno.EINPROGRESS):
            # the target refuses: so does the proxy, as well as it can once it has accepted
            self._close(up)
            self._drop(pipe, rst=True)
            return
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe.upstream = up
        pipe.connecting = err != 0

    def _want(self, s: socket.socket, events: int, data: Any) -> None:
        assert self._selector is not None
        had = self._interest.get(s)
        if events == 0:
            if had is not None:
                self._selector.unregister(s)
                del self._interest[s]
        elif had is None:
            self._selector.register(s, events, data)
            self._interest[s] = events
        elif had != events:
            self._selector.modify(s, events, data)
            self._interest[s] = events

    def _update_interest(self) -> None:
        assert self._wake_r is not None
        self._want(self._wake_r, selectors.EVENT_READ, ("wake", None))
        if self._listener is not None:
            self._want(self._listener, selectors.EVENT_READ, ("listener", None))
        forward = self._mode is Mode.PASS
        read, write = selectors.EVENT_READ, selectors.EVENT_WRITE
        for pipe in self._pipes:
            # reading goes on while stalled (into a bounded buffer, nothing sent on), so that a
            # client that gives up is noticed and its connection closed
            self._want(pipe.client,
                       (read if not pipe.client_eof and len(pipe.to_upstream) < BUFFER else 0)
                       | (write if forward and pipe.to_client else 0), ("client", pipe))
            if pipe.upstream is not None:
                if pipe.connecting:
                    events = write
                else:
                    events = ((read if not pipe.upstream_eof and len(pipe.to_client) < BUFFER
                               else 0) | (write if forward and pipe.to_upstream else 0))
                self._want(pipe.upstream, events, ("upstream", pipe))

    def _handle(self, sock: socket.socket, data: tuple[str, _Pipe | None], events: int) -> None:
        role, pipe = data
        if role == "wake":
            with contextlib.suppress(BlockingIOError):
                while sock.recv(4096):
                    pass
            return
        if role == "listener":
            self._accept()
            return
        assert pipe is not None
        if pipe not in self._pipes:
            return  # dropped earlier in this round
        try:
            if role == "upstream" and pipe.connecting:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._drop(pipe, rst=True)
                else:
                    pipe.connecting = False
                return
            outgoing, incoming = ((pipe.to_upstream, pipe.to_client) if role == "client"
                                  else (pipe.to_client, pipe.to_upstream))
            if events & selectors.EVENT_READ:
                chunk = sock.recv(65536)
                if chunk:
                    outgoing += chunk
                elif role == "client":
                    pipe.client_eof = True
                else:
                    pipe.upstream_eof = True
            if events & selectors.EVENT_WRITE and incoming and self._mode is Mode.PASS:
                sent = sock.send(incoming)
                del incoming[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            # reset by either peer: pass the reset on to the client
            self._drop(pipe, rst=True)

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            self._owned.add(client)
            self.accepted += 1
            if self._mode in (Mode.CUT, Mode.RESET):
                self._close(client, rst=self._mode is Mode.RESET)
                continue
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pipes.append(_Pipe(client))

    def _close_finished(self) -> None:
        """A side that ended: once what it sent is passed on (or cannot be: not passing),
        close both ends cleanly."""
        forward = self._mode is Mode.PASS
        for pipe in list(self._pipes):
            client_done = pipe.client_eof and not (forward and pipe.upstream is not None
                                                   and pipe.to_upstream)
            upstream_done = pipe.upstream_eof and not (forward and pipe.to_client)
            if client_done or upstream_done:
                self._drop(pipe, rst=False)
