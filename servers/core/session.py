"""The interface between the protocol core and the drivers that move bytes.

A :class:`Session` is one connection's protocol state. Drivers call
:meth:`Session.received` with what they read, :meth:`Session.eof_received` when
the peer stops sending, send what :meth:`Session.take_output` returns and report
each byte that left with :meth:`Session.sent`. When :attr:`Session.closing` is
true the driver stops reading, flushes the output and closes; a driver that must
end a connection itself (a graceful stop) calls :meth:`Session.finish`. Timeouts are asked
of :meth:`Session.deadline` and :meth:`Session.expired`.

Backpressure is decided here, once for every driver: the session counts the
output it produced that the driver has not reported sent, and once that passes
the write high-water mark it stops parsing, between two requests, and keeps the
unparsed rest of the input (:attr:`Session.paused`). The driver reads nothing
while :attr:`Session.wants_input` is false, and calls :meth:`Session.resume`
when its output has drained; so what one connection holds is the mark plus one
response, whatever one read contained.

Backend calls (the guestbook's Redis commands) are emitted the same way, never
performed here. A request that needs the backend queues a
:class:`~servers.core.guestbook.BackendCall`; the driver takes it
(:meth:`Session.take_backend_call`), performs it in its model's own way and hands
the decoded replies back (:meth:`Session.backend_replied`) or reports that the
backend could not be reached (:meth:`Session.backend_failed`). Output produced
after a pending call waits behind it, so responses leave in request order; parsing
pauses while a call is pending (the rest of the input is held, as under
backpressure), and :attr:`Session.closing` stays false until every pending
response exists. A driver performs one call of a session at a time.
"""

from __future__ import annotations

import errno
import math
import os
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

from servers.settings import Settings

if TYPE_CHECKING:
    from servers.core.guestbook import BackendCall


class FileSlice:
    """``count`` bytes of a file from ``offset``, sent with sendfile where possible.

    The file is opened only when the driver reaches it (:meth:`open`), so a queue
    of pipelined file responses holds no descriptor; the file must still be the
    one whose length went into the response head (same device and inode, long
    enough), else opening fails with OSError and the driver ends the connection.
    The driver that sends or drops the slice calls :meth:`close`.
    """

    __slots__ = ("path", "offset", "count", "identity", "_file")

    def __init__(self, path: bytes, offset: int, count: int,
                 identity: tuple[int, int] = (0, 0)) -> None:
        self.path = path
        self.offset = offset
        self.count = count
        self.identity = identity
        self._file: BinaryIO | None = None

    def open(self) -> BinaryIO:
        """The open file, opened on first use."""
        if self._file is None:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                st = os.fstat(fd)
                if ((st.st_dev, st.st_ino) != self.identity
                        or st.st_size < self.offset + self.count):
                    raise OSError(errno.ESTALE, "file replaced or shrunk since its head was sent")
            except BaseException:
                os.close(fd)
                raise
            self._file = os.fdopen(fd, "rb")
        return self._file

    def fileno(self) -> int:
        return self.open().fileno()

    @property
    def is_open(self) -> bool:
        return self._file is not None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read_chunk(self, limit: int) -> bytes:
        """Read up to ``limit`` bytes at the current offset (for drivers without sendfile)."""
        return os.pread(self.fileno(), min(limit, self.count), self.offset)

    def write_some(self, fd: int, limit: int, use_sendfile: bool) -> int:
        """Move up to ``limit`` bytes from the current offset to the non-blocking socket
        ``fd``, by sendfile(2) or by read+write, and return how many left (the caller
        advances). BlockingIOError when the socket is full; ConnectionError when the
        file ends early."""
        if use_sendfile:
            sent = os.sendfile(fd, self.fileno(), self.offset, min(limit, self.count))
        else:
            data = self.read_chunk(limit)
            sent = os.write(fd, data) if data else 0  # the unsent rest is read again
        if sent == 0:
            raise ConnectionError("file shrank while being sent")
        return sent

    def send_some(self, fd: int, limit: int, use_sendfile: bool) -> int:
        """:meth:`write_some`, then advance past what left."""
        sent = self.write_some(fd, limit, use_sendfile)
        self.advance(sent)
        return sent

    def advance(self, n: int) -> None:
        self.offset += n
        self.count -= n


Write = bytes | FileSlice


def write_size(item: Write) -> int:
    return item.count if isinstance(item, FileSlice) else len(item)


class _Pending:
    """A response that waits for a backend call: the call, and what makes the response
    from its replies (None when the backend could not be reached)."""

    __slots__ = ("call", "finish", "taken")

    def __init__(self, call: BackendCall, finish: Callable[[list[object] | None], None]) -> None:
        self.call = call
        self.finish = finish
        self.taken = False


class Session(ABC):
    """One connection's protocol state; see the module docstring for the contract."""

    def __init__(self, settings: Settings, now: float) -> None:
        self.settings = settings
        self._closing = False
        self._out: list[Write] = []
        # From the first pending backend call on: what must leave after it, in order.
        self._order: deque[Write | _Pending] = deque()
        self._unsent = 0  # produced and not yet reported sent by the driver
        self._held = bytearray()  # read but not parsed: the output was over the mark
        self._eof = False
        self._last_activity = now
        self._mark = settings.write_high_water

    @abstractmethod
    def _feed(self, data: memoryview, now: float) -> int:
        """Parse ``data`` until :attr:`over_mark` (checked between requests) or the
        end; return how many bytes were consumed. Kept bytes are copied."""

    @property
    def closing(self) -> bool:
        """The driver stops reading, sends what is left and closes: true once
        :meth:`finish` was called (or the protocol ended the connection) and every
        pending response exists."""
        return self._closing and not self._order

    def finish(self) -> None:
        """Finish the response in flight, then close: nothing more is read or
        answered; what is produced (and what pending backend calls will produce)
        still leaves, and then :attr:`closing` tells the driver to close."""
        self._closing = True

    @property
    def blocked(self) -> bool:
        """Parsing waits: the output is over the mark, or a backend call is pending."""
        return self.over_mark or bool(self._order)

    def received(self, data: bytes | memoryview, now: float) -> None:
        """Take bytes read from the peer (copied if kept: the buffer may be reused)."""
        self._last_activity = now
        if self._closing or not data:
            return
        if self._held or self._order:
            self._held += data
            self.resume(now)
            return
        if type(data) is memoryview:  # the driver's view: it releases it
            used = self._feed(data, now)
            if used < len(data) and not self._closing:
                self._held = bytearray(data[used:])
            return
        with memoryview(data) as view:
            used = self._feed(view, now)
            if used < len(view) and not self._closing:
                self._held = bytearray(view[used:])

    def resume(self, now: float) -> bool:
        """Parse held input as far as the mark allows; return whether any was parsed.
        Drivers call this when their output has drained and :attr:`paused` is true."""
        if not self._held or self._closing or self.blocked:
            return False
        held, self._held = self._held, bytearray()
        with memoryview(held) as view:
            used = self._feed(view, now)
            if used < len(view) and not self._closing:
                self._held = bytearray(view[used:])
        if self._eof and not self._held:
            self._closing = True
        return used > 0

    def eof_received(self, now: float) -> None:
        """The peer shut down its sending side: what it sent is still answered."""
        self._eof = True
        if not self._held:
            self._closing = True

    # -- backend calls -----------------------------------------------------------------

    @property
    def awaiting_backend(self) -> bool:
        """A backend call is pending (taken by the driver or not)."""
        return bool(self._order)

    def take_backend_call(self) -> BackendCall | None:
        """The next backend call to perform, once; None while one is in flight or none."""
        head = self._order[0] if self._order else None
        if isinstance(head, _Pending) and not head.taken:
            head.taken = True
            return head.call
        return None

    def backend_replied(self, replies: list[object], now: float) -> None:
        """The replies to the call last taken: its response is made, what waited behind
        it follows, and parsing resumes (as far as the mark allows)."""
        self._backend_done(replies, now)

    def backend_failed(self, now: float) -> None:
        """The call last taken could not be performed (backend unreachable or lost)."""
        self._backend_done(None, now)

    def _backend_done(self, replies: list[object] | None, now: float) -> None:
        pending = self._order.popleft() if self._order else None
        if not isinstance(pending, _Pending) or not pending.taken:
            raise RuntimeError("no backend call was taken")
        self._last_activity = now
        rest, self._order = self._order, deque()
        pending.finish(replies)  # emits into _out: it is first in line now
        while rest and not isinstance(rest[0], _Pending):
            self._out.append(rest.popleft())  # type: ignore[arg-type]
        self._order = rest
        if self._held:
            self.resume(now)
        elif self._eof:
            self._closing = True

    def _await_backend(self, call: BackendCall,
                       finish: Callable[[list[object] | None], None]) -> None:
        """Queue a response that needs ``call``; ``finish`` emits it from the replies."""
        self._order.append(_Pending(call, finish))

    def take_output(self) -> list[Write]:
        """Return and forget what must be written next, adjacent bytes joined."""
        out, self._out = self._out, []
        if len(out) < 2:
            return out
        merged: list[Write] = []
        run: list[bytes] = []
        for item in out:
            if isinstance(item, bytes):
                run.append(item)
                continue
            if run:
                merged.append(b"".join(run))
                run = []
            merged.append(item)
        if run:
            merged.append(b"".join(run))
        return merged

    def sent(self, n: int, now: float) -> None:
        """``n`` bytes of the output left (or were handed to a transport that paces
        itself); write progress also counts as activity, so a slow reader of a big
        file is not idle."""
        self._unsent -= n
        self._last_activity = now

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    @property
    def over_mark(self) -> bool:
        return self._unsent > self._mark

    @property
    def paused(self) -> bool:
        """Input is held unparsed until the output drains below the mark."""
        return bool(self._held)

    @property
    def wants_input(self) -> bool:
        """Whether the driver should read: not closing, nothing held, output under the mark."""
        return not (self._closing or self._held or self._order or self._unsent > self._mark)

    def deadline(self) -> float:
        """The monotonic time after which :meth:`expired` is true unless activity happens.
        Infinite while a backend call is pending: the driver bounds the call itself, and the
        idle clock starts again when the call is answered."""
        if self._order:
            return math.inf
        return self._last_activity + self.settings.idle_timeout

    def expired(self, now: float) -> bool:
        return now >= self.deadline()

    def _emit(self, data: Write) -> None:
        (self._order if self._order else self._out).append(data)
        self._unsent += len(data) if type(data) is bytes else write_size(data)

    def _output_mark(self) -> tuple[int, int]:
        """Where the output ends now, for :meth:`_drop_output_since`."""
        return len(self._out), len(self._order)

    def _drop_output_since(self, mark: tuple[int, int]) -> None:
        """Forget what was emitted since :meth:`_output_mark` gave ``mark`` (a failed
        response)."""
        out_mark, order_mark = mark
        for item in self._out[out_mark:]:
            self._unsent -= write_size(item)
        del self._out[out_mark:]
        while len(self._order) > order_mark:
            item = self._order.pop()
            if not isinstance(item, _Pending):
                self._unsent -= write_size(item)


def session_factory(settings: Settings) -> Callable[[float], Session]:
    """Return ``new_session(now)`` for the protocol the settings name."""
    if settings.proto == "echo":
        from servers.core.echo import EchoSession

        return lambda now: EchoSession(settings, now)
    if settings.proto == "http":
        from servers.core.http import HttpApp

        app = HttpApp(settings)
        return app.new_session
    raise ValueError(f"unknown protocol {settings.proto!r}")
