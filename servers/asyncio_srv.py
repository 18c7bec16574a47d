"""asyncio: the core on an ``asyncio.BufferedProtocol``, on the stdlib loop or uvloop.

``--loop uvloop`` runs the same protocol on libuv; the registry lists that as
its own entry, ``uvloop``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket

from servers.backend import Backend
from servers.cli import main
from servers.drivers.aio import serve_listener
from servers.settings import Settings
from servers.stop import StopSignal


class Asyncio(Backend):
    """A single-threaded asyncio event loop, a protocol object per connection."""

    name = "asyncio"
    guestbook = True
    backend_pool = True  # Redis protocols on the loop, up to --backend-pool of them

    def can_sendfile(self, options: argparse.Namespace) -> bool:
        return options.loop == "asyncio"  # uvloop sends files by read+write

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                            help="event loop implementation (default: %(default)s)")

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        if options.loop == "uvloop":
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        else:
            runner = asyncio.Runner()
        with runner:
            runner.run(serve_listener(listener, settings, stop))


if __name__ == "__main__":
    main(Asyncio())
