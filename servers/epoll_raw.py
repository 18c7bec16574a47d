"""epoll: a single-threaded readiness loop on ``select.epoll``, non-blocking sockets.

Level-triggered by default; ``--edge`` switches to edge-triggered (EPOLLET),
where every ready descriptor is drained until EAGAIN.
"""

from __future__ import annotations

import argparse
import socket

from servers.backend import Backend
from servers.cli import main
from servers.drivers.pollers import EdgePoller, EpollPoller
from servers.drivers.readiness import ReadinessLoop
from servers.settings import Settings
from servers.stop import StopSignal


class Epoll(Backend):
    """One thread, one epoll instance, every connection non-blocking."""

    name = "epoll"
    guestbook = True
    backend_pool = True

    def can_sendfile(self, options: argparse.Namespace) -> bool:
        return True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--edge", action="store_true",
                            help="edge-triggered (EPOLLET) instead of level-triggered")

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        poller = EdgePoller() if options.edge else EpollPoller()
        ReadinessLoop(poller, listener, settings, stop).run()


if __name__ == "__main__":
    main(Epoll())
