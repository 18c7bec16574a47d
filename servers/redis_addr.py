"""Where the guestbook's Redis listens: ``--redis HOST:PORT`` or ``--redis unix:PATH``.

Shared by the servers (their ``--redis`` flag and the drivers' connections) and the
harness, which starts its own Redis and passes its address on.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class RedisAddr:
    """A unix socket path, or a TCP host and port."""

    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def socket_args(self) -> tuple[int, object]:
        """(address family, address) for ``socket.socket(family)`` and ``connect``."""
        if self.path:
            return socket.AF_UNIX, self.path
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        return family, (self.host, self.port)

    def connect(self, timeout: float | None = 5.0,
                socket_class: type[socket.socket] = socket.socket) -> socket.socket:
        """A connected blocking socket (TCP_NODELAY on TCP), of ``socket_class`` (gevent's
        cooperative one, for a greenlet)."""
        family, address = self.socket_args()
        s = socket_class(family, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect(address)
            if family != socket.AF_UNIX:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            s.close()
            raise
        return s


def parse_addr(text: str) -> RedisAddr:
    """``unix:/path/redis.sock`` or ``HOST:PORT`` (``[::1]:6379`` for IPv6)."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path.startswith("/"):
            raise ValueError(f"{text!r}: unix: needs an absolute path")
        return RedisAddr(path=path)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: expected HOST:PORT or unix:PATH")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return RedisAddr(host=host, port=int(port))
