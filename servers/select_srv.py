"""select: the shared readiness loop on ``select.select``.

Three descriptor sets are rebuilt and scanned on every call, so the cost of a
wake-up grows with the number of connections, and no descriptor at or above
FD_SETSIZE (1024) can be watched: past that the loop closes the new connection
at once (logged once) and keeps serving the others.
"""

from __future__ import annotations

import argparse

from servers.cli import main
from servers.drivers.pollers import Poller, SelectPoller
from servers.drivers.readiness import ReadinessBackend


class Select(ReadinessBackend):
    """One thread, select(2) over every connection; descriptors below 1024 only."""

    name = "select"

    def poller(self, options: argparse.Namespace) -> Poller:
        return SelectPoller()


if __name__ == "__main__":
    main(Select())
