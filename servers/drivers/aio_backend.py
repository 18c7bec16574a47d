"""The asyncio models' way to make a backend call: Redis protocols on the same loop.

An :class:`AioBackend` belongs to one event loop (the stdlib loop or uvloop). What
does not depend on the loop (which connection carries which call, one call per
connection at a time, growth up to ``--backend-pool``, the FIFO of waiting calls,
reply decoding, deadlines and failures) is :class:`servers.drivers.redis_pool.RedisPool`,
shared with the readiness loop. This module only moves its bytes the asyncio way:
each Redis connection is an ``asyncio.Protocol`` opened with ``create_connection``,
or on a unix socket connected by :func:`servers.drivers.redis_connect.unix_connect`
(a full Redis backlog is tried again); nothing blocks the loop. What it receives and
loses is fed to the pool, and the pool's effects are performed at once: open a
connection, write a call's commands (the transport buffers them), close one,
hand an owner its replies (``backend_done``; None when Redis could not answer).
A timer calls the pool's ``expire`` while it has connections or waiting calls.
An idle connection that Redis closes leaves the pool at once (the loop reads
every connection).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Hashable
from typing import Protocol

from servers.core.guestbook import BackendCall
from servers.drivers.redis_connect import RETRY_S, unix_connect
from servers.drivers.redis_pool import Link, RedisPool
from servers.redis_addr import RedisAddr
from servers.settings import Settings

TICK = 0.25  # how often deadlines are checked (connect 2 s, replies W + 5 s)


class BackendOwner(Hashable, Protocol):
    """Whoever submits a call: told its answer once, unless it cancelled."""

    def backend_done(self, replies: list[object] | None) -> None: ...


class _RedisConnection(asyncio.Protocol):
    """The loop's side of one pool link: its transport, or the task connecting it."""

    def __init__(self, backend: AioBackend, link: Link) -> None:
        self.backend = backend
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        self.backend.pool.received(self.link, data, time.monotonic())
        self.backend.drive()

    def eof_received(self) -> bool:
        return False  # Redis closed its side: close ours (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.backend.pool.failed(self.link, time.monotonic())
        self.backend.drive()

    def close(self) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        if self.transport is not None:
            self.transport.abort()


class AioBackend:
    """The running loop's Redis pool: :class:`RedisPool` driven with asyncio protocols."""

    def __init__(self, addr: RedisAddr, pool: RedisPool) -> None:
        self.loop = asyncio.get_running_loop()
        self.addr = addr
        self.pool = pool
        self._driving = False
        self._closed = False
        self._ticker: asyncio.TimerHandle | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> AioBackend | None:
        """The loop's pool, or None when the server has no ``--redis``."""
        pool = RedisPool.for_settings(settings)
        if pool is None or settings.redis is None:
            return None
        return cls(settings.redis, pool)

    def perform(self, owner: BackendOwner, call: BackendCall) -> None:
        """Start ``owner``'s call; ``owner.backend_done`` runs later, never from here."""
        self.pool.submit(owner, call, time.monotonic())
        if self._closed:
            self.loop.call_soon(self.drive)  # its failure must not re-enter the owner now
            return
        self.drive()  # opens a connection or writes the commands: no answer yet
        if self._ticker is None:
            self._ticker = self.loop.call_later(TICK, self._tick)

    def cancel(self, owner: BackendOwner) -> None:
        """``owner`` went away: its waiting call is dropped, its replies discarded."""
        self.pool.cancel(owner)

    def close(self) -> None:
        """Close every connection; calls still queued or in flight fail."""
        self._closed = True
        self.pool.close()
        self.drive()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def drive(self) -> None:
        """Perform the pool's effects until it asks nothing more."""
        if self._driving:
            return  # the outer call performs what this one would
        self._driving = True
        try:
            self.pool.perform(lambda owner, replies: owner.backend_done(replies),
                              self._send, self._open, lambda link: link.handle.close())
        finally:
            self._driving = False

    def _send(self, link: Link) -> None:
        transport = link.handle.transport
        if transport is None or not link.alive:
            return
        data = link.output
        transport.write(data)  # buffered by the transport: all of it counts as written
        self.pool.sent(link, len(data))

    def _open(self, link: Link) -> None:
        conn = _RedisConnection(self, link)
        link.handle = conn
        conn.connecting = self.loop.create_task(self._connect(conn))

    async def _connect(self, conn: _RedisConnection) -> None:
        family, address = self.addr.socket_args()
        try:
            if family == socket.AF_UNIX:
                while (sock := unix_connect(address)) is None:  # type: ignore[arg-type]
                    await asyncio.sleep(RETRY_S)  # Redis's backlog is full; bounded by expire
                await self.loop.create_unix_connection(lambda: conn, sock=sock)
            else:
                host, port = address  # type: ignore[misc]
                await self.loop.create_connection(lambda: conn, host, port)
        except OSError:
            conn.connecting = None
            self.pool.failed(conn.link, time.monotonic())
            self.drive()
            return
        conn.connecting = None
        if not conn.link.alive:
            conn.close()  # the pool gave up on it meanwhile (connect timeout, closing)
            return
        self.pool.connected(conn.link, time.monotonic())
        self.drive()

    def _tick(self) -> None:
        self._ticker = None
        self.pool.expire(time.monotonic())
        self.drive()
        if self.pool.size or self.pool.waiting:
            self._ticker = self.loop.call_later(TICK, self._tick)
