"""poll: the shared readiness loop on ``select.poll``.

No FD_SETSIZE ceiling, but the whole interest array crosses into the kernel
on every call, so a wake-up still costs O(connections).
"""

from __future__ import annotations

import argparse

from servers.cli import main
from servers.drivers.pollers import Poller, PollPoller
from servers.drivers.readiness import ReadinessBackend


class Poll(ReadinessBackend):
    """One thread, poll(2) over every connection."""

    name = "poll"

    def poller(self, options: argparse.Namespace) -> Poller:
        return PollPoller()


if __name__ == "__main__":
    main(Poll())
