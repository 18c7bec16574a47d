"""select: the shared readiness loop on ``select.select``.

Three descriptor sets are rebuilt and scanned on every call, so the cost of a
wake-up grows with the number of connections, and no descriptor at or above
FD_SETSIZE (1024) can be watched: past that the loop closes the new connection
at once (logged once) and keeps serving the others.
"""

from __future__ import annotations

import argparse
import socket

from servers.backend import Backend
from servers.cli import main
from servers.drivers.pollers import SelectPoller
from servers.drivers.readiness import ReadinessLoop
from servers.settings import Settings
from servers.stop import StopSignal


class Select(Backend):
    """One thread, select(2) over every connection; descriptors below 1024 only."""

    name = "select"
    guestbook = True
    backend_pool = True

    def can_sendfile(self, options: argparse.Namespace) -> bool:
        return True

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        ReadinessLoop(SelectPoller(), listener, settings, stop).run()


if __name__ == "__main__":
    main(Select())
