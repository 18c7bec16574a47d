"""Serve one connection on a blocking socket: recv into a buffer, feed the core, send.

Timeouts come from the session's deadline (idle, header); a peer that does not
read what we send makes no progress for ``idle_timeout`` and is dropped, so a
blocked thread never waits forever. Sending everything before reading again is
this model's backpressure, and the session parses no further than the write
high-water mark past what was sent, so memory per connection is bounded by the
mark plus one response whatever one read held. A backend call (the guestbook's
Redis) blocks the worker on its own Redis connection
(:mod:`servers.drivers.blocking_backend`). Accepting, and what every blocking model
does around a connection, is :mod:`servers.drivers.blocking_runner`'s.

How a call waits at most so long is :class:`_Timer`'s: a stdlib socket stays in
blocking mode under kernel timeouts (``SO_RCVTIMEO``, ``SO_SNDTIMEO``), because
``settimeout`` costs an ioctl each time and then a poll(2) before every recv and
send: four system calls a request more than the model needs. Other sockets
(gevent's cooperative ones) keep ``settimeout``.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

from servers.core import FileSlice, Session, Write
from servers.drivers.blocking_backend import BackendUnavailable, BlockingBackend
from servers.settings import Settings
from servers.stop import StopSignal

_SEND_CHUNK = 1 << 20


def serve_connection(
    sock: socket.socket,
    new_session: Callable[[float], Session],
    settings: Settings,
    clock: Callable[[], float] = time.monotonic,
    stop: StopSignal | None = None,
    backend: BlockingBackend | None = None,
) -> None:
    """Run one connection to its end and close the socket.

    With ``stop``, a send blocked on a peer that does not read gives up once the
    server has been stopping for the shutdown grace (the thread that waits may be
    the one that must exit: iterative). ``backend`` is the worker's Redis
    connection; without one, a connection that makes a backend call opens its
    own (with the socket class of ``sock``) and closes it at the end."""
    own_backend = backend is None
    if backend is None:
        backend = BlockingBackend.for_settings(settings, type(sock))
    session = new_session(clock())
    buf = bytearray(settings.read_size)
    view = memoryview(buf)
    pending: list[Write] = []
    eof = False
    timer = _Timer(sock)
    patience = _Patience(settings, clock, stop)
    try:
        while True:
            pending = session.take_output()
            if pending:
                _send_all(sock, pending, session, settings, clock, patience, timer)
                pending = []
            call = session.take_backend_call()
            if call is not None:
                try:
                    assert backend is not None  # a session makes calls only with --redis
                    replies = backend.perform(call)
                except BackendUnavailable:
                    session.backend_failed(clock())
                else:
                    session.backend_replied(replies, clock())
                continue
            if session.closing:
                # After the peer's FIN nothing is left to drain: close at once. (Each
                # syscall of a drain is one more wait for the GIL; 10,000 threads of
                # `threaded` leaving together made a new client wait about a second.)
                if not eof:
                    _linger_close(sock, settings)
                return
            if session.paused and session.resume(clock()):
                continue  # everything is sent: parse what the last read still holds
            now = clock()
            timeout = session.deadline() - now
            if timeout <= 0:
                return
            timer.receive_within(timeout)
            try:
                n = sock.recv_into(buf)
            except (TimeoutError, BlockingIOError):  # BlockingIOError: a kernel timeout
                if session.expired(clock()):
                    return
                continue
            if n == 0:
                eof = True
                session.eof_received(clock())
            else:
                session.received(view[:n], clock())
    except OSError:
        return  # reset, broken pipe, or a peer too slow to read: the connection ends
    finally:
        for item in pending:
            if isinstance(item, FileSlice):
                item.close()
        view.release()
        sock.close()
        if own_backend and backend is not None:
            backend.close()


def _send_all(sock: socket.socket, writes: list[Write], session: Session, settings: Settings,
              clock: Callable[[], float], patience: _Patience, timer: _Timer) -> None:
    """Send every write; each send must progress within the idle timeout, and within
    the shutdown grace once ``stop`` is set. Files go by sendfile(2), or by read+write
    with ``--sendfile off``."""
    timer.send_within(patience.step)
    patience.progressed()

    def send_bytes(data: bytes | memoryview) -> None:
        while data:
            try:
                sent = sock.send(data if len(data) <= _SEND_CHUNK else data[:_SEND_CHUNK])
            except (TimeoutError, BlockingIOError):  # BlockingIOError: a kernel timeout
                patience.check()
                continue
            session.sent(sent, clock())
            patience.progressed()
            if sent == len(data):
                return
            data = memoryview(data)[sent:]

    for item in writes:
        if isinstance(item, bytes):
            send_bytes(item)
            continue
        try:
            if not settings.sendfile:
                while item.count > 0:
                    chunk = item.read_chunk(_SEND_CHUNK)
                    if not chunk:
                        raise ConnectionError("file shrank while being sent")
                    item.advance(len(chunk))
                    send_bytes(chunk)
                continue
            timer.python_timeout(patience.step)  # socket.sendfile waits by its own poll
            file = item.open()
            while item.count > 0:
                # socket.sendfile leaves the file positioned after what it sent, also
                # when it times out: that is the progress to count.
                file.seek(item.offset)
                try:
                    sock.sendfile(file, item.offset, min(item.count, _SEND_CHUNK))
                    timed_out = False
                except TimeoutError:
                    timed_out = True
                sent = file.tell() - item.offset
                if sent > 0:
                    item.advance(sent)
                    session.sent(sent, clock())
                    patience.progressed()
                elif timed_out:
                    patience.check()
                else:
                    raise ConnectionError("file shrank while being sent")
        finally:
            item.close()


class _Timer:
    """Bounds the next receive or send of a blocking socket (see the module docstring).

    Under kernel timeouts a receive timeout is changed only when the deadline moved
    notably: set longer than the time left, it would let a call wait past its deadline,
    so it is set again when it exceeds the time left by more than 2% + 2 ms; set much
    shorter (under half), the call wakes early, finds the deadline not reached and
    waits again, so it is set again then too. A keep-alive connection's deadline
    moves by about the time between two requests, so its receives change nothing.
    A call that times out raises BlockingIOError (kernel) or TimeoutError.
    """

    __slots__ = ("sock", "kernel", "receive", "send")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.kernel = type(sock) is socket.socket
        self.receive = -1.0  # the timeout in force for receives (kernel), -1: none set
        self.send = -1.0
        if self.kernel:
            sock.settimeout(None)

    def receive_within(self, timeout: float) -> None:
        if not self.kernel:
            self.sock.settimeout(timeout)
            return
        if self._python_mode() or not (timeout * 0.5 <= self.receive
                                       <= timeout * 1.02 + 0.002):
            self.receive = timeout
            self._set(socket.SO_RCVTIMEO, timeout)

    def send_within(self, timeout: float) -> None:
        if not self.kernel:
            self.sock.settimeout(timeout)
            return
        self._python_mode()
        if self.send != timeout:
            self.send = timeout
            self._set(socket.SO_SNDTIMEO, timeout)

    def python_timeout(self, timeout: float) -> None:
        """Python's own timeout (poll before each call) until the next bound, for calls
        that do not take kernel timeouts (socket.sendfile waits with its own poll)."""
        self.sock.settimeout(timeout)

    def _python_mode(self) -> bool:
        """Back to blocking mode if :meth:`python_timeout` left it; whether it had."""
        if self.sock.gettimeout() is None:
            return False
        self.sock.settimeout(None)
        return True

    def _set(self, option: int, timeout: float) -> None:
        # A zero timeval means "no timeout": the shortest is one microsecond.
        seconds = max(timeout, 1e-6)
        self.sock.setsockopt(socket.SOL_SOCKET, option,
                             struct.pack("@ll", int(seconds), int(seconds % 1 * 1e6)))


class _Patience:
    """How long a send may wait for a peer that does not read."""

    _STOP_POLL = 0.1
    _STALLED = 0.5  # after the grace, a send without progress this long gives up

    def __init__(self, settings: Settings, clock: Callable[[], float],
                 stop: StopSignal | None) -> None:
        self.settings = settings
        self.clock = clock
        self.stop = stop
        self.step = settings.idle_timeout if stop is None else min(settings.idle_timeout,
                                                                   self._STOP_POLL)
        self.last = clock()

    def progressed(self) -> None:
        self.last = self.clock()

    def check(self) -> None:
        """Raise TimeoutError when waiting longer is not allowed."""
        now = self.clock()
        if now - self.last >= self.settings.idle_timeout:
            raise TimeoutError("peer does not read")
        stop = self.stop
        if (stop is not None and stop.is_set() and now - self.last >= self._STALLED
                and time.monotonic() - stop.since >= self.settings.shutdown_grace):
            raise TimeoutError("server stopping and the peer does not read")


def _linger_close(sock: socket.socket, settings: Settings) -> None:
    """Close after the last response without losing it to a reset.

    Closing with unread input makes the kernel send RST, which can destroy the
    response still in flight; so shut down writing and read what the peer still
    sends, for a bounded time and amount.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(settings.linger_seconds)
        deadline = time.monotonic() + settings.linger_seconds
        drained = 0
        while drained < settings.linger_bytes and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            drained += len(chunk)
    except OSError:
        pass
