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
send: four system calls a request more than the model needs. Other socket classes
bring bounds of their own: gevent's cooperative sockets get one timer per connection
(:mod:`servers.drivers.greenlet_bounds`, passed as ``bounds``).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import Protocol

from servers.core import FileSlice, Session, Write
from servers.drivers.blocking_backend import BackendUnavailable, BlockingBackend
from servers.settings import TIMER_SLACK_S, TIMER_SLACK_SHARE, Settings
from servers.stop import StopSignal

_SEND_CHUNK = 1 << 20


def serve_connection(
    sock: socket.socket,
    new_session: Callable[[float], Session],
    settings: Settings,
    clock: Callable[[], float] = time.monotonic,
    stop: StopSignal | None = None,
    backend: BlockingBackend | None = None,
    bounds: Callable[[socket.socket, Sender], Bounds] | None = None,
) -> None:
    """Run one connection to its end and close the socket.

    With ``stop``, a send blocked on a peer that does not read gives up once the
    server has been stopping for the shutdown grace (the thread that waits may be
    the one that must exit: iterative). ``backend`` is the worker's Redis
    connection; without one, a connection that makes a backend call opens its
    own (with the socket class of ``sock``) and closes it at the end. ``bounds``
    makes what bounds each receive and send (default :class:`_Timer`)."""
    own_backend = backend is None
    if backend is None:
        backend = BlockingBackend.for_settings(settings, type(sock))
    now = clock()
    session = new_session(now)
    buf = bytearray(settings.read_size)
    view = memoryview(buf)
    pending: list[Write] = []
    eof = False
    sender = Sender(sock, session, settings, clock, stop, bounds or _Timer)
    timer = sender.timer
    try:
        while True:
            # ``now``: the clock read after the last receive, send or call; the core's
            # work in between is microseconds, so it is not read again.
            pending = session.take_output()
            if pending:
                now = sender.send(pending, now)
                pending = []
            # A session makes backend calls only with --redis, when there is a backend.
            call = session.take_backend_call() if backend is not None else None
            if call is not None:
                timer.unbound()
                try:
                    replies = backend.perform(call)
                except BackendUnavailable:
                    now = clock()
                    session.backend_failed(now)
                else:
                    now = clock()
                    session.backend_replied(replies, now)
                continue
            if session.closing:
                # After the peer's FIN nothing is left to drain: close at once. (Each
                # syscall of a drain is one more wait for the GIL; 10,000 threads of
                # `threaded` leaving together made a new client wait about a second.)
                if not eof:
                    timer.unbound()
                    _linger_close(sock, settings)
                return
            if session.paused and session.resume(now):
                continue  # everything is sent: parse what the last read still holds
            timeout = session.deadline() - now
            if timeout <= 0:
                return
            timer.receive_within(timeout)
            try:
                n = sock.recv_into(buf)
            except (TimeoutError, BlockingIOError):  # BlockingIOError: a kernel timeout
                now = clock()
                if session.expired(now):
                    return
                continue
            now = clock()
            if n == 0:
                eof = True
                session.eof_received(now)
            else:
                session.received(view[:n], now)
    except OSError:
        return  # reset, broken pipe, or a peer too slow to read: the connection ends
    finally:
        timer.close()
        for item in pending:
            if isinstance(item, FileSlice):
                item.close()
        view.release()
        sock.close()
        if own_backend and backend is not None:
            backend.close()


class Bounds(Protocol):
    """What bounds a connection's waits: the next receive must end within a timeout,
    sends must progress within one. A bound that passes makes the waiting call raise
    TimeoutError or BlockingIOError. :class:`_Timer` is the one for stdlib sockets."""

    def receive_within(self, timeout: float) -> None: ...

    def send_within(self, timeout: float) -> None: ...

    def python_timeout(self, timeout: float) -> None: ...

    def unbound(self) -> None: ...

    def close(self) -> None: ...


class Sender:
    """Sends a connection's writes. Each send must progress within the idle timeout,
    and within the shutdown grace once ``stop`` is set; :attr:`last` is when it last
    did. Files go by sendfile(2), or by read+write with ``--sendfile off``."""

    __slots__ = ("sock", "session", "settings", "clock", "stop", "step", "last", "timer")

    _STOP_POLL = 0.1
    _STALLED = 0.5  # after the grace, a send without progress this long gives up

    def __init__(self, sock: socket.socket, session: Session, settings: Settings,
                 clock: Callable[[], float], stop: StopSignal | None,
                 bounds: Callable[[socket.socket, Sender], Bounds]) -> None:
        self.sock = sock
        self.session = session
        self.settings = settings
        self.clock = clock
        self.stop = stop
        # How long one send may wait before the patience is checked again.
        self.step = settings.idle_timeout if stop is None else min(settings.idle_timeout,
                                                                   self._STOP_POLL)
        self.last = clock()
        self.timer = bounds(sock, self)

    def send(self, writes: list[Write], now: float) -> float:
        """Send every write; return the clock read after the last progress."""
        self.last = now
        self.timer.send_within(self.step)
        for item in writes:
            if isinstance(item, bytes):
                self._send_bytes(item)
            else:
                self._send_file(item)
        return self.last

    def _send_bytes(self, data: bytes | memoryview) -> None:
        sock, session, clock = self.sock, self.session, self.clock
        while data:
            try:
                sent = sock.send(data if len(data) <= _SEND_CHUNK else data[:_SEND_CHUNK])
            except (TimeoutError, BlockingIOError):  # BlockingIOError: a kernel timeout
                self.check()
                continue
            self.last = now = clock()
            session.sent(sent, now)
            if sent == len(data):
                return
            data = memoryview(data)[sent:]

    def _send_file(self, item: FileSlice) -> None:
        try:
            if not self.settings.sendfile:
                while item.count > 0:
                    chunk = item.read_chunk(_SEND_CHUNK)
                    if not chunk:
                        raise ConnectionError("file shrank while being sent")
                    item.advance(len(chunk))
                    self._send_bytes(chunk)
                return
            self.timer.python_timeout(self.step)  # socket.sendfile waits by its own poll
            file = item.open()
            while item.count > 0:
                # socket.sendfile leaves the file positioned after what it sent, also
                # when it times out: that is the progress to count.
                file.seek(item.offset)
                try:
                    self.sock.sendfile(file, item.offset, min(item.count, _SEND_CHUNK))
                    timed_out = False
                except TimeoutError:
                    timed_out = True
                sent = file.tell() - item.offset
                if sent > 0:
                    item.advance(sent)
                    self.last = now = self.clock()
                    self.session.sent(sent, now)
                elif timed_out:
                    self.check()
                else:
                    raise ConnectionError("file shrank while being sent")
        finally:
            item.close()

    def check(self) -> None:
        """A send waited its step without progress: raise TimeoutError when waiting
        longer is not allowed."""
        now = self.clock()
        if now - self.last >= self.settings.idle_timeout:
            raise TimeoutError("peer does not read")
        stop = self.stop
        if (stop is not None and stop.is_set() and now - self.last >= self._STALLED
                and time.monotonic() - stop.since >= self.settings.shutdown_grace):
            raise TimeoutError("server stopping and the peer does not read")


class _Timer:
    """Bounds the next receive or send of a stdlib socket (see the module docstring).

    Under kernel timeouts a receive timeout is changed only when the deadline moved
    notably: set longer than the time left, it would let a call wait past its deadline,
    so it is set again when it exceeds the time left by more than 2% + 2 ms; set much
    shorter (under half), the call wakes early, finds the deadline not reached and
    waits again, so it is set again then too. A keep-alive connection's deadline
    moves by about the time between two requests, so its receives change nothing.
    A call that times out raises BlockingIOError (TimeoutError under python_timeout).
    """

    __slots__ = ("sock", "python", "receive", "send")

    def __init__(self, sock: socket.socket, sender: Sender) -> None:
        if type(sock) is not socket.socket:
            raise TypeError(f"kernel timeouts need a stdlib socket, not {type(sock)!r}: "
                            "pass bounds of its own")
        self.sock = sock
        self.python = False  # python_timeout left the socket in Python's timeout mode
        self.receive = -1.0  # the timeout in force for receives, -1: none set
        self.send = -1.0
        sock.settimeout(None)

    def receive_within(self, timeout: float) -> None:
        if self.python:
            self._blocking_again()
        elif timeout * 0.5 <= self.receive <= timeout * (1 + TIMER_SLACK_SHARE) + TIMER_SLACK_S:
            return
        self.receive = timeout
        self._set(socket.SO_RCVTIMEO, timeout)

    def send_within(self, timeout: float) -> None:
        if self.python:
            self._blocking_again()
        if self.send != timeout:
            self.send = timeout
            self._set(socket.SO_SNDTIMEO, timeout)

    def python_timeout(self, timeout: float) -> None:
        """Python's own timeout (poll before each call) until the next bound, for calls
        that do not take kernel timeouts (socket.sendfile waits with its own poll)."""
        self.sock.settimeout(timeout)
        self.python = True

    def unbound(self) -> None:
        """Nothing to do: bounds are set before each call."""

    def close(self) -> None:
        """Nothing to release."""

    def _blocking_again(self) -> None:
        self.sock.settimeout(None)
        self.python = False

    def _set(self, option: int, timeout: float) -> None:
        # A zero timeval means "no timeout": the shortest is one microsecond.
        seconds = max(timeout, 1e-6)
        self.sock.setsockopt(socket.SOL_SOCKET, option,
                             struct.pack("@ll", int(seconds), int(seconds % 1 * 1e6)))


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
