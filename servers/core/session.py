"""The interface between the protocol core and the drivers that move bytes.

A :class:`Session` is one connection's protocol state. Drivers call
:meth:`Session.received` with what they read, :meth:`Session.eof_received` when
the peer stops sending, and send what :meth:`Session.take_output` returns. When
:attr:`Session.closing` is true the driver stops reading, flushes the output and
closes. Timeouts are asked of :meth:`Session.deadline` and :meth:`Session.expired`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from servers.settings import Settings


@dataclass
class FileSlice:
    """``count`` bytes of an open file from ``offset``: sent with sendfile where possible.

    The session opens the file; the driver that sends or drops the slice calls
    :meth:`close` (dropping the last reference closes it too).
    """

    file: BinaryIO
    offset: int
    count: int

    def close(self) -> None:
        self.file.close()

    def read_chunk(self, limit: int) -> bytes:
        """Read up to ``limit`` bytes at the current offset (for drivers without sendfile)."""
        return os.pread(self.file.fileno(), min(limit, self.count), self.offset)

    def advance(self, n: int) -> None:
        self.offset += n
        self.count -= n




Write = bytes | FileSlice


class Session(ABC):
    """One connection's protocol state; see the module docstring for the contract."""

    def __init__(self, settings: Settings, now: float) -> None:
        self.settings = settings
        self.closing = False
        self._out: list[Write] = []
        self._last_activity = now

    @abstractmethod
    def received(self, data: bytes | memoryview, now: float) -> None:
        """Take bytes read from the peer (copied if kept: the buffer may be reused)."""

    @abstractmethod
    def eof_received(self, now: float) -> None:
        """The peer shut down its sending side."""

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

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    def touch(self, now: float) -> None:
        """Count write progress as activity, so a slow reader of a big file is not idle."""
        self._last_activity = now

    def deadline(self) -> float:
        """The monotonic time after which :meth:`expired` is true unless activity happens."""
        return self._last_activity + self.settings.idle_timeout

    def expired(self, now: float) -> bool:
        return now >= self.deadline()

    def _emit(self, data: Write) -> None:
        self._out.append(data)


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
