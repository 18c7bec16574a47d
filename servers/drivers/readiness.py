"""One non-blocking readiness loop, any poller: the engine of select, poll and epoll.

Every connection is a non-blocking socket with a session and an output queue.
Reads go into one buffer the loop owns (the core copies what it keeps). Output
is written as far as the socket takes it; the session stops parsing past the
write high-water mark and the loop stops reading from that peer until the
output drains, then lets the session parse what it held, so a client that never
reads costs bounded memory. Under edge triggering the loop reads (until a short
read), writes and accepts until EAGAIN and remembers a paused reader, since no
new edge will come for it. When accept runs out of descriptors the listener is
left alone for a pause (:class:`servers.drivers.accepting.AcceptBackoff`).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable

from servers.core import FileSlice, Session, session_factory
from servers.drivers.accepting import AcceptBackoff
from servers.drivers.pollers import Poller
from servers.settings import Settings
from servers.stop import StopSignal

_ACCEPT_BATCH = 64
_SENDFILE_CHUNK = 1 << 20

Pending = bytes | memoryview | FileSlice


class _Conn:
    __slots__ = ("sock", "fd", "session", "out", "reading", "writing", "lingering",
                 "linger_until")

    def __init__(self, sock: socket.socket, session: Session) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.session = session
        self.out: deque[Pending] = deque()
        self.reading = True
        self.writing = False
        self.lingering = False
        self.linger_until = 0.0


class ReadinessLoop:
    """Accept, read, feed the core, write: until stopped, then drain and close."""

    def __init__(self, poller: Poller, listener: socket.socket, settings: Settings,
                 stop: StopSignal, clock: Callable[[], float] = time.monotonic) -> None:
        self.poller = poller
        self.listener = listener
        self.settings = settings
        self.stop = stop
        self.clock = clock
        self.new_session = session_factory(settings)
        self.conns: dict[int, _Conn] = {}
        self._buf = bytearray(settings.read_size)
        self._view = memoryview(self._buf)
        self._edge = poller.edge
        self._again: list[_Conn] = []  # edge mode: readers resumed without a new edge
        self._accept_again = False
        self._stopping = False
        self._stop_deadline = 0.0
        self._refused_logged = False
        self._backoff = AcceptBackoff()
        self._accept_paused_until = 0.0  # 0: the listener is watched
        shortest = min(settings.idle_timeout, settings.header_timeout)
        self._scan_every = min(1.0, max(0.05, shortest / 4))

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        lfd, sfd = self.listener.fileno(), self.stop.fileno()
        self.listener.setblocking(False)
        self.poller.register(lfd, True, False)
        self.poller.register(sfd, True, False)
        next_scan = self.clock() + self._scan_every
        try:
            while True:
                now = self.clock()
                if self._stopping and (not self.conns or now >= self._stop_deadline):
                    break
                if self._accept_paused_until and now >= self._accept_paused_until:
                    self._resume_accepting()
                busy = self._again or self._accept_again
                wake = next_scan
                if self._accept_paused_until:
                    wake = min(wake, self._accept_paused_until)
                timeout = 0.0 if busy else max(0.0, wake - now)
                for fd, readable, writable, hangup in self.poller.poll(timeout):
                    if fd == lfd:
                        self._accept()
                    elif fd == sfd:
                        self._begin_stop()
                    else:
                        conn = self.conns.get(fd)
                        if conn is not None and writable:
                            self._pump(conn)
                        if readable and self.conns.get(fd) is conn is not None:
                            self._read(conn, hangup)
                if self._accept_again and not self._stopping:
                    self._accept()
                if self._again:
                    again, self._again = self._again, []
                    for conn in again:
                        if self.conns.get(conn.fd) is conn:
                            self._read(conn)
                now = self.clock()
                if now >= next_scan:
                    self._expire(now)
                    next_scan = now + self._scan_every
        finally:
            for conn in list(self.conns.values()):
                self._close(conn)
            self.poller.close()

    def _begin_stop(self) -> None:
        try:
            os.read(self.stop.fileno(), 64)
        except BlockingIOError:
            pass
        if self._stopping or not self.stop.is_set():
            return
        self._stopping = True
        self._stop_deadline = self.clock() + self.settings.shutdown_grace
        if not self._accept_paused_until:
            self.poller.unregister(self.listener.fileno())
        self._accept_paused_until = 0.0
        self.listener.close()
        for conn in list(self.conns.values()):
            if conn.out:
                conn.session.closing = True  # finish the response in flight, then close
                self._set_reading(conn, False)
            else:
                self._close(conn)

    # -- accepting ---------------------------------------------------------------------

    def _accept(self) -> None:
        self._accept_again = False
        if self._stopping or self._accept_paused_until:
            return
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                pause = self._backoff.failed(exc)
                if pause is None:
                    raise
                # The listener stays readable: stop watching it for the pause, or the
                # loop would spin on it.
                self.poller.unregister(self.listener.fileno())
                self._accept_paused_until = self.clock() + pause
                return
            self._backoff.succeeded()
            if self.poller.max_fd is not None and sock.fileno() > self.poller.max_fd:
                self._log(f"{self.poller.name}: descriptor {sock.fileno()} is above "
                          f"FD_SETSIZE; refusing connections until some close")
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock, self.new_session(self.clock()))
            self.conns[conn.fd] = conn
            self.poller.register(conn.fd, True, False)
        self._accept_again = self._edge  # more may wait, and no new edge would say so

    def _resume_accepting(self) -> None:
        self._accept_paused_until = 0.0
        self.poller.register(self.listener.fileno(), True, False)
        self._accept_again = True  # try at once: under edge triggering no new edge may come

    def _log(self, message: str) -> None:
        if not self._refused_logged:
            self._refused_logged = True
            print(message, file=sys.stderr, flush=True)

    # -- reading -----------------------------------------------------------------------

    def _read(self, conn: _Conn, hangup: bool = False) -> None:
        sock, view = conn.sock, self._view
        while True:
            if conn.lingering:
                self._drain_lingering(conn)
                return
            if not conn.reading:
                return
            try:
                n = sock.recv_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(conn)
                return
            if n == 0:
                conn.session.eof_received(self.clock())
                conn.lingering = False
                self._pump(conn, eof=True)
                return
            conn.session.received(view[:n], self.clock())
            self._pump(conn)
            if not self._edge or (n < len(self._buf) and not hangup):
                # Level-triggered: the poller will say if more is waiting. Edge-triggered:
                # a short read means the receive queue was empty, and data arriving later
                # raises a new edge, so the recv that would only return EAGAIN is skipped;
                # but a hang-up that came with the data raises no further edge, so then
                # the loop reads on to the end of file.
                return

    def _drain_lingering(self, conn: _Conn) -> None:
        while True:
            try:
                n = conn.sock.recv_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                n = 0
            if n == 0:
                self._close(conn)
                return

    # -- writing -----------------------------------------------------------------------

    def _pump(self, conn: _Conn, eof: bool = False) -> None:
        """Move the session's output to the queue and write what the socket takes; when
        all is out, let the session parse what it held. Then set interest, or finish."""
        session, out = conn.session, conn.out
        while True:
            out.extend(session.take_output())
            if out and not self._flush(conn):
                return  # closed
            if out or not session.paused or not session.resume(self.clock()):
                break
        if out:
            self._set_writing(conn, True)
            self._set_reading(conn, session.wants_input)
        elif session.closing:
            self._set_writing(conn, False)
            self._finish(conn, eof)
        else:
            self._set_writing(conn, False)
            self._set_reading(conn, session.wants_input)

    def _flush(self, conn: _Conn) -> bool:
        """Write the queue until the socket is full; False if the connection was closed."""
        sock, out, session = conn.sock, conn.out, conn.session
        try:
            while out:
                item = out[0]
                if isinstance(item, FileSlice):
                    sent = os.sendfile(conn.fd, item.fileno(), item.offset,
                                       min(item.count, _SENDFILE_CHUNK))
                    if sent == 0:
                        raise ConnectionError("file shrank while being sent")
                    item.advance(sent)
                    if item.count == 0:
                        item.close()
                        out.popleft()
                else:
                    sent = sock.send(item)
                    if sent < len(item):
                        out[0] = memoryview(item)[sent:]
                    else:
                        out.popleft()
                session.sent(sent, self.clock())
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)
            return False
        return True

    def _finish(self, conn: _Conn, eof: bool) -> None:
        """All output is out and the session is done: close, lingering if the peer may
        still send (closing with unread input would reset the last response)."""
        if eof or self._stopping:
            self._close(conn)
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.lingering = True
        conn.linger_until = self.clock() + self.settings.linger_seconds
        self._set_reading(conn, True)
        self._drain_lingering(conn)

    # -- interest and teardown ---------------------------------------------------------

    def _set_reading(self, conn: _Conn, reading: bool) -> None:
        if conn.reading != reading and conn.fd in self.conns:
            conn.reading = reading
            self.poller.modify(conn.fd, reading, conn.writing)
            if reading and self._edge:
                self._again.append(conn)  # what arrived meanwhile raised no new edge

    def _set_writing(self, conn: _Conn, writing: bool) -> None:
        if conn.writing != writing and conn.fd in self.conns:
            conn.writing = writing
            self.poller.modify(conn.fd, conn.reading, writing)

    def _expire(self, now: float) -> None:
        for conn in list(self.conns.values()):
            if conn.lingering:
                if now >= conn.linger_until:
                    self._close(conn)
            elif conn.session.expired(now):
                self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]
            try:
                self.poller.unregister(conn.fd)
            except (OSError, KeyError, ValueError):
                pass
        for item in conn.out:
            if isinstance(item, FileSlice):
                item.close()
        conn.out.clear()
        conn.sock.close()
