"""iterative: one connection at a time, accepted and served on the main thread.

The baseline of the Linux Applications Performance series: while one client is
served, the others wait in the listen backlog.
"""

from __future__ import annotations

import argparse
import socket

from servers.backend import Backend
from servers.cli import main
from servers.core import session_factory
from servers.drivers.blocking import ConnectionSet, accept_until_stopped, serve_connection
from servers.drivers.blocking_backend import BlockingBackend
from servers.settings import Settings
from servers.stop import StopSignal


class Iterative(Backend):
    """Serve one client at a time; the rest wait in the backlog."""

    name = "iterative"
    guestbook = True
    workers_mode = None

    def can_sendfile(self, options: argparse.Namespace) -> bool:
        return True

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        new_session = session_factory(settings)
        current = ConnectionSet()
        stop.add_callback(current.stop_all)  # wakes the client being served, if idle

        backend = BlockingBackend.for_settings(settings)  # the one worker's Redis

        def handle(sock: socket.socket) -> None:
            current.add(sock)
            try:
                serve_connection(sock, new_session, settings, stop=stop, backend=backend)
            finally:
                current.discard(sock)

        try:
            accept_until_stopped(listener, stop, handle)
        finally:
            if backend is not None:
                backend.close()


if __name__ == "__main__":
    main(Iterative())
