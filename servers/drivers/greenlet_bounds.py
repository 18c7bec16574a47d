"""Bounds for the blocking driver on gevent's cooperative sockets: one timer a connection.

With a timeout set, each wait of a gevent socket creates, starts, stops and closes a
libev timer of its own (``gevent.Timeout``), and a blocked receive waits at every
round trip. :class:`GreenletBounds` keeps the socket without a timeout and arms one
timer for the connection at the current bound. A keep-alive connection's bound
moves later with every request, so the timer usually fires before it: it then looks
at the bound now in force and is armed again for it, once per idle timeout. When
the bound has passed it throws TimeoutError into the connection's greenlet, which is
waiting in the receive or send that must end, as a socket timeout would.

The bound of a receive is fixed when it begins; that of a send is the sender's last
progress (or the last wake, if later) plus its step, as a per-call socket timeout
would give. Between the two (a backend call, the linger at close) nothing is
bounded here: those waits have bounds of their own.
"""

from __future__ import annotations

import math
import socket
import time

from servers.drivers.blocking import Sender

_NONE, _RECEIVE, _SEND = 0, 1, 2


class GreenletBounds:
    """The :class:`servers.drivers.blocking.Bounds` of one connection's greenlet."""

    __slots__ = ("sender", "greenlet", "loop", "watcher", "fires_at", "phase", "due",
                 "woke", "closed")

    def __init__(self, sock: socket.socket, sender: Sender) -> None:
        import gevent

        sock.settimeout(None)
        self.sender = sender
        self.greenlet = gevent.getcurrent()
        self.loop = gevent.get_hub().loop
        self.watcher: object | None = None
        self.fires_at = math.inf  # when the armed timer fires (monotonic); inf: none armed
        self.phase = _NONE
        self.due = math.inf  # the bound of the receive in progress
        self.woke = -math.inf  # when a send was last woken without progress
        self.closed = False

    def receive_within(self, timeout: float) -> None:
        self.phase = _RECEIVE
        self.due = due = time.monotonic() + timeout
        if due < self.fires_at:
            self._arm(due)

    def send_within(self, timeout: float) -> None:
        self.phase = _SEND
        due = self.sender.last + timeout
        if due < self.fires_at:
            self._arm(due)

    def python_timeout(self, timeout: float) -> None:
        """gevent's sendfile is its own send loop on this socket: bounded as a send."""

    def unbound(self) -> None:
        self.phase = _NONE

    def close(self) -> None:
        self.closed = True
        self.phase = _NONE
        self._disarm()

    def _send_due(self) -> float:
        return max(self.sender.last, self.woke) + self.sender.step

    def _arm(self, at: float) -> None:
        self._disarm()
        watcher = self.loop.timer(max(0.0, at - time.monotonic()))
        watcher.start(self._fire)
        self.watcher = watcher
        self.fires_at = at

    def _disarm(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None
        self.fires_at = math.inf

    def _fire(self) -> None:
        # The timer has stopped by firing; it stays referenced until this callback ends.
        fired, self.watcher = self.watcher, None  # noqa: F841
        self.fires_at = math.inf
        if self.phase == _NONE:
            return  # re-armed by the next receive or send
        now = time.monotonic()
        due = self.due if self.phase == _RECEIVE else self._send_due()
        if now < due:
            self._arm(due)
            return
        self.woke = now
        self.greenlet.throw(TimeoutError("timed out"))
        # Back here once the greenlet waits again: a send retried after the wake gets
        # a bound of its own (a receive is bounded again by the driver).
        if not self.closed and self.phase == _SEND and self.fires_at == math.inf:
            self._arm(self._send_due())
