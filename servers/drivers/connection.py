"""One connection on a non-blocking driver: its output queue and its life cycle.

The readiness loop, the asyncio adapter and the io_uring completion loop differ
in how they wait and how they move bytes; everything else about a connection is
here, once:

- :class:`OutQueue`, what is still to be written, in order: bytes and file
  slices. A slice's file is opened only when the slice reaches the head (its
  ``fileno``/``open``), and every slice still queued is closed when the queue is
  cleared. :meth:`OutQueue.sent` takes off the head what left, so the queue
  always starts at the first byte not yet written.
- :class:`Connection`, the life cycle. :meth:`Connection.pump` moves the
  session's output to the queue, has the driver write it, lets the session
  parse what it held once everything is out, hands a backend call to the
  driver, and then decides what the driver waits for: reading, writing, or
  neither, in which case it finishes. Backpressure is that one decision, taken
  before the core produces more: the driver reads only while the session wants
  input (its output under the write high-water mark, no backend call pending)
  and the transport has not asked for a pause (:attr:`Connection.throttled`).
  :meth:`Connection.finish` closes at once after the peer's end of stream or
  during a stop, else half-closes and lingers: it reads and drops what the peer
  still sends, for at most ``Settings.linger_seconds`` and
  ``Settings.linger_bytes``. :meth:`Connection.expired` says when a
  connection's idle, header or linger deadline has passed, and
  :meth:`Connection.stop` begins a graceful stop; a driver's teardown starts
  with :meth:`Connection.release`.

A driver subclasses :class:`Connection` (or :class:`SocketConnection`, which
holds the socket and half-closes it) with its own connection object and
implements five hooks: :meth:`~Connection._write` (write the queue as far as
the transport takes it now, or start writing its head), :meth:`~Connection._interest`
(wait for readability and/or writability), :meth:`~Connection._half_close`,
:meth:`~Connection._close` and :meth:`~Connection._perform` (a backend call).
It feeds what it reads to the session and calls :meth:`~Connection.pump`; it
reports the end of stream with :meth:`~Connection.eof` and a backend call's
answer with :meth:`~Connection.backend_answered` (or hands the Redis pool
:meth:`~Connection.backend_done` as the owner's callback); while
:attr:`~Connection.lingering` it drops what it reads and reports its size to
:meth:`~Connection.lingered`.

A readiness driver writes synchronously: ``_write`` sends until the socket is
full, calling :meth:`OutQueue.sent` after each write, and ``_interest`` sets the
poller's interest.

A completion driver (io_uring) has at most one send in flight per connection
(two could complete out of order). Its ``_write`` does nothing while
:attr:`~Connection.in_flight` is true; otherwise it submits a send of
:meth:`OutQueue.gather` (adjacent bytes joined; the queue keeps them until
they are reported sent) or, when the head is a file slice, a read of the
slice's next chunk at ``head.offset`` followed by a send of it, and sets
``in_flight``. On the send's completion it clears ``in_flight`` and calls
``pump(now, sent=res)``, which takes the bytes off the queue, tells the session
(a short send: the next ``_write`` sends the rest) and starts the next send,
lets the session go on, or finishes. Such a driver sets
:attr:`~Connection.waits_writable` false: ``pump`` then asks its ``_interest``
only when reading changes; the ``_interest`` ignores
``writing`` (completions need no writability) and keeps a recv armed while
``reading``, re-arming a single-shot recv after each completion while
:attr:`~Connection.reading` stays true. Its expiry scan calls
:meth:`~Connection.expired`, exactly as the readiness loop's does.

A driver whose transport paces itself (asyncio) hands all bytes over at once
and counts them as sent; it sets :attr:`~Connection.throttled` and
``in_flight`` while the transport asks for a pause, and ``in_flight`` while a
file is being sent by a task of its own.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from typing import TYPE_CHECKING

from servers.core import FileSlice, Session
from servers.settings import Settings

if TYPE_CHECKING:
    from servers.core.guestbook import BackendCall

Pending = bytes | memoryview | FileSlice


class OutQueue(deque[Pending]):
    """What a connection still has to write, head first (a ``deque``: the driver reads
    ``out[0]`` and tests ``if out`` directly)."""

    __slots__ = ()

    def sent(self, n: int) -> None:
        """``n`` bytes of the head left: trim or drop it (a finished file slice is
        closed). ``n`` may span several byte items, never more than one file slice."""
        while n:
            head = self[0]
            if isinstance(head, FileSlice):
                head.advance(n)
                if head.count <= 0:
                    head.close()
                    self.popleft()
                return
            size = len(head)
            if n < size:
                self[0] = memoryview(head)[n:]
                return
            self.popleft()
            n -= size

    def gather(self, limit: int) -> bytes | memoryview:
        """The leading byte items joined into one send of at most about ``limit`` bytes
        (the items stay queued until :meth:`sent`); the head must be bytes."""
        head = self[0]
        if len(self) == 1 or len(head) >= limit:  # type: ignore[arg-type]
            return head  # type: ignore[return-value]
        parts: list[bytes | memoryview] = []
        size = 0
        for item in self:
            if isinstance(item, FileSlice) or size >= limit:
                break
            parts.append(item)
            size += len(item)
        return b"".join(parts) if len(parts) > 1 else parts[0]

    def clear(self) -> None:
        """Forget everything, closing the file slices still queued."""
        for item in self:
            if isinstance(item, FileSlice):
                item.close()
        super().clear()


class Connection:
    """One connection's protocol session, output queue and life cycle; a driver's
    connection object subclasses it and implements the hooks (see the module
    docstring)."""

    __slots__ = ("session", "settings", "out", "reading", "writing", "in_flight",
                 "throttled", "lingering", "linger_until", "linger_left", "stopping",
                 "closed", "calls")

    #: Whether the driver waits for writability while output is queued; a completion
    #: driver does not (it is told when a send completes), and is then not asked to.
    waits_writable = True

    def __init__(self, session: Session, settings: Settings, calls: bool) -> None:
        self.session = session
        self.settings = settings
        self.out = OutQueue()
        self.reading = True  # what the driver waits for now (set through _interest)
        self.writing = False
        self.in_flight = False  # output is moving outside the queue (a send, a file task)
        self.throttled = False  # the transport asked for no more output (implies in_flight)
        self.lingering = False
        self.linger_until = 0.0
        self.linger_left = 0
        self.stopping = False
        self.closed = False
        self.calls = calls  # whether backend calls are performed (--redis)

    # -- the driver's part -------------------------------------------------------------

    def _write(self, now: float) -> None:
        """Write the queue as far as the transport takes it now (report each write
        with ``out.sent`` and ``session.sent``), or start writing its head."""
        raise NotImplementedError

    def _interest(self, reading: bool, writing: bool) -> None:
        """Wait for readability and/or writability from now on; set :attr:`reading`
        and :attr:`writing`."""
        raise NotImplementedError

    def _half_close(self) -> bool:
        """Stop writing (shutdown SHUT_WR); False if the connection broke meanwhile."""
        raise NotImplementedError

    def _close(self) -> None:
        """End the connection now (everything written is handed to the kernel)."""
        raise NotImplementedError

    def _perform(self, call: BackendCall) -> None:
        """Start the session's backend call; its answer comes back through the session."""
        raise NotImplementedError

    # -- the life cycle ----------------------------------------------------------------

    def pump(self, now: float, eof: bool = False, sent: int | None = None) -> None:
        """Move the session's output to the queue and write it; once it is all out, let
        the session parse what it held, and again. Then start its backend call, if
        any, and wait for what comes next: input, writability, or neither (finish).
        ``eof``: the peer has ended its stream (nothing to linger for). ``sent``: a
        completion driver's send took that many bytes off the queue's head: the queue
        and the session are told, and nothing new is asked of the session (it
        produces output only in ``received``, ``resume`` and the backend answers,
        each of which a pump follows)."""
        session, out = self.session, self.out
        if sent is None:
            out.extend(session.take_output())
        else:
            head = out[0]
            if type(head) is bytes and sent == len(head):
                out.popleft()  # the common case: one whole response left
            else:
                out.sent(sent)
            session.sent(sent, now)
        while True:
            if out:
                self._write(now)
                if self.closed:
                    return
            if out or self.in_flight:
                break
            if session.wants_input:
                # The common idle case, asked first: wanting input means not closing,
                # nothing held and no backend call pending.
                if self.writing or not self.reading:
                    self._interest(True, False)
                return
            if not session.paused or not session.resume(now):
                break
            out.extend(session.take_output())
        if self.calls:
            call = session.take_backend_call()
            if call is not None:
                self._perform(call)
        if out or self.in_flight:
            reading = session.wants_input and not self.throttled
            if reading != self.reading or self.waits_writable and not self.writing:
                self._interest(reading, True)
        elif session.closing:
            self.finish(now, eof)
        else:  # nothing in flight, so no transport's pause either
            reading = session.wants_input
            if self.writing or reading != self.reading:
                self._interest(reading, False)

    def backend_answered(self, replies: list[object] | None, now: float) -> None:
        """The answer to the session's backend call (None: the backend could not be
        reached): its response is made and the connection goes on; dropped if the
        connection is gone."""
        if self.closed:
            return
        if replies is None:
            self.session.backend_failed(now)
        else:
            self.session.backend_replied(replies, now)
        self.pump(now)

    def backend_done(self, replies: list[object] | None) -> None:
        """:meth:`backend_answered` now: what a driver hands the Redis pool as the
        owner's callback (``pool.perform(Connection.backend_done, ...)``)."""
        self.backend_answered(replies, time.monotonic())

    def eof(self, now: float) -> None:
        """The peer ended its stream: what it sent is still answered, then close."""
        if self.lingering:
            self._close()
            return
        self.session.eof_received(now)
        self.pump(now, eof=True)

    def finish(self, now: float, eof: bool = False) -> None:
        """All output is out and the session is done: close at once after the peer's
        end of stream or during a stop, else half-close and linger, so that unread
        input does not reset the connection and destroy the last response."""
        if self.lingering:
            return  # finished already (a pump after the last write)
        if eof or self.stopping or not self._half_close():
            self._close()
            return
        settings = self.settings
        self.lingering = True
        self.linger_until = now + settings.linger_seconds
        self.linger_left = settings.linger_bytes
        self._interest(True, False)

    def lingered(self, n: int) -> bool:
        """``n`` more bytes were read and dropped while lingering; True once the linger
        has taken all it may (the driver then closes)."""
        self.linger_left -= n
        return self.linger_left <= 0

    def deadline(self) -> float:
        """When :meth:`expired` becomes true unless something happens."""
        return self.linger_until if self.lingering else self.session.deadline()

    def expired(self, now: float) -> bool:
        """The linger, idle or header deadline has passed."""
        if self.lingering:
            return now >= self.linger_until
        return self.session.expired(now)

    def release(self) -> bool:
        """The connection ends: mark it closed and drop its queued output (closing the
        file slices); False if it had ended already, so the driver's teardown runs once."""
        if self.closed:
            return False
        self.closed = True
        self.out.clear()
        return True

    def stop(self, now: float) -> bool:
        """A graceful stop: finish the response in flight, then close. Returns True
        when nothing is in flight and the driver should close at once."""
        self.stopping = True
        if not (self.out or self.in_flight or self.session.awaiting_backend):
            return True
        self.session.finish()
        self.pump(now)
        return False


class SocketConnection(Connection):
    """A :class:`Connection` on a socket the driver owns (the readiness loop, the
    io_uring loop): the socket, its descriptor, and the half-close every such
    driver does the same way."""

    __slots__ = ("sock", "fd")

    def __init__(self, session: Session, settings: Settings, calls: bool,
                 sock: socket.socket) -> None:
        super().__init__(session, settings, calls)
        self.sock = sock
        self.fd = sock.fileno()

    def _half_close(self) -> bool:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return False
        return True
