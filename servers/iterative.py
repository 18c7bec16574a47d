"""iterative: one connection at a time, accepted and served on the main thread.

The baseline of the Linux Applications Performance series: while one client is
served, the others wait in the listen backlog.
"""

from __future__ import annotations

import argparse
import socket

from servers.cli import main
from servers.drivers.blocking_runner import BlockingModel, BlockingRunner, accept_until_stopped
from servers.settings import Settings
from servers.stop import StopSignal


class Iterative(BlockingModel):
    """Serve one client at a time; the rest wait in the backlog."""

    name = "iterative"
    workers_mode = None

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        # The main thread is the only worker: a stop must end its connection and its
        # blocked sends, and one Redis connection serves the process.
        runner = BlockingRunner(settings, stop, sends_heed_stop=True)
        with runner.worker_backend() as backend:
            accept_until_stopped(listener, stop, lambda sock: runner.serve(sock, backend))


if __name__ == "__main__":
    main(Iterative())
