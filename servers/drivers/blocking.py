"""Serve one connection on a blocking socket: recv into a buffer, feed the core, send.

Timeouts come from the session's deadline (idle, header); a peer that does not
read what we send makes no progress for ``idle_timeout`` and is dropped, so a
blocked thread never waits forever. Sending everything before reading again is
this model's backpressure: memory per connection is bounded by one read.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import sys
import time
from collections.abc import Callable

from servers.core import FileSlice, Session, Write
from servers.settings import Settings
from servers.stop import StopSignal

_SEND_CHUNK = 1 << 20


class ConnectionSet:
    """The open connections of a process, so a graceful stop can end the idle ones.

    Stopping shuts down the read side of every connection: a worker blocked in
    recv sees end-of-file and finishes; one in the middle of a response sends it
    first. New connections added after the stop are shut down at once.

    No lock: set operations and the snapshot are atomic under the GIL, and
    :meth:`stop_all` may run inside a signal handler that interrupted :meth:`add`.
    """

    def __init__(self) -> None:
        self._socks: set[socket.socket] = set()
        self._stopped = False

    def add(self, sock: socket.socket) -> None:
        self._socks.add(sock)
        if self._stopped:
            _shutdown_read(sock)

    def discard(self, sock: socket.socket) -> None:
        self._socks.discard(sock)

    def __len__(self) -> int:
        return len(self._socks)

    def stop_all(self) -> None:
        self._stopped = True
        for sock in list(self._socks):
            _shutdown_read(sock)


def _shutdown_read(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass


def accept_until_stopped(listener: socket.socket, stop: StopSignal,
                         handle: Callable[[socket.socket], None]) -> None:
    """Accept connections and pass each, blocking, to ``handle`` until stop is set."""
    listener.setblocking(False)
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    poller.register(stop, select.POLLIN)
    while not stop.is_set():
        ready = poller.poll()
        if stop.is_set():
            break
        if any(fd == stop.fileno() for fd, _ in ready):
            # Woken by another signal through the wakeup fd (SIGCHLD in forking): drain
            # it, or poll would report it forever. A real stop writes its own byte.
            _drain(stop.fileno())
            continue
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            continue
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                _log_once(f"accept: {exc.strerror}; waiting for connections to close")
                stop.wait(0.05)  # out of descriptors: back off instead of spinning
                continue
            raise
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        handle(sock)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 256):
            pass
    except (BlockingIOError, InterruptedError):
        pass


_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        print(message, file=sys.stderr, flush=True)


def serve_connection(
    sock: socket.socket,
    new_session: Callable[[float], Session],
    settings: Settings,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run one connection to its end and close the socket."""
    session = new_session(clock())
    buf = bytearray(settings.read_size)
    view = memoryview(buf)
    pending: list[Write] = []
    try:
        while True:
            pending = session.take_output()
            if pending:
                _send_all(sock, pending, session, settings, clock)
                pending = []
            if session.closing:
                _linger_close(sock, settings)
                return
            now = clock()
            timeout = session.deadline() - now
            if timeout <= 0:
                return
            sock.settimeout(timeout)
            try:
                n = sock.recv_into(buf)
            except TimeoutError:
                if session.expired(clock()):
                    return
                continue
            if n == 0:
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


def _send_all(sock: socket.socket, writes: list[Write], session: Session, settings: Settings,
              clock: Callable[[], float]) -> None:
    """Send every write; each send must progress within the idle timeout."""
    sock.settimeout(settings.idle_timeout)
    for item in writes:
        if isinstance(item, bytes):
            data = memoryview(item)
            while data:
                sent = sock.send(data[:_SEND_CHUNK])
                data = data[sent:]
                session.touch(clock())
        else:
            try:
                while item.count > 0:
                    sent = sock.sendfile(item.file, item.offset, min(item.count, _SEND_CHUNK))
                    if sent == 0:
                        raise ConnectionError("file shrank while being sent")
                    item.advance(sent)
                    session.touch(clock())
            finally:
                item.close()


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
