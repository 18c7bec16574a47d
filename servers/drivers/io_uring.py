"""The io_uring completion loop: accept, recv, send and file reads submitted to one ring.

The loop never asks whether a socket is ready: it asks for the operation and is
told its result. Every operation carries, as its user data, the callable that
handles its completion (one dispatch scheme for clients, Redis connections, the
listener and the stop pipe). One multishot accept (re-armed single-shot accepts
where the kernel lacks it) feeds connections. A client is a
:class:`~servers.drivers.connection.SocketConnection`: its output queue and its life
cycle (backpressure, finishing, lingering within ``linger_seconds`` and
``linger_bytes``, expiry, stop) are that shared layer's; this loop only arms
recvs while the connection reads and keeps at most one send in flight on it
(two sends in flight on one socket could complete out of order), prepared in
one place (:meth:`UringLoop._send`). Two receive modes:

- single-shot: a recv into a buffer the connection owns, re-armed after each
  completion. Memory is a buffer per connection, armed or not.
- multishot: one multishot recv per connection selecting buffers from a shared
  provided-buffer ring; a buffer goes back to the kernel as soon as the core has
  copied what it keeps. Memory is the shared ring, whatever the number of
  connections.

Files are read+send, both on the ring: a read of the next chunk into a buffer
the connection keeps, then a send of what it read (the binding exposes no
splice, so there is no sendfile(2)); a short send of a chunk reads the rest
again. Backpressure: while the connection does not read, no recv is re-armed
(multishot: the armed one is cancelled, submitted at the end of the batch of
completions that paused it) until the output drains; then the session parses
what it held. What a
multishot recv still delivers before its cancel lands is kept unparsed: at most
that one batch, itself bounded by the provided-buffer ring (16 MiB, shared by
all connections). Timeouts are a periodic scan of the sessions' deadlines, as
in the readiness loop. The stop pipe is watched with a poll operation on the
ring, so a signal ends the wait. Running out of descriptors at accept pauses
accepting (:class:`servers.drivers.accepting.AcceptBackoff`).

With ``--redis`` the guestbook's backend calls go through the same ring: a pool
of up to ``--backend-pool`` Redis connections per loop, one call on each at a
time, calls beyond it waiting first in, first out
(:class:`servers.drivers.redis_pool.RedisPool` keeps that bookkeeping, free of
I/O). A Redis connection's connect, send and recv are submitted to the ring and
handled on completion like a client's: the connect as a ring operation on TCP
(a host name is resolved once, at start), then one single-shot recv kept armed
into a buffer the connection owns (16 KiB: Redis only answers what it was
asked, so the shared provided-buffer ring is left to the clients), and the
call's commands in one send. The binding takes no AF_UNIX address, so a unix
socket is connected by a non-blocking ``connect(2)``: it completes at once, or
says EAGAIN while Redis's accept backlog is full and is tried again every 2 ms,
within the pool's connect timeout. A client waiting for its call is not read
(bounded memory) and not idle (its session's clock pauses; the pool bounds the
call); one that goes away cancels its call, whose replies are then dropped. On
a graceful stop, calls still in flight at the end of the grace fail, and their
clients get a 503 in one last short turn before the loop closes.

The binding (``uring_api``) is handed in by the backend, which loads and probes
it (:mod:`servers.io_uring_srv`); this module imports nothing of it.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from servers.core import FileSlice, Session, session_factory
from servers.core.guestbook import BackendCall
from servers.drivers.accepting import AcceptBackoff
from servers.drivers.connection import SocketConnection
from servers.drivers.redis_pool import Link, RedisPool
from servers.settings import Settings
from servers.stop import StopSignal

_RING_ENTRIES = 1024
_CQ_ENTRIES = 16384
_SINGLE_RECV_SIZE = 8 * 1024  # per connection in single mode: 10,000 clients = 80 MiB
_GROUP_BUFFER_SIZE = 16 * 1024
_GROUP_BUFFERS = 1024  # shared in multishot mode: 16 MiB whatever the connection count
_SEND_JOIN = 256 * 1024  # queued bytes joined into one send, at most
_FILE_CHUNK = 256 * 1024  # allocated per connection on its first file, kept
_REDIS_RECV_SIZE = 16 * 1024  # per Redis connection: 1,024 of them = 16 MiB
_LAST_WORDS = 0.2  # after the grace: seconds for the 503s of calls failed at the stop
_CONNECT_RETRY = 0.002  # a unix connect refused for a full backlog: tried again after
_MSG_NOSIGNAL = socket.MSG_NOSIGNAL
_MORE = 1 << 1  # IORING_CQE_F_MORE

Done = Callable[[Any], None]  # handles one completion: the operation's user data


def _ignore(c: Any) -> None:
    """The completion of an operation whose outcome does not matter (a cancel)."""


def ring_flags(uring: Any) -> int:
    """Single issuer + deferred task running where accepted: completions are processed
    when this thread waits, not by interrupting it."""
    for flags in (uring.IORING_SETUP_SINGLE_ISSUER | uring.IORING_SETUP_DEFER_TASKRUN,
                  uring.IORING_SETUP_COOP_TASKRUN, 0):
        if uring.probe(flags=flags):
            return flags
    return 0


class _Conn(SocketConnection):
    """A client socket and the ring operations in flight on it: one recv armed while
    it is read, one send (or a file chunk's read, then its send) while ``in_flight``.
    Its completion handlers are bound once, at accept, and dropped at close (they
    refer back to it)."""

    __slots__ = ("loop", "ring", "buf", "view", "sending", "recv_op", "cancelling",
                 "file_buf", "recv_done", "send_done", "read_done")

    waits_writable = False  # completions need no writability

    def __init__(self, loop: UringLoop, sock: socket.socket, session: Session,
                 buf: bytearray | None) -> None:
        super().__init__(session, loop.settings, loop.pool is not None, sock)
        self.loop = loop
        self.ring = loop.ring
        self.buf = buf
        self.view = memoryview(buf) if buf is not None else None
        self.sending: bytes | memoryview | None = None  # the send in flight
        self.recv_op: Any = None  # the armed recv, if any
        self.cancelling = False  # a cancel of the armed multishot recv is on its way
        self.file_buf: bytearray | None = None
        self.recv_done: Done = partial(loop._on_recv, self)
        self.send_done: Done = partial(loop._on_send, self)
        self.read_done: Done = partial(loop._on_read, self)

    def _write(self, now: float) -> None:
        """Start the next operation of the output, unless one is in flight: a send of
        queued bytes (adjacent ones joined), or the read of a file's next chunk (sent
        when the read completes). The queue keeps both until the send completes."""
        if self.in_flight:
            return
        out = self.out
        head = out[0]
        if type(head) is not bytes and isinstance(head, FileSlice):  # bytes: the common case
            try:
                fd = head.fileno()
            except OSError:
                self.loop._close(self)  # gone or replaced since its head was sent
                return
            if self.file_buf is None:
                self.file_buf = bytearray(_FILE_CHUNK)
            size = min(head.count, _FILE_CHUNK)
            self.in_flight = True
            self.ring.prepare_read(fd, memoryview(self.file_buf)[:size], head.offset,
                                   self.read_done)
            return
        self.in_flight = True
        self.loop._send(self, head if len(out) == 1 else out.gather(_SEND_JOIN))

    def _interest(self, reading: bool, writing: bool) -> None:
        """Completions need no writability, so ``writing`` is ignored (and stays false):
        only reading matters, a recv armed or not (multishot: the armed one cancelled)."""
        if reading == self.reading:
            return
        self.reading = reading
        if reading:
            self.loop._arm_recv(self)
        else:
            self.loop._stop_reading(self)

    def _close(self) -> None:
        self.loop._close(self)

    def _perform(self, call: BackendCall) -> None:
        loop = self.loop
        assert loop.pool is not None
        loop.pool.submit(self, call, loop.clock())  # performed after the batch


class _RedisConn:
    """The loop's side of a pool :class:`~servers.drivers.redis_pool.Link`: its socket
    and the ring operations in flight on it."""

    __slots__ = ("link", "sock", "fd", "buf", "connect_op", "recv_op", "sending", "closed",
                 "connect_done", "recv_done", "send_done")

    def __init__(self, link: Link, sock: socket.socket) -> None:
        self.link = link
        self.sock = sock
        self.fd = sock.fileno()
        self.buf: bytearray | None = None  # allocated once connected
        self.connect_op: Any = None
        self.recv_op: Any = None
        self.sending: bytes | memoryview | None = None
        self.closed = False
        self.connect_done: Done = _ignore
        self.recv_done: Done = _ignore
        self.send_done: Done = _ignore


class UringLoop:
    """Submit, wait, hand each completion to its handler: until stopped, then drain and
    close. ``uring`` is the loaded binding; ``multishot_recv`` the receive mode the
    backend resolved (multishot only where the kernel has it)."""

    def __init__(self, uring: Any, listener: socket.socket, settings: Settings,
                 stop: StopSignal, multishot_recv: bool, multishot_accept: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # Created here, on the thread (and in the process) that drives it.
        self.ring = uring.Ring(entries=_RING_ENTRIES, flags=ring_flags(uring),
                               cq_entries=_CQ_ENTRIES)
        self.listener = listener
        self.settings = settings
        self.stop = stop
        self.clock = clock
        self.new_session = session_factory(settings)
        self.multishot_accept = multishot_accept
        self.group = (self.ring.create_buf_group(_GROUP_BUFFER_SIZE, _GROUP_BUFFERS)
                      if multishot_recv else None)
        self.conns: set[_Conn] = set()
        self.accept_op: Any = None
        self.backoff = AcceptBackoff()
        self.accept_resume_at = 0.0  # while out of descriptors: when to accept again
        self.stopping = False
        self.stop_deadline = 0.0
        self.needs_submit = False
        self.pool = RedisPool.for_settings(settings)
        self.pool_closed = False
        self.backend_logged: set[str] = set()
        self.redis_target = self._redis_target() if self.pool is not None else None
        self.redis_retry: list[_RedisConn] = []  # unix connects to try again (EAGAIN)
        shortest = min(settings.idle_timeout, settings.header_timeout)
        self.scan_every = min(1.0, max(0.05, shortest / 4))
        self.now = clock()  # read once per batch of completions

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        ring = self.ring
        self._arm_accept()
        ring.prepare_poll(self.stop.fileno(), select.POLLIN, self._on_stop)
        ring.submit()
        now = self.clock()
        next_scan = now + self.scan_every
        try:
            while True:
                # ``now``: read once per turn, right after the wait (the deadlines tested
                # here and the wait's timeout can be late by one batch's processing).
                if self.stopping and (not self.conns or now >= self.stop_deadline):
                    if self.pool is not None and not self.pool_closed:
                        # The grace is over: calls still in flight fail, and their
                        # clients get a 503 in one last short turn, not a silent close.
                        self.pool_closed = True
                        in_flight = any(self.pool.busy(conn) for conn in self.conns)
                        self.pool.close()
                        self._drive_pool()
                        if in_flight and self.conns:
                            self.stop_deadline = now + _LAST_WORDS
                            continue
                    break
                if self.accept_resume_at and now >= self.accept_resume_at:
                    self.accept_resume_at = 0.0
                    if self.accept_op is None:
                        self._arm_accept()
                        ring.submit()
                wake = next_scan  # the rarer wake-ups tested one by one: no min() per turn
                if self.accept_resume_at:
                    wake = min(wake, self.accept_resume_at)
                if self.stopping:
                    wake = min(wake, self.stop_deadline)
                if self.redis_retry:
                    wake = min(wake, now + _CONNECT_RETRY)
                wait = wake - now
                try:
                    batch = ring.wait(wait if wait > 0.0 else 0.0)
                except InterruptedError:
                    now = self.clock()
                    continue  # a signal: its handler has run; a stop shows as the poll
                now = self.clock()
                if batch:
                    # One clock reading per batch for the clients' reads and sends: the
                    # activity times behind idle and header deadlines need no finer grain.
                    self.now = now
                    for c in batch:
                        c.user_data(c)
                if self.redis_retry:
                    self._retry_connects()
                if self.pool is not None and self.pool.has_effects:
                    self._drive_pool()
                if self.needs_submit:
                    # Cancels queued without a waiter are not flushed by wait(): submit now.
                    self.needs_submit = False
                    ring.submit()
                if now >= next_scan:
                    self._expire(now)
                    if self.pool is not None:
                        self.pool.expire(now)
                        self._drive_pool()
                    next_scan = now + self.scan_every
        finally:
            for conn in list(self.conns):
                self._close(conn)
            if self.pool is not None:
                self.pool.close()
                self._drive_pool()
            if self.group is not None:
                self.group.close()
            ring.close()

    # -- accepting and stopping --------------------------------------------------------

    def _arm_accept(self) -> None:
        if self.stopping:
            return
        flags = socket.SOCK_CLOEXEC
        lfd = self.listener.fileno()
        if self.multishot_accept:
            self.accept_op = self.ring.prepare_accept_multishot(lfd, flags, self._on_accept)
        else:
            self.accept_op = self.ring.prepare_accept(lfd, flags, self._on_accept)

    def _on_accept(self, c: Any) -> None:
        res = c.res
        more = self.multishot_accept and c.flags & _MORE
        if not more:
            self.accept_op = None
        if res >= 0:
            self.backoff.succeeded()
            self._accepted(res)
            if not more:
                self._arm_accept()
            return
        pause = self.backoff.failed(OSError(-res, os.strerror(-res)))
        if pause is not None:
            if self.accept_op is not None:
                self.ring.prepare_cancel_nowait(self.accept_op)
                self.needs_submit = True
                self.accept_op = None
            if not self.stopping:
                self.accept_resume_at = self.clock() + pause
        elif not more and -res != errno.ECANCELED:
            self._arm_accept()

    def _accepted(self, fd: int) -> None:
        sock = socket.socket(fileno=fd)
        if self.stopping:
            sock.close()
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = None if self.group is not None else bytearray(_SINGLE_RECV_SIZE)
        conn = _Conn(self, sock, self.new_session(self.clock()), buf)
        self.conns.add(conn)
        self._arm_recv(conn)

    def _on_stop(self, c: Any) -> None:
        try:
            os.read(self.stop.fileno(), 64)
        except BlockingIOError:
            pass
        if not self.stop.is_set():  # another signal's wake-up byte: keep watching
            self.ring.prepare_poll(self.stop.fileno(), select.POLLIN, self._on_stop)
            return
        self.stopping = True
        now = self.clock()
        self.stop_deadline = now + self.settings.shutdown_grace
        if self.accept_op is not None:
            self.ring.prepare_cancel(self.accept_op, _ignore)
            self.accept_op = None
        self.accept_resume_at = 0.0
        for conn in list(self.conns):
            if conn.stop(now):
                self._close(conn)

    # -- receiving ---------------------------------------------------------------------

    def _arm_recv(self, conn: _Conn) -> None:
        if conn.recv_op is not None or conn.closed:
            return
        if self.group is not None:
            conn.cancelling = False
            conn.recv_op = self.ring.prepare_recv_multishot(conn.fd, self.group, 0,
                                                            conn.recv_done)
        else:
            conn.recv_op = self.ring.prepare_recv(conn.fd, conn.buf, 0, conn.recv_done)

    def _stop_reading(self, conn: _Conn) -> None:
        """Single shot: simply not re-armed. Multishot: the armed recv is cancelled; what
        it still delivers before the cancel lands is processed (a bounded overshoot)."""
        if self.group is not None and conn.recv_op is not None and not conn.cancelling:
            conn.cancelling = True
            self.ring.prepare_cancel_nowait(conn.recv_op)
            self.needs_submit = True

    def _on_recv(self, conn: _Conn, c: Any) -> None:
        res = c.res
        multishot = self.group is not None
        if not multishot or not c.flags & _MORE:
            conn.recv_op = None
        if res > 0:
            if multishot:
                result = c.result
                data = memoryview(result)
            else:
                data = conn.view[:res]
            try:
                if conn.closed:
                    return
                if not conn.lingering:
                    now = self.now
                    conn.session.received(data, now)
                    conn.pump(now)
                elif conn.lingered(res):  # after the last response: read and dropped
                    self._close(conn)
                    return
            finally:
                if multishot:
                    data.release()
                    result.close()  # the buffer goes back to the kernel's ring now
        elif conn.closed:
            return
        elif res == 0:
            conn.eof(self.now)
            return
        elif -res not in (errno.ENOBUFS, errno.ECANCELED):
            self._close(conn)
            return
        if conn.recv_op is None and conn.reading and not conn.closed:
            self._arm_recv(conn)  # single shot, or a multishot recv that ended

    # -- sending -----------------------------------------------------------------------

    def _send(self, target: _Conn | _RedisConn, data: bytes | memoryview) -> None:
        """The one place a send is prepared, for clients and Redis alike: it is in flight
        (``target.sending``) until its completion, and the only one on that socket."""
        target.sending = data
        self.ring.prepare_send(target.fd, data, _MSG_NOSIGNAL, target.send_done)

    def _on_read(self, conn: _Conn, c: Any) -> None:
        """A chunk of the head file slice is in the connection's file buffer: send it
        (the slice advances when the send completes)."""
        if conn.closed:
            return
        res = c.res
        if res <= 0:
            self._close(conn)  # a read error, or the file shrank: the length cannot be kept
            return
        assert conn.file_buf is not None
        # The buffer is not read into again before this send completes.
        self._send(conn, memoryview(conn.file_buf)[:res])

    def _on_send(self, conn: _Conn, c: Any) -> None:
        conn.sending = None
        conn.in_flight = False
        if conn.closed:
            return
        res = c.res
        if res < 0:
            self._close(conn)
            return
        # Off the queue; then the rest of a short send, the next output, what the session
        # held, or the finish.
        conn.pump(self.now, False, res)

    # -- timeouts and teardown ---------------------------------------------------------

    def _expire(self, now: float) -> None:
        for conn in list(self.conns):
            if conn.expired(now):
                self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if not conn.release():
            return
        self.conns.discard(conn)
        if self.pool is not None:
            self.pool.cancel(conn)  # a call in flight: its replies are dropped
        # Operations in flight keep their handlers; the connection forgets them, which
        # ends the reference cycle between the two.
        conn.recv_done = conn.send_done = conn.read_done = _ignore
        # A recv still armed holds a reference to the socket, so closing the descriptor
        # alone would neither end it nor send FIN: shut the socket down, which completes
        # the recv (its completion then finds the connection closed).
        if conn.recv_op is not None or conn.in_flight:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            # A multishot recv goes on receiving what a peer still sends after the
            # shutdown (a lingering close cut short): it is cancelled too.
            self._stop_reading(conn)
            # An operation prepared but not yet submitted names the descriptor by number:
            # submit it while the number is still this socket's, not a reused one's.
            self.ring.submit()
        conn.sock.close()

    # -- the backend (Redis) on the same ring -----------------------------------------

    def _redis_target(self) -> tuple[int, object] | None:
        """Family and address to connect to: a host name is resolved once, here, so that
        no lookup ever blocks the loop (the ring's connect takes numeric addresses)."""
        assert self.settings.redis is not None
        family, address = self.settings.redis.socket_args()
        if family == socket.AF_UNIX:
            return family, address
        host, port = address  # type: ignore[misc]
        try:
            infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        except OSError as exc:
            self._log_backend("resolve", f"io_uring: cannot resolve the Redis host {host!r} "
                                         f"({exc}); guestbook calls fail (503)")
            return None
        return family, infos[0][4][:2]

    def _drive_pool(self) -> None:
        """Perform what the pool asks, until it asks nothing (a finished call's session
        may queue the next call, whose effects are performed in the same turn)."""
        assert self.pool is not None
        self.pool.perform(_Conn.backend_done, self._redis_send, self._redis_open,
                          self._redis_close)

    def _redis_open(self, link: Link) -> None:
        """A new Redis socket; TCP connects on the ring, a unix socket at once."""
        assert self.pool is not None
        if not link.alive:
            return  # failed before it was opened (the pool closed)
        if self.redis_target is None:
            self.pool.failed(link, self.clock())
            return
        family, address = self.redis_target
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except OSError as exc:
            self._log_backend("socket", f"io_uring: cannot open a Redis connection ({exc}); "
                                        "guestbook calls fail (503) meanwhile")
            self.pool.failed(link, self.clock())
            return
        handle = _RedisConn(link, sock)
        handle.connect_done = partial(self._on_redis_connect, handle)
        handle.recv_done = partial(self._on_redis_recv, handle)
        handle.send_done = partial(self._on_redis_send, handle)
        link.handle = handle
        if family == socket.AF_UNIX:
            self._unix_connect(handle, address)
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        handle.connect_op = self.ring.prepare_connect(handle.fd, address, handle.connect_done)

    def _unix_connect(self, handle: _RedisConn, address: object) -> None:
        """Never blocks: a unix connect completes at once, fails, or says EAGAIN (Redis's
        accept backlog is full: tried again shortly, until the pool's connect timeout
        fails the link). The socket is blocking again for the ring's operations."""
        assert self.pool is not None
        sock = handle.sock
        sock.setblocking(False)
        err = sock.connect_ex(address)  # type: ignore[arg-type]
        sock.setblocking(True)
        if err == errno.EAGAIN:
            self.redis_retry.append(handle)
        elif err:
            self.pool.failed(handle.link, self.clock())
        else:
            self._redis_connected(handle)

    def _retry_connects(self) -> None:
        assert self.redis_target is not None
        address = self.redis_target[1]
        pending, self.redis_retry = self.redis_retry, []
        for handle in pending:
            if not handle.closed and handle.link.alive:
                self._unix_connect(handle, address)

    def _on_redis_connect(self, handle: _RedisConn, c: Any) -> None:
        handle.connect_op = None
        if handle.closed or not handle.link.alive:
            return
        assert self.pool is not None
        if c.res < 0:
            self.pool.failed(handle.link, self.clock())
        else:
            self._redis_connected(handle)

    def _redis_connected(self, handle: _RedisConn) -> None:
        """Keep a recv armed from now on (Redis closing an idle connection shows too)."""
        assert self.pool is not None
        handle.buf = bytearray(_REDIS_RECV_SIZE)
        handle.recv_op = self.ring.prepare_recv(handle.fd, handle.buf, 0, handle.recv_done)
        self.pool.connected(handle.link, self.clock())

    def _redis_send(self, link: Link) -> None:
        """Send the call's commands (what is left of them), one send in flight at most."""
        handle: _RedisConn | None = link.handle
        if (handle is None or handle.closed or handle.sending is not None
                or not link.alive or link.connecting or not link.output):
            return
        self._send(handle, link.output)

    def _on_redis_send(self, handle: _RedisConn, c: Any) -> None:
        handle.sending = None
        link = handle.link
        if handle.closed or not link.alive:
            return
        assert self.pool is not None
        if c.res < 0:
            self.pool.failed(link, self.clock())
            return
        self.pool.sent(link, c.res)
        self._redis_send(link)  # a short send: the rest

    def _on_redis_recv(self, handle: _RedisConn, c: Any) -> None:
        handle.recv_op = None
        link = handle.link
        if handle.closed or not link.alive:
            return
        assert self.pool is not None and handle.buf is not None
        res = c.res
        if res <= 0:
            self.pool.failed(link, self.clock())  # Redis closed it, or it broke
            return
        self.pool.received(link, memoryview(handle.buf)[:res], self.clock())  # copied
        if link.alive:
            handle.recv_op = self.ring.prepare_recv(handle.fd, handle.buf, 0, handle.recv_done)

    def _redis_close(self, link: Link) -> None:
        handle: _RedisConn | None = link.handle
        link.handle = None
        if handle is None or handle.closed:
            return
        handle.closed = True
        handle.connect_done = handle.recv_done = handle.send_done = _ignore
        busy = False
        if handle.connect_op is not None:
            self.ring.prepare_cancel_nowait(handle.connect_op)
            busy = True
        if handle.recv_op is not None or handle.sending is not None:
            # As for a client (see _close): shutting the socket down ends the operations
            # that hold it, whose completions then find the handle closed.
            try:
                handle.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            busy = True
        if busy:
            self.ring.submit()  # before the descriptor's number can be reused
        handle.sock.close()

    def _log_backend(self, kind: str, message: str) -> None:
        if kind not in self.backend_logged:
            self.backend_logged.add(kind)
            print(message, file=sys.stderr, flush=True)
