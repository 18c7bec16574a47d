"""epoll: a single-threaded readiness loop on ``select.epoll``, non-blocking sockets.

Level-triggered by default; ``--edge`` switches to edge-triggered (EPOLLET),
where every ready descriptor is drained until EAGAIN.
"""

from __future__ import annotations

import argparse

from servers.cli import main
from servers.drivers.pollers import EdgePoller, EpollPoller, Poller
from servers.drivers.readiness import ReadinessBackend


class Epoll(ReadinessBackend):
    """One thread, one epoll instance, every connection non-blocking."""

    name = "epoll"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--edge", action="store_true",
                            help="edge-triggered (EPOLLET) instead of level-triggered")

    def poller(self, options: argparse.Namespace) -> Poller:
        return EdgePoller() if options.edge else EpollPoller()


if __name__ == "__main__":
    main(Epoll())
