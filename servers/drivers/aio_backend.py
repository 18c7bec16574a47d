"""The asyncio models' way to make a backend call: Redis protocols on the same loop.

An :class:`AioRedisPool` belongs to one event loop (the stdlib loop or uvloop).
Its connections are ``asyncio.Protocol`` objects on that loop, opened with
``create_connection`` / ``create_unix_connection``; nothing blocks the loop. A
BLPOP (the backend wait) holds its connection for W ms, so a connection carries
one call at a time: :meth:`AioRedisPool.perform` hands the call to an idle
connection, or queues it (FIFO) and opens one more connection while fewer than
``--backend-pool`` are open or opening. A finished connection takes the oldest
queued call, else waits idle (most recently used first, so a quiet server keeps
few warm ones busy).

A call's answer comes back through a callback, later (never from inside
``perform``): the decoded replies, or None when Redis could not be reached,
closed the connection, sent garbage (``hiredis.ProtocolError``) or did not
answer within the backend wait plus
:data:`~servers.drivers.blocking_backend.REPLY_SLACK`. A failed connection is
closed and its call alone fails; the next call opens a new one, so the server
recovers when Redis comes back. An idle connection that Redis closes leaves the
pool at once (the loop reads every connection). A caller that no longer wants
the answer (its client went away) cancels its :class:`Ticket`: a queued call is
dropped unsent, one in flight completes on Redis and its replies are discarded.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable

import hiredis

from servers.core.guestbook import BackendCall
from servers.core.resp import ReplyReader
from servers.drivers.blocking_backend import CONNECT_TIMEOUT, REPLY_SLACK
from servers.redis_addr import RedisAddr
from servers.settings import Settings

Done = Callable[[list[object] | None], None]


class Ticket:
    """One call handed to the pool, until its callback has run or it was cancelled."""

    __slots__ = ("call", "_done")

    def __init__(self, call: BackendCall, done: Done) -> None:
        self.call = call
        self._done: Done | None = done

    @property
    def active(self) -> bool:
        return self._done is not None

    def cancel(self) -> None:
        """The answer is no longer wanted: the callback will not run."""
        self._done = None

    def _finish(self, replies: list[object] | None) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(replies)


class _RedisConnection(asyncio.Protocol):
    """One Redis connection of the pool: at most one call in flight on it."""

    def __init__(self, pool: AioRedisPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.reader = ReplyReader()
        self.ticket: Ticket | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.dead = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def start(self, ticket: Ticket) -> None:
        assert self.transport is not None and self.ticket is None
        self.ticket = ticket
        self.timer = self.pool.loop.call_later(self.pool.reply_timeout, self._timed_out)
        self.transport.write(ticket.call.commands)

    def data_received(self, data: bytes) -> None:
        if self.dead:
            return
        ticket = self.ticket
        try:
            self.reader.feed(data)
        except hiredis.ProtocolError:
            self.broken()
            return
        if ticket is None:
            if self.reader.available:
                self.broken()  # a reply nobody asked for: the stream is out of step
            return
        if self.reader.available < ticket.call.replies:
            return
        replies = self.reader.take(ticket.call.replies)
        if self.reader.available:
            self.broken()
            return
        self.ticket = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pool._released(self)
        ticket._finish(replies)

    def eof_received(self) -> bool:
        return False  # Redis closed its side: close ours too (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken()

    def _timed_out(self) -> None:
        self.timer = None
        self.broken()

    def broken(self) -> None:
        """Close the connection, leave the pool, and fail the call in flight (if any)."""
        if self.dead:
            return
        self.dead = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.abort()
        ticket, self.ticket = self.ticket, None
        self.pool._discard(self)
        if ticket is not None:
            ticket._finish(None)


class AioRedisPool:
    """Up to ``limit`` Redis connections on the running loop, one call on each at a time."""

    def __init__(self, addr: RedisAddr, wait_ms: float, limit: int) -> None:
        if limit < 1:
            raise ValueError("a pool holds at least one connection")
        self.loop = asyncio.get_running_loop()
        self.addr = addr
        self.limit = limit
        self.reply_timeout = wait_ms / 1000 + REPLY_SLACK
        self.idle: list[_RedisConnection] = []
        self.connections: set[_RedisConnection] = set()  # open, idle or busy
        self.waiting: deque[Ticket] = deque()
        self.opening: set[asyncio.Task[None]] = set()
        self.closed = False
        self.opened = 0  # connections ever established (for tests and curiosity)

    @classmethod
    def for_settings(cls, settings: Settings) -> AioRedisPool | None:
        """The loop's pool, or None when the server has no ``--redis``."""
        if settings.redis is None:
            return None
        return cls(settings.redis, settings.backend_wait_ms, settings.backend_pool)

    @property
    def size(self) -> int:
        """Connections open or being opened: never above ``limit``."""
        return len(self.connections) + len(self.opening)

    def perform(self, call: BackendCall, done: Done) -> Ticket:
        """Start ``call``; ``done(replies)`` (None: failed) runs later, unless cancelled."""
        ticket = Ticket(call, done)
        if self.closed:
            self.loop.call_soon(ticket._finish, None)
        elif self.idle:
            self.idle.pop().start(ticket)
        else:
            self.waiting.append(ticket)
            self._grow()
        return ticket

    def withdraw(self, ticket: Ticket) -> None:
        """Cancel ``ticket``; a call still queued is dropped without reaching Redis."""
        ticket.cancel()
        try:
            self.waiting.remove(ticket)
        except ValueError:
            pass  # in flight (its replies will be discarded) or already finished

    def close(self) -> None:
        """Close every connection; calls queued or in flight fail."""
        self.closed = True
        for task in list(self.opening):
            task.cancel()
        while self.waiting:
            self.waiting.popleft()._finish(None)
        for conn in list(self.connections):
            conn.broken()

    # -- bookkeeping -------------------------------------------------------------------

    def _grow(self) -> None:
        """Open connections for queued calls not already covered by one being opened."""
        while (not self.closed and len(self.waiting) > len(self.opening)
               and self.size < self.limit):
            task = self.loop.create_task(self._open())
            self.opening.add(task)
            task.add_done_callback(self.opening.discard)

    async def _open(self) -> None:
        conn: _RedisConnection | None = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                conn = await self._connect()
        except (OSError, TimeoutError):
            pass
        self.opening.discard(asyncio.current_task())  # type: ignore[arg-type]
        if conn is not None and not conn.dead and not self.closed:
            self.opened += 1
            self.connections.add(conn)
            self._released(conn)
            return
        if conn is not None:
            conn.broken()
        # This attempt stood for the oldest queued call: that one fails (503), and the
        # calls behind it get connections of their own (the next attempt may succeed).
        while self.waiting and not self.closed:
            ticket = self.waiting.popleft()
            if ticket.active:
                ticket._finish(None)
                break
        self._grow()

    async def _connect(self) -> _RedisConnection:
        family, address = self.addr.socket_args()
        if family == socket.AF_UNIX:
            _, conn = await self.loop.create_unix_connection(
                lambda: _RedisConnection(self), address)  # type: ignore[arg-type]
        else:
            host, port = address  # type: ignore[misc]
            _, conn = await self.loop.create_connection(lambda: _RedisConnection(self),
                                                        host, port)
        return conn

    def _released(self, conn: _RedisConnection) -> None:
        """``conn`` is free: it takes the oldest queued call, or waits idle."""
        while self.waiting:
            ticket = self.waiting.popleft()
            if ticket.active:
                conn.start(ticket)
                return
        self.idle.append(conn)

    def _discard(self, conn: _RedisConnection) -> None:
        self.connections.discard(conn)
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        self._grow()
