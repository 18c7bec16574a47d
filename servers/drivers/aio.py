"""The core behind an ``asyncio.BufferedProtocol``: for the stdlib loop and uvloop.

Each protocol object is a :class:`~servers.drivers.connection.Connection`: the
session, output queue and life cycle (backpressure, finishing, lingering,
expiry, stop) are that shared layer's; this adapter only moves bytes the
asyncio way and keeps a timer per connection. The loop reads straight into a
buffer the server owns (no bytes object per read, which is what makes a plain
``asyncio.Protocol`` slow), the core copies what it keeps. Bytes handed to the
transport count as sent for the session; the transport's write buffer limits
are the high-water mark: while it has paused writing the connection is
``throttled``, so reading from that peer is paused, and the session parses what
it held once the transport drains. Files
are sent with ``loop.sendfile`` on the stdlib loop (a real sendfile) and by
read-and-write paced by flow control on uvloop, which has none; output queued
behind a file waits for it. Either way a file leaves in pieces of
``_FILE_CHUNK``, each counted as progress when it is done, so a peer that stops
reading in the middle of a file is let go an idle timeout after the last piece,
as for any other response.

The listener is accepted from here, not by ``loop.create_server``, so that both
loops handle running out of descriptors the same way
(:class:`servers.drivers.accepting.AcceptBackoff`): one log line per episode, a
pause, then accepting again (the stdlib loop logs a traceback per attempt and
libuv accepts and drops connections while it lasts).

A backend call (the guestbook's Redis) goes to the loop's
:class:`~servers.drivers.aio_backend.AioBackend`: Redis protocols on the same
loop, one call on each connection at a time. While the call is pending the
session wants no input, so reading from that client pauses; the answer comes back
through :meth:`CoreProtocol.backend_done`, which hands the replies to the session
and pumps again (a pipelined request may have queued the next call). Reading
being paused, a client's reset is seen when its answer is written; a connection
that ends while its call is pending (aborted at the end of a stop's grace)
cancels the call: a queued one is dropped unsent, the replies of one in flight
are discarded. A client waiting for its answer is not idle: the pool's own
bounds (connect, queue wait, reply timeout) make sure it gets one, if only a
503. A graceful stop lets pending calls finish within the grace, then closes
the pool.
"""

from __future__ import annotations

import asyncio
import socket
import time

from servers.core import FileSlice, session_factory
from servers.core.guestbook import BackendCall
from servers.drivers.accepting import AcceptBackoff
from servers.drivers.aio_backend import AioBackend
from servers.drivers.connection import Connection
from servers.settings import Settings
from servers.stop import StopSignal

_FILE_CHUNK = 256 * 1024


class _Server:
    """What the connections of one listener share: settings, buffer, live set."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.new_session = session_factory(settings)
        self.buffer = bytearray(settings.read_size)
        self.view = memoryview(self.buffer)
        self.connections: set[CoreProtocol] = set()
        self.stopping = False
        self.all_closed: asyncio.Event | None = None
        self.backend = AioBackend.for_settings(settings)
        # The stdlib loop has a real sendfile; uvloop raises NotImplementedError.
        self.native_sendfile = isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop)


class CoreProtocol(Connection, asyncio.BufferedProtocol):
    """One connection: buffer in, core, transport out."""

    def __init__(self, server: _Server) -> None:
        super().__init__(server.new_session(time.monotonic()), server.settings,
                         server.backend is not None)
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.file_task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0  # the monotonic deadline the timer is armed for
        self.drained: asyncio.Future[None] | None = None
        self.awaiting = False  # a backend call of ours is in the pool

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.set_write_buffer_limits(high=self.settings.write_high_water)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.server.connections.add(self)
        if self.server.stopping:
            self.transport.close()
            return
        self._arm_timer()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.view

    def buffer_updated(self, nbytes: int) -> None:
        if self.lingering:
            if self.lingered(nbytes):
                self._close()
            return
        now = time.monotonic()
        self.session.received(self.server.view[:nbytes], now)
        self.pump(now)
        self._rearm_if_sooner()

    def eof_received(self) -> bool:
        self.eof(time.monotonic())
        return True  # keep the transport open until our output is written

    def pause_writing(self) -> None:
        self.drained = self.loop.create_future()
        self.throttled = self.in_flight = True
        if self.reading:
            self._interest(False, self.writing)

    def resume_writing(self) -> None:
        if self.drained is not None:
            self.drained.set_result(None)
            self.drained = None
        self.throttled = False
        self.in_flight = self.file_task is not None
        if self.transport is not None and not self.closed:
            self.pump(time.monotonic())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.file_task is not None:
            self.file_task.cancel()
            self.out.popleft()  # the task's slice: the task closes it when it ends
        self.release()
        if self.timer is not None:
            self.timer.cancel()
        if self.awaiting:
            assert self.server.backend is not None
            self.server.backend.cancel(self)  # its client is gone: drop the answer
            self.awaiting = False
        server = self.server
        server.connections.discard(self)
        if server.stopping and not server.connections and server.all_closed is not None:
            server.all_closed.set()

    # -- the connection layer's hooks --------------------------------------------------

    def _write(self, now: float) -> None:
        """Hand the queued bytes to the transport (they count as sent: it paces itself);
        a file goes to a task of its own, and what follows it waits."""
        if self.file_task is not None:
            return
        transport, session, out = self.transport, self.session, self.out
        assert transport is not None
        while out:
            item = out[0]
            if isinstance(item, FileSlice):
                self.in_flight = True
                self.file_task = self.loop.create_task(self._send_file(item))
                return
            out.popleft()
            transport.write(item)
            session.sent(len(item), now)

    def _interest(self, reading: bool, writing: bool) -> None:
        self.writing = writing  # the transport writes by itself
        transport = self.transport
        if reading == self.reading or transport is None or transport.is_closing():
            return
        self.reading = reading
        if reading:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def _half_close(self) -> bool:
        transport = self.transport
        assert transport is not None
        if not transport.can_write_eof():
            return False
        transport.write_eof()
        return True

    def _close(self) -> None:
        assert self.transport is not None
        self.transport.close()  # what the transport still holds is written first

    def _perform(self, call: BackendCall) -> None:
        backend = self.server.backend
        assert backend is not None  # a session makes calls only with --redis
        self.awaiting = True
        backend.perform(self, call)

    def finish(self, now: float, eof: bool = False) -> None:
        super().finish(now, eof)
        if self.lingering:
            self._rearm_if_sooner()

    # -- backend calls -----------------------------------------------------------------

    def backend_done(self, replies: list[object] | None) -> None:
        """The pool's answer to our call: replies, or None when Redis could not answer."""
        self.awaiting = False
        transport = self.transport
        assert transport is not None
        if transport.is_closing():
            return  # aborted (timeout, stop): connection_lost follows
        super().backend_done(replies)
        self._rearm_if_sooner()  # held input parsed: a request head may have begun

    # -- files -------------------------------------------------------------------------

    async def _send_file(self, item: FileSlice) -> None:
        transport = self.transport
        assert transport is not None
        count = item.count
        try:
            if self.server.native_sendfile and self.settings.sendfile:
                file, offset, end = item.open(), item.offset, item.offset + count
                while offset < end:
                    piece = min(_FILE_CHUNK, end - offset)
                    await self.loop.sendfile(transport, file, offset, piece, fallback=False)
                    offset += piece
                    self.out.sent(piece)
                    self.session.sent(piece, time.monotonic())
            else:
                await self._write_file(item)
        except (ConnectionError, OSError, RuntimeError):
            transport.abort()
            return
        finally:
            item.close()
        self.file_task = None
        self.in_flight = self.throttled
        self.pump(time.monotonic())

    async def _write_file(self, item: FileSlice) -> None:
        """Read-and-write for loops without sendfile (uvloop), paced by flow control."""
        assert self.transport is not None
        while item.count > 0:
            if self.drained is not None:
                await self.drained
            chunk = item.read_chunk(_FILE_CHUNK)
            if not chunk:
                raise ConnectionError("file shrank while being sent")
            self.out.sent(len(chunk))
            self.transport.write(chunk)
            self.session.sent(len(chunk), time.monotonic())

    # -- timeouts ----------------------------------------------------------------------

    def _arm_timer(self) -> None:
        if not self.awaiting:
            self.timer_at = self.deadline()
        else:  # a client waiting for its backend answer is not idle: look again later
            self.timer_at = time.monotonic() + self.settings.idle_timeout
        self.timer = self.loop.call_at(self._loop_time(self.timer_at), self._on_timer)

    def _rearm_if_sooner(self) -> None:
        timer = self.timer
        if timer is not None and self.deadline() < self.timer_at and not self.closed:
            timer.cancel()  # a request head began, or a linger: sooner than the idle one
            self._arm_timer()

    def _loop_time(self, monotonic_deadline: float) -> float:
        return self.loop.time() + (monotonic_deadline - time.monotonic())

    def _on_timer(self) -> None:
        transport = self.transport
        assert transport is not None
        if self.closed:
            return
        if self.expired(time.monotonic()) and not self.awaiting:
            if self.file_task is not None:  # no piece of the file left within the timeout
                self.file_task.cancel()
                transport.abort()
            elif self.lingering:
                transport.close()
            else:
                transport.abort()
        else:
            self._arm_timer()


class _Acceptor:
    """Accepts on the listener from a reader callback and hands each socket to the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, listener: socket.socket,
                 state: _Server) -> None:
        self.loop = loop
        self.listener = listener
        self.state = state
        self.backoff = AcceptBackoff()
        self.watching = False
        self.retry: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        listener.setblocking(False)

    def start(self) -> None:
        self.retry = None
        self.loop.add_reader(self.listener.fileno(), self._accept)
        self.watching = True

    def close(self) -> None:
        if self.watching:
            self.loop.remove_reader(self.listener.fileno())
            self.watching = False
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None

    def _accept(self) -> None:
        accepted, pause = self.backoff.accept_batch(self.listener)
        for sock in accepted:
            task = self.loop.create_task(self._connect(sock))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        if pause is not None:
            self.close()
            self.retry = self.loop.call_later(pause, self.start)

    async def _connect(self, sock: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: CoreProtocol(self.state), sock)
        except OSError:
            sock.close()


async def serve_listener(listener: socket.socket, settings: Settings, stop: StopSignal) -> None:
    """Serve ``listener`` with :class:`CoreProtocol` until stop, then drain and return."""
    loop = asyncio.get_running_loop()
    state = _Server(settings)
    acceptor = _Acceptor(loop, listener, state)
    acceptor.start()
    stopped = asyncio.Event()
    loop.add_reader(stop.fileno(), stopped.set)
    try:
        await stopped.wait()
    finally:
        loop.remove_reader(stop.fileno())
    acceptor.close()
    state.stopping = True
    state.all_closed = asyncio.Event()
    now = time.monotonic()
    for conn in list(state.connections):
        if conn.stop(now):
            conn._close()
    if state.connections:
        try:
            await asyncio.wait_for(state.all_closed.wait(), settings.shutdown_grace)
        except TimeoutError:
            pass
    for conn in list(state.connections):
        if conn.transport is not None:
            conn.transport.abort()
    if state.backend is not None:
        state.backend.close()
    await asyncio.sleep(0)
