"""trio: a task per connection under structured concurrency.

An accept loop on the socket the launcher opened starts a task per connection
in a nursery this module owns. Timeouts are one cancel scope per connection
whose deadline is moved as operations need (entering a scope per receive and
per send cost more than the echo itself): each receive runs under a deadline
taken from the session (idle or header timeout), each send must progress within
the idle timeout. Moving a deadline costs too (trio files it again, through a
generator context manager), so it moves only when it would otherwise fire before
the operation's deadline or later than it by more than 2% of the shorter timeout
+ 2 ms; a keep-alive connection's deadline then moves a few times a second, not
twice a request. A scope that fires is done with; the task judges why (a send
too slow, an expired session, a stop) and, if the connection goes on, goes on
under a new scope. Shutdown is
structured too: when the stop descriptor becomes readable the accept loop is
cancelled, every idle receive is cancelled so its task flushes and closes, and
the connections' nursery gets a deadline of the grace, after which whatever
is left is cancelled. Backpressure: a task awaiting ``send_all`` does not read,
and the session parses no further than the write high-water mark, so the task
sends what one read produced before it parses the rest of that read.

A backend call (the guestbook's Redis) is performed by the connection's own task
on a trio stream of the run's pool (:mod:`servers.drivers.trio_backend`), under a
cancel scope for the reply timeout; meanwhile that task does not read its client.
A client that goes away meanwhile is noticed when its answer is sent. On stop a
call in flight finishes within the grace or is cancelled with its task (its
stream closed); the pool is closed when the run ends.

Accepting is this module's own loop rather than ``trio.serve_listeners``, whose
answer to running out of descriptors is a logged traceback every 100 ms:
:class:`servers.drivers.accepting.AcceptBackoff` logs once per episode and
pauses, growing, until a descriptor is free.

trio installs its own signal wakeup descriptor while it runs (ours is
unset meanwhile); SIGTERM still reaches :class:`StopSignal`'s Python handler,
which writes the stop pipe.
"""

from __future__ import annotations

import argparse
import math
import signal
import socket
import time
from collections.abc import Awaitable, Callable

import trio

from servers.backend import Backend
from servers.cli import main
from servers.core import FileSlice, Session, Write, session_factory
from servers.core.guestbook import BackendCall
from servers.drivers.accepting import AcceptBackoff
from servers.drivers.blocking_backend import BackendUnavailable
from servers.drivers.trio_backend import TrioRedisPool
from servers.settings import TIMER_SLACK_S, TIMER_SLACK_SHARE, Settings
from servers.stop import StopSignal

_SEND_CHUNK = 1 << 20


def _trio_time(monotonic_deadline: float) -> float:
    return trio.current_time() + (monotonic_deadline - time.monotonic())


class _Connection:
    """One connection's task: receive under the session's deadline, send under the idle one."""

    def __init__(self, stream: trio.SocketStream, session: Session, settings: Settings,
                 backend: TrioRedisPool | None = None) -> None:
        self.stream = stream
        self.session = session
        self.settings = settings
        self.backend = backend
        self.scope: trio.CancelScope | None = None  # the current operation's deadline
        self.deadline = math.inf  # the scope's deadline on time.monotonic()'s clock
        self.late = (min(settings.idle_timeout, settings.header_timeout) * TIMER_SLACK_SHARE
                     + TIMER_SLACK_S)
        self.receiving = False  # the task waits in a receive (a stop may cancel it)
        self.stopping = False
        self.eof = False

    def stop(self) -> None:
        """Graceful stop: an idle receive is cancelled; a response in flight completes."""
        self.stopping = True
        if self.receiving and self.scope is not None:
            self.scope.cancel()

    async def run(self) -> None:
        """Serve until done; each time the scope fires, decide whether to go on."""
        while True:
            scope = trio.CancelScope()
            self.scope = scope
            self.deadline = math.inf
            with scope:
                if await self._serve(scope):
                    return
            if scope.cancelled_caught and not self.receiving:
                raise trio.TooSlowError  # a send made no progress within the idle timeout
            self.receiving = False
            if self.stopping:
                self.session.finish()  # send what is left, then close
            elif self.session.expired(time.monotonic()):
                return

    async def _serve(self, scope: trio.CancelScope) -> bool:
        """The connection's loop under ``scope``: True when the connection is done; False
        when the scope was cancelled just as a receive returned (it is spent: the data
        is taken, and the loop goes on under a new scope)."""
        session, stream = self.session, self.stream
        size = self.settings.read_size
        while True:
            writes = session.take_output()
            if writes:
                await self._send(writes, scope)
            if self.backend is not None:
                call = session.take_backend_call()
                if call is not None:
                    self.deadline = scope.deadline = math.inf  # the pool bounds the call
                    await self._perform(call)
                    continue  # send its answer; a pipelined request may need the next call
            if session.closing or self.stopping:
                return True
            if session.paused and session.resume(time.monotonic()):
                continue  # all sent: parse what the last read still holds
            if self.eof:
                return True
            self._bound(scope, session.deadline())
            self.receiving = True
            data = await stream.receive_some(size)
            self.receiving = False
            if not data:
                self.eof = True
                session.eof_received(time.monotonic())  # what it sent is still answered
            else:
                session.received(data, time.monotonic())
            if scope.cancel_called:
                return False

    def _bound(self, scope: trio.CancelScope, deadline: float) -> None:
        """Make ``scope`` fire at ``deadline`` (time.monotonic()), or a little later: see
        the module docstring. Kept on our clock, converted to trio's only when it moves."""
        if not deadline <= self.deadline <= deadline + self.late:
            self.deadline = deadline + self.late
            scope.deadline = _trio_time(self.deadline)

    async def _perform(self, call: BackendCall) -> None:
        assert self.backend is not None  # a session makes calls only with --redis
        try:
            replies = await self.backend.perform(call)
        except BackendUnavailable:
            self.session.backend_failed(time.monotonic())
        else:
            self.session.backend_replied(replies, time.monotonic())

    async def _send(self, writes: list[Write], scope: trio.CancelScope) -> None:
        idle = self.settings.idle_timeout
        for item in writes:
            if isinstance(item, FileSlice):
                try:
                    await self._send_file(item, scope)
                finally:
                    item.close()
                continue
            if len(item) <= _SEND_CHUNK:
                self._bound(scope, time.monotonic() + idle)
                await self.stream.send_all(item)
                self.session.sent(len(item), time.monotonic())
                continue
            view = memoryview(item)
            for start in range(0, len(view), _SEND_CHUNK):
                self._bound(scope, time.monotonic() + idle)
                await self.stream.send_all(view[start:start + _SEND_CHUNK])
                self.session.sent(min(_SEND_CHUNK, len(view) - start), time.monotonic())

    async def _send_file(self, item: FileSlice, scope: trio.CancelScope) -> None:
        """sendfile(2) (or read+write, --sendfile off) on the non-blocking socket,
        waiting for writability between calls."""
        sock = self.stream.socket
        while item.count > 0:
            self._bound(scope, time.monotonic() + self.settings.idle_timeout)
            await trio.lowlevel.wait_writable(sock)
            try:
                sent = item.send_some(sock.fileno(), _SEND_CHUNK, self.settings.sendfile)
            except BlockingIOError:
                continue
            except ConnectionError as exc:
                raise trio.BrokenResourceError(str(exc)) from None
            self.session.sent(sent, time.monotonic())

    async def linger_close(self) -> None:
        """Half-close and read what the peer still sends (bounded), so the last
        response is not destroyed by a reset from closing with unread input."""
        try:
            await self.stream.send_eof()
            drained = 0
            with trio.move_on_after(self.settings.linger_seconds):
                while drained < self.settings.linger_bytes:
                    chunk = await self.stream.receive_some(65536)
                    if not chunk:
                        break
                    drained += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def _accept_loop(listener: trio.socket.SocketType, nursery: trio.Nursery,
                       handle: Callable[[trio.SocketStream], Awaitable[None]]) -> None:
    """Accept until cancelled, a task per connection; pause when out of descriptors."""
    backoff = AcceptBackoff()
    while True:
        try:
            sock, _ = await listener.accept()
        except OSError as exc:
            pause = backoff.failed(exc)
            if pause is None:
                if isinstance(exc, ConnectionAbortedError):
                    continue
                raise
            await trio.sleep(pause)
            continue
        backoff.succeeded()
        nursery.start_soon(handle, trio.SocketStream(sock))

async def serve_trio(listener: socket.socket, settings: Settings, stop: StopSignal) -> None:
    """Serve until the stop descriptor is readable, then drain within the grace."""
    new_session: Callable[[float], Session] = session_factory(settings)
    live: set[_Connection] = set()
    stopping = False
    backend = TrioRedisPool.for_settings(settings)

    async def handle(stream: trio.SocketStream) -> None:
        conn = _Connection(stream, new_session(time.monotonic()), settings, backend)
        live.add(conn)
        if stopping:
            conn.stop()
        clean = False
        try:
            await conn.run()
            clean = conn.session.closing
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
            pass
        finally:
            live.discard(conn)
            try:
                if clean and not stopping:
                    await conn.linger_close()
            finally:
                await stream.aclose()

    trio_listener = trio.socket.from_stdlib_socket(listener)
    try:
        async with trio.open_nursery() as connections:
            accepting = trio.CancelScope()

            async def accept() -> None:
                with accepting:
                    await _accept_loop(trio_listener, connections, handle)

            connections.start_soon(accept)
            await trio.lowlevel.wait_readable(stop.fileno())
            accepting.cancel()
            stopping = True
            for conn in list(live):
                conn.stop()
            connections.cancel_scope.deadline = trio.current_time() + settings.shutdown_grace
    finally:
        if backend is not None:
            backend.close()


class Trio(Backend):
    """trio: a task per connection, cancel scopes for timeouts and shutdown."""

    name = "trio"
    guestbook = True
    backend_pool = True  # trio streams in the run, up to --backend-pool of them

    def can_sendfile(self, options: argparse.Namespace) -> bool:
        return True

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        # trio wants the wakeup descriptor for itself; the StopSignal handler still runs
        # (on trio's wake-up) and writes the stop pipe, which the loop above watches.
        previous = signal.set_wakeup_fd(-1)
        try:
            trio.run(serve_trio, listener, settings, stop)
        finally:
            signal.set_wakeup_fd(previous, warn_on_full_buffer=False)


if __name__ == "__main__":
    main(Trio())
