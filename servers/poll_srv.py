"""poll: the shared readiness loop on ``select.poll``.

No FD_SETSIZE ceiling, but the whole interest array crosses into the kernel
on every call, so a wake-up still costs O(connections).
"""

from __future__ import annotations

import argparse
import socket

from servers.backend import Backend
from servers.cli import main
from servers.drivers.pollers import PollPoller
from servers.drivers.readiness import ReadinessLoop
from servers.settings import Settings
from servers.stop import StopSignal


class Poll(Backend):
    """One thread, poll(2) over every connection."""

    name = "poll"
    guestbook = True
    backend_pool = True

    def can_sendfile(self, options: argparse.Namespace) -> bool:
        return True

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        ReadinessLoop(PollPoller(), listener, settings, stop).run()


if __name__ == "__main__":
    main(Poll())
