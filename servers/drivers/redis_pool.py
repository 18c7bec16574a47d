"""The bookkeeping of an event loop's pool of Redis connections, without any I/O.

An event-loop driver performs the guestbook's backend calls on a pool of
non-blocking Redis connections in its own machinery. What does not depend on how
the loop waits and moves bytes is here, written once: which connection carries
which call, the bytes left to send, the reply accounting (a
:class:`~servers.core.resp.ReplyReader` per connection), the FIFO of calls
waiting for a connection, deadlines, and what a failure costs.

The rules, from the backend-call contract (:mod:`servers.core.session`):

- one call per connection at a time (a ``BLPOP`` holds its connection for the
  backend wait, so calls pipelined behind it would wait too);
- the pool grows on demand, a new connection opened for the call that needs it,
  up to ``limit``; calls beyond wait first in, first out for a free connection;
- a connection that fails (cannot connect, closed, sent garbage, too slow) is
  closed and its call reported failed; the next call opens a new one, so the
  server recovers when Redis comes back;
- an owner (a client connection) that goes away cancels its call: a waiting call
  is dropped, the replies of one in flight are read and dropped, and the
  connection then serves the next call;
- a call waits at most the reply timeout for a connection, connecting takes at
  most :data:`CONNECT_TIMEOUT`, and the replies must all arrive within the reply
  timeout (the backend wait plus :data:`REPLY_SLACK`) of the call's start.

The pool is a state machine. The driver feeds it what happened (:meth:`submit`,
:meth:`connected`, :meth:`sent`, :meth:`received`, :meth:`failed`,
:meth:`cancel`, :meth:`expire`) and then performs what it asks, in order, from
:meth:`take_effects`: :class:`Open` (start connecting ``link``; report
:meth:`connected` or :meth:`failed`), :class:`Send` (``link.output`` holds bytes:
write them, reporting :meth:`sent`), :class:`Close` (release the link's
``handle``) and :class:`Done` (hand the replies, or None for a failure, to the
owner's session). Nothing is called back, so a driver may feed the pool again
while it performs an effect (a finished call's session queues the next one)
without re-entering it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import hiredis

from servers.core.guestbook import BackendCall
from servers.core.resp import ReplyReader
from servers.drivers.blocking_backend import CONNECT_TIMEOUT, REPLY_SLACK
from servers.settings import Settings

CONNECTING = "connecting"
IDLE = "idle"
BUSY = "busy"
CLOSED = "closed"


class Job:
    """One backend call of one owner, from :meth:`RedisPool.submit` to its end."""

    __slots__ = ("owner", "call", "deadline", "cancelled")

    def __init__(self, owner: Hashable, call: BackendCall, deadline: float) -> None:
        self.owner = owner
        self.call = call
        self.deadline = deadline  # while it waits for a connection
        self.cancelled = False


class Link:
    """One Redis connection's state; ``handle`` belongs to the driver (its socket)."""

    __slots__ = ("handle", "state", "job", "deadline", "_out", "_reader")

    def __init__(self, job: Job, deadline: float) -> None:
        self.handle: Any = None
        self.state = CONNECTING
        self.job: Job | None = job
        self.deadline = deadline
        self._out = memoryview(b"")
        self._reader = ReplyReader()

    @property
    def output(self) -> memoryview:
        """The bytes of the current call still to be written (empty when none)."""
        return self._out

    @property
    def connecting(self) -> bool:
        return self.state == CONNECTING

    @property
    def alive(self) -> bool:
        """Not yet failed or closed: events for a dead link are ignored."""
        return self.state != CLOSED

    def __repr__(self) -> str:
        return f"<Link {self.state} out={len(self._out)}>"


class Open(NamedTuple):
    """Start connecting ``link`` (store the socket in ``link.handle``)."""

    link: Link


class Send(NamedTuple):
    """``link.output`` holds bytes to write."""

    link: Link


class Close(NamedTuple):
    """Release ``link.handle``: the link failed or the pool is closing."""

    link: Link


class Done(NamedTuple):
    """The owner's call ended: its replies, or None when Redis could not answer."""

    owner: Hashable
    replies: list[object] | None


Effect = Open | Send | Close | Done


class RedisPool:
    """Up to ``limit`` Redis connections, one call on each at a time (module docstring)."""

    def __init__(self, limit: int, reply_timeout: float,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        if limit < 1:
            raise ValueError("a pool needs room for one connection")
        self.limit = limit
        self.reply_timeout = reply_timeout
        self.connect_timeout = connect_timeout
        self.links: set[Link] = set()  # open or opening
        self._idle: list[Link] = []  # most recently freed last: reused first
        self._waiting: deque[Job] = deque()  # cancelled ones are skipped when reached
        self._jobs: dict[Hashable, Job] = {}  # owner -> its live call
        self._effects: list[Effect] = []
        self._closed = False

    @classmethod
    def for_settings(cls, settings: Settings) -> RedisPool | None:
        """The loop's pool, or None when the server has no ``--redis``."""
        if settings.redis is None:
            return None
        return cls(settings.backend_pool, settings.backend_wait_ms / 1000 + REPLY_SLACK)

    # -- what the pool holds -----------------------------------------------------------

    @property
    def size(self) -> int:
        """Connections open or being opened."""
        return len(self.links)

    @property
    def waiting(self) -> int:
        """Calls waiting for a free connection."""
        return sum(not job.cancelled for job in self._waiting)

    def busy(self, owner: Hashable) -> bool:
        """Whether ``owner`` has a call in the pool (waiting or in flight)."""
        return owner in self._jobs

    def take_effects(self) -> list[Effect]:
        """What the driver must do now, in order; forgotten once returned."""
        effects, self._effects = self._effects, []
        return effects

    @property
    def has_effects(self) -> bool:
        return bool(self._effects)

    def perform(self, done: Callable[[Any, list[object] | None], None],
                send: Callable[[Link], None], open_: Callable[[Link], None],
                close: Callable[[Link], None]) -> None:
        """Take the effects and hand each to the driver's own way of doing it, until none
        are left (a finished call's session may queue the next call: same turn)."""
        while effects := self.take_effects():
            for effect in effects:
                if isinstance(effect, Done):
                    done(effect.owner, effect.replies)
                elif isinstance(effect, Send):
                    send(effect.link)
                elif isinstance(effect, Open):
                    open_(effect.link)
                elif isinstance(effect, Close):
                    close(effect.link)

    # -- what the owners do ------------------------------------------------------------

    def submit(self, owner: Hashable, call: BackendCall, now: float) -> None:
        """Queue ``owner``'s call: on an idle connection, a new one, or FIFO."""
        if owner in self._jobs:
            raise RuntimeError("one backend call per owner at a time")
        job = Job(owner, call, now + self.reply_timeout)
        self._jobs[owner] = job
        if self._closed:
            self._fail(job)
        elif self._idle:
            self._assign(self._idle.pop(), job, now)
        elif len(self.links) < self.limit:
            self._open(job, now)
        else:
            self._waiting.append(job)

    def cancel(self, owner: Hashable) -> None:
        """``owner`` went away: forget its call; replies already asked for are dropped."""
        job = self._jobs.pop(owner, None)
        if job is not None:
            job.cancelled = True

    # -- what the connections did ------------------------------------------------------

    def connected(self, link: Link, now: float) -> None:
        """``link`` finished connecting."""
        if link.state != CONNECTING:
            return
        job = link.job
        link.job = None
        if job is None or job.cancelled:
            self._release(link, now)
        else:
            self._assign(link, job, now)

    def sent(self, link: Link, count: int) -> None:
        """``count`` bytes of ``link.output`` were written."""
        if link.alive:
            link._out = link._out[count:]

    def received(self, link: Link, data: bytes | memoryview, now: float) -> None:
        """Bytes Redis sent on ``link`` (copied)."""
        if not link.alive:
            return
        job = link.job
        if link.state != BUSY or job is None:
            self.failed(link, now)  # Redis speaks only when spoken to
            return
        reader = link._reader
        try:
            reader.feed(data)
        except hiredis.ProtocolError:
            self.failed(link, now)
            return
        if reader.available < job.call.replies:
            return
        replies = reader.take(job.call.replies)
        desync = reader.available > 0 or len(link._out) > 0
        link.job = None
        if not job.cancelled:
            del self._jobs[job.owner]
            self._effects.append(Done(job.owner, replies))
        if desync:  # more than was asked for: the stream cannot be trusted
            self.failed(link, now)
        else:
            self._release(link, now)

    def failed(self, link: Link, now: float) -> None:
        """``link`` cannot be used: close it, fail its call, open one for a waiter."""
        if not link.alive:
            return
        link.state = CLOSED
        link._out = memoryview(b"")
        self.links.discard(link)
        if link in self._idle:
            self._idle.remove(link)
        self._effects.append(Close(link))
        job, link.job = link.job, None
        if job is not None and not job.cancelled:
            self._fail(job)
        head = self._next_waiter()
        if head is not None:
            self._open(head, now)

    def expire(self, now: float) -> None:
        """Fail what ran out of time: slow connects and replies, calls kept waiting."""
        while self._waiting and (self._waiting[0].cancelled
                                 or self._waiting[0].deadline <= now):
            job = self._waiting.popleft()
            if not job.cancelled:
                self._fail(job)
        for link in [link for link in self.links if link.deadline <= now]:
            self.failed(link, now)

    def close(self) -> None:
        """Close every connection and fail every call (the loop is ending); a call
        submitted afterwards fails at once."""
        self._closed = True
        for link in list(self.links):
            self.failed(link, math.inf)
        for job in self._waiting:
            if not job.cancelled:
                self._fail(job)
        self._waiting.clear()

    # -- internals ---------------------------------------------------------------------

    def _open(self, job: Job, now: float) -> None:
        if self._closed:
            self._fail(job)
            return
        link = Link(job, now + self.connect_timeout)
        self.links.add(link)
        self._effects.append(Open(link))

    def _assign(self, link: Link, job: Job, now: float) -> None:
        link.state = BUSY
        link.job = job
        link.deadline = now + self.reply_timeout
        link._out = memoryview(job.call.commands)
        self._effects.append(Send(link))

    def _release(self, link: Link, now: float) -> None:
        """``link`` is free: the next waiter's, or idle."""
        job = self._next_waiter()
        if job is not None:
            self._assign(link, job, now)
        else:
            link.state = IDLE
            link.deadline = math.inf
            self._idle.append(link)

    def _next_waiter(self) -> Job | None:
        while self._waiting:
            job = self._waiting.popleft()
            if not job.cancelled:
                return job
        return None

    def _fail(self, job: Job) -> None:
        del self._jobs[job.owner]
        self._effects.append(Done(job.owner, None))
