"""The blocking models' way to make a backend call: block the worker on its own Redis.

A :class:`BlockingBackend` is one Redis connection, used by one worker at a time:
the thread of ``threaded``, a pool thread of ``threadpool`` and ``prefork``, the
process of ``iterative`` and of each ``forking`` child, the greenlet of ``gevent``
(whose cooperative socket class it then uses, so waiting on Redis yields to the
other greenlets). It connects on the first call; after any failure it closes, the
call is reported failed (503), and the next call connects again, so a server
recovers by itself when Redis comes back.
"""

from __future__ import annotations

import socket
import time

import hiredis

from servers.core.guestbook import BackendCall
from servers.core.resp import ReplyReader
from servers.redis_addr import RedisAddr
from servers.settings import Settings

CONNECT_TIMEOUT = 2.0
REPLY_SLACK = 5.0  # beyond the backend wait, how long Redis may take to answer


class BackendUnavailable(Exception):
    """The call could not be made or answered: Redis is down, lost, or too slow."""


class BlockingBackend:
    """One worker's Redis connection (see the module docstring)."""

    def __init__(self, addr: RedisAddr, wait_ms: float = 0.0,
                 socket_class: type[socket.socket] = socket.socket) -> None:
        self.addr = addr
        self.reply_timeout = wait_ms / 1000 + REPLY_SLACK
        self._socket_class = socket_class
        self._sock: socket.socket | None = None
        self._reader = ReplyReader()

    @classmethod
    def for_settings(cls, settings: Settings,
                     socket_class: type[socket.socket] = socket.socket) -> BlockingBackend | None:
        """The worker's connection, or None when the server has no ``--redis``."""
        if settings.redis is None:
            return None
        return cls(settings.redis, settings.backend_wait_ms, socket_class)

    def perform(self, call: BackendCall) -> list[object]:
        """Send the call's commands and block until all its replies have arrived."""
        try:
            sock = self._connected()
            sock.settimeout(self.reply_timeout)
            sock.sendall(call.commands)
            deadline = time.monotonic() + self.reply_timeout
            while self._reader.available < call.replies:
                if time.monotonic() > deadline:
                    raise TimeoutError("Redis did not answer in time")
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("Redis closed the connection")
                self._reader.feed(data)
            return self._reader.take(call.replies)
        except (OSError, hiredis.ProtocolError) as exc:
            self.close()
            raise BackendUnavailable(str(exc) or type(exc).__name__) from None

    def _connected(self) -> socket.socket:
        if self._sock is None:
            self._sock = self.addr.connect(CONNECT_TIMEOUT, self._socket_class)
            self._reader = ReplyReader()
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
