"""trio's way to make a backend call: the connection's task on a pooled trio stream.

A :class:`TrioRedisPool` belongs to one ``trio.run``. Its connections are trio
streams (``trio.open_tcp_stream``, or a unix socket connected by
:func:`servers.drivers.redis_connect.unix_connect`, which tries a full Redis
backlog again, as ``trio.open_unix_socket`` does not). The task of the
client connection that needs a call performs it itself
(:meth:`TrioRedisPool.perform`): it takes an idle Redis stream, or opens one
while fewer than ``--backend-pool`` are open or opening, or else queues (FIFO)
until a task hands it a stream or a free slot; it writes the commands and reads
until the replies are complete, under a cancel scope of the backend wait plus
:data:`~servers.drivers.blocking_backend.REPLY_SLACK`; then it puts the stream
back. A BLPOP (the backend wait) holds its stream for W ms, so a stream carries
one call at a time. The limits are those of the event loops' shared
:class:`servers.drivers.redis_pool.RedisPool` (connect 2 s, a queued call waits
at most the reply timeout, replies within it); that state machine is not used
here because it wants one reactor to perform every connection's I/O, while in
trio each call's own task does its I/O and keeps its state across its awaits.

A stream that failed (Redis unreachable, closed, too slow, garbage:
``hiredis.ProtocolError``) is closed and the call raises
:class:`~servers.drivers.blocking_backend.BackendUnavailable` (503); the next call
opens a new one, so the server recovers when Redis comes back. Nobody reads an
idle stream, so before reusing one the pool checks, without blocking, that Redis
has not closed it meanwhile (a restarted Redis would otherwise cost a 503 per
idle stream). A task cancelled mid-call (graceful stop past the grace) closes its
stream: a half-answered stream is never reused.
"""

from __future__ import annotations

import select
import socket
from collections import deque

import hiredis
import trio

from servers.core.guestbook import BackendCall
from servers.core.resp import ReplyReader
from servers.drivers.blocking_backend import CONNECT_TIMEOUT, REPLY_SLACK, BackendUnavailable
from servers.drivers.redis_connect import RETRY_S, unix_connect
from servers.redis_addr import RedisAddr
from servers.settings import Settings

_READ_SIZE = 65536


class _Stream:
    """One Redis connection: the trio stream and its reply decoder."""

    __slots__ = ("stream", "reader")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = ReplyReader()

    def stale(self) -> bool:
        """Whether Redis sent anything while the stream was idle (its close, or garbage)."""
        poller = select.poll()
        poller.register(self.stream.socket.fileno(), select.POLLIN)
        return bool(poller.poll(0))

    def close(self) -> None:
        self.stream.socket.close()  # trio's close wakes any task waiting on it


class _Waiter:
    """A queued task: woken with a stream to use, or with a slot to open one in."""

    __slots__ = ("event", "stream", "slot")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.stream: _Stream | None = None
        self.slot = False


class TrioRedisPool:
    """Up to ``limit`` Redis streams in one trio run, one call on each at a time."""

    def __init__(self, addr: RedisAddr, wait_ms: float, limit: int) -> None:
        if limit < 1:
            raise ValueError("a pool holds at least one connection")
        self.addr = addr
        self.limit = limit
        self.reply_timeout = wait_ms / 1000 + REPLY_SLACK
        self.size = 0  # streams open (idle or in use) or being opened
        self.idle: list[_Stream] = []
        self.waiting: deque[_Waiter] = deque()
        self.streams: set[_Stream] = set()

    @classmethod
    def for_settings(cls, settings: Settings) -> TrioRedisPool | None:
        """The run's pool, or None when the server has no ``--redis``."""
        if settings.redis is None:
            return None
        return cls(settings.redis, settings.backend_wait_ms, settings.backend_pool)

    async def perform(self, call: BackendCall) -> list[object]:
        """Send the call's commands on a pooled stream and wait for all its replies."""
        conn = await self._acquire()
        reusable = False
        try:
            with trio.fail_after(self.reply_timeout):
                await conn.stream.send_all(call.commands)
                while conn.reader.available < call.replies:
                    data = await conn.stream.receive_some(_READ_SIZE)
                    if not data:
                        raise ConnectionError("Redis closed the connection")
                    conn.reader.feed(data)
            replies = conn.reader.take(call.replies)
            if conn.reader.available:
                raise hiredis.ProtocolError("more replies than commands")
            reusable = True
            return replies
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                trio.TooSlowError, hiredis.ProtocolError) as exc:
            raise BackendUnavailable(str(exc) or type(exc).__name__) from None
        finally:
            if reusable:
                self._release(conn)
            else:
                self._discard(conn)

    def close(self) -> None:
        """Close every stream (at the end of the run, when no call is left)."""
        for conn in list(self.streams):
            conn.close()
        self.streams.clear()
        self.idle.clear()

    # -- bookkeeping -------------------------------------------------------------------

    async def _acquire(self) -> _Stream:
        while self.idle:
            conn = self.idle.pop()
            if not conn.stale():
                return conn
            self._discard(conn)
        if self.size < self.limit and not self.waiting:
            self.size += 1
            return await self._open()
        waiter = _Waiter()
        self.waiting.append(waiter)
        try:
            with trio.fail_after(self.reply_timeout):
                try:
                    await waiter.event.wait()
                except BaseException:  # cancelled while queued: pass on what it was handed
                    if waiter.stream is not None:
                        self._release(waiter.stream)
                    elif waiter.slot:
                        self.size -= 1
                        self._hand_slot()
                    else:
                        self.waiting.remove(waiter)
                    raise
        except trio.TooSlowError:
            raise BackendUnavailable("no Redis connection free in time") from None
        if waiter.stream is not None:
            return waiter.stream
        return await self._open()

    async def _open(self) -> _Stream:
        """Connect in a slot already counted in ``size``; the slot is given up on failure."""
        opened = False
        try:
            family, address = self.addr.socket_args()
            with trio.fail_after(CONNECT_TIMEOUT):
                if family == socket.AF_UNIX:
                    while (sock := unix_connect(address)) is None:  # type: ignore[arg-type]
                        await trio.sleep(RETRY_S)  # Redis's backlog is full
                    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
                else:
                    host, port = address  # type: ignore[misc]
                    stream = await trio.open_tcp_stream(host, port)
            opened = True
        except (OSError, trio.TooSlowError) as exc:
            raise BackendUnavailable(str(exc) or type(exc).__name__) from None
        finally:
            if not opened:
                self.size -= 1
                self._hand_slot()
        conn = _Stream(stream)
        self.streams.add(conn)
        return conn

    def _release(self, conn: _Stream) -> None:
        """``conn`` is free: to the oldest queued task, or idle."""
        if self.waiting:
            waiter = self.waiting.popleft()
            waiter.stream = conn
            waiter.event.set()
        else:
            self.idle.append(conn)

    def _discard(self, conn: _Stream) -> None:
        conn.close()
        self.streams.discard(conn)
        self.size -= 1
        self._hand_slot()

    def _hand_slot(self) -> None:
        """A slot freed: the oldest queued task opens a stream in it."""
        if self.waiting and self.size < self.limit:
            waiter = self.waiting.popleft()
            waiter.slot = True
            self.size += 1
            waiter.event.set()
