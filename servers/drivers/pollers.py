"""Readiness pollers behind one interface: select, poll, epoll (level or edge).

``register(fd, read, write)``/``modify``/``unregister`` set interest;
``poll(timeout)`` returns ``(fd, readable, writable, hangup)`` tuples, errors and
hang-ups also reported as readable so the read path finds them. An edge-triggered
poller is registered once for both directions and never modified; the loop
then reads and writes until EAGAIN.
"""

from __future__ import annotations

import select
from typing import Any, ClassVar

Event = tuple[int, bool, bool, bool]


class Poller:
    """Interface; :attr:`max_fd` is the largest descriptor the poller can watch."""

    edge: ClassVar[bool] = False
    max_fd: ClassVar[int | None] = None
    name: ClassVar[str] = ""

    def register(self, fd: int, read: bool, write: bool) -> None:
        raise NotImplementedError

    def modify(self, fd: int, read: bool, write: bool) -> None:
        raise NotImplementedError

    def unregister(self, fd: int) -> None:
        raise NotImplementedError

    def poll(self, timeout: float | None) -> list[Event]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the kernel object, if any."""


class SelectPoller(Poller):
    """``select(2)``: three fd sets rebuilt on every call; descriptors < FD_SETSIZE only."""

    name = "select"
    max_fd = 1023  # FD_SETSIZE - 1 in glibc

    def __init__(self) -> None:
        self._readers: set[int] = set()
        self._writers: set[int] = set()

    def register(self, fd: int, read: bool, write: bool) -> None:
        if fd > self.max_fd:
            raise ValueError(f"fd {fd} is above FD_SETSIZE")
        self.modify(fd, read, write)

    def modify(self, fd: int, read: bool, write: bool) -> None:
        (self._readers.add if read else self._readers.discard)(fd)
        (self._writers.add if write else self._writers.discard)(fd)

    def unregister(self, fd: int) -> None:
        self._readers.discard(fd)
        self._writers.discard(fd)

    def poll(self, timeout: float | None) -> list[Event]:
        r, w, x = select.select(self._readers, self._writers, self._readers, timeout)
        readable = set(r) | set(x)
        writable = set(w)
        return [(fd, fd in readable, fd in writable, False) for fd in readable | writable]


class _KernelPoller(Poller):
    """A poller whose interest set is a kernel object (``select.poll``/``select.epoll``)
    with register/modify/unregister of an event mask."""

    _IN: ClassVar[int]
    _OUT: ClassVar[int]

    def __init__(self, kernel: Any) -> None:  # what select.poll() or select.epoll() made
        self._kernel = kernel

    def _mask(self, read: bool, write: bool) -> int:
        return (self._IN if read else 0) | (self._OUT if write else 0)

    def register(self, fd: int, read: bool, write: bool) -> None:
        self._kernel.register(fd, self._mask(read, write))

    def modify(self, fd: int, read: bool, write: bool) -> None:
        self._kernel.modify(fd, self._mask(read, write))

    def unregister(self, fd: int) -> None:
        self._kernel.unregister(fd)


class PollPoller(_KernelPoller):
    """``poll(2)``: one array of descriptors passed on every call."""

    name = "poll"
    _IN = select.POLLIN | select.POLLPRI
    _OUT = select.POLLOUT
    _ERR = select.POLLERR | select.POLLHUP | select.POLLNVAL

    def __init__(self) -> None:
        super().__init__(select.poll())

    def poll(self, timeout: float | None) -> list[Event]:
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        return [
            (fd, bool(ev & (self._IN | self._ERR)), bool(ev & select.POLLOUT),
             bool(ev & self._ERR))
            for fd, ev in self._kernel.poll(ms)
        ]


class EpollPoller(_KernelPoller):
    """``epoll(7)``, level-triggered: interest kept in the kernel, only ready fds returned."""

    name = "epoll"
    _IN = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLPRI
    _OUT = select.EPOLLOUT
    _ERR = select.EPOLLERR | select.EPOLLHUP
    _HUP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
    _READABLE = _IN | _ERR

    def __init__(self) -> None:
        super().__init__(select.epoll())

    def poll(self, timeout: float | None) -> list[Event]:
        events = self._kernel.poll(-1 if timeout is None else timeout)
        readable, writable, hup = self._READABLE, select.EPOLLOUT, self._HUP
        return [(fd, ev & readable != 0, ev & writable != 0, ev & hup != 0)
                for fd, ev in events]

    def close(self) -> None:
        self._kernel.close()


class EdgePoller(EpollPoller):
    """``epoll(7)`` with EPOLLET: one event per change of state, so the loop drains fully."""

    name = "epoll-et"
    edge = True

    def _mask(self, read: bool, write: bool) -> int:
        return self._IN | select.EPOLLOUT | select.EPOLLET

    def modify(self, fd: int, read: bool, write: bool) -> None:
        """Interest never changes under edge triggering."""


POLLERS: dict[str, type[Poller]] = {
    cls.name: cls for cls in (SelectPoller, PollPoller, EpollPoller, EdgePoller)
}
