"""One non-blocking readiness loop, any poller: the engine of select, poll and epoll.

Every connection is a non-blocking socket with a
:class:`~servers.drivers.connection.Connection`: its session, output queue and
life cycle (backpressure, finishing, lingering, expiry, stop) are that shared
layer's; this loop only waits on the poller and moves bytes. Reads go into one
buffer the loop owns (the core copies what it keeps); output is written as far
as the socket takes it. Under edge triggering the loop reads (until a short
read), writes and accepts until EAGAIN and remembers a paused reader, since no
new edge will come for it. When accept runs out of descriptors the listener is
left alone for a pause (:class:`servers.drivers.accepting.AcceptBackoff`).

With ``--redis`` the guestbook's backend calls are performed in the same poller:
a pool of up to ``--backend-pool`` non-blocking Redis connections, one call on
each at a time, calls beyond it waiting first in, first out. Which connection
carries which call, the replies, the waiters, deadlines and failures are kept
by :class:`servers.drivers.redis_pool.RedisPool`; the loop only connects, writes
and reads those sockets when the poller says so, and performs the pool's
effects once per turn, after the events. A client waiting for its call is not
read (bounded memory) and not expired for idleness (the pool bounds the call);
one that goes away cancels its call, whose replies are then dropped. Under
select a Redis socket counts against FD_SETSIZE too: a call that cannot get a
descriptor below it fails (503) and the loop goes on.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
import time
from collections.abc import Callable

from servers.backend import Backend
from servers.core import FileSlice, Session, session_factory
from servers.core.guestbook import BackendCall
from servers.drivers.accepting import ACCEPT_BATCH, AcceptBackoff
from servers.drivers.connection import SocketConnection
from servers.drivers.pollers import Poller
from servers.drivers.redis_connect import RETRY_S, unix_connect
from servers.drivers.redis_pool import Link, RedisPool
from servers.settings import Settings
from servers.stop import StopSignal

_SENDFILE_CHUNK = 1 << 20


class _Conn(SocketConnection):
    """A client socket: written until EAGAIN, interest set in the loop's poller."""

    __slots__ = ("loop",)

    def __init__(self, sock: socket.socket, session: Session, loop: ReadinessLoop) -> None:
        super().__init__(session, loop.settings, loop.pool is not None, sock)
        self.loop = loop

    def _write(self, now: float) -> None:
        sock, out, session = self.sock, self.out, self.session
        try:
            while out:
                item = out[0]
                if isinstance(item, FileSlice):
                    sent = item.write_some(self.fd, _SENDFILE_CHUNK, self.settings.sendfile)
                    out.sent(sent)
                else:
                    sent = sock.send(item)
                    if sent == len(item):
                        out.popleft()
                    else:
                        out.sent(sent)
                session.sent(sent, now)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.loop._close(self)

    def _interest(self, reading: bool, writing: bool) -> None:
        if self.closed:
            return
        loop = self.loop
        if reading and not self.reading and loop._edge:
            loop._again.append(self)  # what arrived meanwhile raised no new edge
        self.reading = reading
        self.writing = writing
        loop.poller.modify(self.fd, reading, writing)

    def _close(self) -> None:
        self.loop._close(self)

    def _perform(self, call: BackendCall) -> None:
        loop = self.loop
        assert loop.pool is not None
        loop.pool.submit(self, call, loop.clock())


class _RedisSocket:
    """The loop's side of a pool :class:`~servers.drivers.redis_pool.Link`."""

    __slots__ = ("sock", "fd", "writing")

    def __init__(self, sock: socket.socket, writing: bool) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.writing = writing


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
        self.pool = RedisPool.for_settings(settings)
        self._links: dict[int, Link] = {}  # Redis sockets by descriptor
        self._backend_logged: set[str] = set()
        shortest = min(settings.idle_timeout, settings.header_timeout)
        self._scan_every = min(1.0, max(0.05, shortest / 4))
        self._connect_retry: list[Link] = []  # unix connects that met a full backlog
        self._connect_retry_at = 0.0
        self._now = clock()

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
                    if self.pool is not None and self.conns:
                        # The grace is over: calls still in flight fail, so their clients
                        # get a 503 (as far as their sockets take it) rather than nothing.
                        self.pool.close()
                        self._drive_pool()
                    break
                if self._accept_paused_until and now >= self._accept_paused_until:
                    self._resume_accepting()
                busy = self._again or self._accept_again
                wake = next_scan
                if self._accept_paused_until:
                    wake = min(wake, self._accept_paused_until)
                if self._stopping:
                    wake = min(wake, self._stop_deadline)
                if self._connect_retry:
                    wake = min(wake, self._connect_retry_at)
                timeout = 0.0 if busy else max(0.0, wake - now)
                events = self.poller.poll(timeout)
                # One clock reading per turn for the reads and writes of its events: the
                # activity times behind idle and header deadlines need no finer grain.
                self._now = self.clock()
                for fd, readable, writable, hangup in events:
                    if fd == lfd:
                        self._accept()
                    elif fd == sfd:
                        self._begin_stop()
                    else:
                        conn = self.conns.get(fd)
                        if conn is None:
                            link = self._links.get(fd)
                            if link is not None:
                                self._link_event(link, readable, writable, hangup)
                            continue
                        if writable and conn.out:
                            # (Edge triggering reports writability with nothing queued:
                            # every pump leaves an empty queue with nothing left to do.)
                            conn.pump(self._now)
                        if readable and not conn.closed:
                            self._read(conn, hangup)
                if self._accept_again and not self._stopping:
                    self._accept()
                if self._again:
                    again, self._again = self._again, []
                    for conn in again:
                        if not conn.closed:
                            self._read(conn)
                now = self.clock()
                if self._connect_retry and now >= self._connect_retry_at:
                    retry, self._connect_retry = self._connect_retry, []
                    for link in retry:
                        if link.connecting and link.handle is None:  # not expired meanwhile
                            self._link_open(link)
                if now >= next_scan:
                    self._expire(now)
                    if self.pool is not None:
                        self.pool.expire(now)
                    next_scan = now + self._scan_every
                if self.pool is not None and self.pool.has_effects:
                    self._drive_pool()
        finally:
            for conn in list(self.conns.values()):
                self._close(conn)
            if self.pool is not None:
                self.pool.close()
                self._drive_pool()
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
        now = self.clock()
        for conn in list(self.conns.values()):
            if conn.stop(now):
                self._close(conn)

    # -- accepting ---------------------------------------------------------------------

    def _accept(self) -> None:
        self._accept_again = False
        if self._stopping or self._accept_paused_until:
            return
        accepted, pause = self._backoff.accept_batch(self.listener)
        for sock in accepted:
            if self.poller.max_fd is not None and sock.fileno() > self.poller.max_fd:
                self._log(f"{self.poller.name}: descriptor {sock.fileno()} is above "
                          f"FD_SETSIZE; refusing connections until some close")
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock, self.new_session(self.clock()), self)
            self.conns[conn.fd] = conn
            self.poller.register(conn.fd, True, False)
        if pause is not None:
            # The listener stays readable: stop watching it for the pause, or the loop
            # would spin on it.
            self.poller.unregister(self.listener.fileno())
            self._accept_paused_until = self.clock() + pause
        elif len(accepted) == ACCEPT_BATCH:
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
                if hangup and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    # Reset while not read (waiting for its backend call, or over the
                    # mark): errors are reported whatever the interest, so drop it now
                    # rather than be told again on every turn.
                    self._close(conn)
                return
            try:
                n = sock.recv_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(conn)
                return
            if n == 0:
                conn.eof(self._now)
                return
            conn.session.received(view[:n], self._now)
            conn.pump(self._now)
            if not self._edge or (n < len(self._buf) and not hangup) or conn.closed:
                # Level-triggered: the poller will say if more is waiting. Edge-triggered:
                # a short read means the receive queue was empty, and data arriving later
                # raises a new edge, so the recv that would only return EAGAIN is skipped;
                # but a hang-up that came with the data raises no further edge, so then
                # the loop reads on to the end of file.
                return

    def _drain_lingering(self, conn: _Conn) -> None:
        """Read and drop what the peer still sends; close at its end of stream or once
        the linger has taken all it may (which bounds this loop)."""
        while True:
            try:
                n = conn.sock.recv_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                n = 0
            if n == 0 or conn.lingered(n):
                self._close(conn)
                return

    # -- timeouts and teardown ---------------------------------------------------------

    def _expire(self, now: float) -> None:
        # A client waiting for its backend call is not expired: its session's deadline
        # is infinite meanwhile (the pool bounds the call).
        for conn in list(self.conns.values()):
            if conn.expired(now):
                self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if not conn.release():
            return
        if self.pool is not None:
            self.pool.cancel(conn)
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]
            self._unwatch(conn.fd)
        conn.sock.close()

    def _unwatch(self, fd: int) -> None:
        """Take ``fd`` out of the poller before its socket is closed."""
        try:
            self.poller.unregister(fd)
        except (OSError, KeyError, ValueError):
            pass

    # -- the backend (Redis) -----------------------------------------------------------

    def _drive_pool(self) -> None:
        """Perform what the pool asks, until it asks nothing (a finished call's session
        may queue the next call, whose effects are performed in the same turn)."""
        assert self.pool is not None
        self.pool.perform(_Conn.backend_done, self._link_write, self._link_open,
                          self._link_close)

    def _link_open(self, link: Link) -> None:
        """Start a non-blocking connect; a unix socket usually connects at once."""
        assert self.pool is not None and self.settings.redis is not None
        family, address = self.settings.redis.socket_args()
        try:
            if family == socket.AF_UNIX:
                sock = unix_connect(address)  # type: ignore[arg-type]
                if sock is None:
                    # Redis's accept backlog is full (a burst of new connections): try
                    # again shortly, within the pool's connect deadline.
                    if not self._connect_retry:
                        self._connect_retry_at = self.clock() + RETRY_S
                    self._connect_retry.append(link)
                    return
            else:
                sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self._log_backend("socket", f"{self.poller.name}: cannot open a Redis "
                                  f"connection ({exc}); guestbook calls fail (503) meanwhile")
            self.pool.failed(link, self.clock())
            return
        limit = self.poller.max_fd
        if limit is not None and sock.fileno() > limit:
            self._log_backend("fd_setsize", f"{self.poller.name}: a Redis connection would "
                              f"take descriptor {sock.fileno()}, above FD_SETSIZE; guestbook "
                              f"calls fail (503) until some connections close")
            sock.close()
            self.pool.failed(link, self.clock())
            return
        err = 0
        if family != socket.AF_UNIX:  # a unix socket is connected (or failed) already
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                err = sock.connect_ex(address)  # type: ignore[arg-type]
            except OSError:
                err = errno.EIO
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.pool.failed(link, self.clock())
            return
        handle = _RedisSocket(sock, writing=err != 0)
        link.handle = handle
        self._links[handle.fd] = link
        self.poller.register(handle.fd, err == 0, err != 0)
        if err == 0:
            self.pool.connected(link, self.clock())

    def _link_event(self, link: Link, readable: bool, writable: bool, hangup: bool) -> None:
        assert self.pool is not None
        if link.connecting:
            self._link_connect_done(link)
            return
        if writable and link.output:
            self._link_write(link)
        if readable and link.alive:
            self._link_read(link, hangup)

    def _link_connect_done(self, link: Link) -> None:
        assert self.pool is not None
        sock = link.handle.sock
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.pool.failed(link, self.clock())
            return
        try:
            sock.getpeername()
        except OSError:
            return  # not connected yet
        self._link_interest(link, False)
        self.pool.connected(link, self.clock())

    def _link_write(self, link: Link) -> None:
        """Write the call's commands as far as the socket takes them."""
        assert self.pool is not None
        if not link.alive or link.connecting:
            return
        sock = link.handle.sock
        try:
            while link.output:
                self.pool.sent(link, sock.send(link.output))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.pool.failed(link, self.clock())
            return
        self._link_interest(link, bool(link.output))

    def _link_read(self, link: Link, hangup: bool) -> None:
        assert self.pool is not None
        sock = link.handle.sock
        while link.alive:
            try:
                n = sock.recv_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                n = 0
            if n == 0:
                self.pool.failed(link, self.clock())  # Redis closed it, or it broke
                return
            self.pool.received(link, self._view[:n], self.clock())
            if not self._edge or (n < len(self._buf) and not hangup):
                return  # as for clients (see _read)

    def _link_interest(self, link: Link, writing: bool) -> None:
        handle = link.handle
        if handle.writing != writing:
            handle.writing = writing
            self.poller.modify(handle.fd, True, writing)

    def _link_close(self, link: Link) -> None:
        handle, link.handle = link.handle, None
        if handle is None:
            return
        if self._links.get(handle.fd) is link:
            del self._links[handle.fd]
            self._unwatch(handle.fd)
        handle.sock.close()

    def _log_backend(self, kind: str, message: str) -> None:
        if kind not in self._backend_logged:
            self._backend_logged.add(kind)
            print(message, file=sys.stderr, flush=True)


class ReadinessBackend(Backend):
    """A backend that is this loop on one poller (select, poll, epoll): it names the
    poller; the guestbook's pool and sendfile come with the loop."""

    guestbook = True
    backend_pool = True

    def can_sendfile(self, options: argparse.Namespace) -> bool:
        return True

    def poller(self, options: argparse.Namespace) -> Poller:
        raise NotImplementedError

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        ReadinessLoop(self.poller(options), listener, settings, stop).run()
