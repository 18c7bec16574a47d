"""The listening socket and the readiness line every backend prints."""

from __future__ import annotations

import socket
import sys

from servers.settings import Settings


def open_listener(settings: Settings, *, reuseport: bool = False, listen: bool = True,
                  port: int | None = None) -> socket.socket:
    """A TCP socket bound to the settings' address (``port`` overrides the settings')."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((settings.host, settings.port if port is None else port))
        if listen:
            sock.listen(settings.backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def announce(host: str, port: int) -> None:
    """Print the one readiness line harnesses and tests wait for."""
    sys.stdout.write(f"listening on {host}:{port}\n")
    sys.stdout.flush()
